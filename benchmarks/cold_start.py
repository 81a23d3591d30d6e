"""Cold start: CPU seconds and wall seconds from ``banditd serve`` to health SERVING on an empty
Numba cache (nothing compiled yet, as on a fresh machine or a new image without its cache).

    python -m benchmarks.cold_start [--out benchmarks/results/cold_start.json] [--runs 3]

Each run starts ``banditd serve`` on 127.0.0.1 with ``NUMBA_CACHE_DIR`` pointing at a new empty
directory, polls health every 20 ms, and reads the server's user + system CPU seconds (all its
threads, from /proc) at the first SERVING answer. Two data directories:

* ``empty``: no experiments (a new deployment);
* ``one_policy``: the state of one Thompson experiment (made by an earlier server of the same
  run, whose cache is thrown away).

Then, on the server of the last ``one_policy`` run, ``CreateExperiment`` + one ``SelectArm``
of every kernel's policy is timed: what the first experiment of a policy pays when its kernels
are compiled on demand (nothing, when start-up compiled every kernel).

Code of an earlier commit is measured by putting a copy of its ``banditd`` package first on
``PYTHONPATH`` (``--code`` records which).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import free_port, machine, process_cpu_seconds, stop_process

# kernel -> (policy, reward type, context dimension) of an experiment that uses it
POLICIES = {
    "thompson": (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_BINARY, 0),
    "thompson_value": (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_VALUE, 0),
    "ucb1": (pb.Policy(ucb1=pb.Policy.Ucb1()), pb.REWARD_TYPE_CONTINUOUS, 0),
    "epsilon_greedy": (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy()),
                       pb.REWARD_TYPE_CONTINUOUS, 0),
    "lin_ucb": (pb.Policy(lin_ucb=pb.Policy.LinUcb()), pb.REWARD_TYPE_CONTINUOUS, 4),
    "lin_thompson": (pb.Policy(lin_thompson=pb.Policy.LinThompson()),
                     pb.REWARD_TYPE_CONTINUOUS, 4),
}


def _experiment(eid: str, kernel: str) -> pb.CreateExperimentRequest:
    policy, reward_type, dim = POLICIES[kernel]
    return pb.CreateExperimentRequest(experiment=pb.Experiment(
        experiment_id=eid, arms=[pb.Arm(arm_id=a) for a in ("a", "b", "c")], policy=policy,
        reward_type=reward_type, context_dim=dim, seed=1))


class Started:
    """``banditd serve`` with its own Numba cache directory, timed to SERVING."""

    def __init__(self, data: Path, cache: Path, log: Path) -> None:
        self.port = free_port()
        env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
        started = time.perf_counter()
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "banditd", "serve", "--host", "127.0.0.1", "--port",
                 str(self.port), "--data-dir", str(data), "--set", "snapshot_interval_seconds=0"],
                stdout=out, stderr=out, env=env)
        target = f"127.0.0.1:{self.port}"
        with grpc.insecure_channel(target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 900
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"banditd did not start; see {log}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(),
                                    timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        self.cpu_seconds = process_cpu_seconds(self.proc.pid)
        self.wall_seconds = time.perf_counter() - started
        self.target = target

    def stop(self) -> None:
        stop_process(self.proc)


def run(runs: int, directory: Path) -> dict:
    out: dict = {"empty": [], "one_policy": [], "create_on_warm_start": {}}
    for i in range(runs):
        for case in ("empty", "one_policy"):
            data = directory / f"{case}-{i}"
            if case == "one_policy":  # a data directory holding one Thompson experiment
                # (its cache is its own and kept across runs: only the measured one is cold)
                maker = Started(data, directory / "prep-cache", directory / "prep.log")
                with grpc.insecure_channel(maker.target) as ch:
                    pb_grpc.DecisionServiceStub(ch).CreateExperiment(_experiment("t", "thompson"))
                maker.stop()
            server = Started(data, directory / f"cache-{case}-{i}", directory / f"{case}.log")
            out[case].append({"cpu_s": round(server.cpu_seconds, 2),
                              "wall_s": round(server.wall_seconds, 2)})
            print(f"run {i + 1}/{runs} {case:<10} to SERVING: {server.cpu_seconds:6.1f} CPU s, "
                  f"{server.wall_seconds:6.1f} s", flush=True)
            if case == "one_policy" and i == runs - 1:
                with grpc.insecure_channel(server.target) as ch:
                    stub = pb_grpc.DecisionServiceStub(ch)
                    for policy in POLICIES:
                        cpu0, t0 = process_cpu_seconds(server.proc.pid), time.perf_counter()
                        stub.CreateExperiment(_experiment(f"new-{policy}", policy), timeout=900)
                        stub.SelectArm(pb.SelectArmRequest(
                            experiment_id=f"new-{policy}",
                            context=[0.5] * POLICIES[policy][2]), timeout=60)
                        out["create_on_warm_start"][policy] = {
                            "cpu_s": round(process_cpu_seconds(server.proc.pid) - cpu0, 2),
                            "wall_s": round(time.perf_counter() - t0, 2)}
                        print(f"  CreateExperiment + SelectArm, {policy:<15}"
                              f" {out['create_on_warm_start'][policy]}", flush=True)
            server.stop()
    for case in ("empty", "one_policy"):
        cpu = sorted(r["cpu_s"] for r in out[case])
        out[f"{case}_median_cpu_s"] = cpu[len(cpu) // 2]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_start.json"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--code", default="",
                    help="what code ran, when not this checkout's (e.g. an earlier commit put "
                    "first on PYTHONPATH)")
    args = ap.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="banditd-cold-"))
    try:
        results = run(args.runs, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report = {"machine": machine(), "code": args.code or "this checkout", "runs": args.runs,
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
