"""Instructions per unary SelectArm call: banditd against the bare echo, counted by callgrind.

    python benchmarks/instructions.py [--calls 4000] [--concurrency 8]
                                      [--out benchmarks/results/instructions.json]

QPS ratios on a small shared VM move by ±5–10% between runs, more than most single changes to
the hot path are worth. Instructions executed per call do not: both servers (the same echo as
``grpc_throughput.py``, and ``banditd serve`` with its default settings, periodic snapshots
off) run under ``valgrind --tool=callgrind`` with instrumentation off; a grpc.aio client sends
``--calls`` / 2 warm-up calls of SelectArm (Thompson K = 10), then instrumentation is switched
on (``callgrind_control``) for ``--calls`` calls at ``--concurrency`` in flight, and the
server's user-space instructions in that window (every thread) are divided by the calls. On
the development VM both servers' CPU per call followed these counts: banditd's QPS ratio to
the echo was about echo instructions / banditd instructions.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "proto")]

from grpc_throughput import CONTROL, SERVICE, machine  # noqa: E402
from local_server import free_port, stop_process, wait_serving  # noqa: E402

from decision.v1 import decision_pb2 as pb  # noqa: E402

METHOD = f"/{SERVICE}/SelectArm"
EXPERIMENT = pb.Experiment(experiment_id="instr-thompson-10",
                           arms=[pb.Arm(arm_id=f"arm-{i}") for i in range(10)],
                           policy=pb.Policy(thompson=pb.Policy.Thompson()),
                           reward_type=pb.REWARD_TYPE_BINARY, seed=7)
REQUEST = pb.SelectArmRequest(experiment_id=EXPERIMENT.experiment_id).SerializeToString()


def totals(dump: Path) -> int:
    """The instructions counted in a callgrind dump (its ``totals:`` line; a dump made by
    ``callgrind_control -d`` also has a ``summary:`` line, of the whole run)."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"{dump}: no totals line")


class Callgrind:
    """A server process under callgrind, instrumentation off until :meth:`count`."""

    def __init__(self, name: str, args: list[str], directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.log = directory / f"{name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no",
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
                   key=lambda p: p.stat().st_mtime)
        instructions = totals(dump)
        return {"calls": calls, "instructions": instructions,
                "instructions_per_call": round(instructions / calls),
                "wall_seconds_under_callgrind": round(seconds, 1)}

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
    ap.add_argument("--decision-log-delay", type=float, default=1.0,
                    help="banditd's decision_log_delay_seconds under callgrind (see above)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "instructions.json")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions.py needs valgrind (callgrind); not found", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="banditd-instructions-"))
    servers: list[Callgrind] = []
    try:
        port = free_port()
        banditd = Callgrind("banditd", [
            sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(work / "data"), "--set", "snapshot_interval_seconds=0",
            "--set", "log_level=WARNING",
            "--set", f"decision_log_delay_seconds={args.decision_log_delay}"], work)
        servers.append(banditd)
        port_file = work / "echo.port"
        echo = Callgrind("echo", [sys.executable, str(HERE / "grpc_throughput.py"),
                                  "--serve-echo", str(port_file)], work)
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
                                     "scenario": "SelectArm, Thompson K=10",
                                     "banditd": "durability=os, snapshots off, "
                                                "decision_log_delay_seconds="
                                                f"{args.decision_log_delay}",
                                     "echo": "bare grpc.aio echo, same response bytes"},
                        "servers": {}}
        for server, where in ((echo, echo_target), (banditd, target)):
            print(f"{server.name}: {args.calls} calls at {args.concurrency} in flight ...",
                  flush=True)
            report["servers"][server.name] = row = server.count(where, args.calls,
                                                                args.concurrency)
            print(f"{server.name}: {row['instructions_per_call']:,} instructions per call",
                  flush=True)
        e = report["servers"]["echo"]["instructions_per_call"]
        b = report["servers"]["banditd"]["instructions_per_call"]
        report["banditd_above_echo_per_call"] = b - e
        report["echo_over_banditd"] = round(e / b, 3)
        print(f"banditd {b - e:+,} instructions per call above the echo "
              f"(echo / banditd = {e / b:.3f})")
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
