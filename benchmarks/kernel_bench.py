"""Kernel micro-benchmark: µs per select and per update, compiled kernel vs NumPy reference.

    python -m benchmarks.kernel_bench [--out benchmarks/results/kernels.json] [--quick]

Select = one decision (num_arms=1), all arms eligible, draws=32, floor 0, burn-in 0, on a state
that has had some updates. The kernel is called through its public Python function (what the
server pays); the reference is the module's ``select_reference`` / ``update_reference`` with
:class:`banditd.kernels.rng.NumpyDraws` (vectorised NumPy, the fair fast reference); kernel and
reference each work on their own copy of the state.
Each figure is the median over repeats of the mean time per call (time.perf_counter_ns).

``select_batch_us_per_decision``: the batch kernel (``select_batch``, what BatchSelectArms calls
per group of items) deciding ``BATCH_ROWS`` decisions in one call, per decision (selections
are counted between decisions, as the server does).

Thompson and Thompson-for-value cache their Monte-Carlo rounds per arm until the arm is
updated, so ``select_*_us`` (back-to-back decisions) is their cheapest case; they also report
``select_after_update_*_us``: the cost of a decision with one update since the previous one
(timed as update+select pairs minus the separately timed update), which redraws one arm's rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from banditd.kernels import POLICIES
from banditd.kernels.config import FASTMATH, JIT
from banditd.kernels.rng import NumpyDraws, seed_state
from banditd.kernels.warmup import warm_up
from benchmarks.local_server import machine

PARAMS = {
    "thompson": [1.0, 1.0],
    "thompson_value": [1.0, 1.0, 10.0, 1.0],
    "ucb1": [1.0],
    "epsilon_greedy": [0.1, 0.0],
    "lin_ucb": [1.0, 1.0],
    "lin_thompson": [0.5, 1.0],
}
DRAWS = 32
CACHED_ROUNDS = ("thompson", "thompson_value")  # policies whose Monte-Carlo rounds are cached
PRE_UPDATES = 500
BATCH_ROWS = 1000


def time_us(fn, iters: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per call of ``fn(i)`` over ``iters`` calls."""
    for i in range(min(iters, 50)):
        fn(i)
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for i in range(iters):
            fn(i)
        per_call.append((time.perf_counter_ns() - t0) / iters / 1000.0)
    return statistics.median(per_call)


def trained_state(module, k: int, d: int, params: np.ndarray, gen: np.random.Generator):
    state = module.new_state(num_arms=k, dim=d, params=params, draws=DRAWS)
    for _ in range(PRE_UPDATES):
        arm = int(gen.integers(k))
        x = gen.standard_normal(d)
        reward = float(gen.random() < 0.3)
        if module.NAME == "thompson_value":
            reward *= float(gen.exponential(10.0))
        module.update(state=state, params=params, arm=arm, reward=reward, context=x, discount=1.0)
    return state


