"""A banditd server inside the benchmark's own process, on its own event loop in a background
thread, so a benchmark can await an RPC's behaviour directly on the server's loop (no network)
and also call it over gRPC on 127.0.0.1.

Bounded: :meth:`InProcessServer.start` waits at most ``start_timeout`` seconds for health
SERVING; use it as a context manager so the server stops on every exit path.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from typing_extensions import Self

from banditd.server.api.app import BanditServer, create_server
from banditd.server.settings import Settings


class InProcessServer:
    """``with InProcessServer(settings) as srv:`` — ``srv.port``, ``srv.loop`` (the server's
    event loop) and ``srv.app.service`` are valid inside the block (the tests' harness extends
    it)."""

    def __init__(self, settings: Settings, start_timeout: float = 600.0) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        self.loop = asyncio.new_event_loop()
        self.app: BanditServer | None = None
        self.port = 0
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        # Set by a harness that kills the server's loop (a simulated crash): the abandoned
        # coroutine must then not run the graceful stop when it is garbage-collected.
        self._crashed = False
        self._thread = threading.Thread(target=self._run, name="banditd-bench", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the caller in start()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.app, self.port = await create_server(self.settings)
        try:
            await self.app.wait_ready()
            self._started.set()
            await self._stop.wait()
        finally:
            if not self._crashed:
                await self.app.stop(None)

    @classmethod
    def on_loopback(cls, data_dir: Path, **settings: Any) -> InProcessServer:
        """One on 127.0.0.1, port 0, with ``data_dir`` and the other settings given."""
        return cls(Settings(host="127.0.0.1", port=0, data_dir=data_dir, **settings))

    def start(self) -> Self:
        self._thread.start()
        if not self._started.wait(timeout=self.start_timeout):
            self.stop()
            raise TimeoutError(f"banditd was not SERVING within {self.start_timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
