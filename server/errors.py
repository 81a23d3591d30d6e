"""Domain errors and the one place that maps them to gRPC status codes.

Handlers raise these; :func:`grpc_errors` wraps every RPC method of a servicer so
that a domain error becomes its status code with the error's message, and any
other exception becomes INTERNAL (logged) without taking the server down.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

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


T = TypeVar("T")


def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except DomainError as exc:
            code = exc.code.name
            await context.abort(exc.code, str(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("internal error in %s", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}")
        finally:
            self.metrics.observe(name, code, time.perf_counter() - start)

    return handler


def grpc_errors(cls: type[T]) -> type[T]:
    """Class decorator: map domain errors to status codes in every public async method."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _wrap(member))
    return cls
