"""The first seconds of traffic after a start: tail latency and full garbage collections.

    python -m benchmarks.startup_load [--restarts 5] [--seconds 8] [--concurrency 32]
                                      [--out benchmarks/results/startup_load.json]

For each of ``--restarts`` fresh ``banditd serve`` processes (127.0.0.1, default settings,
metrics on): wait for SERVING, create a Thompson K = 10 experiment and at once drive SelectArm
with the closed-loop client of ``grpc_throughput.py`` (one client process, ``--concurrency``
calls in flight) for ``--seconds``. Reported per start: QPS, p50 / p90 / p99 / p99.9 (as
``grpc_throughput.py`` reports them) and max latency, server CPU per call, the calls slower
than 50 ms, and the server's full (generation 2) garbage collections during the window
(``python_gc_collections_total`` read from /metrics before and after). A full
collection walks every tracked object (≈ 136k after start-up) and stops the event loop while
it runs, so a start that leaves one due shows as a stall early in the traffic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.grpc_throughput import (
    ClientPool,
    Scenario,
    _experiment,
    _summary,
    measure,
)
from benchmarks.local_server import LocalServer, free_port, machine

STALL_US = 50_000.0


def full_collections(metrics_port: int) -> float:
    """The server's generation-2 collections so far, from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "python_gc_collections_total" and s.labels.get("generation") == "2":
                return s.value
    raise RuntimeError("python_gc_collections_total{generation='2'} not in /metrics")


def one_start(pool: ClientPool, seconds: float, concurrency: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix="banditd-startup-"))
    metrics_port = free_port()
    server = LocalServer(data / "data", metrics_port=metrics_port)
    try:
        with grpc.insecure_channel(server.target) as ch:
            pb_grpc.DecisionServiceStub(ch).CreateExperiment(
                _experiment("startup", 10, pb.Policy(thompson=pb.Policy.Thompson())))
        scenario = Scenario("startup", "SelectArm, Thompson K=10", "SelectArm",
                            [pb.SelectArmRequest(experiment_id="startup").SerializeToString()])
        before = full_collections(metrics_port)
        results, cpu = measure(pool, server.target, server.pid, scenario, concurrency, 1,
                               0.0, seconds)  # from the first call on: no warm-up
        after = full_collections(metrics_port)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    row = _summary(results, seconds, 1, cpu)
    del row["_cdf_us"]
    lat = np.concatenate([r["latencies"] for r in results]) * 1e6
    return {
        "serving_after_s": round(server.ready_seconds, 2),
        **row,
        "max_us": round(float(lat.max()), 1),
        "calls_over_50ms": int((lat > STALL_US).sum()),
        "full_collections_during_load": int(after - before),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/startup_load.json"))
    ap.add_argument("--restarts", type=int, default=5, help="fresh server processes")
    ap.add_argument("--seconds", type=float, default=8.0, help="load after each start")
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    args = ap.parse_args(argv)
    pool = ClientPool(1)
    starts = []
    try:
        for i in range(args.restarts):
            row = one_start(pool, args.seconds, args.concurrency)
            starts.append(row)
            print(f"start {i + 1}/{args.restarts}: {row}", flush=True)
    finally:
        pool.close()
    report = {"machine": machine(), "seconds": args.seconds, "concurrency": args.concurrency,
              "starts": starts,
              "starts_with_full_collection": sum(r["full_collections_during_load"] > 0
                                                 for r in starts),
              "max_us_median": float(np.median([r["max_us"] for r in starts]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}: {report['starts_with_full_collection']} of {args.restarts} "
          f"starts had a full collection under load; median max latency "
          f"{report['max_us_median'] / 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
