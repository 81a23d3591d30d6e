"""Reward windows: a decision without a reward within its experiment's reward_wait_seconds is
learned once with default_reward (durably, across restarts and workers), and a later reward
corrects it exactly where the policy allows (RecordRewardResponse.late).

Most checks drive the service in process with an explicit sweep time (no clock assumptions);
the durability and restart checks use a real server, whose short windows only bound waits."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.errors import FailedPrecondition, InvalidArgument
from banditd.server.settings import Settings
from banditd.server.storage.wal import list_segments, read_segment
from banditd.storage.v1 import storage_pb2 as st
from helpers import InProcess, make_experiment, running_server

THOMPSON = pb.Policy(thompson=pb.Policy.Thompson())
POLICIES = {
    "thompson": (THOMPSON, pb.REWARD_TYPE_BINARY, 0),
    "thompson_value": (THOMPSON, pb.REWARD_TYPE_VALUE, 0),
    "ucb1": (pb.Policy(ucb1=pb.Policy.Ucb1()), pb.REWARD_TYPE_CONTINUOUS, 0),
    "epsilon_greedy": (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.3)),
                       pb.REWARD_TYPE_BINARY, 0),
    "lin_ucb": (pb.Policy(lin_ucb=pb.Policy.LinUcb()), pb.REWARD_TYPE_CONTINUOUS, 3),
    "lin_thompson": (pb.Policy(lin_thompson=pb.Policy.LinThompson()), pb.REWARD_TYPE_BINARY, 3),
}


def service(tmp_path, **overrides) -> InProcess:
    return InProcess(Settings(data_dir=tmp_path, durability="snapshot", **overrides))


def run(coro):
    return asyncio.run(coro)


def sweep(sv: InProcess, after: float = 0.0) -> int:
    """One sweep ``after`` seconds from now (past every window of these tests when > 60)."""
    return run(sv.service.reward_windows.sweep(time.time() + after))


def reward(sv: InProcess, experiment_id: str, decision_id: str, value: float, arm_id: str = ""):
    return run(sv.RecordReward(pb.RecordRewardRequest(
        experiment_id=experiment_id, decision_id=decision_id, reward=value, arm_id=arm_id), None))


def learned(sv: InProcess, experiment_id: str) -> dict:
    """The experiment's learned statistics (the policy's arrays but its caches, the counters,
    the model version)."""
    e = sv.registry.get(experiment_id)
    cache = set(e.spec.kernel.CACHE_FIELDS)
    return {"state": [getattr(e.state, f).tolist() for f in e.state._fields if f not in cache],
            "rewards": e.rewards.tolist(), "reward_sum": e.reward_sum.tolist(),
            "positives": e.positives.tolist(), "selections": e.selections.tolist(),
            "version": e.version}


def value_of(name: str, gen) -> float:
    """An integer-valued reward of the policy's kind (exact sums, whatever the order)."""
    if name in ("thompson", "epsilon_greedy", "lin_thompson"):
        return float(gen.random() < 0.4)
    if name == "thompson_value":
        return float(gen.integers(1, 20)) if gen.random() < 0.4 else 0.0
    return float(gen.integers(-2, 5))


def decide(sv, experiment_id, n, context_dim, gen, num_arms=0):
    out = []
    for _ in range(n):
        context = gen.integers(-2, 3, context_dim).astype(float).tolist()
        out.append(sv.SelectArm(pb.SelectArmRequest(experiment_id=experiment_id, context=context,
                                                     num_arms=num_arms), None))
    return out


# -- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("fields, field", [
    ({"reward_wait_seconds": 0.0}, "experiment.reward_wait_seconds"),
    ({"reward_wait_seconds": -1.0}, "experiment.reward_wait_seconds"),
    ({"reward_wait_seconds": float("nan")}, "experiment.reward_wait_seconds"),
    ({"reward_wait_seconds": 3601.0}, "decision TTL (3600 s"),
    ({"default_reward": 1.0}, "reward_wait_seconds is not set"),
    ({"reward_wait_seconds": 5.0, "default_reward": 0.5}, "experiment.default_reward"),
])
def test_bad_windows_are_refused_naming_the_field(tmp_path, fields, field):
    sv = service(tmp_path, decision_ttl_seconds=3600)
    with pytest.raises(InvalidArgument, match=field.replace("(", r"\(")):
        run(sv.CreateExperiment(pb.CreateExperimentRequest(
            experiment=make_experiment("e", **fields)), None))
    assert len(sv.registry) == 0


