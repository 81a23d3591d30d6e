"""Compile (or load from Numba's on-disk cache) the compiled functions the server calls, and run
each once, so that no request pays compilation time.

At start (before health turns SERVING): the random streams, the serving package's compiled
helpers (request checks, response encoding) and the kernels of the policies the restored state
uses. A policy no experiment uses yet is compiled when an experiment first needs it
(:meth:`Kernels.ensure`): CreateExperiment waits for it, off the event loop, while every other
request goes on; SelectArm only ever runs policies of existing experiments, so it never
compiles. The Monte-Carlo allocation kernels (:data:`ALLOCATION`, about 18 of the 26 CPU
seconds a start on an empty cache took) are compiled the same way before the first
GetArmStats, GetAllocation or THOMPSON AllocateBudget. ``banditd warmup`` compiles everything
(the image's cache).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels import POLICIES
from banditd.kernels.warmup import warm_up as warm_up_kernels
from banditd.kernels.warmup import warm_up_allocation, warm_up_policy
from banditd.server.api.wire import encode_arm_ids, select_responses, select_responses_bound
from banditd.server.errors import DomainError
from banditd.server.state.checks import first_out_of_range
from banditd.server.state.policies import resolve_policy

log = logging.getLogger("banditd")

ALLOCATION = "allocation"  # the probability-best kernels, compiled like a policy's


def warm_up(policies: Iterable[str] | None = None, allocation: bool = True) -> float:
    """Warm the serving helpers, the kernels of ``policies`` (kernel names; default: every
    policy) and with ``allocation`` the allocation kernels; the seconds taken."""
    start = time.perf_counter()
    warm_up_kernels(policies, allocation)
    first_out_of_range(np.ones(3), 1.0)
    # as BatchSelectArms calls it: a read-only prefix (np.frombuffer of bytes), int counters
    arm_bytes, arm_starts = encode_arm_ids(["a", "b"])
    out = np.empty(select_responses_bound(2, 1, 1), dtype=np.uint8)
    select_responses(np.frombuffer(b"p", dtype=np.uint8), 1, np.zeros(2, dtype=np.int64),
                     arm_bytes, arm_starts, np.ones(2).view(np.uint8), 0, out)
    return time.perf_counter() - start


def kernel_of(experiment: pb.Experiment) -> str | None:
    """The kernel an experiment configuration would run (None if it is invalid: its checks
    will say why)."""
    copy = pb.Experiment()
    copy.CopyFrom(experiment)
    try:
        return str(resolve_policy(copy.policy, copy.reward_type, copy.context_dim).kernel.NAME)
    except DomainError:
        return None


class Kernels:
    """Which policies' kernels this process has compiled, and compiling the others."""

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self._compiling: dict[str, asyncio.Future] = {}
        self._lock = threading.Lock()  # compilations of one process, one at a time

    def start(self, policies: Iterable[str] | None) -> float:
        """At start (in a thread): the serving helpers and ``policies`` (None: every policy
        and the allocation kernels); the seconds taken."""
        names = sorted(POLICIES if policies is None else set(policies))
        with self._lock:
            seconds = warm_up(names, allocation=policies is None)
        self.ready.update(names)
        if policies is None:
            self.ready.add(ALLOCATION)
        return seconds

    async def ensure(self, kernel: str | None) -> None:
        """Return once ``kernel``'s functions (a policy's kernel name, or :data:`ALLOCATION`)
        are compiled, compiling them off the event loop if needed (concurrent callers share
        one compilation)."""
        if kernel is None or kernel in self.ready:
            return
        pending = self._compiling.get(kernel)
        if pending is None:
            pending = self._compiling[kernel] = asyncio.ensure_future(
                asyncio.to_thread(self._compile, kernel))
        try:
            await asyncio.shield(pending)
        finally:
            if pending.done():
                self._compiling.pop(kernel, None)
        self.ready.add(kernel)

    def _compile(self, kernel: str) -> None:
        started = time.perf_counter()
        with self._lock:
            if kernel == ALLOCATION:
                warm_up_allocation()
            else:
                warm_up_policy(POLICIES[kernel])
        log.info("%s kernels compiled on first use in %.2f s", kernel,
                 time.perf_counter() - started)
