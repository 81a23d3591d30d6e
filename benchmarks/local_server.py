"""A ``banditd serve`` subprocess on 127.0.0.1 for benchmarks and load tests, and the
machine and commit every benchmark's results file records (:func:`machine`).

Bounded: it waits at most ``start_timeout`` seconds for health SERVING, and its owner stops
it (SIGTERM, or SIGKILL) — use it as a context manager so that happens on every exit path.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """Where and from what a benchmark ran: platform, CPU, library versions and the commit
    (``+dirty`` when tracked code differed from it: results files and Markdown do not count,
    since a chain of benchmarks rewrites results as it goes; ``unknown`` outside a git clone)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": model, "cpus": os.cpu_count(), "commit": _commit()}
    for package in ("grpcio", "protobuf", "numpy", "numba"):
        info[package] = metadata.version(package)
    return info


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":!benchmarks/results", ":!*.md")
        return head + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def channel(target: str, tls_ca: bytes | None = None, options=None) -> grpc.Channel:
    """A blocking channel to ``target``: plaintext, or TLS trusting the CA ``tls_ca`` (PEM)."""
    if tls_ca is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca), options=options)


def wait_serving(target: str, proc: subprocess.Popen, deadline: float,
                 log_path: Path | None = None, tls_ca: bytes | None = None) -> None:
    """Poll the health service on ``target`` until it answers SERVING. RuntimeError if
    ``proc`` exits first, TimeoutError once ``time.monotonic()`` passes ``deadline``; both
    name ``log_path`` (the server's output) when given. ``tls_ca``: the server speaks TLS with
    a certificate of this CA."""
    see = f"; see {log_path}" if log_path is not None else ""
    with channel(target, tls_ca) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"banditd exited during start{see}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"banditd was not SERVING in time{see}")
            time.sleep(0.02)


def stop_process(proc: subprocess.Popen, timeout: float = 60, kill: bool = False) -> None:
    """Stop ``proc`` if it still runs: SIGTERM (SIGKILL with ``kill``), then SIGKILL if it
    has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalServer:
    """``banditd serve --host 127.0.0.1`` with the given settings (``--set name=value``);
    ``tls_ca``: the CA of its TLS certificate, when the settings turn TLS on."""

    def __init__(self, data_dir: Path, start_timeout: float = 600.0,
                 tls_ca: bytes | None = None, **settings: object) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "banditd", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(data_dir)]
        settings.setdefault("drain_seconds", 0)  # nothing to drain: stop at once
        for name, value in settings.items():
            args += ["--set", f"{name}={value}"]
        started = time.perf_counter()
        self.log_path = data_dir.parent / f"{data_dir.name}.server.log"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        try:
            wait_serving(self.target, self.proc, time.monotonic() + start_timeout, self.log_path,
                         tls_ca)
        except BaseException:
            self.stop(kill=True)
            raise
        self.ready_seconds = time.perf_counter() - started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, kill: bool = False) -> None:
        stop_process(self.proc, kill=kill)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