def test_the_window_and_default_are_reported_back(tmp_path):
    sv = service(tmp_path)
    e = run(sv.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "e", reward_type=pb.REWARD_TYPE_VALUE, reward_wait_seconds=30, default_reward=0.25)),
        None))
    assert e.HasField("reward_wait_seconds") and e.reward_wait_seconds == 30
    assert e.default_reward == 0.25
    plain = run(sv.CreateExperiment(pb.CreateExperimentRequest(
        experiment=make_experiment("plain")), None))
    assert not plain.HasField("reward_wait_seconds")


# -- settlement -------------------------------------------------------------------------------

def test_decisions_without_a_reward_are_learned_once_with_the_default(tmp_path):
    sv = service(tmp_path)
    sv.create_experiment(make_experiment("w", reward_wait_seconds=60, default_reward=0.0))
    sv.create_experiment(make_experiment("plain"))
    gen = np.random.default_rng(1)
    made = decide(sv, "w", 40, 0, gen)
    decide(sv, "plain", 10, 0, gen)
    for d in made[:10]:
        assert not reward(sv, "w", d.decision_id, 1.0).late
    assert sweep(sv) == 0  # inside the window: nothing is due yet
    assert sweep(sv, after=61) == 30
    assert sweep(sv, after=62) == 0  # exactly once
    e = sv.registry.get("w")
    assert e.rewards.sum() == 40 and e.reward_sum.sum() == 10 and e.version == 40
    first_arms = [d.arm_id for d in made]
    np.testing.assert_array_equal(e.rewards, [first_arms.count(a) for a in e.arm_ids])
    plain = sv.registry.get("plain")
    assert plain.rewards.sum() == 0 and plain.version == 0  # no window: never learned
    store = sv.decisions
    assert all(store.get(d.decision_id).defaulted for d in made[10:])
    assert not any(store.get(d.decision_id).defaulted for d in made[:10])


def test_each_window_length_settles_at_its_own_time(tmp_path):
    sv = service(tmp_path)
    sv.create_experiment(make_experiment("short", reward_wait_seconds=10))
    sv.create_experiment(make_experiment("long", reward_wait_seconds=100))
    gen = np.random.default_rng(2)
    for _ in range(5):
        decide(sv, "long", 3, 0, gen)
        decide(sv, "short", 2, 0, gen)
    assert sweep(sv, after=11) == 10
    assert sv.registry.get("long").rewards.sum() == 0
    assert sweep(sv, after=101) == 15
    assert sweep(sv, after=200) == 0


def test_a_batch_and_a_reset_experiment(tmp_path):
    """Decisions of BatchSelectArms are settled like single ones; decisions made before a
    reset belong to the old incarnation and are never learned."""
    sv = service(tmp_path)
    sv.create_experiment(make_experiment("w", reward_wait_seconds=5))
    sv.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
        pb.SelectArmRequest(experiment_id="w")] * 50), None)
    run(sv.ResetExperiment(pb.ResetExperimentRequest(experiment_id="w"), None))
    sv.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
        pb.SelectArmRequest(experiment_id="w", num_arms=2)] * 30), None)
    assert sweep(sv, after=6) == 30
    assert sv.registry.get("w").rewards.sum() == 30


# -- late rewards -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_late_reward_leaves_the_state_a_reward_in_time_would_have(tmp_path, name):
    """Two servers, same seed, same decisions. One gets its rewards in time; the other has every
    decision settled with the default first and gets the same rewards late: the learned
    statistics are the same, bit for bit (integer rewards and contexts), and so is the model
    version."""
    policy, reward_type, d = POLICIES[name]
    default = 1.0 if reward_type == pb.REWARD_TYPE_BINARY else 2.0
    config = make_experiment("e", policy=policy, reward_type=reward_type, context_dim=d,
                             arms=("a", "b", "c", "d"), reward_wait_seconds=30,
                             default_reward=default)
    on_time, late = service(tmp_path / "a"), service(tmp_path / "b")
    made = {}
    for sv in (on_time, late):
        sv.create_experiment(config)
        made[id(sv)] = decide(sv, "e", 60, d, np.random.default_rng(4))
    assert [x.arm_id for x in made[id(on_time)]] == [x.arm_id for x in made[id(late)]]
    gen = np.random.default_rng(5)
    values = [value_of(name, gen) for _ in range(40)]
    for sv, answered_late in ((on_time, False), (late, True)):
        if answered_late:
            assert sweep(sv, after=31) == 60
        for decision, value in zip(made[id(sv)][:40], values, strict=True):
            response = reward(sv, "e", decision.decision_id, value)
            assert response.late is answered_late and not response.duplicate
        if not answered_late:
            assert sweep(sv, after=31) == 20
    assert learned(late, "e") == learned(on_time, "e")
    assert learned(late, "e")["version"] == 60
    again = reward(late, "e", made[id(late)][0].decision_id, values[0])
    assert again.duplicate and not again.late


