"""Log shipping between the worker processes of ``banditd serve --workers N`` (one host).

The **leader** (worker 0) is a single server as before: it alone owns the data directory
(log and snapshots), so durability is unchanged. Every record it appends to its log — in
every durability mode, also ``snapshot`` — it also numbers with a sequence number and streams,
in log order, to every **follower** (workers 1 .. N-1), after a full image of its state in the
snapshot format. A follower applies the stream with the replay code that restore uses
(:meth:`storage.durability.Durability.apply`), so its experiments are the leader's as of the
last record it applied.

Followers decide (SelectArm) on their own replica with their own random stream, and hand
their decision records to the leader every few milliseconds (``PublishDecisions``); the
leader applies and logs them like its own, so its decision store knows every decision and
exactly-once rewards stay at the leader. Every other write is forwarded to the leader
(:mod:`cluster.workers`).

Consistency rules (the leader's side is :class:`ReplicationLeader`, the follower's
:class:`ReplicaDurability`):

* configuration changes (and ingested metrics) are acknowledged once every follower has
  applied them (:meth:`ReplicationLeader.wait_applied`, bounded by ``ACK_TIMEOUT_SECONDS``);
* a follower answers a forwarded write once it has applied the leader's log up to that
  write (:meth:`ReplicaDurability.wait_applied`): read-your-writes on the same worker;
* rewards reach every worker within the stream's latency;
* each worker counts each decision once: a follower counts its own decisions when it makes
  them (its burn-in sees them at once) and the leader never streams them back to it; every
  other worker counts them when they arrive through the leader's log;
* a reward at the leader for a follower's decision that has not arrived yet waits (at most
  ``DECISION_WAIT_SECONDS``) until that follower's published decisions reach the decision's
  counter (decision ids are ``<prefix>-<counter in hex>``, the prefix naming the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from banditd.replication.v1 import replication_pb2 as rpb
from banditd.replication.v1 import replication_pb2_grpc as rpb_grpc
from banditd.server.settings import Settings
from banditd.server.state import image
from banditd.server.state.decision_store import DecisionRecord, DecisionStore, split_decision_id
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine
from banditd.server.storage import snapshot
from banditd.server.storage.durability import Durability, PendingRecords
from banditd.server.storage.recovery import RestoreReport
from banditd.storage.v1 import storage_pb2 as st

if TYPE_CHECKING:
    from banditd.server.api.handlers import Readiness

log = logging.getLogger("banditd")

ACK_TIMEOUT_SECONDS = 5.0  # longest wait of a configuration change for the followers
DECISION_WAIT_SECONDS = 1.0  # longest wait of a reward for its follower's decision
MAX_BACKLOG_BYTES = 512 << 20  # a follower this far behind is dropped (and the server stops)

# The private link between workers carries whole images: no message size limit.
PRIVATE_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),  # its own connection, not shared with others
]


TOKEN_KEY = "banditd-internal-token"  # the per-start secret the supervisor gives its workers
FOLLOWER_RECORDS = frozenset({"decision_table", "decision_block"})  # all a follower may send


class InternalAuth(grpc.aio.ServerInterceptor):
    """The private port answers only the workers of this start: every call must carry the
    supervisor's secret (compared in constant time), else UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        given = next((v for k, v in details.invocation_metadata or () if k == TOKEN_KEY), "")
        if hmac.compare_digest(str(given).encode(), self._token) or handler is None:
            return handler

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "the internal port answers this server's workers only")

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                refuse, handler.request_deserializer, handler.response_serializer)

        async def refuse_stream(request, context):
            await refuse(request, context)
            yield  # pragma: no cover (abort raised)

        return grpc.unary_stream_rpc_method_handler(
            refuse_stream, handler.request_deserializer, handler.response_serializer)


class _WithToken:
    """Adds the internal secret to the metadata of a worker's private calls."""

    def __init__(self, token: str) -> None:
        self._pair = (TOKEN_KEY, token)

    def _details(self, details):
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()),
                                                           self._pair))


