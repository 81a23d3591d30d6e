"""Domain errors and the one place that maps them to gRPC status codes.

Handlers raise these; every RPC goes through :func:`api.app.bytes_handler`, which answers
an exception with :func:`status_of`: a domain error becomes its status code with the error's
message, and any other exception becomes INTERNAL (logged) without taking the server down.
"""

from __future__ import annotations

import logging

import grpc

log = logging.getLogger("banditd")


class DomainError(Exception):
    """Base class: a request that cannot be served. Nothing was changed."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


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
        return exc.code, message
    log.error("internal error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}"
