"""Thompson sampling for value (kernels/thompson_value.py): what is specific to it; the
kernel-vs-reference and batch tests of every policy are in test_kernels_policies.py, its
learning test in test_convergence.py."""

from __future__ import annotations

import numpy as np
from kernel_helpers import check_cached_rounds_are_redrawn_only_after_updates

from banditd.kernels import thompson_value as mod


def test_state_fields_in_snapshot_order():
    """Snapshots store the state's arrays in this order: it must not change."""
    assert mod.State._fields == ("trials", "conversions", "revenue_sum", "revenue_sq", "mc",
                                 "mc_valid")
    assert mod.CACHE_FIELDS == ("mc", "mc_valid")


def test_cached_rounds_are_redrawn_only_after_updates():
    check_cached_rounds_are_redrawn_only_after_updates(mod)


def test_update_counts_conversions_and_revenue():
    """A reward is an event's revenue: 0 is a trial without conversion."""
    params = np.array(mod.EXAMPLE_PARAMS)
    state = mod.new_state(num_arms=2, dim=0, params=params)
    for revenue in (0.0, 12.5, 0.0, 2.5):
        mod.update(state=state, params=params, arm=1, reward=revenue, context=np.empty(0),
                   discount=1.0)
    assert state.trials.tolist() == [0.0, 4.0] and state.conversions.tolist() == [0.0, 2.0]
    assert state.revenue_sum.tolist() == [0.0, 15.0]
    assert state.revenue_sq.tolist() == [0.0, 12.5**2 + 2.5**2]
