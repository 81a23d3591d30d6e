"""Multi-replica benchmark: decisions/s of ``banditd serve --workers 2`` against 1 worker.

``--workers 2`` is two replicas sharing one log in an embedded engine (redis-server, started
and owned by the supervisor); ``--workers 1`` is a single server with its own log.

Load: ``BatchSelectArms`` of ``--batch`` requests (Thompson sampling, K = 10 arms, no context)
from ``--clients`` client processes (grpc.aio), closed loop, ``--concurrency`` calls in
flight per client process. Each client process opens one connection to every replica (it
opens connections until the decision ids it gets back have named each replica: SO_REUSEPORT
balances connections, and a real fleet of clients has many) and binds its closed loops to
them evenly (loop k uses connection k mod replicas), like independent callers. The request is
serialised once and replies are counted, not decoded (one is checked first): the client
shares the 2 cores with the servers, so it should take as little as it can. Warm-up
``--warmup`` s, then ``--seconds`` s measured; decisions/s = decisions returned in the
window / window. CPU seconds of the clients, of every replica and of the engine in the window
are reported too: on a 2-core machine the clients compete with the servers.

The development machine is shared: before each run the benchmark waits (``--max-wait``) until
other processes use less than ``--quiet-cores``, and it reports the CPU other processes used
during each run (``other_processes_cpu_cores``). 1 and 2 workers alternate, and the ratio is
the median over the pairs in which neither run competed with other work (all pairs if none).

Propagation (``--workers 2`` only): with the same load running, a probe records a reward on
replica 0 (explicit arm, a separate 2-arm experiment, every 50 ms) and polls replica 1
(``SelectArm`` on that experiment, 1 ms apart) until its ``model_version`` shows the reward:
the time from replica 0's answer to replica 1's is an upper bound of the propagation delay
(it includes one poll call).

    python -m benchmarks.workers_bench [--out benchmarks/results/workers.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import machine, wait_serving

EXPERIMENT = "bench"
ARMS = 10


class Workers:
    """``banditd serve --workers N`` in its own process group; bounded; stopped by the caller."""

    def __init__(self, data_dir: Path, n: int) -> None:
        port_file = data_dir.parent / f"{data_dir.name}.port"
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "banditd", "serve", "--workers", str(n), "--port", "0",
             "--port-file", str(port_file), "--data-dir", str(data_dir),
             "--set", "snapshot_interval_seconds=0"],
            stderr=open(self.log, "a"), start_new_session=True)  # noqa: SIM115
        deadline = time.monotonic() + 600
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        wait_serving(f"127.0.0.1:{self.port}", self.proc, deadline, self.log)
        self.pids = [self.proc.pid]
        self.engine_pids: list[int] = []
        if n > 1:  # the replicas, and the engine the supervisor started (its CPU apart)
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            self.pids, self.engine_pids = [], []
            for pid in (int(p) for p in children.split()):
                # (the engine rewrites its command line: "<binary> unixsocket:<path>")
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                engine = command.split(b" ")[0].endswith((b"redis-server", b"valkey-server"))
                (self.engine_pids if engine else self.pids).append(pid)
            self.pids.sort(key=_replica_index)

    def cpu_seconds(self, pids: list[int] | None = None) -> list[float]:
        """user + system CPU seconds of each serving process (or of ``pids``) so far."""
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for pid in self.pids if pids is None else pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        return out

    def stop(self) -> None:
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _replica_index(pid: int) -> int:
    """The replica index in a replica process's command line (``replica --index i``)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(args[args.index(b"--index") + 1]) if b"--index" in args else 0


def worker_of(decision_id: str) -> int:
    """The replica that made a decision: its id starts with ``w<index>.`` under the
    supervisor (a single server's ids have a random prefix: 0)."""
    name = decision_id.split(".", 1)[0]
    return int(name[1:]) if name[:1] == "w" and name[1:].isdigit() else 0


WHO = pb.SelectArmRequest(experiment_id="probe")  # a cheap call naming its replica


def connect(port: int, n: int) -> dict[int, grpc.Channel]:
    """One sync channel per replica (new connections until each replica has answered)."""
    channels: dict[int, grpc.Channel] = {}
    for attempt in range(500):
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("banditd.bench.attempt", attempt), ("grpc.use_local_subchannel_pool", 1)])
        index = worker_of(_answered(lambda ch=ch: pb_grpc.DecisionServiceStub(ch).SelectArm(
            WHO, timeout=10)).decision_id)
        if index in channels:
            ch.close()
        else:
            channels[index] = ch
        if len(channels) == n:
            return channels
    raise RuntimeError(f"reached workers {sorted(channels)} of {n}")