class _UnaryToken(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamToken(_WithToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


def private_channel(address: str, token: str) -> grpc.aio.Channel:
    """A channel to the leader's private port, every call carrying the secret."""
    return grpc.aio.insecure_channel(address, options=PRIVATE_CHANNEL_OPTIONS,
                                     interceptors=[_UnaryToken(token), _StreamToken(token)])


class _Waiters:
    """Futures waiting for a number (a sequence number, a decision counter) to reach their
    own; released in that order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future]] = []
        self._tie = 0

    def add(self, key: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._tie += 1
        heapq.heappush(self._heap, (key, self._tie, fut))
        return fut

    def release(self, upto: float) -> None:
        """Resolve every waiter whose number is <= ``upto``."""
        heap = self._heap
        while heap and heap[0][0] <= upto:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)


# -- leader ------------------------------------------------------------------------------------


class _Follower:
    """The leader's view of one subscribed follower."""

    def __init__(self, index: int, prefix: str, seq: int) -> None:
        self.index = index
        self.prefix = prefix
        self.acked = seq  # newest sequence number it reported applied (the image's at first)
        self.backlog: list[bytes] = []  # records not yet sent
        self.backlog_bytes = 0
        self.ack_requested = False
        self.wakeup = asyncio.Event()  # records queued for it
        self.hurry = asyncio.Event()  # send them now: somebody waits for this follower
        self.live = True
        self.published_counter = 0  # its decision ids up to this counter are applied here
        self.counter_waiters = _Waiters()  # rewards awaiting its decisions, by counter

    def send_now(self) -> None:
        """Send its queued records without gathering more first."""
        self.hurry.set()
        self.wakeup.set()


class ReplicationLeader(rpb_grpc.ReplicationServiceServicer):
    """Worker 0's side: streams the log to followers, takes in their decisions."""

    def __init__(self, settings: Settings, state: StateMachine, durability: Durability) -> None:
        self.settings = settings
        self.state = state
        self.durability = durability
        self.gate: Readiness | None = None  # the server's readiness (set when it is built)
        self.seq = 0  # records published since this process started
        self._followers: dict[int, _Follower] = {}
        self._by_prefix: dict[str, _Follower] = {}
        self._ack_waiters = _Waiters()  # configuration changes awaiting followers, by seq

    def lag_records(self) -> dict[int, int]:
        """Per follower: the records published that it has not reported applied."""
        return {f.index: self.seq - f.acked for f in list(self._followers.values())}

    # -- the durability hook (storage.durability.ReplicationLog) --------------------------------
    def publish(self, payload: bytes, origin: int) -> None:
        """Number one appended record and queue it for every follower but ``origin``."""
        self.seq += 1
        for f in self._followers.values():
            if f.index != origin:
                f.backlog.append(payload)
                f.backlog_bytes += len(payload)
            f.wakeup.set()

    async def wait_applied(self) -> None:
        """Return once every follower has applied everything published so far (bounded)."""
        seq = self.seq
        lagging = [f for f in self._followers.values() if f.acked < seq]
        if not lagging:
            return
        fut = self._ack_waiters.add(seq)
        for f in lagging:
            f.ack_requested = True
            f.send_now()
        try:
            await asyncio.wait_for(fut, ACK_TIMEOUT_SECONDS)
        except TimeoutError:
            slow = [f.index for f in self._followers.values() if f.acked < seq]
            log.warning("record %d not confirmed by worker(s) %s within %.0f s; answering "
                        "anyway (it is logged here)", seq, slow, ACK_TIMEOUT_SECONDS)

    def hurry(self, index: int) -> None:
        """Send follower ``index`` its queued records without gathering more first: it
        forwarded a write and answers it once it has applied the log up to that write."""
        f = self._followers.get(index)
        if f is not None:
            f.send_now()

    def _release_acks(self) -> None:
        self._ack_waiters.release(
            min((f.acked for f in self._followers.values()), default=self.seq))

    # -- decisions of followers ----------------------------------------------------------------
    @property
    def has_followers(self) -> bool:
        return bool(self._followers)

    async def await_decisions(self, decision_ids: Iterable[str]) -> None:
        """Wait (bounded) until every follower decision among ``decision_ids`` that this
        leader does not know yet has been published to it."""
        decisions = self.state.store
        now = time.time()
        futures = []
        for decision_id in decision_ids:
            if not decision_id or decisions.get(decision_id, now) is not None:
                continue
            parts = split_decision_id(decision_id)
            f = self._by_prefix.get(parts[0]) if parts else None
            if f is None or not f.live or parts is None or parts[1] <= f.published_counter:
                continue
            futures.append(f.counter_waiters.add(parts[1]))
        if futures:
            await asyncio.wait(futures, timeout=DECISION_WAIT_SECONDS)

    # -- RPCs ------------------------------------------------------------------------------------
    async def Subscribe(self, request, context):
        index = int(request.worker_index)
        if not 0 < index < self.settings.workers:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"worker_index {index} is not a follower of this server "
                                f"(1-{self.settings.workers - 1})")
        if index in self._followers:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"worker {index} is subscribed already")
        while self.gate is None or not self.gate.ready:  # the image is the restored state
            await asyncio.sleep(0.05)
        if index in self._followers:  # taken while waiting
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"worker {index} is subscribed already")
        # The image and the follower's place in the stream are taken at one instant (no
        # await in between). Followers keep no decision records: none in the image.
        self.durability.hand_over_pending()  # counted in the image: not sent to it again
        seq = self.seq
        cap = image.capture(self.state)
        cap.decisions = None
        data = snapshot.image(*image.encode(cap, seq))
        f = _Follower(index, request.decision_id_prefix, seq)
        flush = self.settings.replication_flush_seconds
        self._followers[index] = f
        self._by_prefix[f.prefix] = f
        # its decision tables carry consecutive ids: stored without a dict entry per id
        self.state.store.register_prefix(f.prefix)
        log.info("worker %d subscribed at sequence %d (image of %d bytes)", index, seq,
                 len(data))
        try:
            yield rpb.SubscribeResponse(image=data, last_seq=seq, sent=time.time())
            while True:
                await f.wakeup.wait()
                if not f.hurry.is_set():  # gather a few ms of records into one message
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(f.hurry.wait(), flush)
                f.hurry.clear()
                f.wakeup.clear()
                if f.backlog_bytes > MAX_BACKLOG_BYTES:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"worker {index} is {f.backlog_bytes} bytes behind")
                records, f.backlog, f.backlog_bytes = f.backlog, [], 0
                ack, f.ack_requested = f.ack_requested, False
                yield rpb.SubscribeResponse(records=records, last_seq=self.seq,
                                            ack_requested=ack, sent=time.time())
        finally:
            f.live = False
            if self._followers.get(index) is f:
                del self._followers[index]
            f.counter_waiters.release(math.inf)
            self._release_acks()
            log.info("worker %d unsubscribed", index)

    async def PublishDecisions(self, request, context):
        origin = int(request.worker_index)
        f = self._followers.get(origin)
        if f is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"worker {origin} is not subscribed")
            raise AssertionError("abort returned")
        for i, payload in enumerate(request.records):
            try:
                kind = st.WalRecord.FromString(payload).WhichOneof("op")
            except Exception:
                kind = None
            if kind not in FOLLOWER_RECORDS:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"records[{i}] is a {kind or 'undecodable'} record; a "
                                    "follower sends decision records only")
        durability = self.durability
        for payload in request.records:
            try:
                self.state.apply_bytes(payload)
            except Exception:  # never log what could not be applied: restore would stop there
                log.exception("decision records of worker %d not applied", origin)
                continue
            durability.append(payload, origin=origin)
        durability.written_lazily()
        if f.live:
            if request.last_decision_counter > f.published_counter:
                f.published_counter = request.last_decision_counter
                f.counter_waiters.release(f.published_counter)
            if request.applied_seq > f.acked:
                f.acked = request.applied_seq
                self._release_acks()
        return rpb.PublishDecisionsResponse(leader_seq=self.seq)


