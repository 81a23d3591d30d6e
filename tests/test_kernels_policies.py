"""Every policy of the registry (``POLICIES``) against its plain-NumPy reference (Xoshiro
source = identical stream), its bound and batch forms against single decisions, and the
properties every policy shares (propensity, floor, arm rows). Policy-specific tests live in
one module per policy (tests/test_kernels_<name>.py)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kernel_helpers import (
    assert_states_equal,
    copy_state,
    params_of,
    reward,
    train,
    trained_pair,
)

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels import POLICIES
from banditd.kernels.rng import Xoshiro, seed_state
from banditd.server.state.policies import resolve_policy

API = ("NAME", "PARAM_NAMES", "EXAMPLE_PARAMS", "CONTEXTUAL", "ESTIMATED_PROPENSITY", "REWARDS",
       "State", "CACHE_FIELDS", "new_state", "select", "bind_select", "update", "bind_update",
       "select_reference", "update_reference", "select_batch", "update_batch",
       "select_batch_reference", "update_batch_reference", "add_aggregate", "summary")
FUNCTIONS = ("new_state", "select", "bind_select", "update", "bind_update", "select_reference",
             "update_reference", "select_batch", "update_batch", "select_batch_reference",
             "update_batch_reference", "add_aggregate", "summary")


@pytest.mark.parametrize("name", list(POLICIES))
def test_registry_and_module_shape(name):
    mod = POLICIES[name]
    for attr in API:
        assert hasattr(mod, attr), f"{name} lacks {attr}"
    assert name == mod.NAME
    assert len(mod.PARAM_NAMES) == len(mod.EXAMPLE_PARAMS)
    assert mod.REWARDS in ("binary", "value", "real")
    assert set(mod.CACHE_FIELDS) <= set(mod.State._fields)
    for fn in FUNCTIONS:
        kinds = {p.kind for p in inspect.signature(getattr(mod, fn)).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, f"{name}.{fn} is not keyword-only"
    state = mod.new_state(num_arms=3, dim=2 if mod.CONTEXTUAL else 0, params=params_of(mod))
    assert type(state) is mod.State
    assert (Path(__file__).parent / f"test_kernels_{name}.py").exists(), "one test module each"


@pytest.mark.parametrize(("policy", "reward_type", "dim", "kernel", "params"), [
    (pb.Policy(thompson=pb.Policy.Thompson(alpha=2, beta=3)), pb.REWARD_TYPE_BINARY, 0,
     "thompson", [2.0, 3.0]),
    (pb.Policy(thompson=pb.Policy.Thompson(alpha=2, value_prior_mean=4)), pb.REWARD_TYPE_VALUE, 0,
     "thompson_value", [2.0, 1.0, 4.0, 1.0]),
    (pb.Policy(ucb1=pb.Policy.Ucb1(c=0.7)), pb.REWARD_TYPE_CONTINUOUS, 0, "ucb1", [0.7]),
    (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(decay=0.01)), pb.REWARD_TYPE_BINARY, 0,
     "epsilon_greedy", [0.1, 0.01]),
    (pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=0.8)), pb.REWARD_TYPE_CONTINUOUS, 3, "lin_ucb",
     [0.8, 1.0]),
    (pb.Policy(lin_thompson=pb.Policy.LinThompson(v=0.5, ridge=1.5)), pb.REWARD_TYPE_BINARY, 3,
     "lin_thompson", [0.5, 1.5]),
], ids=["thompson", "thompson_value", "ucb1", "epsilon_greedy", "lin_ucb", "lin_thompson"])
def test_every_kernel_is_reached_from_the_proto_with_its_parameters_in_order(
        policy, reward_type, dim, kernel, params):
    """The server's policy table picks each registered kernel and hands it the request's
    values (defaults for unset ones) in the kernel's PARAM_NAMES order."""
    spec = resolve_policy(policy, reward_type, dim)
    module = POLICIES[kernel]
    assert spec.kernel is module and kernel == module.NAME
    assert spec.params.dtype == np.float64 and spec.params.tolist() == params
    assert (dim > 0) == module.CONTEXTUAL


