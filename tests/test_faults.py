"""Faults, caused for real: a full disk, no inodes left, a second process on the data
directory, unreadable files, a far-future event time, a stranger on the internal port, hostile
sizes, idle connections, SIGTERM under traffic, and kill -9 again and again. Each test states
the promise it breaks."""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as hs

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.replication.v1 import replication_pb2 as rpb
from banditd.replication.v1 import replication_pb2_grpc as rpb_grpc
from banditd.server.ads.budget import allocate_budget
from banditd.server.storage.snapshot import list_snapshots
from banditd.server.storage.wal import list_segments, read_segment
from banditd.storage.v1 import storage_pb2 as st
from helpers import (
    ServerProcess,
    create,
    fill,
    free_port,
    make_experiment,
    running_server,
    tmpfs,
)

pytestmark = pytest.mark.slow


def _stats(stub, experiment_id: str) -> dict[str, tuple[int, float]]:
    reply = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=experiment_id))
    return {a.arm_id: (a.rewards, a.reward_sum) for a in reply.arms}


def _metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- the disk ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["os", "fsync"])
def test_a_full_disk_refuses_changes_loses_nothing_and_resumes(tmp_path, mode):
    """Disk full while writing the log: the failed reward is not applied, its retry is not a
    duplicate, nothing torn is left in the log, and once space is free the server takes
    changes again by itself; every acknowledged reward survives kill -9."""
    with tmpfs(tmp_path / "disk", size="4m") as disk:
        data = disk / "data"
        metrics_port = free_port()
        server = ServerProcess(data, durability=mode, snapshot_interval_seconds=0,
                               log_retry_seconds=0.2, metrics_port=metrics_port)
        stub = server.stub
        create(stub, "e", arms=("a", "b"))
        for _ in range(20):
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a", reward=1))
        before = _stats(stub, "e")
        filler = fill(disk)
        # the log's last page still has room for a few records: reward until a write fails
        for _ in range(5000):
            decision = stub.SelectArm(pb.SelectArmRequest(experiment_id="e"))
            reward = pb.RecordRewardRequest(  # arm_id too: its decision may be lost with the
                experiment_id="e", decision_id=decision.decision_id,  # failed write
                arm_id=decision.arm_id, reward=1)
            code = _code(lambda r=reward: stub.RecordReward(r))
            if code != grpc.StatusCode.OK:
                break
            before = _stats(stub, "e")
        assert code == grpc.StatusCode.UNAVAILABLE
        server.wait_for(lambda: server.health() == "NOT_SERVING", 30, "NOT_SERVING")
        assert _code(lambda: stub.RecordReward(reward)) == grpc.StatusCode.UNAVAILABLE  # no
        # "duplicate" for what the log does not have; reads and decisions go on meanwhile
        stub.SelectArm(pb.SelectArmRequest(experiment_id="e"))
        server.wait_for(lambda: _stats(stub, "e") == before, 30, "rebuilt from the log")
        assert _metric(metrics_port, "banditd_log_writable") == 0.0
        assert _metric(metrics_port, "banditd_log_write_failures") >= 1.0
        filler.unlink()
        server.wait_serving(60)
        again = stub.RecordReward(reward)
        assert not again.duplicate  # the failed attempt counted nothing
        assert stub.RecordReward(reward).duplicate
        expected = dict(before)
        arm = decision.arm_id
        expected[arm] = (expected[arm][0] + 1, expected[arm][1] + 1.0)
        assert _stats(stub, "e") == expected
        server.kill()
        for _, path in list_segments(data):  # no torn record was left behind
            assert not read_segment(path).problem, path
        with ServerProcess(data, durability=mode) as again_server:
            assert _stats(again_server.stub, "e") == expected
            assert again_server.stub.RecordReward(reward).duplicate


