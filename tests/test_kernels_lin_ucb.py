"""Disjoint LinUCB (kernels/lin_ucb.py): what is specific to it; the kernel-vs-reference and
batch tests of every policy are in test_kernels_policies.py, its learning test in
test_convergence.py."""

from __future__ import annotations

import numpy as np
from kernel_helpers import (
    assert_states_equal,
    check_sherman_morrison_matches_inverse,
    params_of,
    trained_pair,
)

from banditd.kernels import lin_ucb as mod


def test_state_fields_in_snapshot_order():
    """Snapshots store the state's arrays in this order: it must not change."""
    assert mod.State._fields == ("a_inv", "b", "theta")
    assert mod.CACHE_FIELDS == ()


def test_sherman_morrison_matches_inverse():
    check_sherman_morrison_matches_inverse(mod)


def test_revalue_matches_its_reference():
    """The compiled correction (b += (new - old)·x, θ̂ = A⁻¹b) against the NumPy one."""
    gen = np.random.default_rng(11)
    params = params_of(mod)
    state, ref = trained_pair(mod, 4, 5, params, gen, 40, 1.0)
    for _ in range(10):
        arm, x = int(gen.integers(4)), gen.standard_normal(5)
        old, new = float(gen.normal()), float(gen.normal())
        mod.revalue(state=state, params=params, arm=arm, old=old, new=new, context=x)
        mod.revalue_reference(state=ref, params=params, arm=arm, old=old, new=new, context=x)
        assert_states_equal(state, ref)
