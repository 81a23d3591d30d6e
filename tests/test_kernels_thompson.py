"""Beta–Bernoulli Thompson sampling (kernels/thompson.py): what is specific to it; the
kernel-vs-reference and batch tests of every policy are in test_kernels_policies.py."""

from __future__ import annotations

import numpy as np
from kernel_helpers import check_cached_rounds_are_redrawn_only_after_updates, copy_state

from banditd.kernels import thompson as mod
from banditd.kernels.rng import NumpyDraws, seed_state


def test_state_fields_in_snapshot_order():
    """Snapshots store the state's arrays in this order: it must not change."""
    assert mod.State._fields == ("successes", "failures", "mc", "mc_valid")
    assert mod.CACHE_FIELDS == ("mc", "mc_valid")


def test_cached_rounds_are_redrawn_only_after_updates():
    check_cached_rounds_are_redrawn_only_after_updates(mod)


def test_burn_in_puts_cold_arms_first():
    params = np.array([1.0, 1.0])
    state = mod.new_state(num_arms=6, dim=0, params=params)
    state.successes[:] = [50, 0, 50, 0, 0, 0]
    state.failures[:] = [1, 50, 1, 50, 50, 50]
    selections = np.array([9, 0, 9, 1, 9, 9], dtype=np.int64)
    eligible = np.arange(6, dtype=np.int64)
    rng = seed_state(2)
    for _ in range(50):
        out = np.empty(4, dtype=np.int64)
        p = mod.select(state=state, params=params, eligible=eligible, context=np.empty(0), t=0,
                       selections=selections, floor=0.0, burn_in=2, draws=4, rng=rng, out=out)
        assert set(out[:2].tolist()) == {1, 3}
        assert set(out[2:].tolist()) == {0, 2}  # then by score: the two strong arms
        assert p == 0.5


def test_thompson_propensity_estimate_matches_monte_carlo():
    params = np.array([1.0, 1.0])
    rounds = 20_000
    state = mod.new_state(num_arms=3, dim=0, params=params, draws=rounds)
    state.successes[:] = [10.0, 12.0, 8.0]
    state.failures[:] = [90.0, 88.0, 92.0]
    eligible = np.arange(3, dtype=np.int64)
    sel = np.zeros(3, dtype=np.int64)
    gen = NumpyDraws(0).gen
    draws = gen.beta(params[0] + state.successes, params[1] + state.failures, size=(100_000, 3))
    truth = np.bincount(np.argmax(draws, axis=1), minlength=3) / len(draws)
    rng = seed_state(8)
    out = np.empty(1, dtype=np.int64)
    for _ in range(5):
        state.mc_valid[:] = 0.0  # fresh rounds for each estimate
        p = mod.select(state=state, params=params, eligible=eligible, context=np.empty(0), t=0,
                       selections=sel, floor=0.0, burn_in=0, draws=0, rng=rng, out=out)
        assert abs(p - truth[out[0]]) < 0.015
    # reference with the fast NumPy source estimates the same probabilities
    ref = copy_state(state)
    ref.mc_valid[:] = 0.0
    out_ref = np.empty(1, dtype=np.int64)
    p_ref = mod.select_reference(state=ref, params=params, eligible=eligible, context=np.empty(0),
                                 t=0, selections=sel, floor=0.0, burn_in=0, draws=0,
                                 source=NumpyDraws(3), out=out_ref)
    assert abs(p_ref - truth[out_ref[0]]) < 0.015
