"""A ``banditd serve`` subprocess on 127.0.0.1 for benchmarks and load tests.

Bounded: it waits at most ``start_timeout`` seconds for health SERVING, and its owner stops
it (SIGTERM, or SIGKILL) — use it as a context manager so that happens on every exit path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LocalServer:
    """``banditd serve --host 127.0.0.1`` with the given settings (``--set name=value``)."""

    def __init__(self, data_dir: Path, start_timeout: float = 600.0, **settings: object) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(data_dir)]
        for name, value in settings.items():
            args += ["--set", f"{name}={value}"]
        started = time.perf_counter()
        self.log_path = data_dir.parent / f"{data_dir.name}.server.log"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        try:
            self._wait_serving(started, start_timeout)
        except BaseException:
            self.stop(kill=True)
            raise
        self.ready_seconds = time.perf_counter() - started

    def _wait_serving(self, started: float, timeout: float) -> None:
        with grpc.insecure_channel(self.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"banditd exited during start; see {self.log_path}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"banditd was not SERVING after {timeout:.0f} s")
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=60)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
