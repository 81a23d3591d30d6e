"""Replicas sharing one log in a real engine (redis-server 7 from ``make``; no mocks).

Every test starts its own engine (a TCP port, its append-only file in tmp_path) and several
banditd replicas of it: in-process servers on their own event loops, or ``banditd serve``
processes where a process must die (kill -9)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import (
    Engine,
    RunningServer,
    TcpProxy,
    comparable_image,
    create,
    mixed_traffic,
    replica_process,
    start_replica,
)

PROPAGATION_BOUND = 5.0  # seconds a test waits for another replica to show a change


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path / "engine")
    yield e
    e.stop()


@pytest.fixture
def replicas(tmp_path, engine):
    """Three in-process replicas of ``engine``."""
    started: list[RunningServer] = []
    try:
        for i in range(3):
            started.append(start_replica(tmp_path / f"r{i}", engine.url, replica_id=f"r{i}"))
        yield started
    finally:
        for r in started:
            r.stop()


def _stub(port: int) -> tuple[grpc.Channel, pb_grpc.DecisionServiceStub]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    return ch, pb_grpc.DecisionServiceStub(ch)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _position(replica: RunningServer) -> tuple[int, int]:
    return _id(replica.call(lambda: replica.app.storage.position))


def _settle(replicas: list[RunningServer], engine: Engine) -> None:
    """Wait until every replica has applied the whole stream."""
    with engine.client() as client:
        last = client.xrevrange("banditd:log", count=1)
    end = _id(last[0][0].decode()) if last else (0, 0)
    deadline = time.monotonic() + 60
    while any(_position(r) < end for r in replicas):
        assert time.monotonic() < deadline, "replicas did not apply the stream in 60 s"
        time.sleep(0.01)


def _stats(stub, experiment_id: str) -> dict[str, tuple[int, float]]:
    reply = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=experiment_id), timeout=30)
    return {a.arm_id: (a.rewards, round(a.reward_sum, 9)) for a in reply.arms}


def _eventually(check, bound: float = PROPAGATION_BOUND):
    """``check()`` until it returns a true value (its value), at most ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while True:
        try:
            value = check()
            if value:
                return value
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, f"not within {bound} s"
        time.sleep(0.01)


class _Spread:
    """A stub whose calls go to the replicas in turn; after a configuration change it waits
    until every replica has applied the stream (configuration is visible everywhere within
    the propagation bound; read-your-writes holds only on the replica that made it)."""

    CONFIG = {"CreateExperiment", "DeleteExperiment", "UpdateArms", "ResetExperiment",
              "IngestMetrics", "CreateCampaign", "UpdateCampaign"}

    def __init__(self, replicas, engine) -> None:
        self.replicas = replicas
        self.engine = engine
        self.stubs = [_stub(r.port)[1] for r in replicas]
        self.calls = 0

    def __getattr__(self, name: str):
        def call(request, **kw):
            stub = self.stubs[self.calls % len(self.stubs)]
            self.calls += 1
            reply = getattr(stub, name)(request, timeout=60, **kw)
            if name in self.CONFIG:
                _settle(self.replicas, self.engine)
            return reply

        return call


def _image(replica: RunningServer) -> dict:
    message, pieces = replica.call(lambda: replica.app.state.image(0))
    return comparable_image(message, memoryview(b"".join(pieces)))


def test_replicas_reach_the_same_state_after_mixed_traffic(replicas, engine):
    """The state machine test's traffic, every call to the next replica (so rewards, spends
    and retries reach replicas other than the one that made the decision or the bid): every
    replica applies the same records in the same order and ends in the same state."""
    mixed_traffic(_Spread(replicas, engine))
    _settle(replicas, engine)
    images = [_image(r) for r in replicas]
    assert images[0]["experiments"].keys() == {"ts", "val", "lin"}
    for other in images[1:]:
        for eid in images[0]["experiments"]:
            assert other["experiments"][eid] == images[0]["experiments"][eid], eid
        assert other["campaigns"] == images[0]["campaigns"]
        assert other["next_uid"] == images[0]["next_uid"]
    rewarded = [r.call(lambda r=r: {i: rec.rewarded for i, rec in r.app.state.store.items()})
                for r in replicas]
    for other in rewarded[1:]:
        common = other.keys() & rewarded[0].keys()
        assert len(common) > 200
        assert {i: other[i] for i in common} == {i: rewarded[0][i] for i in common}


