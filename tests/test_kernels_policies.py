"""Every policy kernel against its plain-NumPy reference (Xoshiro source = identical stream),
plus propensity, floor, burn-in and Sherman–Morrison checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels import POLICIES
from banditd.kernels.rng import NumpyDraws, Xoshiro, seed_state
from banditd.server.state.policies import resolve_policy

PARAMS = {
    "thompson": [1.0, 2.0],
    "thompson_value": [1.0, 1.0, 10.0, 2.0],
    "ucb1": [0.7],
    "epsilon_greedy": [0.2, 0.01],
    "lin_ucb": [0.8, 1.5],
    "lin_thompson": [0.5, 1.5],
}


def _reward(mod, gen):
    if mod.NAME == "thompson_value":
        return float(gen.exponential(10.0)) if gen.random() < 0.3 else 0.0
    if mod.NAME in ("thompson",):
        return float(gen.random() < 0.3)
    return float(gen.normal(0.3, 1.0))


def _train(mod, states, params, gen, n_updates, discount):
    """Apply the same random updates to every state in ``states``."""
    k, d = states[0][0].shape[0], (states[0][0].shape[-1] if mod.CONTEXTUAL else 0)
    for _ in range(n_updates):
        arm = int(gen.integers(k))
        x = gen.standard_normal(d)
        r = _reward(mod, gen)
        disc = discount if (not mod.CONTEXTUAL and gen.random() < 0.3) else 1.0
        mod.update(states[0], params, arm, r, x, disc)
        for ref in states[1:]:
            mod.update_reference(ref, params, arm, r, x, disc)


def _assert_states_equal(state, ref):
    for a, b in zip(state, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        assert a.dtype == np.float64 and a.flags.c_contiguous


def _trained_pair(mod, k, d, params, gen, n_updates, discount, draws=32):
    """Same random updates applied by the kernel and by the reference; checked equal.
    Returns (kernel state, reference state), separate arrays (select may write to the state)."""
    state = mod.new_state(k, d, params, draws)
    ref = tuple(a.copy() for a in state)
    _train(mod, (state, ref), params, gen, n_updates, discount)
    _assert_states_equal(state, ref)
    return state, ref


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
], ids=list(PARAMS))
def test_every_kernel_is_reached_from_the_proto_with_its_parameters_in_order(
        policy, reward_type, dim, kernel, params):
    """The server's policy table picks each registered kernel and hands it the request's
    values (defaults for unset ones) in the kernel's PARAM_NAMES order."""
    spec = resolve_policy(policy, reward_type, dim)
    module = POLICIES[kernel]
    assert spec.kernel is module and kernel == module.NAME
    assert spec.params.dtype == np.float64 and spec.params.tolist() == params
    assert len(module.PARAM_NAMES) == len(PARAMS[kernel])
    assert (dim > 0) == module.CONTEXTUAL


def test_the_registry_holds_exactly_the_six_policies():
    assert sorted(POLICIES) == sorted(PARAMS)
    assert all(name == mod.NAME for name, mod in POLICIES.items())


