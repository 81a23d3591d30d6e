"""One server owns a data directory: an exclusive ``flock`` on ``<data_dir>/LOCK``, taken
before anything in the directory is read and held while the server runs (the kernel drops it
when the process dies, also on kill -9). The file holds the owner's pid, so a second server can
say who holds it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "LOCK"


class DataDirBusy(OSError):
    """Another process holds the data directory."""


class DataDirLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DataDirBusy` naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"data directory {self.path.parent} is in use by another banditd (pid "
                f"{holder}, lock {self.path}); one server owns a data directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