def test_configuration_is_read_your_writes_and_visible_everywhere_within_the_bound(replicas):
    (_, a), (_, b), (_, c) = (_stub(r.port) for r in replicas)
    create(a, "cfg", arms=("x", "y"))
    assert a.GetExperiment(pb.GetExperimentRequest(experiment_id="cfg")).experiment_id == "cfg"
    for stub in (b, c):
        _eventually(lambda s=stub: s.GetExperiment(pb.GetExperimentRequest(
            experiment_id="cfg")).experiment_id == "cfg")
    b.UpdateArms(pb.UpdateArmsRequest(experiment_id="cfg", add_arm_ids=["z"]))
    _eventually(lambda: [x.arm_id for x in c.GetExperiment(pb.GetExperimentRequest(
        experiment_id="cfg")).arms] == ["x", "y", "z"])
    # the same experiment created on two replicas at once: one wins, the other is told
    codes = []

    def make(stub):
        try:
            create(stub, "race", arms=("p",))
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)

    threads = [threading.Thread(target=make, args=(s,)) for s in (a, b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == ["ALREADY_EXISTS", "ALREADY_EXISTS", "OK"]


def test_rewards_count_exactly_once_with_retries_reaching_two_replicas_at_once(replicas):
    """Every decision's reward is sent to two replicas at the same moment (a client's retry
    racing its original), and 50 more are retried later on the third: each counts once on
    every replica, and exactly one of each racing pair answers duplicate = false."""
    stubs = [_stub(r.port)[1] for r in replicas]
    create(stubs[0], "exact", arms=("a", "b", "c", "d"), reward_type=pb.REWARD_TYPE_VALUE)
    for s in stubs:
        _eventually(lambda s=s: s.GetExperiment(pb.GetExperimentRequest(experiment_id="exact")))
    decisions = [stubs[i % 3].SelectArm(pb.SelectArmRequest(experiment_id="exact"))
                 for i in range(300)]
    expected: Counter[str] = Counter()
    for i, d in enumerate(decisions):
        expected[d.arm_id] += 1 + i % 2  # rewards of 1 or 2

    def race(i: int) -> list[bool]:
        d = decisions[i]
        request = pb.RecordRewardRequest(experiment_id="exact", decision_id=d.decision_id,
                                         reward=1 + i % 2)
        barrier = threading.Barrier(2)

        def send(stub):
            barrier.wait()
            return stub.RecordReward(request, timeout=60).duplicate

        with ThreadPoolExecutor(2) as pool:
            # the two replicas that did not make the decision, when there are two
            pair = [stubs[(i + 1) % 3], stubs[(i + 2) % 3]]
            return list(pool.map(send, pair))

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(race, range(len(decisions))))
    assert all(sorted(o) == [False, True] for o in outcomes), outcomes
    for i, d in enumerate(decisions[:50]):  # later retries on the maker
        assert stubs[i % 3].RecordReward(pb.RecordRewardRequest(
            experiment_id="exact", decision_id=d.decision_id, reward=1)).duplicate
    want = {arm: (n_rewards, float(total)) for arm, n_rewards, total in (
        (arm, sum(1 for d in decisions if d.arm_id == arm), expected[arm])
        for arm in "abcd")}
    for s in stubs:
        _eventually(lambda s=s: _stats(s, "exact") == want)


def test_changes_under_load_gather_into_entries_a_linger_apart(engine, tmp_path):
    """Group commit: with replica_linger_seconds = 0.05, 32 clients each recording 4 rewards
    in turn on one replica (a new one as soon as the last is answered) reach the engine in
    entries at least the linger apart, several rewards each, and every reward counts once."""
    linger = 0.05
    replica = start_replica(tmp_path / "r", engine.url, replica_linger_seconds=linger)
    try:
        _, stub = _stub(replica.port)
        create(stub, "gathered", arms=("a", "b"), reward_type=pb.REWARD_TYPE_VALUE)
        with engine.client() as client:
            start = client.xrevrange("banditd:log", count=1)[0][0].decode()

        async def clients() -> list[bool]:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch:
                aio = pb_grpc.DecisionServiceStub(ch)

                async def one(i: int) -> list[bool]:
                    return [(await aio.RecordReward(pb.RecordRewardRequest(
                        experiment_id="gathered", arm_id="ab"[i % 2], reward=float(k + 1)),
                        timeout=60)).duplicate for k in range(4)]

                return [d for ds in await asyncio.gather(*(one(i) for i in range(32)))
                        for d in ds]

        assert asyncio.run(clients()) == [False] * 128
        with engine.client() as client:
            entries = [(_id(i.decode()), f) for i, f in client.xrange("banditd:log", f"({start}")
                       if b"w" in f]
        times = [ms / 1000 for (ms, _), _ in entries]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(entries) < 128 and min(gaps) >= linger - 0.005, (len(entries), gaps)
        assert _stats(stub, "gathered") == {"a": (64, 160.0), "b": (64, 160.0)}
    finally:
        replica.stop()


def test_no_overspend_with_three_replicas_and_64_concurrent_bidders(replicas):
    """64 bidders (threads, spread over 3 replicas) bid and win as fast as they can on a
    budget far smaller than their demand: spend + reservations never pass the budget on any
    replica, the budget is spent exactly to what was charged, and the overspend is 0."""
    stubs = [_stub(r.port)[1] for r in replicas]
    budget = 50.0
    stubs[0].CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="tight", daily_budget=budget, max_bid=1.0, bid_cap_fraction=1.0,
        pacing_mode=pb.PACING_MODE_ASAP)))
    for s in stubs:
        _eventually(lambda s=s: s.GetPacingStatus(pb.GetPacingStatusRequest(
            campaign_id="tight")))
    charged: list[float] = []
    lock = threading.Lock()
    peak = [0.0]

    def bidder(k: int) -> None:
        stub = stubs[k % 3]
        for _ in range(15):
            bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="tight", base_bid=1.0),
                               timeout=60)
            if bid.bid <= 0:
                continue
            status = stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="tight"))
            settled = stubs[(k + 1) % 3].RecordSpend(pb.RecordSpendRequest(
                campaign_id="tight", bid_id=bid.bid_id, won=True, cost=bid.bid), timeout=60)
            with lock:
                charged.append(settled.charged)
                peak[0] = max(peak[0], status.spent + status.reserved)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(bidder, range(64)))
    assert peak[0] <= budget + 1e-9
    assert sum(charged) == pytest.approx(budget, abs=1e-6)  # demand is far above: all of it
    for s in stubs:
        status = _eventually(lambda s=s: (lambda st: st if st.reserved == 0 and
                                          abs(st.spent - sum(charged)) < 1e-9 else None)(
            s.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="tight"))))
        assert status.spent <= budget  # overspend exactly 0
        assert status.remaining == pytest.approx(budget - sum(charged), abs=1e-9)