def test_no_inodes_for_a_new_log_segment_keeps_the_old_one(tmp_path):
    """Log rotation whose new file cannot be created (no inodes left): the snapshot fails,
    the log goes on in its segment (no "Bad file descriptor"), nothing is lost; once inodes
    are free, snapshots work again."""
    with tmpfs(tmp_path / "disk", size="64m", inodes=64) as disk:
        data = disk / "data"
        server = ServerProcess(data, snapshot_interval_seconds=0.3)
        stub = server.stub
        create(stub, "e", arms=("a", "b"))
        server.wait_for(lambda: list_snapshots(data), 30, "a first snapshot")
        hogs = disk / "hogs"
        hogs.mkdir()
        made = 0
        while True:  # use up the inodes
            try:
                (hogs / str(made)).touch()
            except OSError:
                break
            made += 1
        for i in range(200):
            assert not stub.RecordReward(pb.RecordRewardRequest(
                experiment_id="e", arm_id="ab"[i % 2], reward=1)).duplicate
            time.sleep(0.005)
        server.wait_for(lambda: "periodic snapshot failed" in server.text(), 30,
                        "a snapshot failing for want of an inode")
        assert "Bad file descriptor" not in server.text()
        for f in hogs.iterdir():
            f.unlink()
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a", reward=1))
        newest = list_snapshots(data)[0][0]
        server.wait_for(lambda: list_snapshots(data)[0][0] > newest, 30, "a new snapshot")
        expected = _stats(stub, "e")
        assert expected == {"a": (101, 101.0), "b": (100, 100.0)}
        server.kill()
        with ServerProcess(data) as again:
            assert _stats(again.stub, "e") == expected


def test_a_second_server_on_the_same_data_directory_exits_naming_the_first(tmp_path):
    data = tmp_path / "data"
    with ServerProcess(data) as first:
        create(first.stub, "e")
        second = ServerProcess(data, wait=False)
        assert second.proc.wait(timeout=120) != 0
        assert f"pid {first.proc.pid}" in second.text()
        second.channel.close()
        assert first.health() == "SERVING"  # the first goes on, its log untouched
        first.stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a",
                                                       reward=1))
    with ServerProcess(data) as third:  # free once the first has stopped
        assert _stats(third.stub, "e")["a"] == (1, 1.0)


def _two_snapshots_and_a_pruned_log(data: Path) -> dict:
    import asyncio

    with running_server(data, snapshot_interval_seconds=0) as srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.DecisionServiceStub(channel)
        create(stub, "e", arms=("a", "b"))
        for _round in range(3):
            for _ in range(5):
                stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a",
                                                         reward=1))
            asyncio.run_coroutine_threadsafe(srv.app.storage.take_snapshot(), srv.loop
                                             ).result(60)
        expected = _stats(stub, "e")
        channel.close()
    return expected


def test_unreadable_snapshots_and_a_log_that_does_not_reach_back_refuse_to_start(tmp_path):
    """Both kept snapshots unreadable and the log pruned past them: the server refuses to
    start (non-zero exit, a clear message) and deletes nothing; with --start-from-remains it
    starts from what is left, with the unreadable files kept in damaged/."""
    data = tmp_path / "data"
    _two_snapshots_and_a_pruned_log(data)
    snaps = list_snapshots(data)
    assert len(snaps) == 2 and list_segments(data)[0][0] > 1  # the log starts after lsn 1
    for _, path in snaps:
        path.write_bytes(os.urandom(path.stat().st_size))
    names = {p.name for p in data.iterdir()}
    refused = ServerProcess(data, wait=False)
    assert refused.proc.wait(timeout=300) != 0
    assert "cannot restore" in refused.text() and "--start-from-remains" in refused.text()
    refused.channel.close()
    # nothing deleted: every file is where it was, or (unreadable) moved to damaged/
    here = {p.name for p in data.iterdir()}
    moved = {p.name.rsplit(".", 1)[0] for p in (data / "damaged").iterdir()}
    assert names <= here | moved and moved == {path.name for _, path in snaps}
    with ServerProcess(data, "--start-from-remains") as remains:
        assert remains.health() == "SERVING"
        assert "starting from what remains" in remains.text()
    damaged = sorted(p.name for p in (data / "damaged").iterdir())
    assert sum(n.startswith("snapshot-") for n in damaged) == 2  # kept, never deleted


def test_a_stray_file_named_past_the_newest_snapshot_is_never_why_files_are_pruned(tmp_path):
    """An unreadable snapshot-looking file with a later position appears in the data
    directory: new snapshots prune around the server's own, never around it."""
    data = tmp_path / "data"
    with running_server(data, snapshot_interval_seconds=0) as srv:
        import asyncio

        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.DecisionServiceStub(channel)
        create(stub, "e", arms=("a", "b"))
        (data / f"snapshot-{10**15:020d}.snap").write_bytes(b"not a snapshot")
        for _ in range(3):
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a", reward=1))
            asyncio.run_coroutine_threadsafe(srv.app.storage.take_snapshot(), srv.loop
                                             ).result(60)
        expected = _stats(stub, "e")
        channel.close()
        srv.crash()
    readable = [lsn for lsn, _ in list_snapshots(data) if lsn < 10**15]
    assert len(readable) == 2
    with running_server(data) as srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        assert _stats(pb_grpc.DecisionServiceStub(channel), "e") == expected
        assert any("unreadable snapshot" in p for p in srv.app.restore_report.problems)
        channel.close()
    assert not (data / f"snapshot-{10**15:020d}.snap").exists()
    assert list((data / "damaged").glob(f"snapshot-{10**15:020d}.snap.*"))


