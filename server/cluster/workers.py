"""One of several worker processes on one port (``banditd serve --workers N``, started by
:mod:`cluster.supervisor` as ``banditd worker``): how it serves DecisionService.

All workers bind the public port with SO_REUSEPORT. Worker 0 is the **leader**: a single
server as before plus a private 127.0.0.1 port with ``ReplicationService``
(:mod:`cluster.replication`) and ``DecisionService``. Workers 1 .. N-1 are **followers**:
they serve the RPCs in :data:`LOCAL_RPCS` from their replica and forward every other
DecisionService RPC to the leader, answering with its response or status.

Every response carries trailing metadata ``banditd-worker`` (the index of the worker that
answered); the leader adds ``banditd-seq`` (its replication sequence number after the call).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric

from banditd.replication.v1 import replication_pb2_grpc as rpb_grpc
from banditd.server.api.app import Parts, create_server
from banditd.server.api.core import FORWARDED_PEER_KEY, Core
from banditd.server.api.handlers import (
    SERVICE_NAME,
    Handler,
    bytes_handler,
    register_decision_handlers,
    unary_methods,
)
from banditd.server.api.service import DecisionService
from banditd.server.cluster.replication import (
    PRIVATE_CHANNEL_OPTIONS,
    TOKEN_KEY,
    InternalAuth,
    ReplicaDecisions,
    ReplicaDurability,
    ReplicationLeader,
    leader_seq,
    metadata_value,
    private_channel,
)
from banditd.server.errors import STATUS_DETAILS_KEY
from banditd.server.settings import Settings
from banditd.server.state.decision_store import DecisionStore
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine
from banditd.server.storage.durability import Durability

log = logging.getLogger("banditd")

# Answered by every worker from its own replica. Every other DecisionService RPC (every
# write, and any RPC added to the service later unless it is listed here) is forwarded to
# the leader, so that there is one place that orders writes, counts rewards exactly once
# and keeps budgets.
LOCAL_RPCS = frozenset({
    "GetExperiment", "ListExperiments", "SelectArm", "BatchSelectArms", "GetArmStats",
    "GetAllocation", "AllocateBudget",
})

# RPCs naming decisions that a follower may not have handed to the leader yet: the leader
# waits for them (bounded) before answering.
DECISION_IDS: dict[str, Callable[[Any], Iterable[str]]] = {
    "RecordReward": lambda request: (request.decision_id,),
    "BatchRecordRewards": lambda request: (item.decision_id for item in request.requests),
}

WORKER_KEY = "banditd-worker"
FORWARDED_BY_KEY = "banditd-forwarded-by"  # a follower's index, on the calls it forwards
SEQ_KEY = "banditd-seq"
_NOT_FORWARDED = frozenset({"user-agent", "content-type", "te", "host", WORKER_KEY, TOKEN_KEY,
                            FORWARDED_BY_KEY, FORWARDED_PEER_KEY})


@dataclass
class WorkerRole:
    """What one worker process knows about its place among the workers."""

    index: int  # 0 = leader
    count: int
    secret: str  # the supervisor's per-start secret: the private port's credential
    leader_address: asyncio.Future[str] | None = None  # followers: host:port of the leader
    on_lost: Callable[[str], None] = field(default=lambda why: None)  # follower lost leader


class WorkerRuntime:
    """The multi-worker parts of one worker's server: how its RPCs are routed, and what
    starts and stops with it (the leader's private server, a follower's forwarder)."""

    def __init__(self, role: WorkerRole, metadata, leader: ReplicationLeader | None = None,
                 forwarder: _Forwarder | None = None, settings: Settings | None = None) -> None:
        self.role = role
        self.metadata = metadata
        self.leader = leader
        self.forwarder = forwarder
        self.private: grpc.aio.Server | None = None
        self.private_port = 0
        if leader is not None:
            self.private = grpc.aio.server(options=PRIVATE_CHANNEL_OPTIONS,
                                           interceptors=[InternalAuth(role.secret)])
            rpb_grpc.add_ReplicationServiceServicer_to_server(leader, self.private)
            self.private_port = self.private.add_insecure_port("127.0.0.1:0")
            if self.private_port == 0:
                raise OSError("could not listen on a private 127.0.0.1 port")

    def routes(self, service: DecisionService) -> dict[str, Handler]:
        """The worker's DecisionService handlers (for :func:`api.app.create_server`)."""
        core = service.core
        behaviors = service.behaviors()
        service.metrics.add_families(self._replication_metrics)
        if self.leader is not None:
            self.leader.gate = core
            assert self.private is not None
            # the private port's calls come from followers (authenticated): only there is a
            # follower's banditd-forwarded-by honoured
            register_decision_handlers(self.private, {
                m.name: _leader_handler(m, behaviors[m.name], core, self.leader, self.metadata,
                                        private=True) for m in unary_methods()})
            return {m.name: _leader_handler(m, behaviors[m.name], core, self.leader,
                                            self.metadata, private=False)
                    for m in unary_methods()}
        assert self.forwarder is not None
        self.forwarder.core = core
        return {m.name: (_with_metadata(behaviors[m.name], m, self.metadata, core)
                         if m.name in LOCAL_RPCS else self.forwarder.handler(m.name))
                for m in unary_methods()}

    def _replication_metrics(self) -> Iterator[Metric]:
        """The leader: ``banditd_replication_lag_records{follower}`` (records it published
        that the follower has not reported applied); a follower:
        ``banditd_replication_lag_seconds`` (from the leader sending its newest message to
        this worker applying it)."""
        if self.leader is not None:
            lag = GaugeMetricFamily("banditd_replication_lag_records", "Log records published "
                                    "to a follower that it has not reported applied yet.",
                                    labels=["follower"])
            for index, behind in self.leader.lag_records().items():
                lag.add_metric([str(index)], float(behind))
            yield lag
        if self.forwarder is not None:
            seconds = GaugeMetricFamily("banditd_replication_lag_seconds", "Time from the "
                                        "leader sending its newest stream message to this "
                                        "follower applying it, seconds.")
            seconds.add_metric([], self.forwarder.durability.lag_seconds)
            yield seconds

    async def start(self) -> None:
        if self.private is not None:
            await self.private.start()

    async def stop(self, grace: float | None) -> None:
        if self.private is not None:
            await self.private.stop(grace)
        if self.forwarder is not None:
            await self.forwarder.close()


