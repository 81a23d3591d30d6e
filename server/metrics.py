"""Prometheus metrics of one server (its own registry, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Handler time is tens of microseconds; buckets span 10 µs to 100 ms.
_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 1e-1)


class Metrics:
    """RPC counts by method and status code, handler latency, state sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "banditd_requests", "RPCs handled, by method and status code.",
            ["method", "code"], registry=self.registry,
        )
        self.latency = Histogram(
            "banditd_handler_seconds", "Time spent in the RPC handler, seconds.",
            ["method"], buckets=_BUCKETS, registry=self.registry,
        )
        self.experiments = Gauge(
            "banditd_experiments", "Experiments held.", registry=self.registry
        )
        self.decisions = Gauge(
            "banditd_decisions_stored", "Decisions kept for late rewards.", registry=self.registry
        )
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._http: Any = None

    def track(self, experiments: Callable[[], float], decisions: Callable[[], float]) -> None:
        self.experiments.set_function(experiments)
        self.decisions.set_function(decisions)

    def observe(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        child = self._children.get(key)
        if child is None:  # resolve label children once per (method, code)
            child = (self.requests.labels(method, code), self.latency.labels(method))
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
