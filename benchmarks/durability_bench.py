"""Durability benchmark: reward throughput per mode, SelectArm p99 during a big snapshot, restore.

1. Rewards/s acknowledged through ``BatchRecordRewards`` in each durability mode (os, fsync,
   snapshot), against a real ``banditd serve`` subprocess on 127.0.0.1, with ``--writers``
   concurrent asyncio writers (one channel each) sending batches of ``--batch`` rewards for a
   bounded ``--seconds``.
2. SelectArm latency (p50/p99, one closed-loop sync client) on a 10-arm experiment while the
   server also holds a 1,000,000-arm experiment and snapshots it again ``--interval`` s after
   each snapshot ends, at the write rate of ``--mb-per-s`` (default: the server's default):
   calls made while a snapshot writer ran against calls made while none did, interleaved in
   one run.
3. Restore time of a data directory holding a 1,000,000-arm experiment and 1,000,000 stored
   decisions (server start to health SERVING, minus the start time of an empty server).

    python -m benchmarks.durability_bench [--out benchmarks/results/durability.json] [--quick]
                                          [--only throughput|snapshot|restore]
                                          [--mb-per-s RATE] [--interval SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import LocalServer as Server
from benchmarks.local_server import machine


def _channel(port: int) -> grpc.Channel:
    """A channel that accepts the 1M-arm experiment in replies (~11 MB)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])


def _experiment(eid: str, k: int) -> pb.CreateExperimentRequest:
    return pb.CreateExperimentRequest(experiment=pb.Experiment(
        experiment_id=eid, arms=[pb.Arm(arm_id=f"a{i}") for i in range(k)],
        policy=pb.Policy(thompson=pb.Policy.Thompson()), reward_type=pb.REWARD_TYPE_BINARY,
        seed=1))


async def _writers(port: int, writers: int, batch: int, seconds: float) -> tuple[int, float]:
    request = pb.BatchRecordRewardsRequest(requests=[
        pb.RecordRewardRequest(experiment_id="bench", arm_id=f"a{i % 10}", reward=float(i % 2))
        for i in range(batch)])
    acked = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal acked
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            while time.perf_counter() < deadline:
                await stub.BatchRecordRewards(request, timeout=60)
                acked += batch

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return acked, time.perf_counter() - start


def reward_throughput(mode: str, writers: int, batch: int, seconds: float) -> dict:
    data = Path(tempfile.mkdtemp(prefix="banditd-bench-"))
    server = Server(data, durability=mode, snapshot_interval_seconds=0,
                    max_batch_size=max(batch, 1000))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.CreateExperiment(_experiment("bench", 10))
            acked, elapsed = asyncio.run(_writers(server.port, writers, batch, seconds))
            total = sum(a.rewards for a in stub.GetArmStats(
                pb.GetArmStatsRequest(experiment_id="bench")).arms)
        assert total == acked, f"server counted {total}, clients were acknowledged {acked}"
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return {"mode": mode, "writers": writers, "batch": batch, "seconds": round(elapsed, 2),
            "rewards_acknowledged": acked, "rewards_per_s": round(acked / elapsed)}


def _latencies(stub, n: int) -> list[float]:
    req = pb.SelectArmRequest(experiment_id="small")
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        stub.SelectArm(req)
        out.append((time.perf_counter_ns() - t) / 1000.0)
    return out


def _classified_latencies(stub, pid: int, n: int) -> tuple[list[float], list[float]]:
    """SelectArm latencies (µs) split by whether the server had a snapshot writer child
    (checked before and after each call, so a call the fork delayed counts as during)."""
    req = pb.SelectArmRequest(experiment_id="small")
    children = f"/proc/{pid}/task/{pid}/children"
    idle: list[float] = []
    during: list[float] = []
    for _ in range(n):
        with open(children) as f:
            before = f.read().strip()
        t = time.perf_counter_ns()
        stub.SelectArm(req)
        us = (time.perf_counter_ns() - t) / 1000.0
        with open(children) as f:
            after = f.read().strip()
        (during if before or after else idle).append(us)
    return idle, during


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))], 1)


