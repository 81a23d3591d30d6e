"""``banditd serve --workers N`` (N > 1): N replicas of the shared-log mechanism on one host.

Unless ``BANDITD_REDIS_URL`` is given, the supervisor first starts an embedded engine that it
owns (:class:`engine.EmbeddedEngine`: a Unix socket in ``<data_dir>/engine/``, mode 0600, a
password made anew each start; its append-only file there too). Then it checks the port
(picks a free one for port 0) and starts N replica processes (``banditd replica``,
:mod:`cluster.replica`) that all bind it with SO_REUSEPORT (the kernel spreads connections
over them), each with its own data directory ``<data_dir>/replica-<i>``. It writes
``--port-file`` once every replica is SERVING, forwards SIGTERM / SIGINT to the replicas (the
engine is stopped after them) and SIGHUP (every replica re-reads its tokens and TLS files),
and exits non-zero, stopping the rest, when a replica or the engine dies unexpectedly.

Control lines: supervisor -> replica on its stdin (``password <engine password>`` first; end
of input = the supervisor is gone, the replica stops); replica -> supervisor on its stdout
(``serving <port>``). The supervisor imports no kernels: it starts in a fraction of a second.
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
from urllib.parse import unquote, urlsplit, urlunsplit

from banditd.server.cluster.engine import EmbeddedEngine, find_binary
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
    """``banditd serve --workers N`` (N > 1): run and watch N replicas (and the embedded
    engine); the exit code."""
    port = check_port(settings.host, settings.port)
    settings = settings.model_copy(update={"port": port})
    engine: EmbeddedEngine | None = None
    password = ""
    if settings.redis_url is None:
        password = secrets.token_hex(32)
        engine = EmbeddedEngine(find_binary(settings.engine_binary),
                                Path(settings.data_dir) / "engine", password,
                                settings.durability)
        engine.start()
        log.info("supervisor: engine %s on %s", engine.binary, engine.socket)
        settings = settings.model_copy(update={"redis_url": engine.url})
    else:  # the URL's password goes to the replicas on stdin, like the embedded one's
        url, password = split_password(settings.redis_url)
        settings = settings.model_copy(update={"redis_url": url})
    try:
        return asyncio.run(_supervise(settings, port_file, password, engine))
    finally:
        if engine is not None:
            code = engine.stop()
            log.info("supervisor: engine stopped (%s)", code)


def split_password(url: str) -> tuple[str, str]:
    """``url`` without its password, and the password ("" if it has none): a replica's
    command line (``--settings``) is readable by every user of the host, its stdin is not."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, ""
    user, _, _ = parts.netloc.rpartition("@")[0].partition(":")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}@{host}" if user else host
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


async def _supervise(settings: Settings, port_file: Path | None, password: str,
                     engine: EmbeddedEngine | None) -> int:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, events.put_nowait, ("stop", -1, sig.name))
    procs: list[asyncio.subprocess.Process] = []
    for index in range(settings.workers):
        own = settings.model_copy(update={
            "data_dir": Path(settings.data_dir) / f"replica-{index}",
            "replica_id": settings.replica_id or f"w{index}"})
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "banditd", "replica", "--index", str(index),
            "--settings", own.model_dump_json(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            # A process group of its own (setsid): a terminal's Ctrl-C reaches the supervisor
            # only, which stops the replicas. A replica whose supervisor vanishes sees its
            # stdin close.
            start_new_session=True,
        ))
        assert procs[-1].stdin is not None
        # The engine's password on stdin (not in argv or the environment, which other
        # processes can read; "" for an engine without one).
        procs[-1].stdin.write(f"password {password}\n".encode())

    async def watch(index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            kind, _, argument = raw.decode(errors="replace").strip().partition(" ")
            if kind == "serving":
                events.put_nowait((kind, index, argument))
        events.put_nowait(("exit", index, str(await proc.wait())))

    async def watch_engine() -> None:
        assert engine is not None and engine.proc is not None
        # polled: a thread blocked in wait() would hold up asyncio.run's exit, and the
        # engine is stopped only after it
        while engine.proc.poll() is None:
            await asyncio.sleep(0.5)
        events.put_nowait(("engine", -1, str(engine.proc.returncode)))

    def reload() -> None:  # SIGHUP: every replica re-reads its tokens and TLS files
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload)
    watchers = [loop.create_task(watch(i, p)) for i, p in enumerate(procs)]
    if engine is not None:
        watchers.append(loop.create_task(watch_engine()))
    log.info("supervisor: %d replicas on %s:%d", settings.workers, settings.host, settings.port)
    serving: set[int] = set()
    requested = False
    while True:
        kind, index, argument = await events.get()
        if kind == "stop":
            log.info("supervisor: %s; stopping the replicas", argument)
            requested = True
            break
        if kind == "exit":
            log.error("supervisor: replica %d exited unexpectedly (code %s); stopping the "
                      "rest", index, argument)
            break
        if kind == "engine":
            log.error("supervisor: the engine exited unexpectedly (code %s); stopping the "
                      "replicas", argument)
            break
        if kind == "serving":
            serving.add(index)
            if len(serving) == len(procs):
                if port_file is not None:
                    port_file.write_text(f"{settings.port}\n")
                log.info("SERVING on port %d with %d replicas", settings.port, len(procs))
    codes = await _stop_replicas(procs, settings.grace_seconds + settings.drain_seconds)
    for task in watchers:
        task.cancel()
    clean = requested and all(code == 0 for code in codes)
    log.info("supervisor: replicas exited with %s", codes)
    return 0 if clean else 1


async def _stop_replicas(procs: list[asyncio.subprocess.Process], grace: float) -> list[int]:
    """SIGTERM to every replica (each hands its last decisions to the engine), then wait."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    codes = []
    for i, proc in enumerate(procs):
        try:
            codes.append(await asyncio.wait_for(proc.wait(), grace + 60))
        except TimeoutError:
            log.error("supervisor: replica %d did not stop; killing it", i)
            proc.kill()
            codes.append(await proc.wait())
    return codes
