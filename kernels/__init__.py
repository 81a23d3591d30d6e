"""Numba bandit kernels: one module per policy, each with the same small API.

Every policy module exposes ``NAME``, ``PARAM_NAMES``, ``CONTEXTUAL``, ``ESTIMATED_PROPENSITY``,
``new_state``, ``select``, ``bind_select`` (``select`` typed once for a state: the server's
per-decision call), ``update``, ``select_batch``, ``update_batch`` (many decisions / rewards in
one compiled call), ``revalue`` / ``retract`` (a learned reward replaced / removed: late rewards
correcting a default; ``retract`` raises NotImplementedError where it cannot be exact) and the
references ``select_reference``, ``update_reference``, ``select_batch_reference``,
``update_batch_reference``.
"""

from types import ModuleType

from . import epsilon_greedy, lin_thompson, lin_ucb, thompson, thompson_value, ucb1

POLICIES: dict[str, ModuleType] = {
    m.NAME: m for m in (thompson, thompson_value, ucb1, epsilon_greedy, lin_ucb, lin_thompson)
}

__all__ = ["POLICIES"]
