"""Reward records: how a reward changes state (learned once per decision), and its record.

A reward is applied in one way, live and on replay (:meth:`Learning.apply`): its decision is
marked rewarded in the decision store — or, for a reward by explicit arm whose decision is
unknown, a rewarded *tombstone* is stored under the decision id, so that a retry is recognised —
and the experiment learns it (one kernel call per experiment and record). A request's check
leaves out the rewards it already knows to be duplicates (they make no record), and the apply
decides again, row by row: a row whose decision (same experiment incarnation) is rewarded by the
time the record is applied, or whose tombstone exists by then, is skipped and reported a
duplicate. On a single server the check has excluded them all; among replicas, where the same
decision's reward may be checked on two replicas at once, the order of the shared log decides
which one counts: exactly once, on every replica alike.

The record is a ``RewardTable`` (``banditd.storage.v1``): the rewards of one request as columns,
with the time they were recorded (which decides, on replay as live, whether a decision had
expired by then).

Reward windows (``Experiment.reward_wait_seconds``) add two things, both applied here:

* a ``DefaultRewards`` record settles decisions that got no reward within their window: each is
  learned once with the experiment's default reward, for the first arm of its slate, and marked
  *defaulted* in the decision store (:meth:`Learning.apply_defaults`);
* a reward for a defaulted decision is a *correction* (a row listed in the table's
  ``corrections``, with the arm the default was learned for): the experiment's statistics become
  those of having learned that reward instead of the default (:meth:`Experiment.correct`), which
  needs no decision record, so a replica that keeps none applies it the same way.
"""

from __future__ import annotations

from itertools import accumulate

import numpy as np

from banditd.server.state.decision_store import DecisionRecord, DecisionStore
from banditd.server.state.experiment import Experiment
from banditd.server.state.registry import ExperimentRegistry
from banditd.storage.v1 import storage_pb2 as st

_EMPTY = np.empty(0, dtype=np.float64)


