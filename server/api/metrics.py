"""Prometheus metrics of one server (its own registry, so tests can run several).

RPCs are counted under the gRPC ecosystem's names (go-grpc-prometheus, also used by
py-grpc-prometheus): ``grpc_server_handled_total{grpc_type, grpc_service, grpc_method,
grpc_code}`` and the histogram ``grpc_server_handling_seconds{grpc_type, grpc_service,
grpc_method}``, with buckets from 10 µs to 10 s. The time is the handler's: from the call
reaching banditd's handler to its answer (including any wait for the log), not the time gRPC
held the call before.

Per-RPC counts and handler latencies are kept in plain Python counters on the event loop and
turned into Prometheus metric families only when /metrics is scraped: ``Counter.inc`` and
``Histogram.observe`` take a lock each and cost ~2 µs per request, which the hot path cannot
afford. A successful call only appends its handler time to a list (:meth:`Metrics.ok_times`),
counted into the histogram in bulk with NumPy: binning every call as it came (a tuple key,
two dict lookups, a bisection, two list updates) costs over ten times the append.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from banditd.server.timings import SECONDS_BUCKETS

# Handler time is tens of microseconds for a decision, seconds for a large batch waiting for
# an fsync: buckets span 10 µs to 10 s.
_BUCKETS = SECONDS_BUCKETS
_BUCKET_ARRAY = np.array(_BUCKETS)
SERVICE = "decision.v1.DecisionService"
_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
# Successful calls' times held before they are binned (per method; also binned when scraped).
OK_TIMES_HELD = 1024


def _binned(times: list[float]) -> list[float]:
    """``times`` as a latency row: per-bucket counts (bisect_left's buckets, +Inf last), then
    their sum."""
    values = np.asarray(times, dtype=np.float64)
    counts = np.bincount(np.searchsorted(_BUCKET_ARRAY, values, side="left"),
                         minlength=len(_BUCKETS) + 1)
    return [*counts.tolist(), float(values.sum())]


def _merge(counts: dict[tuple[str, str], int], latency: dict[str, list[float]], method: str,
           code: str, times: list[float]) -> None:
    """Add ``times`` (calls of ``method`` that ended with ``code``) to ``counts`` and to
    ``method``'s latency row."""
    if not times:
        return
    key = (method, code)
    counts[key] = counts.get(key, 0) + len(times)
    row = latency.get(method)
    if row is None:
        row = latency[method] = [0.0] * (len(_BUCKETS) + 2)
    for i, value in enumerate(_binned(times)):
        row[i] += value


class _RequestStats(Collector):
    """``grpc_server_handled_total`` and ``grpc_server_handling_seconds`` of DecisionService's
    (unary) RPCs."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # per-bucket counts (+Inf last), then sum
        self.ok_times: dict[str, list[float]] = {}  # successful calls' times, not binned yet
        # Binning (event loop) against scraping (the HTTP server's thread): a scrape sees
        # every held time either binned or still held, never both.
        self.lock = threading.Lock()

    def bin_ok_times(self, method: str) -> None:
        """Count the held times of ``method``'s successful calls (event loop)."""
        times = self.ok_times[method]
        with self.lock:
            _merge(self.counts, self.latency, method, "OK", times)
            times.clear()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            counts = dict(self.counts)
            latency = {method: list(row) for method, row in self.latency.items()}
            held = {method: list(times) for method, times in self.ok_times.items()}
        for method, times in held.items():
            _merge(counts, latency, method, "OK", times)
        requests = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, "
                                       "by method and status code.",
                                       labels=[*_LABELS, "grpc_code"])
        for (method, code), n in counts.items():
            requests.add_metric(["unary", SERVICE, method, code], n)
        yield requests
        latency_family = HistogramMetricFamily(
            "grpc_server_handling_seconds", "Time from the call reaching the handler to its "
            "answer, seconds.", labels=_LABELS)
        for method, row in latency.items():
            cumulative: float = 0.0
            buckets = []
            for bound, in_bucket in zip((*map(str, _BUCKETS), "+Inf"), row[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            latency_family.add_metric(["unary", SERVICE, method], buckets, row[-1])
        yield latency_family


class _Callback(Collector):
    """Metric families made by a function at scrape time."""

    def __init__(self, families: Callable[[], Iterator[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families()


class Metrics:
    """RPC counts by method and status code, handler latency, state sizes, process and
    garbage-collector figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._stats = _RequestStats()
        self.registry.register(self._stats)
        # The client library's standard process_* (CPU, memory, open fds), python_gc_* and
        # python_info families, as on its default registry.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.experiments = Gauge(
            "banditd_experiments", "Experiments held.", registry=self.registry
        )
        self.decisions = Gauge(
            "banditd_decisions_stored", "Decisions kept for late rewards.", registry=self.registry
        )
        self._http: Any = None
        # campaign_id -> [PaceBid calls, non-zero bids] answered by this process
        self.pacing: dict[str, list[int]] = {}

    def paced(self, campaign_id: str, bid: bool) -> None:
        """Count one PaceBid of ``campaign_id`` (``bid``: it bid more than 0)."""
        row = self.pacing.get(campaign_id)
        if row is None:
            row = self.pacing[campaign_id] = [0, 0]
        row[0] += 1
        if bid:
            row[1] += 1

    def track(self, experiments: Callable[[], float], decisions: Callable[[], float]) -> None:
        self.experiments.set_function(experiments)
        self.decisions.set_function(decisions)

    def track_log(self, writable: Callable[[], bool], failures: Callable[[], int]) -> None:
        """The log's health: whether it takes records (0 while a failed write is being
        recovered from, see storage.durability) and its write failures since start."""
        Gauge("banditd_log_writable", "1 while the write-ahead log takes records, 0 after a "
              "failed write until it can write again.",
              registry=self.registry).set_function(lambda: float(writable()))
        Gauge("banditd_log_write_failures", "Failed log writes (or fsyncs) since start.",
              registry=self.registry).set_function(lambda: float(failures()))
    def add_families(self, families: Callable[[], Iterator[Metric]]) -> None:
        """Also export what ``families()`` yields at each scrape (it runs on the HTTP
        server's thread: it reads plain attributes, never waits for the event loop)."""
        self.registry.register(_Callback(families))

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Count one RPC of ``method`` ending with status ``code`` after ``seconds``."""
        stats = self._stats
        with stats.lock:
            key = (method, code)
            counts = stats.counts
            counts[key] = counts.get(key, 0) + 1
            row = stats.latency.get(method)
            if row is None:
                row = stats.latency[method] = [0.0] * (len(_BUCKETS) + 2)
            row[bisect_left(_BUCKETS, seconds)] += 1
            row[-1] += seconds

    def ok_times(self, method: str) -> tuple[list[float], Callable[[], None]]:
        """For the handler of ``method``: the list its successful calls append their times
        to, and what to call when it holds :data:`OK_TIMES_HELD` or more (on the loop)."""
        stats = self._stats
        times = stats.ok_times.setdefault(method, [])
        return times, lambda: stats.bin_ok_times(method)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
