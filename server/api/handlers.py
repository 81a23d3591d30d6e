"""How a DecisionService behaviour becomes a gRPC handler: parse, check readiness, call, map
errors to status codes (:func:`errors.status_of`, the one place), count in the metrics.

Handlers take and return bytes and are registered through one generic handler: in grpc.aio
the registered-method path costs about a fifth of a do-nothing handler's throughput, and
letting gRPC call the (de)serialisers about another sixth of its CPU per call.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.auth import Authenticator
from banditd.server.api.metrics import OK_TIMES_HELD, Metrics
from banditd.server.errors import InvalidArgument, Unavailable, status_details, status_of

SERVICE = pb.DESCRIPTOR.services_by_name["DecisionService"]
SERVICE_NAME = SERVICE.full_name
NOT_READY = "server is starting (compiling kernels, restoring state); retry shortly"

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class Readiness(Protocol):
    """Whether requests may be served yet (kernels warm, state restored), and who may call
    what."""

    ready: bool
    auth: Authenticator


def unary_methods() -> Iterator[MethodDescriptor]:
    """The methods of ``decision.v1.DecisionService``; all are unary (only those are served)."""
    for method in SERVICE.methods:
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{method.full_name}: only unary RPCs are served")
        yield method


def request_parser(request_class: Any, name: str) -> Callable[[bytes], Any]:
    """``request_class.FromString`` for RPC ``name``: an undecodable request is
    ``InvalidArgument``."""
    parse = request_class.FromString

    def request_of(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            raise InvalidArgument(f"{name}: the request is not a valid "
                                  f"{request_class.__name__}") from None

    return request_of


def bytes_handler(behavior: Callable[..., Any], method: MethodDescriptor, metrics: Metrics,
                  gate: Readiness, raw: bool = False) -> Handler:
    """``behavior`` (``method``'s request message in, response message out; a coroutine
    function if it waits for anything, a plain one if it never does) as the bytes-in,
    bytes-out handler of ``method``: refuses calls until ``gate`` is ready (UNAVAILABLE),
    parses, calls, serialises, answers an exception with its status and counts the call in
    ``metrics``. ``raw``: ``behavior`` is plain and takes and returns the bytes itself. With
    authentication on (``gate.auth``), the caller's token is checked first.

    One coroutine per call, whatever ``behavior`` is: SelectArm, which never waits, is plain
    code called from here (a wrapper coroutine per layer cost ~1 µs each)."""
    request_of = request_parser(message_factory.GetMessageClass(method.input_type),
                                method.name)
    name = method.name
    observe = metrics.observe
    ok_times, bin_ok_times = metrics.ok_times(name)
    clock = time.perf_counter
    waits = inspect.iscoroutinefunction(behavior)
    if raw and waits:
        raise TypeError(f"{name}: a raw behaviour must be a plain function")
    check_caller = gate.auth.checker(name)  # None: no authentication

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        # Every call is counted once, before its answer goes out (abort sends the status
        # before it returns), so a client that has seen the answer finds it in /metrics.
        start = clock()
        try:
            if check_caller is not None:
                check_caller(context)
            if not gate.ready:
                raise Unavailable(NOT_READY)
            if raw:
                answer = behavior(request, context)
            else:
                response = behavior(request_of(request), context)
                if waits:
                    response = await response
                answer = response.SerializeToString()
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            observe(name, "CANCELLED", clock() - start)
            raise
        except grpc.aio.AbortError:  # the behaviour aborted: its status is already set
            observe(name, code_name(context.code()), clock() - start)
            raise
        except Exception as exc:
            status, message = status_of(exc, name)
            details = status_details(exc, message)
        else:
            ok_times.append(clock() - start)
            if len(ok_times) >= OK_TIMES_HELD:
                bin_ok_times()
            return answer
        observe(name, status.name, clock() - start)
        if details:  # abort's metadata replaces what was set before (a worker's keys)
            details = (*(context.trailing_metadata() or ()), *details)
        # outside the try: an error here is not recounted
        await context.abort(status, message, details)
        raise AssertionError("abort returned")

    return handler


def code_name(code: Any) -> str:
    """A status code's name for the metrics (``grpc.StatusCode`` or its integer value)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


def register_decision_handlers(server: grpc.aio.Server, handlers: dict[str, Handler]) -> None:
    """Serve DecisionService on ``server`` through one generic handler (method name ->
    bytes handler)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE_NAME, {name: grpc.unary_unary_rpc_method_handler(handler)
                       for name, handler in handlers.items()}),))


class GenericHandlersOnly:
    """``server`` as seen by a generated ``add_*Servicer_to_server`` function: its generic
    handler is added, its ``add_registered_method_handlers`` call is dropped. Registering the
    methods of any service (health, reflection) makes every call on the server dearer (a
    do-nothing grpc.aio server lost 4.2-4.7% of its throughput with the health service
    registered that way); served through the generic handler, the calls are the same."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        pass
