"""Disjoint LinUCB (kernels/lin_ucb.py): what is specific to it; the kernel-vs-reference and
batch tests of every policy are in test_kernels_policies.py, its learning test in
test_convergence.py."""

from __future__ import annotations

from kernel_helpers import check_sherman_morrison_matches_inverse

from banditd.kernels import lin_ucb as mod


def test_state_fields_in_snapshot_order():
    """Snapshots store the state's arrays in this order: it must not change."""
    assert mod.State._fields == ("a_inv", "b", "theta")
    assert mod.CACHE_FIELDS == ()


def test_sherman_morrison_matches_inverse():
    check_sherman_morrison_matches_inverse(mod)