_WARM_UP_SCRIPT = r"""
import json, time
import numpy as np
from banditd.kernels import POLICIES, allocation
from banditd.kernels.rng import seed_state
from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.state.policies import resolve_policy
from banditd.kernels.warmup import warm_up

def compiled():
    return {f"{name}.{attr}": len(fn.signatures)
            for name, module in [*POLICIES.items(), ("allocation", allocation)]
            for attr, fn in vars(module).items()
            if hasattr(fn, "signatures") and hasattr(fn, "py_func")}

before = compiled()
start = time.perf_counter()
seconds = warm_up()
outer = time.perf_counter() - start
warm = compiled()
# Then what the server does, on other sizes (more arms, longer slates and batches) with the
# server's dtypes: float64 arrays, int64 indices, uint64[4] rng, Python scalars.
rng = seed_state(1)
k = 7
for module in POLICIES.values():
    params = np.ones(len(module.PARAM_NAMES))
    dim = 5 if module.CONTEXTUAL else 0
    state = module.new_state(num_arms=k, dim=dim, params=params, draws=4)
    selections = np.zeros(k, dtype=np.int64)
    eligible = np.array([1, 3, 4, 6], dtype=np.int64)
    context = np.full(dim, 0.5)
    out = np.empty(3, dtype=np.int64)
    module.select(state=state, params=params, eligible=eligible, context=context, t=5,
                  selections=selections, floor=0.05, burn_in=2, draws=4, rng=rng, out=out)
    module.bind_select(state=state, params=params, selections=selections, floor=0.0, burn_in=0,
                       draws=4, rng=rng, eligible=eligible, context=context, t=0,
                       out=out)(eligible, context, 6, out)
    module.select_batch(state=state, params=params, eligible=eligible,
                        contexts=np.full((5, dim), 0.25), t=7, selections=selections, floor=0.0,
                        burn_in=0, draws=4, rng=rng, out=np.empty((5, 2), dtype=np.int64),
                        propensity=np.empty(5))
    module.update(state=state, params=params, arm=2, reward=0.0, context=context, discount=1.0)
    module.bind_update(state=state, params=params, discount=1.0)(2, 1.0, context)
    module.update_batch(state=state, params=params, arms=np.array([0, 6, 6], dtype=np.int64),
                        rewards=np.ones(3), contexts=np.full((3, dim), 0.75), discount=1.0)
allocation.prob_best_beta(np.full(4, 2.0), np.full(4, 3.0), 50, rng)
allocation.prob_best_value(np.full(4, 2.0), np.full(4, 3.0), np.full(4, 4.0), np.ones(4), 50, rng)
print(json.dumps({"before": before, "warm": warm, "used": compiled(), "seconds": seconds,
                  "outer": outer}))
"""


@pytest.mark.slow  # a fresh process; the fast tier has test_serving's
def test_warm_up_compiles_every_entry_point_so_later_calls_compile_nothing():
    """In a fresh process: nothing is compiled before warm_up(); after it every policy's
    entry points are (from Numba's cache or compiled); calls of other sizes with the
    server's dtypes then add no signature. warm_up returns the seconds it took."""
    proc = subprocess.run([sys.executable, "-c", _WARM_UP_SCRIPT], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["before"].values()) == {0}
    entry_points = [f"{name}.{fn}" for name in POLICIES
                    for fn in ("_select", "_select_bound", "_select_batch", "_update",
                               "_update_batch") if f"{name}.{fn}" in result["warm"]]
    assert len(entry_points) >= 5 * len(POLICIES) - 1
    assert all(result["warm"][fn] >= 1 for fn in entry_points), result["warm"]
    assert result["used"] == result["warm"]
    assert 0 < result["seconds"] <= result["outer"]


CASES = [
    (name, k, d, seed)
    for name, mod in POLICIES.items()
    for k in (1, 2, 10, 100)
    for d in ((1, 8) if mod.CONTEXTUAL else (0,))
    for seed in range(4)
]