class RewardRows:
    """The rewards of one request, as the columns of a ``reward_table`` record. Rows added
    live also carry what the request's checks already looked up (the experiment object, the
    arm's position, the decision's row), so applying them does not look those up again; rows
    decoded from the log look them up."""

    __slots__ = ("created", "experiment_ids", "arm_ids", "rewards", "contexts", "decision_ids",
                 "tombstones", "experiments", "arms", "seqs", "corrections",
                 "corrected_arm_ids")

    def __init__(self, created: float) -> None:
        self.created = created  # seconds since the epoch
        self.experiment_ids: list[str] = []
        self.arm_ids: list[str] = []
        self.rewards: list[float] = []
        self.contexts: list[np.ndarray] = []
        self.decision_ids: list[str] = []
        self.tombstones: list[bool] = []
        self.experiments: list[Experiment | None] = []
        self.arms: list[int] = []
        self.seqs: list[int] = []  # decision store row, -1 = look it up
        self.corrections: list[int] = []  # rows that correct a default reward, ascending
        self.corrected_arm_ids: list[str] = []  # per correction: the arm the default was for

    def __len__(self) -> int:
        return len(self.rewards)

    def add(self, experiment: Experiment, arm: int, reward: float, context: np.ndarray,
            decision_id: str, tombstone: bool, seq: int = -1,
            corrects: str | None = None) -> None:
        """One checked reward of arm position ``arm``; ``seq``: its decision's row when the
        check found it (the decision belongs to this experiment incarnation); ``corrects``:
        the decision was settled with the default reward, learned for this arm id."""
        if corrects is not None:
            self.corrections.append(len(self.rewards))
            self.corrected_arm_ids.append(corrects)
        self.experiment_ids.append(experiment.experiment_id)
        self.arm_ids.append(experiment.arm_ids[arm])
        self.rewards.append(reward)
        self.contexts.append(context)
        self.decision_ids.append(decision_id)
        self.tombstones.append(tombstone)
        self.experiments.append(experiment)
        self.arms.append(arm)
        self.seqs.append(seq)

    def encode(self) -> st.WalRecord:
        table = dict(
            experiment_ids=self.experiment_ids, arm_ids=self.arm_ids, rewards=self.rewards,
            context_sizes=[len(c) for c in self.contexts], decision_ids=self.decision_ids,
            tombstones=self.tombstones, created=self.created)
        with_context = [c for c in self.contexts if len(c)]
        if with_context:
            table["contexts"] = np.concatenate(with_context).tolist()
        if self.corrections:
            table["corrections"] = self.corrections
            table["corrected_arm_ids"] = self.corrected_arm_ids
        return st.WalRecord(reward_table=table)  # built in place

    @classmethod
    def decode(cls, t: st.RewardTable) -> RewardRows:
        """A logged ``RewardTable``'s rows (nothing looked up yet)."""
        n = len(t.rewards)
        for name in ("experiment_ids", "arm_ids", "context_sizes", "decision_ids", "tombstones"):
            if len(getattr(t, name)) != n:
                raise ValueError(f"reward table of {n} rewards has {len(getattr(t, name))} "
                                 f"{name}")
        rows = cls(t.created)
        rows.experiment_ids = t.experiment_ids[:]
        rows.arm_ids = t.arm_ids[:]
        rows.rewards = t.rewards[:]
        # (NumPy on a handful of values costs tens of µs: kept out of rewards without context)
        values = np.array(t.contexts, dtype=np.float64) if len(t.contexts) else _EMPTY
        sizes = t.context_sizes[:]
        if sum(sizes) != len(values):
            raise ValueError(f"reward table's context sizes add up to {sum(sizes)}, it has "
                             f"{len(values)} context values")
        if len(values):
            offsets = [0, *accumulate(sizes)]
            rows.contexts = [values[a:b] if b > a else _EMPTY
                             for a, b in zip(offsets, offsets[1:], strict=False)]
        else:
            rows.contexts = [_EMPTY] * n
        rows.decision_ids = t.decision_ids[:]
        rows.tombstones = t.tombstones[:]
        if len(t.corrections) or len(t.corrected_arm_ids):
            rows.corrections = t.corrections[:]
            rows.corrected_arm_ids = t.corrected_arm_ids[:]
            if len(rows.corrections) != len(rows.corrected_arm_ids) or \
                    any(i >= n for i in rows.corrections):
                raise ValueError(f"reward table of {n} rewards has corrections "
                                 f"{rows.corrections[:5]} for {len(rows.corrected_arm_ids)} "
                                 "arms")
        rows.experiments = [None] * n
        rows.arms = [-1] * n
        rows.seqs = [-1] * n
        return rows

    @classmethod
    def decode_legacy(cls, record: st.Rewards) -> RewardRows:
        """The rows of a ``rewards`` record (the message-per-reward form of older logs)."""
        t = st.RewardTable(created=0.0)
        for r in record.items:
            t.experiment_ids.append(r.experiment_id)
            t.arm_ids.append(r.arm_id)
            t.rewards.append(r.reward)
            t.context_sizes.append(len(r.context))
            t.contexts.extend(r.context)
            t.decision_ids.append(r.decision_id)
            t.tombstones.append(r.tombstone)
        return cls.decode(t)


class _Group:
    """The rewards of one experiment within a record, learned with one kernel call."""

    __slots__ = ("experiment", "arms", "rewards", "contexts")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.arms: list[int] = []
        self.rewards: list[float] = []
        self.contexts: list[np.ndarray] = []

    def learn(self) -> None:
        e = self.experiment
        n = len(self.arms)
        if n == 1:
            e.reward(self.arms[0], self.rewards[0], self.contexts[0])
            return
        contexts = np.array(self.contexts) if e.context_dim else np.empty((n, 0))
        e.reward_many(np.array(self.arms, dtype=np.int64),
                      np.array(self.rewards, dtype=np.float64), contexts)


