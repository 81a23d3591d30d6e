"""gRPC throughput and latency of banditd vs a bare grpc.aio echo server: same client, same run.

    python -m benchmarks.grpc_throughput [--out benchmarks/results/grpc_throughput.json]
                                         [--duration 3] [--quick] [--only SCENARIO ...]
                                         [--echo-work-us N] [--echo-sched-batch] [--tls]

Two servers run side by side on 127.0.0.1, each a single process:

* **banditd**: ``banditd serve`` (default settings, ``durability=os``: every decision and reward
  is written to the log; periodic snapshots off so none lands inside a measurement);
* **echo**: a generic ``grpc.aio`` server registered for the same method names whose async
  handlers return a pre-serialised response of the same byte size as banditd's answer to that
  request (captured from banditd before the scenario), doing no work at all — the floor the
  Python gRPC stack sets on this machine. With ``--echo-work-us N`` its handlers first spin N µs
  on the CPU: a reference doing as much work per call as banditd's handler, but none of
  banditd's (what any handler work costs against the bare echo). banditd runs gRPC's own
  threads under ``SCHED_BATCH`` by default (``BANDITD_BATCH_SCHEDULE_IO_THREADS``), which makes
  any grpc.aio server faster on a busy host; ``--echo-sched-batch`` gives the echo the same
  scheduling, the like-for-like reference for banditd's own per-call cost.

With ``--tls`` both servers speak TLS (a certificate of a CA made for the run) and banditd also
checks a bearer token on every call (``BANDITD_AUTH_TOKENS_FILE``; the client sends the same
``authorization`` metadata to both): the ratio then measures banditd's per-call cost with TLS
and authentication against an echo paying the same TLS.

One closed-loop client drives both: ``--processes`` spawned processes, each with its share of
``concurrency`` in-flight loops over one ``grpc.aio`` channel, sending pre-serialised requests
(the same bytes to both servers) and not decoding replies. For every (scenario, concurrency,
processes) point the two servers are measured in alternating slices (``--rounds`` ABBA rounds,
``--duration`` seconds per server in all, ``--warmup`` seconds before each slice excluded), so
that load from other processes on a shared machine lands on both alike. Reported per point: QPS
(calls completed in the window / duration), p50 / p90 / p99 / p99.9 latency of the calls started
in the window, server CPU seconds per call (from /proc), and banditd / echo ratios, the QPS
and p99 ratios with 95% bootstrap intervals over their paired rounds (``qps_ratio_ci95``,
``p99_ratio_ci95``; the calls of every slice are kept as ``round_calls``). Batch
scenarios also report decisions (or rewards) per second. Results: JSON plus two PNG plots
(throughput vs concurrency, latency CDF of SelectArm Thompson K = 10).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import (
    ROOT,
    LocalServer,
    channel,
    machine,
    process_cpu_seconds,
    stop_process,
)
from benchmarks.tls import ADMIN_TOKEN, TlsFiles, make_tls

SERVICE = "decision.v1.DecisionService"
CONTROL = "/bench.Echo/SetResponse"  # echo server: payload = method + b"\n" + response bytes
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
QUANTILES = np.linspace(0.0, 1.0, 201)  # stored latency CDF of the headline scenario


# ----------------------------------------------------------------------------- echo server
def serve_echo(port_file: Path, work_us: float = 0.0, sched_batch: bool = False,
               tls: Path | None = None) -> None:
    """Run the echo server until SIGTERM; write its port to ``port_file`` once listening.
    ``work_us`` > 0: every handler first spins that long on the CPU (a "working echo").
    ``sched_batch``: gRPC's threads under SCHED_BATCH, as banditd runs them by default.
    ``tls``: a directory of :func:`benchmarks.tls.make_tls` files: serve TLS with them."""
    import signal

    responses: dict[str, bytes] = {}
    work = work_us * 1e-6
    clock = time.perf_counter

    def make_behavior(method: str):
        async def echo(request: bytes, context) -> bytes:
            return responses[method]

        async def working_echo(request: bytes, context) -> bytes:
            end = clock() + work
            while clock() < end:
                pass
            return responses[method]

        return working_echo if work > 0 else echo

    async def set_response(request: bytes, context) -> bytes:
        method, _, response = request.partition(b"\n")
        responses[method.decode()] = response
        return b""

    class Generic(grpc.GenericRpcHandler):
        def __init__(self) -> None:
            self.handlers: dict[str, grpc.RpcMethodHandler] = {
                CONTROL: grpc.unary_unary_rpc_method_handler(set_response)
            }

        def service(self, details):
            method = details.method
            handler = self.handlers.get(method)
            if handler is None and method.startswith(f"/{SERVICE}/"):
                # No (de)serialisers: bytes in, the stored bytes out.
                handler = grpc.unary_unary_rpc_method_handler(make_behavior(method))
                self.handlers[method] = handler
            return handler

    async def main() -> None:
        from banditd.server.scheduling import batch_helper_threads

        with batch_helper_threads(sched_batch):
            server = grpc.aio.server(options=[("grpc.max_send_message_length", -1),
                                              ("grpc.so_reuseport", 0)])
            server.add_generic_rpc_handlers((Generic(),))
            if tls is None:
                port = server.add_insecure_port("127.0.0.1:0")
            else:
                pair = ((tls / "server.key").read_bytes(), (tls / "server.pem").read_bytes())
                port = server.add_secure_port("127.0.0.1:0",
                                              grpc.ssl_server_credentials([pair]))
            await server.start()
        port_file.write_text(f"{port}\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


class EchoServer:
    """The echo server in its own process (``--serve-echo``)."""

    def __init__(self, directory: Path, work_us: float = 0.0, sched_batch: bool = False,
                 tls: TlsFiles | None = None) -> None:
        port_file = directory / "echo.port"
        self.tls_ca = tls.ca.read_bytes() if tls is not None else None
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_throughput",
                                      "--serve-echo", str(port_file),
                                      "--echo-work-us", str(work_us)]
                                     + (["--echo-sched-batch"] if sched_batch else [])
                                     + (["--echo-tls", str(tls.ca.parent)] if tls else []),
                                     cwd=ROOT)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("echo server did not start")
            time.sleep(0.02)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"
        self.pid = self.proc.pid

    def set_response(self, method: str, response: bytes) -> None:
        with channel(self.target, self.tls_ca, CHANNEL_OPTIONS) as ch:
            ch.unary_unary(CONTROL)(method.encode() + b"\n" + response, timeout=10)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


# ----------------------------------------------------------------------------- client
async def _closed_loop(cmd: dict) -> dict:
    """``cmd['loops']`` closed loops sending ``cmd['payloads']`` round robin to one method."""
    payloads: list[bytes] = cmd["payloads"]
    count = len(payloads)
    t_measure = cmd["start"] + cmd["warmup"]
    t_end = t_measure + cmd["duration"]
    latencies: list[float] = []
    completed = 0
    errors: list[str] = []
    clock = time.monotonic
    tls_ca, metadata = cmd.get("tls_ca"), cmd.get("metadata")
    aio_channel = grpc.aio.insecure_channel(cmd["target"], options=CHANNEL_OPTIONS) \
        if tls_ca is None else grpc.aio.secure_channel(
            cmd["target"], grpc.ssl_channel_credentials(tls_ca), options=CHANNEL_OPTIONS)
    async with aio_channel as ch:
        call = ch.unary_unary(cmd["method"])
        await ch.channel_ready()
        await asyncio.sleep(max(0.0, cmd["start"] - clock()))

        async def loop(i: int) -> None:
            nonlocal completed
            k = i
            while True:
                t0 = clock()
                if t0 >= t_end:
                    return
                try:
                    await call(payloads[k % count], timeout=cmd["timeout"], metadata=metadata)
                except grpc.RpcError as exc:
                    if len(errors) < 5:
                        errors.append(f"{exc.code().name}: {exc.details()}")
                    else:
                        errors.append("")
                    continue
                t1 = clock()
                if t0 >= t_measure:
                    latencies.append(t1 - t0)
                if t_measure <= t1 < t_end:
                    completed += 1
                k += 1

        await asyncio.gather(*(loop(i) for i in range(cmd["loops"])))
    return {"completed": completed, "errors": len(errors),
            "error_samples": [e for e in errors if e][:5],
            "latencies": np.array(latencies, dtype=np.float64)}


def _client_process(conn) -> None:
    """A client process: runs one measurement per command received, until None."""
    conn.send("ready")  # imports done: the first slice must not pay for them
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        conn.send(asyncio.run(_closed_loop(cmd)))


class ClientPool:
    """``size`` spawned client processes (spawn: no gRPC state inherited through fork)."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_process, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(120) or conn.recv() != "ready":
                self.close()
                raise RuntimeError("a client process did not start within 120 s")

    def run(self, processes: int, concurrency: int, base: dict) -> list[dict]:
        """Split ``concurrency`` loops over ``processes`` processes; one result each."""
        loops = [concurrency // processes + (1 if i < concurrency % processes else 0)
                 for i in range(processes)]
        for conn, n in zip(self.conns, loops, strict=False):
            conn.send(dict(base, loops=n))
        return [conn.recv() for conn in self.conns[:processes]]

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()


