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


def status_of(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status an RPC of ``method`` that raised ``exc`` answers with: a domain error's code
    and message; anything else INTERNAL, logged with its traceback (the server goes on)."""
    if isinstance(exc, DomainError):
        return exc.code, str(exc)
    log.error("internal error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {method}"
