"""Replicas sharing one log in the engine (Redis >= 7 / Valkey, ``BANDITD_REDIS_URL``): a
replicated state machine over a Redis Stream, as in Raft (the engine orders and keeps the log;
every replica applies all of it, in order, with the state machine's appliers).

**The log.** One stream, ``<prefix>log``, holds every replica's records in one total order.
An entry is one flush of one replica (group commit): ``o`` its origin (the replica's id for
this start, also the prefix of the decision ids it makes), ``s`` the flush's number (per
origin, increasing), ``c`` the origin's decision counter when it flushed (every decision it
made up to that counter is in this entry or an earlier one), ``d`` its decision records and
``w`` its other records (each a concatenation of length-prefixed ``WalRecord`` bytes). A
flusher task XADDs one entry at a time; a consumer task reads the stream (``XREAD BLOCK``)
from its position and applies every entry in stream order: decision records first, then the
others (a reward in an entry may name a decision of the same entry).

**What is applied when.** A replica's own decisions are applied when made (SelectArm never
waits; decisions commute with everything) and skipped when its own entry comes back. Every
other change — configuration, rewards, ingested metrics, bids, spend, campaign days — is
applied only in stream order, on every replica including its origin: the request appends its
record and waits until its own consumer has applied that entry, and answers with the outcome
of that apply (read-your-writes; an applier decides deterministically, see
:mod:`state.machine`). So every replica applies the same records in the same order and
reaches the same state. An entry seen again (a flush retried after an unconfirmed XADD: same
origin and number) is skipped.

**Durability.** A change is acknowledged only after the engine acknowledged its XADD (and the
change was applied here). What that survives is the engine's persistence: ``appendfsync
always`` survives power loss; ``appendfsync no`` survives a kill -9 of the engine (Redis writes
its append-only file before answering), see :func:`engine.appendfsync`. A replica keeps
nothing it needs on its disk: it restarts from the engine (image + stream).

**Images and trimming.** Every ``image_interval_seconds`` one replica (holder of the lease
``<prefix>image-lease``, SET NX PX) captures its state between two entries, uploads it with
its stream position to ``<prefix>image`` and trims the stream below the oldest position that
a live replica still needs (positions in ``<prefix>replicas``, refreshed every few seconds).
A replica starting (or reconnecting) behind the trimmed part loads the image first. The
uploader's own decisions in the image are those of its entries up to a flush number, which
the image names: a replica loading it skips their decision records.

**Partition.** While the engine cannot be reached, every change is refused with UNAVAILABLE
("the engine at ... is unreachable"), health is NOT_SERVING, reads and SelectArm go on (their
decision records wait in memory, at most ``MAX_HELD_DECISIONS``; past that they are dropped —
decisions may be lost by design); the replica reconnects by itself and catches up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from banditd.kernels.rng import jump_state
from banditd.server.cluster.resp import Engine, EngineError, parse_url
from banditd.server.errors import DomainError, Unavailable
from banditd.server.settings import Settings
from banditd.server.state.decision_store import split_decision_id
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine
from banditd.server.storage import snapshot
from banditd.server.storage.durability import Durability
from banditd.server.storage.recovery import RestoreReport
from banditd.storage.v1 import storage_pb2 as st

log = logging.getLogger("banditd")

_LEN = struct.Struct("<I")
READ_COUNT = 500  # entries per XREAD
BLOCK_MS = 1000  # longest XREAD BLOCK
DECISION_WAIT_SECONDS = 1.0  # longest wait of a reward for another replica's decision
MAX_HELD_DECISIONS = 1_000_000  # decision rows held while the engine is unreachable
MAX_RING_ISSUERS = 16  # other replicas whose decisions the store finds through a ring
APPLY_SLICE_SECONDS = 0.005  # the consumer lets requests in between slices this long
READ_BACK_WAIT_SECONDS = 0.005  # longest a change waits for the previous entry's read-back


def frame(records: Iterable[bytes]) -> bytes:
    """Records as one value: each a u32 length and its bytes."""
    return b"".join(part for r in records for part in (_LEN.pack(len(r)), r))


def unframe(data: bytes) -> list[bytes]:
    out = []
    view = memoryview(data)
    i, n = 0, len(data)
    while i < n:
        (size,) = _LEN.unpack_from(view, i)
        i += 4
        if i + size > n:
            raise ValueError(f"a framed record of {size} bytes runs past the end ({n})")
        out.append(bytes(view[i : i + size]))
        i += size
    return out


class _NotAppliedInTime(Exception):
    """A change the engine took was not read back within engine_apply_timeout_seconds."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(_NotAppliedInTime())