class Learning:
    """Applies reward records to the experiments and the decision store."""

    def __init__(self, experiments: ExperimentRegistry, store: DecisionStore) -> None:
        self.experiments = experiments
        self.store = store

    def apply(self, rows: RewardRows) -> list[bool]:
        """Apply a ``reward_table`` record: per row, its decision's bookkeeping; then each
        experiment learns its rows in order (the same state as one by one), then the
        corrections of default rewards, in order. Returns, per row, whether it was a duplicate
        (skipped: its decision had its reward already)."""
        groups: dict[int, _Group] = {}
        corrected = (dict(zip(rows.corrections, rows.corrected_arm_ids, strict=True))
                     if rows.corrections else None)
        late: list[tuple[Experiment, int, float, np.ndarray, str]] = []
        duplicates = [False] * len(rows.rewards)
        # a record of older logs has no time: decisions are then found whatever their age
        now = rows.created if rows.created else -np.inf
        for i in range(len(rows.rewards)):
            e = rows.experiments[i]
            if e is None:
                e = self.experiments.get(rows.experiment_ids[i])
            arm = rows.arms[i]
            if arm < 0:
                arm = e.arm_index[rows.arm_ids[i]]
            group = groups.get(e.uid)
            if group is None:
                group = groups[e.uid] = _Group(e)
            decision_id = rows.decision_ids[i]
            if decision_id and not self._settle(e, arm, decision_id, rows.tombstones[i],
                                                rows.seqs[i], now, e.version + len(group.arms),
                                                rows.created, rows.rewards[i]):
                duplicates[i] = True
                continue
            if corrected is not None and i in corrected:
                late.append((e, arm, rows.rewards[i], rows.contexts[i], corrected[i]))
                continue
            group.arms.append(arm)
            group.rewards.append(rows.rewards[i])
            group.contexts.append(rows.contexts[i])
        for group in groups.values():
            if group.arms:
                group.learn()
        for e, arm, reward, context, defaulted_arm_id in late:
            e.correct(e.arm_index.get(defaulted_arm_id, -1), arm, reward, context)
        return duplicates

    def _settle(self, e: Experiment, arm: int, decision_id: str, tombstone: bool, seq: int,
                now: float, version: int, created: float, reward: float) -> bool:
        """The decision store's side of one reward: its decision marked rewarded (when it
        belongs to this incarnation) with the reward and the slot it was for, or a rewarded
        tombstone stored for an unknown one. ``version``: the experiment's model version just
        before this reward is learned. False if the reward is a duplicate: its decision (or
        tombstone) is rewarded already."""
        store = self.store
        arm_id = e.arm_ids[arm]
        if seq < 0:
            found = store.find(decision_id, now)
            if found is None:
                if tombstone:
                    store.put(decision_id, DecisionRecord(
                        e.uid, (arm_id,), None, 0.0, version,
                        created if created else 0.0, rewarded=True), expire=False)
                return True
            if store.uid_of(found) != e.uid:
                return True  # made before a reset, or for another experiment
            seq = found
        if store.is_rewarded_row(seq):
            return False
        store.mark_rewarded_row(seq, reward, store.slot_of(seq, arm_id))
        return True

    def apply_defaults(self, record: st.DefaultRewards, seqs: np.ndarray | None = None) -> None:
        """Apply a ``default_rewards`` record: its decisions marked defaulted in the decision
        store (``seqs``: their rows, when the sweep that made the record found them; else
        looked up by id), and each learned with the default reward for its first arm (one
        kernel call). A decision whose arm was removed since is marked but learns nothing."""
        n = record.count
        positions = np.frombuffer(record.arm_positions, dtype="<u4")
        if positions.size != n or (n and int(positions.max()) >= len(record.arm_ids)):
            raise ValueError(f"default rewards of {n} decisions have {positions.size} arm "
                             f"positions for {len(record.arm_ids)} arms")
        d = record.context_dim
        contexts = np.frombuffer(record.contexts, dtype="<f8")
        if contexts.size != n * d:
            raise ValueError(f"default rewards of {n} decisions x {d} features have "
                             f"{contexts.size} context values")
        store = self.store
        if store.keeps_records:
            if seqs is None:
                issuers = np.frombuffer(record.id_issuers, dtype="<u4").astype(np.int64)
                counters = np.frombuffer(record.id_counters, dtype="<u8").astype(np.int64)
                if issuers.size != n or counters.size != n or \
                        (n and int(issuers.max()) >= len(record.id_prefixes)):
                    raise ValueError(f"default rewards of {n} decisions have {issuers.size} "
                                     f"issuers and {counters.size} counters")
                seqs = store.rows_of_ids(record.id_prefixes, issuers, counters, -np.inf)
                seqs = seqs[seqs >= 0]
                seqs = seqs[store.uids_of(seqs) == record.experiment_uid]
            store.mark_defaulted_rows(seqs, record.reward)
        e = self.experiments.find(record.experiment_id)
        if e is None or e.uid != record.experiment_uid or not n:
            return  # deleted or reset since: nothing of that incarnation is learned any more
        index = np.array([e.arm_index.get(a, -1) for a in record.arm_ids], dtype=np.int64)
        arms = index[positions]
        keep = arms >= 0
        rows = contexts.reshape(n, d)
        if not keep.all():
            arms, rows = arms[keep], rows[keep]
        if len(arms):
            e.reward_many(arms, np.full(len(arms), record.reward),
                          np.array(rows, dtype=np.float64))  # a writable copy for the kernel
