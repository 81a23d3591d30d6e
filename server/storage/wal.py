"""Write-ahead log: framed, checksummed records in numbered segment files, group-committed.

Frame: ``[u32 payload length][u32 crc32(payload)][payload]`` (little endian). Segment
``wal-<first lsn, 20 digits>.log`` holds records ``first, first + 1, ...`` in order.

Group commit: handlers append encoded records to a buffer and await one future; a single
flusher task writes everything buffered with one ``write`` (and, in ``fsync`` mode, one
``fsync`` in a worker thread), then resolves all waiting futures. Under load one flush
covers many requests, so fsync cost is shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from banditd.server.errors import Unavailable
from banditd.server.timings import Timings

log = logging.getLogger("banditd")
T = TypeVar("T")

HEADER = struct.Struct("<II")
MAX_RECORD = 256 * 1024 * 1024  # a frame claiming more is corrupt
SEGMENT_PREFIX = "wal-"
SEGMENT_SUFFIX = ".log"


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def segment_name(first_lsn: int) -> str:
    return f"{SEGMENT_PREFIX}{first_lsn:020d}{SEGMENT_SUFFIX}"


def numbered_files(directory: Path, prefix: str, suffix: str) -> list[tuple[int, Path]]:
    """(number, path) of the files named ``<prefix><digits><suffix>``, in number order."""
    out = []
    for path in directory.glob(f"{prefix}*{suffix}"):
        digits = path.name[len(prefix) : -len(suffix)]
        if digits.isdigit():
            out.append((int(digits), path))
    return sorted(out)


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first lsn, path) of every segment, in lsn order."""
    return numbered_files(directory, SEGMENT_PREFIX, SEGMENT_SUFFIX)


@dataclass
class SegmentScan:
    """What reading a segment found: its valid records and where they end."""

    records: list[bytes]
    valid_bytes: int
    total_bytes: int
    problem: str = ""  # why reading stopped early ("" = clean end of file)


