"""A thin asyncio client of the engine's protocol (RESP2), its replies parsed by hiredis.

The shared log sends one XADD per flush and reads entries with XREAD: a few commands, on the
hot path of every change. A general client (redis-py: connection pool, retries, response
callbacks) cost the replica several times the CPU per command of this one, which only frames
the command (``hiredis.pack_command``) and hands the bytes it receives to hiredis' parser.
Commands are pipelined on one connection; replies come back in order.

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS, the system's CA
certificates), ``unix:///path[?db=N]``. No Sentinel, no Cluster.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


class EngineError(Exception):
    """The engine answered a command with an error."""


@dataclass(frozen=True)
class Address:
    """Where the engine is and how to log in."""

    host: str = ""
    port: int = 6379
    path: str = ""  # a Unix socket
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0


def parse_url(url: str, password: str | None = None) -> Address:
    """An engine URL (see the module) as an :class:`Address`; ``password`` overrides the
    URL's."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        return Address(path=unquote(parts.path), password=password or (
            unquote(parts.password) if parts.password else None),
            db=int(query.get("db", ["0"])[0]))
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"engine URL scheme {parts.scheme!r}: redis, rediss or unix")
    path = parts.path.strip("/")
    return Address(
        host=parts.hostname or "localhost", port=parts.port or 6379,
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=password or (unquote(parts.password) if parts.password else None),
        db=int(path) if path else int(query.get("db", ["0"])[0]))


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = hiredis.Reader()
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (reply := self.parser.gets()) is not False:
            if not self.waiters:  # a reply nobody waits for: the stream is out of step
                self.fail(ConnectionError("a reply the client did not ask for"))
                return
            fut = self.waiters.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(EngineError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("the engine closed the connection")
        self._fail_waiters(self.lost)

    def fail(self, exc: BaseException) -> None:
        self.lost = exc
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiters(exc)

    def _fail_waiters(self, exc: BaseException) -> None:
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            exc = ConnectionError(str(exc))
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)


class Engine:
    """One connection to the engine, opened on first use and again after it broke. A command
    that gets no reply within ``timeout`` seconds (TimeoutError) breaks the connection (the
    replies after it would be out of step)."""

    def __init__(self, address: Address, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._opening: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        a = self.address
        loop = asyncio.get_running_loop()
        if a.path:
            _, protocol = await loop.create_unix_connection(_Protocol, a.path)
        else:
            context = ssl.create_default_context() if a.tls else None
            _, protocol = await loop.create_connection(
                _Protocol, a.host, a.port, ssl=context,
                server_hostname=a.host if context else None)
        try:
            if a.password is not None:
                args = ("AUTH", a.username, a.password) if a.username else ("AUTH", a.password)
                await self._send(protocol, args, self.timeout)
            if a.db:
                await self._send(protocol, ("SELECT", str(a.db)), self.timeout)
        except BaseException:
            protocol.fail(ConnectionError("login failed"))
            raise
        return protocol

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            protocol = self._protocol
            if protocol is None or protocol.lost is not None:
                protocol = self._protocol = await asyncio.wait_for(self._connect(),
                                                                   self.timeout)
        return protocol

    @staticmethod
    async def _send(protocol: _Protocol, args, timeout: float):
        fut = asyncio.get_running_loop().create_future()
        protocol.waiters.append(fut)
        assert protocol.transport is not None
        protocol.transport.write(hiredis.pack_command(tuple(args)))
        timer = asyncio.get_running_loop().call_later(
            timeout, _time_out, protocol, fut, timeout)
        try:
            return await fut
        finally:
            timer.cancel()

    async def call(self, *args, timeout: float | None = None):
        """Send one command (str / bytes / int arguments); its reply (bytes, int, list,
        None), :class:`EngineError` for an error reply, ConnectionError / TimeoutError when
        the engine cannot be reached."""
        protocol = await self._ready()
        return await self._send(protocol, args, self.timeout if timeout is None else timeout)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def _time_out(protocol: _Protocol, fut: asyncio.Future, timeout: float) -> None:
    if not fut.done():
        protocol.fail(TimeoutError(f"no reply from the engine within {timeout:g} s"))
