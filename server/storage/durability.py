"""Durability: write-ahead log + periodic snapshots + restore (``BANDITD_DURABILITY``).

Modes and what an acknowledged write survives:

* ``os`` (default): every state change is written to the log (``write(2)``, group-committed)
  before the RPC answers: survives a crash or ``kill -9`` of the process; a power loss can
  lose what the OS had not flushed yet.
* ``fsync``: the log is also ``fsync``-ed before the RPC answers (one fsync per group of
  concurrent requests): survives power loss.
* ``snapshot``: no log; state is saved every ``BANDITD_SNAPSHOT_INTERVAL_SECONDS`` and on
  graceful shutdown: a crash loses the changes since the last snapshot.

Decision records (SelectArm) are logged without waiting for the disk: after a crash a
decision from the last moments may be unknown, and its reward then needs ``arm_id``. They wait
in :class:`PendingDecisions` until the log writes (at most
``BANDITD_DECISION_LOG_DELAY_SECONDS`` after a decision, or earlier with other records):
single decisions as columns, encoded as one ``decision_table`` record, so a decision costs a
few list appends instead of a message, an encoding and a flusher wake-up; each group of a
``BatchSelectArms`` as one ``decision_block`` record of raw arrays (consecutive ids, one
experiment), which costs no Python object per decision to write or to replay. A reward is
written after the decision records before it, so an acknowledged reward's decision always
survives.

The log is replayed through the same registry / experiment / decision-store code that
served the requests, so a restore reproduces the learned state exactly (the random
streams are restored as of the snapshot). Restore = newest valid snapshot + the log after
its lsn; a damaged snapshot falls back to the previous one (the log is kept back to it); a
damaged log record ends the replay there: the rest of that segment is moved aside to
``<data_dir>/damaged/`` and reported, and later appends start after the last good record.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from banditd.server.ads.pacing import CampaignRegistry
from banditd.server.scheduling import ThreadTimers, TimerHandle
from banditd.server.settings import Settings
from banditd.server.state import analytics
from banditd.server.state.decision_store import (
    DecisionColumns,
    DecisionRecord,
    DecisionStore,
    slate_tuples,
)
from banditd.server.state.experiment import Experiment
from banditd.server.state.registry import ExperimentRegistry
from banditd.server.storage import snapshot
from banditd.server.storage.wal import WriteAheadLog, list_segments, read_segment
from banditd.storage.v1 import storage_pb2 as st

log = logging.getLogger("banditd")

_EMPTY = np.empty(0, dtype=np.float64)

DECISION_FLUSH_ROWS = 20_000  # pending decisions written at once, without waiting longer


class PendingDecisions:
    """Decision records logged but not handed to the log yet, in order: single decisions as
    the columns of a ``DecisionTable``, batch groups as encoded ``DecisionBlock`` records."""

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


def _add_selections(experiment: Experiment, counts: Iterable[tuple[str, int]]) -> None:
    """Add (arm id, selections) pairs to the experiment's counts; arms it no longer has are
    skipped."""
    index, selections = experiment.arm_index, experiment.selections
    for arm_id, k in counts:
        pos = index.get(arm_id)
        if k and pos is not None:
            selections[pos] += k


class ReplicationLog(Protocol):
    """Where a leader of several workers sends every record it logs (cluster.replication)."""

    def publish(self, payload: bytes, origin: int) -> None: ...

    async def wait_applied(self) -> None: ...


@dataclass
class RestoreReport:
    snapshot: str = ""
    snapshot_lsn: int = 0
    replayed: int = 0
    last_lsn: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Durability:
    """Owns the data directory: log, snapshots, restore."""

    def __init__(self, settings: Settings, registry: ExperimentRegistry,
                 decisions: DecisionStore, campaigns: CampaignRegistry) -> None:
        self.settings = settings
        self.mode: str = settings.durability
        self.directory = Path(settings.data_dir)
        self.registry = registry
        self.decisions = decisions
        self.campaigns = campaigns
        self.wal: WriteAheadLog | None = None
        self.last_lsn = 0  # lsn of the last record applied (restored or appended)
        self._snapshot_lock = asyncio.Lock()
        self._timer: asyncio.Task | None = None
        self.writer_pid: int | None = None  # the snapshot writer child while one runs
        self.snapshots_taken = 0
        self.last_fork_seconds = 0.0
        self.snapshot_lsn = -1  # lsn of the newest snapshot written by this process
        self.pending = PendingDecisions()  # decision records not yet handed to the log
        self._decision_timer: TimerHandle | None = None
        self._timers: ThreadTimers | None = None  # see timers()
        # Multi-worker leader only: every appended record also goes to the followers, in
        # every durability mode (set by cluster.workers).
        self.replication: ReplicationLog | None = None

    # -- restore (before serving; runs in a worker thread, nothing else touches state) ---------
    async def load(self) -> RestoreReport:
        """Bring the state up before serving: :meth:`restore` off the event loop."""
        return await asyncio.to_thread(self.restore)

    def restore(self) -> RestoreReport:
        start = time.perf_counter()
        report = RestoreReport()
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob("*.tmp"):  # an interrupted snapshot write
            tmp.unlink()
        for _lsn, path in snapshot.list_snapshots(self.directory):
            try:
                snap, section = snapshot.read(path)
                snapshot.load(snap, section, self.registry, self.decisions, self.campaigns)
            except snapshot.SnapshotError as exc:
                report.problems.append(f"ignored snapshot {exc}")
                continue
            report.snapshot, report.snapshot_lsn = path.name, snap.lsn
            break
        last = report.snapshot_lsn
        for first, path in list_segments(self.directory):
            scan = read_segment(path)
            for i, payload in enumerate(scan.records):
                lsn = first + i
                if lsn <= last:
                    continue
                if lsn != last + 1:
                    report.problems.append(
                        f"log gap: record {last + 1} missing before {path.name}; replay stops"
                    )
                    self._set_aside(path, 0, report)
                    break
                record = st.WalRecord()
                try:
                    record.ParseFromString(payload)
                    self.apply(record)
                except Exception as exc:  # a record that cannot be applied: stop here
                    report.problems.append(f"{path.name}: record {lsn} not applied ({exc})")
                    self._set_aside(path, sum(8 + len(r) for r in scan.records[:i]), report)
                    break
                last = lsn
                report.replayed += 1
            else:
                if scan.problem:
                    report.problems.append(f"{path.name}: {scan.problem}; "
                                           f"{scan.total_bytes - scan.valid_bytes} bytes ignored")
                    self._set_aside(path, scan.valid_bytes, report)
                    break
                continue
            break
        # segments after a damaged one cannot be replayed in order: move them aside too
        for first, path in list_segments(self.directory):
            if first > last + 1:
                self._set_aside(path, 0, report)
        self.last_lsn = report.last_lsn = last
        report.seconds = time.perf_counter() - start
        return report

    def _set_aside(self, path: Path, keep_bytes: int, report: RestoreReport) -> None:
        """Keep the first ``keep_bytes`` of a segment; move the original to damaged/."""
        damaged = self.directory / "damaged"
        damaged.mkdir(exist_ok=True)
        data = path.read_bytes()
        (damaged / f"{path.name}.{int(time.time())}").write_bytes(data)
        if keep_bytes:
            path.write_bytes(data[:keep_bytes])
        else:
            path.unlink()
        report.problems.append(f"{path.name}: damaged part kept in {damaged.name}/")

    def apply(self, record: st.WalRecord) -> None:
        """Apply one logged change (replay)."""
        op = record.WhichOneof("op")
        reg = self.registry
        if op == "create_experiment":
            reg.restore(record.create_experiment, reg.next_uid)
        elif op == "delete_experiment":
            reg.delete(record.delete_experiment.experiment_id)
        elif op == "update_arms":
            u = record.update_arms
            reg.update_arms(u.experiment_id, list(u.add_arm_ids), list(u.remove_arm_ids),
                            enforce_limits=False)
        elif op == "reset_experiment":
            reg.reset(record.reset_experiment.experiment_id)
        elif op == "ingest_metrics":
            analytics.ingest(reg.get(record.ingest_metrics.experiment_id), record.ingest_metrics)
        elif op == "rewards":
            for r in record.rewards.items:
                context = np.array(r.context, dtype=np.float64) if r.context else _EMPTY
                self._replay_reward(r.experiment_id, r.arm_id, r.reward, context, r.decision_id,
                                    r.tombstone)
        elif op == "decisions":
            for d in record.decisions.items:
                self._replay_decision(d)
        elif op == "campaign":
            self.campaigns.upsert(record.campaign)
        elif op == "campaign_state":
            self.campaigns.load(record.campaign_state)
        elif op == "reservation":
            self.campaigns.get(record.reservation.campaign_id).replay_reservation(
                record.reservation)
        elif op == "spend":
            self.campaigns.get(record.spend.campaign_id).replay_settlement(record.spend)
        elif op == "decision_table":
            self._replay_decision_table(record.decision_table)
        elif op == "decision_block":
            self._replay_decision_block(record.decision_block)
        elif op == "reward_table":
            t = record.reward_table
            values = np.array(t.contexts, dtype=np.float64)
            c = 0
            for experiment_id, arm_id, reward, size, decision_id, tombstone in zip(
                    t.experiment_ids, t.arm_ids, t.rewards, t.context_sizes, t.decision_ids,
                    t.tombstones, strict=True):
                self._replay_reward(experiment_id, arm_id, reward,
                                    values[c : c + size] if size else _EMPTY, decision_id,
                                    tombstone)
                c += size
        else:
            raise ValueError(f"unknown log record {op!r}")

    def _replay_reward(self, experiment_id: str, arm_id: str, reward: float,
                       context: np.ndarray, decision_id: str, tombstone: bool) -> None:
        e = self.registry.get(experiment_id)
        arm = e.arm_index[arm_id]
        e.reward(arm, reward, context)
        if decision_id:
            existing = self.decisions.get(decision_id, now=0.0)
            if existing is None:
                if tombstone:
                    self.decisions.put(decision_id, DecisionRecord(
                        e.uid, (arm_id,), None, 0.0, e.version, time.time(), rewarded=True),
                        expire=False)
            elif existing.experiment_uid == e.uid:
                self.decisions.mark_rewarded(existing)

    def _replay_decision(self, d: st.Decision) -> None:
        context = np.array(d.context, dtype=np.float64) if d.has_context else None
        self.decisions.put(d.decision_id, DecisionRecord(
            d.experiment_uid, tuple(d.arm_ids), context, d.propensity, d.model_version,
            d.created, d.rewarded), expire=False)
        e = self._incarnation(d.experiment_id, d.experiment_uid)
        if e is not None:
            _add_selections(e, [(arm_id, 1) for arm_id in d.arm_ids])

    def _incarnation(self, experiment_id: str, uid: int) -> Experiment | None:
        """The experiment, if the incarnation ``uid`` of it still exists (None when it was
        deleted or reset since: its counters went with it)."""
        try:
            e = self.registry.get(experiment_id)
        except Exception:
            return None
        return e if e.uid == uid else None

    def _replay_decision_table(self, t: st.DecisionTable) -> None:
        cols = snapshot.decision_columns(t)
        self.decisions.put_many(cols, expire=False)
        self._count_selections(t, cols.slates)

    def _replay_decision_block(self, b: st.DecisionBlock) -> None:
        positions = block_positions(b)
        self.decisions.put_many(block_columns(b, positions), expire=False,
                                first_counter=b.first_counter, issuer=b.id_prefix)
        self._count_block(b, positions)

    def _count_block(self, b: st.DecisionBlock, positions: np.ndarray) -> None:
        """Count a decision block's selections (if its experiment incarnation still exists);
        ``positions``: its :func:`block_positions`."""
        e = self._incarnation(b.experiment_id, b.experiment_uid)
        if e is not None:
            counts = np.bincount(positions, minlength=len(b.arm_ids))
            _add_selections(e, zip(b.arm_ids, counts.tolist(), strict=True))

    def _count_selections(self, t: st.DecisionTable,
                          slates: list[tuple[str, ...]] | None = None) -> None:
        """Count a decision table's selections (each arm of each slate, where the decision's
        experiment incarnation still exists)."""
        experiment_ids = list(t.experiment_ids)
        n = len(experiment_ids)
        if not n:
            return
        first = experiment_ids[0]
        if experiment_ids.count(first) == n and len(set(t.experiment_uids)) == 1:
            # The usual table: one experiment, one incarnation: count arm ids at C speed.
            experiment = self._incarnation(first, t.experiment_uids[0])
            if experiment is not None:
                _add_selections(experiment, Counter(t.arm_ids).items())
            return
        if slates is None:
            slates = snapshot.decision_columns(t).slates
        experiments: dict[tuple[str, int], Experiment | None] = {}  # None: gone since
        for experiment_id, uid, slate in zip(experiment_ids, t.experiment_uids, slates,
                                             strict=True):
            key = (experiment_id, uid)
            if key not in experiments:
                experiments[key] = self._incarnation(experiment_id, uid)
            e = experiments[key]
            if e is not None:
                _add_selections(e, [(arm_id, 1) for arm_id in slate])

    # -- logging (event loop) ----------------------------------------------------------------
    async def start(self) -> None:
        if self.mode != "snapshot":
            self.wal = WriteAheadLog(self.directory, self.last_lsn + 1, self.mode)
            self.wal.collect = self._encode_pending  # pending decisions go first, in order
            self.wal.start()
        if self.settings.snapshot_interval_seconds > 0:
            self._timer = asyncio.get_running_loop().create_task(self._periodic())

    def log(self, record: st.WalRecord) -> None:
        """Append a change that was just applied (no wait)."""
        self._encode_pending()
        self.append(record.SerializeToString())

    def timers(self) -> ThreadTimers:
        """This process's timers, kept off the event loop (made on first use, on the loop)."""
        loop = asyncio.get_running_loop()
        if self._timers is None or self._timers.loop is not loop:
            if self._timers is not None:  # made on a loop that is gone (tests): drop it
                self._timers.close()
                self._decision_timer = None
            self._timers = ThreadTimers(loop)
        return self._timers

    def decisions_logged(self) -> None:
        """Decisions were added to :attr:`pending`: have them written (and sent to the other
        workers) soon, never waited for."""
        if self.wal is None and self.replication is None:
            self.pending.clear()
        elif self.wal is not None and self.pending.rows >= DECISION_FLUSH_ROWS:
            self.wal.nudge()
        elif self._decision_timer is None:
            self._decision_timer = self.timers().call_later(
                self.settings.decision_log_delay_seconds, self._flush_decisions)

    def _flush_decisions(self) -> None:
        self._decision_timer = None
        if self.pending.rows:
            if self.wal is not None:
                self.wal.nudge()  # the log collects them before its write
            else:
                self._encode_pending()

    def _encode_pending(self) -> None:
        """Hand the pending decision records to the log (and the followers), in order
        (called by the log before every write, and before any other record is appended)."""
        if self.pending.rows and (self.wal is not None or self.replication is not None):
            for payload in self.pending.encode():
                self.append(payload)

    def append(self, payload: bytes, wait_free: bool = False, origin: int = 0) -> None:
        """Append an encoded record that was just applied: to the log, and to the other
        workers' stream when leading several (``origin``: the worker whose decisions these
        are, which already has them)."""
        if self.wal is not None:
            self.last_lsn = self.wal.append(payload)
            if wait_free:
                self.wal.nudge()
        if self.replication is not None:
            self.replication.publish(payload, origin)

    async def commit(self, replicated: bool = False) -> None:
        """Return once everything logged so far is as durable as the mode promises, and with
        ``replicated`` also applied by every other worker (configuration changes)."""
        if self.wal is not None:
            await self.wal.commit()
        if replicated and self.replication is not None:
            await self.replication.wait_applied()

    # -- snapshots ---------------------------------------------------------------------------
    async def take_snapshot(self, paced: bool = True) -> Path:
        """Write a snapshot without stalling the event loop (``paced``: at the configured
        write rate; the final snapshot of a shutdown is not).

        Like Redis' BGSAVE: at the log rotation instant the server forks; the child process
        sees the state exactly as of that instant (copy-on-write memory), serialises and
        writes it, and exits, while the parent keeps serving. The only pause on the event
        loop is the fork itself.
        """
        async with self._snapshot_lock:
            if self.wal is not None:
                lsn, pid = await self.wal.rotate(
                    lambda last: (last, self._fork_writer(last, paced)))
            else:
                self.last_lsn += 1  # snapshot-only mode: lsn just numbers the snapshots
                lsn, pid = self.last_lsn, self._fork_writer(self.last_lsn, paced)
            self.writer_pid = pid
            reaped = asyncio.ensure_future(asyncio.to_thread(self._reap_writer, pid, lsn))
            try:
                status = await asyncio.shield(reaped)
            except asyncio.CancelledError:
                # Shutdown cancelled a paced snapshot (at the default rate a big state takes
                # minutes): stop its writer now, and hold the lock until it is reaped and its
                # temp file gone, so the final snapshot starts after it (maybe at the same lsn).
                with contextlib.suppress(ProcessLookupError):  # it may have just exited
                    os.kill(pid, signal.SIGKILL)
                await reaped
                raise
            finally:
                self.writer_pid = None
                gc.unfreeze()
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise RuntimeError(f"snapshot writer exited with {code}")
            self.snapshots_taken += 1
            self.snapshot_lsn = lsn
            path = self.directory / snapshot.snapshot_name(lsn)
            self._prune(lsn)
            log.info("snapshot %s: %d experiments, %d decisions, %.1f MB (fork %.1f ms)",
                     path.name, len(self.registry), len(self.decisions),
                     path.stat().st_size / 1e6, self.last_fork_seconds * 1000)
            return path

    def _reap_writer(self, pid: int, lsn: int) -> int:
        """Wait for the writer child; a killed one's temp file is removed. Its wait status."""
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            snapshot.temp_path(self.directory, lsn).unlink(missing_ok=True)
        return status

    def _fork_writer(self, lsn: int, paced: bool) -> int:
        """Fork a child that writes the snapshot of the current state; returns its pid."""
        started = time.perf_counter()
        # Park every existing object outside the collector while the child lives: a full
        # collection would write to all of them and turn copy-on-write into copy-everything.
        gc.freeze()
        pid = os.fork()
        if pid:
            self.last_fork_seconds = time.perf_counter() - started
            return pid
        # Child: only snapshot code runs here (no gRPC, no event loop), then _exit. It runs
        # at a low CPU priority and paces its writes (BANDITD_SNAPSHOT_WRITE_MB_PER_S): the
        # disk I/O of an unpaced writer is what delayed serving on the development VM. Not
        # at the lowest priority (19), which under full load starves the writer until the
        # snapshot never completes.
        code = 1
        try:
            os.nice(10)
            cap = snapshot.capture(lsn, self.registry, self.decisions, self.campaigns)
            rate = self.settings.snapshot_write_mb_per_s if paced else 0.0
            snapshot.write(self.directory, lsn, cap, rate)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    def _prune(self, newest_lsn: int) -> None:
        """Keep the newest two snapshots and the log back to the older one of them."""
        snaps = snapshot.list_snapshots(self.directory)
        keep = snaps[:2]
        for _, path in snaps[2:]:
            path.unlink(missing_ok=True)
        floor = keep[-1][0] if keep else 0
        segments = list_segments(self.directory)
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            # a segment whose records all precede the older kept snapshot is not needed
            if next_first - 1 <= floor:
                path.unlink(missing_ok=True)

    async def _periodic(self) -> None:
        while True:
            await self.timers().sleep(self.settings.snapshot_interval_seconds)
            if self.wal is not None and self.wal.next_lsn - 1 == self.snapshot_lsn:
                continue  # nothing logged since the last snapshot
            try:
                await self.take_snapshot()
            except Exception:
                log.exception("periodic snapshot failed; the log keeps everything")

    async def close(self) -> None:
        """Graceful shutdown: final snapshot, then close the log."""
        if self._timer is not None:
            self._timer.cancel()
        if self._decision_timer is not None:
            self._decision_timer.cancel()
            self._decision_timer = None
        try:
            await self.take_snapshot(paced=False)
        except Exception:
            log.exception("final snapshot failed; the log keeps everything")
        if self.wal is not None:
            await self.wal.close()
        if self._timers is not None:
            self._timers.close()