def read_segment(path: Path) -> SegmentScan:
    data = path.read_bytes()
    records: list[bytes] = []
    pos = 0
    problem = ""
    while pos < len(data):
        if len(data) - pos < HEADER.size:
            problem = f"truncated frame header at byte {pos}"
            break
        length, crc = HEADER.unpack_from(data, pos)
        if length > MAX_RECORD:
            problem = f"impossible record length {length} at byte {pos}"
            break
        end = pos + HEADER.size + length
        if end > len(data):
            problem = f"truncated record at byte {pos} ({len(data) - pos} of {end - pos} bytes)"
            break
        payload = data[pos + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            problem = f"checksum mismatch in record at byte {pos}"
            break
        records.append(payload)
        pos = end
    return SegmentScan(records, pos, len(data), problem)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogFailed(Unavailable):
    """The log cannot take records now (a write or fsync failed; see :class:`WriteAheadLog`):
    the change is refused with UNAVAILABLE, and was not made."""


class WriteAheadLog:
    """Appends records to the current segment; ``mode`` is 'os' or 'fsync'.

    Fail-stop: when a write or fsync fails, the segment is cut back to the end of the last
    whole write before anything else is appended, every waiter of the failed write (and of
    records appended since) gets :class:`LogFailed`, the records are dropped (their lsns are
    given out again), and further appends raise :class:`LogFailed` until :meth:`resume`.
    ``on_failure`` (set by the owner) is told, on the loop thread.
    """

    def __init__(self, directory: Path, next_lsn: int, mode: str) -> None:
        self.directory = directory
        self.mode = mode
        self.next_lsn = next_lsn  # lsn the next appended record gets
        self.durable_lsn = next_lsn - 1  # lsn of the last record written (and fsynced)
        self._buffer: list[bytes] = []
        self._waiters: list[asyncio.Future] = []
        self._wakeup = asyncio.Event()
        self._fd = -1
        self._size = 0  # bytes of the current segment that hold whole, written records
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.failure: str | None = None  # why the log refuses records, None while healthy
        self.on_failure: Callable[[str], None] | None = None
        self.bytes_written = 0
        self.flushes = 0
        self.write_seconds = Timings()  # per write(2) of a group of records
        self.fsync_seconds = Timings()  # per fsync (fsync mode, rotation, close)
        # Called (on the loop thread) before every write: lets the owner append records it
        # has been collecting lazily (decision records), so they are written in order.
        self.collect: Callable[[], None] | None = None
        self._fd, self._size = self._open_segment(next_lsn)
        self.segment_first_lsn = next_lsn

    def _open_segment(self, first_lsn: int) -> tuple[int, int]:
        """Open (or create) segment ``first_lsn`` for appending: (fd, its size)."""
        path = self.directory / segment_name(first_lsn)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        return fd, size

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flusher())

    def append(self, payload: bytes) -> int:
        """Buffer one record; returns its lsn. Call :meth:`commit` to wait for it.
        :class:`LogFailed` while the log is failed."""
        if self.failure is not None:
            raise LogFailed(self.failure)
        lsn = self.next_lsn
        self.next_lsn += 1
        self._buffer.append(frame(payload))
        return lsn

    def commit(self) -> asyncio.Future:
        """A future resolved once everything appended so far is written (and fsynced); it
        fails with :class:`LogFailed` if that write fails or the log is failed already."""
        fut = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            fut.set_exception(LogFailed(self.failure))
            return fut
        self._waiters.append(fut)
        self._wakeup.set()
        return fut

    def nudge(self) -> None:
        """Write buffered records soon without anybody waiting (decision records)."""
        self._wakeup.set()

    async def rotate(self, at_rotation: Callable[[int], T]) -> T:
        """Close the segment and start a new one at the next lsn; ``at_rotation(last_lsn)``
        runs at that instant, on the loop thread, with no await in between: the in-memory
        state it sees includes exactly the records with lsn <= last_lsn. The new segment is
        opened first: if it cannot be (no inodes left), nothing changes and the error is
        raised; the log goes on in the current segment."""
        async with self._lock:  # no flush in flight on the old file descriptor
            self._write_buffer_now(sync=self.mode == "fsync")
            if self.failure is not None:
                raise LogFailed(self.failure)
            last = self.next_lsn - 1
            fd, size = self._open_segment(self.next_lsn)
            try:
                result = at_rotation(last)
            except BaseException:
                os.close(fd)
                if size == 0:
                    (self.directory / segment_name(last + 1)).unlink(missing_ok=True)
                raise
            os.close(self._fd)
            self._fd, self._size, self.segment_first_lsn = fd, size, last + 1
            return result

    def _collect(self) -> None:
        if self.collect is not None and self.failure is None:
            self.collect()

    def _take(self) -> tuple[bytes, int, list[asyncio.Future]]:
        """The buffered records (bytes, count) and their waiters, taken out of the buffer."""
        self._collect()
        frames, self._buffer = self._buffer, []
        waiters, self._waiters = self._waiters, []
        return b"".join(frames), len(frames), waiters

    def _write_buffer_now(self, sync: bool) -> None:
        if self.failure is not None:
            return
        data, count, waiters = self._take()
        try:
            if data:
                self._write_all(self._fd, data)
            if sync:
                self._fsync(self._fd)
        except OSError as exc:
            self._fail(exc, waiters)
            return
        self._written(data, count, waiters)

    def _written(self, data: bytes, count: int, waiters: list[asyncio.Future]) -> None:
        self._size += len(data)
        self.bytes_written += len(data)
        self.durable_lsn += count
        self.flushes += 1
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _fail(self, exc: OSError, waiters: list[asyncio.Future]) -> None:
        """A write or fsync failed: cut the torn tail, drop what was not written, fail every
        waiter, refuse records until :meth:`resume`."""
        self.failure = f"write-ahead log write failed ({exc.strerror or exc}); " \
                       "changes are refused until it can write again"
        log.error("%s", self.failure)
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        except OSError as cut:  # cut again before the next write (resume), and on restore
            log.error("could not cut the log back to its last whole record: %s", cut)
        self._buffer.clear()
        self.next_lsn = self.durable_lsn + 1
        waiters += self._waiters
        self._waiters = []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(LogFailed(self.failure))
        if self.on_failure is not None:
            self.on_failure(self.failure)

    def probe(self, room: int = 1 << 20) -> None:
        """Check that the log could write again (OSError if not): the torn tail cut, ``room``
        bytes reserved on the disk and given back, fsynced."""
        os.ftruncate(self._fd, self._size)
        os.posix_fallocate(self._fd, self._size, room)
        os.ftruncate(self._fd, self._size)
        os.fsync(self._fd)

    def resume(self) -> None:
        """Take records again (after a successful :meth:`probe`)."""
        self.failure = None
        self._wakeup.set()

    async def _flusher(self) -> None:
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self.failure is not None:
                continue
            self._collect()
            if not self._buffer and not self._waiters:
                continue
            async with self._lock:
                await self._flush_once()

    async def _flush_once(self) -> None:
        if self.failure is not None:
            return
        data, count, waiters = self._take()
        try:
            if self.mode == "fsync":
                await asyncio.to_thread(self._write_and_sync, self._fd, data)
            elif data:
                self._write_all(self._fd, data)  # to the OS page cache: microseconds
        except OSError as exc:  # disk full, I/O error: fail-stop
            self._fail(exc, waiters)
            return
        self._written(data, count, waiters)

    def _write_all(self, fd: int, data: bytes) -> None:
        started = time.perf_counter()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        self.write_seconds.observe(time.perf_counter() - started)

    def _fsync(self, fd: int) -> None:
        started = time.perf_counter()
        os.fsync(fd)
        self.fsync_seconds.observe(time.perf_counter() - started)

    def _write_and_sync(self, fd: int, data: bytes) -> None:
        if data:
            self._write_all(fd, data)
        self._fsync(fd)

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        async with self._lock:
            self._write_buffer_now(sync=True)
        os.close(self._fd)
        self._fd = -1