_WARM_UP_SCRIPT = r"""
import json, time
import numpy as np
from banditd.kernels import POLICIES, allocation
from banditd.kernels.rng import seed_state
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
    state = module.new_state(k, dim, params, 4)
    selections = np.zeros(k, dtype=np.int64)
    eligible = np.array([1, 3, 4, 6], dtype=np.int64)
    context = np.full(dim, 0.5)
    out = np.empty(3, dtype=np.int64)
    module.select(state, params, eligible, context, 5, selections, 0.05, 2, 4, rng, out)
    module.bind_select(state, params, selections, 0.0, 0, 4, rng, eligible, context, 0,
                       out)(eligible, context, 6, out)
    module.select_batch(state, params, eligible, np.full((5, dim), 0.25), 7, selections, 0.0,
                        0, 4, rng, np.empty((5, 2), dtype=np.int64), np.empty(5))
    module.update(state, params, 2, 0.0, context, 1.0)
    module.update_batch(state, params, np.array([0, 6, 6], dtype=np.int64), np.ones(3),
                        np.full((3, dim), 0.75), 1.0)
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
    # the compiled entry points each module defines (lin_thompson updates with lin_ucb's)
    entry_points = [f"{name}.{fn}" for name in PARAMS
                    for fn in ("_select", "_select_bound", "_select_batch", "_update",
                               "_update_batch") if f"{name}.{fn}" in result["warm"]]
    assert len(entry_points) >= 5 * len(PARAMS) - 1
    assert all(result["warm"][fn] >= 1 for fn in [*entry_points, "allocation._prob_best"]), \
        result["warm"]
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
    params = np.array(PARAMS[name])
    n_updates = int(gen.choice([0, 5, 300]))
    cached_rounds = int(gen.choice([1, 4, 9]))  # R of the Thompson policies' cached rounds
    state, ref = _trained_pair(mod, k, d, params, gen, n_updates, 0.97, cached_rounds)
    for trial in range(6):
        if trial % 3 == 2:  # some updates between decisions: cached rounds go stale
            _train(mod, (state, ref), params, gen, int(gen.integers(1, 4)), 0.97)
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
        p = mod.select(state, params, eligible, context, t, selections, floor, burn_in, draws,
                       rng, out)
        p_ref = mod.select_reference(ref, params, eligible, context, t, selections, floor,
                                     burn_in, draws, src, out_ref)
        assert out.tolist() == out_ref.tolist()
        assert p == pytest.approx(p_ref, abs=1e-9)
        assert np.array_equal(rng, src.state()), "random-number consumption differs"
        _assert_states_equal(state, ref)  # cached Monte-Carlo rounds written identically
        assert len(set(out.tolist())) == n and set(out.tolist()) <= set(eligible.tolist())
        assert 0.0 <= p <= 1.0 + 1e-12
        if floor > 0:
            cold = selections[eligible] < burn_in
            if not cold.any():
                assert p >= floor - 1e-12


@pytest.mark.parametrize(("floor", "burn_in"), [(0.02, 2), (0.0, 0)])
@pytest.mark.parametrize("name", list(PARAMS))
def test_bound_select_follows_updates_and_equals_select(name, floor, burn_in):
    """The server binds a policy's kernel to an experiment's arrays once (``bind_select``) and
    calls it for every decision while rewards change the state in place and eligible arms,
    context, ``t`` and slate size vary: every call must equal ``select`` on a twin."""
    mod = POLICIES[name]
    gen = np.random.default_rng(17)
    k, d = 12, (4 if mod.CONTEXTUAL else 0)
    params = np.array(PARAMS[name])
    state, _ = _trained_pair(mod, k, d, params, gen, 40, 0.97, draws=8)
    twin = tuple(a.copy() for a in state)
    selections, twin_selections = np.zeros(k, np.int64), np.zeros(k, np.int64)
    rng, twin_rng = seed_state(5), seed_state(5)
    call = mod.bind_select(state, params, selections, floor, burn_in, 8, rng,
                           np.arange(k, dtype=np.int64), np.zeros(d), 0, np.empty(1, np.int64))
    for t in range(60):
        m = int(gen.integers(1, k + 1))
        eligible = gen.choice(k, size=m, replace=False).astype(np.int64)
        n = int(gen.integers(1, m + 1))
        context = gen.standard_normal(d)
        out, twin_out = np.empty(n, np.int64), np.empty(n, np.int64)
        p = call(eligible, context, t, out)
        p_twin = mod.select(twin, params, eligible, context, t, twin_selections, floor, burn_in,
                            8, twin_rng, twin_out)
        assert out.tolist() == twin_out.tolist() and p == p_twin
        assert np.array_equal(rng, twin_rng)
        selections[out] += 1
        twin_selections[twin_out] += 1
        reward = _reward(mod, gen)
        mod.update(state, params, int(out[0]), reward, context, 0.97)
        mod.update(twin, params, int(out[0]), reward, context, 0.97)
    _assert_states_equal(state, twin)


@pytest.mark.parametrize("name", list(PARAMS))
def test_propensity_of_the_chosen_arm_is_never_zero(name):
    """Floor 0, no burn-in: the logged propensity must be > 0 (inverse-propensity weighting).
    Few Monte-Carlo rounds and near-equal arms make "chosen but won no round" common, which
    gave 0 before the decision round was counted as one of the rounds."""
    mod = POLICIES[name]
    params = np.array(PARAMS[name])
    gen = np.random.default_rng(77)
    for case in range(40):
        k = int(gen.choice([2, 3, 10, 30]))
        d = 4 if mod.CONTEXTUAL else 0
        rounds = int(gen.choice([1, 2, 4]))
        state = mod.new_state(k, d, params, rounds)
        _train(mod, (state,), params, gen, int(gen.choice([0, 3, 50, 400])), 0.99)
        selections = np.full(k, 5, dtype=np.int64)
        rng = seed_state(case)
        for _ in range(25):
            m = int(gen.integers(1, k + 1))
            eligible = gen.choice(k, size=m, replace=False).astype(np.int64)
            out = np.empty(int(gen.integers(1, m + 1)), dtype=np.int64)
            p = mod.select(state, params, eligible, gen.standard_normal(d), int(gen.integers(100)),
                           selections, 0.0, 0, rounds, rng, out)
            assert p > 0.0, f"{name}: propensity 0 for arm {out[0]} (case {case})"
            if mod.ESTIMATED_PROPENSITY:
                assert p >= 1.0 / (m * (rounds + 1)) - 1e-12
            if gen.random() < 0.5:
                _train(mod, (state,), params, gen, 1, 1.0)


@pytest.mark.parametrize("name", ["thompson", "thompson_value"])
def test_cached_rounds_are_redrawn_only_after_updates(name):
    mod = POLICIES[name]
    params = np.array(PARAMS[name])
    k, rounds = 5, 6
    state = mod.new_state(k, 0, params, rounds)
    mc, valid = state[-2], state[-1]
    assert mc.shape == (k, rounds) and not valid.any()
    eligible = np.array([0, 2, 3], dtype=np.int64)
    out = np.empty(1, dtype=np.int64)
    sel = np.zeros(k, dtype=np.int64)

    def select(elig=eligible):
        return mod.select(state, params, elig, np.empty(0), 0, sel, 0.0, 0, 99, seed_state(1), out)

    select(eligible[:1])  # a single eligible arm needs no Monte-Carlo rounds
    assert not valid.any()
    select()
    assert valid.tolist() == [1, 0, 1, 1, 0]
    before = mc.copy()
    select()
    assert np.array_equal(mc, before)  # no update: the rounds are reused
    mod.update(state, params, 2, 1.0, np.empty(0), 1.0)
    assert valid.tolist() == [1, 0, 0, 1, 0]
    select()
    assert np.array_equal(mc[[0, 3]], before[[0, 3]]) and not np.array_equal(mc[2], before[2])
    mod.update(state, params, 4, 0.0, np.empty(0), 0.9)  # discounting changes every posterior
    assert not valid.any()


def test_burn_in_puts_cold_arms_first():
    mod = POLICIES["thompson"]
    params = np.array([1.0, 1.0])
    state = mod.new_state(6, 0, params)
    state[0][:] = [50, 0, 50, 0, 0, 0]
    state[1][:] = [1, 50, 1, 50, 50, 50]
    selections = np.array([9, 0, 9, 1, 9, 9], dtype=np.int64)
    eligible = np.arange(6, dtype=np.int64)
    rng = seed_state(2)
    for _ in range(50):
        out = np.empty(4, dtype=np.int64)
        p = mod.select(state, params, eligible, np.empty(0), 0, selections, 0.0, 2, 4, rng, out)
        assert set(out[:2].tolist()) == {1, 3}
        assert set(out[2:].tolist()) == {0, 2}  # then by score: the two strong arms
        assert p == 0.5


def test_new_arm_rows_can_be_appended_and_deleted():
    for mod in POLICIES.values():
        params = np.array(PARAMS[mod.NAME])
        d = 3 if mod.CONTEXTUAL else 0
        state = mod.new_state(2, d, params)
        state = tuple(np.concatenate([a, b]) for a, b in zip(state, mod.new_state(1, d, params),
                                                            strict=True))
        state = tuple(np.delete(a, 0, axis=0) for a in state)
        mod.update(state, params, 1, 1.0, np.ones(d), 1.0)
        out = np.empty(2, dtype=np.int64)
        mod.select(state, params, np.arange(2, dtype=np.int64), np.ones(d), 1,
                   np.zeros(2, dtype=np.int64), 0.0, 0, 4, seed_state(0), out)
        assert sorted(out.tolist()) == [0, 1]


@pytest.mark.parametrize("name", ["lin_ucb", "lin_thompson"])
def test_sherman_morrison_matches_inverse(name):
    mod = POLICIES[name]
    d, k, ridge = 8, 3, 1.5
    params = np.array([0.5, ridge])
    state = mod.new_state(k, d, params)
    gen = np.random.default_rng(4)
    xs = {arm: [] for arm in range(k)}
    ys = {arm: [] for arm in range(k)}
    for _ in range(200):
        arm = int(gen.integers(k))
        x = gen.standard_normal(d)
        y = float(gen.normal())
        xs[arm].append(x)
        ys[arm].append(y)
        mod.update(state, params, arm, y, x, 1.0)
    a_inv, b, theta = state
    for arm in range(k):
        x = np.array(xs[arm])
        want = np.linalg.inv(ridge * np.eye(d) + x.T @ x)
        np.testing.assert_allclose(a_inv[arm], want, rtol=0, atol=1e-8)
        assert np.array_equal(a_inv[arm], a_inv[arm].T)
        np.testing.assert_allclose(b[arm], x.T @ np.array(ys[arm]), atol=1e-10)
        np.testing.assert_allclose(theta[arm], want @ b[arm], atol=1e-8)


def test_thompson_propensity_estimate_matches_monte_carlo():
    mod = POLICIES["thompson"]
    params = np.array([1.0, 1.0])
    rounds = 20_000
    state = mod.new_state(3, 0, params, rounds)
    state[0][:] = [10.0, 12.0, 8.0]
    state[1][:] = [90.0, 88.0, 92.0]
    eligible = np.arange(3, dtype=np.int64)
    sel = np.zeros(3, dtype=np.int64)
    gen = NumpyDraws(0).gen
    draws = gen.beta(params[0] + state[0], params[1] + state[1], size=(100_000, 3))
    truth = np.bincount(np.argmax(draws, axis=1), minlength=3) / len(draws)
    rng = seed_state(8)
    out = np.empty(1, dtype=np.int64)
    for _ in range(5):
        state[3][:] = 0.0  # fresh rounds for each estimate
        p = mod.select(state, params, eligible, np.empty(0), 0, sel, 0.0, 0, 0, rng, out)
        assert abs(p - truth[out[0]]) < 0.015
    # reference with the fast NumPy source estimates the same probabilities
    ref = tuple(a.copy() for a in state)
    ref[3][:] = 0.0
    out_ref = np.empty(1, dtype=np.int64)
    p_ref = mod.select_reference(ref, params, eligible, np.empty(0), 0, sel, 0.0, 0, 0,
                                 NumpyDraws(3), out_ref)
    assert abs(p_ref - truth[out_ref[0]]) < 0.015


def test_epsilon_greedy_propensity_is_exact():
    mod = POLICIES["epsilon_greedy"]
    eps, decay, t = 0.3, 0.01, 50
    params = np.array([eps, decay])
    counts = np.array([10.0, 10.0, 10.0, 0.0, 10.0])
    sums = np.array([1.0, 5.0, 5.0, 0.0, 2.0])  # arms 1 and 2 tie for the greedy choice
    state = (counts, sums)
    eligible = np.arange(5, dtype=np.int64)
    sel = np.zeros(5, dtype=np.int64)
    eps_t = eps / (1 + decay * t)
    expected = eps_t / 5 + (1 - eps_t) * np.array([0, 0.5, 0.5, 0, 0])
    rng = seed_state(1)
    out = np.empty(1, dtype=np.int64)
    freq = np.zeros(5)
    n = 20_000
    for _ in range(n):
        p = mod.select(state, params, eligible, np.empty(0), t, sel, 0.0, 0, 1, rng, out)
        assert p == pytest.approx(expected[out[0]], abs=1e-15)
        freq[out[0]] += 1
    np.testing.assert_allclose(freq / n, expected, atol=4 * np.sqrt(0.25 / n))


@pytest.mark.parametrize("name", list(PARAMS))
def test_floor_gives_every_arm_at_least_floor(name):
    mod = POLICIES[name]
    k, floor, n = 5, 0.04, 4000
    d = 4 if mod.CONTEXTUAL else 0
    params = np.array(PARAMS[name])
    gen = np.random.default_rng(0)
    state = mod.new_state(k, d, params)
    x = np.ones(d)
    for _ in range(400):  # arm 0 is clearly best, so without a floor the others starve
        arm = int(gen.integers(k))
        r = (10.0 if name == "thompson_value" else 1.0) if arm == 0 else 0.0
        mod.update(state, params, arm, r, x, 1.0)
    eligible = np.arange(k, dtype=np.int64)
    sel = np.full(k, 100, dtype=np.int64)
    rng = seed_state(5)
    out = np.empty(1, dtype=np.int64)
    counts = np.zeros(k)
    for t in range(n):
        p = mod.select(state, params, eligible, x, 400 + t, sel, floor, 0, 2, rng, out)
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
    params = np.array(PARAMS[name])
    state, ref = _trained_pair(mod, k, d, params, gen, int(gen.choice([0, 40])), 0.97,
                               int(gen.choice([1, 5])))
    single = tuple(a.copy() for a in state)
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
        mod.select_batch(state, params, eligible, contexts, t, sel, floor, burn_in, draws, rng,
                         out, prop)
        mod.select_batch_reference(ref, params, eligible, contexts, t, sel_ref, floor, burn_in,
                                   draws, src, out_ref, prop_ref)
        assert out.tolist() == out_ref.tolist()
        np.testing.assert_allclose(prop, prop_ref, rtol=0, atol=1e-9)
        assert np.array_equal(rng, src.state()) and np.array_equal(sel, sel_ref)
        _assert_states_equal(state, ref)
        for i in range(rows):  # the unary kernel, one decision at a time
            one = np.empty(n, dtype=np.int64)
            p = mod.select(single, params, eligible, contexts[i], t, sel_single, floor, burn_in,
                           draws, rng_single, one)
            sel_single[one] += 1
            assert one.tolist() == out[i].tolist() and p == prop[i]
        assert np.array_equal(rng, rng_single) and np.array_equal(sel, sel_single)


@pytest.mark.parametrize("name", list(PARAMS))
def test_update_batch_matches_reference_and_single_updates(name):
    mod = POLICIES[name]
    gen = np.random.default_rng(11)
    params = np.array(PARAMS[name])
    k, d = 7, (5 if mod.CONTEXTUAL else 0)
    state = mod.new_state(k, d, params, 4)
    ref, single = tuple(a.copy() for a in state), tuple(a.copy() for a in state)
    for discount in (1.0, 0.9) if not mod.CONTEXTUAL else (1.0,):
        rows = 50
        arms = gen.integers(0, k, size=rows).astype(np.int64)
        rewards = np.array([_reward(mod, gen) for _ in range(rows)])
        contexts = np.ascontiguousarray(gen.standard_normal((rows, d)))
        mod.update_batch(state, params, arms, rewards, contexts, discount)
        mod.update_batch_reference(ref, params, arms, rewards, contexts, discount)
        for i in range(rows):
            mod.update(single, params, int(arms[i]), float(rewards[i]), contexts[i], discount)
        _assert_states_equal(state, ref)
        for a, b in zip(state, single, strict=True):
            assert np.array_equal(a, b)