def snapshot_latency(arms: int, calls: int, mb_per_s: float | None = None,
                     interval: float = 10.0) -> dict:
    """SelectArm latency on a 10-arm experiment while the server also holds a ``arms``-arm
    experiment and snapshots it ``interval`` s after each snapshot (``mb_per_s``: write-rate
    cap, None = the server's default). Calls made while a snapshot writer ran and calls made
    while none did are interleaved in one run, so both classes see the same machine noise."""
    data = Path(tempfile.mkdtemp(prefix="banditd-bench-"))
    settings: dict = dict(durability="os", max_arms=arms, decision_capacity=arms,
                          max_message_bytes=256 * 1024 * 1024)
    if mb_per_s is not None:
        settings["snapshot_write_mb_per_s"] = mb_per_s
    server = Server(data, snapshot_interval_seconds=0, **settings)
    try:
        with _channel(server.port) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.CreateExperiment(_experiment("big", arms), timeout=600)
            stub.CreateExperiment(_experiment("small", 10))
        server.stop()
        server = Server(data, snapshot_interval_seconds=interval, **settings)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            _latencies(stub, 2000)  # warm
            t = time.perf_counter()
            idle, during = _classified_latencies(stub, server.pid, calls)
            elapsed = time.perf_counter() - t
        size = max((p.stat().st_size for p in data.glob("snapshot-*.snap")), default=0)
        written = server.log_path.read_text().count("snapshot snapshot-")  # one log line each
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    p99_idle, p99_during = _pct(idle, 0.99), _pct(during, 0.99)
    return {
        "big_experiment_arms": arms, "calls": calls,
        "snapshot_interval_s": interval,
        "snapshot_write_mb_per_s": mb_per_s if mb_per_s is not None else "default",
        "calls_without_snapshot": len(idle), "calls_during_snapshot": len(during),
        "p50_us_without_snapshot": _pct(idle, 0.5), "p99_us_without_snapshot": _pct(idle, 0.99),
        "p50_us_during_snapshot": _pct(during, 0.5), "p99_us_during_snapshot": _pct(during, 0.99),
        "p99_ratio": round(p99_during / p99_idle, 2) if p99_during and p99_idle else None,
        "snapshot_bytes": size, "measurement_seconds": round(elapsed, 2),
        "snapshots_logged": written - 1,  # minus the first server's final one
    }


def restore_time(arms: int, decisions: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix="banditd-bench-"))
    empty = Path(tempfile.mkdtemp(prefix="banditd-bench-"))
    settings = dict(durability="os", snapshot_interval_seconds=0, max_arms=arms,
                    decision_capacity=decisions, max_batch_size=10_000,
                    max_message_bytes=256 * 1024 * 1024)
    server = Server(data, **settings)
    try:
        with _channel(server.port) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.CreateExperiment(_experiment("big", arms), timeout=600)
            stub.CreateExperiment(_experiment("small", 10))
            batch = pb.BatchSelectArmsRequest(requests=[pb.SelectArmRequest(experiment_id="small")]
                                              * 10_000)
            for i in range(decisions // 10_000):
                stub.BatchSelectArms(batch, timeout=600)
                if i % 20 == 0:
                    print(f"  {(i + 1) * 10_000:,} decisions stored", flush=True)
        server.stop()  # graceful: the final snapshot holds everything
        size = sum(p.stat().st_size for p in data.iterdir() if p.is_file())
        base = Server(empty, **settings)
        base.stop()
        server = Server(data, **settings)
        restored = server.ready_seconds
        server.stop(kill=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    return {"arms": arms, "decisions": decisions, "data_bytes": size,
            "start_to_serving_s": round(restored, 2),
            "empty_start_to_serving_s": round(base.ready_seconds, 2),
            "restore_s": round(restored - base.ready_seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/durability.json")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", choices=["throughput", "snapshot", "restore"],
                    help="run one part and print it (nothing written)")
    ap.add_argument("--mb-per-s", type=float,
                    help="snapshot write-rate cap (default: the server's default)")
    ap.add_argument("--interval", type=float,
                    help="snapshot interval (s): the pause between two snapshots (default 10, "
                    "1 with --quick)")
    args = ap.parse_args()
    big = 100_000 if args.quick else 1_000_000
    calls = 3000 if args.quick else 60_000
    if args.interval is None:
        args.interval = 1.0 if args.quick else 10.0
    if args.only:
        part = {"throughput": lambda: [reward_throughput(m, w, args.batch, args.seconds)
                                       for m, w in (("os", 4), ("fsync", 64), ("snapshot", 4))],
                "snapshot": lambda: snapshot_latency(big, calls, args.mb_per_s, args.interval),
                "restore": lambda: restore_time(big, big)}[args.only]
        print(json.dumps(part(), indent=2))
        return
    report: dict = {"machine": machine(), "throughput": []}
    for mode, writers in (("os", 4), ("fsync", 64), ("snapshot", 4)):
        row = reward_throughput(mode, writers, args.batch, args.seconds)
        report["throughput"].append(row)
        print(row, flush=True)
    report["select_during_snapshot"] = snapshot_latency(big, calls, args.mb_per_s, args.interval)
    print(report["select_during_snapshot"], flush=True)
    report["restore"] = restore_time(big, big)
    print(report["restore"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