def test_a_partitioned_replica_refuses_changes_says_so_and_catches_up(tmp_path, engine):
    """A TCP proxy between one replica and the engine is cut: that replica refuses changes
    with UNAVAILABLE naming the engine, reports NOT_SERVING, still answers reads and
    SelectArm; restored, it catches up with what the others did meanwhile, and its
    decisions made during the cut reach them."""
    proxy = TcpProxy(engine.port)
    a = start_replica(tmp_path / "a", engine.url, replica_id="a")
    c = start_replica(tmp_path / "c", f"redis://127.0.0.1:{proxy.port}/0", replica_id="c",
                      engine_timeout_seconds=0.5, log_retry_seconds=0.2)
    try:
        (_, sa), (cc, sc) = _stub(a.port), _stub(c.port)
        health = health_pb2_grpc.HealthStub(cc)
        create(sa, "p", arms=("x", "y"))
        _eventually(lambda: sc.GetExperiment(pb.GetExperimentRequest(experiment_id="p")))
        proxy.cut()

        def refused():
            try:
                sc.RecordReward(pb.RecordRewardRequest(experiment_id="p", arm_id="x",
                                                       reward=1), timeout=10)
            except grpc.RpcError as exc:
                return exc
            return None

        error = _eventually(refused)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "is unreachable" in error.details()
        assert f"127.0.0.1:{proxy.port}" in error.details()
        assert health.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused_create:
            create(sc, "q")
        assert refused_create.value.code() == grpc.StatusCode.UNAVAILABLE
        during = [sc.SelectArm(pb.SelectArmRequest(experiment_id="p")) for _ in range(20)]
        assert sc.GetArmStats(pb.GetArmStatsRequest(experiment_id="p")).arms
        for _ in range(30):  # the others go on
            sa.RecordReward(pb.RecordRewardRequest(experiment_id="p", arm_id="y", reward=1))
        proxy.restore()
        _eventually(lambda: health.Check(health_pb2.HealthCheckRequest()).status ==
                    health_pb2.HealthCheckResponse.SERVING, 30)
        _eventually(lambda: _stats(sc, "p")["y"] == (30, 30.0), 30)
        # the decisions made while cut off reach the engine once it is back (the held entry
        # sent again), and then the other replica: rewards need no arm_id
        origin = c.call(lambda: c.app.storage.origin).encode()

        def held_decisions_sent() -> bool:
            with engine.client() as client:
                return any(f[b"o"] == origin and b"d" in f
                           for _, f in client.xrange("banditd:log"))

        _eventually(held_decisions_sent, 30)
        _settle([a, c], engine)
        for d in during:
            sa.RecordReward(pb.RecordRewardRequest(experiment_id="p",
                                                   decision_id=d.decision_id, reward=1))
        sc.RecordReward(pb.RecordRewardRequest(experiment_id="p", arm_id="x", reward=1))
        want = Counter(d.arm_id for d in during)
        want["x"] += 1
        want["y"] += 30
        for stub in (sa, sc):
            _eventually(lambda s=stub: {k: v[0] for k, v in _stats(s, "p").items()} ==
                        dict(want))
    finally:
        proxy.close()
        c.stop()
        a.stop()


