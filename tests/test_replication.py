"""Log shipping rules, in process and without timing: the leader's stream, its waits for
followers' decisions and acknowledgements, and a follower's replay of the stream."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.replication.v1 import replication_pb2 as rpb
from banditd.server.cluster import replication
from banditd.server.cluster.replication import (
    ReplicaDecisions,
    ReplicaDurability,
    ReplicationLeader,
)
from banditd.server.settings import Settings
from banditd.server.state import decision_store
from banditd.server.state.decisions import PendingDecisions
from banditd.server.state.machine import StateMachine
from banditd.server.storage import snapshot
from banditd.storage.v1 import storage_pb2 as st
from helpers import InProcess, make_experiment


class Context:
    """Just enough of grpc.aio's ServicerContext for handlers called directly."""

    async def abort(self, code, details="", trailing_metadata=()):
        raise AssertionError(f"{code.name}: {details}")

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple:
        return ()


CTX = Context()


def leader_for(tmp_path) -> tuple[InProcess, ReplicationLeader]:
    settings = Settings(host="127.0.0.1", port=0, data_dir=tmp_path, workers=3,
                        durability="snapshot")  # no log on disk: the stream only
    servicer = InProcess(settings)
    servicer.settings = settings
    leader = ReplicationLeader(settings, servicer.state, servicer.storage)
    leader.gate = servicer.service.core
    servicer.storage.replication = leader
    return servicer, leader


def follower_decisions(prefix: str, counters, experiment: str = "e", uid: int = 1,
                       arm: str = "a") -> bytes:
    counters = list(counters)
    n = len(counters)
    return st.WalRecord(decision_table=st.DecisionTable(
        decision_ids=[f"{prefix}-{c:x}" for c in counters], experiment_ids=[experiment] * n,
        experiment_uids=[uid] * n, slate_sizes=[1] * n, arm_ids=[arm] * n,
        propensities=[0.5] * n, model_versions=[0] * n, created=[time.time()] * n,
        context_sizes=[0] * n)).SerializeToString()


async def subscribe(leader: ReplicationLeader, index: int = 1, prefix: str = "f-1"):
    stream = leader.Subscribe(rpb.SubscribeRequest(worker_index=index, decision_id_prefix=prefix),
                              CTX)
    image = await anext(stream)
    return stream, image


async def create(servicer, experiment_id: str = "e", **kw):
    return await servicer.CreateExperiment(
        pb.CreateExperimentRequest(experiment=make_experiment(experiment_id, **kw)), CTX)


def test_stream_is_an_image_then_the_log_without_the_followers_own_decisions(tmp_path):
    async def main():
        servicer, leader = leader_for(tmp_path)
        await create(servicer)
        stream, image = await subscribe(leader)
        assert image.last_seq == leader.seq == 1
        snap = st.Snapshot.FromString(snapshot.decode(image.image, "image")[0])
        assert [e.config.experiment_id for e in snap.experiments] == ["e"]
        assert not snap.decisions.decision_ids  # followers keep no decision records

        mine = servicer.SelectArm(pb.SelectArmRequest(experiment_id="e"), CTX)
        servicer.storage.hand_over_pending()  # what the delayed decision flush does
        await leader.PublishDecisions(rpb.PublishDecisionsRequest(
            worker_index=1, records=[follower_decisions("f-1", [1])], last_decision_counter=1), CTX)
        message = await anext(stream)
        assert message.last_seq == 3  # both records are accounted for ...
        (only,) = message.records  # ... but the follower's own is not sent back to it
        table = st.WalRecord.FromString(only).decision_table
        assert table.decision_ids[0] == mine.decision_id
        # the leader knows and counts the follower's decision like its own
        record = servicer.decisions.get("f-1-1", time.time())
        assert (record.arm_ids, record.propensity, record.rewarded) == (("a",), 0.5, False)
        assert servicer.registry.get("e").selections.sum() == 2
        await stream.aclose()
        assert not leader.has_followers

    asyncio.run(main())