# -- time ---------------------------------------------------------------------------------------

def test_a_far_future_event_time_is_refused_and_moves_no_day(tmp_path):
    with running_server(tmp_path) as srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        stub = pb_grpc.DecisionServiceStub(channel)
        stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
            campaign_id="c", daily_budget=100.0, max_bid=1.0)))
        far = timestamp_pb2.Timestamp(seconds=7_000_000_000)  # 2191
        try:
            stub.PaceBid(pb.PaceBidRequest(campaign_id="c", base_bid=1.0, event_time=far))
            raise AssertionError("a bid in 2191 was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "ahead of the server clock" in exc.details()
        soon = timestamp_pb2.Timestamp(seconds=int(time.time()) + 1800)  # within the skew
        assert stub.PaceBid(pb.PaceBidRequest(campaign_id="c", base_bid=1.0,
                                              event_time=soon)).bid > 0
        today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 1800))
        assert stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="c")).day == today
        assert stub.PaceBid(pb.PaceBidRequest(campaign_id="c", base_bid=1.0)).bid > 0
        channel.close()


# -- the internal port of --workers N ------------------------------------------------------------

def test_a_stranger_on_the_internal_port_is_refused_and_internal_headers_are_ignored(tmp_path):
    import re
    import subprocess
    import sys

    data = tmp_path / "data"
    log = tmp_path / "workers.log"
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "banditd"), "serve", "--workers", "2", "--port", "0",
         "--port-file", str(port_file), "--data-dir", str(data), "--set", "drain_seconds=0"],
        stderr=open(log, "a"), start_new_session=True)  # noqa: SIM115 (the child writes it)
    try:
        deadline = time.monotonic() + 600
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        public = int(port_file.read_text())
        private = int(re.search(r"internal port 127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{private}") as channel:
            replication = rpb_grpc.ReplicationServiceStub(channel)
            poison = st.WalRecord(reward_table=st.RewardTable(
                experiment_ids=["e"], arm_ids=["a"], rewards=[math.nan], context_sizes=[0],
                decision_ids=[""], tombstones=[False])).SerializeToString()
            for metadata in ((), (("banditd-internal-token", "guess"),)):
                code = _code(lambda md=metadata: replication.PublishDecisions(
                    rpb.PublishDecisionsRequest(worker_index=1, records=[poison]),
                    metadata=md, timeout=10))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                code = _code(lambda md=metadata: next(iter(replication.Subscribe(
                    rpb.SubscribeRequest(worker_index=1, decision_id_prefix="x"),
                    metadata=md, timeout=10))))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                code = _code(lambda md=metadata: pb_grpc.DecisionServiceStub(channel)
                             .DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="e"),
                                               metadata=md, timeout=10))
                assert code == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(f"127.0.0.1:{public}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            create(stub, "e", arms=("a", "b"))
            for _ in range(20):  # whichever worker answers, the header changes nothing
                reply = stub.RecordReward(
                    pb.RecordRewardRequest(experiment_id="e", arm_id="a", reward=1),
                    metadata=(("banditd-forwarded-by", "1"),
                              ("banditd-internal-token", "guess")), timeout=30)
                assert not reply.duplicate
            time.sleep(0.5)  # the followers' stream
            assert _stats(stub, "e")["a"] == (20, 20.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


# -- hostile sizes --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("bounded"), max_ingest_periods=3,
                        memory_budget_bytes=40_000_000, decision_capacity=10_000) as srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}",
                                        options=[("grpc.max_send_message_length", -1)])
        yield srv, pb_grpc.DecisionServiceStub(channel)
        channel.close()


def _refused(call) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("accepted")