@pytest.mark.parametrize("name", ["thompson", "ucb1", "epsilon_greedy", "thompson_value"])
def test_a_late_reward_for_another_arm_of_a_slate_moves_the_default(tmp_path, name):
    """A slate's default is learned for its first arm; a late reward naming its second arm
    takes that observation away from the first arm and learns it for the second, as if the
    reward had come in time."""
    policy, reward_type, _ = POLICIES[name]
    config = make_experiment("e", policy=policy, reward_type=reward_type,
                             arms=("a", "b", "c", "d"), reward_wait_seconds=30)
    on_time, late = service(tmp_path / "a"), service(tmp_path / "b")
    made = {}
    for sv in (on_time, late):
        sv.create_experiment(config)
        made[id(sv)] = decide(sv, "e", 30, 0, np.random.default_rng(6), num_arms=2)
    value = 1.0 if name != "thompson_value" else 7.0
    for sv, answered_late in ((on_time, False), (late, True)):
        if answered_late:
            sweep(sv, after=31)
        for decision in made[id(sv)][:10]:
            response = reward(sv, "e", decision.decision_id, value,
                              arm_id=decision.ranked_arm_ids[1])
            assert response.late is answered_late
        if not answered_late:
            sweep(sv, after=31)
    assert learned(late, "e") == learned(on_time, "e")


def test_late_rewards_that_cannot_be_exact_are_refused(tmp_path):
    sv = service(tmp_path)
    sv.create_experiment(make_experiment("disc", reward_wait_seconds=5, discount=0.9))
    sv.create_experiment(make_experiment("lin", policy=POLICIES["lin_ucb"][0], context_dim=2,
                                         reward_type=pb.REWARD_TYPE_CONTINUOUS,
                                         reward_wait_seconds=5))
    gen = np.random.default_rng(7)
    discounted = decide(sv, "disc", 3, 0, gen)
    slates = decide(sv, "lin", 3, 2, gen, num_arms=2)
    assert sweep(sv, after=6) == 6  # both are settled with the default
    before = learned(sv, "disc"), learned(sv, "lin")
    with pytest.raises(FailedPrecondition, match="discounted"):
        reward(sv, "disc", discounted[0].decision_id, 1.0)
    with pytest.raises(FailedPrecondition, match="contextual"):
        reward(sv, "lin", slates[0].decision_id, 1.0, arm_id=slates[0].ranked_arm_ids[1])
    assert (learned(sv, "disc"), learned(sv, "lin")) == before  # nothing changed
    # the first arm of a contextual slate can be corrected exactly
    assert reward(sv, "lin", slates[0].decision_id, 1.0).late


def test_a_late_reward_never_takes_back_what_a_re_added_arm_did_not_learn(tmp_path):
    sv = service(tmp_path)
    sv.create_experiment(make_experiment("w", arms=("a", "b"), reward_wait_seconds=5))
    made = sv.SelectArm(pb.SelectArmRequest(experiment_id="w", eligible_arm_ids=["a"]), None)
    sweep(sv, after=6)
    for change in ({"remove_arm_ids": ["a"]}, {"add_arm_ids": ["a"]}):
        run(sv.UpdateArms(pb.UpdateArmsRequest(experiment_id="w", **change), None))
    before = learned(sv, "w")
    with pytest.raises(FailedPrecondition, match="added again"):
        reward(sv, "w", made.decision_id, 1.0)
    assert learned(sv, "w") == before


def test_batch_rewards_say_which_were_late(tmp_path):
    sv = service(tmp_path)
    sv.create_experiment(make_experiment("w", reward_wait_seconds=5))
    made = decide(sv, "w", 4, 0, np.random.default_rng(8))
    reward(sv, "w", made[0].decision_id, 1.0)
    sweep(sv, after=6)
    reply = run(sv.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=[
        pb.RecordRewardRequest(experiment_id="w", decision_id=d.decision_id, reward=1.0)
        for d in (made[0], made[1], made[1], made[2])]), None))
    assert [(r.duplicate, r.late) for r in reply.responses] == [
        (True, False), (False, True), (True, False), (False, True)]
    assert sv.registry.get("w").reward_sum.sum() == 3


# -- durability and workers -------------------------------------------------------------------

def _stats(stub, experiment_id):
    reply = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=experiment_id))
    return [(a.arm_id, a.selections, a.rewards, a.reward_sum) for a in reply.arms], \
        reply.model_version