def _finishes_without_waiting(coroutine) -> bool:
    """Whether ``coroutine`` runs to its end without once suspending (no wait of any
    length); it is closed either way."""
    try:
        coroutine.send(None)
    except StopIteration:
        return True
    coroutine.close()
    return False


def test_reward_waits_for_a_followers_decision_until_it_is_published(tmp_path, monkeypatch):
    # No clock is read: an hour's bound can only end by the publication; calls that must not
    # wait are checked to finish without suspending at all.
    monkeypatch.setattr(replication, "DECISION_WAIT_SECONDS", 3600.0)

    async def main():
        servicer, leader = leader_for(tmp_path)
        await create(servicer)
        stream, _ = await subscribe(leader, prefix="f-1")
        waiting = asyncio.ensure_future(leader.await_decisions(["f-1-2"]))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not waiting.done()
        await leader.PublishDecisions(rpb.PublishDecisionsRequest(
            worker_index=1, records=[follower_decisions("f-1", [1, 2])], last_decision_counter=2),
            CTX)
        await asyncio.wait_for(waiting, 30)  # released by the publication
        reply = await servicer.RecordReward(
            pb.RecordRewardRequest(experiment_id="e", decision_id="f-1-2", reward=1), CTX)
        assert not reply.duplicate
        # Published already, unknown prefixes, the leader's own and malformed ids: no wait.
        assert _finishes_without_waiting(leader.await_decisions(
            ["f-1-1", "other-3", "", "f-1-zz", "nodash", servicer.decisions.new_id()]))
        # Never published: a wait, bounded by DECISION_WAIT_SECONDS; then the reward is
        # NOT_FOUND as in one process.
        assert not _finishes_without_waiting(leader.await_decisions(["f-1-9"]))
        monkeypatch.setattr(replication, "DECISION_WAIT_SECONDS", 0.01)
        await asyncio.wait_for(leader.await_decisions(["f-1-9"]), 30)
        await stream.aclose()
        # A follower that left is not waited for.
        assert _finishes_without_waiting(leader.await_decisions(["f-1-a"]))

    asyncio.run(main())


def test_configuration_change_is_acknowledged_once_every_follower_applied_it(tmp_path):
    async def main():
        servicer, leader = leader_for(tmp_path)
        stream1, _ = await subscribe(leader, 1, "f-1")
        stream2, _ = await subscribe(leader, 2, "f-2")
        creating = asyncio.ensure_future(create(servicer, "cfg"))
        m1, m2 = await anext(stream1), await anext(stream2)
        assert m1.ack_requested and m2.ack_requested and m1.last_seq == m2.last_seq == 1
        await leader.PublishDecisions(rpb.PublishDecisionsRequest(worker_index=1, applied_seq=1), CTX)
        await asyncio.sleep(0.05)
        assert not creating.done()  # worker 2 has not applied it yet
        await leader.PublishDecisions(rpb.PublishDecisionsRequest(worker_index=2, applied_seq=1), CTX)
        await asyncio.wait_for(creating, 1)
        # a reward is not waited for
        await asyncio.wait_for(servicer.RecordReward(
            pb.RecordRewardRequest(experiment_id="cfg", arm_id="a", reward=1), CTX), 1)
        await stream1.aclose()
        await stream2.aclose()

    asyncio.run(main())


def test_configuration_change_does_not_wait_forever(tmp_path, monkeypatch):
    monkeypatch.setattr(replication, "ACK_TIMEOUT_SECONDS", 0.1)

    async def main():
        servicer, leader = leader_for(tmp_path)
        stream, _ = await subscribe(leader)
        await asyncio.wait_for(create(servicer, "slow"), 2)  # answered after the bound
        await stream.aclose()

    asyncio.run(main())


