"""Helpers shared by the kernel test modules (tests/test_kernels_*.py): example inputs for any
policy of ``banditd.kernels.POLICIES``, training a kernel state and its reference twin alike,
and the checks that two policies share (cached Monte-Carlo rounds, Sherman–Morrison)."""

from __future__ import annotations

import numpy as np

from banditd.kernels.rng import seed_state


def params_of(mod) -> np.ndarray:
    """The policy's example parameters as the float64 array its kernels take."""
    return np.array(mod.EXAMPLE_PARAMS, dtype=np.float64)


def reward(mod, gen: np.random.Generator) -> float:
    """A random reward of the kind the policy learns from (``mod.REWARDS``)."""
    if mod.REWARDS == "value":  # revenue of a conversion (30%), else 0
        return float(gen.exponential(10.0)) if gen.random() < 0.3 else 0.0
    if mod.REWARDS == "binary":
        return float(gen.random() < 0.3)
    return float(gen.normal(0.3, 1.0))


def copy_state(state):
    """A copy of a policy's State (its arrays copied)."""
    return state._make(a.copy() for a in state)


def train(mod, states, params, gen, n_updates, discount):
    """Apply the same random updates to every state in ``states``: the kernel's ``update`` to
    the first, ``update_reference`` to the others."""
    k, d = states[0][0].shape[0], (states[0][0].shape[-1] if mod.CONTEXTUAL else 0)
    for _ in range(n_updates):
        arm = int(gen.integers(k))
        x = gen.standard_normal(d)
        r = reward(mod, gen)
        disc = discount if (not mod.CONTEXTUAL and gen.random() < 0.3) else 1.0
        mod.update(state=states[0], params=params, arm=arm, reward=r, context=x, discount=disc)
        for ref in states[1:]:
            mod.update_reference(state=ref, params=params, arm=arm, reward=r, context=x,
                                 discount=disc)


def assert_states_equal(state, ref):
    assert type(state) is type(ref)
    for a, b in zip(state, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        assert a.dtype == np.float64 and a.flags.c_contiguous


def trained_pair(mod, k, d, params, gen, n_updates, discount, draws=32):
    """Same random updates applied by the kernel and by the reference; checked equal.
    Returns (kernel state, reference state), separate arrays (select may write to the state)."""
    state = mod.new_state(num_arms=k, dim=d, params=params, draws=draws)
    ref = copy_state(state)
    train(mod, (state, ref), params, gen, n_updates, discount)
    assert_states_equal(state, ref)
    return state, ref


def check_cached_rounds_are_redrawn_only_after_updates(mod):
    """The Thompson policies' Monte-Carlo rounds (``mc``, ``mc_valid``): drawn for the eligible
    arms when first needed, reused until the arm is updated, all invalid after discounting."""
    params = params_of(mod)
    k, rounds = 5, 6
    state = mod.new_state(num_arms=k, dim=0, params=params, draws=rounds)
    mc, valid = state.mc, state.mc_valid
    assert mc.shape == (k, rounds) and not valid.any()
    eligible = np.array([0, 2, 3], dtype=np.int64)
    out = np.empty(1, dtype=np.int64)
    sel = np.zeros(k, dtype=np.int64)

    def select(elig=eligible):
        return mod.select(state=state, params=params, eligible=elig, context=np.empty(0), t=0,
                          selections=sel, floor=0.0, burn_in=0, draws=99, rng=seed_state(1),
                          out=out)

    select(eligible[:1])  # a single eligible arm needs no Monte-Carlo rounds
    assert not valid.any()
    select()
    assert valid.tolist() == [1, 0, 1, 1, 0]
    before = mc.copy()
    select()
    assert np.array_equal(mc, before)  # no update: the rounds are reused
    mod.update(state=state, params=params, arm=2, reward=1.0, context=np.empty(0), discount=1.0)
    assert valid.tolist() == [1, 0, 0, 1, 0]
    select()
    assert np.array_equal(mc[[0, 3]], before[[0, 3]]) and not np.array_equal(mc[2], before[2])
    # discounting changes every posterior
    mod.update(state=state, params=params, arm=4, reward=0.0, context=np.empty(0), discount=0.9)
    assert not valid.any()


def check_sherman_morrison_matches_inverse(mod):
    """The linear policies' rank-one updates keep A⁻¹ (exactly symmetric), b and θ̂ = A⁻¹b equal
    to their direct computation."""
    d, k, ridge = 8, 3, 1.5
    params = np.array([0.5, ridge])
    state = mod.new_state(num_arms=k, dim=d, params=params)
    gen = np.random.default_rng(4)
    xs = {arm: [] for arm in range(k)}
    ys = {arm: [] for arm in range(k)}
    for _ in range(200):
        arm = int(gen.integers(k))
        x = gen.standard_normal(d)
        y = float(gen.normal())
        xs[arm].append(x)
        ys[arm].append(y)
        mod.update(state=state, params=params, arm=arm, reward=y, context=x, discount=1.0)
    for arm in range(k):
        x = np.array(xs[arm])
        want = np.linalg.inv(ridge * np.eye(d) + x.T @ x)
        np.testing.assert_allclose(state.a_inv[arm], want, rtol=0, atol=1e-8)
        assert np.array_equal(state.a_inv[arm], state.a_inv[arm].T)
        np.testing.assert_allclose(state.b[arm], x.T @ np.array(ys[arm]), atol=1e-10)
        np.testing.assert_allclose(state.theta[arm], want @ state.b[arm], atol=1e-8)
