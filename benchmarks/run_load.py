"""``make load``: a local banditd, a bounded headless Locust run against it, its reports.

    python -m benchmarks.run_load [--run-time 60s] [--users 32] [--spawn-rate 8]
                                  [--out benchmarks/results/locust]

Starts ``banditd serve`` on 127.0.0.1 (a free port, a temporary data directory, default
settings), runs ``locust -f benchmarks/locustfile.py --headless`` against it for
``--run-time`` (the locustfile creates its experiments), writes Locust's CSV files
(``<out>/banditd_stats.csv``, ``_stats_history.csv``, ``_failures.csv``, ``_exceptions.csv``),
its HTML report (``<out>/banditd.html``) and ``<out>/summary.json`` (RPS, percentiles and
failures per request name, and the machine), then stops the server. Exit code: Locust's
(non-zero when a request failed).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.local_server import LocalServer, machine

HERE = Path(__file__).resolve().parent


def summarise(stats_csv: Path) -> list[dict]:
    rows = []
    with open(stats_csv, newline="") as f:
        for row in csv.DictReader(f):
            rows.append({
                "name": row["Name"], "type": row["Type"],
                "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 1),
                "p50_ms": float(row["50%"] or 0), "p90_ms": float(row["90%"] or 0),
                "p99_ms": float(row["99%"] or 0), "p999_ms": float(row["99.9%"] or 0),
                "max_ms": round(float(row["Max Response Time"] or 0), 2),
                "avg_ms": round(float(row["Average Response Time"] or 0), 3),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-time", default="60s", help="Locust --run-time (e.g. 60s, 5m)")
    ap.add_argument("--users", type=int, default=32, help="concurrent simulated connections")
    ap.add_argument("--spawn-rate", type=float, default=8.0, help="users started per second")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/locust"))
    ap.add_argument("--processes", type=int, default=1,
                    help="Locust worker processes (--processes), >1 for more client CPU")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "banditd"
    data = Path(tempfile.mkdtemp(prefix="banditd-load-"))
    try:
        with LocalServer(data / "data", log_level="WARNING") as server:
            print(f"banditd SERVING on {server.target} ({server.ready_seconds:.1f} s); "
                  f"locust: {args.users} users for {args.run_time}", flush=True)
            cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"),
                   "--headless", "--host", server.target, "--users", str(args.users),
                   "--spawn-rate", str(args.spawn_rate), "--run-time", args.run_time,
                   "--stop-timeout", "5", "--csv", str(prefix), "--csv-full-history",
                   "--html", str(prefix) + ".html", "--only-summary"]
            if args.processes > 1:
                cmd += ["--processes", str(args.processes)]
            code = subprocess.call(cmd)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    rows = summarise(Path(str(prefix) + "_stats.csv"))
    summary = {
        "run_time": args.run_time, "users": args.users, "locust_processes": args.processes,
        "locust_exit_code": code,
        "machine": machine(),
        "requests": rows,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{'name':<34}{'reqs':>9}{'fails':>7}{'RPS':>9}{'p50 ms':>8}{'p90 ms':>8}"
          f"{'p99 ms':>8}{'max ms':>9}")
    for r in rows:
        print(f"{r['name']:<34}{r['requests']:>9}{r['failures']:>7}{r['rps']:>9}"
              f"{r['p50_ms']:>8}{r['p90_ms']:>8}{r['p99_ms']:>8}{r['max_ms']:>9}")
    print(f"wrote {prefix}_stats.csv, {prefix}.html, {args.out / 'summary.json'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