# -- follower ----------------------------------------------------------------------------------


class ReplicaDecisions(DecisionStore):
    """A follower's decision store: it names decisions (``<prefix>-<counter>``, the prefix
    naming the worker) and keeps none; the leader keeps them all and answers every reward."""

    keeps_records = False

    def __init__(self, prefix: str) -> None:
        super().__init__(1, 1.0, id_prefix=prefix)
        self.prefix = prefix

    def fresh(self) -> ReplicaDecisions:
        return ReplicaDecisions(self.prefix)

    @property
    def counter(self) -> int:
        """Counter of the newest decision id handed out."""
        return self.last_counter

    def put(self, decision_id: str, record: DecisionRecord, expire: bool = True) -> None:
        pass

    def put_new(self, uid: int, slate: tuple[str, ...], context: np.ndarray | None,
                propensity: float, version: int, created: float) -> str:
        return self.new_id()

    def put_many(self, batch, expire: bool = True, first_counter: int | None = None,
                 issuer: str | None = None) -> None:
        pass

    def get(self, decision_id: str, now: float | None = None) -> DecisionRecord | None:
        return None


class ReplicaDurability(Durability):
    """A follower's state source: the leader's image and log stream instead of the data
    directory (a follower writes nothing to disk); its decision records go to the leader."""

    def __init__(self, settings: Settings, state: StateMachine, pending: PendingDecisions,
                 decisions: ReplicaDecisions, index: int, leader_address: Awaitable[str],
                 on_lost: Callable[[str], None], token: str) -> None:
        super().__init__(settings, state, pending)
        self._token = token
        self.state = state
        self.replica_decisions = decisions
        self.index = index
        self.mode = f"replica of worker 0 ({settings.durability})"
        self.applied_seq = 0
        self._leader_address = leader_address
        self._on_lost = on_lost
        self._channel: grpc.aio.Channel | None = None
        self._stub: rpb_grpc.ReplicationServiceStub | None = None
        self._stream: Any = None  # the Subscribe call
        self._tasks: list[asyncio.Task] = []
        self._waiters = _Waiters()  # forwarded writes awaiting the stream, by seq
        self._closing = False
        self.publisher: DecisionPublisher | None = None
        self.lag_seconds = 0.0  # of the newest stream message: applied minus sent

    def lock(self) -> None:
        """A follower owns no data directory (the leader does)."""

    # -- image ---------------------------------------------------------------------------------
    async def load(self) -> RestoreReport:
        started = time.perf_counter()
        address = await self._leader_address
        self._channel = private_channel(address, self._token)
        self._stub = rpb_grpc.ReplicationServiceStub(self._channel)
        self._stream = self._stub.Subscribe(rpb.SubscribeRequest(
            worker_index=self.index, decision_id_prefix=self.replica_decisions.prefix))
        first = await self._stream.read()
        if first is grpc.aio.EOF:
            raise ConnectionError(f"the leader at {address} ended the stream before its image")
        await asyncio.to_thread(self._load_image, first.image)
        self.applied_seq = self.last_lsn = first.last_seq
        return RestoreReport(snapshot=f"leader image ({len(first.image):,} bytes)",
                             snapshot_lsn=first.last_seq, last_lsn=first.last_seq,
                             seconds=time.perf_counter() - started)

    def _load_image(self, data: bytes) -> None:
        message, section = snapshot.decode(data, "leader image")
        self.state.load_image(message, section, "leader image")

    # -- stream --------------------------------------------------------------------------------
    async def start(self) -> None:
        assert self._stub is not None
        self.publisher = DecisionPublisher(self._stub, self.index, self.replica_decisions,
                                           self.pending, self._lost,
                                           self.settings.replication_flush_seconds)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow()), loop.create_task(self.publisher.run())]

    async def _follow(self) -> None:
        assert self._stream is not None
        try:
            while True:
                message = await self._stream.read()
                if message is grpc.aio.EOF:
                    raise ConnectionError("the leader ended the stream")
                slice_start = time.perf_counter()
                for payload in message.records:
                    self.state.apply_bytes(payload)
                    if time.perf_counter() - slice_start > 0.005:  # let requests in between
                        await asyncio.sleep(0)
                        slice_start = time.perf_counter()
                self.applied_seq = self.last_lsn = message.last_seq
                self.lag_seconds = time.time() - message.sent
                self._waiters.release(self.applied_seq)
                if message.ack_requested:
                    assert self.publisher is not None
                    self.publisher.report_applied(message.last_seq)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(f"replication stream: {exc!r}")

    def _lost(self, why: str) -> None:
        if not self._closing:
            log.error("lost the leader (%s); stopping this worker", why)
            self._closing = True
            self._on_lost(why)

    async def wait_applied_seq(self, seq: int, timeout: float = ACK_TIMEOUT_SECONDS) -> bool:
        """Wait until the leader's log is applied up to ``seq``; False if that took longer
        than ``timeout`` seconds (or the stream is gone)."""
        if seq <= self.applied_seq:
            return True
        try:
            await asyncio.wait_for(self._waiters.add(seq), timeout)
        except TimeoutError:
            return False
        return True

    # -- what a follower must not do -----------------------------------------------------------
    def written_lazily(self) -> None:
        """The handler's decision records go to the leader (which logs and keeps them)."""
        assert self.publisher is not None
        self.publisher.decisions_made()

    def append(self, payload: bytes, origin: int = 0) -> None:
        raise RuntimeError("a follower forwards every change to the leader")

    async def commit(self, replicated: bool = False) -> None:
        return None

    async def take_snapshot(self, paced: bool = True) -> Path:
        raise RuntimeError("only the leader writes snapshots")

    async def close(self) -> None:
        """Graceful stop: hand the last decisions to the leader, then leave the stream."""
        if self.publisher is not None and not self._closing:
            try:
                await self.publisher.flush()
            except grpc.RpcError as exc:
                log.error("last decisions not handed to the leader: %s", exc)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._stream is not None:
            self._stream.cancel()
        if self._channel is not None:
            await self._channel.close()