def bench_case(module, k: int, d: int, iters: int, repeats: int) -> dict:
    gen = np.random.default_rng(1)
    params = np.array(PARAMS[module.NAME], dtype=np.float64)
    state = trained_state(module, k, d, params, gen)
    ref_state = state._make(a.copy() for a in state)
    eligible = np.arange(k, dtype=np.int64)
    selections = np.full(k, 1000, dtype=np.int64)
    # Prebuilt per-call inputs, as the server has them when it calls a kernel: a float64
    # context array and a Python float reward (slicing a view per call would add ~60 ns to
    # every timing without being part of the select).
    contexts = list(gen.standard_normal((256, d)))
    rewards = [float(r) for r in gen.random(256) < 0.3]
    out = np.empty(1, dtype=np.int64)
    rng = seed_state(7)
    source = NumpyDraws(7)
    t = PRE_UPDATES
    sel, upd = module.select, module.update
    sel_ref, upd_ref = module.select_reference, module.update_reference
    arms = [int(a) for a in gen.integers(k, size=256)]

    def k_select(i):
        sel(state=state, params=params, eligible=eligible, context=contexts[i & 255], t=t,
            selections=selections, floor=0.0, burn_in=0, draws=DRAWS, rng=rng, out=out)

    def r_select(i):
        sel_ref(
            state=ref_state, params=params, eligible=eligible, context=contexts[i & 255], t=t,
            selections=selections, floor=0.0, burn_in=0, draws=DRAWS, source=source, out=out,
        )

    def k_update(i):
        upd(state=state, params=params, arm=arms[i & 255], reward=rewards[i & 255],
            context=contexts[i & 255], discount=1.0)

    def r_update(i):
        upd_ref(state=ref_state, params=params, arm=arms[i & 255], reward=rewards[i & 255],
                context=contexts[i & 255], discount=1.0)

    def k_pair(i):
        k_update(i)
        k_select(i)

    def r_pair(i):
        r_update(i)
        r_select(i)

    batch_contexts = np.ascontiguousarray(gen.standard_normal((BATCH_ROWS, d)))
    batch_out = np.empty((BATCH_ROWS, 1), dtype=np.int64)
    batch_prop = np.empty(BATCH_ROWS)
    batch_sel = selections.copy()

    def k_batch(i):
        module.select_batch(state=state, params=params, eligible=eligible,
                            contexts=batch_contexts, t=t, selections=batch_sel, floor=0.0,
                            burn_in=0, draws=DRAWS, rng=rng, out=batch_out,
                            propensity=batch_prop)

    ref_iters = max(iters // 10, 20)
    row = {
        "policy": module.NAME,
        "num_arms": k,
        "dim": d,
        "select_kernel_us": time_us(k_select, iters, repeats),
        "select_reference_us": time_us(r_select, ref_iters, repeats),
        "update_kernel_us": time_us(k_update, iters, repeats),
        "update_reference_us": time_us(r_update, ref_iters, repeats),
        "select_batch_us_per_decision": time_us(k_batch, max(iters // 300, 3), repeats)
        / BATCH_ROWS,
    }
    row["select_speedup"] = row["select_reference_us"] / row["select_kernel_us"]
    row["update_speedup"] = row["update_reference_us"] / row["update_kernel_us"]
    if module.NAME in CACHED_ROUNDS:
        row["select_after_update_kernel_us"] = (
            time_us(k_pair, iters, repeats) - row["update_kernel_us"]
        )
        row["select_after_update_reference_us"] = (
            time_us(r_pair, ref_iters, repeats) - row["update_reference_us"]
        )
        row["select_after_update_speedup"] = (
            row["select_after_update_reference_us"] / row["select_after_update_kernel_us"]
        )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/kernels.json")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = ap.parse_args(argv)
    iters, repeats = (300, 3) if args.quick else (3000, 7)

    print(f"warm-up (compile or load cache): {warm_up():.2f} s", flush=True)
    cases = []
    for module in POLICIES.values():
        for k in (10, 100):
            for d in (8, 32) if module.CONTEXTUAL else (0,):
                cases.append((module, k, d))
    rows = []
    header = (
        f"{'policy':<15}{'K':>5}{'d':>4} | {'select µs':>10}{'ref µs':>10}{'x':>7} | "
        f"{'after upd':>10}{'ref µs':>10}{'x':>7} | {'update µs':>10}{'ref µs':>10}{'x':>7} | "
        f"{'batch µs':>9}"
    )
    print(header)
    print("-" * len(header))
    for n, (module, k, d) in enumerate(cases, 1):
        print(f"[{n}/{len(cases)}] {module.NAME} K={k} d={d} ...", end="\r", flush=True)
        r = bench_case(module, k, d, iters, repeats)
        rows.append(r)
        if "select_after_update_kernel_us" in r:
            after = (
                f"{r['select_after_update_kernel_us']:>10.2f}"
                f"{r['select_after_update_reference_us']:>10.1f}"
                f"{r['select_after_update_speedup']:>7.1f}"
            )
        else:
            after = f"{'-':>10}{'-':>10}{'-':>7}"
        print(
            f"{r['policy']:<15}{k:>5}{d:>4} | {r['select_kernel_us']:>10.2f}"
            f"{r['select_reference_us']:>10.1f}{r['select_speedup']:>7.1f} | {after} | "
            f"{r['update_kernel_us']:>10.2f}{r['update_reference_us']:>10.1f}"
            f"{r['update_speedup']:>7.1f} | {r['select_batch_us_per_decision']:>9.2f}",
            flush=True,
        )
    result = {
        "machine": machine(),
        "settings": {
            "draws": DRAWS,
            "fastmath_dot_products": sorted(FASTMATH),
            "fastmath_other_kernels": JIT["fastmath"],
            "num_arms_selected": 1,
            "floor": 0.0,
            "burn_in": 0,
            "pre_updates": PRE_UPDATES,
            "batch_rows": BATCH_ROWS,
            "iterations": iters,
            "repeats": repeats,
            "quick": args.quick,
        },
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
