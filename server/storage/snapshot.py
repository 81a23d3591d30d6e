"""Snapshot files: a checksummed, atomically written image of the state at a log position.

File ``snapshot-<lsn, 20 digits>.snap`` (little-endian)::

    magic b"BANDITD-SNAP" | u32 format version | u64 message length | message
    | array section | u64 bytes before the trailer | u32 crc32 of those bytes

The message and the array section are the state's business (:mod:`state.image`); this module
frames, writes, reads and lists them. Written to a temporary file, fsynced, atomically
renamed, then the directory is fsynced. A file whose magic, version, length or checksum is
wrong is reported (:class:`SnapshotError`) and never loaded.

The server writes snapshots from a forked child process (see :mod:`storage.snapshotter`), so
the serving process never waits for serialisation.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from banditd.server.storage.wal import fsync_dir, numbered_files

MAGIC = b"BANDITD-SNAP"
FORMAT_VERSION = 2
HEADER = struct.Struct("<12sIQ")  # magic, format version, message length
TRAILER = struct.Struct("<QI")  # bytes before the trailer, crc32 of them
CHUNK = 1 << 20  # array bytes written per write(2)
SYNC_EVERY = 8 << 20  # fdatasync after this many array bytes
PREFIX, SUFFIX = "snapshot-", ".snap"


class SnapshotError(Exception):
    """A snapshot file that must not be loaded (and why)."""


def snapshot_name(lsn: int) -> str:
    return f"{PREFIX}{lsn:020d}{SUFFIX}"


def temp_path(directory: Path, lsn: int) -> Path:
    """Where :func:`write` builds snapshot ``lsn`` before renaming it into place."""
    return directory / (snapshot_name(lsn) + ".tmp")


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(lsn, path) of snapshot files, newest first."""
    return numbered_files(directory, PREFIX, SUFFIX)[::-1]


def write(directory: Path, lsn: int, message: bytes, pieces: Sequence[memoryview],
          mb_per_s: float = 0.0) -> Path:
    """Atomically write snapshot ``lsn`` (``message`` and the array section's ``pieces``):
    temp -> fsync -> rename -> fsync(dir).

    The array section is streamed in ``CHUNK`` slices straight from the pieces (no copy of
    the state is built), checksummed as it goes, and paced to ``mb_per_s`` (0 = as fast as
    possible) with an fdatasync every ``SYNC_EVERY`` bytes, like Redis'
    rdb-save-incremental-fsync: a burst of copying and dirty pages would take memory
    bandwidth and disk from the serving process.
    """
    head = HEADER.pack(MAGIC, FORMAT_VERSION, len(message)) + message
    final = directory / snapshot_name(lsn)
    tmp = temp_path(directory, lsn)
    rate = mb_per_s * 1e6
    started = time.monotonic()
    written = unsynced = 0
    with open(tmp, "wb", buffering=0) as f:
        crc = zlib.crc32(head)
        f.write(head)
        for view in pieces:
            for pos in range(0, len(view), CHUNK):
                chunk = view[pos : pos + CHUNK]
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
                written += len(chunk)
                unsynced += len(chunk)
                if unsynced >= SYNC_EVERY:
                    os.fdatasync(f.fileno())
                    unsynced = 0
                if rate:
                    ahead = written / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        size = len(head) + written
        f.write(TRAILER.pack(size, crc))
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def read(path: Path) -> tuple[bytes, memoryview]:
    """A snapshot file's message and array section, verified, or SnapshotError saying what
    is wrong."""
    return decode(path.read_bytes(), path.name)


def decode(data: bytes, name: str) -> tuple[bytes, memoryview]:
    """Verify a snapshot's bytes (a file's, or an :func:`image` in the engine) and split
    them into message and array section; errors name it ``name``."""
    if len(data) < HEADER.size:
        raise SnapshotError(f"{name}: {len(data)} bytes, shorter than the header")
    magic, version, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{name}: not a banditd snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{name}: format version {version}, this server reads {FORMAT_VERSION}")
    if len(data) < HEADER.size + TRAILER.size:
        raise SnapshotError(f"{name}: {len(data)} bytes, truncated (no trailer)")
    size, crc = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if size != len(data) - TRAILER.size:
        raise SnapshotError(f"{name}: truncated or extended ({len(data) - TRAILER.size} "
                            f"bytes before the trailer, it says {size})")
    body = memoryview(data)[:size]
    if zlib.crc32(body) != crc:
        raise SnapshotError(f"{name}: checksum mismatch (corrupt)")
    if HEADER.size + length > size:
        raise SnapshotError(f"{name}: message length {length} is past the end")
    return bytes(body[HEADER.size : HEADER.size + length]), body[HEADER.size + length :]


def image(message: bytes, pieces: Sequence[memoryview]) -> bytes:
    """The bytes :func:`write` would put in the file, in memory (the pieces are copied once,
    so the state may move on afterwards)."""
    body = b"".join([HEADER.pack(MAGIC, FORMAT_VERSION, len(message)), message, *pieces])
    return body + TRAILER.pack(len(body), zlib.crc32(body))
