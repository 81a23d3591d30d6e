"""Bounded store of recent decisions, so a late reward needs only its decision_id.

Each record keeps what the reward needs (experiment, slate, context) and what
off-policy evaluation needs (propensity, model version, time). Capacity and TTL
bound memory: the oldest records go first. A record remembers whether it was
rewarded, so a retried RecordReward is recognised as a duplicate.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

import numpy as np


class DecisionRecord:
    """What the server remembers of one decision."""

    __slots__ = (
        "experiment_uid",
        "arm_ids",
        "context",
        "propensity",
        "model_version",
        "created",
        "rewarded",
    )

    def __init__(
        self,
        experiment_uid: int,
        arm_ids: tuple[str, ...],
        context: np.ndarray | None,
        propensity: float,
        model_version: int,
        created: float,
        rewarded: bool = False,
    ) -> None:
        self.experiment_uid = experiment_uid
        self.arm_ids = arm_ids
        self.context = context
        self.propensity = propensity
        self.model_version = model_version
        self.created = created  # wall clock, seconds since the epoch
        self.rewarded = rewarded


class DecisionStore:
    """Insertion-ordered map decision_id -> DecisionRecord with capacity and TTL."""

    def __init__(self, capacity: int, ttl_seconds: float, id_prefix: str | None = None) -> None:
        self.capacity = capacity
        self.ttl_seconds = ttl_seconds
        # A random per-process prefix keeps ids unique across restarts without a
        # per-request uuid4 (which costs more than the rest of the id).
        self._prefix = id_prefix if id_prefix is not None else secrets.token_hex(6)
        self._counter = 0
        self._records: OrderedDict[str, DecisionRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def new_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"

    def put(self, decision_id: str, record: DecisionRecord, expire: bool = True) -> None:
        records = self._records
        records[decision_id] = record
        if len(records) > self.capacity:
            records.popitem(last=False)
        if expire:
            self._expire(record.created)

    def items(self) -> list[tuple[str, DecisionRecord]]:
        """The records, oldest first (a copy of the references, taken at once)."""
        return list(self._records.items())

    def get(self, decision_id: str, now: float | None = None) -> DecisionRecord | None:
        """The live record of ``decision_id``, or None if unknown or expired."""
        record = self._records.get(decision_id)
        if record is None:
            return None
        if (now if now is not None else time.time()) - record.created > self.ttl_seconds:
            return None
        return record

    def _expire(self, now: float) -> None:
        # Records are in creation order, so expired ones sit at the front.
        records = self._records
        deadline = now - self.ttl_seconds
        while records:
            first = next(iter(records.values()))
            if first.created >= deadline:
                break
            records.popitem(last=False)

    def load(self, pairs) -> None:
        """Replace the contents with (decision_id, record) pairs, oldest first (restore)."""
        self._records = OrderedDict(pairs)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def discard(self, decision_id: str) -> None:
        self._records.pop(decision_id, None)

    def clear(self) -> None:
        self._records.clear()
