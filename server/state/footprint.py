"""Estimated memory of the state: what the memory budget (``BANDITD_MEMORY_BUDGET_BYTES``)
counts when an experiment is created or arms are added.

An experiment takes, per arm, its policy state arrays (measured from the policy's own
``new_state`` for one arm), its counters, and the Python objects that name it (id string,
index entry, shared one-arm slate, configuration entry, encoded response fields). The decision
store takes a fixed number of rows (``decision_capacity``), each with its columns and, for
contextual experiments, a context array. tests/test_faults.py checks these estimates against
tracemalloc's measurement.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

PER_ARM_OBJECTS = 560  # bytes of Python objects per arm, beyond its id's characters
PER_ARM_ID_CHAR = 4  # each id character, in the objects that hold the id (str, wire bytes)
COUNTER_BYTES = 7 * 8  # selections, rewards, reward_sum, positives, ingested (3)
EXPERIMENT_OBJECTS = 16_384  # an experiment's own objects (config, buffers, kernel binding)
STORE_ROW = 128  # decision store, per row: columns, ring entries, list slots
CONTEXT_OBJECT = 112  # a stored context array, beyond its values


def experiment_bytes(kernel: ModuleType, params: np.ndarray, num_arms: int, context_dim: int,
                     draws: int, arm_id_chars: int) -> int:
    """Estimated bytes of an experiment with ``num_arms`` arms whose ids have
    ``arm_id_chars`` characters in all."""
    per_arm = sum(int(a.nbytes) for a in kernel.new_state(num_arms=1, dim=context_dim,
                                                          params=params, draws=draws))
    return (EXPERIMENT_OBJECTS + num_arms * (per_arm + COUNTER_BYTES + PER_ARM_OBJECTS)
            + arm_id_chars * PER_ARM_ID_CHAR)


def store_bytes(capacity: int, context_dim: int) -> int:
    """Estimated bytes of a full decision store whose largest context has ``context_dim``
    values (0: no contextual experiment)."""
    context = CONTEXT_OBJECT + 8 * context_dim if context_dim else 0
    return capacity * (STORE_ROW + context)
