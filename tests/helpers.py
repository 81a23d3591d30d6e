"""Helpers shared by the test modules: real banditd servers (in-process on port 0, or a
``banditd serve`` subprocess), stubs and experiment builders.

Test modules import this plain module (``from helpers import ...``); they never import
``conftest`` or one another (tests/test_layout.py checks). Fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.settings import Settings
from benchmarks.in_process import InProcessServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: banditd, buf, hadolint

T = TypeVar("T")


class RunningServer(InProcessServer):
    """A banditd server running on its own event loop in a background thread (the
    benchmarks' harness), which a test may also crash or inspect."""

    def crash(self) -> None:
        """Stop like a killed process: no final snapshot, the log left as it is on disk."""
        assert self.app is not None
        app = self.app

        async def die() -> None:
            await app.grpc_server.stop(0)
            durability = app.storage
            if durability._periodic_task is not None:
                durability._periodic_task.cancel()
            if durability._timers is not None:
                durability._timers.close()
            if durability.wal is not None and durability.wal._fd >= 0:
                os.close(durability.wal._fd)  # buffered, unflushed records are lost
                durability.wal._fd = -1
                durability.wal._closed = True
            app.core.metrics.close()
            durability._lock.release()  # a dead process's flock goes with it

        self._crashed = True
        asyncio.run_coroutine_threadsafe(die(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the server's loop thread (to inspect state safely)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(timeout=30)
        return box["value"]


def start_server(data_dir: Path, **overrides: Any) -> RunningServer:
    """A started in-process server on 127.0.0.1, port 0; the caller stops (or crashes) it."""
    return RunningServer(Settings(host="127.0.0.1", port=0, data_dir=data_dir,
                                  **overrides)).start()


@contextlib.contextmanager
def running_server(data_dir: Path, **overrides: Any) -> Iterator[RunningServer]:
    """An in-process server for the ``with`` block, stopped gracefully after it."""
    server = start_server(data_dir, **overrides)
    try:
        yield server
    finally:
        server.stop()


def stub_for(port: int) -> tuple[grpc.Channel, pb_grpc.DecisionServiceStub]:
    """A channel to 127.0.0.1:``port`` (the caller closes it) and its DecisionService stub."""
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    return ch, pb_grpc.DecisionServiceStub(ch)


def free_port() -> int:
    """A TCP port nothing listens on right now (for subprocesses that need a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the server subprocess ``proc`` answers SERVING on ``port``; fail early if
    it exits. ``timeout`` only bounds the wait (a cold Numba cache compiles first)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError("server did not become SERVING")


def make_experiment(
    experiment_id: str,
    arms: tuple[str, ...] | list[str] = ("a", "b", "c"),
    policy: pb.Policy | None = None,
    reward_type: Any = pb.REWARD_TYPE_BINARY,  # a RewardType, or any int to test checks
    context_dim: int = 0,
    seed: int | None = 1,
    **fields: Any,
) -> pb.Experiment:
    """An Experiment message: Thompson over arms a, b, c with seed 1 unless told otherwise."""
    experiment = pb.Experiment(
        experiment_id=experiment_id,
        arms=[pb.Arm(arm_id=a) for a in arms],
        policy=policy or pb.Policy(thompson=pb.Policy.Thompson()),
        reward_type=reward_type,
        context_dim=context_dim,
        **fields,
    )
    if seed is not None:
        experiment.seed = seed
    return experiment


def create(stub: pb_grpc.DecisionServiceStub, experiment_id: str, **kw: Any) -> pb.Experiment:
    """CreateExperiment of ``make_experiment(experiment_id, **kw)``; the created experiment."""
    return stub.CreateExperiment(
        pb.CreateExperimentRequest(experiment=make_experiment(experiment_id, **kw))
    )


class InProcess:
    """The DecisionService without a gRPC server, ready at once (nothing restored): its RPC
    behaviours as methods (``SelectArm(request, None)``), its state machine and durability."""

    def __init__(self, settings: Settings) -> None:
        from banditd.server.api.app import build_service

        self.service = build_service(settings)
        self.service.core.ready = True
        self.state = self.service.core.state
        self.storage = self.service.core.storage
        self.decisions_api = self.service.decisions
        for name, behavior in self.service.behaviors().items():
            setattr(self, name, behavior)

    @property
    def registry(self):
        return self.state.experiments

    @property
    def decisions(self):
        return self.state.store

    def create_experiment(self, config: pb.Experiment):
        """Create an experiment through its record, as CreateExperiment does."""
        experiments = self.state.experiments
        return experiments.apply_create(experiments.check_create(config))


class ServerProcess:
    """``banditd serve`` as a real process on 127.0.0.1 (for kill -9, signals, a second
    process): its stub, health, log; stopped (SIGTERM, then SIGKILL) by its owner."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None,
                 wait: bool = True, env: dict | None = None, **settings) -> None:
        import subprocess

        self.data_dir = data_dir
        self.port = port or free_port()
        self.log = data_dir.parent / f"{data_dir.name}-{self.port}.log"
        cmd = [str(BIN / "banditd"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(data_dir), *args]
        settings.setdefault("drain_seconds", 0)
        for name, value in settings.items():
            cmd += ["--set", f"{name}={value}"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log,
                                         env=dict(os.environ, **(env or {})))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        if wait:
            self.wait_serving()

    def health(self) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_serving(self, timeout: float = 600) -> None:
        self.wait_for(lambda: self.health() == "SERVING", timeout, "SERVING")

    def wait_for(self, condition, timeout: float, what: str) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"banditd exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not {what} in {timeout} s"
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        """kill -9."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)
        self.channel.close()

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m", inodes: int | None = None) -> Iterator[Path]:
    """A size- (and inode-) limited tmpfs mounted at ``path`` (the tests run as root, as CI
    does); unmounted on exit."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write into ``directory`` until its filesystem is full; the file that holds it."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last crumbs too
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break
    return filler


# -- TLS and tokens ---------------------------------------------------------------------------


class Pki:
    """A certificate authority made for a test, and the files of what it signed."""

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self._serialization = serialization
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self._day = datetime.timedelta(days=1)
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                      .public_key(self._key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(self._now - self._day).not_valid_after(self._now + self._day)
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.ca = directory / f"{name}.pem"
        self.ca.write_bytes(self._pem(self._cert))

    def _pem(self, cert) -> bytes:
        return cert.public_bytes(self._serialization.Encoding.PEM)

    def issue(self, cn: str, server: bool) -> tuple[Path, Path]:
        """A certificate for ``cn`` (a server's for localhost and 127.0.0.1, else a client's):
        (certificate file, key file)."""
        import ipaddress

        x509 = self._x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = self._ec.generate_private_key(self._ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, cn)]))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(self._now - self._day).not_valid_after(self._now + self._day)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else
                        ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self._key, self._hashes.SHA256())
        cert_file = self.directory / f"{self.name}-{cn}.pem"
        key_file = self.directory / f"{self.name}-{cn}.key"
        cert_file.write_bytes(self._pem(cert))
        key_file.write_bytes(key.private_bytes(
            self._serialization.Encoding.PEM, self._serialization.PrivateFormat.PKCS8,
            self._serialization.NoEncryption()))
        return cert_file, key_file


def write_tokens(path: Path, tokens: dict[str, tuple[str, str]]) -> Path:
    """A tokens file: name -> (token, role), as `<sha256> <role> <name>` lines."""
    import hashlib

    path.write_text("# test tokens\n" + "".join(
        f"{hashlib.sha256(token.encode()).hexdigest()} {role} {name}\n"
        for name, (token, role) in tokens.items()))
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),)


class Served:
    """``banditd serve`` as a subprocess on a free 127.0.0.1 port, with its stderr in a
    file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / "server.log"
        self.proc = subprocess.Popen(
            [str(BIN / "banditd"), "serve", "--port", str(self.port), "--data-dir",
             str(tmp_path / "data"), "--set", "grace_seconds=1", *args],
            stderr=open(self.log, "a"), env=dict(os.environ, **(env or {})))  # noqa: SIM115

    def wait_serving(self, channel: grpc.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def until(predicate, what: str, timeout: float = 30) -> None:
    """Wait (at most ``timeout`` s) until ``predicate()``; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
