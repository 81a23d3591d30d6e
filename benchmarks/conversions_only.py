"""Conversions only: an ad server that reports conversions and nothing for the impressions that
got none, as ad servers do. Two experiments get the same traffic: one with a reward window
(``reward_wait_seconds``, default reward 0), one without.

Each decision converts with its arm's true rate; a conversion is reported (RecordReward, reward
1) after a delay drawn uniformly in [0, ``--delay``] seconds, and a share ``--late`` of them
only after the window has passed, as late rewards that correct the default. Decisions without
a conversion are never reported. Without a window the experiment learns from conversions only,
so every arm's conversion rate is 1.0; with the window every decision is learned once (a
conversion, or the default 0), so the rates are conversions / decisions.

Thompson sampling with an exploration floor of 0.3 (every arm at least 30% of the traffic), so
every arm's rate is measured on enough decisions.

    python -m benchmarks.conversions_only [--decisions 50000] [--window 1] [--out FILE]
    python -m benchmarks.conversions_only --target 127.0.0.1:50051   # a running server
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

RATES = {"banner-a": 0.05, "banner-b": 0.08, "banner-c": 0.12}


def run(stub: pb_grpc.DecisionServiceStub, decisions: int, window: float, delay: float,
        late: float, batch: int, seed: int, rate: float) -> dict[str, Any]:
    """Send the traffic (``rate`` decisions per second per experiment, in batches) and the
    conversions, wait until every window has passed and been settled, and return the numbers."""
    names = {"window": f"conversions-window-{seed}", "no_window": f"conversions-only-{seed}"}
    for kind, eid in names.items():
        with contextlib.suppress(grpc.RpcError):
            stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id=eid))
        experiment = pb.Experiment(
            experiment_id=eid, arms=[pb.Arm(arm_id=a) for a in RATES],
            policy=pb.Policy(thompson=pb.Policy.Thompson()), reward_type=pb.REWARD_TYPE_BINARY,
            seed=seed, exploration_floor=0.3)
        if kind == "window":
            experiment.reward_wait_seconds = window
        stub.CreateExperiment(pb.CreateExperimentRequest(experiment=experiment))
    gen = np.random.default_rng(seed)
    due: list[tuple[float, int, str, str]] = []  # (send at, tie, experiment, decision id)
    made = {kind: dict.fromkeys(RATES, 0) for kind in names}
    converted = {kind: dict.fromkeys(RATES, 0) for kind in names}
    sent_late = 0
    replies = {"late": 0, "duplicate": 0}
    tie = 0
    started = time.monotonic()

    def send(until: float) -> None:
        nonlocal sent_late
        items = []
        while due and due[0][0] <= until:
            _, _, eid, decision_id = heapq.heappop(due)
            items.append(pb.RecordRewardRequest(experiment_id=eid, decision_id=decision_id,
                                                reward=1.0))
        for first in range(0, len(items), batch):
            reply = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(
                requests=items[first:first + batch]))
            replies["late"] += sum(r.late for r in reply.responses)
            replies["duplicate"] += sum(r.duplicate for r in reply.responses)

    for first in range(0, decisions, batch):
        n = min(batch, decisions - first)
        for kind, eid in names.items():
            reply = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
                pb.SelectArmRequest(experiment_id=eid)] * n))
            now = time.monotonic()
            for d in reply.responses:
                made[kind][d.arm_id] += 1
                if gen.random() < RATES[d.arm_id]:
                    converted[kind][d.arm_id] += 1
                    wait = gen.uniform(0.0, delay)
                    if kind == "window" and gen.random() < late:
                        wait = window + 0.5 + gen.uniform(0.0, delay)  # after the window
                        sent_late += 1
                    tie += 1
                    heapq.heappush(due, (now + wait, tie, eid, d.decision_id))
        send(time.monotonic())
        pause = started + (first + n) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    while due:  # the remaining conversions, on time
        time.sleep(max(0.0, min(0.05, due[0][0] - time.monotonic())))
        send(time.monotonic())
    # every window has passed; wait until every decision is learned (bounded)
    deadline = time.monotonic() + window + 60
    while True:
        stats = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=names["window"]))
        if sum(a.trials for a in stats.arms) >= decisions or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    out: dict[str, Any] = {"decisions_per_experiment": decisions, "window_seconds": window,
                           "max_delay_seconds": delay, "late_share": late, "seed": seed,
                           "seconds": time.monotonic() - started, "late_conversions": sent_late,
                           "replies_late": replies["late"],
                           "replies_duplicate": replies["duplicate"], "arms": []}
    stats_of = {kind: {a.arm_id: a for a in stub.GetArmStats(pb.GetArmStatsRequest(
        experiment_id=eid)).arms} for kind, eid in names.items()}
    for arm, truth in RATES.items():
        w, o = stats_of["window"][arm], stats_of["no_window"][arm]
        out["arms"].append({
            "arm": arm, "true_rate": truth,
            "decisions": made["window"][arm], "conversions": converted["window"][arm],
            "trials": w.trials, "successes": w.successes,
            "conversion_rate": w.conversion_rate,
            "relative_error": (w.conversion_rate - truth) / truth,
            "no_window_decisions": made["no_window"][arm],
            "no_window_conversions": converted["no_window"][arm],
            "no_window_trials": o.trials, "no_window_conversion_rate": o.conversion_rate})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="host:port of a running server (default: start one)")
    ap.add_argument("--decisions", type=int, default=50_000)
    ap.add_argument("--window", type=float, default=1.0, help="reward_wait_seconds")
    ap.add_argument("--delay", type=float, default=0.8, help="longest on-time delay, s")
    ap.add_argument("--late", type=float, default=0.1, help="share of conversions sent late")
    ap.add_argument("--rate", type=float, default=5000.0, help="decisions per second")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the numbers as JSON here")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        target = args.target
        if target is None:
            from benchmarks.in_process import InProcessServer

            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="banditd-conv-"))
            srv = stack.enter_context(InProcessServer.on_loopback(Path(data)))
            target = f"127.0.0.1:{srv.port}"
        channel = stack.enter_context(grpc.insecure_channel(target))
        result = run(pb_grpc.DecisionServiceStub(channel), args.decisions, args.window,
                     args.delay, args.late, args.batch, args.seed, args.rate)
    print("arm        true   decisions  conversions  rate (window)  error   rate (no window)")
    for a in result["arms"]:
        print(f"{a['arm']:9} {a['true_rate']:.3f} {a['decisions']:10d} {a['conversions']:11d}"
              f"  {a['conversion_rate']:13.4f}  {a['relative_error']:+6.1%}  "
              f"{a['no_window_conversion_rate']:.4f}")
    print(f"{result['late_conversions']} conversions sent after the window "
          f"({result['replies_late']} answered late = true)")
    if args.out:
        from benchmarks.local_server import machine

        result = {"benchmark": "conversions_only", "machine": machine(), **result}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
