"""First request after SERVING vs steady state: shows that no request pays JIT time.

Starts ``banditd serve`` as a fresh subprocess (new Python process, so nothing is
compiled in memory; the Numba on-disk cache may or may not exist), waits for health
SERVING, then for each policy creates an experiment and times its very first
SelectArm and RecordReward against the median of the following calls, all through
the generated stub over loopback. Repeated over ``--restarts`` fresh processes: a
single first call is one noisy sample, so the median and the max over restarts are
reported. For scale: a request that had to JIT-compile a kernel would take
hundreds of milliseconds (compiling all kernels from scratch takes 15-25 s).

    python -m benchmarks.first_request [--restarts 5] [--out benchmarks/results/first_request.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import free_port, wait_serving

POLICIES = {
    "thompson": (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_BINARY, 0),
    "thompson_value": (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_VALUE, 0),
    "ucb1": (pb.Policy(ucb1=pb.Policy.Ucb1()), pb.REWARD_TYPE_BINARY, 0),
    "epsilon_greedy": (
        pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy()), pb.REWARD_TYPE_BINARY, 0
    ),
    "lin_ucb": (pb.Policy(lin_ucb=pb.Policy.LinUcb()), pb.REWARD_TYPE_CONTINUOUS, 8),
    "lin_thompson": (pb.Policy(lin_thompson=pb.Policy.LinThompson()), pb.REWARD_TYPE_CONTINUOUS, 8),
}


def _us(fn, request) -> float:
    """Wall time of one blocking call, microseconds."""
    t = time.perf_counter_ns()
    fn(request)
    return (time.perf_counter_ns() - t) / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/first_request.json")
    ap.add_argument("--calls", type=int, default=1000, help="steady-state calls per policy")
    ap.add_argument("--restarts", type=int, default=5, help="fresh server processes")
    args = ap.parse_args()
    runs = []
    for i in range(args.restarts):
        print(f"restart {i + 1}/{args.restarts}", flush=True)
        runs.append(_one_run(args.calls))
    report: dict = {"restarts": args.restarts, "serving_after_s": [r[0] for r in runs],
                    "policies": {}}
    for name in POLICIES:
        firsts_sel = [r[1][name]["first_select_us"] for r in runs]
        firsts_rew = [r[1][name]["first_reward_us"] for r in runs]
        steady = runs[-1][1][name]
        report["policies"][name] = {
            "first_select_us_median": round(statistics.median(firsts_sel), 1),
            "first_select_us_max": round(max(firsts_sel), 1),
            "first_reward_us_median": round(statistics.median(firsts_rew), 1),
            "first_reward_us_max": round(max(firsts_rew), 1),
            **{k: v for k, v in steady.items() if k.startswith("steady")},
        }
        print(name, report["policies"][name], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def _one_run(calls: int) -> tuple[float, dict]:
    port = free_port()
    data = tempfile.mkdtemp(prefix="banditd-bench-")
    env = dict(os.environ, BANDITD_HOST="127.0.0.1", BANDITD_PORT=str(port), BANDITD_DATA_DIR=data)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "banditd", "serve"], env=env,
                            stderr=subprocess.DEVNULL)
    results = {}
    try:
        wait_serving(f"127.0.0.1:{port}", proc, time.monotonic() + 600)
        ready_s = time.perf_counter() - t0
        print(f"SERVING after {ready_s:.2f} s", flush=True)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            for name, (policy, rtype, dim) in POLICIES.items():
                stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
                    experiment_id=name, arms=[pb.Arm(arm_id=f"a{i}") for i in range(10)],
                    policy=policy, reward_type=rtype, context_dim=dim, seed=1)))
                sel = pb.SelectArmRequest(experiment_id=name, context=[0.5] * dim)
                rew = pb.RecordRewardRequest(
                    experiment_id=name, arm_id="a0", context=[0.5] * dim, reward=1
                )
                first_select = _us(stub.SelectArm, sel)
                first_reward = _us(stub.RecordReward, rew)
                selects = [_us(stub.SelectArm, sel) for _ in range(calls)]
                rewards = [_us(stub.RecordReward, rew) for _ in range(calls)]
                results[name] = {
                    "first_select_us": round(first_select, 1),
                    "steady_select_p50_us": round(statistics.median(selects), 1),
                    "steady_select_p99_us": round(sorted(selects)[int(0.99 * len(selects))], 1),
                    "first_reward_us": round(first_reward, 1),
                    "steady_reward_p50_us": round(statistics.median(rewards), 1),
                    "steady_reward_p99_us": round(sorted(rewards)[int(0.99 * len(rewards))], 1),
                }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return round(ready_s, 2), results


if __name__ == "__main__":
    main()