# -- one worker's server ----------------------------------------------------------------------


def worker_parts(role: WorkerRole, settings: Settings) -> tuple[Parts, WorkerRuntime]:
    """The server parts of worker ``role.index`` (for :func:`api.app.create_server`)."""
    metadata = ((WORKER_KEY, str(role.index)),)
    prefix = f"{secrets.token_hex(6)}-{role.index}"  # decision ids name their worker
    pending = PendingDecisions()
    if role.index == 0:
        state = StateMachine(settings, DecisionStore(
            settings.decision_capacity, settings.decision_ttl_seconds, id_prefix=prefix))
        storage = Durability(settings, state, pending)
        leader = ReplicationLeader(settings, state, storage)
        storage.replication = leader
        runtime = WorkerRuntime(role, metadata, leader=leader)
    else:
        assert role.leader_address is not None
        decisions = ReplicaDecisions(prefix)
        state = StateMachine(settings, decisions)
        state.experiments.stream = role.index
        storage = ReplicaDurability(settings, state, pending, decisions, role.index,
                                    role.leader_address, role.on_lost, role.secret)
        runtime = WorkerRuntime(role, metadata,
                                forwarder=_Forwarder(storage, role.leader_address, metadata,
                                                     role.index, role.secret))
    return Parts(state, storage, pending, routes=runtime.routes, companion=runtime,
                 reuse_port=True, all_kernels=True), runtime


def _with_metadata(behavior, method, metadata, core: Core) -> Handler:
    inner = bytes_handler(behavior, method, core.metrics, core)

    async def handle(raw: bytes, context) -> bytes:
        context.set_trailing_metadata(metadata)  # kept by an abort too
        return await inner(raw, context)

    return handle


def _leader_handler(method, behavior, core: Core, leader: ReplicationLeader,
                    metadata, private: bool) -> Handler:
    waits = inspect.iscoroutinefunction(behavior)
    decision_ids = DECISION_IDS.get(method.name)
    forwarded = private and method.name not in LOCAL_RPCS  # followers send these here

    async def call(request, context):
        if decision_ids is not None and leader.has_followers:
            await leader.await_decisions(decision_ids(request))
        response = behavior(request, context)
        if waits:
            response = await response
        # Everything this call logged has a sequence number <= this one: a follower that
        # forwarded it answers once it has applied the stream up to here, so the stream
        # goes to it now rather than after gathering more records.
        context.set_trailing_metadata((*metadata, (SEQ_KEY, str(leader.seq))))
        if forwarded and leader.has_followers:
            origin = _forwarded_by(context.invocation_metadata())
            if origin is not None:
                leader.hurry(origin)
        return response

    return _with_metadata(call, method, metadata, core)