def test_a_four_megabyte_decision_id_is_refused_in_a_short_message(bounded):
    srv, stub = bounded
    create(stub, "ids", arms=("a",))
    exc = _refused(lambda: stub.RecordReward(pb.RecordRewardRequest(
        experiment_id="ids", decision_id="d" * (4 << 20), arm_id="a", reward=1)))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4,194,304 characters, at most 128" in exc.details()
    assert len(srv.call(lambda: srv.app.state.store)) == 0  # nothing stored for it


@pytest.mark.parametrize("field", ["experiment_id", "eligible_arm_ids"])
def test_a_ten_kilobyte_id_in_an_error_is_cut_and_counted_as_what_the_client_saw(bounded,
                                                                               field):
    srv, stub = bounded
    create(stub, f"long-{field}", arms=("a",))
    request = (pb.SelectArmRequest(experiment_id="x" * 10_000) if field == "experiment_id" else
               pb.SelectArmRequest(experiment_id=f"long-{field}",
                                   eligible_arm_ids=["x" * 10_000]))
    exc = _refused(lambda: stub.SelectArm(request))
    expected = (grpc.StatusCode.INVALID_ARGUMENT if field == "experiment_id"
                else grpc.StatusCode.NOT_FOUND)
    assert exc.code() == expected  # not RESOURCE_EXHAUSTED from an oversized header
    assert len(exc.details()) < 300 and "10,000 characters" in exc.details()
    counts = srv.call(lambda: dict(srv.app.core.metrics._stats.counts))
    assert counts.get(("SelectArm", expected.name), 0) >= 1
    assert counts.get(("SelectArm", "RESOURCE_EXHAUSTED"), 0) == 0


def test_the_memory_budget_bounds_arms_of_all_experiments(bounded):
    srv, stub = bounded
    arms = [f"arm-{i:05d}" for i in range(10_000)]
    create(stub, "big-1", arms=arms)  # about 6 MB estimated
    created = 1
    while True:
        try:
            create(stub, f"big-{created + 1}", arms=arms)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "memory budget is 40 MB" in exc.details()
            break
        created += 1
        assert created < 20
    footprint = srv.call(lambda: srv.app.state.experiments.footprint())
    assert footprint <= 40_000_000
    exc = _refused(lambda: stub.UpdateArms(pb.UpdateArmsRequest(
        experiment_id="big-1", add_arm_ids=[f"more-{i}" for i in range(10_000)])))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for i in range(created):
        stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id=f"big-{i + 1}"))


def test_the_footprint_estimate_is_not_below_what_an_experiment_takes(tmp_path):
    """The memory budget counts what experiments take: the estimate covers tracemalloc's
    measurement of creating one (and is not wildly above it)."""
    import tracemalloc

    from banditd.server.settings import Settings
    from helpers import InProcess

    sv = InProcess(Settings(data_dir=tmp_path, durability="snapshot"))
    for policy, dim in ((pb.Policy(thompson=pb.Policy.Thompson()), 0),
                        (pb.Policy(lin_ucb=pb.Policy.LinUcb()), 8)):
        config = make_experiment(f"e{dim}", arms=[f"arm-{i:06d}" for i in range(5_000)],
                                 policy=policy, context_dim=dim,
                                 reward_type=pb.REWARD_TYPE_CONTINUOUS if dim
                                 else pb.REWARD_TYPE_BINARY)
        tracemalloc.start()
        experiment = sv.create_experiment(config)
        taken, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert taken <= experiment.footprint <= 3 * taken, (dim, taken, experiment.footprint)


def test_ingest_periods_per_arm_are_bounded_and_summed_exactly(bounded):
    srv, stub = bounded
    create(stub, "periods", arms=("a", "b"))

    def ingest(period: str, trials: float, successes: float):
        return stub.IngestMetrics(pb.IngestMetricsRequest(
            experiment_id="periods", period=period,
            metrics=[pb.ArmMetrics(arm_id="a", trials=trials, successes=successes)]))

    for day in (1, 2, 3):
        ingest(f"2026-01-0{day}", 10.0, 1.0)
    exc = _refused(lambda: ingest("2026-01-04", 10.0, 1.0))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_ingest_periods" in exc.details()
    assert ingest("2026-01-02", 0.1, 0.1).replaced_arms == 1  # a held period is replaced
    arm = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="periods")).arms[0]
    assert arm.trials == math.fsum([10.0, 0.1, 10.0]) and arm.successes == math.fsum(
        [1.0, 0.1, 1.0])


