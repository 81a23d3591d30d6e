"""What settling decisions with the default reward costs (reward windows).

Two measurements:

* **sweep**: a server (in this process, ``durability=os``: every settlement is written to the
  log) holds 100,000 decisions of a windowed experiment whose window has passed; one sweep
  (:meth:`api.reward_windows.RewardWindows.sweep`, run on the server's event loop, the periodic
  sweep disabled) settles them all. Reported: the sweep's wall time and the process's CPU time
  (median of ``--repeats``), the log bytes written, per configuration (Thompson with 10 arms,
  single decisions and slates of 3; LinUCB with 20 arms and 16 features).
* **steady**: two servers (``banditd serve`` subprocesses, 127.0.0.1) receive the same
  BatchSelectArms traffic at ``--rate`` decisions per second (batches of 1,000) for
  ``--seconds``: one experiment with a 1-second reward window (so, after the first second,
  ``--rate`` decisions per second expire and are settled), one without. Server CPU seconds per
  second are read from /proc over the second half of each run; runs alternate (A B A B ...) so
  load from other processes lands on both alike. The difference is the cost of settling
  ``--rate`` expiring decisions per second.

    python -m benchmarks.settlement_bench [--out benchmarks/results/settlement.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.in_process import InProcessServer
from benchmarks.local_server import LocalServer, machine, process_cpu_seconds

CONFIGS = {
    "thompson_k10": {"arms": 10, "context_dim": 0, "slate": 1,
                     "policy": pb.Policy(thompson=pb.Policy.Thompson())},
    "thompson_k10_slate3": {"arms": 10, "context_dim": 0, "slate": 3,
                            "policy": pb.Policy(thompson=pb.Policy.Thompson())},
    "lin_ucb_k20_d16": {"arms": 20, "context_dim": 16, "slate": 1,
                        "policy": pb.Policy(lin_ucb=pb.Policy.LinUcb())},
}


def _experiment(eid: str, config: dict, window: float | None) -> pb.CreateExperimentRequest:
    e = pb.Experiment(experiment_id=eid, arms=[pb.Arm(arm_id=f"arm{i}")
                                               for i in range(config["arms"])],
                      policy=config["policy"], context_dim=config["context_dim"],
                      reward_type=pb.REWARD_TYPE_BINARY if not config["context_dim"]
                      else pb.REWARD_TYPE_CONTINUOUS, seed=1)
    if window is not None:
        e.reward_wait_seconds = window
    return pb.CreateExperimentRequest(experiment=e)


def _requests(eid: str, config: dict, n: int) -> pb.BatchSelectArmsRequest:
    d = config["context_dim"]
    context = [0.1 * (i % 7) for i in range(d)]
    return pb.BatchSelectArmsRequest(requests=[pb.SelectArmRequest(
        experiment_id=eid, context=context, num_arms=config["slate"])] * n)


def _one_sweep(name: str, config: dict, decisions: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, log bytes) of one sweep settling ``decisions`` due ones."""
    with tempfile.TemporaryDirectory(prefix="banditd-settle-") as data, \
            InProcessServer.on_loopback(Path(data), reward_sweep_interval_seconds=60,
                            snapshot_interval_seconds=0,
                            decision_capacity=max(1_000_000, decisions)) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        eid = f"settle-{name}"
        stub.CreateExperiment(_experiment(eid, config, window=0.5))
        batch = _requests(eid, config, 1000)
        for _ in range(decisions // 1000):
            stub.BatchSelectArms(batch)
        assert srv.app is not None
        app = srv.app

        async def flush() -> None:  # the decision records into the log first
            app.storage.hand_over_pending()
            await app.storage.commit()

        async def timed() -> tuple[int, float, float]:
            cpu, wall = time.process_time(), time.perf_counter()
            settled = await app.service.reward_windows.sweep()
            return settled, time.perf_counter() - wall, time.process_time() - cpu

        asyncio.run_coroutine_threadsafe(flush(), srv.loop).result(120)
        time.sleep(0.6)  # every window has passed
        before = _log_bytes(Path(data))
        settled, wall, cpu = asyncio.run_coroutine_threadsafe(timed(), srv.loop).result(600)
        assert settled == decisions, (settled, decisions)
        return wall, cpu, _log_bytes(Path(data)) - before


def sweep_cost(decisions: int, repeats: int) -> list[dict[str, Any]]:
    out = []
    for name, config in CONFIGS.items():
        walls, cpus, sizes = zip(*(_one_sweep(name, config, decisions) for _ in range(repeats)),
                                 strict=True)
        row = {"config": name, "decisions": decisions, "repeats": repeats,
               "wall_seconds_median": statistics.median(walls),
               "cpu_seconds_median": statistics.median(cpus), "wall_seconds": list(walls),
               "cpu_seconds": list(cpus), "log_bytes": statistics.median(sizes),
               "us_per_decision": statistics.median(walls) / decisions * 1e6}
        print(f"sweep {name:20} {decisions} decisions: {row['wall_seconds_median']:.3f} s wall, "
              f"{row['cpu_seconds_median']:.3f} s CPU, {row['log_bytes'] / 1e6:.1f} MB logged")
        out.append(row)
    return out


def _log_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.glob("wal-*.log"))


