"""Linear Thompson sampling (kernels/lin_thompson.py): what is specific to it; the
kernel-vs-reference and batch tests of every policy are in test_kernels_policies.py, its
learning test in test_convergence.py."""

from __future__ import annotations

from kernel_helpers import check_sherman_morrison_matches_inverse

from banditd.kernels import lin_thompson as mod
from banditd.kernels import lin_ucb


def test_state_and_update_are_lin_ucbs():
    assert mod.State is lin_ucb.State and mod.CACHE_FIELDS == ()
    assert mod._update is lin_ucb._update and mod._update_batch is lin_ucb._update_batch


def test_sherman_morrison_matches_inverse():
    check_sherman_morrison_matches_inverse(mod)
