"""Durability: the write-ahead log, snapshots and restore of one data directory
(``BANDITD_DURABILITY``). It moves opaque records; what they mean is the state machine's.

Modes and what an acknowledged write survives:

* ``os`` (default): every state change is written to the log (``write(2)``, group-committed)
  before the RPC answers: survives a crash or ``kill -9`` of the process; a power loss can
  lose what the OS had not flushed yet.
* ``fsync``: the log is also ``fsync``-ed before the RPC answers (one fsync per group of
  concurrent requests): survives power loss.
* ``snapshot``: no log; state is saved every ``BANDITD_SNAPSHOT_INTERVAL_SECONDS`` and on
  graceful shutdown: a crash loses the changes since the last snapshot.

Lazily logged records (decisions, bids that reserve nothing) are not waited for: they are held
(:attr:`Durability.pending`, or the log's buffer) until the next write, at most
``BANDITD_DECISION_LOG_DELAY_SECONDS`` later, or earlier with other records; every record
appended after them is written after them, so an acknowledged reward's decision always
survives.

Fail-stop: a change is applied when its record is appended and acknowledged once the log has
written it. When a write or fsync fails (disk full, I/O error), the log cuts its torn tail and
refuses records (:class:`wal.LogFailed`: UNAVAILABLE, nothing changed); the state, which holds
the changes of the failed write, is rebuilt from the disk (recovered into an empty machine off
the event loop, then taken over in place); health reports NOT_SERVING; reads and SelectArm go
on. Every ``BANDITD_LOG_RETRY_SECONDS`` the log checks that it can write again; once it can and
the state is rebuilt, it takes records again and health turns SERVING. Nothing acknowledged is
lost, and nothing the log does not have is ever reported as done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from banditd.server.scheduling import ThreadTimers, TimerHandle
from banditd.server.settings import Settings
from banditd.server.storage.lock import DataDirLock
from banditd.server.storage.recovery import Machine, RestoreReport, recover
from banditd.server.storage.snapshotter import Snapshotter
from banditd.server.storage.wal import LogFailed, WriteAheadLog
from banditd.server.timings import Timings

log = logging.getLogger("banditd")

LAZY_FLUSH_ROWS = 20_000  # pending lazy rows written at once, without waiting longer


class PendingRecords(Protocol):
    """Records gathered in memory until the log takes them (the state's decision records)."""

    rows: int

    def encode(self) -> list[bytes]: ...

    def clear(self) -> None: ...


class ReplicationLog(Protocol):
    """Where a leader of several workers sends every record it logs (cluster.replication)."""

    def publish(self, payload: bytes, origin: int) -> None: ...

    async def wait_applied(self) -> None: ...


class Durability:
    """Owns the data directory: log, snapshots, restore."""

    def __init__(self, settings: Settings, machine: Machine, pending: PendingRecords) -> None:
        self.settings = settings
        self.mode: str = settings.durability
        self.directory = Path(settings.data_dir)
        self.machine = machine
        self.pending = pending  # lazily logged records not yet handed to the log
        self.wal: WriteAheadLog | None = None
        self.last_lsn = 0  # lsn of the last record applied (restored or appended)
        self.snapshots = Snapshotter(self.directory, machine, settings.snapshot_write_mb_per_s)
        self.snapshot_lsn = -1  # lsn of the newest snapshot written by this process
        self.snapshot_seconds = Timings()  # from the fork to the file in place
        self.last_snapshot_time = 0.0  # when the newest snapshot was in place (epoch s)
        self.snapshot_failures = 0
        self._snapshot_lock = asyncio.Lock()
        self._periodic_task: asyncio.Task | None = None
        self._lazy_timer: TimerHandle | None = None
        self._timers: ThreadTimers | None = None  # see timers()
        # Multi-worker leader only: every appended record also goes to the followers, in
        # every durability mode (set by cluster.workers).
        self.replication: ReplicationLog | None = None
        self._lock = DataDirLock(self.directory)
        self._repair: asyncio.Task | None = None
        self.failures = 0  # log write failures since start
        # told whether the log takes records (health, metrics): (writable, why)
        self.on_writable: Callable[[bool, str], None] | None = None

    def lock(self) -> None:
        """Own the data directory (before anything in it is read): :class:`DataDirBusy`
        naming the holder if another server does."""
        self._lock.acquire()

    # -- restore (before serving; nothing else touches the state meanwhile) --------------------
    async def load(self) -> RestoreReport:
        """Bring the state up from the data directory, off the event loop
        (:class:`recovery.RecoveryRefused` if it cannot be brought up whole)."""
        report = await asyncio.to_thread(recover, self.directory, self.machine,
                                         self.settings.start_from_remains)
        self.last_lsn = report.last_lsn
        return report

    # -- logging (event loop) ----------------------------------------------------------------
    async def start(self) -> None:
        if self.mode != "snapshot":
            self.wal = WriteAheadLog(self.directory, self.last_lsn + 1, self.mode)
            self.wal.collect = self.hand_over_pending  # pending records go first, in order
            self.wal.on_failure = self._failed
            self.wal.start()
        if self.settings.snapshot_interval_seconds > 0:
            self._periodic_task = asyncio.get_running_loop().create_task(self._periodic())

    @property
    def logging(self) -> bool:
        """Whether records are kept at all (a log, or other workers to send them to)."""
        return self.mode != "snapshot" or self.settings.workers > 1

    def timers(self) -> ThreadTimers:
        """This process's timers, kept off the event loop (made on first use, on the loop)."""
        loop = asyncio.get_running_loop()
        if self._timers is None or self._timers.loop is not loop:
            if self._timers is not None:  # made on a loop that is gone (tests): drop it
                self._timers.close()
                self._lazy_timer = None
            self._timers = ThreadTimers(loop)
        return self._timers

    @property
    def writable(self) -> bool:
        """Whether changes may be made (the log takes records)."""
        return self.wal is None or self.wal.failure is None

    def check_writable(self) -> None:
        """Before a change is applied: :class:`LogFailed` while the log refuses records."""
        if self.wal is not None and self.wal.failure is not None:
            raise LogFailed(self.wal.failure)

    def append(self, payload: bytes, origin: int = 0) -> None:
        """Append an encoded record that was just applied, after the pending records: to the
        log, and to the other workers' stream when leading several (``origin``: the worker
        whose decisions these are, which already has them). No wait: see :meth:`commit`."""
        self.hand_over_pending()
        self._append(payload, origin)

    def append_lazily(self, payload: bytes) -> None:
        """Append an encoded record that nobody waits for: written with the next write, at
        most ``decision_log_delay_seconds`` from now."""
        self.append(payload)
        self.written_lazily()

    def _append(self, payload: bytes, origin: int = 0) -> None:
        if self.wal is not None:
            self.last_lsn = self.wal.append(payload)
        if self.replication is not None:
            self.replication.publish(payload, origin)

    async def commit(self, replicated: bool = False) -> None:
        """Return once everything appended so far is as durable as the mode promises, and with
        ``replicated`` also applied by every other worker (configuration changes)."""
        if self.wal is not None:
            await self.wal.commit()
        if replicated and self.replication is not None:
            await self.replication.wait_applied()

    def written_lazily(self) -> None:
        """Records were added to :attr:`pending` (or appended lazily): have them written (and
        sent to the other workers) soon, never waited for."""
        if self.wal is None and self.replication is None:
            self.pending.clear()
        elif self.wal is not None and self.pending.rows >= LAZY_FLUSH_ROWS:
            self.wal.nudge()
        elif self._lazy_timer is None:
            self._lazy_timer = self.timers().call_later(
                self.settings.decision_log_delay_seconds, self._flush_lazy)

    def _flush_lazy(self) -> None:
        self._lazy_timer = None
        if self.wal is not None:
            self.wal.nudge()  # the log takes the pending records before its write
        else:
            self.hand_over_pending()

    def hand_over_pending(self) -> None:
        """Hand the pending records to the log (and the followers), in order (called by the
        log before every write, and before any other record is appended). While the log
        refuses records they are dropped (decisions may be lost; the state is rebuilt)."""
        if not self.pending.rows:
            return
        if not self.writable:
            self.pending.clear()
        elif self.wal is not None or self.replication is not None:
            for payload in self.pending.encode():
                self._append(payload)

    # -- fail-stop ----------------------------------------------------------------------------
    def _failed(self, why: str) -> None:
        """The log failed a write (on the loop): report it, rebuild the state, wait for the
        disk (see the module)."""
        self.failures += 1
        self.pending.clear()
        if self.on_writable is not None:
            self.on_writable(False, why)
        if self._repair is None or self._repair.done():
            self._repair = asyncio.get_running_loop().create_task(self._recover_from_failure())

    async def _recover_from_failure(self) -> None:
        wal = self.wal
        assert wal is not None
        retry = self.settings.log_retry_seconds
        while True:  # the state back to what the log has
            fresh = self.machine.fresh()
            try:
                report = await asyncio.to_thread(recover, self.directory, fresh,
                                                 self.settings.start_from_remains, False)
            except Exception:
                log.exception("rebuilding the state from the log failed; retrying")
                await self.timers().sleep(retry)
                continue
            if report.last_lsn == wal.durable_lsn:
                break
            # the rebuilt state is not the log's end (the disk changed under us): again
            log.error("rebuilt state ends at record %d, the log at %d; rebuilding again",
                      report.last_lsn, wal.durable_lsn)
            await self.timers().sleep(retry)
        self.machine.adopt(fresh)
        log.warning("state rebuilt from the log (record %d); waiting for the disk",
                    report.last_lsn)
        while True:  # until the log could write again
            try:
                await asyncio.to_thread(wal.probe)
                break
            except OSError as exc:
                log.debug("the log still cannot write: %s", exc)
                await self.timers().sleep(retry)
        wal.resume()
        log.warning("the log writes again; taking changes")
        if self.on_writable is not None:
            self.on_writable(True, "")

    # -- snapshots ---------------------------------------------------------------------------
    async def take_snapshot(self, paced: bool = True) -> Path:
        """Write a snapshot without stalling the event loop (``paced``: at the configured
        write rate; the final snapshot of a shutdown is not): forked at the log rotation
        instant (see :mod:`storage.snapshotter`)."""
        async with self._snapshot_lock:
            started = time.perf_counter()
            try:
                if self.wal is not None:
                    lsn, pid = await self.wal.rotate(
                        lambda last: (last, self.snapshots.fork_writer(last, paced)))
                else:
                    self.last_lsn += 1  # snapshot-only mode: lsn just numbers the snapshots
                    lsn, pid = self.last_lsn, self.snapshots.fork_writer(self.last_lsn, paced)
                path = await self.snapshots.finish(pid, lsn)
            except Exception:
                self.snapshot_failures += 1
                raise
            self.snapshot_lsn = lsn
            self.snapshot_seconds.observe(time.perf_counter() - started)
            self.last_snapshot_time = time.time()
            log.info("snapshot %s: %.1f MB (fork %.1f ms)", path.name,
                     path.stat().st_size / 1e6, self.snapshots.last_fork_seconds * 1000)
            return path

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
        if self._periodic_task is not None:
            self._periodic_task.cancel()
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        try:
            await self.take_snapshot(paced=False)
        except Exception:
            log.exception("final snapshot failed; the log keeps everything")
        if self._repair is not None:
            self._repair.cancel()
        if self.wal is not None:
            await self.wal.close()
        if self._timers is not None:
            self._timers.close()
        self._lock.release()