def test_exact_incremental_sums_equal_fsum_of_what_is_held():
    from banditd.server.state.experiment import _add_exact

    rng = np.random.default_rng(3)
    held: dict[int, float] = {}
    partials: list[float] = []
    for _ in range(5_000):
        key = int(rng.integers(0, 50))
        value = float(rng.choice([rng.uniform(0, 1e12), rng.uniform(0, 1e-3), 0.1]))
        _add_exact(partials, value)
        _add_exact(partials, -held.get(key, 0.0))
        held[key] = value
        assert math.fsum(partials) == math.fsum(held.values())


def test_an_overlong_time_zone_is_invalid_argument(bounded):
    _, stub = bounded
    exc = _refused(lambda: stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="tz", daily_budget=1.0, max_bid=1.0, time_zone="Europe/" + "x" * 300))))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "time_zone" in exc.details()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(hs.lists(hs.tuples(*(hs.sampled_from([0.0, 1e-310, 5e-324, 1e-9, 1.0, 3.5, 1e12])
                            for _ in range(5))), min_size=1, max_size=6),
       hs.sampled_from([pb.ALLOCATION_STRATEGY_EQUAL, pb.ALLOCATION_STRATEGY_PERFORMANCE_BASED,
                        pb.ALLOCATION_STRATEGY_ROAS_OPTIMIZED,
                        pb.ALLOCATION_STRATEGY_CPA_OPTIMIZED,
                        pb.ALLOCATION_STRATEGY_THOMPSON]))
def test_every_number_allocate_budget_answers_is_finite(groups, strategy):
    request = pb.AllocateBudgetRequest(total_budget=1000.0, strategy=strategy,
                                       min_allocation=0.0, max_allocation=1000.0, num_draws=200)
    for i, (spend, impressions, clicks, conversions, revenue) in enumerate(groups):
        request.ad_groups.add(id=f"g{i}", spend=spend, impressions=max(impressions, clicks),
                              clicks=clicks, conversions=min(conversions, clicks),
                              revenue=revenue)
    split = allocate_budget(request, 10.0, 1000.0)
    assert all(math.isfinite(s) for s in split.shares)
    assert all(math.isfinite(a) for a in split.amounts)
    assert round(sum(split.amounts), 2) == 1000.0


# -- connections ---------------------------------------------------------------------------------

def test_idle_and_silent_connections_are_closed(tmp_path):
    with running_server(tmp_path, max_connection_idle_seconds=1.0,
                        handshake_timeout_seconds=1.0) as srv:
        silent = socket.create_connection(("127.0.0.1", srv.port))  # never says anything
        idle = socket.create_connection(("127.0.0.1", srv.port))
        idle.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        for sock in (silent, idle):
            sock.settimeout(30)
            started = time.monotonic()
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # closed by the server
                received += chunk
            assert time.monotonic() - started < 25
            sock.close()


# -- SIGTERM ------------------------------------------------------------------------------------

