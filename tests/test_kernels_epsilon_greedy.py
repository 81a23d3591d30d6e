"""ε-greedy (kernels/epsilon_greedy.py): what is specific to it; the kernel-vs-reference and
batch tests of every policy are in test_kernels_policies.py, its learning test in
test_convergence.py."""

from __future__ import annotations

import numpy as np
import pytest

from banditd.kernels import epsilon_greedy as mod
from banditd.kernels.rng import seed_state


def test_state_fields_in_snapshot_order():
    """Snapshots store the state's arrays in this order: it must not change."""
    assert mod.State._fields == ("counts", "reward_sum")
    assert mod.CACHE_FIELDS == ()


def test_epsilon_greedy_propensity_is_exact():
    eps, decay, t = 0.3, 0.01, 50
    params = np.array([eps, decay])
    counts = np.array([10.0, 10.0, 10.0, 0.0, 10.0])
    sums = np.array([1.0, 5.0, 5.0, 0.0, 2.0])  # arms 1 and 2 tie for the greedy choice
    state = mod.State(counts, sums)
    eligible = np.arange(5, dtype=np.int64)
    sel = np.zeros(5, dtype=np.int64)
    eps_t = eps / (1 + decay * t)
    expected = eps_t / 5 + (1 - eps_t) * np.array([0, 0.5, 0.5, 0, 0])
    rng = seed_state(1)
    out = np.empty(1, dtype=np.int64)
    freq = np.zeros(5)
    n = 20_000
    for _ in range(n):
        p = mod.select(state=state, params=params, eligible=eligible, context=np.empty(0), t=t,
                       selections=sel, floor=0.0, burn_in=0, draws=1, rng=rng, out=out)
        assert p == pytest.approx(expected[out[0]], abs=1e-15)
        freq[out[0]] += 1
    np.testing.assert_allclose(freq / n, expected, atol=4 * np.sqrt(0.25 / n))
