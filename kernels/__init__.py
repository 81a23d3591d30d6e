"""Numba bandit kernels: one module per policy, each with the same small API.

A policy module declares ``NAME``, ``PARAM_NAMES`` (its float64 ``params`` vector, in order),
``EXAMPLE_PARAMS`` (valid values, for tests), ``CONTEXTUAL``, ``ESTIMATED_PROPENSITY``,
``REWARDS`` (what ``update`` learns from: ``"binary"`` 0/1, ``"value"`` revenue >= 0, or
``"real"``), ``State`` (a NamedTuple of its arrays, first axis = arm; snapshots store them in
field order), ``CACHE_FIELDS`` (the State fields that only cache derived values), and
``new_state``, ``add_aggregate``, ``summary``, two jitted kernels ``_select`` / ``_update`` and
their references ``select_reference`` / ``update_reference``. From these
:func:`kernels.common.policy_api` writes ``select``, ``update``, ``bind_select`` /
``bind_update`` (the two typed or bound once for a state: the server's per-decision and
per-reward calls), ``select_batch``, ``update_batch`` (many decisions / rewards in one compiled
call) and ``select_batch_reference``, ``update_batch_reference``. Every public function takes
keyword arguments only.

Adding a policy: its module, its test module (tests/test_kernels_<name>.py) and its entry in
``POLICIES`` (the registry the server, the warm-up and the generic kernel tests go through).
"""

from types import ModuleType

from . import epsilon_greedy, lin_thompson, lin_ucb, thompson, thompson_value, ucb1

POLICIES: dict[str, ModuleType] = {
    m.NAME: m for m in (thompson, thompson_value, ucb1, epsilon_greedy, lin_ucb, lin_thompson)
}

__all__ = ["POLICIES"]
