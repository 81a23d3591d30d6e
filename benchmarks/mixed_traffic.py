"""Server CPU per call and client latency under production-like mixed traffic, for one
banditd or two alternated (before / after a change).

    python -m benchmarks.mixed_traffic [--compare /path/to/other/checkout] [--rounds 3]
                                       [--duration 20] [--concurrency 16]
                                       [--out benchmarks/results/mixed_traffic.json]

Each server is ``<checkout>/.venv/bin/banditd serve`` on 127.0.0.1 with a temporary data
directory and default settings (durability ``os``). The traffic, the same for every server
(seeded): SelectArm on a 50-arm Thompson experiment with a different eligible subset each
call (5 to 50 arms) and on a 20-arm LinUCB experiment (d = 8) with a fresh context each
call; about a third of decisions are rewarded later by ``decision_id`` (rewards interleaved
with decisions, a few hundred calls after them); PaceBid on a paced campaign, two thirds of
whose bids are settled by RecordSpend. ``--concurrency`` loops run on one grpc.aio channel
in one client process.

For each server and round: a fresh server, the set-up, ``--warmup`` seconds unmeasured, then
``--duration`` seconds measured: the server process's CPU seconds (``/proc``) per call, calls
per second, and p50 / p99 latency per RPC. Rounds alternate the order (ABBA...), so drift on a
shared machine falls on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import grpc
import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import (
    ROOT,
    free_port,
    machine,
    process_cpu_seconds,
    stop_process,
    wait_serving,
)

THOMPSON_ARMS = [f"t{i}" for i in range(50)]
LIN_ARMS = [f"l{i}" for i in range(20)]
DIM = 8
KINDS = ("SelectArm", "RecordReward", "PaceBid", "RecordSpend")


class Server:
    """``banditd serve`` of the checkout ``root`` (its own .venv) on a free loopback port."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        args = [str(root / ".venv" / "bin" / "banditd"), "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(data_dir)]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=root)
        try:
            wait_serving(self.target, self.proc, time.monotonic() + 900, self.log_path)
        except BaseException:
            stop_process(self.proc, kill=True)
            raise

    def stop(self) -> None:
        stop_process(self.proc)


def set_up(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
            experiment_id="ts", arms=[pb.Arm(arm_id=a) for a in THOMPSON_ARMS], seed=1,
            policy=pb.Policy(thompson=pb.Policy.Thompson()),
            reward_type=pb.REWARD_TYPE_BINARY)), timeout=900)
        stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
            experiment_id="lin", arms=[pb.Arm(arm_id=a) for a in LIN_ARMS], seed=1,
            policy=pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=1.0)), context_dim=DIM,
            reward_type=pb.REWARD_TYPE_CONTINUOUS)), timeout=900)
        stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
            campaign_id="c", daily_budget=1e12, max_bid=10.0, bid_cap_fraction=1.0)),
            timeout=60)


async def _loop(stub, rnd: random.Random, stop: asyncio.Event, measuring: list[bool],
                lat: dict[str, list[float]], errors: list[str]) -> None:
    decisions: deque = deque()
    bids: deque = deque()
    while not stop.is_set():
        u = rnd.random()
        chosen = ""  # the experiment of a SelectArm
        if u < 0.45:
            kind = "SelectArm"
            eligible = rnd.sample(THOMPSON_ARMS, rnd.randint(5, 50))
            chosen = "ts"
            call = stub.SelectArm(pb.SelectArmRequest(experiment_id="ts",
                                                      eligible_arm_ids=eligible))
        elif u < 0.60:
            kind = "SelectArm"
            chosen = "lin"
            context = [rnd.gauss(0.0, 1.0) for _ in range(DIM)]
            call = stub.SelectArm(pb.SelectArmRequest(experiment_id="lin", context=context))
        elif u < 0.80 and len(decisions) > 20:
            kind = "RecordReward"
            experiment_id, decision_id = decisions.popleft()
            reward = float(rnd.random() < 0.3) if experiment_id == "ts" else rnd.gauss(1, 1)
            call = stub.RecordReward(pb.RecordRewardRequest(
                experiment_id=experiment_id, decision_id=decision_id, reward=reward))
        elif u < 0.90 or len(bids) < 10:
            kind = "PaceBid"
            call = stub.PaceBid(pb.PaceBidRequest(campaign_id="c",
                                                  base_bid=rnd.uniform(0.5, 3.0)))
        else:
            kind = "RecordSpend"
            bid_id, bid = bids.popleft()
            won = rnd.random() < 0.5
            call = stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id="c", bid_id=bid_id, won=won, cost=bid * 0.6 if won else 0.0))
        started = time.perf_counter()
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{kind}: {exc.code().name} {exc.details()}")
            continue
        if measuring[0]:
            lat[kind].append(time.perf_counter() - started)
        if kind == "SelectArm" and rnd.random() < 0.35:
            decisions.append((chosen, reply.decision_id))
        elif kind == "PaceBid" and reply.bid > 0 and rnd.random() < 0.67:
            bids.append((reply.bid_id, reply.bid))


