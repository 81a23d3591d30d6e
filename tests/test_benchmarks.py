"""Smoke runs of the benchmark harnesses (tiny sizes): they run to the end against real
servers and write well-formed results. No speed is asserted here; `make bench` measures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.grpc_throughput import p99_ratio_interval, ratio_interval
from benchmarks.instructions import event_totals, summarise, totals
from benchmarks.local_server import machine
from benchmarks.profile_server import _top
from helpers import ROOT, running_server

RESULTS = ROOT / "benchmarks" / "results"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_grpc_throughput_against_a_working_echo(tmp_path):
    """Also with the echo's gRPC threads scheduled as banditd's (the like-for-like run), two
    rounds per point: each slice's calls are kept and give the ratio's interval."""
    out = tmp_path / "throughput.json"
    _run("-m", "benchmarks.grpc_throughput", "--quick", "--only", "select_thompson_k10",
         "--echo-work-us", "50", "--echo-sched-batch", "--duration", "1", "--rounds", "2",
         "--out", str(out))
    report = json.loads(out.read_text())
    assert report["machine"]["commit"] == machine()["commit"] != "unknown"
    for png in ("throughput_qps.png", "throughput_latency_cdf.png"):  # the plots, as PNGs
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["settings"]["echo_work_us"] == 50
    assert report["settings"]["echo_sched_batch"] is True
    points = report["points"]
    assert [(p["concurrency"], p["processes"]) for p in points] == [(1, 1), (32, 1), (32, 2)]
    for p in points:
        for server in ("echo", "banditd"):
            assert p[server]["errors"] == 0 and p[server]["calls"] > 0
        assert p["qps_ratio"] == round(p["banditd"]["qps"] / p["echo"]["qps"], 3)
        for server in ("echo", "banditd"):
            assert len(p["round_calls"][server]) == 2
            assert sum(p["round_calls"][server]) == p[server]["calls"]
        low, high = p["qps_ratio_ci95"]
        assert low - 0.001 <= p["qps_ratio"] <= high + 0.001
        low, high = p["p99_ratio_ci95"]
        assert low - 0.01 <= p["p99_ratio"] <= high + 0.01


def test_grpc_throughput_with_tls_and_tokens(tmp_path):
    """--tls: both servers behind TLS, banditd checking the token the client sends; every call
    succeeds (a refused token or handshake would count as errors)."""
    out = tmp_path / "tls.json"
    _run("-m", "benchmarks.grpc_throughput", "--quick", "--only", "select_thompson_k10",
         "--tls", "--no-plots", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["settings"]["tls"] is True
    for p in report["points"]:
        for server in ("echo", "banditd"):
            assert p[server]["errors"] == 0 and p[server]["calls"] > 0
        assert p["response_bytes"] > 20  # a real SelectArmResponse was captured over TLS


def test_ratio_interval_of_paired_rounds():
    """The QPS ratio's bootstrap interval: no width when every round agrees, around the
    ratio of the sums otherwise, narrower with more rounds of the same spread, the same
    for the same data (seeded)."""
    assert ratio_interval([90, 180, 45], [100, 200, 50]) == (0.9, 0.9)
    a, b = [880, 950, 860, 930, 900, 870], [1000, 1010, 990, 1005, 985, 1000]
    low, high = ratio_interval(a, b)
    assert low < sum(a) / sum(b) < high and low > 0.85 and high < 0.93
    low4, high4 = ratio_interval(a * 4, b * 4)
    assert high4 - low4 < 0.6 * (high - low)
    assert ratio_interval(a, b) == (low, high)
    with pytest.raises(ValueError):
        ratio_interval([1], [1])
    with pytest.raises(ValueError):
        ratio_interval([1, 2], [1, 0])


@pytest.mark.slow
def test_durability_snapshot_latency_classifies_every_call():
    proc = _run("-m", "benchmarks.durability_bench", "--quick", "--only", "snapshot")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result["big_experiment_arms"] == 100_000 and result["snapshot_interval_s"] == 1.0
    assert result["calls_without_snapshot"] + result["calls_during_snapshot"] == 3000
    assert result["snapshot_bytes"] > 100_000 * 8  # the big experiment's arrays were written


@pytest.mark.slow
def test_startup_load_reads_full_collections_from_metrics(tmp_path):
    out = tmp_path / "startup.json"
    _run("-m", "benchmarks.startup_load", "--restarts", "1", "--seconds", "1",
         "--concurrency", "4", "--out", str(out))
    report = json.loads(out.read_text())
    (start,) = report["starts"]
    assert start["errors"] == 0 and start["calls"] > 0
    assert start["qps"] == round(start["calls"] / 1.0, 1)  # --seconds 1
    assert start["p50_us"] <= start["p99_us"] <= start["p999_us"] <= start["max_us"]
    assert report["starts_with_full_collection"] == int(start["full_collections_during_load"] > 0)


@pytest.mark.slow
def test_startup_load_counts_the_servers_full_collections(tmp_path):
    """startup_load.full_collections reads the server's generation-2 collection count from
    its /metrics: here an in-process server, so it is this process's own count."""
    import gc

    from benchmarks.startup_load import full_collections

    with running_server(tmp_path, metrics_port=0) as srv:
        before = gc.get_stats()[2]["collections"]
        first = full_collections(srv.app.metrics_port)
        gc.collect()
        gc.collect()
        second = full_collections(srv.app.metrics_port)
        after = gc.get_stats()[2]["collections"]
    assert before <= first and second <= after
    assert second - first >= 2  # the two collections in between, and any the server ran