def steady(rate: float, seconds: float, pairs: int) -> dict[str, Any]:
    config = CONFIGS["thompson_k10"]
    runs: list[dict[str, Any]] = []
    for i in range(pairs):
        for window in ((1.0, None) if i % 2 == 0 else (None, 1.0)):
            with tempfile.TemporaryDirectory(prefix="banditd-steady-") as tmp:
                data = Path(tmp) / "data"
                with LocalServer(data, snapshot_interval_seconds=0) as srv, \
                        grpc.insecure_channel(srv.target) as ch:
                    stub = pb_grpc.DecisionServiceStub(ch)
                    stub.CreateExperiment(_experiment("steady", config, window))
                    batch = _requests("steady", config, 1000)
                    calls = int(rate * seconds / 1000)
                    started = time.monotonic()
                    half = None
                    for k in range(calls):
                        stub.BatchSelectArms(batch)
                        if k == calls // 2:
                            half = (time.monotonic(), process_cpu_seconds(srv.pid), k)
                        pause = started + (k + 1) * 1000 / rate - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
                    end = (time.monotonic(), process_cpu_seconds(srv.pid), calls)
                    assert half is not None
                    span = end[0] - half[0]
                    settled = stub.GetArmStats(pb.GetArmStatsRequest(
                        experiment_id="steady")).model_version
                runs.append({"window": window, "pair": i,
                             "decisions_per_second": (end[2] - half[2]) * 1000 / span,
                             "server_cpu_per_second": (end[1] - half[1]) / span,
                             "settled": settled, "elapsed": end[0] - started})
                print(f"steady window={window}: {runs[-1]['decisions_per_second']:,.0f} "
                      f"decisions/s, server CPU {runs[-1]['server_cpu_per_second']:.3f} s/s, "
                      f"settled {settled}")
    with_w = [r["server_cpu_per_second"] for r in runs if r["window"] is not None]
    without = [r["server_cpu_per_second"] for r in runs if r["window"] is None]
    return {"rate": rate, "seconds": seconds, "pairs": pairs, "runs": runs,
            "cpu_with_window_median": statistics.median(with_w),
            "cpu_without_window_median": statistics.median(without),
            "cpu_difference_median": statistics.median(with_w) - statistics.median(without)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/settlement.json")
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100_000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--only", choices=["sweep", "steady"])
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "settlement", "machine": machine()}
    if args.only != "steady":
        result["sweep"] = sweep_cost(args.decisions, args.repeats)
    if args.only != "sweep":
        result["steady"] = steady(args.rate, args.seconds, args.pairs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
