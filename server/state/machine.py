"""The state machine: every piece of in-memory state, and the one way to change it.

Each change of state is a record (``banditd.storage.v1.WalRecord``), applied by the module
that owns that state. The same apply serves a live request (its handler checks the request,
builds the record, applies it and logs it), the restore of a data directory (snapshot + log
tail, :mod:`storage.recovery`) and a replica consuming the log, as in Raft's replicated state
machine or Redis' AOF replay. The log itself never looks inside a record.

Record types and who applies them:

================== ================================================ ======================
record             applied by                                       module
================== ================================================ ======================
create_experiment  :meth:`ExperimentRegistry.apply_create`          state/registry.py
delete_experiment  :meth:`ExperimentRegistry.apply_delete`          state/registry.py
update_arms        :meth:`ExperimentRegistry.apply_update_arms`     state/registry.py
reset_experiment   :meth:`ExperimentRegistry.apply_reset`           state/registry.py
ingest_metrics     :meth:`ExperimentRegistry.apply_ingest`          state/registry.py
decision_table     :meth:`Decisions.apply_table`                    state/decisions.py
decision_block     :meth:`Decisions.apply_block`                    state/decisions.py
reward_table       :meth:`Learning.apply`                           state/rewards.py
campaign           :meth:`CampaignRegistry.apply_config`            ads/pacing.py
campaign_day       :meth:`Campaign.apply_day`                       ads/pacing.py
pace               :meth:`Campaign.apply_pace`                      ads/pacing.py
spend              :meth:`Campaign.apply_settlement`                ads/pacing.py
================== ================================================ ======================

Older logs also hold ``rewards``, ``decisions``, ``reservation`` and ``campaign_state``
records; they are still applied (the same owners, converted forms).

A record of an administrative change also carries its ``audit`` entry, applied after the change
by :meth:`AuditTrail.apply` (state/audit.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from banditd.server.ads.pacing import CampaignRegistry
from banditd.server.settings import Settings
from banditd.server.state import image
from banditd.server.state.audit import AuditTrail
from banditd.server.state.decision_store import DecisionStore
from banditd.server.state.decisions import Decisions
from banditd.server.state.registry import ExperimentRegistry
from banditd.server.state.rewards import Learning, RewardRows
from banditd.storage.v1 import storage_pb2 as st


class StateMachine:
    """Experiments, decisions and campaigns, changed only by :meth:`apply` (or the typed
    appliers it dispatches to, which live handlers call with the records they built)."""

    def __init__(self, settings: Settings, decision_store: DecisionStore | None = None) -> None:
        self.settings = settings
        self.experiments = ExperimentRegistry(settings)
        self.store = decision_store if decision_store is not None else DecisionStore(
            settings.decision_capacity, settings.decision_ttl_seconds)
        self.campaigns = CampaignRegistry(settings)
        self.decisions = Decisions(self.experiments, self.store)
        self.learning = Learning(self.experiments, self.store)
        self.audit = AuditTrail(settings.audit_entries)
        campaign = self.campaigns.campaign_of
        self._appliers: dict[str, Callable[[Any], object]] = {
            "create_experiment": self.experiments.apply_create,
            "delete_experiment": self.experiments.apply_delete,
            "update_arms": self.experiments.apply_update_arms,
            "reset_experiment": self.experiments.apply_reset,
            "ingest_metrics": self.experiments.apply_ingest,
            "decision_table": self.decisions.apply_table,
            "decision_block": self.decisions.apply_block,
            "reward_table": lambda t: self.learning.apply(RewardRows.decode(t)),
            "campaign": self.campaigns.apply_config,
            "campaign_day": lambda r: campaign(r).apply_day(r),
            "pace": lambda r: campaign(r).apply_pace(r),
            "spend": lambda r: campaign(r).apply_settlement(r),
            # older logs
            "rewards": lambda r: self.learning.apply(RewardRows.decode_legacy(r)),
            "decisions": self.decisions.apply_legacy,
            "reservation": lambda r: campaign(r).apply_reservation(r),
            "campaign_state": self.campaigns.load,
        }

    def fresh(self) -> StateMachine:
        """An empty state machine of the same configuration: same settings, same random
        stream per experiment, a decision store issuing the same ids (to rebuild into)."""
        other = StateMachine(self.settings, self.store.fresh())
        other.experiments.stream = self.experiments.stream
        return other

    def adopt(self, other: StateMachine) -> None:
        """Take over ``other``'s contents in place (a state rebuilt from the disk): the
        objects handlers hold stay the same, what they hold is ``other``'s."""
        self.experiments.adopt(other.experiments)
        self.store.adopt(other.store)
        self.campaigns.adopt(other.campaigns)

    def apply(self, record: st.WalRecord) -> object:
        """Apply one record; returns what its applier returns."""
        op = record.WhichOneof("op")
        applier = self._appliers.get(op) if op is not None else None
        if applier is None:
            raise ValueError(f"unknown log record {op!r}")
        result = applier(getattr(record, op))
        if record.HasField("audit"):
            self.audit.apply(record.audit)
        return result

    def apply_bytes(self, payload: bytes) -> object:
        """Apply one encoded record (as the log holds it)."""
        return self.apply(st.WalRecord.FromString(payload))

    # -- images (snapshots, a new replica) ----------------------------------------------------
    def image(self, lsn: int) -> tuple[bytes, list[memoryview]]:
        """The state as an image message and its array pieces (views, not copies), for log
        position ``lsn``."""
        return image.encode(image.capture(self), lsn)

    def load_image(self, message: bytes, section: memoryview, name: str) -> int:
        """Replace the state with an image's; returns the log position it is the state of.
        :class:`image.ImageError` (naming ``name``) if the message cannot be read."""
        snap = image.parse(message, name)
        image.load(self, snap, section)
        return int(snap.lsn)