@pytest.mark.slow
def test_instructions_reads_callgrind_totals_and_needs_valgrind(tmp_path):
    """benchmarks/instructions.py (run by `make bench`, minutes under callgrind): the event
    total of a dump is read, a server's repeated windows give their median, and without
    valgrind on PATH it says so and exits with 2."""
    import os

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
    proc = subprocess.run([sys.executable, "-m", "benchmarks.instructions", "--out",
                           str(tmp_path / "i.json")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, PATH=str(tmp_path)))
    assert proc.returncode == 2 and "needs valgrind" in proc.stderr
    assert not (tmp_path / "i.json").exists()


@pytest.mark.slow
def test_p99_ratio_interval_of_paired_rounds():
    """The p99 ratio's bootstrap interval: around the true ratio of two servers whose
    latencies differ by a factor, narrower with more rounds, seeded, and refusing rounds that
    do not pair up."""
    rng = np.random.default_rng(7)
    echo = [rng.lognormal(7.0, 0.4, size=2_000) for _ in range(8)]
    banditd = [1.2 * rng.lognormal(7.0, 0.4, size=2_000) for _ in range(8)]
    low, high = p99_ratio_interval(banditd, echo, resamples=400)
    assert 1.05 < low < 1.2 < high < 1.35
    low32, high32 = p99_ratio_interval(banditd * 4, echo * 4, resamples=400)
    assert high32 - low32 < 0.7 * (high - low)
    assert p99_ratio_interval(banditd, echo, resamples=400) == (low, high)
    with pytest.raises(ValueError):
        p99_ratio_interval(banditd[:1], echo[:1])
    with pytest.raises(ValueError):
        p99_ratio_interval(banditd, echo[:7])


@pytest.mark.slow
def test_pool_runs_puts_rounds_of_the_same_points_together(tmp_path):
    """Two runs' rounds pooled per point: the ratio of all calls, an interval narrower than
    either run's, and runs measured with other settings (or before rounds were kept)
    refused with a message."""
    settings = {"duration_s": 12, "warmup_s": 0.3, "rounds": 4, "echo_work_us": 0.0,
                "echo_sched_batch": True}

    def run(banditd, echo):
        return {"settings": settings, "points": [{
            "scenario": "select_thompson_k10", "concurrency": 32, "processes": 1,
            "qps_ratio": round(sum(banditd) / sum(echo), 3),
            "round_calls": {"banditd": banditd, "echo": echo}}]}

    first = run([880, 950, 860, 930], [1000, 1010, 990, 1005])
    second = run([900, 870, 940, 890], [985, 1000, 1020, 990])
    paths = []
    for i, report in enumerate((first, second)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(report))
    out = tmp_path / "pooled.json"
    proc = _run("-m", "benchmarks.pool_runs", *map(str, paths), "--out", str(out))
    assert "2 runs, 8 rounds" in proc.stdout
    (point,) = json.loads(out.read_text())["points"]
    banditd = [880, 950, 860, 930, 900, 870, 940, 890]
    echo = [1000, 1010, 990, 1005, 985, 1000, 1020, 990]
    assert point["qps_ratio"] == round(sum(banditd) / sum(echo), 3)
    assert point["run_ratios"] == [first["points"][0]["qps_ratio"],
                                   second["points"][0]["qps_ratio"]]
    low, high = point["qps_ratio_ci95"]
    assert (low, high) == tuple(round(x, 3) for x in ratio_interval(banditd, echo))
    one_low, one_high = ratio_interval(first["points"][0]["round_calls"]["banditd"],
                                       first["points"][0]["round_calls"]["echo"])
    assert high - low < one_high - one_low

    other = run([900] * 4, [1000] * 4)
    other["settings"] = {**settings, "rounds": 8}
    paths[1].write_text(json.dumps(other))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pool_runs", *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "other settings" in proc.stderr
    del first["points"][0]["round_calls"]
    paths[0].write_text(json.dumps(first))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pool_runs", str(paths[0])],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "keeps no round_calls" in proc.stderr