def test_an_image_lets_a_new_replica_start_after_the_stream_was_trimmed(replicas, engine,
                                                                       tmp_path):
    stubs = [_stub(r.port)[1] for r in replicas]
    create(stubs[0], "img", arms=("a", "b"))
    for s in stubs:
        _eventually(lambda s=s: s.GetExperiment(pb.GetExperimentRequest(experiment_id="img")))
    made = [stubs[i % 3].SelectArm(pb.SelectArmRequest(experiment_id="img"))
            for i in range(90)]
    for d in made[:60]:
        stubs[1].RecordReward(pb.RecordRewardRequest(experiment_id="img",
                                                     decision_id=d.decision_id, reward=1))
    uploader = replicas[2]
    position = asyncio.run_coroutine_threadsafe(uploader.app.storage.upload_image(),
                                                uploader.loop).result(60)
    with engine.client() as client:
        first = client.xrange("banditd:log", count=1)[0][0].decode()
        trimmed = client.get("banditd:trimmed").decode()
    # trimmed up to the image, or only up to an older position that a live replica reported
    # it still reads from (reports come every few seconds): never past either
    assert (0, 0) < _id(trimmed) <= _id(position) and _id(first) >= _id(trimmed)
    for d in made[60:]:  # after the image: from the stream
        stubs[0].RecordReward(pb.RecordRewardRequest(experiment_id="img",
                                                     decision_id=d.decision_id, reward=1))
    late = start_replica(tmp_path / "late", engine.url, replica_id="late")
    try:
        _, stub = _stub(late.port)
        want = _stats(stubs[0], "img")
        assert sum(n for n, _ in want.values()) == 90
        _eventually(lambda: _stats(stub, "img") == want)
        # every decision is known to it: a retry anywhere is a duplicate
        assert all(stub.RecordReward(pb.RecordRewardRequest(
            experiment_id="img", decision_id=d.decision_id, reward=1)).duplicate for d in made)
        assert _image(late)["experiments"]["img"] == _image(replicas[0])["experiments"]["img"]
    finally:
        late.stop()