def _answered(call, seconds: float = 30.0):
    """``call()``'s reply, retried while it is NOT_FOUND: an experiment created on one
    replica reaches the others within the propagation delay."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores), /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``limit`` cores over
    a second; returns the cores they used in the last sample."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        used = machine_busy_seconds() - before
        if used < limit or time.monotonic() > deadline:
            return used
        time.sleep(4.0)


# -- client process ------------------------------------------------------------------------


async def _client(port: int, workers: int, batch: int, concurrency: int, start: float,
                  warmup: float, seconds: float) -> dict:
    channels: dict[int, grpc.aio.Channel] = {}
    attempt = 0
    while len(channels) < workers:
        attempt += 1
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("banditd.bench.client", f"{os.getpid()}-{attempt}"),
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)])
        reply = await pb_grpc.DecisionServiceStub(ch).SelectArm(WHO, timeout=10)
        index = worker_of(reply.decision_id)
        if index in channels:
            await ch.close()
        else:
            channels[index] = ch
    # The client costs as little CPU as it can, since it shares the machine with the servers:
    # the request is serialised once and replies are counted, not decoded (one is decoded
    # and checked first).
    calls = [channels[i].unary_unary("/decision.v1.DecisionService/BatchSelectArms")
             for i in sorted(channels)]
    request = pb.BatchSelectArmsRequest(
        requests=[pb.SelectArmRequest(experiment_id=EXPERIMENT)] * batch).SerializeToString()
    for call in calls:
        reply = pb.BatchSelectArmsResponse.FromString(await call(request, timeout=60))
        assert len(reply.responses) == batch and reply.responses[0].decision_id
    t0, t1 = start + warmup, start + warmup + seconds
    counts = [0] * len(calls)
    cpu: dict[str, float] = {}

    async def loop(k: int) -> None:
        i = k % len(calls)  # bound to one connection, like one of many independent callers
        while time.time() < t1:
            await calls[i](request, timeout=60)  # an error raises: nothing is counted wrong
            if t0 <= time.time() < t1:
                counts[i] += batch

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, t0 - time.time()))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu["start"] = ru.ru_utime + ru.ru_stime
        await asyncio.sleep(max(0.0, t1 - time.time()))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu["end"] = ru.ru_utime + ru.ru_stime

    await asyncio.sleep(max(0.0, start - time.time()))
    await asyncio.gather(*(loop(k) for k in range(concurrency)), cpu_marks())
    for ch in channels.values():
        await ch.close()
    return {"decisions": sum(counts), "per_worker": counts,
            "cpu_seconds": cpu["end"] - cpu["start"]}


def _client_main(args: tuple, out: mp.Queue) -> None:
    out.put(asyncio.run(_client(*args)))


# -- propagation probe ---------------------------------------------------------------------


def _probe(port: int, stop: threading.Event, out: list[float]) -> None:
    channels = connect(port, 2)
    writer = pb_grpc.DecisionServiceStub(channels[0])
    reader = pb_grpc.DecisionServiceStub(channels[1])
    # A decision's model_version counts the rewards applied to its experiment: a cheap,
    # local call on replica 1 that shows when replica 0's reward has arrived there.
    # Only the probe rewards this experiment: after the n-th reward its version is n.
    request = pb.SelectArmRequest(experiment_id="probe")
    target = writer.SelectArm(request).model_version
    while not stop.is_set():
        writer.RecordReward(pb.RecordRewardRequest(experiment_id="probe", arm_id="x", reward=1))
        acked = time.perf_counter()
        target += 1
        while reader.SelectArm(request).model_version < target:
            time.sleep(0.001)
        out.append(time.perf_counter() - acked)
        stop.wait(0.05)
    for ch in channels.values():
        ch.close()


# -- one scenario --------------------------------------------------------------------------


def run(workers: int, batch: int, clients: int, concurrency: int, warmup: float,
        seconds: float, probe: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="banditd-workers-") as tmp:
        server = Workers(Path(tmp) / "data", workers)
        try:
            setup = grpc.insecure_channel(f"127.0.0.1:{server.port}")
            stub = pb_grpc.DecisionServiceStub(setup)
            stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
                experiment_id=EXPERIMENT, arms=[pb.Arm(arm_id=f"a{i}") for i in range(ARMS)],
                policy=pb.Policy(thompson=pb.Policy.Thompson()),
                reward_type=pb.REWARD_TYPE_BINARY, seed=1)))
            stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
                experiment_id="probe", arms=[pb.Arm(arm_id="x"), pb.Arm(arm_id="y")],
                policy=pb.Policy(thompson=pb.Policy.Thompson()),
                reward_type=pb.REWARD_TYPE_BINARY, seed=2)))
            for ch in connect(server.port, workers).values():  # every replica has both
                ch.close()
            setup.close()
            ctx = mp.get_context("spawn")
            results: mp.Queue = ctx.Queue()
            start = time.time() + 3.0  # clients connect first, then start together
            procs = [ctx.Process(target=_client_main, args=(
                (server.port, workers, batch, concurrency, start, warmup, seconds), results))
                for _ in range(clients)]
            for p in procs:
                p.start()
            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=_probe, args=(server.port, stop, latencies))
            time.sleep(max(0.0, start + warmup - time.time()))
            cpu0 = server.cpu_seconds()
            engine0 = sum(server.cpu_seconds(server.engine_pids))
            busy0 = machine_busy_seconds()
            if probe:
                prober.start()
            time.sleep(max(0.0, start + warmup + seconds - time.time()))
            cpu1 = server.cpu_seconds()
            engine1 = sum(server.cpu_seconds(server.engine_pids))
            busy1 = machine_busy_seconds()
            stop.set()
            if probe:
                prober.join(timeout=60)
            out = [results.get(timeout=120) for _ in procs]
            for p in procs:
                p.join(timeout=60)
        finally:
            server.stop()
    decisions = sum(o["decisions"] for o in out)
    result = {
        "workers": workers, "batch": batch, "clients": clients,
        "calls_in_flight_per_client": concurrency, "seconds": seconds,
        "decisions": decisions, "decisions_per_s": round(decisions / seconds),
        "decisions_per_worker": [sum(o["per_worker"][i] for o in out) for i in range(workers)],
        "client_cpu_cores": round(sum(o["cpu_seconds"] for o in out) / seconds, 2),
        "server_cpu_cores": [round((b - a) / seconds, 2) for a, b in zip(cpu0, cpu1, strict=True)],
        "engine_cpu_cores": round((engine1 - engine0) / seconds, 2),
        # CPU the servers (every replica and the engine) spent per decision: unlike
        # decisions/s, it does not depend on how much of the machine the others left over
        "server_cpu_us_per_decision": round(
            (sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) + engine1 - engine0)
            / max(decisions, 1) * 1e6, 2),
    }
    # The machine is shared: CPU used in the window by processes other than this benchmark
    # (its servers, its clients, and this process's probe, which is small) tells whether a
    # run competed with someone else's work.
    ours = sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) + engine1 - engine0 + \
        sum(o["cpu_seconds"] for o in out)
    result["other_processes_cpu_cores"] = round(max(0.0, (busy1 - busy0 - ours) / seconds), 2)
    if probe:
        ms = sorted(x * 1000 for x in latencies)
        result["propagation_ms"] = {
            "probes": len(ms), "p50": round(statistics.median(ms), 2),
            "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2), "max": round(ms[-1], 2)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/workers.json")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4, help="calls in flight per client")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per scenario (1 and 2 workers alternate; medians kept)")
    ap.add_argument("--batches", default="1000,100", help="batch sizes, comma-separated")
    ap.add_argument("--quiet-cores", type=float, default=0.25,
                    help="a run is quiet if other processes used fewer cores than this")
    ap.add_argument("--max-wait", type=float, default=120.0,
                    help="seconds to wait for a quiet machine before each run")
    ap.add_argument("--probe-runs", type=int, default=3, help="runs with the propagation probe")
    ap.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.repeats, args.probe_runs = 2.0, 1.0, 1, 1
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        # 1 and 2 workers alternate, so that a change in the machine's other load hits both
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in (1, 2):
                wait_quiet(args.quiet_cores, args.max_wait)
                r = run(workers, batch, args.clients, args.concurrency, args.warmup, args.seconds)
                runs[workers].append(r)
                print(json.dumps(r), flush=True)
        pairs = list(zip(runs[1], runs[2], strict=True))
        ratios = [b["decisions_per_s"] / a["decisions_per_s"] for a, b in pairs]
        # pairs in which other processes took less than quiet_cores during both runs
        quiet = [x for x, (a, b) in zip(ratios, pairs, strict=True)
                 if max(a["other_processes_cpu_cores"], b["other_processes_cpu_cores"])
                 < args.quiet_cores]
        for workers in (1, 2):
            median = sorted(runs[workers], key=lambda r: r["decisions_per_s"])[args.repeats // 2]
            rows.append({**median, "all_runs_decisions_per_s":
                         [r["decisions_per_s"] for r in runs[workers]]})
        ratio = statistics.median(quiet or ratios)
        rows.append({"batch": batch, "ratio_2_vs_1": round(ratio, 2),
                     "ratio_of_each_pair": [round(x, 2) for x in ratios],
                     "ratio_of_quiet_pairs": [round(x, 2) for x in quiet],
                     "ratio_from": "quiet pairs" if quiet else "all pairs (none was quiet)"})
        print(f"batch {batch}: 2 workers / 1 worker = {ratio:.2f}x (pairs: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; quiet: "
              f"{', '.join(f'{x:.2f}' for x in quiet) or 'none'})", flush=True)
    probes = []
    for _ in range(args.probe_runs):
        wait_quiet(args.quiet_cores, args.max_wait)
        probes.append(run(2, 1000, args.clients, args.concurrency, args.warmup, args.seconds,
                          probe=True))
        print(json.dumps(probes[-1]), flush=True)
    result = {
        "machine": {**machine(), "load_average_at_end": os.getloadavg()},
        "client": f"{args.clients} client processes (grpc.aio), {args.concurrency} "
                  "BatchSelectArms in flight each (closed loops), one connection per worker each, "
                  "loops bound to connections evenly; request serialised once, replies counted "
                  "(not decoded)",
        "throughput": rows,
        "propagation_under_load": probes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
