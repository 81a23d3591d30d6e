"""Helpers shared by the test modules: real banditd servers (in-process on port 0, or a
``banditd serve`` subprocess), stubs and experiment builders.

Test modules import this plain module (``from helpers import ...``); they never import
``conftest`` or one another (tests/test_layout.py checks). Fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.settings import Settings
from banditd.storage.v1 import storage_pb2 as st
from benchmarks.in_process import InProcessServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: banditd, buf, hadolint

T = TypeVar("T")


class RunningServer(InProcessServer):
    """A banditd server running on its own event loop in a background thread (the
    benchmarks' harness), which a test may also crash or inspect."""

    def crash(self) -> None:
        """Stop like a killed process: no final snapshot, the log left as it is on disk."""
        assert self.app is not None
        app = self.app

        async def die() -> None:
            await app.grpc_server.stop(0)
            durability = app.storage
            if durability._periodic_task is not None:
                durability._periodic_task.cancel()
            if durability._timers is not None:
                durability._timers.close()
            if durability.wal is not None and durability.wal._fd >= 0:
                os.close(durability.wal._fd)  # buffered, unflushed records are lost
                durability.wal._fd = -1
                durability.wal._closed = True
            app.core.metrics.close()
            durability._lock.release()  # a dead process's flock goes with it

        self._crashed = True
        asyncio.run_coroutine_threadsafe(die(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the server's loop thread (to inspect state safely)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(timeout=30)
        return box["value"]


def start_server(data_dir: Path, **overrides: Any) -> RunningServer:
    """A started in-process server on 127.0.0.1, port 0; the caller stops (or crashes) it."""
    return RunningServer(Settings(host="127.0.0.1", port=0, data_dir=data_dir,
                                  **overrides)).start()


@contextlib.contextmanager
def running_server(data_dir: Path, **overrides: Any) -> Iterator[RunningServer]:
    """An in-process server for the ``with`` block, stopped gracefully after it."""
    server = start_server(data_dir, **overrides)
    try:
        yield server
    finally:
        server.stop()


def stub_for(port: int) -> tuple[grpc.Channel, pb_grpc.DecisionServiceStub]:
    """A channel to 127.0.0.1:``port`` (the caller closes it) and its DecisionService stub."""
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    return ch, pb_grpc.DecisionServiceStub(ch)


def free_port() -> int:
    """A TCP port nothing listens on right now (for subprocesses that need a fixed one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the server subprocess ``proc`` answers SERVING on ``port``; fail early if
    it exits. ``timeout`` only bounds the wait (a cold Numba cache compiles first)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError("server did not become SERVING")


def make_experiment(
    experiment_id: str,
    arms: tuple[str, ...] | list[str] = ("a", "b", "c"),
    policy: pb.Policy | None = None,
    reward_type: Any = pb.REWARD_TYPE_BINARY,  # a RewardType, or any int to test checks
    context_dim: int = 0,
    seed: int | None = 1,
    **fields: Any,
) -> pb.Experiment:
    """An Experiment message: Thompson over arms a, b, c with seed 1 unless told otherwise."""
    experiment = pb.Experiment(
        experiment_id=experiment_id,
        arms=[pb.Arm(arm_id=a) for a in arms],
        policy=policy or pb.Policy(thompson=pb.Policy.Thompson()),
        reward_type=reward_type,
        context_dim=context_dim,
        **fields,
    )
    if seed is not None:
        experiment.seed = seed
    return experiment


def create(stub: pb_grpc.DecisionServiceStub, experiment_id: str, **kw: Any) -> pb.Experiment:
    """CreateExperiment of ``make_experiment(experiment_id, **kw)``; the created experiment."""
    return stub.CreateExperiment(
        pb.CreateExperimentRequest(experiment=make_experiment(experiment_id, **kw))
    )


class InProcess:
    """The DecisionService without a gRPC server, ready at once (nothing restored): its RPC
    behaviours as methods (``SelectArm(request, None)``), its state machine and durability."""

    def __init__(self, settings: Settings) -> None:
        from banditd.server.api.app import build_service

        self.service = build_service(settings)
        self.service.core.ready = True
        self.state = self.service.core.state
        self.storage = self.service.core.storage
        self.decisions_api = self.service.decisions
        for name, behavior in self.service.behaviors().items():
            setattr(self, name, behavior)

    @property
    def registry(self):
        return self.state.experiments

    @property
    def decisions(self):
        return self.state.store

    def create_experiment(self, config: pb.Experiment):
        """Create an experiment through its record, as CreateExperiment does."""
        experiments = self.state.experiments
        return experiments.apply_create(experiments.check_create(config))


class ServerProcess:
    """``banditd serve`` as a real process on 127.0.0.1 (for kill -9, signals, a second
    process): its stub, health, log; stopped (SIGTERM, then SIGKILL) by its owner."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None,
                 wait: bool = True, env: dict | None = None, **settings) -> None:
        import subprocess

        self.data_dir = data_dir
        self.port = port or free_port()
        self.log = data_dir.parent / f"{data_dir.name}-{self.port}.log"
        cmd = [str(BIN / "banditd"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(data_dir), *args]
        settings.setdefault("drain_seconds", 0)
        for name, value in settings.items():
            cmd += ["--set", f"{name}={value}"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log,
                                         env=dict(os.environ, **(env or {})))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        if wait:
            self.wait_serving()

    def health(self) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_serving(self, timeout: float = 600) -> None:
        self.wait_for(lambda: self.health() == "SERVING", timeout, "SERVING")

    def wait_for(self, condition, timeout: float, what: str) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"banditd exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not {what} in {timeout} s"
            time.sleep(0.05)

    def text(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        """kill -9."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)
        self.channel.close()

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m", inodes: int | None = None) -> Iterator[Path]:
    """A size- (and inode-) limited tmpfs mounted at ``path`` (the tests run as root, as CI
    does); unmounted on exit."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write into ``directory`` until its filesystem is full; the file that holds it."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError:
                break
        for size in (4096, 512, 1):  # the last crumbs too
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break
    return filler


# -- the engine replicas share (Redis / Valkey) ---------------------------------------------------


def engine_binary() -> str:
    """The engine server binary the replica tests start (``make`` puts one in .venv/bin)."""
    from banditd.server.cluster.engine import find_binary

    return find_binary(os.environ.get("BANDITD_ENGINE_BINARY"))


class Engine:
    """A real ``redis-server`` (or ``valkey-server``) on a 127.0.0.1 TCP port, with its
    append-only file in ``directory``; killed with -9 and restarted on the same port and
    file by its owner."""

    def __init__(self, directory: Path, appendfsync: str = "no", port: int | None = None
                 ) -> None:
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Engine:
        config = "\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}", "appendonly yes",
            f"appendfsync {self.appendfsync}", "save ''", "daemonize no",
            f"logfile {self.directory / 'engine.log'}", ""])
        self.proc = subprocess.Popen([engine_binary(), "-"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert self.proc.stdin is not None
        self.proc.stdin.write(config.encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.directory / "engine.log").read_text()
            assert time.monotonic() < deadline, "the engine did not answer in 60 s"
            time.sleep(0.05)

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def kill(self) -> None:
        """kill -9 (what the engine had not written to its append-only file is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``port`` (a network element between a replica
    and the engine): :meth:`cut` closes every connection and refuses new ones until
    :meth:`restore`."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.open = True
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def replica_process(data_dir: Path, redis_url: str, **settings: Any) -> ServerProcess:
    """``banditd serve`` as a replica of the log in the engine at ``redis_url``."""
    settings.setdefault("image_interval_seconds", 0)
    return ServerProcess(data_dir, port=free_port(), redis_url=redis_url, **settings)


def start_replica(data_dir: Path, redis_url: str, **overrides: Any) -> RunningServer:
    """An in-process replica (its own event loop thread) of the engine at ``redis_url``."""
    overrides.setdefault("image_interval_seconds", 0)
    return RunningServer(Settings(host="127.0.0.1", port=0, data_dir=data_dir,
                                  redis_url=redis_url, **overrides)).start()


# -- traffic touching every record type ---------------------------------------------------------

DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def at_time(t: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(t), nanos=int((t % 1) * 1e9))


def mixed_traffic(stub) -> None:
    """Mixed traffic touching every record type (seeded, no clock assumptions): what
    tests/test_state_machine.py replays and tests/test_replicas.py spreads over replicas."""
    rng = np.random.default_rng(7)
    arms = [f"a{i}" for i in range(5)]
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "ts", arms=arms, seed=1, min_selections=2)))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "val", arms=arms, seed=2, reward_type=pb.REWARD_TYPE_VALUE)))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "lin", arms=arms, seed=3, context_dim=3, reward_type=pb.REWARD_TYPE_CONTINUOUS,
        policy=pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=0.5)))))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "gone", arms=arms, seed=4, policy=pb.Policy(ucb1=pb.Policy.Ucb1()))))
    decisions = []
    for i in range(60):
        decisions.append(("ts", stub.SelectArm(pb.SelectArmRequest(
            experiment_id="ts", num_arms=1 + i % 3))))
        decisions.append(("lin", stub.SelectArm(pb.SelectArmRequest(
            experiment_id="lin", context=rng.uniform(-1, 1, 3).tolist()))))
        decisions.append(("gone", stub.SelectArm(pb.SelectArmRequest(experiment_id="gone"))))
    batch = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
        pb.SelectArmRequest(experiment_id="val", eligible_arm_ids=arms[:3])] * 40 + [
        pb.SelectArmRequest(experiment_id="lin", context=rng.uniform(-1, 1, 3).tolist(),
                            num_arms=2) for _ in range(20)]))
    decisions += [("val", r) for r in batch.responses[:40]]
    decisions += [("lin", r) for r in batch.responses[40:]]
    rewards = []
    for eid, d in decisions[::2]:
        value = {"ts": float(rng.integers(0, 2)), "val": float(rng.uniform(0, 5)),
                 "lin": float(rng.normal()), "gone": float(rng.integers(0, 2))}[eid]
        rewards.append(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id,
                                              reward=value))
    for r in rewards[:30]:
        stub.RecordReward(r)
    assert stub.RecordReward(rewards[0]).duplicate
    reply = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(
        requests=rewards[30:] + rewards[30:32]))
    assert [r.duplicate for r in reply.responses[-2:]] == [True, True]
    # by explicit arm, for a decision the server never made: a tombstone
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="ts", decision_id="elsewhere-1",
                                             arm_id="a2", reward=1.0))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="lin", arm_id="a1", reward=2.0,
                                             context=[0.1, 0.2, 0.3]))
    stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id="ts", period="2026-01-01",
                                               metrics=[pb.ArmMetrics(arm_id="a1", trials=50,
                                                                      successes=7)]))
    stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id="ts", period="2026-01-01",
                                               metrics=[pb.ArmMetrics(arm_id="a1", trials=60,
                                                                      successes=9)]))
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id="ts", add_arm_ids=["a9"],
                                         remove_arm_ids=["a0"]))
    stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id="val"))
    stub.SelectArm(pb.SelectArmRequest(experiment_id="val"))
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="gone"))
    # pacing over two days, with settlements, a pause and an expiry
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="c", daily_budget=50.0, max_bid=2.0, reservation_ttl_seconds=300)))
    t = T0
    for i in range(400):
        t += 300.0 * (1 + rng.random())
        if i == 150:
            stub.UpdateCampaign(pb.UpdateCampaignRequest(
                campaign=pb.Campaign(campaign_id="c", paused=True),
                update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
        if i == 170:
            stub.UpdateCampaign(pb.UpdateCampaignRequest(
                campaign=pb.Campaign(campaign_id="c", paused=False),
                update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
        bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="c", base_bid=float(rng.uniform(0, 3)),
                                             event_time=at_time(t)))
        if bid.bid_id and i % 7:  # every 7th reservation is left to expire
            won = bool(rng.random() < 0.6)
            stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id="c", bid_id=bid.bid_id, won=won, cost=bid.bid * 0.7,
                conversions=float(won and rng.random() < 0.2), event_time=at_time(t + 20)))
    stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="c", event_time=at_time(t + DAY)))


def windowed_traffic(stub) -> None:
    """Reward windows: decisions settled with the default reward by the server's sweep, then
    late rewards correcting some (one for another arm of a slate). A single server's sweep
    settles them (of several replicas only one sweeps)."""
    rng = np.random.default_rng(11)
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "win", arms=["x", "y", "z"], seed=5, reward_wait_seconds=0.2)))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "winlin", arms=["x", "y"], seed=6, context_dim=2, reward_wait_seconds=0.2,
        reward_type=pb.REWARD_TYPE_CONTINUOUS, default_reward=-1.0,
        policy=pb.Policy(lin_thompson=pb.Policy.LinThompson()))))
    made = [stub.SelectArm(pb.SelectArmRequest(experiment_id="win", num_arms=1 + i % 2))
            for i in range(20)]
    lin = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[pb.SelectArmRequest(
        experiment_id="winlin", context=rng.uniform(-1, 1, 2).tolist()) for _ in range(10)]))
    for d in made[:3]:
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="win",
                                                 decision_id=d.decision_id, reward=1.0))
    deadline = time.monotonic() + 30
    while stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="win")).model_version < 20 or \
            stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="winlin")).model_version < 10:
        assert time.monotonic() < deadline, "the sweep did not settle the decisions"
        time.sleep(0.05)
    late = [pb.RecordRewardRequest(experiment_id="win", decision_id=made[4].decision_id,
                                   reward=1.0),
            pb.RecordRewardRequest(experiment_id="win", decision_id=made[5].decision_id,
                                   reward=1.0, arm_id=made[5].ranked_arm_ids[1]),
            pb.RecordRewardRequest(experiment_id="winlin",
                                   decision_id=lin.responses[0].decision_id, reward=2.5)]
    assert all(r.late for r in stub.BatchRecordRewards(
        pb.BatchRecordRewardsRequest(requests=late)).responses)


def throttled_traffic(stub) -> None:
    """A campaign whose bids are far above the clearing costs: shading to the floor, then
    throttling (the coins, the participation rate and the win thresholds replay); its
    traffic shape changes half way."""
    rng = np.random.default_rng(13)
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="thr", daily_budget=20.0, max_bid=50.0, seed=5,
        hourly_weights=[1.0 + (h >= 12) for h in range(24)])))
    t, reasons = T0 + 3600, set()
    for i in range(900):
        t += 4.0 * rng.random()
        if i == 600:
            stub.UpdateCampaign(pb.UpdateCampaignRequest(
                campaign=pb.Campaign(campaign_id="thr", hourly_weights=[1.0] * 24),
                update_mask=field_mask_pb2.FieldMask(paths=["hourly_weights"])))
        bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="thr", base_bid=10.0,
                                             event_time=at_time(t)))
        reasons.add(bid.reason_code)
        if bid.bid_id:
            stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id="thr", bid_id=bid.bid_id, won=True,
                cost=float(rng.uniform(0.01, 0.3)), event_time=at_time(t + 1)))
    assert {pb.PACE_REASON_THROTTLED, pb.PACE_REASON_CAPPED} <= reasons


def comparable_image(message: bytes, section: memoryview) -> dict:
    """An image as plain values, without what the log does not replay (random streams, the
    policies' cache arrays) or cannot (the time the image was taken)."""
    from banditd.server.state.image import _from_array

    snap = st.Snapshot.FromString(message)
    out: dict = {"next_uid": snap.next_uid, "experiments": {}}
    for es in snap.experiments:
        arrays = {name: _from_array(getattr(es, name), section).tolist()
                  for name in ("selections", "rewards", "reward_sum", "positives", "ingested")}
        state = [_from_array(a, section).tolist() for a in es.state if a.dtype]
        out["experiments"][es.config.experiment_id] = (
            es.config.SerializeToString(deterministic=True), es.uid, es.version, arrays, state,
            sorted((p.period, p.SerializeToString(deterministic=True)) for p in es.periods))
    out["decisions"] = snap.decisions.SerializeToString(deterministic=True)
    out["campaigns"] = [c.SerializeToString(deterministic=True) for c in snap.campaigns]
    out["audit"] = [a.SerializeToString(deterministic=True) for a in snap.audit]
    return out
# -- TLS and tokens ---------------------------------------------------------------------------


class Pki:
    """A certificate authority made for a test, and the files of what it signed."""

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self._serialization = serialization
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self._day = datetime.timedelta(days=1)
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                      .public_key(self._key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(self._now - self._day).not_valid_after(self._now + self._day)
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.ca = directory / f"{name}.pem"
        self.ca.write_bytes(self._pem(self._cert))

    def _pem(self, cert) -> bytes:
        return cert.public_bytes(self._serialization.Encoding.PEM)

    def issue(self, cn: str, server: bool) -> tuple[Path, Path]:
        """A certificate for ``cn`` (a server's for localhost and 127.0.0.1, else a client's):
        (certificate file, key file)."""
        import ipaddress

        x509 = self._x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = self._ec.generate_private_key(self._ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, cn)]))
                   .issuer_name(self._cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(self._now - self._day).not_valid_after(self._now + self._day)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else
                        ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self._key, self._hashes.SHA256())
        cert_file = self.directory / f"{self.name}-{cn}.pem"
        key_file = self.directory / f"{self.name}-{cn}.key"
        cert_file.write_bytes(self._pem(cert))
        key_file.write_bytes(key.private_bytes(
            self._serialization.Encoding.PEM, self._serialization.PrivateFormat.PKCS8,
            self._serialization.NoEncryption()))
        return cert_file, key_file


def write_tokens(path: Path, tokens: dict[str, tuple[str, str]]) -> Path:
    """A tokens file: name -> (token, role), as `<sha256> <role> <name>` lines."""
    import hashlib

    path.write_text("# test tokens\n" + "".join(
        f"{hashlib.sha256(token.encode()).hexdigest()} {role} {name}\n"
        for name, (token, role) in tokens.items()))
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),)


class Served:
    """``banditd serve`` as a subprocess on a free 127.0.0.1 port, with its stderr in a
    file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / "server.log"
        self.proc = subprocess.Popen(
            [str(BIN / "banditd"), "serve", "--port", str(self.port), "--data-dir",
             str(tmp_path / "data"), "--set", "grace_seconds=1", *args],
            stderr=open(self.log, "a"), env=dict(os.environ, **(env or {})))  # noqa: SIM115

    def wait_serving(self, channel: grpc.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def until(predicate, what: str, timeout: float = 30) -> None:
    """Wait (at most ``timeout`` s) until ``predicate()``; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