@pytest.mark.slow
def test_a_replica_killed_with_kill_9_loses_nothing_acknowledged_and_catches_up(tmp_path,
                                                                               engine):
    a = replica_process(tmp_path / "a", engine.url, replica_id="a")
    b = replica_process(tmp_path / "b", engine.url, replica_id="b")
    try:
        create(a.stub, "k9", arms=("x", "y"))
        _eventually(lambda: b.stub.GetExperiment(pb.GetExperimentRequest(experiment_id="k9")))
        acked = 0
        sent = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal acked, sent
            while not stop.is_set():
                sent += 1
                try:
                    a.stub.RecordReward(pb.RecordRewardRequest(experiment_id="k9", arm_id="x",
                                                               reward=1), timeout=10)
                except grpc.RpcError:
                    return
                acked += 1

        t = threading.Thread(target=load)
        t.start()
        _eventually(lambda: acked >= 300, 120)
        a.kill()
        stop.set()
        t.join()
        assert sent - acked <= 1
        counted = _eventually(lambda: (lambda n: n if n >= acked else None)(
            _stats(b.stub, "k9").get("x", (0, 0))[0]), 30)
        assert acked <= counted <= sent  # the one in flight may have made it
        a2 = replica_process(tmp_path / "a", engine.url, replica_id="a")
        try:
            assert _stats(a2.stub, "k9")["x"][0] == counted  # caught up before SERVING
            a2.stub.RecordReward(pb.RecordRewardRequest(experiment_id="k9", arm_id="y",
                                                        reward=1))
            _eventually(lambda: _stats(b.stub, "k9")["y"] == (1, 1.0))
        finally:
            a2.stop()
    finally:
        a.kill()
        b.stop()


@pytest.mark.slow
def test_an_engine_killed_with_kill_9_and_restarted_on_its_append_only_file_loses_nothing(
        tmp_path, engine):
    """appendfsync no (the os durability mode's): Redis writes every write to its
    append-only file before answering, so a kill -9 of the engine loses nothing that any
    replica acknowledged; the replicas reconnect by themselves."""
    a = start_replica(tmp_path / "a", engine.url, replica_id="a", log_retry_seconds=0.2)
    b = start_replica(tmp_path / "b", engine.url, replica_id="b", log_retry_seconds=0.2)
    try:
        (_, sa), (_, sb) = _stub(a.port), _stub(b.port)
        create(sa, "e9", arms=("x",))
        _eventually(lambda: sb.GetExperiment(pb.GetExperimentRequest(experiment_id="e9")))
        acked = Counter()
        sent = Counter()
        stop = threading.Event()

        def load(k: int, stub) -> None:
            while not stop.is_set():
                sent[k] += 1
                try:
                    stub.RecordReward(pb.RecordRewardRequest(experiment_id="e9", arm_id="x",
                                                             reward=1), timeout=10)
                except grpc.RpcError:
                    sent[k] -= 0  # refused or unconfirmed: may or may not have made it
                    time.sleep(0.05)
                    continue
                acked[k] += 1

        threads = [threading.Thread(target=load, args=(k, s)) for k, s in enumerate((sa, sb))]
        for t in threads:
            t.start()
        _eventually(lambda: sum(acked.values()) >= 400, 120)
        engine.kill()
        time.sleep(0.5)
        engine.start()
        _eventually(lambda: sum(acked.values()) >= 800, 120)  # serving again
        stop.set()
        for t in threads:
            t.join()
        total_acked = sum(acked.values())
        for stub in (sa, sb):
            n = _eventually(lambda s=stub: (lambda c: c if c >= total_acked else None)(
                _stats(s, "e9")["x"][0]), 30)
            assert total_acked <= n <= sum(sent.values())
    finally:
        a.stop()
        b.stop()


