"""Decision records: how a decision changes state, and how it is written down.

A decision is applied in one way, live and on replay: it is stored in the decision store (so a
late reward needs only its id) and every arm of its slate counts as a selection of its
experiment (the incarnation it was made for: a decision made before a reset or a delete counts
nowhere). Making the decision — the kernel's draw — is not part of applying it: the draw uses
the experiment's random stream, which snapshots keep and the log does not replay.

Records (``banditd.storage.v1``): single decisions (SelectArm) are gathered as the columns of one
``DecisionTable`` until the log takes them (:class:`PendingDecisions`); each group of a
``BatchSelectArms`` is one ``DecisionBlock`` of raw arrays (consecutive ids, one experiment).
Both are logged without waiting for the disk: after a crash a decision from the last moments
may be unknown, and its reward then needs ``arm_id``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from banditd.server.state.decision_store import DecisionColumns, DecisionStore, slate_tuples
from banditd.server.state.experiment import Experiment
from banditd.server.state.registry import ExperimentRegistry
from banditd.storage.v1 import storage_pb2 as st


class Decisions:
    """Applies decision records to the decision store and the experiments' selection counts."""

    def __init__(self, experiments: ExperimentRegistry, store: DecisionStore) -> None:
        self.experiments = experiments
        self.store = store

    # -- live -----------------------------------------------------------------------------------
    def apply_new(self, experiment: Experiment, ranked: list[int], slate: tuple[str, ...],
                  context: np.ndarray | None, propensity: float, version: int,
                  created: float) -> str:
        """Apply one new decision of ``experiment`` (SelectArm): ``ranked`` are the slate's arm
        positions, ``slate`` their ids. Returns its id (issued by the store). The one-row form of
        :meth:`apply_columns`, for the hot path; a test checks both give the same state."""
        experiment.count_selections(ranked)
        return self.store.put_new(experiment.uid, slate, context, propensity, version, created)

    # -- live and replay --------------------------------------------------------------------------
    def apply_columns(self, cols: DecisionColumns, experiment_ids: Sequence[str],
                      first_counter: int | None = None, issuer: str | None = None,
                      positions: tuple[Sequence[str], np.ndarray] | None = None) -> None:
        """Apply decisions given as columns (a batch group, or a logged table or block):
        stored, then each slate counted for its experiment incarnation. ``experiment_ids[i]``
        names row i's experiment (one entry: all rows); ``first_counter``/``issuer``: the ids
        are consecutive (see :meth:`DecisionStore.put_many`). ``positions``: the slates as
        (arm ids, positions into them, all rows flattened), when known (a batch group, a
        block): counted with one bincount instead of per slate."""
        self.store.put_many(cols, expire=False, first_counter=first_counter, issuer=issuer)
        self._count(experiment_ids, cols.uids, cols.slates, positions)

    def _count(self, experiment_ids: Sequence[str], uids: np.ndarray,
               slates: list[tuple[str, ...]],
               positions: tuple[Sequence[str], np.ndarray] | None) -> None:
        """Count each slate for its experiment incarnation (see :meth:`apply_columns`)."""
        n = len(slates)
        if not n:
            return
        one = len(experiment_ids) == 1 or (experiment_ids.count(experiment_ids[0]) == n
                                           and bool((uids == uids[0]).all()))
        if one:  # the usual case: one experiment, one incarnation
            experiment = self._incarnation(experiment_ids[0], int(uids[0]))
            if experiment is None:
                return
            if positions is not None:
                arm_ids, flat = positions
                counts = np.bincount(flat, minlength=len(arm_ids))
                experiment.add_selections(zip(arm_ids, counts.tolist(), strict=True))
            else:
                experiment.add_selections(Counter(a for s in slates for a in s).items())
            return
        seen: dict[tuple[str, int], Experiment | None] = {}
        for experiment_id, uid, slate in zip(experiment_ids, uids.tolist(), slates,
                                             strict=True):
            key = (experiment_id, uid)
            if key not in seen:
                seen[key] = self._incarnation(experiment_id, uid)
            e = seen[key]
            if e is not None:
                e.add_selections((arm_id, 1) for arm_id in slate)

    def apply_table(self, t: st.DecisionTable) -> None:
        """Apply a ``decision_table`` record (single decisions, in order)."""
        if self.store.keeps_records:
            self.apply_columns(table_columns(t), list(t.experiment_ids))
            return
        # a store that keeps nothing (a follower's): only the selections are counted
        slates: list[tuple[str, ...]] | None = (
            [(a,) for a in t.arm_ids] if len(t.arm_ids) == len(t.decision_ids) else None)
        if slates is None:
            arm_ids = list(t.arm_ids)
            offsets = np.cumsum([0, *t.slate_sizes]).tolist()
            slates = [tuple(arm_ids[a:b]) for a, b in zip(offsets, offsets[1:], strict=False)]
        self._count(list(t.experiment_ids), np.array(t.experiment_uids, dtype=np.int64),
                    slates, None)

    def apply_block(self, b: st.DecisionBlock) -> None:
        """Apply a ``decision_block`` record (a batch group of one experiment)."""
        positions = block_positions(b)
        if not self.store.keeps_records:  # a follower's: only the selections are counted
            self._count([b.experiment_id], np.full(b.count, b.experiment_uid, dtype=np.int64),
                        [()] * b.count, (b.arm_ids, positions))
            return
        self.apply_columns(block_columns(b, positions), [b.experiment_id], b.first_counter,
                           b.id_prefix, (b.arm_ids, positions))

    def apply_legacy(self, record: st.Decisions) -> None:
        """Apply a ``decisions`` record (the message-per-decision form of older logs)."""
        for d in record.items:
            context = np.array(d.context, dtype=np.float64) if d.has_context else None
            cols = DecisionColumns([d.decision_id], np.array([d.experiment_uid], dtype=np.int64),
                                   [tuple(d.arm_ids)], [context], np.array([d.propensity]),
                                   np.array([d.model_version], dtype=np.int64),
                                   np.array([d.created]), np.array([d.rewarded]))
            self.apply_columns(cols, [d.experiment_id])

    def _incarnation(self, experiment_id: str, uid: int) -> Experiment | None:
        """The experiment, if its incarnation ``uid`` still exists (None when it was deleted
        or reset since: its counters went with it)."""
        e = self.experiments.find(experiment_id)
        return e if e is not None and e.uid == uid else None


