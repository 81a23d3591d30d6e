"""The engine (Redis >= 7 or Valkey) that replicas share: finding its binary, and running an
embedded one for ``banditd serve --workers N`` on one host.

An embedded engine listens on a Unix socket only (``<data_dir>/engine/engine.sock``, mode
0600, no TCP port), requires a password made anew at each start (``requirepass``, handed to
the replicas on their stdin), and keeps its append-only file in ``<data_dir>/engine/`` with
the ``appendfsync`` setting that matches the replicas' durability (see :func:`appendfsync`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ENGINE_NAMES = ("valkey-server", "redis-server")


class EngineError(Exception):
    """The engine binary is missing or would not start."""


def find_binary(configured: str | None) -> str:
    """The engine's server binary: ``configured`` (BANDITD_ENGINE_BINARY), else
    ``valkey-server`` or ``redis-server`` on PATH, else next to this Python (a virtual
    environment's bin/, where ``make`` puts one)."""
    if configured:
        return configured
    for name in ENGINE_NAMES:
        found = shutil.which(name)
        if found:
            return found
    here = Path(sys.executable).parent
    for name in ENGINE_NAMES:
        if (here / name).exists():
            return str(here / name)
    raise EngineError("no engine binary: install redis-server (Redis >= 7) or valkey-server, "
                      "or set BANDITD_ENGINE_BINARY (`make` puts one in .venv/bin)")


def appendfsync(durability: str) -> str:
    """The engine's ``appendfsync`` for a replica durability mode.

    * ``fsync``: ``always`` — the engine fsyncs its append-only file before it answers a
      write: an acknowledged change survives a power loss.
    * ``os`` (and ``snapshot``): ``no`` — the engine writes each write to its append-only
      file (write(2)) before it answers, and leaves flushing to the OS: an acknowledged change
      survives a kill -9 of the engine, not a power loss. ``everysec`` is not used: while a
      background fsync is slow, Redis postpones its writes for up to 2 s and still answers,
      so a kill -9 then loses acknowledged writes.
    """
    return "always" if durability == "fsync" else "no"


class EmbeddedEngine:
    """A ``redis-server`` / ``valkey-server`` process owned by this one (stopped with it)."""

    def __init__(self, binary: str, directory: Path, password: str, durability: str) -> None:
        self.binary = binary
        # absolute: the engine changes to ``dir`` before it opens its log file and socket
        self.directory = directory.absolute()
        self.password = password
        self.durability = durability
        self.socket = self.directory / "engine.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The replicas' BANDITD_REDIS_URL (without the password, which they get apart)."""
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        return [
            self.binary, "-",  # the configuration comes on stdin: the password is in no argv
        ]

    def config(self) -> str:
        d = self.directory
        return "\n".join([
            "port 0",  # no TCP at all
            f"unixsocket {self.socket}",
            "unixsocketperm 600",
            f"dir {d}",
            "appendonly yes",
            f"appendfsync {appendfsync(self.durability)}",
            "save ''",  # the append-only file is the persistence; no RDB snapshots too
            f"requirepass {self.password}",
            "protected-mode yes",
            f"logfile {d / 'engine.log'}",
            "daemonize no",
            "",
        ])

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.config().encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                log_file = self.directory / "engine.log"
                if log_file.exists():
                    err += log_file.read_text(errors="replace")[-2000:]
                raise EngineError(f"the engine ({self.binary}) exited with "
                                  f"{self.proc.returncode}: {err.strip()[-1000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"the engine ({self.binary}) did not open {self.socket} "
                                  f"within {timeout:.0f} s")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the engine flushes its append-only file), then SIGKILL after
        ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