@pytest.mark.slow
def test_pooled_results_are_rebuilt_from_the_committed_runs(tmp_path):
    """The pooled SelectArm results in benchmarks/results come from the runs kept beside them
    (benchmarks/results/runs/): pooling those again gives the same file."""
    for pooled, pattern in (("grpc_throughput_select_pooled.json", "select_bare_*.json"),
                            ("grpc_throughput_select_pooled_echo_sched_batch.json",
                             "select_sched_batch_*.json")):
        runs = sorted((RESULTS / "runs").glob(pattern))
        assert len(runs) == 5, runs
        out = tmp_path / pooled
        _run("-m", "benchmarks.pool_runs", *map(str, runs), "--out", str(out))
        assert json.loads(out.read_text())["points"] == \
            json.loads((RESULTS / pooled).read_text())["points"]


def test_profile_report_separates_waits_and_banditd_code(tmp_path):
    """profile_server's report from py-spy's collapsed stacks: waits in epoll and gRPC's
    threads are not busy; banditd's code counts above the event loop's dispatch only."""
    loop = ("<module> (server/__main__.py:3);main (server/cli.py:155);"
            "BaseEventLoop._run_once (asyncio/base_events.py:1922)")
    raw = tmp_path / "p.raw"
    raw.write_text("\n".join([
        f"{loop};EpollSelector.select (selectors.py:468) 50",
        "_bootstrap (threading.py:1002);Thread.run (threading.py:982) 30",
        f"{loop};Handle._run (asyncio/events.py:80);handler (server/app.py:73);"
        "select (kernels/thompson.py:121) 6",
        f"{loop};Handle._run (asyncio/events.py:80) 10",
        "_bootstrap (threading.py:1002);run (server/wal.py:200) 4",
    ]) + "\n")
    report = _top(raw)
    assert report.startswith("100 samples, 20 busy (20.0%")
    assert "in banditd's code (server/, kernels/): 10.0% of all, 50.0% of busy samples" in report
    assert "  50.0  EpollSelector.select (selectors.py:468)" in report


