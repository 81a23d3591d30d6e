"""Durability: restart restores everything; kill -9 loses no acknowledged reward; damaged
logs and snapshots are detected, reported and recovered from up to the last good point."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.storage.snapshot import list_snapshots
from banditd.server.storage.wal import HEADER, list_segments, read_segment
from banditd.storage.v1 import storage_pb2 as st
from helpers import (
    BIN,
    RunningServer,
    create,
    free_port,
    running_server,
    start_server,
    stub_for,
    wait_serving,
)


def slow(value):
    """A parametrization left out of the fast tier (one case of each kind stays in it)."""
    return pytest.param(value, marks=pytest.mark.slow)


def take_snapshot(srv: RunningServer) -> Path:
    return asyncio.run_coroutine_threadsafe(
        srv.app.storage.take_snapshot(), srv.loop).result(timeout=120)


def everything(stub) -> dict:
    """All observable state: configs, full arm statistics, allocations where defined."""
    out = {}
    for e in stub.ListExperiments(pb.ListExperimentsRequest()).experiments:
        out[e.experiment_id] = (e, stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=e.experiment_id)))
    return out


def populate(stub) -> list[str]:
    """A bit of everything the log records; returns unrewarded decision ids."""
    create(stub, "thompson", arms=("a", "b", "c"), seed=1)
    create(stub, "value", arms=("o1", "o2"), reward_type=pb.REWARD_TYPE_VALUE, seed=2)
    create(stub, "linucb", arms=("x", "y"), policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()),
           context_dim=3, reward_type=pb.REWARD_TYPE_CONTINUOUS, seed=3)
    create(stub, "ucb", arms=("p", "q"), policy=pb.Policy(ucb1=pb.Policy.Ucb1()), seed=4)
    create(stub, "gone", seed=5)
    pending = []
    for i in range(60):
        d = stub.SelectArm(pb.SelectArmRequest(experiment_id="thompson", num_arms=2))
        if i % 3:
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="thompson",
                                                     decision_id=d.decision_id, reward=i % 2))
        else:
            pending.append(d.decision_id)
        v = stub.SelectArm(pb.SelectArmRequest(experiment_id="value"))
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="value", decision_id=v.decision_id,
                                                 reward=float(i % 5) * 3.5))
        c = stub.SelectArm(pb.SelectArmRequest(experiment_id="linucb", context=[i / 60, 1.0, -0.5]))
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="linucb", decision_id=c.decision_id,
                                                 reward=0.1 * i))
    # Batch groups are logged as decision blocks: slates of 2, contexts, few of many arms.
    create(stub, "wide", arms=tuple(f"w{i}" for i in range(50)), seed=6)
    for items in ([pb.SelectArmRequest(experiment_id="thompson", num_arms=2)] * 7,
                  [pb.SelectArmRequest(experiment_id="linucb", context=[i / 5, 0.5, 1.0])
                   for i in range(5)],
                  [pb.SelectArmRequest(experiment_id="wide")] * 3):
        batch = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items)).responses
        for k, d in enumerate(batch):
            if k % 2:
                stub.RecordReward(pb.RecordRewardRequest(
                    experiment_id=items[k].experiment_id, decision_id=d.decision_id, reward=1))
            elif d.arm_id in ("a", "b", "c"):
                pending.append(d.decision_id)
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="thompson", decision_id="lost-decision",
                                             arm_id="c", reward=1))
    stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id="ucb", period="2025-12-01", metrics=[
        pb.ArmMetrics(arm_id="p", trials=100, successes=10), pb.ArmMetrics(arm_id="q", trials=50, successes=9)]))
    stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id="ucb", period="2025-12-01", metrics=[
        pb.ArmMetrics(arm_id="p", trials=120, successes=12)]))
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id="ucb", add_arm_ids=["r"], remove_arm_ids=["q"]))
    stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id="gone"))
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="gone"))
    return pending


@pytest.mark.parametrize("mode", ["os", slow("fsync"), slow("snapshot")])
def test_graceful_restart_restores_everything(tmp_path, mode):
    with running_server(tmp_path, durability=mode) as srv:
        ch, stub = stub_for(srv.port)
        pending = populate(stub)
        before = everything(stub)
        ch.close()
    assert list_snapshots(tmp_path), "graceful shutdown writes a snapshot"
    with running_server(tmp_path, durability=mode) as srv:
        ch, stub = stub_for(srv.port)
        assert everything(stub) == before
        # decisions made before the restart still take their reward, once
        for decision_id in pending:
            r = pb.RecordRewardRequest(experiment_id="thompson", decision_id=decision_id, reward=1)
            first = stub.RecordReward(r)
            assert not first.duplicate
            assert stub.RecordReward(r).duplicate
        ch.close()


@pytest.mark.parametrize("with_snapshot", [slow(False), True])
def test_crash_restores_from_log(tmp_path, with_snapshot):
    """A crash (no final snapshot): newest snapshot (if any) + log tail = the exact state."""
    srv = start_server(tmp_path, durability="os")
    ch, stub = stub_for(srv.port)
    pending = populate(stub)
    if with_snapshot:
        take_snapshot(srv)
        for i in range(20):  # more changes after the snapshot: they come from the log
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="value", arm_id="o2", reward=i))
    before = everything(stub)
    ch.close()
    srv.crash()
    assert bool(list_snapshots(tmp_path)) == with_snapshot
    with running_server(tmp_path, durability="os") as srv2:
        ch, stub = stub_for(srv2.port)
        assert everything(stub) == before
        assert stub.RecordReward(pb.RecordRewardRequest(
            experiment_id="thompson", decision_id="lost-decision", arm_id="c", reward=1)).duplicate
        for decision_id in pending:  # single and batch decisions from the log or snapshot
            r = pb.RecordRewardRequest(experiment_id="thompson", decision_id=decision_id, reward=1)
            assert not stub.RecordReward(r).duplicate
            assert stub.RecordReward(r).duplicate
        ch.close()


# -- kill -9 under sustained concurrent reward traffic -----------------------------------------

def _serve(port: int, data_dir: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(BIN / "banditd"), "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--set", f"durability={mode}", "--set", "snapshot_interval_seconds=0.3"],
        stderr=open(data_dir.parent / f"server-{port}.log", "a"))  # noqa: SIM115 (the child writes it)
    wait_serving(port, proc)
    return proc


def _traffic(port: int, stop: threading.Event, acked: dict, inflight: dict, seed: int) -> None:
    rnd = random.Random(seed)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        while not stop.is_set():
            try:
                d = stub.SelectArm(pb.SelectArmRequest(experiment_id="k9"), timeout=5)
                reward = float(rnd.random() < 0.4)
                key = d.decision_id
                inflight[key] = (d.arm_id, reward)
                stub.RecordReward(pb.RecordRewardRequest(experiment_id="k9", decision_id=key,
                                                         reward=reward), timeout=5)
                acked[key] = inflight.pop(key)
            except grpc.RpcError:
                return  # the server was killed


@pytest.mark.slow
@pytest.mark.parametrize("mode,trials", [("os", 5), ("fsync", 2)])
def test_kill_9_loses_no_acknowledged_reward(tmp_path, mode, trials):
    rnd = random.Random(42)
    for trial in range(trials):
        data = tmp_path / f"trial{trial}"
        data.mkdir()
        port = free_port()
        proc = _serve(port, data, mode)
        ch, stub = stub_for(port)
        create(stub, "k9", arms=[f"a{i}" for i in range(5)], seed=trial)
        stop = threading.Event()
        acked: dict = {}
        inflight: dict = {}
        threads = [threading.Thread(target=_traffic, args=(port, stop, acked, inflight, 10 * trial + i))
                   for i in range(8)]
        for t in threads:
            t.start()
        # a random moment in sustained traffic, counted in acknowledged rewards (seeded), not
        # in seconds: the same amount of traffic before the kill however busy the machine is
        kill_after = rnd.randrange(50, 300)
        deadline = time.monotonic() + 300  # bounds the wait only
        while len(acked) < kill_after and any(t.is_alive() for t in threads):
            assert time.monotonic() < deadline, f"{len(acked)} rewards acknowledged"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        ch.close()
        assert len(acked) >= kill_after

        proc = _serve(port, data, mode)
        try:
            ch, stub = stub_for(port)
            stats = {a.arm_id: a for a in stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="k9")).arms}
            restored = sum(a.rewards for a in stats.values())
            assert len(acked) <= restored <= len(acked) + len(inflight)
            # exactly: every acknowledged reward is there (its retry is a duplicate) ...
            for key in acked:
                r = stub.RecordReward(pb.RecordRewardRequest(experiment_id="k9", decision_id=key, reward=1))
                assert r.duplicate, f"trial {trial}: acknowledged reward {key} lost"
            # ... and the unacknowledged in-flight ones were applied at most once
            applied = dict(acked)
            for key, value in inflight.items():
                try:
                    r = stub.RecordReward(pb.RecordRewardRequest(experiment_id="k9", decision_id=key,
                                                                 reward=value[1]))
                except grpc.RpcError as exc:  # its decision record did not reach the disk
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    continue
                if r.duplicate:
                    applied[key] = value
                else:
                    applied[key] = value
                    restored += 1
            stats = {a.arm_id: a for a in stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="k9")).arms}
            for arm, a in stats.items():
                mine = [v for k, v in applied.items() if v[0] == arm]
                assert a.rewards == len(mine), (trial, arm)
                assert a.reward_sum == sum(v[1] for v in mine), (trial, arm)
            ch.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


# -- damaged files -------------------------------------------------------------------------------

def _logged_rewards(tmp_path: Path, n: int) -> list[str]:
    """A crashed server whose log holds: create, then n single-reward records (arm order)."""
    arms = ["a", "b", "c"]
    order = [arms[(i * 7) % 3] for i in range(n)]
    srv = start_server(tmp_path, durability="os", snapshot_interval_seconds=0)
    ch, stub = stub_for(srv.port)
    create(stub, "e", arms=arms)
    for arm in order:
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id=arm, reward=1))
    ch.close()
    srv.crash()
    return order


def _frame_ends(path: Path) -> list[int]:
    data = path.read_bytes()
    ends, pos = [], 0
    while pos < len(data):
        length, _ = HEADER.unpack_from(data, pos)
        pos += HEADER.size + length
        ends.append(pos)
    return ends


def _reward_counts(tmp_path: Path) -> tuple[dict, bool]:
    with running_server(tmp_path, durability="os") as srv:
        ch, stub = stub_for(srv.port)
        try:
            stats = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="e"))
            return {a.arm_id: a.rewards for a in stats.arms}, True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return {}, False
        finally:
            ch.close()


def _set_aside(data_dir: Path) -> list[bytes]:
    """The contents of the files restore moved to ``damaged/``."""
    return [p.read_bytes() for p in sorted((data_dir / "damaged").glob("*"))]


def _expected(order: list[str], records: int) -> dict:
    """Counts after the first `records` log records (record 1 = create)."""
    counts = {"a": 0, "b": 0, "c": 0}
    for arm in order[: max(0, records - 1)]:
        counts[arm] += 1
    return counts


@pytest.mark.parametrize("seed", [slow(0), slow(1), slow(2), slow(3)])
def test_truncated_log_recovers_to_last_complete_record(tmp_path, seed):
    order = _logged_rewards(tmp_path, 40)
    (_, segment), = list_segments(tmp_path)
    ends = _frame_ends(segment)
    cut = random.Random(seed).randrange(1, ends[-1])
    with open(segment, "r+b") as f:
        f.truncate(cut)
    truncated = segment.read_bytes()
    complete = sum(1 for e in ends if e <= cut)
    counts, exists = _reward_counts(tmp_path)
    assert exists == (complete >= 1)
    if exists:
        assert counts == _expected(order, complete)
    # a torn tail is set aside whole, as it was on disk; a cut between records is no damage
    assert _set_aside(tmp_path) == ([] if cut in ends else [truncated])


@pytest.mark.parametrize("seed", [0, slow(1), slow(2), slow(3)])
def test_corrupt_log_byte_stops_replay_at_that_record(tmp_path, seed):
    order = _logged_rewards(tmp_path, 40)
    (_, segment), = list_segments(tmp_path)
    ends = _frame_ends(segment)
    data = bytearray(segment.read_bytes())
    pos = random.Random(seed).randrange(ends[0], len(data))  # keep the create record
    data[pos] ^= 0xFF
    segment.write_bytes(bytes(data))
    intact = sum(1 for e in ends if e <= pos)  # records entirely before the damaged byte
    counts, exists = _reward_counts(tmp_path)
    assert exists and counts == _expected(order, intact)
    assert _set_aside(tmp_path) == [bytes(data)]  # the damaged segment, kept as it was
    # the server keeps working after the recovery point, and a restart is clean
    counts_again, _ = _reward_counts(tmp_path)
    assert counts_again == counts
    assert _set_aside(tmp_path) == [bytes(data)]  # nothing more set aside


@pytest.mark.parametrize("damage", [slow("truncate"), "flip", slow("garbage")])
def test_damaged_newest_snapshot_falls_back_to_previous(tmp_path, damage):
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0) as srv:
        ch, stub = stub_for(srv.port)
        create(stub, "e", arms=("a", "b"))
        for round_ in range(3):
            for _ in range(10):
                stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a", reward=1))
            if round_ < 2:
                take_snapshot(srv)
        before = everything(stub)
        ch.close()
        srv.crash()  # keep the log as is: no final snapshot
    snaps = list_snapshots(tmp_path)
    assert len(snaps) == 2
    newest = snaps[0][1]
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(random.Random(7).randbytes(len(data)))
    with running_server(tmp_path, durability="os") as srv2:
        ch, stub = stub_for(srv2.port)
        assert everything(stub) == before  # previous snapshot + the log kept back to it
        report = srv2.app.restore_report
        assert report.snapshot == snaps[1][1].name
        assert any("unreadable snapshot" in p for p in report.problems)
        ch.close()
    moved = list((tmp_path / "damaged").glob(newest.name + ".*"))  # kept, never deleted
    assert len(moved) == 1 and not newest.exists()


@pytest.mark.slow
def test_snapshot_inspect_cli(tmp_path):
    with running_server(tmp_path, durability="os") as srv:
        ch, stub = stub_for(srv.port)
        populate(stub)
        stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
            campaign_id="spring", daily_budget=100, max_bid=1, time_zone="Europe/Rome")))
        bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="spring", base_bid=0.5))
        stub.RecordSpend(pb.RecordSpendRequest(campaign_id="spring", bid_id=bid.bid_id,
                                               won=True, cost=0.25))
        stub.PaceBid(pb.PaceBidRequest(campaign_id="spring", base_bid=0.5))
        ch.close()
    (_, path), *_ = list_snapshots(tmp_path)
    out = subprocess.run([str(BIN / "banditd"), "snapshot", "inspect", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "thompson: policy thompson, 3 arms" in out.stdout
    assert "linucb: policy lin_ucb, 2 arms, context_dim 3" in out.stdout
    assert "experiments: 5" in out.stdout
    # 3 x 60 single + 15 batch decisions, 1 tombstone; 160 + 6 batch rewards + the tombstone
    assert "decisions: 196 (167 rewarded)" in out.stdout
    assert "campaigns: 1" in out.stdout
    assert "spring: budget 100 Europe/Rome" in out.stdout and "spent 0.25, 1 open reserv" in out.stdout
    path.write_bytes(b"not a banditd snapshot file at all")
    bad = subprocess.run([str(BIN / "banditd"), "snapshot", "inspect", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "bad magic" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_segments_are_pruned_after_snapshots(tmp_path):
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0) as srv:
        ch, stub = stub_for(srv.port)
        create(stub, "e")
        for _ in range(4):
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="e", arm_id="a", reward=1))
            take_snapshot(srv)
        ch.close()
    snaps = list_snapshots(tmp_path)
    assert len(snaps) == 2  # the newest two
    older = snaps[1][0]
    for first, path in list_segments(tmp_path):
        scan = read_segment(path)
        # every remaining segment holds something after the older kept snapshot, or is current
        assert first + len(scan.records) - 1 > older or path == list_segments(tmp_path)[-1][1]


@pytest.mark.slow
def test_shutdown_stops_a_paced_snapshot_writer(tmp_path):
    """A graceful stop during a slow periodic snapshot kills that writer (no older snapshot
    renamed into place later, no temp file left) and writes the final snapshot unpaced."""
    arms = tuple(f"a{i}" for i in range(2000))
    # ~1 KB/s: the writer sleeps for about a minute after its first chunk
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0.05,
                        snapshot_write_mb_per_s=0.001) as srv:
        ch, stub = stub_for(srv.port)
        create(stub, "big", arms=arms)
        durability = srv.app.storage
        deadline = time.monotonic() + 60
        while durability.snapshots.writer_pid is None:
            assert time.monotonic() < deadline, "no periodic snapshot started"
            time.sleep(0.01)
        pid = durability.snapshots.writer_pid
        for _ in range(3):  # logged after the snapshot instant: only the final one has them
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="big", arm_id="a7", reward=1))
        ch.close()
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    assert list(tmp_path.glob("*.tmp")) == []
    assert durability.snapshots.taken == 1  # the final one only
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0) as srv:
        ch, stub = stub_for(srv.port)
        report = srv.app.restore_report
        assert report.replayed == 0 and not report.problems  # all from the final snapshot
        stats = {a.arm_id: a for a in stub.GetArmStats(
            pb.GetArmStatsRequest(experiment_id="big")).arms}
        assert len(stats) == 2000 and stats["a7"].rewards == 3
        ch.close()


@pytest.mark.parametrize("delay", [0.025, slow(0.5)])
def test_decision_records_are_written_after_the_configured_delay(tmp_path, delay):
    """A SelectArm's decision record is handed to the log by a timer set to
    ``decision_log_delay_seconds`` when the first pending decision is made (checked on the
    monotonic clock the timer keeps, the loop's: no wall-clock thresholds), and is in the log
    after it fired."""
    with running_server(tmp_path, decision_log_delay_seconds=delay,
                        snapshot_interval_seconds=0) as server:
        loop = server.loop
        durability = server.app.storage

        def on_loop(fn):
            async def call():
                return fn()
            return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            create(stub, "delay")
            on_loop(durability.hand_over_pending)
            before = on_loop(loop.time)
            decision = stub.SelectArm(pb.SelectArmRequest(experiment_id="delay"))
            timer_at, after = on_loop(lambda: (durability._lazy_timer.when(), loop.time()))
            assert before <= timer_at - delay <= after

            def logged() -> set[str]:
                ids: set[str] = set()
                for _, path in list_segments(tmp_path):
                    for raw in read_segment(path).records:
                        record = st.WalRecord.FromString(raw)
                        if record.HasField("decision_table"):
                            ids.update(record.decision_table.decision_ids)
                return ids

            deadline = time.monotonic() + 30
            while decision.decision_id not in logged():
                assert time.monotonic() < deadline, "decision record never written"
                time.sleep(0.01)