def test_sigterm_drains_health_first_and_finishes_calls_in_flight(tmp_path):
    """On SIGTERM health turns NOT_SERVING at once while calls go on being answered for the
    drain period; calls in flight then finish; none is cancelled."""
    server = ServerProcess(tmp_path / "data", drain_seconds=2.0, grace_seconds=5.0)
    create(server.stub, "e", arms=("a", "b", "c"))
    stop = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    def traffic():
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.GetAllocation(pb.GetAllocationRequest(experiment_id="e",
                                                               num_draws=200_000), timeout=30)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    outcomes.append(code)
                if code != "OK":
                    return

    threads = [threading.Thread(target=traffic) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    server.wait_for(lambda: server.health() == "NOT_SERVING", 5, "NOT_SERVING")
    with lock:
        answered_when_draining = len(outcomes)
    time.sleep(1.0)
    with lock:
        assert len(outcomes) > answered_when_draining  # still answering while draining
        assert set(outcomes) == {"OK"}
    # No new calls from here (as clients of a load balancer that saw NOT_SERVING): those
    # sent after the drain may be refused, but every call in flight must still finish.
    stop.set()
    assert server.proc.wait(timeout=60) == 0
    assert time.monotonic() - signalled >= 2.0
    for t in threads:
        t.join(timeout=60)
    assert "CANCELLED" not in outcomes
    assert outcomes.count("OK") >= 6
    server.channel.close()


# -- kill -9, again and again -----------------------------------------------------------------------

def _mixed_traffic(port: int, seed: int, stop: threading.Event, ledger: dict,
                   lock: threading.Lock) -> None:
    """SelectArm -> RecordReward, explicit-arm rewards, PaceBid -> RecordSpend, until the
    server dies; every call is noted as acknowledged or in flight."""
    rnd = random.Random(seed)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        while not stop.is_set():
            try:
                kind = rnd.random()
                if kind < 0.6:
                    d = stub.SelectArm(pb.SelectArmRequest(experiment_id="soak"), timeout=5)
                    if rnd.random() < 0.7:
                        value = float(rnd.random() < 0.4)
                        key = ("r", d.decision_id)
                        with lock:
                            ledger["inflight"][key] = (d.arm_id, value)
                        stub.RecordReward(pb.RecordRewardRequest(
                            experiment_id="soak", decision_id=d.decision_id, reward=value),
                            timeout=5)
                        with lock:
                            ledger["acked"][key] = ledger["inflight"].pop(key)
                else:
                    bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="soak",
                                                         base_bid=rnd.uniform(0.1, 2.0)),
                                       timeout=5)
                    if bid.bid_id:
                        cost = round(bid.bid * rnd.uniform(0.3, 1.0), 6)
                        key = ("s", bid.bid_id)
                        with lock:
                            ledger["inflight"][key] = cost
                        reply = stub.RecordSpend(pb.RecordSpendRequest(
                            campaign_id="soak", bid_id=bid.bid_id, won=True, cost=cost),
                            timeout=5)
                        with lock:
                            ledger["inflight"].pop(key)
                            ledger["acked"][key] = reply.charged
            except grpc.RpcError:
                return


def test_thirty_kill_9_trials_lose_nothing_acknowledged_and_count_nothing_twice(tmp_path):
    data = tmp_path / "data"
    rnd = random.Random(30)
    ledger: dict = {"acked": {}, "inflight": {}}
    lock = threading.Lock()
    totals = {"rewards": 0, "spends": 0}
    server = ServerProcess(data, snapshot_interval_seconds=0.5)
    create(server.stub, "soak", arms=[f"a{i}" for i in range(4)])
    server.stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="soak", daily_budget=1e9, max_bid=5.0, bid_cap_fraction=1.0,
        pacing_mode=pb.PACING_MODE_ASAP, reservation_ttl_seconds=3600)))
    for trial in range(30):
        stop = threading.Event()
        threads = [threading.Thread(target=_mixed_traffic,
                                    args=(server.port, 100 * trial + i, stop, ledger, lock))
                   for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.3, 1.2))
        server.kill()
        stop.set()
        for t in threads:
            t.join(timeout=60)
        server = ServerProcess(data, snapshot_interval_seconds=0.5)
        stub = server.stub
        # every call in flight at the kill is retried: applied now, or recognised as done
        for key, value in list(ledger["inflight"].items()):
            try:
                if key[0] == "r":
                    stub.RecordReward(pb.RecordRewardRequest(
                        experiment_id="soak", decision_id=key[1], reward=value[1]), timeout=30)
                    ledger["acked"][key] = value
                else:
                    reply = stub.RecordSpend(pb.RecordSpendRequest(
                        campaign_id="soak", bid_id=key[1], won=True, cost=value), timeout=30)
                    ledger["acked"][key] = reply.charged if not reply.duplicate else value
            except grpc.RpcError as exc:  # a decision or bid the disk never had
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            del ledger["inflight"][key]
        # and every acknowledged one is there, exactly once
        rewards = {k: v for k, v in ledger["acked"].items() if k[0] == "r"}
        stats = _stats(stub, "soak")
        for arm, (count, total) in stats.items():
            mine = [v[1] for v in rewards.values() if v[0] == arm]
            assert count == len(mine), (trial, arm)
            assert total == sum(mine), (trial, arm)
        spent = stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="soak")).spent
        charged = [v for k, v in ledger["acked"].items() if k[0] == "s"]
        assert spent == pytest.approx(sum(charged), abs=1e-6 * (1 + len(charged))), trial
        totals["rewards"], totals["spends"] = len(rewards), len(charged)
    server.stop()
    print(f"30 kill -9 trials: {totals['rewards']} acknowledged rewards and "
          f"{totals['spends']} acknowledged spends, every one restored exactly once")
    assert totals["rewards"] > 3000 and totals["spends"] > 1000, totals