class _Forwarder:
    """A follower's forwarding of RPCs to the leader: request bytes in, response bytes (or
    the leader's status) out, then read-your-writes."""

    def __init__(self, durability: ReplicaDurability, leader_address: Awaitable[str], metadata,
                 index: int, token: str = "") -> None:
        self._token = token
        self.core: Core | None = None  # the server's (set when it is built)
        self._forwarded_by = ((FORWARDED_BY_KEY, str(index)),)
        self.durability = durability
        self._leader_address = leader_address
        self._metadata = metadata
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}

    def handler(self, name: str) -> Handler:
        async def forward(request: bytes, context):
            return await self.forward(name, request, context)

        return forward  # bytes in, bytes out: no (de)serialisation

    async def _call(self, name: str):
        call = self._calls.get(name)
        if call is None:
            if self._channel is None:
                # A channel of its own: forwarded calls do not queue behind the stream.
                self._channel = private_channel(await self._leader_address, self._token)
            call = self._calls[name] = self._channel.unary_unary(f"/{SERVICE_NAME}/{name}")
        return call

    async def forward(self, name: str, request: bytes, context) -> bytes:
        # Every call is counted once, before its answer goes out (abort sends the status
        # before it returns), so a client that has seen the answer finds it in /metrics.
        started = time.perf_counter()

        def observe(code: str) -> None:
            assert self.core is not None
            self.core.metrics.observe(name, code, time.perf_counter() - started)

        context.set_trailing_metadata(self._metadata)
        if self.core is None or not self.core.ready:
            observe("UNAVAILABLE")
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "server is starting (loading the leader's state); retry")
        try:
            publisher = self.durability.publisher
            if name in DECISION_IDS and publisher is not None and publisher.pending:
                publisher.send_now()  # the leader would wait for these decisions
            call = (await self._call(name))(
                request, timeout=context.time_remaining(),
                metadata=(*_forwardable(context.invocation_metadata()), *self._forwarded_by,
                          (FORWARDED_PEER_KEY, context.peer() or "")))
            try:
                response = await call
            except grpc.aio.AioRpcError as exc:
                refused = exc
            else:
                refused = None
                trailing = await call.trailing_metadata()
                seq = leader_seq(trailing)
                if seq and not await self.durability.wait_applied_seq(seq):
                    log.warning("%s: answered before applying the leader's log up to %d",
                                name, seq)
                context.set_trailing_metadata((*self._metadata, *_forwardable(trailing)))
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            observe("CANCELLED")
            raise
        except Exception:
            observe("UNKNOWN")  # what gRPC answers for an exception from a handler
            raise
        if refused is None:
            observe("OK")
            return response
        observe(refused.code().name)
        # outside the try: an error sending this status is not counted again
        await context.abort(refused.code(), refused.details() or "",
                            (*self._metadata, *_forwardable(refused.trailing_metadata())))
        raise AssertionError("abort returned")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _forwarded_by(metadata) -> int | None:
    """The index of the follower that forwarded a call (its metadata), else None."""
    value = metadata_value(metadata, FORWARDED_BY_KEY)
    return int(value) if value is not None and value.isdigit() else None


def _forwardable(metadata) -> tuple[tuple[str, Any], ...]:
    """Metadata worth passing on between client, follower and leader (not the transport's
    own keys but a rich error status, nor the worker keys, which each worker sets itself)."""
    return tuple((k, v) for k, v in (metadata or ())
                 if (k == STATUS_DETAILS_KEY or not k.startswith((":", "grpc-")))
                 and k not in _NOT_FORWARDED)


# -- one worker process ------------------------------------------------------------------------


def run_worker(settings: Settings, index: int) -> int:
    """``banditd worker``: one worker of a supervisor; talks to it over stdin / stdout."""
    if settings.metrics_port:  # one /metrics endpoint per worker: port + index
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    return asyncio.run(_worker(settings, index))


def _tell(*words: object) -> None:
    """A status line to the supervisor (stdout is reserved for these)."""
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


async def _worker(settings: Settings, index: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failures: list[str] = []

    def lost(why: str) -> None:
        failures.append(why)
        stop.set()

    leader = loop.create_future()
    secret = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def control() -> None:
        # supervisor -> worker: "leader <host:port>"; end of input = the supervisor is gone
        while line := await reader.readline():
            command, _, argument = line.decode().strip().partition(" ")
            if command == "leader" and not leader.done():
                leader.set_result(argument)
            elif command == "secret" and not secret.done():
                secret.set_result(argument)
        if not stop.is_set():
            log.warning("supervisor gone; stopping")
        stop.set()

    control_task = loop.create_task(control())
    try:
        token = await asyncio.wait_for(secret, 60)  # the supervisor's first line
    except TimeoutError:
        log.error("worker %d: no secret from the supervisor", index)
        return 1
    role = WorkerRole(index, settings.workers, token, leader, lost)
    parts, runtime = worker_parts(role, settings)
    app, port = await create_server(settings, parts)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    if index == 0:
        log.info("internal port 127.0.0.1:%d (this server's workers only)",
                 runtime.private_port)
        _tell("leader", f"127.0.0.1:{runtime.private_port}")
    try:
        if await app.wait_ready_or(stop):
            _tell("serving", port)
    except Exception as exc:
        log.error("worker %d failed to start: %r", index, exc)
        return 1
    await stop.wait()
    log.info("worker %d shutting down (grace %.1f s)", index, settings.grace_seconds)
    await app.stop(settings.grace_seconds, settings.drain_seconds)
    control_task.cancel()
    if failures:
        log.error("worker %d stopped: %s", index, failures[0])
        return 1
    log.info("worker %d stopped", index)
    return 0


def worker_settings(text: str) -> Settings:
    """The supervisor's resolved settings, as passed to ``banditd worker --settings``."""
    return Settings(**json.loads(text))

