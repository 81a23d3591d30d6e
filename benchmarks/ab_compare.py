"""Compare ``grpc_throughput`` runs of two versions of the server (before / after a change),
made alternately on the same machine with the same settings.

Per point (scenario, calls in flight, client processes): the mean over runs of banditd's QPS
ratio to the echo measured in the same run (which cancels most of the host's drift), and of
banditd's server CPU µs per call; for each, after / before with a 95% bootstrap interval (the
runs of each side resampled with replacement, 10,000 seeded resamples).

    python -m benchmarks.ab_compare --before A1.json A2.json ... --after B1.json ... --out FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

METRICS = {"qps_ratio": lambda p: p["qps_ratio"],
           "server_cpu_us_per_call": lambda p: p["banditd"]["server_cpu_us_per_call"]}


def compare(before: list[dict], after: list[dict], seed: int = 0) -> list[dict[str, Any]]:
    values: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    for side, reports in (("before", before), ("after", after)):
        for report in reports:
            for p in report["points"]:
                key = (p["scenario"], p["concurrency"], p["processes"])
                row = values.setdefault(key, {m: {"before": [], "after": []} for m in METRICS})
                for name, get in METRICS.items():
                    row[name][side].append(float(get(p)))
    rng = np.random.default_rng(seed)
    out = []
    for (scenario, concurrency, processes), row in values.items():
        entry: dict[str, Any] = {"scenario": scenario, "concurrency": concurrency,
                                 "processes": processes}
        for name, sides in row.items():
            a, b = np.array(sides["before"]), np.array(sides["after"])
            ratios = [rng.choice(b, len(b)).mean() / rng.choice(a, len(a)).mean()
                      for _ in range(10_000)]
            entry[name] = {"before": a.tolist(), "after": b.tolist(),
                           "before_mean": float(a.mean()), "after_mean": float(b.mean()),
                           "after_over_before": float(b.mean() / a.mean()),
                           "ci95": [float(x) for x in np.percentile(ratios, [2.5, 97.5])]}
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", nargs="+", type=Path, required=True)
    ap.add_argument("--after", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = compare([json.loads(p.read_text()) for p in args.before],
                   [json.loads(p.read_text()) for p in args.after])
    for r in rows:
        q, c = r["qps_ratio"], r["server_cpu_us_per_call"]
        print(f"{r['scenario']:34} {r['concurrency']:>3} x {r['processes']}  QPS ratio "
              f"{q['before_mean']:.3f} -> {q['after_mean']:.3f} (x{q['after_over_before']:.3f} "
              f"[{q['ci95'][0]:.3f}-{q['ci95'][1]:.3f}])  CPU us/call {c['before_mean']:.0f} -> "
              f"{c['after_mean']:.0f} (x{c['after_over_before']:.3f} "
              f"[{c['ci95'][0]:.3f}-{c['ci95'][1]:.3f}])")
    args.out.write_text(json.dumps({"before": [str(p) for p in args.before],
                                    "after": [str(p) for p in args.after], "points": rows},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