@pytest.mark.slow
def test_make_load_writes_reports_of_a_real_run(tmp_path):
    """run_load.py (``make load``): a short headless Locust run against its own server; its
    CSV and HTML reports and a summary with the requests it counted, none failed."""
    out = tmp_path / "locust"
    _run("-m", "benchmarks.run_load", "--run-time", "4s", "--users", "4", "--spawn-rate", "4",
         "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["locust_exit_code"] == 0
    assert summary["machine"]["commit"] == machine()["commit"]
    rows = {r["name"]: r for r in summary["requests"]}
    assert rows["Aggregated"]["failures"] == 0
    assert {"SelectArm [eligible subset]", "SelectArm [slate of 3]",
            "SelectArm [LinUCB context]", "PaceBid"} <= set(rows), sorted(rows)
    # the summary is the stats CSV's figures, and the CSV's rows add up to its total
    with open(out / "banditd_stats.csv", newline="") as f:
        csv_rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert {name: int(r["Request Count"]) for name, r in csv_rows.items()} == \
        {name: r["requests"] for name, r in rows.items()}
    assert sum(r["requests"] for name, r in rows.items() if name != "Aggregated") == \
        rows["Aggregated"]["requests"] > 0
    with open(out / "banditd_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []  # the header only: no failure
    html = (out / "banditd.html").read_text()
    assert "<html" in html and "SelectArm [LinUCB context]" in html


@pytest.mark.slow
def test_workers_bench_compares_one_and_two_workers(tmp_path):
    """workers_bench.py's smoke run: one worker and two replicas of an embedded engine serve
    the same batches (every decision counted, both replicas used, the engine's CPU
    measured), the pair's ratio is the ratio of its rates, and the propagation probe measured
    rewards crossing from one replica to the other."""
    out = tmp_path / "workers.json"
    _run("-m", "benchmarks.workers_bench", "--quick", "--batches", "100", "--max-wait", "1",
         "--out", str(out))
    report = json.loads(out.read_text())
    assert report["machine"]["commit"] == machine()["commit"]
    rows = {(r["workers"], r["batch"]): r for r in report["throughput"] if "workers" in r}
    one, two = rows[(1, 100)], rows[(2, 100)]
    for row in (one, two):
        assert row["decisions"] > 0 and row["decisions"] % 100 == 0
        assert sum(row["decisions_per_worker"]) == row["decisions"]
    assert len(two["decisions_per_worker"]) == 2 and min(two["decisions_per_worker"]) > 0
    assert len(two["server_cpu_cores"]) == 2 and two["engine_cpu_cores"] >= 0
    (pair,) = [r for r in report["throughput"] if "ratio_2_vs_1" in r]
    assert pair["ratio_of_each_pair"] == [
        round(two["decisions_per_s"] / one["decisions_per_s"], 2)]
    (probe,) = report["propagation_under_load"]
    assert probe["propagation_ms"]["probes"] > 0
    assert 0 < probe["propagation_ms"]["p50"] <= probe["propagation_ms"]["p99"]


@pytest.mark.slow
def test_conversions_only_learns_every_decision_once_with_a_window(server, tmp_path):
    """Only conversions are reported: with a window every decision is learned (a conversion or
    the default 0), so each arm's rate is exactly conversions / decisions; without one, every
    rate is 1.0. Late conversions are answered late = true."""
    out = tmp_path / "conversions.json"
    _run("-m", "benchmarks.conversions_only", "--target", f"127.0.0.1:{server.port}",
         "--decisions", "4000", "--window", "0.3", "--delay", "0.2", "--late", "0.2",
         "--rate", "8000", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["late_conversions"] > 0
    assert report["replies_late"] == report["late_conversions"]
    assert report["replies_duplicate"] == 0
    assert sum(a["decisions"] for a in report["arms"]) == 4000
    for a in report["arms"]:
        assert a["trials"] == a["decisions"] and a["successes"] == a["conversions"] > 0
        assert a["conversion_rate"] == pytest.approx(a["conversions"] / a["decisions"])
        assert a["no_window_trials"] == a["no_window_conversions"]
        assert a["no_window_conversion_rate"] == 1.0


@pytest.mark.slow
def test_settlement_bench(tmp_path):
    out = tmp_path / "settlement.json"
    _run("-m", "benchmarks.settlement_bench", "--decisions", "3000", "--repeats", "1",
         "--rate", "5000", "--seconds", "3", "--pairs", "1", "--out", str(out))
    report = json.loads(out.read_text())
    assert [r["config"] for r in report["sweep"]] == [
        "thompson_k10", "thompson_k10_slate3", "lin_ucb_k20_d16"]
    for row in report["sweep"]:
        assert row["decisions"] == 3000 and row["log_bytes"] > 3000 * 16
    runs = report["steady"]["runs"]
    assert [r["window"] for r in runs] == [1.0, None]
    assert runs[0]["settled"] > 0 and runs[1]["settled"] == 0


@pytest.mark.slow
def test_ope_accuracy(tmp_path):
    out = tmp_path / "ope.json"
    _run("-m", "benchmarks.ope_accuracy", "--runs", "2", "--decisions", "600", "--rounds", "6",
         "--bootstrap", "200", "--out", str(out))
    report = json.loads(out.read_text())
    rows = report["summary"]
    assert [(r["scenario"], r["runs"]) for r in rows] == [
        ("bernoulli", 2), ("bernoulli", 2), ("linear", 2), ("linear", 2)]
    for r in report["results"]:
        assert r["decisions"] == 600
        for e in ("ips", "snips", "doubly_robust"):
            assert r[e]["ci"][0] < r[e]["value"] < r[e]["ci"][1]
            assert abs(r[e]["value"] - r["truth"]) < 0.3


def test_ab_compare_pairs_points_and_bounds_the_ratio():
    """ab_compare: per point, the means of each side, their ratio and a bootstrap interval
    that holds it; a point's runs are matched by (scenario, concurrency, processes)."""
    from benchmarks.ab_compare import compare

    def report(qps: float, cpu: float) -> dict:
        return {"points": [{"scenario": "s", "concurrency": c, "processes": 1,
                            "qps_ratio": qps * c, "banditd": {"server_cpu_us_per_call": cpu}}
                           for c in (1, 8)]}

    rows = compare([report(1.0, 10.0), report(1.2, 12.0)], [report(1.1, 9.0), report(1.3, 9.0)])
    assert [(r["scenario"], r["concurrency"]) for r in rows] == [("s", 1), ("s", 8)]
    for r in rows:
        q, c = r["qps_ratio"], r["server_cpu_us_per_call"]
        assert q["after_over_before"] == pytest.approx(1.2 / 1.1)
        assert c["before_mean"] == 11.0 and c["after_mean"] == 9.0
        assert c["after_over_before"] == pytest.approx(9.0 / 11.0)
        assert c["ci95"][0] <= 9.0 / 11.0 <= c["ci95"][1]
        assert q["ci95"][0] < q["after_over_before"] < q["ci95"][1]


@pytest.mark.slow
def test_replica_bench_measures_cost_propagation_scaling_and_footprint(tmp_path):
    """replica_bench.py's smoke run: a replica's CPU per call against a standalone server's
    (the engine's CPU counted with the replica's), rewards crossing between two replicas
    under load, 1-3 replicas, and the log's bytes per decision and reward."""
    out = tmp_path / "replicas.json"
    _run("-m", "benchmarks.replica_bench", "--quick", "--out", str(out))
    report = json.loads(out.read_text())
    rows = {r["scenario"]: r for r in report["cost"]}
    assert set(rows) == {"select_thompson_k10", "record_reward"}
    for row in rows.values():
        replica, standalone = row["replica"], row["standalone"]
        assert replica["calls"] > 0 and standalone["calls"] > 0
        assert replica["errors"] == standalone["errors"] == 0
        assert row["cpu_per_call_ratio"] == round(
            replica["server_cpu_us_per_call"] / standalone["server_cpu_us_per_call"], 3)
        # (a smoke run is short: the engine's CPU may round to 0 clock ticks)
        assert 0 <= replica["engine_cpu_us_per_call"] < replica["server_cpu_us_per_call"]
    for row in report["propagation"]:
        assert row["load_errors"] == 0 and row["rewards_per_s_on_a"] > 0
        assert 0 < row["propagation_ms"]["p50"] <= row["propagation_ms"]["p99"]
    assert [r["replicas"] for r in report["scaling"]] == [1, 2, 3]
    assert all(r["calls"] > 0 and r["errors"] == 0 for r in report["scaling"])
    fp = report["footprint"]
    assert fp["decision_bytes_per_decision"] > 20 and fp["reward_bytes_per_reward"] > 20
    assert fp["log_entries"] == fp["decision_entries"] + fp["reward_entries"]


@pytest.mark.slow
def test_pacing_market_grid_quick_run(tmp_path):
    """The market grid's smoke run (two bid/price ratios x two traffic levels, days 1 and 2,
    against a real server): every cell is measured and classified, nothing is overspent,
    thin markets spend what they can, the heat map is written and the table is rebuilt from
    the results file."""
    out = tmp_path / "grid.json"
    proc = _run("-m", "benchmarks.pacing_sim", "--grid", "--quick", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["machine"]["commit"] == machine()["commit"]
    cells = report["cells"]
    assert sorted((c["ratio"], c["traffic"], c["day"]) for c in cells) == sorted(
        (r, t, d) for r in (3.0, 40.0) for t in (0.3, 2.0) for d in (1, 2))
    for c in cells:
        assert c["overspend"] == 0 and c["spent"] <= c["budget"] + 1e-6
        assert c["auctions"] == sum(c["reasons"].values())
        assert c["deliverable"] == (c["possible_spend"] >= c["budget"])
        if c["traffic"] == 0.3:  # half the forecast's potential at most: cannot deliver
            assert not c["deliverable"] and c["spent_of_possible"] >= 0.95
            assert set(c["targets"]) == {"no_overspend", "spent_possible_98"}
        else:
            assert c["deliverable"] and c["utilization"] >= 0.9
            assert set(c["targets"]) == {"no_overspend", "utilization_98", "max_deviation_5",
                                         "no_early_exhaustion"}
        trajectory = c["trajectory"]
        assert len(trajectory["hour"]) == len(trajectory["spent"]) == 144
        assert trajectory["spent"][-1] == pytest.approx(c["spent"], abs=1e-3)
    summary = report["summary"]
    assert summary["cells"] == 8 and summary["overspend_total"] == 0
    assert summary["deliverable_cells"] == sum(c["deliverable"] for c in cells) == 4
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = _run("-m", "benchmarks.pacing_sim", "--table", str(out)).stdout
    assert table.strip() in proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| 3 |")
            or line.startswith("| 40 |")]
    assert len(rows) == 4 and all(line.count("|") == 5 for line in rows)
