"""Smoke runs of the benchmark harnesses (tiny sizes): they run to the end against real
servers and write well-formed results. No speed is asserted here; `make bench` measures."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

BENCH = ROOT / "benchmarks"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_grpc_throughput_against_a_working_echo(tmp_path):
    """Also with the echo's gRPC threads scheduled as banditd's (the like-for-like run)."""
    out = tmp_path / "throughput.json"
    _run(str(BENCH / "grpc_throughput.py"), "--quick", "--only", "select_thompson_k10",
         "--echo-work-us", "50", "--echo-sched-batch", "--rounds", "1", "--no-plots",
         "--out", str(out))
    report = json.loads(out.read_text())
    assert report["settings"]["echo_work_us"] == 50
    assert report["settings"]["echo_sched_batch"] is True
    points = report["points"]
    assert [(p["concurrency"], p["processes"]) for p in points] == [(1, 1), (32, 1), (32, 2)]
    for p in points:
        for server in ("echo", "banditd"):
            assert p[server]["errors"] == 0 and p[server]["calls"] > 0
        assert p["qps_ratio"] == round(p["banditd"]["qps"] / p["echo"]["qps"], 3)


def test_durability_snapshot_latency_classifies_every_call():
    proc = _run(str(BENCH / "durability_bench.py"), "--quick", "--only", "snapshot")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["big_experiment_arms"] == 100_000 and result["snapshot_interval_s"] == 1.0
    assert result["calls_without_snapshot"] + result["calls_during_snapshot"] == 3000
    assert result["snapshot_bytes"] > 100_000 * 8  # the big experiment's arrays were written


def test_startup_load_reads_full_collections_from_metrics(tmp_path):
    out = tmp_path / "startup.json"
    _run(str(BENCH / "startup_load.py"), "--restarts", "1", "--seconds", "1",
         "--concurrency", "4", "--out", str(out))
    report = json.loads(out.read_text())
    (start,) = report["starts"]
    assert start["errors"] == 0 and start["qps"] > 0
    assert start["p50_us"] <= start["p99_us"] <= start["p999_us"] <= start["max_us"]
    assert start["full_collections_during_load"] >= 0
    assert report["starts_with_full_collection"] == int(start["full_collections_during_load"] > 0)


def test_instructions_reads_callgrind_totals_and_needs_valgrind(tmp_path):
    """benchmarks/instructions.py (run by `make bench`, minutes under callgrind): the event
    total of a dump is read, a server's repeated windows give their median, and without
    valgrind on PATH it says so and exits with 2."""
    import os

    sys.path.insert(0, str(BENCH))
    from instructions import event_totals, summarise, totals

    rows = [{"instructions_per_call": n} for n in (459_686, 436_864, 437_750)]
    assert summarise(rows) == {"windows": rows, "instructions_per_call": 437_750,
                               "lowest_per_call": 436_864, "highest_per_call": 459_686}
    assert summarise(rows[:2])["instructions_per_call"] == 436_864  # the lower middle

    dump = tmp_path / "x.out"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\nevents: Ir\n"
                    "fn=(1) main\n0 5\nsummary: 1234\ntotals: 1730389693\n")
    assert totals(dump) == 1_730_389_693
    cached = tmp_path / "c.out"  # --cache-sim: more events on the same lines
    cached.write_text("events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\nsummary: 1 2 3 4 5 6 7 8 9\n"
                      "totals: 1751001306 528115115 319735604 73025105 32663700 8221244 9519 "
                      "197221 73597\n")
    assert event_totals(cached) == {"Ir": 1751001306, "Dr": 528115115, "Dw": 319735604,
                                    "I1mr": 73025105, "D1mr": 32663700, "D1mw": 8221244,
                                    "ILmr": 9519, "DLmr": 197221, "DLmw": 73597}
    assert totals(cached) == 1751001306
    proc = subprocess.run([sys.executable, str(BENCH / "instructions.py"), "--out",
                           str(tmp_path / "i.json")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, PATH=str(tmp_path)))
    assert proc.returncode == 2 and "needs valgrind" in proc.stderr
    assert not (tmp_path / "i.json").exists()
