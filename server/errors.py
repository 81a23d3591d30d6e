"""Domain errors and the one place that maps them to gRPC status codes.

Handlers raise these; every RPC goes through :func:`api.app.bytes_handler`, which answers
an exception with :func:`status_of`: a domain error becomes its status code with the error's
message, and any other exception becomes INTERNAL (logged) without taking the server down.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from banditd.server.logs import RateLimited

log = logging.getLogger("banditd")
# Clients' bad requests, at debug level: a client can send them at any rate.
_client_errors = RateLimited(logging.getLogger("banditd.requests"))
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class DomainError(Exception):
    """Base class: a request that cannot be served. Nothing was changed."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(DomainError):
    """A request field is wrong. ``field`` is its path in the request (``experiment.arms``,
    ``requests[3].context``): the status carries it as a ``google.rpc.BadRequest`` field
    violation."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
# Longest status message sent: gRPC carries it in a header, and a message over the peer's
# metadata limit (8 KiB by default) turns the answer into RESOURCE_EXHAUSTED on the client.
MAX_MESSAGE = 1024
SHOWN = 64  # characters of a client's string echoed in a message


def shown(text: str, limit: int = SHOWN) -> str:
    """A client-given string (an id, a name) as an error message shows it: quoted, and cut
    to ``limit`` characters with its length when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def status_of(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status an RPC of ``method`` that raised ``exc`` answers with: a domain error's code
    and message (at most ``MAX_MESSAGE`` characters); anything else INTERNAL, logged with its
    traceback (the server goes on)."""
    if isinstance(exc, DomainError):
        message = str(exc)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 40] + f"... ({len(message):,} characters)"
        _client_errors.debug("%s: %s: %s", method, exc.code.name, message, rpc=method,
                             code=exc.code.name)
        return exc.code, message
    log.error("internal error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}"


def status_details(exc: Exception, message: str) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries ``exc``'s rich status (``google.rpc.Status``, as
    grpcio-status' ``rpc_status`` reads it): for an InvalidArgument naming its field, a
    ``google.rpc.BadRequest`` with that field violation; else nothing."""
    if not isinstance(exc, InvalidArgument) or not exc.field:
        return ()
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=message)]))
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message,
                               details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)
