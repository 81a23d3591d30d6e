"""One replica: a banditd server whose changes go through the engine's shared log
(:mod:`cluster.stream`), started by ``banditd serve`` with ``BANDITD_REDIS_URL`` or as one of
the processes of ``banditd serve --workers N`` (``banditd replica``, :mod:`cluster.supervisor`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import sys

from banditd.server.api.app import Parts, create_server
from banditd.server.cluster.stream import SharedLog, replica_origin
from banditd.server.settings import Settings
from banditd.server.state.decision_store import DecisionStore
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine

log = logging.getLogger("banditd")


def replica_parts(settings: Settings, password: str | None = None,
                  reuse_port: bool = False) -> Parts:
    """The parts of a replica: its state (decision ids naming this replica, its own random
    stream of every experiment's seed) and the engine's shared log as its durability."""
    origin = replica_origin(settings)
    state = StateMachine(settings, DecisionStore(
        settings.decision_capacity, settings.decision_ttl_seconds, id_prefix=origin))
    # No two replicas make the same draws: each jumps every seed's stream by its own
    # (random) number of 2**128 draws.
    state.experiments.stream = secrets.randbelow(1 << 31) + 1
    pending = PendingDecisions()
    return Parts(state, SharedLog(settings, state, pending, origin, password), pending,
                 reuse_port=reuse_port, all_kernels=True)


def _tell(*words: object) -> None:
    """A status line to the supervisor (stdout is reserved for these)."""
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def run_replica(settings: Settings, index: int) -> int:
    """``banditd replica``: replica ``index`` of a supervisor (``serve --workers N``); its
    first stdin line is the engine's password, end of input = the supervisor is gone."""
    if settings.metrics_port:  # one /metrics endpoint per replica: port + index
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + index})
    if index > 0:  # the first replica settles reward windows for all (they share the log)
        settings = settings.model_copy(update={"reward_sweeper": False})
    return asyncio.run(_replica(settings, index))


async def _replica(settings: Settings, index: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # not fatal before the server exists
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    first = await reader.readline()
    command, _, password = first.decode().strip().partition(" ")
    if command != "password":
        log.error("replica %d: no engine password from the supervisor", index)
        return 1

    async def control() -> None:
        while await reader.readline():
            pass
        if not stop.is_set():
            log.warning("supervisor gone; stopping")
        stop.set()

    control_task = loop.create_task(control())
    app, port = await create_server(settings, replica_parts(settings, password or None,
                                                            reuse_port=True))
    # SIGHUP (passed on by the supervisor): re-read the tokens and TLS files. Until here it
    # is ignored: create_server has just read them.
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    try:
        if await app.wait_ready_or(stop):
            _tell("serving", port)
    except Exception as exc:
        log.error("replica %d failed to start: %r", index, exc)
        return 1
    await stop.wait()
    log.info("replica %d shutting down (grace %.1f s)", index, settings.grace_seconds)
    await app.stop(settings.grace_seconds, settings.drain_seconds)
    control_task.cancel()
    log.info("replica %d stopped", index)
    return 0


def replica_settings(text: str) -> Settings:
    """The supervisor's resolved settings, as passed to ``banditd replica --settings``."""
    return Settings(**json.loads(text))