def _wait_settled(stub, experiment_id, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while _stats(stub, experiment_id)[1] < count:
        assert time.monotonic() < deadline, "decisions were not settled"
        time.sleep(0.05)


def _logged_defaults(data) -> int:
    return sum(st.WalRecord.FromString(p).default_rewards.count
               for _, path in list_segments(data) for p in read_segment(path).records)


def test_settlements_survive_kill_9_and_are_not_repeated(tmp_path):
    data = tmp_path / "data"
    with running_server(data, reward_sweep_interval_seconds=0.05,
                        snapshot_interval_seconds=0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
                "w", reward_wait_seconds=0.2)))
            made = [stub.SelectArm(pb.SelectArmRequest(experiment_id="w")) for _ in range(30)]
            stub.RecordReward(pb.RecordRewardRequest(experiment_id="w",
                                                     decision_id=made[0].decision_id, reward=1))
            _wait_settled(stub, "w", 30)
            late = stub.RecordReward(pb.RecordRewardRequest(
                experiment_id="w", decision_id=made[1].decision_id, reward=1))
            assert late.late
            live = _stats(stub, "w")
        server.crash()
    assert _logged_defaults(data) == 29
    with running_server(data, reward_sweep_interval_seconds=0.05) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            assert _stats(stub, "w") == live
            again = stub.RecordReward(pb.RecordRewardRequest(
                experiment_id="w", decision_id=made[1].decision_id, reward=1))
            assert again.duplicate
            rows = [r for m in stub.ExportDecisions(pb.ExportDecisionsRequest(experiment_id="w"))
                    for r in m.decisions]
        time.sleep(0.3)  # several sweeps of the restarted server
        assert _logged_defaults(data) == 29  # none settled again (before the final snapshot)
    assert [r.reward_status for r in rows[:3]] == [
        pb.REWARD_STATUS_REWARDED, pb.REWARD_STATUS_LATE, pb.REWARD_STATUS_DEFAULT]


def test_windows_that_passed_while_the_server_was_down_are_settled_on_restore(tmp_path):
    data = tmp_path / "data"
    with running_server(data, snapshot_interval_seconds=0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
                "w", reward_wait_seconds=2.0)))
            stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
                pb.SelectArmRequest(experiment_id="w")] * 25))
            assert _stats(stub, "w")[1] == 0
        storage = server.app.storage

        async def flush() -> None:  # the decisions into the log (they are logged lazily)
            storage.hand_over_pending()
            await storage.commit()

        asyncio.run_coroutine_threadsafe(flush(), server.loop).result(30)
        server.crash()
    assert _logged_defaults(data) == 0
    time.sleep(2.1)  # the window passes while no server runs
    with running_server(data, reward_sweep_interval_seconds=30) as server:  # no periodic sweep
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stats, version = _stats(pb_grpc.DecisionServiceStub(ch), "w")
        assert _logged_defaults(data) == 25  # and logged (before the final snapshot)
    assert version == 25 and sum(s[2] for s in stats) == 25  # settled before SERVING


# -- the decision store's side ----------------------------------------------------------------

def _columns(created, uid=1):
    from banditd.server.state.decision_store import DecisionColumns

    n = len(created)
    return DecisionColumns([f"p-{i + 1:x}" for i in range(n)], np.full(n, uid, dtype=np.int64),
                           [("a",)] * n, [None] * n, np.full(n, 0.5),
                           np.zeros(n, dtype=np.int64), np.array(created, dtype=float),
                           np.zeros(n, dtype=np.bool_))


def test_rows_out_of_creation_order_are_settled_once_and_never_early():
    """Other workers' decisions reach the leader a few ms late, so creation times are not
    quite sorted: every row is still found, once, and only once its window has passed."""
    from banditd.server.state.decision_store import DecisionStore

    store = DecisionStore(100, 1e9)
    created = [1.0, 2.0, 5.0, 3.0, 4.0, 6.0, 5.5, 7.0]
    store.put_many(_columns(created), expire=False)
    uids = np.array([1])
    seen: list[int] = []
    cursor = 0
    for deadline in (0.5, 3.5, 4.5, 5.2, 6.5, 100.0):
        seqs, cursor = store.unsettled(cursor, uids, deadline, 1000)
        assert all(created[s] <= deadline for s in seqs.tolist())
        seen += seqs.tolist()
        store.mark_defaulted_rows(seqs, 0.0)
    assert sorted(seen) == list(range(len(created))) and len(seen) == len(set(seen))
    assert store.unsettled(0, np.array([2]), 100.0, 1000)[0].size == 0  # another incarnation


def test_rows_the_sweep_has_not_seen_outlive_the_ttl():
    from banditd.server.state.decision_store import DecisionStore

    store = DecisionStore(100, 1.0)
    store.put_many(_columns([float(i) for i in range(10)]), expire=False)
    store.expire_hold = 4  # the sweep has looked at rows 0..3
    store._expire(100.0)
    assert store.head == 4 and len(store) == 6
    store.expire_hold = np.inf
    store._expire(100.0)
    assert len(store) == 0