async def drive(target: str, pid: int, concurrency: int, warmup: float, duration: float,
                seed: int) -> dict:
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    stop, measuring = asyncio.Event(), [False]
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        loops = [asyncio.create_task(_loop(stub, random.Random(seed * 1000 + i), stop,
                                           measuring, lat, errors))
                 for i in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring[0] = True
        cpu0, t0 = process_cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(duration)
        measuring[0] = False
        cpu1, t1 = process_cpu_seconds(pid), time.perf_counter()
        stop.set()
        await asyncio.gather(*loops)
    calls = sum(len(v) for v in lat.values())
    out = {"calls": calls, "seconds": round(t1 - t0, 3), "calls_per_s": round(calls / (t1 - t0), 1),
           "server_cpu_s": round(cpu1 - cpu0, 3),
           "server_cpu_us_per_call": round((cpu1 - cpu0) / calls * 1e6, 2) if calls else None,
           "errors": len(errors), "first_errors": errors[:5], "by_rpc": {}}
    for kind, values in lat.items():
        if values:
            us = np.asarray(values) * 1e6
            out["by_rpc"][kind] = {"calls": len(values),
                                   "p50_us": round(float(np.percentile(us, 50)), 1),
                                   "p99_us": round(float(np.percentile(us, 99)), 1)}
    return out


def one_run(root: Path, args, seed: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix="banditd-mixed-"))
    try:
        server = Server(root, data / "data")
        try:
            set_up(server.target)
            return asyncio.run(drive(server.target, server.proc.pid, args.concurrency,
                                     args.warmup, args.duration, seed))
        finally:
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _interval(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"median": round(float(np.median(a)), 2), "min": round(float(a.min()), 2),
            "max": round(float(a.max()), 2), "runs": [round(float(v), 2) for v in a]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", type=Path, default=None,
                    help="another checkout (with its .venv) to alternate with this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per run")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/mixed_traffic.json"))
    args = ap.parse_args(argv)
    trees = {"this": ROOT}
    if args.compare is not None:
        trees["compare"] = args.compare.resolve()
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    names = list(trees)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            result = one_run(trees[name], args, seed=r)
            runs[name].append(result)
            print(f"round {r + 1}/{args.rounds} {name}: {result['calls_per_s']:,.0f} calls/s, "
                  f"server {result['server_cpu_us_per_call']} CPU µs/call, "
                  f"{result['errors']} errors", flush=True)
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "checkout": str(trees[name]),
            "server_cpu_us_per_call": _interval([x["server_cpu_us_per_call"] for x in results]),
            "calls_per_s": _interval([x["calls_per_s"] for x in results]),
            "p99_us": {k: _interval([x["by_rpc"][k]["p99_us"] for x in results])
                       for k in KINDS},
            "p50_us": {k: _interval([x["by_rpc"][k]["p50_us"] for x in results])
                       for k in KINDS},
            "errors": sum(x["errors"] for x in results),
        }
    report = {"benchmark": "mixed_traffic", "machine": machine(), "settings": vars(args) | {
        "compare": str(args.compare) if args.compare else None, "out": str(args.out)},
        "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 1 if any(s["errors"] for s in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
