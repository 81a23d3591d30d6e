"""SelectArm calls that arrive close together, decided together (a dynamic batcher).

Under load a SelectArm costs the event loop several times its in-process time: it starts
with caches that gRPC's own per-call work has just evicted. On the development VM (README,
Throughput and load testing) a decision cost 55-70 µs of CPU more than the bare echo's
answer, while a second decision right after the first cost only 8-15 µs more. Deciding the
calls of a burst back to back pays the cold start once per group instead of once per call.

The rules (``window`` = ``Settings.select_coalesce_seconds``):

* A call that arrives ``window`` or more after the previous SelectArm is decided at once: at
  low load, or one call in flight, nothing waits.
* A call that arrives sooner opens a group (or joins the open one) and waits for its answer.
* The group is decided when a call arrives after the group's first call has waited
  ``window`` (that call is decided last, and answered without waiting), when it holds
  :data:`MAX_GROUP` calls, or when its timer fires (and the calls that reached the loop in
  the same pass have joined). An asyncio timer may fire up to a millisecond late when the loop
  has nothing else to do.
* A group whose timer fired with no second call in it means the traffic did not come close
  together after all: coalescing pauses for :data:`PAUSE_SECONDS`, so steady traffic one call
  at a time pays the wait at most once per pause.
* A group is decided in arrival order, each call exactly as if it had arrived at that moment
  (validation included: the experiment may have changed while it waited). A call whose
  client went away while it waited is dropped without a decision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

MAX_GROUP = 16
PAUSE_SECONDS = 0.05


class SelectCoalescer:
    """Groups ``decide(request)`` calls that arrive within ``window`` seconds of each other.

    :meth:`submit` returns the response, or a future of it when the call waits for its group.
    ``on_group(calls)`` is told the size of every group decided (for the metrics)."""

    def __init__(self, decide: Callable[[Any], Any], window: float,
                 on_group: Callable[[int], None]) -> None:
        self._decide = decide
        self.window = window
        self._on_group = on_group
        self._clock = time.perf_counter
        self._group: list[tuple[Any, asyncio.Future]] = []
        self._opened = 0.0  # arrival of the open group's first call
        self._last = -window  # arrival of the previous call
        self._paused_until = 0.0
        self._timer: asyncio.Handle | None = None  # the open group's timer

    def submit(self, request: Any) -> Any:
        now = self._clock()
        gap = now - self._last
        self._last = now
        group = self._group
        if group:
            if now - self._opened >= self.window or len(group) + 1 >= MAX_GROUP:
                self._decide_group(also=1)
                return self._decide(request)
        elif gap >= self.window or now < self._paused_until:
            return self._decide(request)
        else:
            self._opened = now
            self._timer = asyncio.get_running_loop().call_later(self.window, self._expire)
        future = asyncio.get_running_loop().create_future()
        group.append((request, future))
        return future

    def _expire(self) -> None:
        # Calls that reached the loop in the same pass as this timer have their handlers
        # scheduled behind it (after the loop thread was preempted, say): let them join first.
        self._timer = asyncio.get_running_loop().call_soon(self._expired)

    def _expired(self) -> None:
        self._timer = None
        if len(self._group) == 1:
            self._paused_until = self._clock() + PAUSE_SECONDS
        self._decide_group()

    def _decide_group(self, also: int = 0) -> None:
        """Decide the open group; ``also`` more calls (the one closing it) come right after."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group, self._group = self._group, []
        self._on_group(len(group) + also)
        decide = self._decide
        for request, future in group:
            if future.done():  # cancelled: the client went away while it waited
                continue
            try:
                future.set_result(decide(request))
            except Exception as exc:  # its own status, as if decided alone
                future.set_exception(exc)
