"""Writing snapshots without stalling the event loop, and pruning what they make redundant.

Like Redis' BGSAVE: at the log rotation instant the server forks; the child process sees the
state exactly as of that instant (copy-on-write memory), encodes and writes it, and exits, while
the parent keeps serving. The only pause on the event loop is the fork itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
import traceback
from pathlib import Path

from banditd.server.storage import snapshot
from banditd.server.storage.recovery import Machine
from banditd.server.storage.wal import list_segments


class Snapshotter:
    """Forks snapshot writers for one data directory, reaps them, prunes old files."""

    def __init__(self, directory: Path, machine: Machine, write_mb_per_s: float) -> None:
        self.directory = directory
        self.machine = machine
        self.write_mb_per_s = write_mb_per_s
        self.writer_pid: int | None = None  # the writer child while one runs
        self.last_fork_seconds = 0.0
        self.taken = 0

    def fork_writer(self, lsn: int, paced: bool) -> int:
        """Fork a child that writes snapshot ``lsn`` of the current state; returns its pid.
        Call it at the instant the state is exactly the log up to ``lsn``."""
        started = time.perf_counter()
        # Park every existing object outside the collector while the child lives: a full
        # collection would write to all of them and turn copy-on-write into copy-everything.
        gc.freeze()
        pid = os.fork()
        if pid:
            self.last_fork_seconds = time.perf_counter() - started
            self.writer_pid = pid
            return pid
        # Child: only snapshot code runs here (no gRPC, no event loop), then _exit. It runs
        # at a lower CPU priority and paces its writes (BANDITD_SNAPSHOT_WRITE_MB_PER_S), so
        # its disk I/O does not delay serving; not at the lowest priority (19), which under
        # full load starves the writer until the snapshot never completes.
        code = 1
        try:
            os.nice(10)
            message, pieces = self.machine.image(lsn)
            snapshot.write(self.directory, lsn, message, pieces,
                           self.write_mb_per_s if paced else 0.0)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)

    async def finish(self, pid: int, lsn: int) -> Path:
        """Wait for writer ``pid`` of snapshot ``lsn``; then prune. If the wait is cancelled
        (a shutdown during a paced snapshot), the writer is killed and reaped (its temp file
        removed) before the cancellation goes on, so a next snapshot starts after it."""
        reaped = asyncio.ensure_future(asyncio.to_thread(self._reap, pid, lsn))
        try:
            status = await asyncio.shield(reaped)
        except asyncio.CancelledError:
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
        self.taken += 1
        self.prune(lsn)
        return self.directory / snapshot.snapshot_name(lsn)

    def _reap(self, pid: int, lsn: int) -> int:
        """Wait for the writer child; a killed one's temp file is removed. Its wait status."""
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            snapshot.temp_path(self.directory, lsn).unlink(missing_ok=True)
        return status

    def prune(self, newest: int) -> None:
        """Keep snapshot ``newest`` (just written), the one before it and the log back to
        that one. Files named after a later position are not this server's doing (it wrote
        ``newest`` last): they are left alone and never the reason anything is pruned."""
        snaps = [(lsn, path) for lsn, path in snapshot.list_snapshots(self.directory)
                 if lsn <= newest]
        keep = snaps[:2]
        for _, path in snaps[2:]:
            path.unlink(missing_ok=True)
        floor = keep[-1][0] if keep else 0
        segments = list_segments(self.directory)
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            # a segment whose records all precede the older kept snapshot is not needed
            if next_first - 1 <= floor:
                path.unlink(missing_ok=True)
