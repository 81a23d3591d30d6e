"""``create_server``: the one factory used by the CLI, the tests and the benchmarks."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.metrics import OK_TIMES_HELD, Metrics
from banditd.server.api.service import DecisionServicer, request_parser
from banditd.server.errors import status_of
from banditd.server.scheduling import batch_helper_threads
from banditd.server.settings import Settings
from banditd.server.storage.durability import RestoreReport

if TYPE_CHECKING:
    from banditd.server.cluster.workers import WorkerRole, WorkerRuntime

log = logging.getLogger("banditd")

SERVICE = pb.DESCRIPTOR.services_by_name["DecisionService"]
SERVICE_NAME = SERVICE.full_name


def unary_methods() -> Iterator[MethodDescriptor]:
    """The methods of ``decision.v1.DecisionService``; all are unary (only those are served)."""
    for method in SERVICE.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{method.full_name}: only unary RPCs are served")
        yield method


def bytes_handler(behavior: Callable[..., Any], method: MethodDescriptor, metrics: Metrics,
                  raw: bool = False
                  ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """``behavior`` (``method``'s request message in, response message out; a coroutine
    function if it waits for anything, a plain one if it never does) as the bytes-in,
    bytes-out handler of ``method``: parses, calls, serialises, answers an exception with its
    status (:func:`server.errors.status_of`) and counts the call in ``metrics``. ``raw``:
    ``behavior`` is plain and takes and returns the bytes itself.

    One coroutine per call, whatever ``behavior`` is: SelectArm, which never waits, is plain
    code called from here (a wrapper coroutine per layer cost ~1 µs each, more in the running
    server's colder caches)."""
    request_of = request_parser(message_factory.GetMessageClass(method.input_type),
                                method.name)
    name = method.name
    observe = metrics.observe
    ok_times, bin_ok_times = metrics.ok_times(name)
    clock = time.perf_counter
    waits = inspect.iscoroutinefunction(behavior)
    if raw and waits:
        raise TypeError(f"{name}: a raw behaviour must be a plain function")

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Every call is counted once, before its answer goes out (abort sends the status
        # before it returns), so a client that has seen the answer finds it in /metrics.
        start = clock()
        try:
            if raw:
                answer = behavior(request, context)
            else:
                response = behavior(request_of(request), context)
                if waits:
                    response = await response
                answer = response.SerializeToString()
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            observe(name, "CANCELLED", clock() - start)
            raise
        except grpc.aio.AbortError:  # the behaviour aborted: its status is already set
            observe(name, code_name(context.code()), clock() - start)
            raise
        except Exception as exc:
            status, message = status_of(exc, name)
        else:
            ok_times.append(clock() - start)
            if len(ok_times) >= OK_TIMES_HELD:
                bin_ok_times()
            return answer
        observe(name, status.name, clock() - start)
        await context.abort(status, message)  # outside the try: an error here is not recounted
        raise AssertionError("abort returned")

    return handler


def code_name(code: Any) -> str:
    """A status code's name for the metrics (``grpc.StatusCode`` or its integer value)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


def register_decision_handlers(server: grpc.aio.Server,
                               handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """Serve DecisionService on ``server`` through one generic handler (method name ->
    handler; see :func:`add_decision_service` for why)."""
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def add_decision_service(servicer: DecisionServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s RPCs (every unary method of ``decision.v1.DecisionService``).

    What the generated ``add_DecisionServiceServicer_to_server`` does, with two differences
    measured on the development VM (same client, alternating runs, 32 calls in flight, a
    do-nothing handler): (1) one generic handler only, without its
    ``add_registered_method_handlers`` call — grpc.aio 1.85's registered-method path cost ~20%
    of the throughput (3,100 vs 3,800 calls/s; 266 vs 230 µs of server CPU per call); (2) bytes
    in and out, the handler parsing and serialising the messages itself — letting gRPC call the
    (de)serialisers cost another ~15% (230 vs 193 µs per call; 193 is the bare echo's cost).
    """
    handlers = {m.name: bytes_handler(getattr(servicer, m.name), m, servicer.metrics)
                for m in unary_methods()}
    # SelectArm from bytes to bytes (see DecisionServicer.select_arm_bytes)
    handlers["SelectArm"] = bytes_handler(servicer.select_arm_bytes,
                                          SERVICE.methods_by_name["SelectArm"],
                                          servicer.metrics, raw=True)
    register_decision_handlers(server, {
        name: grpc.unary_unary_rpc_method_handler(handler) for name, handler in handlers.items()})


class GenericHandlersOnly:
    """``server`` as seen by a generated ``add_*Servicer_to_server`` function: its generic
    handler is added, its ``add_registered_method_handlers`` call is dropped. Registering the
    methods of any service (health, reflection) makes every call on the server dearer: a
    do-nothing grpc.aio server lost 4.2-4.7% of its throughput (+7-10 µs of CPU per call)
    with the health service registered that way, three alternated runs, 32 calls in flight
    on the development VM. Served through the generic handler, the calls are the same."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        pass


class BanditServer:
    """A started grpc.aio server plus what is needed to warm it up and stop it."""

    def __init__(self, server: grpc.aio.Server, servicer: DecisionServicer, port: int) -> None:
        self.grpc_server = server
        self.servicer = servicer
        self.port = port
        self.metrics_port: int | None = None
        self.health = health.aio.HealthServicer()
        self._warmup: asyncio.Task | None = None
        self.restore_report: RestoreReport | None = None
        self.worker: WorkerRuntime | None = None  # set when one of several workers

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _warm_up(self) -> None:
        from banditd.server.warmup import warm_up

        # Compile (or load from numba's on-disk cache) and run every kernel before
        # reporting SERVING, so no request pays JIT time. Runs in a thread so the
        # health service keeps answering NOT_SERVING meanwhile.
        seconds = await asyncio.to_thread(warm_up)
        log.info("kernels ready in %.2f s", seconds)
        # Restore before serving: nothing else touches the state until `ready`.
        durability = self.servicer.durability
        report = await durability.load()
        for problem in report.problems:
            log.error("restore: %s", problem)
        log.info(
            "restored %s (lsn %d) + %d log records -> lsn %d in %.2f s: %d experiments, "
            "%d decisions", report.snapshot or "no snapshot", report.snapshot_lsn,
            report.replayed, report.last_lsn, report.seconds, len(self.servicer.registry),
            len(self.servicer.decisions),
        )
        self.restore_report = report
        await durability.start()
        # Collect what start-up left (compilation, restore) now, while not serving: left
        # for later, it made the first full collection come a few seconds into the traffic
        # and stop the event loop for 70-90 ms (136k objects, on the development VM).
        gc.collect()
        self.servicer.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING on port %d (durability: %s)", self.port, durability.mode)

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

    async def stop(self, grace: float | None) -> None:
        """Graceful stop: drain in-flight RPCs, then a final snapshot and close the log."""
        await self.health.enter_graceful_shutdown()
        started = self._warmup is not None and self._warmup.done() and \
            self._warmup.exception() is None
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        await self.grpc_server.stop(grace)
        if self.worker is not None:
            await self.worker.stop(grace)
        if started:
            self.servicer.ready = False
            await self.servicer.durability.close()
        self.servicer.metrics.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    settings: Settings, worker: WorkerRole | None = None
) -> tuple[BanditServer, int]:
    """Build, bind and start the server; health turns SERVING once kernels are warm.

    Returns the server and the port it listens on (useful with ``port=0``). ``worker``:
    this process is one of several sharing the port (see :mod:`cluster.workers`). gRPC's
    threads, created here, run under SCHED_BATCH unless disabled (:mod:`server.scheduling`).
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Only requests are bounded: a response is built after state changed, so it
        # must never be refused for size (the batch-size limit bounds it instead).
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if worker is not None else 0),
    ]
    with batch_helper_threads(settings.batch_schedule_io_threads):
        app = await _start(settings, options, worker)
    app._warmup = asyncio.create_task(app._warm_up())
    return app, app.port


async def _start(settings: Settings, options: list, worker: WorkerRole | None) -> BanditServer:
    server = grpc.aio.server(options=options)
    servicer = DecisionServicer(settings)
    runtime = None
    if worker is None:
        add_decision_service(servicer, server)
    else:
        from banditd.server.cluster.workers import attach

        runtime = attach(worker, servicer, server)
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise OSError(f"could not listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"could not listen on {address}")
    app = BanditServer(server, servicer, port)
    app.worker = runtime
    generic_only = GenericHandlersOnly(server)
    health_pb2_grpc.add_HealthServicer_to_server(app.health, generic_only)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)), generic_only)
    await app._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.metrics_port is not None:
        app.metrics_port = servicer.metrics.serve(settings.host, settings.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.host, app.metrics_port)
    await server.start()
    if runtime is not None:
        await runtime.start()
    return app
