"""Instructions per unary SelectArm call: banditd against the bare echo, counted by callgrind.

    python -m benchmarks.instructions [--calls 4000] [--concurrency 8] [--repeats 3]
                                      [--cache-sim] [--out benchmarks/results/instructions.json]

QPS ratios on a small shared VM move by ±5–10% between runs, more than most single changes to
the hot path are worth. Instructions executed per call do not: both servers (the same echo as
``grpc_throughput.py``, and ``banditd serve`` with its default settings, periodic snapshots
off) run under ``valgrind --tool=callgrind`` with instrumentation off; a grpc.aio client sends
``--calls`` / 2 warm-up calls of SelectArm (Thompson K = 10), then instrumentation is switched
on (``callgrind_control``) for ``--calls`` calls at ``--concurrency`` in flight, and the
server's user-space instructions in that window (every thread) are divided by the calls.
Averaged over the six points of a long ``grpc_throughput`` run, banditd's QPS ratio to the
echo comes out near echo instructions / banditd instructions; single points spread several
percent either side.

The count of one window is not fixed: gRPC's threads and the event loop interleave
differently from one run to the next (under callgrind too), and whole runs of the same echo
can differ by about 5%. So each server is counted ``--repeats`` times, the two alternating
(echo first, then banditd first, ...), and the JSON keeps every count; the median of each
server is its figure. ``--cache-sim`` adds callgrind's simulated first-level and last-level
cache misses per call to each window (a model of the cache, not this CPU's counters, which
the VM does not expose).

Under callgrind a server runs ≈ 50× slower, which changes what is time-based: the decision
log is written every ``decision_log_delay_seconds``, so it is set to 1 s here (≈ 100
decisions per write, as 25 ms give at native speed) instead of 25 ms (≈ 3 per write). Kernel
time (system calls, networking) is not counted. Needs valgrind (``apt install valgrind``);
without it the script says so and exits with status 2. Takes a few minutes (banditd loads its
compiled kernels under callgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from benchmarks.grpc_throughput import CONTROL, SERVICE
from benchmarks.local_server import ROOT, free_port, machine, stop_process, wait_serving

METHOD = f"/{SERVICE}/SelectArm"
EXPERIMENT = pb.Experiment(experiment_id="instr-thompson-10",
                           arms=[pb.Arm(arm_id=f"arm-{i}") for i in range(10)],
                           policy=pb.Policy(thompson=pb.Policy.Thompson()),
                           reward_type=pb.REWARD_TYPE_BINARY, seed=7)
REQUEST = pb.SelectArmRequest(experiment_id=EXPERIMENT.experiment_id).SerializeToString()


def event_totals(dump: Path) -> dict[str, int]:
    """The events counted in a callgrind dump, by name (its ``events:`` and ``totals:``
    lines; a dump made by ``callgrind_control -d`` also has a ``summary:`` line, of the whole
    run): ``Ir`` (instructions) alone, or with ``--cache-sim=yes`` also the simulated cache
    misses (``I1mr``, ``D1mr``, ``D1mw``, ``ILmr``, ``DLmr``, ``DLmw``)."""
    names = ["Ir"]
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("totals:"):
            return dict(zip(names, map(int, line.split()[1:]), strict=True))
    raise ValueError(f"{dump}: no totals line")


def totals(dump: Path) -> int:
    """The instructions counted in a callgrind dump."""
    return event_totals(dump)["Ir"]


def summarise(rows: list[dict]) -> dict:
    """One server's counted windows: each window, and the median, lowest and highest count
    per call (the median is the server's figure)."""
    per_call = sorted(row["instructions_per_call"] for row in rows)
    return {"windows": rows, "instructions_per_call": int(statistics.median_low(per_call)),
            "lowest_per_call": per_call[0], "highest_per_call": per_call[-1]}


class Callgrind:
    """A server process under callgrind, instrumentation off until :meth:`count`."""

    def __init__(self, name: str, args: list[str], directory: Path,
                 cache_sim: bool = False) -> None:
        self.name = name
        self.directory = directory
        self.log = directory / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                 f"--cache-sim={'yes' if cache_sim else 'no'}",
                 f"--callgrind-out-file={directory}/{name}.%p.out", *args],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.pid: int | None = None

    def find_pid(self, deadline: float) -> int:
        while self.pid is None:
            found = list(self.directory.glob(f"{self.name}.*.out"))
            if found:
                self.pid = int(found[0].name.split(".")[1])
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start under callgrind; see {self.log}")
            else:
                time.sleep(0.1)
        return self.pid

    def control(self, *flags: str) -> None:
        subprocess.run(["callgrind_control", *flags, str(self.pid)], check=True,
                       capture_output=True, timeout=120)

    def count(self, target: str, calls: int, concurrency: int) -> dict:
        """Instructions of ``calls`` SelectArm calls after a warm-up of half as many."""
        drive(target, calls // 2, concurrency)
        self.control("-z")
        self.control("-i", "on")
        started = time.perf_counter()
        drive(target, calls, concurrency)
        seconds = time.perf_counter() - started
        self.control("-i", "off")
        self.control("-d", "measured")
        dump = max(self.directory.glob(f"{self.name}.{self.pid}.out.*"),
                   key=lambda p: int(p.suffix[1:]))  # dumps are numbered .1, .2, ...
        counted = event_totals(dump)
        row = {"calls": calls, "instructions": counted["Ir"],
               "instructions_per_call": round(counted["Ir"] / calls),
               "wall_seconds_under_callgrind": round(seconds, 1)}
        if "I1mr" in counted:  # --cache-sim: callgrind's simulated cache misses per call
            row["cache_misses_per_call"] = {
                "L1_instruction": round(counted["I1mr"] / calls),
                "L1_data": round((counted["D1mr"] + counted["D1mw"]) / calls),
                "last_level": round((counted["ILmr"] + counted["DLmr"] + counted["DLmw"])
                                    / calls, 1)}
        return row

    def stop(self) -> None:
        stop_process(self.proc)


def drive(target: str, calls: int, concurrency: int) -> None:
    """``calls`` SelectArm calls, ``concurrency`` in flight, over one grpc.aio channel."""

    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(METHOD)
            left = [calls]

            async def loop() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await call(REQUEST, timeout=300)

            await asyncio.gather(*(loop() for _ in range(concurrency)))

    asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3,
                    help="windows counted per server, alternating the two (median reported)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also count callgrind's simulated cache misses (slower)")
    ap.add_argument("--decision-log-delay", type=float, default=1.0,
                    help="banditd's decision_log_delay_seconds under callgrind (see above)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/instructions.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions.py needs valgrind (callgrind); not found", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="banditd-instructions-"))
    servers: list[Callgrind] = []
    try:
        port = free_port()
        banditd = Callgrind("banditd", [
            sys.executable, "-m", "banditd", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(work / "data"), "--set", "snapshot_interval_seconds=0",
            "--set", "log_level=WARNING",
            "--set", f"decision_log_delay_seconds={args.decision_log_delay}"], work,
            args.cache_sim)
        servers.append(banditd)
        port_file = work / "echo.port"
        echo = Callgrind("echo", [sys.executable, "-m", "benchmarks.grpc_throughput",
                                  "--serve-echo", str(port_file)], work, args.cache_sim)
        servers.append(echo)
        deadline = time.monotonic() + 1200
        print("starting both servers under callgrind (banditd loads its kernels: minutes)",
              flush=True)
        banditd.find_pid(deadline)
        echo.find_pid(deadline)
        target = f"127.0.0.1:{port}"
        wait_serving(target, banditd.proc, deadline, banditd.log)
        with grpc.insecure_channel(target) as ch:
            ch.unary_unary(f"/{SERVICE}/CreateExperiment")(
                pb.CreateExperimentRequest(experiment=EXPERIMENT).SerializeToString(),
                timeout=300)
            answer = ch.unary_unary(METHOD)(REQUEST, timeout=300)
        while not port_file.exists() or not port_file.read_text().strip():
            if echo.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the echo server did not start; see {echo.log}")
            time.sleep(0.1)
        echo_target = f"127.0.0.1:{int(port_file.read_text())}"
        with grpc.insecure_channel(echo_target) as ch:
            ch.unary_unary(CONTROL)(METHOD.encode() + b"\n" + answer, timeout=300)
        report: dict = {"machine": machine(),
                        "settings": {"calls": args.calls, "concurrency": args.concurrency,
                                     "repeats": args.repeats, "cache_sim": args.cache_sim,
                                     "scenario": "SelectArm, Thompson K=10",
                                     "banditd": "durability=os, snapshots off, "
                                                "decision_log_delay_seconds="
                                                f"{args.decision_log_delay}",
                                     "echo": "bare grpc.aio echo, same response bytes"},
                        "servers": {}}
        pairs = [(echo, echo_target), (banditd, target)]
        counts: dict[str, list[dict]] = {echo.name: [], banditd.name: []}
        for repeat in range(args.repeats):
            for server, where in pairs if repeat % 2 == 0 else pairs[::-1]:
                print(f"{server.name} ({repeat + 1}/{args.repeats}): {args.calls} calls at "
                      f"{args.concurrency} in flight ...", flush=True)
                row = server.count(where, args.calls, args.concurrency)
                counts[server.name].append(row)
                print(f"{server.name}: {row['instructions_per_call']:,} instructions per call",
                      flush=True)
        for name, rows in counts.items():
            report["servers"][name] = summarise(rows)
        e = report["servers"]["echo"]["instructions_per_call"]
        b = report["servers"]["banditd"]["instructions_per_call"]
        report["banditd_above_echo_per_call"] = b - e
        report["echo_over_banditd"] = round(e / b, 3)
        print(f"medians: echo {e:,}, banditd {b:,}: banditd {b - e:+,} instructions per call "
              f"above the echo (echo / banditd = {e / b:.3f})")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