class PendingDecisions:
    """Decision records made but not handed to the log yet, in order: single decisions as the
    columns of a ``DecisionTable``, batch groups as encoded ``DecisionBlock`` records."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows = 0  # decisions held
        self._records: list[bytes] = []  # encoded, in order (the open table's rows follow)
        self._clear_table()

    def _clear_table(self) -> None:
        self.table_rows = 0
        self.ids: list[str] = []
        self.experiment_ids: list[str] = []
        self.uids: list[int] = []
        self.slate_sizes: list[int] = []
        self.arm_ids: list[str] = []
        self.context_sizes: list[int] = []
        self.contexts: list[np.ndarray] = []
        self.propensities: list[float] = []
        self.versions: list[int] = []
        self.created: list[float] = []

    def add(self, decision_id: str, experiment_id: str, uid: int, slate: tuple[str, ...],
            context: np.ndarray | None, propensity: float, version: int, created: float) -> None:
        self.rows += 1
        self.table_rows += 1
        self.ids.append(decision_id)
        self.experiment_ids.append(experiment_id)
        self.uids.append(uid)
        self.slate_sizes.append(len(slate))
        self.arm_ids.extend(slate)
        if context is None:
            self.context_sizes.append(0)
        else:
            self.context_sizes.append(len(context))
            self.contexts.append(context)
        self.propensities.append(propensity)
        self.versions.append(version)
        self.created.append(created)

    def add_block(self, experiment_id: str, uid: int, id_prefix: str, first_counter: int,
                  arm_ids: Sequence[str], ranked: np.ndarray, propensities: np.ndarray,
                  version: int, created: float, contexts: np.ndarray | None) -> None:
        """Decisions of one experiment made at once (a batch group): ids ``<id_prefix>-<hex>``
        from ``first_counter`` on, slate i = ``arm_ids[ranked[i]]``, ``contexts`` (rows, d)
        or None. Encoded now, as one ``DecisionBlock`` record of raw arrays."""
        self._close_table()
        count, size = ranked.shape
        positions = ranked.ravel()
        if len(arm_ids) > positions.size:  # many arms, few decisions: name the used ones
            used, positions = np.unique(positions, return_inverse=True)
            arm_ids = [arm_ids[i] for i in used.tolist()]
        block = dict(  # built in place in the record, as the table (see _close_table)
            experiment_id=experiment_id, experiment_uid=uid, id_prefix=id_prefix,
            first_counter=first_counter, count=count, slate_size=size, arm_ids=arm_ids,
            arm_positions=positions.astype("<u4").tobytes(),
            propensities=propensities.astype("<f8").tobytes(), model_version=version,
            created=created)
        if contexts is not None:
            block["context_dim"] = contexts.shape[1]
            block["contexts"] = contexts.astype("<f8").tobytes()
        self._records.append(st.WalRecord(decision_block=block).SerializeToString())
        self.rows += count

    def _close_table(self) -> None:
        """Encode the open table's rows (if any) as the next record."""
        if not self.table_rows:
            return
        # the table's fields as a dict: the record is built around them in place (a ready
        # DecisionTable message would be copied into it: serialised and parsed again)
        table = dict(
            decision_ids=self.ids, experiment_ids=self.experiment_ids,
            experiment_uids=self.uids, slate_sizes=self.slate_sizes, arm_ids=self.arm_ids,
            context_sizes=self.context_sizes, propensities=self.propensities,
            model_versions=self.versions, created=self.created,
        )
        if self.contexts:
            table["contexts"] = np.concatenate([c.ravel() for c in self.contexts]).tolist()
        self._records.append(st.WalRecord(decision_table=table).SerializeToString())
        self._clear_table()

    def encode(self) -> list[bytes]:
        """Every pending decision as log records, in order (then :meth:`clear`)."""
        self._close_table()
        records = self._records
        self.clear()
        return records