@pytest.mark.parametrize(("name", "k", "d", "seed"), CASES)
def test_select_matches_reference(name, k, d, seed):
    mod = POLICIES[name]
    gen = np.random.default_rng(1000 * seed + k + d)
    params = params_of(mod)
    n_updates = int(gen.choice([0, 5, 300]))
    cached_rounds = int(gen.choice([1, 4, 9]))  # R of the Thompson policies' cached rounds
    state, ref = trained_pair(mod, k, d, params, gen, n_updates, 0.97, cached_rounds)
    for trial in range(6):
        if trial % 3 == 2:  # some updates between decisions: cached rounds go stale
            train(mod, (state, ref), params, gen, int(gen.integers(1, 4)), 0.97)
        m = int(gen.integers(1, k + 1))
        eligible = np.sort(gen.choice(k, size=m, replace=False)).astype(np.int64)
        if trial % 2:
            gen.shuffle(eligible)
        n = int(gen.integers(1, m + 1))
        floor = float(gen.choice([0.0, 0.5 / m, 1.0 / m]))
        burn_in = int(gen.choice([0, 0, 3]))
        selections = gen.integers(0, 6, size=k).astype(np.int64)
        context = gen.standard_normal(d)
        t = int(gen.integers(0, 1000))
        draws = int(gen.choice([1, 4, 9]))
        rng_seed = int(gen.integers(2**62))
        rng = seed_state(rng_seed)
        src = Xoshiro(rng_seed)
        out = np.full(n, -1, dtype=np.int64)
        out_ref = np.full(n, -1, dtype=np.int64)
        p = mod.select(state=state, params=params, eligible=eligible, context=context, t=t,
                       selections=selections, floor=floor, burn_in=burn_in, draws=draws, rng=rng,
                       out=out)
        p_ref = mod.select_reference(state=ref, params=params, eligible=eligible, context=context,
                                     t=t, selections=selections, floor=floor, burn_in=burn_in,
                                     draws=draws, source=src, out=out_ref)
        assert out.tolist() == out_ref.tolist()
        assert p == pytest.approx(p_ref, abs=1e-9)
        assert np.array_equal(rng, src.state()), "random-number consumption differs"
        assert_states_equal(state, ref)  # cached Monte-Carlo rounds written identically
        assert len(set(out.tolist())) == n and set(out.tolist()) <= set(eligible.tolist())
        assert 0.0 <= p <= 1.0 + 1e-12
        if floor > 0:
            cold = selections[eligible] < burn_in
            if not cold.any():
                assert p >= floor - 1e-12


@pytest.mark.parametrize(("floor", "burn_in"), [(0.02, 2), (0.0, 0)])
@pytest.mark.parametrize("name", list(POLICIES))
def test_bound_select_follows_updates_and_equals_select(name, floor, burn_in):
    """The server binds a policy's kernel to an experiment's arrays once (``bind_select``) and
    calls it for every decision while rewards change the state in place and eligible arms,
    context, ``t`` and slate size vary: every call must equal ``select`` on a twin."""
    mod = POLICIES[name]
    gen = np.random.default_rng(17)
    k, d = 12, (4 if mod.CONTEXTUAL else 0)
    params = params_of(mod)
    state, _ = trained_pair(mod, k, d, params, gen, 40, 0.97, draws=8)
    twin = copy_state(state)
    selections, twin_selections = np.zeros(k, np.int64), np.zeros(k, np.int64)
    rng, twin_rng = seed_state(5), seed_state(5)
    call = mod.bind_select(state=state, params=params, selections=selections, floor=floor,
                           burn_in=burn_in, draws=8, rng=rng,
                           eligible=np.arange(k, dtype=np.int64), context=np.zeros(d), t=0,
                           out=np.empty(1, np.int64))
    for t in range(60):
        m = int(gen.integers(1, k + 1))
        eligible = gen.choice(k, size=m, replace=False).astype(np.int64)
        n = int(gen.integers(1, m + 1))
        context = gen.standard_normal(d)
        out, twin_out = np.empty(n, np.int64), np.empty(n, np.int64)
        p = call(eligible, context, t, out)
        p_twin = mod.select(state=twin, params=params, eligible=eligible, context=context, t=t,
                            selections=twin_selections, floor=floor, burn_in=burn_in, draws=8,
                            rng=twin_rng, out=twin_out)
        assert out.tolist() == twin_out.tolist() and p == p_twin
        assert np.array_equal(rng, twin_rng)
        selections[out] += 1
        twin_selections[twin_out] += 1
        r = reward(mod, gen)
        for s in (state, twin):
            mod.update(state=s, params=params, arm=int(out[0]), reward=r, context=context,
                       discount=0.97)
    assert_states_equal(state, twin)


