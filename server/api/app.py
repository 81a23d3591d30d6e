"""``create_server``: the one factory used by the CLI, the workers, the tests and the benchmarks.

It takes its collaborators (:class:`Parts`: the state machine, durability, and for one of
several workers, how its RPCs are routed) instead of building and patching them, binds the
port, registers health and reflection, and starts warming up: kernels compiled, state
restored, then health turns SERVING and requests are let in (the one readiness check is in
:func:`handlers.bytes_handler`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from banditd.server.api import telemetry
from banditd.server.api.core import Core
from banditd.server.api.handlers import (
    SERVICE,
    SERVICE_NAME,
    GenericHandlersOnly,
    Handler,
    bytes_handler,
    register_decision_handlers,
    unary_methods,
)
from banditd.server.api.metrics import Metrics
from banditd.server.api.service import DecisionService
from banditd.server.api.tls import ServerCertificates
from banditd.server.scheduling import batch_helper_threads
from banditd.server.settings import Settings
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine
from banditd.server.storage.durability import Durability
from banditd.server.storage.recovery import RestoreReport

log = logging.getLogger("banditd")


class Companion(Protocol):
    """Something that starts and stops with the server (a worker's private server)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


Routes = Callable[[DecisionService], dict[str, Handler]]


@dataclass
class Parts:
    """A server's collaborators, built by its caller."""

    state: StateMachine
    storage: Durability
    pending: PendingDecisions
    routes: Routes | None = None  # None: every RPC served here (:func:`local_routes`)
    companion: Companion | None = None
    reuse_port: bool = False  # several processes share the port (SO_REUSEPORT)
    # Compile every policy's kernels at start, not only those of the restored state (a
    # worker of several: experiments also arrive from the leader's stream, where a follower
    # could not wait for a compilation before its next SelectArm).
    all_kernels: bool = False


def standalone_parts(settings: Settings) -> Parts:
    """The parts of a single server: its own state, and durability in its data directory."""
    state = StateMachine(settings)
    pending = PendingDecisions()
    return Parts(state, Durability(settings, state, pending), pending)


def build_service(settings: Settings, parts: Parts | None = None) -> DecisionService:
    """The DecisionService over ``parts`` (default: :func:`standalone_parts`) without a gRPC
    server: what :func:`create_server` serves (in-process tests and measurements)."""
    if parts is None:
        parts = standalone_parts(settings)
    metrics = Metrics()
    metrics.track(lambda: len(parts.state.experiments), lambda: len(parts.state.store))
    core = Core(settings, parts.state, parts.storage, parts.pending, metrics)
    telemetry.register(core)
    return DecisionService(core)


def local_routes(service: DecisionService) -> dict[str, Handler]:
    """Every DecisionService RPC served by ``service`` (SelectArm from bytes to bytes)."""
    core = service.core
    behaviors = service.behaviors()
    handlers = {m.name: bytes_handler(behaviors[m.name], m, core.metrics, core)
                for m in unary_methods()}
    handlers["SelectArm"] = bytes_handler(service.decisions.select_arm_bytes,
                                          SERVICE.methods_by_name["SelectArm"], core.metrics,
                                          core, raw=True)
    return handlers


class BanditServer:
    """A started grpc.aio server plus what is needed to warm it up and stop it."""

    def __init__(self, server: grpc.aio.Server, service: DecisionService, parts: Parts,
                 port: int) -> None:
        self.grpc_server = server
        self.service = service
        self.core = service.core
        self.state = parts.state
        self.storage = parts.storage
        self.companion = parts.companion
        self.all_kernels = parts.all_kernels
        self.port = port
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer()
        self._warmup: asyncio.Task | None = None
        self.restore_report: RestoreReport | None = None
        self.certificates: ServerCertificates | None = None  # with TLS

    def reload(self) -> None:
        """SIGHUP: read the tokens file and the TLS files again (each kept as it was when its
        new files cannot be used)."""
        self.core.auth.reload()
        if self.certificates is not None:
            self.certificates.reload()

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _warm_up(self) -> None:
        # Restore before serving: nothing else touches the state until `ready`.
        report = await self.storage.load()
        for problem in report.problems:
            log.error("restore: %s", problem)
        log.info(
            "restored %s (lsn %d) + %d log records -> lsn %d in %.2f s: %d experiments, "
            "%d decisions", report.snapshot or "no snapshot", report.snapshot_lsn,
            report.replayed, report.last_lsn, report.seconds, len(self.state.experiments),
            len(self.state.store),
        )
        self.restore_report = report
        # Compile (or load from numba's on-disk cache) and run the shared kernels and those
        # of the policies in use before reporting SERVING, so no request pays JIT time (other
        # policies: on first use, see api.warmup). In a thread, so the health service keeps
        # answering NOT_SERVING meanwhile.
        policies = None if self.all_kernels else {
            e.spec.kernel.NAME for e in self.state.experiments.experiments()}
        seconds = await asyncio.to_thread(self.core.kernels.start, policies)
        log.info("kernels ready in %.2f s (policies: %s)", seconds,
                 ", ".join(sorted(self.core.kernels.ready)) or "none yet")
        await self.storage.start()
        # Collect what start-up left (compilation, restore) now, while not serving: left
        # for later, the first full collection came a few seconds into the traffic and
        # stopped the event loop for 70-90 ms (136k objects).
        gc.collect()
        self.core.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING on port %d (durability: %s)", self.port, self.storage.mode)

    def _writable(self, writable: bool, why: str) -> None:
        """The log stopped or resumed taking records: health follows (a load balancer
        takes the server out of rotation meanwhile; reads and SelectArm still answer)."""
        if self.core.ready:
            status = (health_pb2.HealthCheckResponse.SERVING if writable
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            asyncio.get_running_loop().create_task(self._set_health(status))

    async def wait_ready(self) -> None:
        """Wait until health is SERVING (re-raises a warm-up failure)."""
        assert self._warmup is not None
        await asyncio.shield(self._warmup)

    async def wait_ready_or(self, stop: asyncio.Event) -> bool:
        """Wait until health is SERVING (True) or ``stop`` is set first (False). A warm-up
        failure stops the server at once and is re-raised."""
        waiter = asyncio.create_task(stop.wait())
        ready = asyncio.create_task(self.wait_ready())
        await asyncio.wait({waiter, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            return False
        if ready.exception() is not None:
            await self.stop(0)
            raise ready.exception()  # type: ignore[misc]
        return True

    async def stop(self, grace: float | None, drain: float = 0.0) -> None:
        """Graceful stop: health NOT_SERVING at once, serving on for ``drain`` seconds (load
        balancers move traffic away), then no new calls and in-flight ones get ``grace``
        seconds; then a final snapshot and the log closed."""
        await self.health.enter_graceful_shutdown()
        if drain > 0 and self.core.ready:
            log.info("draining for %.1f s (health NOT_SERVING, still serving)", drain)
            await asyncio.sleep(drain)
        started = self._warmup is not None and self._warmup.done() and \
            self._warmup.exception() is None
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        await self.grpc_server.stop(grace)
        if self.companion is not None:
            await self.companion.stop(grace)
        if started:
            self.core.ready = False
            await self.storage.close()
        self.core.metrics.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(settings: Settings, parts: Parts | None = None
                        ) -> tuple[BanditServer, int]:
    """Build, bind and start the server over ``parts`` (default: :func:`standalone_parts`);
    health turns SERVING once kernels are warm and the state is restored.

    Returns the server and the port it listens on (useful with ``port=0``). gRPC's threads,
    created here, run under SCHED_BATCH unless disabled (:mod:`server.scheduling`).
    """
    if parts is None:
        parts = standalone_parts(settings)
    parts.storage.lock()  # one server per data directory, before anything in it is read
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Only requests are bounded: a response is built after state changed, so it
        # must never be refused for size (the batch-size limit bounds it instead).
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if parts.reuse_port else 0),
        ("grpc.max_connection_idle_ms", int(settings.max_connection_idle_seconds * 1000)),
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_seconds * 1000)),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
    ]
    _raise_open_files_limit()
    with batch_helper_threads(settings.batch_schedule_io_threads):
        app = await _start(settings, options, parts)
    app._warmup = asyncio.create_task(app._warm_up())
    return app, app.port