def block_positions(b: st.DecisionBlock) -> np.ndarray:
    """A ``DecisionBlock``'s arm positions, checked against its shape and arms."""
    if b.count and not b.slate_size:
        raise ValueError(f"decision block of {b.count} decisions has slates of 0 arms")
    positions = np.frombuffer(b.arm_positions, dtype="<u4")
    if positions.size != b.count * b.slate_size:
        raise ValueError(f"decision block of {b.count} x {b.slate_size} arms has "
                         f"{positions.size} arm positions")
    if positions.size and int(positions.max()) >= len(b.arm_ids):
        raise ValueError(f"decision block names {len(b.arm_ids)} arms but refers to arm "
                         f"{int(positions.max())}")
    return positions


def block_columns(b: st.DecisionBlock, positions: np.ndarray) -> DecisionColumns:
    """A ``DecisionBlock`` as the decision store's columns (ids None: they are consecutive,
    ``b.first_counter`` on, of ``b.id_prefix``); ``positions``: its :func:`block_positions`."""
    n = b.count
    slates = slate_tuples(list(b.arm_ids), positions.reshape(n, b.slate_size))
    contexts: list[np.ndarray | None] = [None] * n
    if b.context_dim:
        contexts = list(np.frombuffer(b.contexts, dtype="<f8").reshape(n, b.context_dim).copy())
    return DecisionColumns(
        None, np.full(n, b.experiment_uid, dtype=np.int64), slates, contexts,
        np.frombuffer(b.propensities, dtype="<f8").reshape(n).astype(np.float64),
        np.full(n, b.model_version, dtype=np.int64), np.full(n, b.created),
        np.zeros(n, dtype=np.bool_))


def table_columns(t: st.DecisionTable) -> DecisionColumns:
    """A ``DecisionTable`` (log record or snapshot) as the decision store's columns; a table
    whose columns disagree in length is refused (ValueError) before anything is stored."""
    n = len(t.decision_ids)
    for name in ("experiment_uids", "slate_sizes", "propensities", "model_versions", "created"):
        if len(getattr(t, name)) != n:
            raise ValueError(f"decision table of {n} ids has {len(getattr(t, name))} {name}")
    if len(t.rewarded) not in (0, n) or len(t.context_sizes) not in (0, n):
        raise ValueError(f"decision table of {n} ids has {len(t.rewarded)} rewarded flags and "
                         f"{len(t.context_sizes)} context sizes")
    arm_ids = list(t.arm_ids)
    slates: list[tuple[str, ...]]
    if n and len(arm_ids) == n:  # single-arm decisions only
        slates = [(a,) for a in arm_ids]
    else:
        slates = []
        a = 0
        for size in t.slate_sizes:
            slates.append(tuple(arm_ids[a : a + size]))
            a += size
    contexts: list[np.ndarray | None] = [None] * n
    if len(t.contexts):
        values = np.array(t.contexts, dtype=np.float64)
        c = 0
        for i, size in enumerate(t.context_sizes):
            if size:
                contexts[i] = values[c : c + size]
                c += size
    rewarded = (np.array(t.rewarded, dtype=np.bool_) if len(t.rewarded)
                else np.zeros(n, dtype=np.bool_))
    return DecisionColumns(list(t.decision_ids), np.array(t.experiment_uids, dtype=np.int64),
                           slates, contexts, np.array(t.propensities, dtype=np.float64),
                           np.array(t.model_versions, dtype=np.int64),
                           np.array(t.created, dtype=np.float64), rewarded)


def columns_table(cols: DecisionColumns) -> st.DecisionTable:
    """The decision store's columns (with ids) as a ``DecisionTable`` (snapshots)."""
    table = st.DecisionTable()
    if not len(cols):
        return table
    assert cols.ids is not None
    table.decision_ids.extend(cols.ids)
    table.experiment_uids.extend(cols.uids.tolist())
    table.slate_sizes.extend([len(s) for s in cols.slates])
    table.arm_ids.extend([a for s in cols.slates for a in s])
    table.propensities.extend(cols.propensities.tolist())
    table.model_versions.extend(cols.versions.tolist())
    table.created.extend(cols.created.tolist())
    table.rewarded.extend(cols.rewarded.tolist())
    table.context_sizes.extend([0 if c is None else len(c) for c in cols.contexts])
    contexts = [c for c in cols.contexts if c is not None]
    if contexts:
        table.contexts.extend(np.concatenate(contexts).tolist())
    return table

