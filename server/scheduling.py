"""Keep gRPC's helper threads from preempting the event loop (Linux ``SCHED_BATCH``).

A grpc.aio server runs its Python handlers on the event-loop thread, while gRPC's own
threads (the completion-queue poller, the EventEngine I/O threads, timers) wake up several
times per RPC. Under the default policy a thread that wakes up preempts the running one, so
on a busy host the event loop — the one thread whose CPU time bounds the server's
throughput — is interrupted (and its caches disturbed) several times per request: measured on
the 2-core development VM, ~4 involuntary context switches of the loop thread per SelectArm at
32 calls in flight. ``SCHED_BATCH`` threads do not preempt on wake-up (the scheduler tick
does); they still run at once on an idle core, with the same CPU share.

:func:`batch_helper_threads` runs the threads created while its context is open under
``SCHED_BATCH`` (gRPC creates its threads when the process's first server or channel is made,
from the calling thread, so they inherit the policy); threads that existed before, the calling
(event-loop) thread itself and threads it starts later (``asyncio.to_thread`` workers) keep
their policy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

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