class DecisionPublisher:
    """Sends a follower's decision records to the leader, in order, every few milliseconds
    (one call in flight at a time), and its applied position when the leader asks.

    The decisions wait in the follower's :class:`PendingDecisions` and go as the log records
    it encodes them in (as the leader's own do per log write)."""

    def __init__(self, stub: rpb_grpc.ReplicationServiceStub, index: int,
                 decisions: ReplicaDecisions, rows: PendingRecords,
                 on_error: Callable[[str], None], flush_seconds: float) -> None:
        self._stub = stub
        self._flush_seconds = flush_seconds
        self._index = index
        self._decisions = decisions
        self._rows = rows
        self._on_error = on_error
        self._counter = 0  # decision ids up to this counter are in _rows or sent
        self._applied = 0  # applied sequence number to report (0 = nothing to report)
        self._wakeup = asyncio.Event()
        self._urgent = False
        self._lock = asyncio.Lock()  # one call in flight: the leader applies in order

    @property
    def pending(self) -> bool:
        return self._rows.rows > 0

    def decisions_made(self) -> None:
        """Decisions were added to the rows (ids are made and added in one synchronous step
        of the handler, so every id handed out so far is in the rows now)."""
        self._counter = self._decisions.counter
        self._wakeup.set()

    def report_applied(self, seq: int) -> None:
        self._applied = seq
        self.send_now()

    def send_now(self) -> None:
        """Send what is queued without waiting for the next flush tick."""
        self._urgent = True
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                if not self._urgent:
                    await asyncio.sleep(self._flush_seconds)  # gather a few ms of decisions
                await self._send()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._on_error(f"publishing decisions: {exc!r}")

    async def _send(self) -> None:
        async with self._lock:
            self._wakeup.clear()
            self._urgent = False
            if not self._rows.rows and not self._applied:
                return
            records = self._rows.encode()
            request = rpb.PublishDecisionsRequest(
                worker_index=self._index, records=records, last_decision_counter=self._counter,
                applied_seq=self._applied)
            self._applied = 0
            await self._stub.PublishDecisions(request, timeout=30)

    async def flush(self) -> None:
        """Send everything queued and wait for the leader's answer."""
        await self._send()


def metadata_value(metadata, key: str) -> str | None:
    """The value of ``key`` in gRPC metadata (pairs), None if absent."""
    for k, value in metadata or ():
        if k == key:
            return value
    return None


def leader_seq(metadata) -> int:
    """The ``banditd-seq`` value of a leader's trailing metadata (0 if absent)."""
    value = metadata_value(metadata, "banditd-seq")
    return int(value) if value is not None else 0

