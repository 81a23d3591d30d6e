"""``banditd serve --workers N`` (N > 1): the supervisor of N worker processes.

It checks the port (picks a free one for port 0), starts N worker processes (``banditd
worker``, :mod:`cluster.workers`) that all bind it with SO_REUSEPORT (the kernel spreads
connections over them), passes the leader's private address to the followers, writes
``--port-file`` once every worker is SERVING, forwards SIGTERM / SIGINT (followers first,
then the leader, so that the followers' last decisions reach the leader before its final
snapshot) and SIGHUP (every worker re-reads its tokens and TLS files), and exits non-zero,
stopping the rest, when a worker dies unexpectedly.

Control lines: supervisor -> worker on the worker's stdin (``secret <hex>`` first: the private
port's per-start credential; ``leader <host:port>``; end of
input = the supervisor is gone, the worker stops); worker -> supervisor on its stdout
(``leader <host:port>`` from worker 0, ``serving <port>`` from each). The supervisor imports
no kernels: it starts in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
from pathlib import Path

from banditd.server.settings import Settings

log = logging.getLogger("banditd")


# -- supervisor --------------------------------------------------------------------------------


def check_port(host: str, port: int) -> int:
    """The port to share (a free one for 0); OSError if something listens there already.

    SO_REUSEPORT lets any process of the same user join a port, so a second banditd would
    silently share it: refuse a port that any socket holds."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bare, port))
        except OSError as exc:
            raise OSError(f"could not listen on {host}:{port}: {exc.strerror or exc}") from None
        return int(probe.getsockname()[1])


def supervise(settings: Settings, port_file: Path | None) -> int:
    """``banditd serve --workers N`` (N > 1): run and watch N workers; the exit code."""
    port = check_port(settings.host, settings.port)
    return asyncio.run(_supervise(settings.model_copy(update={"port": port}), port_file))


async def _supervise(settings: Settings, port_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, events.put_nowait, ("stop", -1, sig.name))
    config = settings.model_dump_json()
    # The private port's credential, new each start, given to the workers on their stdin (not
    # in argv or the environment, which other processes can read).
    secret = secrets.token_hex(32)
    procs: list[asyncio.subprocess.Process] = []
    for index in range(settings.workers):
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "banditd", "worker", "--index", str(index),
            "--settings", config,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            # Own session: a terminal's Ctrl-C reaches the supervisor only, which stops the
            # workers in order. A worker whose supervisor vanishes sees its stdin close.
            start_new_session=True,
        ))
        assert procs[-1].stdin is not None
        procs[-1].stdin.write(f"secret {secret}\n".encode())

    async def watch(index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            kind, _, argument = raw.decode(errors="replace").strip().partition(" ")
            if kind in ("leader", "serving"):
                events.put_nowait((kind, index, argument))
        events.put_nowait(("exit", index, str(await proc.wait())))

    def reload() -> None:  # SIGHUP: every worker re-reads its tokens and TLS files
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload)
    watchers = [loop.create_task(watch(i, p)) for i, p in enumerate(procs)]
    log.info("supervisor: %d workers on %s:%d", settings.workers, settings.host, settings.port)
    serving: set[int] = set()
    requested = False
    while True:
        kind, index, argument = await events.get()
        if kind == "stop":
            log.info("supervisor: %s; stopping the workers", argument)
            requested = True
            break
        if kind == "exit":
            log.error("supervisor: worker %d exited unexpectedly (code %s); stopping the rest",
                      index, argument)
            break
        if kind == "leader":
            for follower in procs[1:]:
                assert follower.stdin is not None
                follower.stdin.write(f"leader {argument}\n".encode())
        elif kind == "serving":
            serving.add(index)
            if len(serving) == len(procs):
                if port_file is not None:
                    port_file.write_text(f"{settings.port}\n")
                log.info("SERVING on port %d with %d workers", settings.port, len(procs))
    codes = await _stop_workers(procs, settings.grace_seconds + settings.drain_seconds)
    for task in watchers:
        task.cancel()
    clean = requested and all(code == 0 for code in codes)
    log.info("supervisor: workers exited with %s", codes)
    return 0 if clean else 1


async def _stop_workers(procs: list[asyncio.subprocess.Process], grace: float) -> list[int]:
    """Followers first (their last decisions go to the leader), then the leader."""
    codes: dict[int, int] = {}
    for group in (range(1, len(procs)), range(0, 1)):
        for i in group:
            if procs[i].returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    procs[i].send_signal(signal.SIGTERM)
        for i in group:
            try:
                codes[i] = await asyncio.wait_for(procs[i].wait(), grace + 60)
            except TimeoutError:
                log.error("supervisor: worker %d did not stop; killing it", i)
                procs[i].kill()
                codes[i] = await procs[i].wait()
    return [codes[i] for i in range(len(procs))]