def _two_free_ports() -> int:
    """A port p of 127.0.0.1 such that p and p + 1 were both free a moment ago."""
    import socket

    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def test_workers_check_tokens_on_every_replica_export_lag_and_audit_the_caller(tmp_path):
    """``--workers 2`` (two replicas of an embedded engine): every replica checks the bearer
    token of every call and re-reads the tokens file on the supervisor's SIGHUP, each serves /metrics on metrics_port + its index with the lag
    metrics the dashboard queries (0 once idle), and ``banditd audit`` on the stopped data
    directory reads the engine's log and names the caller's token and address."""
    import json
    import re
    import signal
    import subprocess
    import urllib.request

    from helpers import (
        BIN,
        ROOT,
        ServerProcess,
        bearer,
        free_port,
        make_experiment,
        write_tokens,
    )

    tokens = write_tokens(tmp_path / "tokens", {"ops": ("t-ops", "admin"),
                                                "bidder": ("t-bid", "decide"),
                                                "reader": ("t-read", "read")})
    metrics_port = _two_free_ports()  # replica i serves metrics_port + i
    port_file = tmp_path / "port"
    data = tmp_path / "data"
    server = ServerProcess(data, "--workers", "2", "--auth-tokens-file", str(tokens),
                           "--port-file", str(port_file), port=free_port(), wait=False,
                           metrics_port=metrics_port, image_interval_seconds=0)
    try:
        server.wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 600,
                        "SERVING on both replicas")
        # One connection lands on one replica (SO_REUSEPORT); its decision ids name it.
        channels: dict[str, grpc.Channel] = {}
        for _ in range(200):
            if len(channels) == 2:
                break
            ch = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)])
            stub = pb_grpc.DecisionServiceStub(ch)
            with pytest.raises(grpc.RpcError) as anonymous:
                stub.SelectArm(pb.SelectArmRequest(experiment_id="fw"), timeout=30)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            if not channels:  # the one administrative change, by the ops token
                stub.CreateExperiment(pb.CreateExperimentRequest(
                    experiment=make_experiment("fw", arms=("a", "b"))),
                    metadata=bearer("t-ops"), timeout=60)
            reply = _eventually(lambda s=stub: s.SelectArm(pb.SelectArmRequest(
                experiment_id="fw"), metadata=bearer("t-bid"), timeout=30))
            replica = reply.decision_id.split(".")[0]
            if replica in channels:
                ch.close()
                continue
            channels[replica] = ch
        assert sorted(channels) == ["w0", "w1"]
        for ch in channels.values():  # every replica checks roles: neither may delete
            stub = pb_grpc.DecisionServiceStub(ch)
            for token in ("t-read", "t-bid"):
                with pytest.raises(grpc.RpcError) as denied:
                    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="fw"),
                                          metadata=bearer(token), timeout=30)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as unknown:
                stub.GetExperiment(pb.GetExperimentRequest(experiment_id="fw"),
                                   metadata=bearer("t-guess"), timeout=30)
            assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
            experiment = stub.GetExperiment(pb.GetExperimentRequest(experiment_id="fw"),
                                            metadata=bearer("t-read"), timeout=30)
            assert [a.arm_id for a in experiment.arms] == ["a", "b"]
        # SIGHUP to the supervisor: every replica re-reads the tokens file
        write_tokens(tokens, {"ops": ("t-ops", "admin"), "bidder": ("t-bid", "decide"),
                              "reader": ("t-read-2", "read")})
        server.proc.send_signal(signal.SIGHUP)
        for ch in channels.values():
            stub = pb_grpc.DecisionServiceStub(ch)
            _eventually(lambda s=stub: s.GetExperiment(pb.GetExperimentRequest(
                experiment_id="fw"), metadata=bearer("t-read-2"), timeout=30))
            with pytest.raises(grpc.RpcError) as revoked:
                stub.GetExperiment(pb.GetExperimentRequest(experiment_id="fw"),
                                   metadata=bearer("t-read"), timeout=30)
            assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ch.close()
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "banditd.json").read_text())
        wanted = {m for p in dashboard["panels"] for t in p["targets"]
                  for m in re.findall(r"\b(banditd_replica_[a-z_]+)\b", t["expr"])}
        assert wanted == {"banditd_replica_lag_entries", "banditd_replica_lag_seconds"}

        def lag(i: int) -> dict[str, float]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + i}/metrics",
                                          timeout=10).read().decode()
            return {name: float(value) for name, value in re.findall(
                r"^(banditd_replica_lag_\w+) (\S+)$", text, re.M)}

        for i in range(2):  # idle: each has applied the whole log, and measured that
            assert _eventually(lambda i=i: lag(i) == {"banditd_replica_lag_entries": 0.0,
                                                      "banditd_replica_lag_seconds": 0.0})
    finally:
        assert server.stop() == 0, server.text()[-3000:]
    audit = subprocess.run([str(BIN / "banditd"), "audit", "--data-dir", str(data)],
                           capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stderr
    (entry,) = [json.loads(line) for line in audit.stdout.splitlines()]
    assert entry["rpc"] == "CreateExperiment" and entry["token_name"] == "ops"
    assert entry["ids"] == ["fw", "a", "b"]
    assert entry["peer"].startswith("ipv4:127.0.0.1:")


def test_the_engine_password_goes_to_the_replicas_on_stdin_not_on_their_command_line():
    """With BANDITD_REDIS_URL and ``--workers N`` the supervisor takes the password out of the
    URL it puts on each replica's command line (readable by every user of the host) and
    hands it over on stdin; the two together log in as the URL would."""
    from banditd.server.cluster.resp import parse_url
    from banditd.server.cluster.supervisor import split_password

    for url, public, password in [
            ("redis://:s%40cret@engine:6379/0", "redis://engine:6379/0", "s@cret"),
            ("rediss://ops:pw@engine/2", "rediss://ops@engine/2", "pw"),
            ("redis://engine:6379/0", "redis://engine:6379/0", "")]:
        assert split_password(url) == (public, password)
        assert "cret" not in public and ":pw" not in public
        assert parse_url(public, password or None) == parse_url(url)


def test_the_embedded_engine_starts_in_a_relative_data_directory(tmp_path, monkeypatch):
    """``banditd serve --workers N`` with the default ``--data-dir data``: the engine changes
    to its directory before it opens its log file and socket, so it is given absolute
    paths."""
    from pathlib import Path

    from banditd.server.cluster.engine import EmbeddedEngine
    from helpers import engine_binary

    monkeypatch.chdir(tmp_path)
    engine = EmbeddedEngine(engine_binary(), Path("data") / "engine", "pw", "os")
    engine.start()
    try:
        assert engine.socket == tmp_path / "data" / "engine" / "engine.sock"
        assert engine.socket.is_socket() and (tmp_path / "data/engine/engine.log").exists()
    finally:
        assert engine.stop() == 0


def test_reward_windows_are_settled_once_across_replicas(engine, tmp_path):
    """Decisions made on two replicas whose window passes are settled once, by the one
    replica that sweeps, through the shared log; a late reward through the other replica
    corrects the default on both."""
    a = start_replica(tmp_path / "a", engine.url, replica_id="a",
                      reward_sweep_interval_seconds=0.05)
    b = start_replica(tmp_path / "b", engine.url, replica_id="b", reward_sweeper=False)
    try:
        stubs = [_stub(a.port)[1], _stub(b.port)[1]]
        create(stubs[1], "win", arms=("x", "y", "z"), seed=3, reward_wait_seconds=0.3)
        _eventually(lambda: stubs[0].GetExperiment(pb.GetExperimentRequest(experiment_id="win")))
        made = [stubs[i % 2].SelectArm(pb.SelectArmRequest(experiment_id="win"))
                for i in range(30)]
        assert not stubs[1].RecordReward(pb.RecordRewardRequest(
            experiment_id="win", decision_id=made[1].decision_id, reward=1.0)).late
        arms = [d.arm_id for d in made]
        want = {x: (arms.count(x), 1.0 if x == made[1].arm_id else 0.0) for x in "xyz"}
        for s in stubs:  # every decision learned once: 29 defaults and one reward
            _eventually(lambda s=s: _stats(s, "win") == want)
        late = stubs[1].RecordReward(pb.RecordRewardRequest(
            experiment_id="win", decision_id=made[2].decision_id, reward=1.0))
        assert late.late and not late.duplicate
        corrected = {x: (n, total + (1.0 if x == made[2].arm_id else 0.0))
                     for x, (n, total) in want.items()}
        for s in stubs:
            _eventually(lambda s=s: _stats(s, "win") == corrected)
            assert s.GetArmStats(pb.GetArmStatsRequest(experiment_id="win")).model_version == 30
    finally:
        a.stop()
        b.stop()
