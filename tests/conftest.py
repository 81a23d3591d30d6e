"""Shared fixtures: real banditd servers on 127.0.0.1 port 0, talked to via generated stubs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.api.app import BanditServer, create_server
from banditd.server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class RunningServer:
    """A banditd server running on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.app: BanditServer | None = None
        self.port = 0
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="banditd-test", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test in start()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.app, self.port = await create_server(self.settings)
        await self.app.wait_ready()
        self._started.set()
        await self._stop.wait()
        await self.app.stop(None)

    def start(self) -> RunningServer:
        self._thread.start()
        if not self._started.wait(timeout=600):
            raise TimeoutError("banditd did not become ready in 600 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

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

        asyncio.run_coroutine_threadsafe(die(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)

    def call(self, fn):
        """Run ``fn()`` on the server's loop thread (to inspect state safely)."""
        done = threading.Event()
        box: dict = {}

        def run() -> None:
            try:
                box["value"] = fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(timeout=30)
        return box["value"]


@contextlib.contextmanager
def running_server(tmp_path: Path, **overrides) -> Iterator[RunningServer]:
    settings = Settings(host="127.0.0.1", port=0, data_dir=tmp_path, **overrides)
    server = RunningServer(settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("banditd"), max_batch_size=1000) as s:
        yield s


@pytest.fixture(scope="session")
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel) -> pb_grpc.DecisionServiceStub:
    return pb_grpc.DecisionServiceStub(channel)


_ids = itertools.count()


@pytest.fixture
def new_id(request) -> callable:
    """Unique experiment ids per test (the session server is shared)."""

    def make(prefix: str = "") -> str:
        name = request.node.name.replace("[", "-").replace("]", "").replace(" ", "")[:60]
        return f"{prefix or name}-{next(_ids)}"

    return make


def make_experiment(
    experiment_id: str,
    arms=("a", "b", "c"),
    policy: pb.Policy | None = None,
    reward_type=pb.REWARD_TYPE_BINARY,
    context_dim: int = 0,
    seed: int | None = 1,
    **fields,
) -> pb.Experiment:
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


def create(stub, experiment_id: str, **kw) -> pb.Experiment:
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