@pytest.mark.parametrize("name", list(POLICIES))
def test_bound_update_equals_update(name):
    """The server learns each reward through ``bind_update``'s call, bound once to the state's
    arrays: it must leave exactly the state ``update`` leaves on a twin."""
    mod = POLICIES[name]
    gen = np.random.default_rng(23)
    k, d = 6, (3 if mod.CONTEXTUAL else 0)
    params = params_of(mod)
    for discount in (1.0, 0.95) if not mod.CONTEXTUAL else (1.0,):
        state, _ = trained_pair(mod, k, d, params, gen, 20, 0.97, draws=4)
        twin = copy_state(state)
        call = mod.bind_update(state=state, params=params, discount=discount)
        for _ in range(50):
            arm, r, x = int(gen.integers(k)), reward(mod, gen), gen.standard_normal(d)
            call(arm, r, x)
            mod.update(state=twin, params=params, arm=arm, reward=r, context=x,
                       discount=discount)
        for a, b in zip(state, twin, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("name", list(POLICIES))
def test_propensity_of_the_chosen_arm_is_never_zero(name):
    """Floor 0, no burn-in: the logged propensity must be > 0 (inverse-propensity weighting).
    Few Monte-Carlo rounds and near-equal arms make "chosen but won no round" common, which
    gave 0 before the decision round was counted as one of the rounds."""
    mod = POLICIES[name]
    params = params_of(mod)
    gen = np.random.default_rng(77)
    for case in range(40):
        k = int(gen.choice([2, 3, 10, 30]))
        d = 4 if mod.CONTEXTUAL else 0
        rounds = int(gen.choice([1, 2, 4]))
        state = mod.new_state(num_arms=k, dim=d, params=params, draws=rounds)
        train(mod, (state,), params, gen, int(gen.choice([0, 3, 50, 400])), 0.99)
        selections = np.full(k, 5, dtype=np.int64)
        rng = seed_state(case)
        for _ in range(25):
            m = int(gen.integers(1, k + 1))
            eligible = gen.choice(k, size=m, replace=False).astype(np.int64)
            out = np.empty(int(gen.integers(1, m + 1)), dtype=np.int64)
            p = mod.select(state=state, params=params, eligible=eligible,
                           context=gen.standard_normal(d), t=int(gen.integers(100)),
                           selections=selections, floor=0.0, burn_in=0, draws=rounds, rng=rng,
                           out=out)
            assert p > 0.0, f"{name}: propensity 0 for arm {out[0]} (case {case})"
            if mod.ESTIMATED_PROPENSITY:
                assert p >= 1.0 / (m * (rounds + 1)) - 1e-12
            if gen.random() < 0.5:
                train(mod, (state,), params, gen, 1, 1.0)


@pytest.mark.parametrize("name", list(POLICIES))
def test_new_arm_rows_can_be_appended_and_deleted(name):
    """The server adds and removes arms by concatenating / deleting rows of every state array
    (first axis = arm): the kernels keep working on the result."""
    mod = POLICIES[name]
    params = params_of(mod)
    d = 3 if mod.CONTEXTUAL else 0
    state = mod.new_state(num_arms=2, dim=d, params=params)
    state = state._make(np.concatenate([a, b]) for a, b in zip(
        state, mod.new_state(num_arms=1, dim=d, params=params), strict=True))
    state = state._make(np.delete(a, 0, axis=0) for a in state)
    mod.update(state=state, params=params, arm=1, reward=1.0, context=np.ones(d), discount=1.0)
    out = np.empty(2, dtype=np.int64)
    mod.select(state=state, params=params, eligible=np.arange(2, dtype=np.int64),
               context=np.ones(d), t=1, selections=np.zeros(2, dtype=np.int64), floor=0.0,
               burn_in=0, draws=4, rng=seed_state(0), out=out)
    assert sorted(out.tolist()) == [0, 1]


@pytest.mark.parametrize("name", list(POLICIES))
def test_floor_gives_every_arm_at_least_floor(name):
    mod = POLICIES[name]
    k, floor, n = 5, 0.04, 4000
    d = 4 if mod.CONTEXTUAL else 0
    params = params_of(mod)
    gen = np.random.default_rng(0)
    state = mod.new_state(num_arms=k, dim=d, params=params)
    x = np.ones(d)
    for _ in range(400):  # arm 0 is clearly best, so without a floor the others starve
        arm = int(gen.integers(k))
        r = (10.0 if mod.REWARDS == "value" else 1.0) if arm == 0 else 0.0
        mod.update(state=state, params=params, arm=arm, reward=r, context=x, discount=1.0)
    eligible = np.arange(k, dtype=np.int64)
    sel = np.full(k, 100, dtype=np.int64)
    rng = seed_state(5)
    out = np.empty(1, dtype=np.int64)
    counts = np.zeros(k)
    for t in range(n):
        p = mod.select(state=state, params=params, eligible=eligible, context=x, t=400 + t,
                       selections=sel, floor=floor, burn_in=0, draws=2, rng=rng, out=out)
        assert p >= floor - 1e-12
        counts[out[0]] += 1
    tol = 4 * np.sqrt(floor * (1 - floor) / n)
    assert (counts / n >= floor - tol).all(), counts / n


BATCH_CASES = [
    (name, k, d, seed)
    for name, mod in POLICIES.items()
    for k in (1, 3, 20)
    for d in ((1, 6) if mod.CONTEXTUAL else (0,))
    for seed in range(3)
]


@pytest.mark.parametrize(("name", "k", "d", "seed"), BATCH_CASES)
def test_select_batch_matches_reference_and_single_decisions(name, k, d, seed):
    """One batch kernel call = its NumPy twin (draw for draw) = the same decisions one by one
    with each slate counted before the next (what the server did per item)."""
    mod = POLICIES[name]
    gen = np.random.default_rng(500 * seed + 7 * k + d)
    params = params_of(mod)
    state, ref = trained_pair(mod, k, d, params, gen, int(gen.choice([0, 40])), 0.97,
                              int(gen.choice([1, 5])))
    single = copy_state(state)
    for _ in range(3):
        rows = int(gen.integers(1, 40))
        m = int(gen.integers(1, k + 1))
        eligible = np.sort(gen.choice(k, size=m, replace=False)).astype(np.int64)
        n = int(gen.integers(1, m + 1))
        floor = float(gen.choice([0.0, 0.5 / m]))
        burn_in = int(gen.choice([0, 2, 30]))
        t = int(gen.integers(0, 100))
        draws = int(gen.choice([1, 4]))
        contexts = np.ascontiguousarray(gen.standard_normal((rows, d)))
        sel = gen.integers(0, 4, size=k).astype(np.int64)
        sel_ref, sel_single = sel.copy(), sel.copy()
        rng_seed = int(gen.integers(2**62))
        rng, rng_single, src = seed_state(rng_seed), seed_state(rng_seed), Xoshiro(rng_seed)
        out = np.full((rows, n), -1, dtype=np.int64)
        out_ref = out.copy()
        prop, prop_ref = np.empty(rows), np.empty(rows)
        mod.select_batch(state=state, params=params, eligible=eligible, contexts=contexts, t=t,
                         selections=sel, floor=floor, burn_in=burn_in, draws=draws, rng=rng,
                         out=out, propensity=prop)
        mod.select_batch_reference(state=ref, params=params, eligible=eligible,
                                   contexts=contexts, t=t, selections=sel_ref, floor=floor,
                                   burn_in=burn_in, draws=draws, source=src, out=out_ref,
                                   propensity=prop_ref)
        assert out.tolist() == out_ref.tolist()
        np.testing.assert_allclose(prop, prop_ref, rtol=0, atol=1e-9)
        assert np.array_equal(rng, src.state()) and np.array_equal(sel, sel_ref)
        assert_states_equal(state, ref)
        for i in range(rows):  # the unary kernel, one decision at a time
            one = np.empty(n, dtype=np.int64)
            p = mod.select(state=single, params=params, eligible=eligible, context=contexts[i],
                           t=t, selections=sel_single, floor=floor, burn_in=burn_in,
                           draws=draws, rng=rng_single, out=one)
            sel_single[one] += 1
            assert one.tolist() == out[i].tolist() and p == prop[i]
        assert np.array_equal(rng, rng_single) and np.array_equal(sel, sel_single)


@pytest.mark.parametrize("name", list(POLICIES))
def test_update_batch_matches_reference_and_single_updates(name):
    mod = POLICIES[name]
    gen = np.random.default_rng(11)
    params = params_of(mod)
    k, d = 7, (5 if mod.CONTEXTUAL else 0)
    state = mod.new_state(num_arms=k, dim=d, params=params, draws=4)
    ref, single = copy_state(state), copy_state(state)
    for discount in (1.0, 0.9) if not mod.CONTEXTUAL else (1.0,):
        rows = 50
        arms = gen.integers(0, k, size=rows).astype(np.int64)
        rewards = np.array([reward(mod, gen) for _ in range(rows)])
        contexts = np.ascontiguousarray(gen.standard_normal((rows, d)))
        mod.update_batch(state=state, params=params, arms=arms, rewards=rewards,
                         contexts=contexts, discount=discount)
        mod.update_batch_reference(state=ref, params=params, arms=arms, rewards=rewards,
                                   contexts=contexts, discount=discount)
        for i in range(rows):
            mod.update(state=single, params=params, arm=int(arms[i]), reward=float(rewards[i]),
                       context=contexts[i], discount=discount)
        assert_states_equal(state, ref)
        for a, b in zip(state, single, strict=True):
            assert np.array_equal(a, b)
