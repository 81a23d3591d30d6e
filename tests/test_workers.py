"""``banditd serve --workers N``: N processes on one port, one consistent state.

Real supervisors as subprocesses (127.0.0.1, port 0, temporary data directories). Clients
reach a chosen worker by opening connections until the ``banditd-worker`` metadata names it
(SO_REUSEPORT spreads connections, not requests). Every assertion is on exact numbers;
time only bounds the waits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.api.app import SERVICE
from banditd.server.cluster.replication import ReplicationLeader, _Follower
from banditd.server.cluster.workers import FORWARDED_BY_KEY, LOCAL_RPCS, _forwardable, _forwarded_by
from banditd.server.state.decision_store import split_decision_id
from helpers import BIN, make_experiment

START_TIMEOUT = 300  # a cold Numba cache compiles every kernel first


class Workers:
    """A ``banditd serve --workers N`` subprocess and one stub per worker."""

    def __init__(self, data_dir: Path, n: int, *args: str, metadata=None) -> None:
        self.n = n
        self.metadata = metadata  # sent with the calls that find the workers
        port_file = data_dir.parent / f"{data_dir.name}.port"
        port_file.unlink(missing_ok=True)
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc = subprocess.Popen(
            [str(BIN / "banditd"), "serve", "--workers", str(n), "--port", "0",
             "--port-file", str(port_file), "--data-dir", str(data_dir),
             "--set", "grace_seconds=2", "--set", "drain_seconds=0", *args],
            stderr=open(self.log, "a"), start_new_session=True)  # noqa: SIM115 (the child writes it)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_file.exists() or not port_file.read_text().strip():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        self.channels: dict[int, grpc.Channel] = {}
        self.stubs: dict[int, pb_grpc.DecisionServiceStub] = {}
        self._connect()

    def _connect(self) -> None:
        for attempt in range(200):
            ch = grpc.insecure_channel(
                f"127.0.0.1:{self.port}",
                # distinct arguments and no shared subchannel: a new connection each time
                options=[("banditd.test.attempt", attempt), ("grpc.use_local_subchannel_pool", 1)])
            stub = pb_grpc.DecisionServiceStub(ch)
            _, call = stub.ListExperiments.with_call(pb.ListExperimentsRequest(), timeout=10,
                                                     metadata=self.metadata)
            index = worker_of(call)
            if index in self.channels:
                ch.close()
                continue
            self.channels[index], self.stubs[index] = ch, stub
            if len(self.channels) == self.n:
                return
        raise AssertionError(f"reached workers {sorted(self.channels)} of {self.n}")

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(p) for p in children.split()]

    def stop(self) -> int:
        """Graceful stop (SIGTERM to the supervisor); its exit code."""
        for ch in self.channels.values():
            ch.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def kill(self) -> None:
        for ch in self.channels.values():
            ch.close()
        for pid in [self.proc.pid, *self._pids_or_none()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def _pids_or_none(self) -> list[int]:
        try:
            return self.pids()
        except OSError:
            return []


def worker_of(call) -> int:
    return int(dict(call.trailing_metadata())["banditd-worker"])


def stats(stub, experiment_id: str) -> dict[str, tuple[int, int, float]]:
    reply = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=experiment_id), timeout=10)
    return {a.arm_id: (a.selections, a.rewards, a.reward_sum) for a in reply.arms}


def wait_for_stats(w: Workers, experiment_id: str, expected: dict) -> None:
    """Every worker's GetArmStats equals ``expected`` exactly (waiting at most 10 s for the
    stream to deliver; the comparison itself is exact)."""
    for index, stub in sorted(w.stubs.items()):
        deadline = time.monotonic() + 10
        while (seen := stats(stub, experiment_id)) != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == expected, f"worker {index}"


@pytest.fixture
def workers(tmp_path):
    started: list[Workers] = []

    def start(n: int = 2, data: str = "data", *args: str, metadata=None) -> Workers:
        w = Workers(tmp_path / data, n, *args, metadata=metadata)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.kill()


@pytest.mark.slow
def test_rewards_through_every_worker_add_up_exactly_and_survive_a_restart(workers):
    w = workers(2)
    leader, follower = w.stubs[0], w.stubs[1]
    for ch in w.channels.values():  # the port file is written once every worker serves
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING

    # Created through the follower: acknowledged once every worker has it.
    follower.CreateExperiment(pb.CreateExperimentRequest(
        experiment=make_experiment("rr", arms=("a", "b", "c", "d"), seed=7)))
    assert leader.GetExperiment(pb.GetExperimentRequest(experiment_id="rr")).experiment_id == "rr"

    selections = dict.fromkeys("abcd", 0)
    rewards = dict.fromkeys("abcd", 0)
    sums = dict.fromkeys("abcd", 0.0)
    decisions: list[tuple[str, str, float, int]] = []  # (decision id, arm, reward, maker)
    stubs = [leader, follower]
    for i in range(70):
        maker = i % 2
        if i % 10 == 9:
            made = [(r.decision_id, r.ranked_arm_ids or [r.arm_id]) for r in stubs[maker].BatchSelectArms(
                pb.BatchSelectArmsRequest(requests=[pb.SelectArmRequest(experiment_id="rr")] * 5)).responses]
        else:
            r = stubs[maker].SelectArm(pb.SelectArmRequest(experiment_id="rr", num_arms=1 + i % 3))
            made = [(r.decision_id, list(r.ranked_arm_ids) or [r.arm_id])]
        for decision_id, slate in made:
            assert split_decision_id(decision_id)[0].endswith(f"-{maker}")  # names its worker
            for arm in slate:
                selections[arm] += 1
            reward = float((i * 7 + len(decisions)) % 3 == 0)
            decisions.append((decision_id, slate[0], reward, maker))
            if i < 40:
                # Rewarded at once through the other worker (the leader waits for decisions
                # that the follower has not handed over yet, instead of NOT_FOUND).
                reply = stubs[1 - maker].RecordReward(pb.RecordRewardRequest(
                    experiment_id="rr", decision_id=decision_id, reward=reward))
                assert not reply.duplicate, i
                rewards[slate[0]] += 1
                sums[slate[0]] += reward
    assert len({d[0] for d in decisions}) == len(decisions)
    rewarded = sum(rewards.values())

    # Later rewards in batches through alternating workers, with retries inside the batch ...
    for k, chunk in enumerate((decisions[rewarded:rewarded + 15], decisions[rewarded + 15:])):
        items = [pb.RecordRewardRequest(experiment_id="rr", decision_id=d, reward=r)
                 for d, _, r, _ in chunk]
        reply = stubs[k % 2].BatchRecordRewards(pb.BatchRecordRewardsRequest(
            requests=items + items[:3]))
        assert [x.duplicate for x in reply.responses] == [False] * len(items) + [True] * 3
        for _, arm, reward, _ in chunk:
            rewards[arm] += 1
            sums[arm] += reward
    # ... retries of every reward through both workers are duplicates ...
    for decision_id, _, reward, _ in decisions[::4]:
        for stub in stubs:
            assert stub.RecordReward(pb.RecordRewardRequest(
                experiment_id="rr", decision_id=decision_id, reward=reward)).duplicate
    # ... and rewards by explicit arm through both workers count too.
    for i in range(10):
        stubs[i % 2].RecordReward(pb.RecordRewardRequest(experiment_id="rr", arm_id="d", reward=1))
        rewards["d"] += 1
        sums["d"] += 1.0

    expected = {a: (selections[a], rewards[a], sums[a]) for a in "abcd"}
    wait_for_stats(w, "rr", expected)

    # Deleted through the follower: gone on the leader at once.
    follower.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment("gone")))
    follower.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="gone"))
    for stub in stubs:
        with pytest.raises(grpc.RpcError) as err:
            stub.GetExperiment(pb.GetExperimentRequest(experiment_id="gone"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert worker_of(err.value) in (0, 1)  # errors carry the worker too

    # Pacing is forwarded to the leader: one budget, whichever worker bids.
    follower.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="c", daily_budget=10.0, max_bid=1.0)))
    event = timestamp_pb2.Timestamp(seconds=1_780_000_000)
    spent = 0.0
    for i in range(20):
        bid = stubs[i % 2].PaceBid(pb.PaceBidRequest(campaign_id="c", base_bid=0.5, event_time=event))
        if bid.bid > 0:
            stubs[1 - i % 2].RecordSpend(pb.RecordSpendRequest(
                campaign_id="c", bid_id=bid.bid_id, won=True, cost=bid.bid / 2, event_time=event))
            spent += bid.bid / 2
    status = [s.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="c", event_time=event))
              for s in stubs]
    assert status[0].spent == status[1].spent == pytest.approx(spent) and spent > 0
    assert status[0].spent + status[0].reserved <= 10.0

    # A graceful restart keeps everything: the leader's log and snapshot hold the followers'
    # decisions as well, so their retries are still duplicates.
    assert w.stop() == 0
    w2 = workers(2)
    wait_for_stats(w2, "rr", expected)
    for decision_id, _, reward, _ in decisions[1::7]:
        for stub in w2.stubs.values():
            assert stub.RecordReward(pb.RecordRewardRequest(
                experiment_id="rr", decision_id=decision_id, reward=reward)).duplicate
    assert w2.stop() == 0


@pytest.mark.slow
def test_three_workers_share_the_port_and_a_dead_worker_stops_all(workers):
    """Also with messages between workers gathered for 50 ms instead of 10 (the setting is
    used on both sides): configuration is still acknowledged at once, and every worker counts
    every worker's selections exactly."""
    w = workers(3, "three", "--set", "durability=snapshot",
                "--set", "replication_flush_seconds=0.05")
    assert sorted(w.stubs) == [0, 1, 2]  # SO_REUSEPORT spread connections over all three
    w.stubs[2].CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment("e3")))
    for stub in w.stubs.values():  # configuration is acknowledged once every worker has it
        assert stub.GetExperiment(pb.GetExperimentRequest(experiment_id="e3")).experiment_id == "e3"
    # Each worker decides with its own random stream: same seed, different draws.
    slates = {i: [tuple(s.SelectArm(pb.SelectArmRequest(experiment_id="e3", num_arms=3)).ranked_arm_ids)
                  for _ in range(12)] for i, s in w.stubs.items()}
    assert slates[0] != slates[1] != slates[2] != slates[0]
    arms = [a.arm_id for a in w.stubs[0].GetExperiment(
        pb.GetExperimentRequest(experiment_id="e3")).arms]
    counted = Counter(arm for made in slates.values() for slate in made for arm in slate)
    wait_for_stats(w, "e3", {arm: (counted[arm], 0, 0.0) for arm in arms})
    pids = w.pids()
    assert len(pids) == 3
    os.kill(pids[1], signal.SIGKILL)
    assert w.proc.wait(timeout=60) != 0
    for pid in pids:  # the others were stopped
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.slow
def test_workers_stop_when_their_supervisor_is_killed(workers):
    w = workers(2, "orphans")
    pids = w.pids()
    w.proc.send_signal(signal.SIGKILL)  # no forwarding: the workers see their stdin close
    w.proc.wait(timeout=30)
    for pid in pids:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.slow