def _pairs(flat) -> dict:
    """A flat [field, value, field, value, ...] reply as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def engine_name(url: str) -> str:
    """The engine's address as messages show it (never its password)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 6379}"


class _Flush:
    """One entry on its way to the engine."""

    __slots__ = ("seq", "counter", "decisions", "writes", "waiters", "decision_rows")

    def __init__(self, seq: int, counter: int, decisions: list[bytes], decision_rows: int,
                 writes: list[bytes], waiters: list[asyncio.Future | None]) -> None:
        self.seq = seq
        self.counter = counter
        self.decisions = decisions
        self.decision_rows = decision_rows
        self.writes = writes
        self.waiters = waiters  # per write record: its request's future (None: nobody waits)


class SharedLog(Durability):
    """A replica's durability: the engine's stream instead of a write-ahead log (see the
    module). Used by :class:`api.core.Core` like :class:`Durability`."""

    shared = True

    def __init__(self, settings: Settings, machine: StateMachine, pending: PendingDecisions,
                 origin: str, password: str | None = None) -> None:
        super().__init__(settings, machine, pending)
        assert settings.redis_url is not None
        self.state = machine
        self.url = settings.redis_url
        self.password = password
        self.where = engine_name(self.url)
        prefix = settings.redis_key_prefix
        self.log_key = f"{prefix}log"
        self.image_key = f"{prefix}image"
        self.lease_key = f"{prefix}image-lease"
        self.replicas_key = f"{prefix}replicas"
        self.trimmed_key = f"{prefix}trimmed"
        self.origin = origin
        self._origin_bytes = origin.encode()
        self.mode = f"replica {origin} of the log at {self.where}"
        self.position = "0-0"  # id of the last entry applied
        self.entries = 0  # entries applied (since the stream's start, through images)
        # origin -> [newest flush number applied, its decision counter]
        self.origins: dict[str, list[int]] = {}
        # origin -> flush number up to which its decision records are in the state already
        # (this replica's own: all; an image's uploader: up to the image)
        self.skip: dict[str, float] = {origin: math.inf}
        self.reachable = True
        self.why = ""
        # How far this replica's applying is behind the stream's head (the engine's newest
        # entry), measured with each position report (:meth:`_measure_lag`): entries not
        # applied yet (None until known) and the stream time between the head and here.
        self.lag_entries: int | None = None
        self.lag_seconds = 0.0
        self._read = 0  # stream entries read since start (retried flushes included)
        self._read_base: int | None = None  # the stream's entries-added at _read == 0
        self._redis: Any = None  # the flusher's connection (resp.Engine)
        self._reader: Any = None  # the consumer's (XREAD BLOCK holds its connection)
        self._seq = 0
        self._writes: list[bytes] = []
        self._waiters: list[asyncio.Future | None] = []
        self._retry: _Flush | None = None  # a flush whose XADD was not confirmed
        self._queued: collections.deque[_Flush] = collections.deque()  # cut, to send next
        self._wakeup = asyncio.Event()
        self._urgent = False
        self._inflight: dict[int, _Flush] = {}  # flush number -> flush, until applied here
        self._read_back = asyncio.Event()  # set when no own entry is on its way back
        self._decision_waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self._acked = 0  # newest own flush number the engine confirmed
        self._ack_events: dict[int, asyncio.Event] = {}
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._image_request: asyncio.Future | None = None
        self.images_uploaded = 0

    # -- engine connections --------------------------------------------------------------------
    def _client(self, timeout: float) -> Engine:
        # No retries inside the client: a retried XADD could add an entry twice (flushes are
        # retried here, under the same number, which the consumers skip when seen again).
        return Engine(parse_url(self.url, self.password), timeout)

    def lock(self) -> None:
        super().lock()

    def _unreachable(self, exc: BaseException, doing: str) -> None:
        why = (f"the engine at {self.where} is unreachable ({type(exc).__name__}: "
               f"{str(exc)[:200]}): changes are refused until it is back")
        if self.reachable:
            log.error("%s (%s)", why, doing)
            self.failures += 1
        self.reachable = False
        self.why = why
        if self.on_writable is not None:
            self.on_writable(False, why)

    def _reached(self) -> None:
        if not self.reachable:
            log.warning("the engine at %s is reachable again; taking changes", self.where)
            self.reachable = True
            self.why = ""
            if self.on_writable is not None:
                self.on_writable(True, "")

    @property
    def writable(self) -> bool:
        return self.reachable

    def check_writable(self) -> None:
        if not self.reachable:
            raise Unavailable(self.why or f"the engine at {self.where} is unreachable: "
                              "changes are refused until it is back")

    @property
    def logging(self) -> bool:
        return True

    # -- restore -------------------------------------------------------------------------------
    async def load(self) -> RestoreReport:
        """The state from the engine: its image (if any), then the stream after it."""
        started = time.perf_counter()
        self._redis = self._client(self.settings.engine_timeout_seconds)
        self._reader = self._client(self.settings.engine_timeout_seconds + BLOCK_MS / 1000)
        report = RestoreReport()
        # This replica's jump of every seed's random stream: its matrix is built once, here
        # off the event loop (0.1-2 s), not by the first experiment created.
        await asyncio.to_thread(jump_state, np.ones(4, dtype=np.uint64),
                                self.state.experiments.stream)
        while True:  # an engine that is not up yet (or restarting): wait for it
            try:
                await self._redis.call("PING")
                break
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.warning("the engine at %s is unreachable (%s); retrying in %g s",
                            self.where, exc, self.settings.log_retry_seconds)
                await asyncio.sleep(self.settings.log_retry_seconds)
        try:
            loaded = await self._load_image_if_needed()
            # Trimming keeps what a replica that has reported its position still needs;
            # trimmed meanwhile (before the report): the image again.
            await self._report()
            loaded = await self._load_image_if_needed() or loaded
            if loaded:
                report.snapshot = loaded
            first = self.entries
            await self._catch_up()
            await self._measure_lag()
        except Exception as exc:
            raise ConnectionError(f"could not restore from the engine at {self.where}: "
                                  f"{exc}") from exc
        report.snapshot_lsn = 0
        report.replayed = self.entries - first
        report.last_lsn = self.entries
        report.seconds = time.perf_counter() - started
        return report

    async def _load_image_if_needed(self) -> str:
        """Load the engine's image when this replica's position is behind the trimmed part
        of the stream (or before anything, when the stream was ever trimmed); what it
        loaded ("" if nothing)."""
        trimmed = await self._redis.call("GET", self.trimmed_key)
        if trimmed is None or _id_tuple(self.position) >= _id_tuple(trimmed.decode()):
            return ""
        fields = _pairs(await self._redis.call("HGETALL", self.image_key))
        if not fields:
            raise RuntimeError(f"the stream is trimmed up to {trimmed.decode()} but "
                               f"{self.image_key} holds no image")
        meta = json.loads(fields[b"meta"])
        data = fields[b"data"]
        fresh = self.state.fresh()
        message, section = snapshot.decode(data, "engine image")
        await asyncio.to_thread(fresh.load_image, message, section, "engine image")
        self.state.adopt(fresh)
        self.position = meta["position"]
        self.entries = int(meta["entries"])
        self._read_base = None  # the entries skipped are not counted: measure again
        self.origins = {o: list(v) for o, v in meta["origins"].items()}
        self.skip = {self.origin: math.inf}
        if meta["uploader"] != self.origin:
            self.skip[meta["uploader"]] = int(meta["uploader_seq"])
        return f"engine image at {self.position} ({len(data):,} bytes)"

    async def _catch_up(self) -> None:
        """Apply the stream up to its end as of now."""
        last = await self._redis.call("XREVRANGE", self.log_key, "+", "-", "COUNT", 1)
        end = _id_tuple(last[0][0].decode()) if last else (0, 0)
        while _id_tuple(self.position) < end:
            reply = await self._reader.call("XREAD", "COUNT", READ_COUNT, "STREAMS",
                                            self.log_key, self.position)
            if not reply:
                break
            await self._apply_entries(reply[0][1])

    # -- running -------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume()), loop.create_task(self._flush_loop())]
        if self.settings.image_interval_seconds > 0:
            self._tasks.append(loop.create_task(self._images()))
        self._tasks.append(loop.create_task(self._report_position()))

    async def _consume(self) -> None:
        retry = self.settings.log_retry_seconds
        timeouts = 0
        while not self._closing:
            try:
                reply = await self._reader.call(
                    "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", self.log_key,
                    self.position, timeout=self.settings.engine_timeout_seconds + BLOCK_MS / 1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # One read timeout may be this process's stall (a long step of the event
                # loop), not the engine's: read again once before calling it unreachable.
                timeouts += isinstance(exc, TimeoutError)
                if isinstance(exc, TimeoutError) and timeouts == 1 and self.reachable:
                    log.warning("reading the log timed out once; reading again")
                    continue
                self._unreachable(exc, "reading the log")
                await asyncio.sleep(retry)
                continue
            timeouts = 0
            if self._image_request is not None:  # an idle stream: capture between reads
                self._capture_image()
            if not self.reachable:
                try:  # behind a trimmed part while away: the image first
                    if await self._load_image_if_needed():
                        log.warning("reloaded the engine's image: this replica was away "
                                    "longer than the stream keeps entries")
                        continue
                except Exception as exc:
                    self._unreachable(exc, "loading the image")
                    await asyncio.sleep(retry)
                    continue
                self._reached()
            if reply:
                await self._apply_entries(reply[0][1])

    async def _apply_entries(self, entries) -> None:
        slice_start = time.perf_counter()
        for entry_id, fields in entries:
            self._apply_entry(entry_id.decode(), _pairs(fields))
            if self._image_request is not None:
                self._capture_image()
            if time.perf_counter() - slice_start > APPLY_SLICE_SECONDS:
                await asyncio.sleep(0)  # let requests in between entries
                slice_start = time.perf_counter()

    def _apply_entry(self, entry_id: str, fields: dict) -> None:
        origin = fields[b"o"].decode()
        seq = int(fields[b"s"])
        counter = int(fields.get(b"c", 0))
        seen = self.origins.get(origin)
        self.position = entry_id
        self._read += 1
        if seen is not None and seq <= seen[0]:
            return  # a retried flush that had made it the first time
        if seen is None:
            seen = self.origins[origin] = [0, 0]
            if origin != self.origin and len(self.state.store._issuers) <= MAX_RING_ISSUERS:
                self.state.store.register_prefix(origin)
        self.entries += 1
        apply = self.state.apply_bytes
        if seq > self.skip.get(origin, 0):
            for payload in unframe(fields.get(b"d", b"")):
                try:
                    apply(payload)
                except Exception:
                    log.exception("decision records of %s (entry %s) not applied", origin,
                                  entry_id)
        flush = self._inflight.pop(seq, None) if origin == self.origin else None
        if flush is not None and not self._inflight:
            self._read_back.set()
        for i, payload in enumerate(unframe(fields.get(b"w", b""))):
            waiter = flush.waiters[i] if flush is not None and i < len(flush.waiters) else None
            try:
                result = apply(payload)
            except DomainError as exc:  # the record no longer applied: its request's answer
                if waiter is not None and not waiter.done():
                    waiter.set_exception(exc)
                continue
            except Exception as exc:
                log.exception("record %d of entry %s (%s) not applied", i, entry_id, origin)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(exc)
                continue
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
        seen[0] = seq
        if counter > seen[1]:
            seen[1] = counter
            waiters = self._decision_waiters.get(origin)
            if waiters:
                keep = []
                for want, fut in waiters:
                    if want <= counter:
                        if not fut.done():
                            fut.set_result(None)
                    else:
                        keep.append((want, fut))
                self._decision_waiters[origin] = keep

    # -- writing -------------------------------------------------------------------------------
    async def submit(self, payload: bytes) -> object:
        """Append a change's record to the next entry; return once it is applied here, with
        its applier's result (or raise its error)."""
        self.check_writable()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._writes.append(payload)
        self._waiters.append(fut)
        self._urgent = True
        self._wakeup.set()
        timer = loop.call_later(self.settings.engine_apply_timeout_seconds, _expire, fut)
        try:
            return await fut
        except _NotAppliedInTime:
            raise Unavailable(
                f"the change was sent to the engine at {self.where} but not applied here "
                f"within {self.settings.engine_apply_timeout_seconds:g} s "
                "(engine_apply_timeout_seconds); it is applied when its entry is read back "
                "(a retry of a reward or spend is recognised as a duplicate)") from None
        finally:
            timer.cancel()

    def append(self, payload: bytes, origin: int = 0) -> None:
        """A record nobody waits for, in the next entry."""
        self._writes.append(payload)
        self._waiters.append(None)
        self._urgent = True
        self._wakeup.set()

    def append_lazily(self, payload: bytes) -> None:
        self._writes.append(payload)
        self._waiters.append(None)
        self.written_lazily()

    def written_lazily(self) -> None:
        """Decisions (or a record nobody waits for) were added: in an entry within
        ``replica_flush_seconds``."""
        self._wakeup.set()
        if self.pending.rows > MAX_HELD_DECISIONS and not self.reachable:
            log.error("dropping %d decision records held while the engine is unreachable",
                      self.pending.rows)
            self.pending.clear()

    async def commit(self, replicated: bool = False) -> None:
        """Every change here came through the engine: nothing to wait for."""

    def hand_over_pending(self) -> None:
        """Decision records are handed to the next entry by the flusher."""

    def _cut(self) -> _Flush:
        """The next entry: every pending decision record and every queued record."""
        rows = self.pending.rows
        decisions = self.pending.encode() if rows else []
        self._seq += 1
        flush = _Flush(self._seq, self.state.store.last_counter, decisions, rows,
                       self._writes, self._waiters)
        self._writes, self._waiters = [], []
        return flush

    async def _flush_loop(self) -> None:
        delay = self.settings.replica_flush_seconds
        linger = self.settings.replica_linger_seconds
        loop = asyncio.get_running_loop()
        sent = -math.inf  # when the last entry was sent (the loop's clock)
        while True:
            if self._retry is not None:
                flush = self._retry
            elif self._queued:
                flush = self._queued.popleft()
            else:
                await self._wakeup.wait()
                if not self._urgent:
                    await asyncio.sleep(delay)  # gather a few ms of decisions into one entry
                else:
                    # Changes gather into one entry (one XADD, and one read by every
                    # replica, for all of them): while an own entry is on its way back
                    # (at most READ_BACK_WAIT_SECONDS), and for at least `linger` after the
                    # last entry went (under light load that has passed: no wait).
                    if self._inflight:
                        self._read_back.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._read_back.wait(),
                                                   READ_BACK_WAIT_SECONDS)
                    pause = sent + linger - loop.time()
                    if pause > 0:
                        await asyncio.sleep(pause)
                self._wakeup.clear()
                self._urgent = False
                if self._queued or not (self.pending.rows or self._writes):
                    continue
                flush = self._cut()
            sent = loop.time()
            await self._send(flush)

    async def _send(self, flush: _Flush) -> None:
        fields = ["XADD", self.log_key, "*", b"o", self._origin_bytes, b"s", flush.seq,
                  b"c", flush.counter]
        if flush.decisions:
            fields += [b"d", frame(flush.decisions)]
        if flush.writes:
            fields += [b"w", frame(flush.writes)]
        self._inflight[flush.seq] = flush
        try:
            await self._redis.call(*fields)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unreachable(exc, "appending to the log")
            self._flush_failed(flush, exc)
            await asyncio.sleep(self.settings.log_retry_seconds)
            return
        self._retry = None
        self._acked = flush.seq
        self._reached()
        for s in [s for s in self._ack_events if s <= flush.seq]:
            self._ack_events.pop(s).set()

    def _flush_failed(self, flush: _Flush, exc: BaseException) -> None:
        """An XADD the engine did not confirm: its waiting changes are refused; it is sent
        again (same number, so that it counts once if it had made it) with its decision
        records only."""
        for fut in flush.waiters:
            if fut is not None and not fut.done():
                fut.set_exception(Unavailable(
                    f"the engine at {self.where} did not confirm the change "
                    f"({type(exc).__name__}); it was not applied here, and is applied only "
                    "if the engine had received it (a retry of a reward or spend is "
                    "recognised as a duplicate)"))
        flush.writes, flush.waiters = [], []
        if not flush.decisions:
            self._inflight.pop(flush.seq, None)
            self._retry = None
            return
        if flush.decision_rows > MAX_HELD_DECISIONS:
            log.error("dropping %d decision records the engine did not take",
                      flush.decision_rows)
            flush.decisions = []
        self._retry = flush

    async def _acked_up_to(self, seq: int) -> None:
        if self._acked >= seq:
            return
        event = self._ack_events.setdefault(seq, asyncio.Event())
        await event.wait()

    # -- decisions of other replicas -----------------------------------------------------------
    async def await_decisions(self, decision_ids: Iterable[str]) -> None:
        """Wait (at most ``DECISION_WAIT_SECONDS``) until the decisions among
        ``decision_ids`` that another replica made but whose entry has not arrived yet
        have (see the module)."""
        store = self.state.store
        now = time.time()
        futures = []
        for decision_id in decision_ids:
            parts = split_decision_id(decision_id)
            if parts is None or parts[0] == self.origin:
                continue
            seen = self.origins.get(parts[0])
            if seen is None or parts[1] <= seen[1] or store.get(decision_id, now) is not None:
                continue
            fut = asyncio.get_running_loop().create_future()
            self._decision_waiters.setdefault(parts[0], []).append((parts[1], fut))
            futures.append(fut)
        if futures:
            await asyncio.wait(futures, timeout=DECISION_WAIT_SECONDS)

    async def caught_up(self) -> None:
        """Wait until this replica has applied the stream up to its end as of now (bounded by
        ``engine_apply_timeout_seconds``): what any replica acknowledged before this call is
        then visible here too."""
        try:
            last = await self._redis.call("XREVRANGE", self.log_key, "+", "-", "COUNT", 1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._unreachable(exc, "reading the log's end")
            self.check_writable()
            return
        if not last:
            return
        end = _id_tuple(last[0][0].decode())
        deadline = time.monotonic() + self.settings.engine_apply_timeout_seconds
        while _id_tuple(self.position) < end and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    # -- images and trimming -------------------------------------------------------------------
    async def _report_position(self) -> None:
        """Tell the others which entries this replica still needs (trimming keeps them)."""
        every = max(min(self.settings.image_interval_seconds / 4, 5.0), 0.5)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await self._report()
                await self._measure_lag()

    async def _report(self) -> None:
        await self._redis.call("HSET", self.replicas_key, self.origin,
                               f"{self.position} {time.time():.3f}")

    async def _measure_lag(self) -> None:
        """Measure how far behind the stream's head this replica has applied (what
        ``banditd_replica_lag_entries`` / ``_seconds`` export). The engine counts every entry
        ever added (XINFO STREAM ``entries-added``, trimming aside); this replica counts those
        it read. Their offset is taken when this replica stands at the head, so the entries
        behind are known from the first time it does (at the latest when idle)."""
        try:
            info = _pairs(await self._redis.call("XINFO", "STREAM", self.log_key))
        except EngineError:  # no stream yet: nothing to be behind
            self._read_base, self.lag_entries, self.lag_seconds = -self._read, 0, 0.0
            return
        head = info[b"last-generated-id"].decode()
        added = int(info[b"entries-added"])
        if head == self.position:
            self._read_base = added - self._read
        if self._read_base is not None:
            behind = added - self._read_base - self._read
            if behind < 0:  # the engine lost entries (a restart without fsync): again
                self._read_base, behind = added - self._read, 0
            self.lag_entries = behind
        self.lag_seconds = max(_id_tuple(head)[0] - _id_tuple(self.position)[0], 0) / 1000

    async def _images(self) -> None:
        interval = self.settings.image_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                took = await self._redis.call("SET", self.lease_key, self.origin, "NX", "PX",
                                              int(interval * 1000 * 0.9))
                if took:
                    await self.upload_image()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("image upload failed; the stream keeps everything meanwhile")

    async def upload_image(self) -> str:
        """Capture the state between two entries, upload it as the engine's image and trim
        the stream below what every live replica still needs; the image's position."""
        self._image_request = asyncio.get_running_loop().create_future()
        if not self._tasks:  # not consuming (yet): this is an entry boundary
            self._capture_image()
        pid, lsn, meta = await self._image_request
        path = await self.snapshots.finish(pid, lsn)
        await self._acked_up_to(meta["uploader_seq"])  # own decisions in it are in the stream
        data = await asyncio.to_thread(path.read_bytes)
        await self._redis.call("HSET", self.image_key, "data", data, "meta",
                               json.dumps(meta).encode(), timeout=max(
                                   self.settings.engine_timeout_seconds, len(data) / 20e6))
        self.images_uploaded += 1
        log.info("image at %s uploaded (%.1f MB)", meta["position"], len(data) / 1e6)
        await self._trim(meta["position"])
        return str(meta["position"])

    def _capture_image(self) -> None:
        """At an entry boundary: the pending decisions into the next entry (so that every
        own decision in the image is in an entry up to a known number), then a forked
        writer takes the image of this instant (see :mod:`storage.snapshotter`)."""
        request, self._image_request = self._image_request, None
        assert request is not None
        flush = self._cut()
        self._queued.append(flush)  # sent right after any entry in flight
        self._urgent = True
        self._wakeup.set()
        meta = {"position": self.position, "entries": self.entries, "origins": self.origins,
                "uploader": self.origin, "uploader_seq": flush.seq, "created": time.time()}
        meta = json.loads(json.dumps(meta))  # a copy of this instant
        pid = self.snapshots.fork_writer(self.entries, paced=True)
        request.set_result((pid, self.entries, meta))

    async def _trim(self, image_position: str) -> None:
        horizon = time.time() - max(3 * self.settings.image_interval_seconds, 30.0)
        needed = [image_position]
        for origin, value in _pairs(await self._redis.call("HGETALL",
                                                             self.replicas_key)).items():
            position, _, seen = value.decode().partition(" ")
            if float(seen or 0) >= horizon:
                needed.append(position)
            else:
                await self._redis.call("HDEL", self.replicas_key, origin)
        floor = min(needed, key=_id_tuple)
        ms, seq = _id_tuple(floor)
        if (ms, seq) == (0, 0):
            return
        await self._redis.call("SET", self.trimmed_key, floor)
        await self._redis.call("XTRIM", self.log_key, "MINID", floor)

    # -- stopping ------------------------------------------------------------------------------
    async def take_snapshot(self, paced: bool = True) -> Path:
        raise RuntimeError("a replica keeps no snapshots: its state is in the engine")

    async def close(self) -> None:
        """Graceful stop: the last decisions into the stream, then the connections closed."""
        try:
            if self.reachable and (self.pending.rows or self._writes):
                flush = self._cut()
                await asyncio.wait_for(self._send(flush), self.settings.engine_timeout_seconds)
        except Exception as exc:
            log.error("last decisions not handed to the engine: %r", exc)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._redis.call("HDEL", self.replicas_key, self.origin)
        for client in (self._redis, self._reader):
            if client is not None:
                client.close()
        if self._timers is not None:
            self._timers.close()
        self._lock.release()


def replica_origin(settings: Settings) -> str:
    """This start's replica id: ``<replica_id or host name>.<6 random hex digits>``, the
    prefix of its decision ids (so a decision id names the replica that made it)."""
    name = settings.replica_id or socket.gethostname().split(".")[0][:32] or f"pid{os.getpid()}"
    return f"{name}.{secrets.token_hex(3)}"


async def read_trail(settings: Settings, password: str | None = None) -> list[st.Audit]:
    """The audit trail of the replicas sharing the log at ``settings.redis_url`` (``banditd
    audit``), read without changing anything there: the engine image's entries, then those
    of the administrative changes after it in the stream that applied. Only administrative
    changes carry an entry, and whether one applies depends only on earlier ones, so they
    are replayed alone, on a state machine of their own, in stream order (retried flushes
    once)."""
    assert settings.redis_url is not None
    client = Engine(parse_url(settings.redis_url, password), settings.engine_timeout_seconds)
    prefix = settings.redis_key_prefix
    machine = StateMachine(settings)
    try:
        for _ in range(600):  # an engine still loading its append-only file answers LOADING
            try:
                await client.call("PING")
                break
            except EngineError as exc:
                if not str(exc).startswith("LOADING"):
                    raise
                await asyncio.sleep(0.1)
        position, seen = "0-0", {}
        image = _pairs(await client.call("HGETALL", f"{prefix}image"))
        if image:
            meta = json.loads(image[b"meta"])
            message, section = snapshot.decode(image[b"data"], "engine image")
            machine.load_image(message, section, "engine image")
            position = meta["position"]
            seen = {origin: int(v[0]) for origin, v in meta["origins"].items()}
        while entries := await client.call("XRANGE", f"{prefix}log", f"({position}", "+",
                                           "COUNT", READ_COUNT):
            for entry_id, flat in entries:
                position = entry_id.decode()
                fields = _pairs(flat)
                origin, seq = fields[b"o"].decode(), int(fields[b"s"])
                if seq <= seen.get(origin, 0):
                    continue
                seen[origin] = seq
                for payload in unframe(fields.get(b"w", b"")):
                    record = st.WalRecord.FromString(payload)
                    if record.HasField("audit"):
                        with contextlib.suppress(DomainError):
                            machine.apply(record)
    finally:
        client.close()
    return machine.audit.entries()
