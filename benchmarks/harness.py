"""Shared benchmark harness: a real ``banditd serve`` subprocess on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``banditd serve`` in a subprocess; bounded lifetime, stopped by SIGTERM (or SIGKILL)."""

    def __init__(self, data_dir: Path, **settings: object) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "server", "serve", "--port", str(self.port),
                "--data-dir", str(data_dir)]
        for k, v in settings.items():
            args += ["--set", f"{k}={v}"]
        self.started = time.perf_counter()
        self.log = data_dir.parent / f"{data_dir.name}.server.log"
        self.proc = subprocess.Popen(args, stderr=open(self.log, "a"))  # noqa: SIM115
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError("server exited during start")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.perf_counter() - self.started > 600:
                    raise TimeoutError("server did not become SERVING")
                time.sleep(0.02)
        self.ready_s = time.perf_counter() - self.started

    def stop(self, kill: bool = False) -> None:
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=600)