def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([str(BIN / "banditd"), "serve", "--workers", "2", "--port", str(port),
                               "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert str(port) in proc.stderr and "Traceback" not in proc.stderr


def test_every_rpc_is_local_or_forwarded_by_one_table():
    names = {m.name for m in SERVICE.methods}
    assert names >= LOCAL_RPCS
    writes = {"CreateExperiment", "DeleteExperiment", "UpdateArms", "ResetExperiment",
              "RecordReward", "BatchRecordRewards", "IngestMetrics", "CreateCampaign",
              "UpdateCampaign", "PaceBid", "RecordSpend",
              "GetPacingStatus"}  # a status read settles expired reservations: a write
    assert not writes & LOCAL_RPCS  # forwarded: anything not listed as local


def test_a_forwarded_write_hurries_the_stream_to_its_follower():
    """The leader gathers log records for ``replication_flush_seconds`` before sending them
    to a follower, except to a follower waiting for them: the one that forwarded a write
    names itself in the call's metadata (not passed on from clients), and the leader then
    sends at once."""
    leader = ReplicationLeader(SimpleNamespace(), SimpleNamespace(), None)
    follower = _Follower(1, "f-1", 0)
    leader._followers[1] = follower
    leader.hurry(7)  # no such follower: nothing to do
    assert not follower.hurry.is_set() and not follower.wakeup.is_set()
    leader.hurry(1)
    assert follower.hurry.is_set() and follower.wakeup.is_set()
    assert _forwarded_by([("x-trace", "a"), (FORWARDED_BY_KEY, "1")]) == 1
    assert _forwarded_by([(FORWARDED_BY_KEY, "one")]) is None
    assert _forwarded_by([("x-trace", "a")]) is None
    assert _forwardable([("x-trace", "a"), (FORWARDED_BY_KEY, "3")]) == (("x-trace", "a"),)


def test_tokens_pass_through_forwarding_and_every_worker_exports_replication_metrics(
        workers, tmp_path):
    import json
    import re
    import urllib.request

    from helpers import ROOT, bearer, write_tokens

    tokens = write_tokens(tmp_path / "tokens", {"ops": ("t-ops", "admin"),
                                                "reader": ("t-read", "read")})
    metrics_port = _two_free_ports()  # worker i serves port + i
    w = workers(2, "data", "--auth-tokens-file", str(tokens), "--set",
                f"metrics_port={metrics_port}", metadata=bearer("t-read"))
    follower = w.stubs[1]
    # CreateExperiment reaches the leader through the follower, with the caller's token
    with pytest.raises(grpc.RpcError) as denied:
        follower.CreateExperiment(pb.CreateExperimentRequest(
            experiment=make_experiment("fw", arms=("a",))), metadata=bearer("t-read"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as anonymous:
        follower.CreateExperiment(pb.CreateExperimentRequest(
            experiment=make_experiment("fw", arms=("a",))))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _, call = follower.CreateExperiment.with_call(pb.CreateExperimentRequest(
        experiment=make_experiment("fw", arms=("a",))), metadata=bearer("t-ops"))
    assert worker_of(call) == 1
    assert follower.GetExperiment(pb.GetExperimentRequest(experiment_id="fw"),
                                  metadata=bearer("t-read")).experiment_id == "fw"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "banditd.json").read_text())
    wanted = {m for p in dashboard["panels"] for t in p["targets"]
              for m in re.findall(r"\b(banditd_replication_[a-z_]+)\b", t["expr"])}
    assert wanted == {"banditd_replication_lag_records", "banditd_replication_lag_seconds"}
    texts = [urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + i}/metrics",
                                    timeout=10).read().decode() for i in range(2)]
    assert re.search(r'^banditd_replication_lag_records\{follower="1"\} \d', texts[0], re.M)
    assert re.search(r"^banditd_replication_lag_seconds \S+$", texts[1], re.M)
    assert w.stop() == 0
    # the leader's audit entry names the client behind the follower
    audit = subprocess.run([str(BIN / "banditd"), "audit", "--data-dir",
                            str(tmp_path / "data")], capture_output=True, text=True, timeout=60)
    (entry,) = [json.loads(line) for line in audit.stdout.splitlines()]
    assert entry["rpc"] == "CreateExperiment" and entry["token_name"] == "ops"
    assert entry["peer"].startswith("ipv4:127.0.0.1:") and "(via ipv4:127.0.0.1:" in entry["peer"]


def _two_free_ports() -> int:
    """A port p of 127.0.0.1 such that p and p + 1 were both free a moment ago."""
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
