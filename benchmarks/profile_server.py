"""Profile banditd under load with py-spy: where does a request's server time go?

    python -m benchmarks.profile_server [--scenario select_thompson_k10] [--seconds 10]
                                        [--concurrency 8] [--out benchmarks/results/profile]

Starts ``banditd serve`` on 127.0.0.1, drives one scenario of ``grpc_throughput.py`` with the
same closed-loop client, and attaches ``py-spy record`` to the server for ``--seconds``
(Python frames, sampled without pausing the server; ``--native`` adds C/Cython frames and
pauses it per sample). Writes ``<out>/<scenario>.raw`` (collapsed stacks: feed them to
``flamegraph.pl`` or speedscope) and ``<out>/<scenario>.txt`` (the shares of busy samples and of
banditd's own code, then the functions with the most samples, self and total), then stops
everything.

Idle samples: py-spy counts a thread blocked in C (the event loop's ``epoll_wait``, gRPC's
poller threads in ``Thread.run``) as active, so the report also gives every share over the
samples whose innermost frame is not one of those waits (``IDLE``).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.grpc_throughput import SERVICE, ClientPool, build_scenarios
from benchmarks.local_server import LocalServer

# Innermost frames of a thread waiting, not working (see the module's docstring).
IDLE = ("EpollSelector.select (selectors.py", "Thread.run (threading.py")
# banditd's own code: a frame in one of these folders, above the event loop's dispatch (the
# server's start-up frames, server/__main__ and cli, sit under every loop sample).
OWN = ("(server/", "(kernels/")
LOOP = "BaseEventLoop._run_once ("


def _in_banditd(frames: list[str]) -> bool:
    start = next((i + 1 for i, f in enumerate(frames) if f.startswith(LOOP)), 0)
    return any(mark in frame for frame in frames[start:] for mark in OWN)


def _top(raw: Path, limit: int = 40) -> str:
    """Self and total sample counts per function from py-spy's ``raw`` (collapsed) output,
    after the shares of busy samples and of samples inside banditd's code."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = idle = ours = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        idle += n if frames[-1].startswith(IDLE) else 0
        ours += n if _in_banditd(frames) else 0
        for frame in set(frames):
            total[frame] += n
    busy = samples - idle
    lines = [f"{samples} samples, {busy} busy ({100 * busy / max(samples, 1):.1f}%: innermost "
             "frame not an event-loop or gRPC-thread wait)",
             f"in banditd's code (server/, kernels/): {100 * ours / max(samples, 1):.1f}% of all, "
             f"{100 * ours / max(busy, 1):.1f}% of busy samples", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(limit)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in total.most_common(limit)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="select_thompson_k10")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="include C/Cython frames")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"))
    args = ap.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    data = Path(tempfile.mkdtemp(prefix="banditd-profile-"))
    args.out.mkdir(parents=True, exist_ok=True)
    pool = None
    try:
        with LocalServer(data / "banditd", snapshot_interval_seconds=0,
                         log_level="WARNING") as server:
            with grpc.insecure_channel(server.target) as ch:
                scenarios = {s.name: s for s in build_scenarios(
                    pb_grpc.DecisionServiceStub(ch), quick=True)}
            scenario = scenarios[args.scenario]
            pool = ClientPool(1)
            raw = args.out / f"{args.scenario}.raw"
            base = {"target": server.target, "method": f"/{SERVICE}/{scenario.method}",
                    "payloads": scenario.payloads, "start": time.monotonic() + 0.3,
                    "warmup": 1.0, "duration": args.seconds + 1.0, "timeout": 60.0}
            for conn in pool.conns:
                conn.send(dict(base, loops=args.concurrency))
            time.sleep(1.5)
            common = [py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate),
                      "--duration", str(int(args.seconds))]
            # --native needs the process paused per sample; without it, sample without pausing
            common += ["--native"] if args.native else ["--nonblocking"]
            spy = subprocess.Popen(common + ["--format", "raw", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL)
            spy.wait(timeout=args.seconds + 60)
            result = pool.conns[0].recv()
            print(f"{args.scenario}: {result['completed'] / (args.seconds + 1.0):.0f} calls/s "
                  f"while profiled, {result['errors']} errors")
            report = args.out / f"{args.scenario}.txt"
            report.write_text(_top(raw))
    finally:
        if pool is not None:
            pool.close()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
