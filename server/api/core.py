"""What the DecisionService handlers share (:class:`Core`), and how they change state.

Every handler follows one shape: check the request against the state, build the record of the
change (if any), apply it through the state machine and log it (:meth:`Core.write`). No
handler changes state by another route. Handlers run on the grpc.aio event loop; the checks,
the apply and the append of one request run without an await in between, so a request's
check-then-apply is atomic without locks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from banditd.server.api.auth import Authenticator, current_caller
from banditd.server.api.metrics import Metrics
from banditd.server.api.warmup import Kernels
from banditd.server.errors import InvalidArgument, ResourceExhausted
from banditd.server.settings import Settings
from banditd.server.state.audit import log_entry
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine
from banditd.server.storage.durability import Durability
from banditd.storage.v1 import storage_pb2 as st

# Set by a worker that forwards a call to the leader: the address of the client that made it
# (what the leader's audit trail records).
FORWARDED_PEER_KEY = "banditd-forwarded-peer"


class Core:
    """What every handler works with: settings, the state machine, durability, metrics,
    whether the server is ready and who may call what (both checked in one place,
    :func:`handlers.bytes_handler`)."""

    def __init__(self, settings: Settings, state: StateMachine, storage: Durability,
                 pending: PendingDecisions, metrics: Metrics) -> None:
        self.settings = settings
        self.state = state
        self.storage = storage
        self.pending = pending  # decision records until the log takes them
        self.metrics = metrics
        self.ready = False  # set once kernels are warm and the state is restored
        self.auth = Authenticator(settings.auth_tokens_file)
        self.kernels = Kernels()  # compiled policies (the rest are compiled on first use)

    @property
    def logging(self) -> bool:
        """Whether records are written at all (a log, or other workers to send them to)."""
        return self.storage.logging

    def check_writable(self) -> None:
        """Before a change is applied: UNAVAILABLE while the log refuses records (fail-stop,
        see :mod:`storage.durability`); the change is then not made at all."""
        self.storage.check_writable()

    async def write(self, record: st.WalRecord, replicated: bool = False) -> object:
        """Apply a checked change's record, log it and wait until it is durable (and with
        ``replicated``, applied by every other worker: configuration changes). Returns what
        the record's applier returned."""
        self.check_writable()
        result = self.state.apply(record)
        if self.logging:
            self.storage.append(record.SerializeToString())
            await self.storage.commit(replicated)
        return result

    async def write_audited(self, record: st.WalRecord, context, rpc: str,
                            ids: Iterable[str]) -> object:
        """:meth:`write` for an administrative change (replicated): the record carries its
        audit entry (the caller's token name and address, ``rpc``, the ``ids`` it concerns,
        the time), and the entry is logged once the change is durable."""
        record.audit.CopyFrom(st.Audit(time=time.time(), token_name=current_caller.get().name,
                                       peer=_peer(context), rpc=rpc, ids=list(ids)))
        result = await self.write(record, replicated=True)
        log_entry(record.audit)
        return result

    async def synced(self) -> None:
        """Wait until everything logged so far is durable: an answer that reports an earlier
        change (a duplicate) must not go out before that change's record is on disk."""
        await self.storage.commit()

    def event_time(self, request) -> float:
        """The request's event_time in seconds since the epoch, or the server clock. A time
        more than ``max_event_time_skew_seconds`` ahead of the server clock is refused: one
        far-future event would move a campaign's day there for good."""
        now = time.time()
        if not request.HasField("event_time"):
            return now
        ts = request.event_time
        if not (ts.seconds >= 0 and 0 <= ts.nanos < 1_000_000_000):
            raise InvalidArgument(f"event_time must be a time after 1970, got {ts.seconds} s "
                                  f"{ts.nanos} ns", field="event_time")
        t = ts.seconds + ts.nanos * 1e-9
        skew = self.settings.max_event_time_skew_seconds
        if t > now + skew:
            raise InvalidArgument(
                f"event_time is {t - now:.0f} s ahead of the server clock; at most "
                f"{skew:g} s ahead is accepted (max_event_time_skew_seconds)", field="event_time")
        return t

    def check_batch(self, size: int) -> None:
        if size == 0:
            raise InvalidArgument("requests is empty", field="requests")
        if size > self.settings.max_batch_size:
            raise ResourceExhausted(
                f"requests has {size} items, the limit is {self.settings.max_batch_size}")


def _peer(context) -> str:
    """The client's address; for a call a worker forwarded, the address it came from."""
    if context is None:  # called in-process, without gRPC
        return ""
    peer = context.peer() or ""
    for key, value in context.invocation_metadata() or ():
        if key == FORWARDED_PEER_KEY and isinstance(value, str):
            return f"{value} (via {peer})"
    return peer
