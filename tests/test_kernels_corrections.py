"""Late rewards at the kernel level: ``revalue`` (a learned reward replaced by another) gives the
state of having learned the other one, and ``retract`` undoes ``update``, exactly where the
values are exact (0/1 and integer rewards) and up to the rounding of a reordered sum otherwise;
linear policies cannot retract."""

from __future__ import annotations

import numpy as np
import pytest

from banditd.kernels import POLICIES

PARAMS = {
    "thompson": [1.0, 2.0],
    "thompson_value": [1.0, 1.0, 10.0, 2.0],
    "ucb1": [0.7],
    "epsilon_greedy": [0.2, 0.01],
    "lin_ucb": [0.8, 1.5],
    "lin_thompson": [0.5, 1.5],
}
K, D = 4, 3


def _value(name: str, gen, exact: bool) -> float:
    """A reward of policy ``name``'s kind: 0/1 for thompson, else an integer (``exact``) or any
    float."""
    if name == "thompson":
        return float(gen.random() < 0.4)
    if name == "thompson_value":
        r = float(gen.integers(1, 50)) if exact else float(gen.exponential(7.0))
        return r if gen.random() < 0.5 else 0.0
    return float(gen.integers(-3, 4)) if exact else float(gen.normal(0.3, 1.0))


def _fresh(mod, gen, updates: int):
    params = np.array(PARAMS[mod.NAME])
    d = D if mod.CONTEXTUAL else 0
    state = mod.new_state(K, d, params, 8)
    for _ in range(updates):
        x = gen.integers(-2, 3, d).astype(np.float64)  # small integers: exact products
        mod.update(state, params, int(gen.integers(K)), _value(mod.NAME, gen, True), x, 1.0)
    return params, state


def _learned(mod, params, state):
    """The state's learned arrays (not the Monte-Carlo caches, which revalue invalidates)."""
    return [a.copy() for i, a in enumerate(state) if i not in mod.CACHE_ARRAYS]


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("exact", [True, False])
def test_revalue_gives_the_state_of_the_reward_learned_instead(name, exact):
    mod = POLICIES[name]
    gen = np.random.default_rng(3)
    for trial in range(20):
        params, base = _fresh(mod, gen, 30)
        late = tuple(a.copy() for a in base)  # learns the default, then the correction
        on_time = tuple(a.copy() for a in base)  # learns the real reward at once
        arm = int(gen.integers(K))
        x = gen.integers(-2, 3, D if mod.CONTEXTUAL else 0).astype(np.float64)
        default = 0.0 if trial % 2 else _value(name, gen, True)
        real = _value(name, gen, exact)
        mod.update(late, params, arm, default, x, 1.0)
        mod.update(on_time, params, arm, real, x, 1.0)
        later = [(int(gen.integers(K)), _value(name, gen, True),
                  gen.integers(-2, 3, x.shape[0]).astype(np.float64)) for _ in range(10)]
        for a, r, y in later:  # other updates between the default and the correction
            mod.update(late, params, a, r, y, 1.0)
            mod.update(on_time, params, a, r, y, 1.0)
        mod.revalue(late, params, arm, default, real, x)
        for got, want in zip(_learned(mod, params, late), _learned(mod, params, on_time),
                             strict=True):
            if exact:  # integer sums and products: the same bits, whatever the order
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        if name in ("thompson", "thompson_value"):
            assert late[-1][arm] == 0.0  # the arm's cached posterior draws are stale now


@pytest.mark.parametrize("name", ["thompson", "thompson_value", "ucb1", "epsilon_greedy"])
def test_retract_undoes_an_update(name):
    mod = POLICIES[name]
    gen = np.random.default_rng(5)
    for _ in range(20):
        params, state = _fresh(mod, gen, 30)
        before = _learned(mod, params, state)
        arm, reward = int(gen.integers(K)), _value(name, gen, True)
        mod.update(state, params, arm, reward, np.empty(0), 1.0)
        assert any((a != b).any() for a, b in zip(_learned(mod, params, state), before,
                                                   strict=True))
        mod.retract(state, params, arm, reward, np.empty(0))
        for got, want in zip(_learned(mod, params, state), before, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["lin_ucb", "lin_thompson"])
def test_linear_policies_cannot_retract(name):
    mod = POLICIES[name]
    params, state = _fresh(mod, np.random.default_rng(1), 5)
    with pytest.raises(NotImplementedError):
        mod.retract(state, params, 0, 1.0, np.ones(D))
