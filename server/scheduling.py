"""Keep gRPC's helper threads from preempting the event loop (Linux ``SCHED_BATCH``), and
keep timers off the event loop (:class:`ThreadTimers`).

A grpc.aio server runs its Python handlers on the event-loop thread, while gRPC's own
threads (the completion-queue poller, the EventEngine I/O threads, timers) wake up several
times per RPC. Under the default policy a thread that wakes up preempts the running one, so
on a busy host the event loop — the one thread whose CPU time bounds the server's
throughput — is interrupted (and its caches disturbed) several times per request (about four
involuntary context switches of the loop thread per SelectArm on a busy 2-core host).
``SCHED_BATCH`` threads do not preempt on wake-up (the scheduler tick
does); they still run at once on an idle core, with the same CPU share.

:func:`batch_helper_threads` runs the threads created while its context is open under
``SCHED_BATCH`` (gRPC creates its threads when the process's first server or channel is made,
from the calling thread, so they inherit the policy); threads that existed before, the calling
(event-loop) thread itself and threads it starts later (``asyncio.to_thread`` workers) keep
their policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("banditd")

_BATCH = getattr(os, "SCHED_BATCH", None)


def _set_policy(tid: int, policy: int) -> bool:
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError:  # the thread is gone, or a policy this process may not leave
        return False
    return True


def _thread_ids() -> set[int]:
    """Ids of this process's threads (Linux)."""
    return {int(name) for name in os.listdir("/proc/self/task")}


@contextlib.contextmanager
def batch_helper_threads(enabled: bool = True) -> Iterator[None]:
    """Within the context the calling thread runs under ``SCHED_BATCH`` (threads it creates
    inherit it); on exit it returns to its policy, and every thread created meanwhile (also
    by other threads) is left under ``SCHED_BATCH``. A no-op where the policy does not exist,
    or if disabled."""
    if not enabled or _BATCH is None or not os.path.isdir("/proc/self/task"):
        yield
        return
    me = threading.get_native_id()
    existing = _thread_ids()
    before = os.sched_getscheduler(0)
    switched = _set_policy(0, _BATCH)
    try:
        yield
    finally:
        if switched:
            _set_policy(0, before)
        new = _thread_ids() - existing - {me}
        done = sum(_set_policy(tid, _BATCH) for tid in new)
        log.debug("SCHED_BATCH for %d of %d new helper threads", done, len(new))


IDLE_SECONDS = 10.0  # a ThreadTimers thread with nothing to wait for ends after this long
MAX_WAIT_SECONDS = 3600.0  # longest single wait of that thread (it then looks again)


class TimerHandle:
    """A callback :meth:`ThreadTimers.call_later` will run on the loop, unless cancelled."""

    __slots__ = ("callback", "cancelled", "_when")

    def __init__(self, callback: Callable[[], object], when: float) -> None:
        self.callback = callback
        self.cancelled = False
        self._when = when

    def when(self) -> float:
        """When it is due, on ``time.monotonic``'s clock (asyncio's loop clock)."""
        return self._when

    def cancel(self) -> None:
        self.cancelled = True

    def _run(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback()


class ThreadTimers:
    """``call_later`` for an event loop, with the waiting done by a helper thread.

    A timer in the loop's own heap costs every turn of the loop: with one scheduled,
    asyncio reads the clock and works out a select timeout on each of the few turns a
    request takes (about 1.5% more instructions per call of an echo server), and banditd
    always has one (the decision log's next write, the next periodic snapshot).
    Here the thread waits, and the due callback reaches the loop through
    ``call_soon_threadsafe``: one wake-up of the loop per timer, nothing per turn.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "banditd-timers") -> None:
        self.loop = loop
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` on the loop's thread ``delay`` seconds from now (or a little
        later), unless the returned handle is cancelled first."""
        handle = TimerHandle(callback, time.monotonic() + delay)
        with self._cond:
            if self._closed:
                raise RuntimeError("the timers are closed")
            heapq.heappush(self._heap, (handle.when(), next(self._order), handle))
            self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return handle

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` with the wait kept off the loop."""
        done = self.loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        handle = self.call_later(seconds, wake)
        try:
            await done
        finally:
            handle.cancel()

    def _run(self) -> None:
        with self._cond:
            try:
                self._serve()
            finally:  # also after an error: the next call_later starts another thread
                if self._thread is threading.current_thread():
                    self._thread = None

    def _serve(self) -> None:
        """The thread's loop, holding ``self._cond`` (released while waiting)."""
        while not self._closed:
            if not self._heap:
                if not self._cond.wait(IDLE_SECONDS) and not self._heap:
                    return  # idle
                continue
            when, _, handle = self._heap[0]
            wait = when - time.monotonic()
            if wait > 0:
                # bounded: Condition.wait overflows past threading.TIMEOUT_MAX (a huge or
                # infinite interval), and a new earlier timer notifies anyway
                self._cond.wait(min(wait, MAX_WAIT_SECONDS))
                continue
            heapq.heappop(self._heap)
            if not handle.cancelled:
                try:
                    self.loop.call_soon_threadsafe(handle._run)
                except RuntimeError:  # the loop is closed: nothing will run any more
                    self._heap.clear()
                    return

    def close(self) -> None:
        """Stop the thread; callbacks not yet due never run."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