def _raise_open_files_limit() -> None:
    """Every connection is a file descriptor: take the hard limit as the soft one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):  # not on this OS, or not allowed
        pass


async def _start(settings: Settings, options: list, parts: Parts) -> BanditServer:
    # Past max_concurrent_rpcs calls in progress, gRPC itself answers RESOURCE_EXHAUSTED at
    # once (before any handler runs): load is shed instead of queued without limit.
    server = grpc.aio.server(options=options,
                             maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    service = build_service(settings, parts)
    metrics = service.metrics
    routes = parts.routes or local_routes
    register_decision_handlers(server, routes(service))
    address = f"{settings.host}:{settings.port}"
    certificates = ServerCertificates(settings) if settings.tls else None
    try:
        if certificates is not None:
            port = server.add_secure_port(address, certificates.credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise OSError(f"could not listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"could not listen on {address}")
    app = BanditServer(server, service, parts, port)
    parts.storage.on_writable = app._writable
    metrics.track_log(lambda: parts.storage.writable, lambda: parts.storage.failures)
    app.certificates = certificates
    generic_only = GenericHandlersOnly(server)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, generic_only)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)), generic_only)
    await app._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.metrics_port is not None:
        app.metrics_port = metrics.serve(settings.host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.host, app.metrics_port)
    await server.start()
    if parts.companion is not None:
        await parts.companion.start()
    return app
