"""The server's own metrics beyond RPC counts, made at scrape time from plain attributes of the
state and storage (nothing on the hot path):

========================================= =================================================
``banditd_build_info``                    version, Python, grpcio, numba, numpy (value 1)
``banditd_log_write_seconds``             histogram: one ``write`` of a group of log records
``banditd_log_fsync_seconds``             histogram: one ``fsync`` of the log
``banditd_log_bytes_written_total``       bytes written to the log
``banditd_snapshot_seconds``              histogram: a snapshot, fork to file in place
``banditd_snapshot_last_success_timestamp_seconds``  when the newest one was in place
``banditd_snapshot_failures_total``       snapshots that failed
``banditd_decisions_evicted_total``       ``reason="capacity"``: the oldest dropped from a
                                          full store; ``reason="expired"``: past the TTL
``banditd_campaign_spent``                today's charged spend, currency units
``banditd_campaign_budget``               daily budget, currency units
``banditd_campaign_pacing_multiplier``    the pacing multiplier
``banditd_campaign_paused``               1 when paused
``banditd_campaign_pace_requests_total``  PaceBid calls answered by this process
``banditd_campaign_bids_total``           of those, bids above 0 (participation = the
                                          rate of this / the rate of pace requests)
========================================= =================================================

Campaign metrics have a ``campaign_id`` label. Counters count since the process started
(restore included for evictions). A worker of several adds ``banditd_replication_*``
(:mod:`cluster.workers`).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from banditd.server.ads.pacing import MICROS
from banditd.server.api.core import Core
from banditd.server.timings import Timings


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_info() -> dict[str, str]:
    """The labels of ``banditd_build_info``."""
    return {"version": _version("banditd"), "python": platform.python_version(),
            "grpcio": _version("grpcio"), "numba": _version("numba"),
            "numpy": _version("numpy")}


def _histogram(name: str, documentation: str, timings: Timings | None) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    if timings is not None:
        family.add_metric([], timings.cumulative(), timings.sum)
    return family


def register(core: Core) -> None:
    """Export ``core``'s telemetry with its metrics."""
    info = build_info()

    def families() -> Iterator[Metric]:
        build = GaugeMetricFamily("banditd_build_info", "banditd build: version and the "
                                  "versions it runs on.", labels=list(info))
        build.add_metric(list(info.values()), 1.0)
        yield build
        yield from _storage(core)
        yield from _decisions(core)
        yield from _campaigns(core)

    core.metrics.add_families(families)


def _storage(core: Core) -> Iterator[Metric]:
    storage = core.storage
    wal = getattr(storage, "wal", None)
    yield _histogram("banditd_log_write_seconds", "Time of one write of a group of log "
                     "records, seconds.", wal.write_seconds if wal is not None else None)
    yield _histogram("banditd_log_fsync_seconds", "Time of one fsync of the log, seconds.",
                     wal.fsync_seconds if wal is not None else None)
    written = CounterMetricFamily("banditd_log_bytes_written", "Bytes written to the log.")
    written.add_metric([], float(wal.bytes_written if wal is not None else 0))
    yield written
    yield _histogram("banditd_snapshot_seconds", "Time of a snapshot, from the fork to the "
                     "file in place, seconds.", storage.snapshot_seconds)
    last = GaugeMetricFamily("banditd_snapshot_last_success_timestamp_seconds",
                             "When the newest snapshot of this process was in place (0: none "
                             "yet), seconds since the epoch.")
    last.add_metric([], storage.last_snapshot_time)
    yield last
    failures = CounterMetricFamily("banditd_snapshot_failures", "Snapshots that failed.")
    failures.add_metric([], float(storage.snapshot_failures))
    yield failures


def _decisions(core: Core) -> Iterator[Metric]:
    store = core.state.store
    evicted = CounterMetricFamily("banditd_decisions_evicted", "Decisions dropped before any "
                                  "reward could find them: the oldest of a full store "
                                  "(capacity), or past the TTL (expired).", labels=["reason"])
    evicted.add_metric(["capacity"], float(store.evicted))
    evicted.add_metric(["expired"], float(store.expired))
    yield evicted


def _campaigns(core: Core) -> Iterator[Metric]:
    spent = GaugeMetricFamily("banditd_campaign_spent", "Charged spend of the campaign's "
                              "current day, currency units.", labels=["campaign_id"])
    budget = GaugeMetricFamily("banditd_campaign_budget", "Daily budget, currency units.",
                               labels=["campaign_id"])
    multiplier = GaugeMetricFamily("banditd_campaign_pacing_multiplier", "Pacing multiplier "
                                   "applied to base bids.", labels=["campaign_id"])
    paused = GaugeMetricFamily("banditd_campaign_paused", "1 when the campaign is paused.",
                               labels=["campaign_id"])
    for campaign in core.state.campaigns.campaigns():
        cid = [campaign.campaign_id]
        ledger = campaign.ledgers.get(campaign.day_key)
        spent.add_metric(cid, (ledger[0] if ledger else 0) / MICROS)
        budget.add_metric(cid, campaign.budget / MICROS)
        multiplier.add_metric(cid, campaign.multiplier)
        paused.add_metric(cid, 1.0 if campaign.config.paused else 0.0)
    yield from (spent, budget, multiplier, paused)
    requests = CounterMetricFamily("banditd_campaign_pace_requests", "PaceBid calls answered "
                                   "by this process.", labels=["campaign_id"])
    bids = CounterMetricFamily("banditd_campaign_bids", "PaceBid calls answered with a bid "
                               "above 0 (participation = its rate / the rate of pace "
                               "requests).", labels=["campaign_id"])
    for campaign_id, (calls, placed) in list(core.metrics.pacing.items()):
        requests.add_metric([campaign_id], float(calls))
        bids.add_metric([campaign_id], float(placed))
    yield from (requests, bids)
