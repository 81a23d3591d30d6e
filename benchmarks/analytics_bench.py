"""Analyst RPC benchmark: GetAllocation, GetArmStats, IngestMetrics, AllocateBudget.

Two figures per call: the server-side handler (the RPC's behaviour awaited in-process,
validation + compiled Monte-Carlo + response building, no network) and the round trip
through a real server on 127.0.0.1 with the generated sync stub. Median of repeated calls.

    python -m benchmarks.analytics_bench [--out benchmarks/results/analytics.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.in_process import InProcessServer
from benchmarks.local_server import machine


def _median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) / 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/analytics.json")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory(prefix="banditd-analytics-") as data, \
            InProcessServer.on_loopback(Path(data), max_arms=1000) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        behaviors = srv.app.service.behaviors()

        def server_side(method: str, request):
            async def call():
                return await behaviors[method](request, None)

            return lambda: asyncio.run_coroutine_threadsafe(call(), srv.loop).result()

        def measure(name: str, method: str, request, **info):
            handler = _median_us(server_side(method, request), args.repeats)
            # subtract the cost of hopping onto the server's loop thread with a no-op
            hop = _median_us(lambda: asyncio.run_coroutine_threadsafe(asyncio.sleep(0), srv.loop)
                             .result(), args.repeats)
            rpc = _median_us(lambda: getattr(stub, method)(request), args.repeats)
            row = {"name": name, "server_side_ms": round(max(handler - hop, 0.0) / 1000, 3),
                   "round_trip_ms": round(rpc / 1000, 3), **info}
            results.append(row)
            print(row, flush=True)

        for k in (10, 100):
            eid = f"alloc-{k}"
            stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
                experiment_id=eid, arms=[pb.Arm(arm_id=f"a{i}") for i in range(k)],
                policy=pb.Policy(thompson=pb.Policy.Thompson()),
                reward_type=pb.REWARD_TYPE_BINARY, seed=1)))
            trials = rng.integers(1_000, 100_000, k)
            metrics = [pb.ArmMetrics(arm_id=f"a{i}", trials=float(t),
                                     successes=float(rng.binomial(t, 0.02 + 0.001 * (i % 10))))
                       for i, t in enumerate(trials)]
            ingest = pb.IngestMetricsRequest(experiment_id=eid, period="2025-12-22",
                                             metrics=metrics)
            stub.IngestMetrics(ingest)
            measure(f"GetAllocation K={k} draws=10000", "GetAllocation",
                    pb.GetAllocationRequest(experiment_id=eid, num_draws=10_000),
                    arms=k, draws=10_000)
            measure(f"GetArmStats K={k}", "GetArmStats", pb.GetArmStatsRequest(experiment_id=eid),
                    arms=k)
            measure(f"IngestMetrics K={k} (re-send)", "IngestMetrics", ingest, arms=k)
        groups = [pb.AdGroup(id=f"g{i}", spend=float(rng.uniform(10, 1000)),
                             impressions=10_000.0, clicks=float(rng.integers(50, 500)),
                             conversions=float(rng.integers(0, 50)),
                             revenue=float(rng.uniform(0, 5000))) for i in range(100)]
        for name, strategy in (("PERFORMANCE_BASED", pb.ALLOCATION_STRATEGY_PERFORMANCE_BASED),
                               ("THOMPSON", pb.ALLOCATION_STRATEGY_THOMPSON)):
            measure(f"AllocateBudget {name} 100 groups", "AllocateBudget",
                    pb.AllocateBudgetRequest(total_budget=50_000, ad_groups=groups,
                                             strategy=strategy, min_allocation=10,
                                             max_allocation=2000, seed=1), groups=100)
    report = {
        "machine": machine(),
        "repeats": args.repeats,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