def test_follower_replays_the_stream_to_the_leaders_state_with_its_own_random_stream(
        tmp_path, monkeypatch):
    monkeypatch.setattr(replication, "ACK_TIMEOUT_SECONDS", 0.01)  # nobody acknowledges here

    async def main():
        servicer, leader = leader_for(tmp_path)
        await create(servicer, "t", arms=("a", "b", "c"), seed=5)
        await create(servicer, "lin", arms=("x", "y"), context_dim=2,
                     policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()),
                     reward_type=pb.REWARD_TYPE_CONTINUOUS, seed=6)
        for i in range(20):
            d = servicer.SelectArm(pb.SelectArmRequest(experiment_id="t", num_arms=2), CTX)
            await servicer.RecordReward(pb.RecordRewardRequest(
                experiment_id="t", decision_id=d.decision_id, reward=i % 2), CTX)
        stream, image = await subscribe(leader)
        for i in range(20):  # after the image: through the stream
            d = servicer.SelectArm(pb.SelectArmRequest(experiment_id="lin", context=[i, 1]), CTX)
            await servicer.RecordReward(pb.RecordRewardRequest(
                experiment_id="lin", decision_id=d.decision_id, reward=0.5 * i), CTX)
        await servicer.UpdateArms(pb.UpdateArmsRequest(experiment_id="t", add_arm_ids=["d"]), CTX)
        await servicer.IngestMetrics(pb.IngestMetricsRequest(
            experiment_id="t", period="2025-01-01",
            metrics=[pb.ArmMetrics(arm_id="b", trials=10, successes=3)]), CTX)
        await servicer.ResetExperiment(pb.ResetExperimentRequest(experiment_id="lin"), CTX)
        message = await anext(stream)

        decisions = ReplicaDecisions("f-1")
        state = StateMachine(servicer.settings, decisions)
        state.experiments.stream = 1
        registry = state.experiments
        follower = ReplicaDurability(servicer.settings, state, PendingDecisions(), decisions,
                                     1, asyncio.get_running_loop().create_future(), print, "t")
        follower._load_image(image.image)
        for payload in message.records:
            state.apply_bytes(payload)
        for name in ("t", "lin"):
            mine, theirs = servicer.registry.get(name), registry.get(name)
            assert mine.arm_ids == theirs.arm_ids and mine.uid == theirs.uid
            assert mine.version == theirs.version
            for counter in ("selections", "rewards", "reward_sum", "positives", "ingested"):
                assert np.array_equal(getattr(mine, counter), getattr(theirs, counter)), counter
            for field in set(mine.state._fields) - set(mine.spec.kernel.CACHE_FIELDS):
                assert np.array_equal(getattr(mine.state, field), getattr(theirs.state, field)), (name, field)
            assert not np.array_equal(mine.rng, theirs.rng)  # jumped: different draws
        await stream.aclose()

    asyncio.run(main())


def test_follower_decision_ids_name_the_worker_and_are_not_kept():
    store = ReplicaDecisions("abc-3")
    ids = [store.new_id() for _ in range(17)]
    assert ids[0] == "abc-3-1" and ids[-1] == "abc-3-11"
    assert decision_store.split_decision_id(ids[-1]) == ("abc-3", 17)
    assert store.counter == 17 and len(store) == 0 and store.get(ids[0]) is None


@pytest.mark.parametrize("metadata,seq", [((), 0), ((("banditd-seq", "42"),), 42),
                                          ((("banditd-worker", "0"), ("banditd-seq", "7")), 7)])
def test_leader_seq_from_trailing_metadata(metadata, seq):
    assert replication.leader_seq(metadata) == seq


# -- the leader's store and counting of follower decision tables ----------------------------
def _columns(ids: list[str], created: float = 10.0):
    from banditd.server.state.decision_store import DecisionColumns

    n = len(ids)
    return DecisionColumns(ids, np.arange(n), [(f"arm{i}",) for i in range(n)], [None] * n,
                           np.full(n, 0.5), np.arange(n), np.full(n, created),
                           np.zeros(n, dtype=bool))