# ----------------------------------------------------------------------------- scenarios
@dataclass
class Scenario:
    name: str
    title: str
    method: str  # RPC name
    payloads: list[bytes]
    items: int = 1  # decisions or rewards per call
    points: list[tuple[int, int]] = field(default_factory=list)  # (concurrency, processes)


def _experiment(eid: str, k: int, policy: pb.Policy, dim: int = 0) -> pb.CreateExperimentRequest:
    return pb.CreateExperimentRequest(experiment=pb.Experiment(
        experiment_id=eid, arms=[pb.Arm(arm_id=f"arm-{i}") for i in range(k)], policy=policy,
        reward_type=pb.REWARD_TYPE_BINARY, context_dim=dim, seed=7))


class _WithMetadata:
    """A stub whose calls all carry ``metadata``."""

    def __init__(self, stub, metadata) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        return lambda request, **kw: method(request, metadata=self._metadata, **kw)


def build_scenarios(stub, quick: bool) -> list[Scenario]:
    """Create the experiments on banditd and pre-serialise each scenario's requests."""
    thompson = pb.Policy(thompson=pb.Policy.Thompson())
    stub.CreateExperiment(_experiment("tp-thompson-10", 10, thompson))
    stub.CreateExperiment(_experiment("tp-thompson-100", 100, thompson))
    stub.CreateExperiment(_experiment("tp-linucb-16x20", 20, pb.Policy(lin_ucb=pb.Policy.LinUcb()),
                                      dim=16))
    stub.CreateExperiment(_experiment("tp-rewards-10", 10, thompson))
    # Pacing: a budget that never runs out in a run; reservations (not settled here) expire
    # after 2 s, so the open set stays bounded while every bid still reserves and is logged.
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="tp-pacing", daily_budget=1e9, max_bid=10.0, reservation_ttl_seconds=2)))
    gen = np.random.default_rng(3)

    def contexts(n: int) -> list[list[float]]:
        return [list(map(float, row)) for row in gen.uniform(-1.0, 1.0, size=(n, 16))]

    def ser(messages) -> list[bytes]:
        return [m.SerializeToString() for m in messages]

    sel_t10 = pb.SelectArmRequest(experiment_id="tp-thompson-10")
    sel_t100 = pb.SelectArmRequest(experiment_id="tp-thompson-100")
    sel_lin = [pb.SelectArmRequest(experiment_id="tp-linucb-16x20", context=c)
               for c in contexts(64)]
    rewards = [pb.RecordRewardRequest(experiment_id="tp-rewards-10", arm_id=f"arm-{i % 10}",
                                      reward=float(i % 3 == 0)) for i in range(60)]

    def batch_select(items: list[pb.SelectArmRequest]) -> pb.BatchSelectArmsRequest:
        return pb.BatchSelectArmsRequest(requests=items)

    lin_batches = [batch_select([pb.SelectArmRequest(experiment_id="tp-linucb-16x20", context=c)
                                 for c in contexts(1000)]) for _ in range(4)]
    reward_batches = [pb.BatchRecordRewardsRequest(requests=rewards * (1000 // len(rewards))
                                                   + rewards[: 1000 % len(rewards)])]
    unary = [(1, 1), (8, 1), (32, 1), (64, 1), (32, 2), (64, 2)]
    batch = [(1, 1), (4, 1), (8, 1), (8, 2)]
    if quick:
        unary, batch = [(1, 1), (32, 1), (32, 2)], [(1, 1), (4, 1)]
    return [
        Scenario("select_thompson_k10", "SelectArm, Thompson K=10", "SelectArm",
                 ser([sel_t10]), 1, unary),
        Scenario("select_thompson_k100", "SelectArm, Thompson K=100", "SelectArm",
                 ser([sel_t100]), 1, unary),
        Scenario("select_linucb_d16_k20", "SelectArm, LinUCB d=16 K=20", "SelectArm",
                 ser(sel_lin), 1, unary),
        Scenario("record_reward", "RecordReward (explicit arm), Thompson K=10", "RecordReward",
                 ser(rewards), 1, unary),
        Scenario("pace_bid", "PaceBid (reserves and logs every bid)", "PaceBid",
                 ser([pb.PaceBidRequest(campaign_id="tp-pacing", base_bid=1.0 + i / 100)
                      for i in range(50)]), 1, unary),
        Scenario("batch_select_thompson_k10_b100", "BatchSelectArms x100, Thompson K=10",
                 "BatchSelectArms", ser([batch_select([sel_t10] * 100)]), 100, batch),
        Scenario("batch_select_thompson_k10_b1000", "BatchSelectArms x1000, Thompson K=10",
                 "BatchSelectArms", ser([batch_select([sel_t10] * 1000)]), 1000, batch),
        Scenario("batch_select_linucb_d16_k20_b1000", "BatchSelectArms x1000, LinUCB d=16 K=20",
                 "BatchSelectArms", ser(lin_batches), 1000, batch),
        Scenario("batch_record_rewards_b1000", "BatchRecordRewards x1000, Thompson K=10",
                 "BatchRecordRewards", ser(reward_batches), 1000, batch),
    ]


# ----------------------------------------------------------------------------- measurement
def _summary(results: list[dict], duration: float, items: int, cpu: float) -> dict:
    lat = np.concatenate([r["latencies"] for r in results]) * 1e6  # µs
    completed = sum(r["completed"] for r in results)
    qps = completed / duration
    row = {
        "qps": round(qps, 1),
        "calls": completed,
        "errors": sum(r["errors"] for r in results),
        "p50_us": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p90_us": round(float(np.percentile(lat, 90)), 1) if len(lat) else None,
        "p99_us": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "p999_us": round(float(np.percentile(lat, 99.9)), 1) if len(lat) else None,
        "server_cpu_us_per_call": round(cpu / completed * 1e6, 2) if completed else None,
    }
    if items > 1:
        row["items_per_s"] = round(qps * items)
    samples = [s for r in results for s in r["error_samples"]]
    if samples:
        row["error_samples"] = samples[:3]
    row["_cdf_us"] = np.quantile(lat, QUANTILES).round(1).tolist() if len(lat) else []
    return row


def measure(pool: ClientPool, target: str, pid: int, scenario: Scenario, concurrency: int,
            processes: int, warmup: float, duration: float,
            tls: TlsFiles | None = None) -> tuple[list[dict], float]:
    """One measurement slice (``warmup`` s of calls not counted, then ``duration`` s): the
    client processes' raw results and the server's CPU seconds over the ``duration``.
    ``tls``: TLS to the server, and the decide token sent with every call."""
    start = time.monotonic() + 0.3  # every client process is connected and waiting by then
    base = {"target": target, "method": f"/{SERVICE}/{scenario.method}",
            "payloads": scenario.payloads, "start": start, "warmup": warmup,
            "duration": duration, "timeout": 60.0,
            "tls_ca": tls.ca.read_bytes() if tls else None,
            "metadata": tls.metadata() if tls else None}
    box: dict = {}

    def sample_cpu() -> None:  # server CPU over exactly the measurement window
        time.sleep(max(0.0, start + warmup - time.monotonic()))
        c0 = process_cpu_seconds(pid)
        time.sleep(max(0.0, start + warmup + duration - time.monotonic()))
        box["cpu"] = process_cpu_seconds(pid) - c0

    import threading

    sampler = threading.Thread(target=sample_cpu)
    sampler.start()
    results = pool.run(processes, concurrency, base)
    sampler.join()
    return results, box["cpu"]


def capture_response(target: str, method: str, payload: bytes,
                     tls: TlsFiles | None = None) -> bytes:
    with channel(target, tls.ca.read_bytes() if tls else None, CHANNEL_OPTIONS) as ch:
        return ch.unary_unary(f"/{SERVICE}/{method}")(
            payload, timeout=60, metadata=tls.metadata() if tls else None)


def _paired_resamples(rounds: int, resamples: int, seed: int) -> np.ndarray:
    """A bootstrap over paired rounds: ``resamples`` rows of ``rounds`` round indices drawn
    with replacement (seeded); each row takes the same rounds from both servers."""
    return np.random.default_rng(seed).integers(0, rounds, size=(resamples, rounds))


def _central_95(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the resampled statistic."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def ratio_interval(a: list[int], b: list[int], resamples: int = 10_000,
                   seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of ``sum(a) / sum(b)`` from paired rounds: round ``i`` measured
    ``a[i]`` and ``b[i]`` (calls completed in its slice of each server, back to back), and
    the rounds are resampled with replacement (seeded). A slow moment of the shared machine
    lands on one round of both servers; what the rounds disagree on is the measurement's own
    spread, which this turns into an interval for the run's QPS ratio."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size < 2 or not y.all():
        raise ValueError("ratio_interval needs two or more paired rounds, none of b zero")
    picks = _paired_resamples(x.size, resamples, seed)
    return _central_95(x[picks].sum(axis=1) / y[picks].sum(axis=1))


def p99_ratio_interval(a: list[np.ndarray], b: list[np.ndarray], resamples: int = 2_000,
                       seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the p99 ratio (p99 of all of ``a``'s latencies / all of
    ``b``'s) from paired rounds: round ``i``'s latencies are ``a[i]`` and ``b[i]``, and the
    same resampled rounds (as in :func:`ratio_interval`) are taken from both. The latencies
    are not kept in the JSON, so runs are not pooled on this one."""
    if len(a) != len(b) or len(a) < 2 or not all(len(x) for x in (*a, *b)):
        raise ValueError("p99_ratio_interval needs two or more paired rounds with calls")
    ratios = [np.percentile(np.concatenate([a[k] for k in row]), 99)
              / np.percentile(np.concatenate([b[k] for k in row]), 99)
              for row in _paired_resamples(len(a), resamples, seed)]
    return _central_95(np.asarray(ratios))


def _interval_text(point: dict, ratio: str) -> str:
    """`` [low, high]`` of the point's ``<ratio>_ratio_ci95`` ("" without one)."""
    interval = point.get(f"{ratio}_ratio_ci95")
    return "" if interval is None else " [{}, {}]".format(*interval)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run(args) -> dict:
    data = Path(tempfile.mkdtemp(prefix="banditd-throughput-"))
    echo = banditd = pool = None
    report: dict = {}
    try:
        tls = make_tls(data / "tls") if args.tls else None
        secured: dict = {} if tls is None else {
            "tls_ca": tls.ca.read_bytes(), "tls_cert_file": tls.cert,
            "tls_key_file": tls.key, "auth_tokens_file": tls.tokens}
        banditd = LocalServer(data / "banditd", snapshot_interval_seconds=0,
                              log_level="WARNING", **secured)
        echo = EchoServer(data, args.echo_work_us, args.echo_sched_batch, tls)
        with channel(banditd.target, secured.get("tls_ca")) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            if tls is not None:  # setup calls are an administrator's
                stub = _WithMetadata(stub, tls.metadata(ADMIN_TOKEN))
            scenarios = build_scenarios(stub, args.quick)
        if args.only:
            scenarios = [s for s in scenarios if s.name in args.only]
        pool = ClientPool(max(p for s in scenarios for _, p in s.points))
        points = []
        total = sum(len(s.points) for s in scenarios)
        n = 0
        for scenario in scenarios:
            response = capture_response(banditd.target, scenario.method, scenario.payloads[0],
                                        tls)
            echo.set_response(f"/{SERVICE}/{scenario.method}", response)
            for concurrency, processes in scenario.points:
                n += 1
                point = {"scenario": scenario.name, "concurrency": concurrency,
                         "processes": processes, "response_bytes": len(response)}
                # ABBA slices: a load change on the (shared) machine hits both servers alike.
                slices = {"echo": ([], 0.0), "banditd": ([], 0.0)}
                round_calls: dict[str, list[int]] = {"echo": [], "banditd": []}
                round_latencies: dict[str, list[np.ndarray]] = {"echo": [], "banditd": []}
                part = args.duration / args.rounds
                for r in range(args.rounds):
                    order = ["echo", "banditd"] if (n + r) % 2 == 0 else ["banditd", "echo"]
                    for name in order:
                        server = echo if name == "echo" else banditd
                        results, cpu = measure(pool, server.target, server.pid, scenario,
                                               concurrency, processes, args.warmup, part, tls)
                        slices[name] = (slices[name][0] + results, slices[name][1] + cpu)
                        round_calls[name].append(sum(r["completed"] for r in results))
                        round_latencies[name].append(
                            np.concatenate([r["latencies"] for r in results]))
                for name, (results, cpu) in slices.items():
                    point[name] = _summary(results, args.duration, scenario.items, cpu)
                b, e = point["banditd"], point["echo"]
                point["qps_ratio"] = _ratio(b["qps"], e["qps"])
                point["p99_ratio"] = _ratio(b["p99_us"], e["p99_us"])
                point["round_calls"] = round_calls
                if args.rounds > 1:
                    low, high = ratio_interval(round_calls["banditd"], round_calls["echo"])
                    point["qps_ratio_ci95"] = [round(low, 3), round(high, 3)]
                    low, high = p99_ratio_interval(round_latencies["banditd"],
                                                   round_latencies["echo"])
                    point["p99_ratio_ci95"] = [round(low, 3), round(high, 3)]
                points.append(point)
                extra = f" {b['items_per_s']:>9,}/s" if "items_per_s" in b else ""
                print(f"[{n:>2}/{total}] {scenario.name:<34} c={concurrency:<3} p={processes} | "
                      f"echo {e['qps']:>8.0f} qps p99 {e['p99_us']:>8.0f} µs | banditd "
                      f"{b['qps']:>8.0f} qps p99 {b['p99_us']:>8.0f} µs{extra} | "
                      f"ratio qps {point['qps_ratio']}{_interval_text(point, 'qps')}"
                      f" p99 {point['p99_ratio']}{_interval_text(point, 'p99')}"
                      + (f" ERRORS {b['errors']}+{e['errors']}" if b["errors"] or e["errors"]
                         else ""), flush=True)
        report = {
            "machine": machine(),
            "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                         "rounds": args.rounds, "echo_work_us": args.echo_work_us,
                         "echo_sched_batch": args.echo_sched_batch, "tls": args.tls,
                         "quick": args.quick, "banditd": "durability=os, snapshots off, "
                         "single process", "client": "grpc.aio closed loop, pre-serialised "
                         "requests, replies not decoded; concurrency = total in-flight calls "
                         "split over the client processes"},
            "scenarios": {s.name: {"title": s.title, "method": s.method, "items": s.items}
                          for s in scenarios},
            "points": points,
        }
    finally:
        if pool is not None:
            pool.close()
        if echo is not None:
            echo.stop()
        if banditd is not None:
            banditd.stop()
        shutil.rmtree(data, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------- output
def plot(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = report["scenarios"]
    names = list(scenarios)
    cols = 2
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        items = scenarios[name]["items"]
        for processes, style in ((1, "-"), (2, "--")):
            pts = sorted((p for p in report["points"] if p["scenario"] == name
                          and p["processes"] == processes), key=lambda p: p["concurrency"])
            if not pts:
                continue
            x = [p["concurrency"] for p in pts]
            for server, color in (("echo", "tab:gray"), ("banditd", "tab:blue")):
                y = [p[server]["qps"] * items for p in pts]
                ax.plot(x, y, style, marker="o", color=color,
                        label=f"{server}, {processes} client proc")
        ax.set_xscale("log", base=2)
        ax.set_title(scenarios[name]["title"], fontsize=9)
        ax.set_xlabel("in-flight calls")
        ax.set_ylabel("decisions/s" if items > 1 and "select" in name else
                      ("rewards/s" if items > 1 else "calls/s"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"banditd vs grpc.aio echo — {report['machine']['cpu_model']}, "
                 f"{report['machine']['cpus']} CPUs", fontsize=10)
    fig.tight_layout()
    qps_png = out.with_name(out.stem + "_qps.png")
    fig.savefig(qps_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in report["points"] if p["scenario"] == "select_thompson_k10"
           and p["processes"] == 1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for p, color in zip(pts, colors, strict=False):
        for server, style in (("echo", ":"), ("banditd", "-")):
            cdf = p[server]["_cdf_us"]
            if cdf:
                ax.plot(cdf, QUANTILES[: len(cdf)], style, color=color,
                        label=f"{server}, {p['concurrency']} in flight")
    ax.set_xscale("log")
    ax.set_xlabel("latency, µs")
    ax.set_ylabel("fraction of calls")
    ax.set_title("SelectArm, Thompson K=10: latency CDF (1 client process)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    cdf_png = out.with_name(out.stem + "_latency_cdf.png")
    fig.savefig(cdf_png, dpi=110)
    plt.close(fig)
    return [qps_png, cdf_png]


def write(report: dict, out: Path) -> None:
    clean = json.loads(json.dumps(report))
    for p in clean["points"]:  # keep the CDFs of the headline scenario only
        for server in ("echo", "banditd"):
            if p["scenario"] != "select_thompson_k10":
                p[server].pop("_cdf_us", None)
            elif "_cdf_us" in p[server]:
                p[server]["cdf_us"] = p[server].pop("_cdf_us")
    clean["cdf_quantiles"] = QUANTILES.round(3).tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(clean, indent=1) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/grpc_throughput.json"))
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=0.3,
                    help="unmeasured seconds before each slice")
    ap.add_argument("--rounds", type=int, default=2,
                    help="each point is measured in 2 x rounds alternating slices (ABBA...)")
    ap.add_argument("--quick", action="store_true", help="fewer points, 1 s each (smoke run)")
    ap.add_argument("--only", nargs="*", help="scenario names to run")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--echo-work-us", type=float, default=0.0,
                    help="the echo's handlers spin this many µs of CPU before answering (a "
                    "reference doing as much work as banditd's handler; default 0: bare echo)")
    ap.add_argument("--echo-sched-batch", action="store_true",
                    help="run the echo's gRPC threads under SCHED_BATCH as banditd does by "
                    "default (BANDITD_BATCH_SCHEDULE_IO_THREADS): the like-for-like reference; "
                    "default: a bare echo with default scheduling")
    ap.add_argument("--tls", action="store_true",
                    help="both servers speak TLS and banditd checks a bearer token on every "
                    "call (the client sends it to both)")
    ap.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--echo-tls", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_echo:
        serve_echo(args.serve_echo, args.echo_work_us, args.echo_sched_batch, args.echo_tls)
        return 0
    if args.quick and args.duration == 3.0:
        args.duration, args.warmup, args.rounds = 1.0, 0.2, 1
    started = time.monotonic()
    report = run(args)
    report["settings"]["wall_seconds"] = round(time.monotonic() - started, 1)
    write(report, args.out)
    print(f"wrote {args.out}")
    if not args.no_plots:
        for png in plot(report, args.out):
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
