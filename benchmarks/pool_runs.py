"""Pool several ``grpc_throughput.py`` runs of the same points into one QPS ratio per point.

    python -m benchmarks.pool_runs RUN.json [RUN.json ...] [--out pooled.json]

A single run's ratio at one point comes from its ABBA rounds, and on a shared VM the rounds
of one run scatter (slices of 1.5 s moved by ±20% on the development VM), so its 95% interval
(``qps_ratio_ci95``) is several percent wide. Runs of the same code and settings measure the
same thing: their rounds (``round_calls``, the calls completed in each slice of each server)
are put together per (scenario, concurrency, processes) point, and the pooled ratio
(banditd's calls / the echo's over every round) gets a bootstrap interval over all of them
(:func:`grpc_throughput.ratio_interval`, seeded). Runs whose settings differ (duration,
rounds, echo scheduling or work) are refused: their rounds are not the same measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.grpc_throughput import ratio_interval

SAME = ("duration_s", "warmup_s", "rounds", "echo_work_us", "echo_sched_batch")


def pool(reports: list[dict]) -> dict:
    """The pooled ratio and its interval per point of ``reports`` (grpc_throughput JSONs)."""
    if not reports:
        raise ValueError("no runs to pool")
    settings = {k: reports[0]["settings"].get(k) for k in SAME}
    for i, report in enumerate(reports[1:], 1):
        other = {k: report["settings"].get(k) for k in SAME}
        if other != settings:
            raise ValueError(f"run {i} was measured with other settings: {other} != {settings}")
    pooled: dict[tuple, dict[str, list]] = {}  # per point: both servers' rounds, run ratios
    for i, report in enumerate(reports):
        for p in report["points"]:
            if "round_calls" not in p:
                raise ValueError(f"run {i} keeps no round_calls: its rounds cannot be pooled")
            key = (p["scenario"], p["concurrency"], p["processes"])
            point = pooled.setdefault(key, {"echo": [], "banditd": [], "run_ratios": []})
            point["echo"] += p["round_calls"]["echo"]
            point["banditd"] += p["round_calls"]["banditd"]
            point["run_ratios"].append(p["qps_ratio"])
    points = []
    for (scenario, concurrency, processes), point in pooled.items():
        b, e = point["banditd"], point["echo"]
        low, high = ratio_interval(b, e)
        points.append({"scenario": scenario, "concurrency": concurrency, "processes": processes,
                       "runs": len(point["run_ratios"]), "rounds": len(b),
                       "run_ratios": point["run_ratios"],
                       "qps_ratio": round(sum(b) / sum(e), 3),
                       "qps_ratio_ci95": [round(low, 3), round(high, 3)]})
    return {"settings": settings, "runs": len(reports), "points": points}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="grpc_throughput.py JSON results")
    ap.add_argument("--out", type=Path, help="write the pooled points here (JSON)")
    args = ap.parse_args()
    try:
        pooled = pool([json.loads(path.read_text()) for path in args.runs])
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"pool_runs: {exc}")
    for p in pooled["points"]:
        low, high = p["qps_ratio_ci95"]
        runs = ", ".join(f"{r:.3f}" for r in p["run_ratios"])
        print(f"{p['scenario']:<24} c={p['concurrency']:<3} p={p['processes']} | "
              f"{p['runs']} runs, {p['rounds']} rounds | ratio {p['qps_ratio']:.3f} "
              f"[{low:.3f}, {high:.3f}] | runs: {runs}")
    if args.out:
        args.out.write_text(json.dumps({**pooled, "sources": [str(p) for p in args.runs]},
                                       indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