def test_store_keeps_a_registered_workers_consecutive_ids_without_the_id_dict():
    from banditd.server.state.decision_store import DecisionStore

    store = DecisionStore(capacity=8, ttl_seconds=100.0, id_prefix="me-0")
    store.register_prefix("w-1")
    store.put_many(_columns([f"w-1-{c:x}" for c in range(9, 15)]))  # 6 consecutive: a ring
    assert not store._index
    assert store.get("w-1-c", 10.0).arm_ids == ("arm3",)  # counter 12 = 4th row
    assert store.get("w-1-f", 10.0) is None and store.get("w-1-8", 10.0) is None
    assert store.get("w-2-c", 10.0) is None  # another issuer
    # a gap, a reordering or an unregistered prefix: the id dict, found all the same
    for ids in (["w-1-20", "w-1-22"], ["w-1-31", "w-1-30"], ["x-1-1", "x-1-2"]):
        store.put_many(_columns(ids))
        assert all(store.get(i, 10.0) is not None for i in ids)
        assert set(ids) <= set(store._index)
    # the ring wraps and evicts: only the newest 8 rows remain, each found as itself
    store.put_many(_columns([f"w-1-{c:x}" for c in range(100, 105)]))
    kept = store.columns().ids
    assert kept == ["w-1-30", "x-1-1", "x-1-2", *(f"w-1-{c:x}" for c in range(100, 105))]
    arms = [store.get(i, 10.0).arm_ids[0] for i in kept]
    assert arms == ["arm1", "arm0", "arm1", "arm0", "arm1", "arm2", "arm3", "arm4"]
    assert store.get("w-1-9", 10.0) is None and store.get("w-1-31", 10.0) is None


def test_counting_a_table_fast_or_row_by_row_gives_the_same_selections(tmp_path):
    async def main():
        servicer, _ = leader_for(tmp_path)
        await create(servicer, "one", arms=("a", "b", "c"))
        await create(servicer, "two", arms=("a", "b"))
        one, two = servicer.registry.get("one"), servicer.registry.get("two")
        table = st.DecisionTable(  # one experiment: the fast path, slates included
            decision_ids=["x-1", "x-2", "x-3"], experiment_ids=["one"] * 3,
            experiment_uids=[one.uid] * 3, slate_sizes=[1, 2, 1],
            arm_ids=["a", "b", "a", "gone"], context_sizes=[0, 0, 0],
            propensities=[0.5] * 3, model_versions=[0] * 3, created=[time.time()] * 3)
        servicer.state.apply(st.WalRecord(decision_table=table))
        assert one.selections.tolist() == [2, 1, 0]
        mixed = st.DecisionTable(  # two experiments and a stale incarnation: row by row
            decision_ids=["y-1", "y-2", "y-3"], experiment_ids=["one", "two", "one"],
            experiment_uids=[one.uid, two.uid, one.uid + 100], slate_sizes=[1, 1, 1],
            arm_ids=["c", "b", "a"], context_sizes=[0, 0, 0], propensities=[0.5] * 3,
            model_versions=[0] * 3, created=[time.time()] * 3)
        servicer.state.apply(st.WalRecord(decision_table=mixed))
        assert one.selections.tolist() == [2, 1, 1] and two.selections.tolist() == [0, 1]
        stale = st.DecisionTable(decision_ids=["z-1"], experiment_ids=["one"],
                                 experiment_uids=[one.uid + 100], slate_sizes=[1],
                                 arm_ids=["a"], context_sizes=[0], propensities=[0.5],
                                 model_versions=[0], created=[time.time()])
        servicer.state.apply(st.WalRecord(decision_table=stale))
        assert one.selections.tolist() == [2, 1, 1]

    asyncio.run(main())
