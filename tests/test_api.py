"""Every RPC end to end through a real server on port 0, checking the numbers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from helpers import create


def stats(stub, experiment_id):
    return {a.arm_id: a for a in stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=experiment_id)).arms}


def test_create_fills_defaults_and_get_returns_it(stub, new_id):
    eid = new_id()
    created = create(stub, eid, seed=None)
    assert created.experiment_id == eid
    assert [a.arm_id for a in created.arms] == ["a", "b", "c"]
    assert created.policy.thompson.alpha == 1.0 and created.policy.thompson.beta == 1.0
    assert created.discount == 1.0
    fetched = stub.GetExperiment(pb.GetExperimentRequest(experiment_id=eid))
    assert fetched == created
    # A random seed is chosen and reported: created again with it, the experiment decides
    # exactly as the first one did.
    assert created.HasField("seed")
    twin = create(stub, new_id(), seed=created.seed)
    assert twin.seed == created.seed

    def slates(experiment_id):
        return [tuple(stub.SelectArm(pb.SelectArmRequest(experiment_id=experiment_id,
                                                         num_arms=3)).ranked_arm_ids)
                for _ in range(20)]

    first = slates(eid)
    assert slates(twin.experiment_id) == first
    assert len(set(first)) > 1  # the draws vary: the equality is not a fixed order


def test_explicit_zero_parameter_is_not_swallowed(stub, new_id):
    eid = new_id()
    policy = pb.Policy(ucb1=pb.Policy.Ucb1(c=0.0))
    created = create(stub, eid, policy=policy, reward_type=pb.REWARD_TYPE_CONTINUOUS)
    assert created.policy.ucb1.HasField("c") and created.policy.ucb1.c == 0.0
    default = create(stub, new_id(), policy=pb.Policy(ucb1=pb.Policy.Ucb1()),
                     reward_type=pb.REWARD_TYPE_CONTINUOUS)
    assert default.policy.ucb1.c == pytest.approx(2**0.5)


def test_list_experiments_paginates_in_id_order(stub, new_id):
    prefix = new_id("list")
    ids = [f"{prefix}-{i}" for i in range(5)]
    for eid in reversed(ids):
        create(stub, eid)
    seen, token = [], ""
    while True:
        page = stub.ListExperiments(pb.ListExperimentsRequest(page_size=2, page_token=token))
        assert len(page.experiments) <= 2
        seen += [e.experiment_id for e in page.experiments]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen)
    assert [i for i in seen if i.startswith(prefix + "-")] == ids


def test_delete_removes_experiment_and_its_decisions(stub, new_id):
    eid = new_id()
    create(stub, eid)
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id=eid))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetExperiment(pb.GetExperimentRequest(experiment_id=eid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    create(stub, eid)  # same id again: a new experiment; old decisions do not apply
    with pytest.raises(grpc.RpcError) as err:
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_select_reward_stats_roundtrip(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("x", "y"))
    counts = {"x": 0, "y": 0}
    rewards = {"x": 0, "y": 0}
    ids = set()
    for i in range(40):
        d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
        assert d.arm_id in counts and 0.0 < d.propensity <= 1.0
        assert d.decision_id not in ids
        ids.add(d.decision_id)
        counts[d.arm_id] += 1
        r = 1.0 if i % 3 == 0 else 0.0
        rewards[d.arm_id] += r
        resp = stub.RecordReward(
            pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=r)
        )
        assert not resp.duplicate
    s = stats(stub, eid)
    for arm in ("x", "y"):
        assert s[arm].selections == counts[arm]
        assert s[arm].rewards == counts[arm]
        assert s[arm].reward_sum == rewards[arm]
        expected_mean = rewards[arm] / counts[arm] if counts[arm] else 0.0
        assert s[arm].mean_reward == pytest.approx(expected_mean)
    assert stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid)).model_version == 40


def test_retried_reward_is_duplicate_and_not_counted(stub, new_id):
    eid = new_id()
    create(stub, eid)
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
    req = pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=1)
    assert not stub.RecordReward(req).duplicate
    assert stub.RecordReward(req).duplicate
    assert stub.RecordReward(req).duplicate
    s = stats(stub, eid)[d.arm_id]
    assert (s.rewards, s.reward_sum) == (1, 1.0)


def test_model_version_counts_rewards(stub, new_id):
    eid = new_id()
    create(stub, eid)
    assert stub.SelectArm(pb.SelectArmRequest(experiment_id=eid)).model_version == 0
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=1))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="b", reward=0))
    assert stub.SelectArm(pb.SelectArmRequest(experiment_id=eid)).model_version == 2


def test_eligible_subset_is_respected(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=[f"o{i}" for i in range(8)])
    for _ in range(50):
        d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["o2", "o5"]))
        assert d.arm_id in ("o2", "o5")


def test_slate_is_ranked_without_replacement(stub, new_id):
    eid = new_id()
    arms = [f"c{i}" for i in range(6)]
    create(stub, eid, arms=arms)
    for _ in range(30):
        d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, num_arms=4))
        assert len(d.ranked_arm_ids) == 4 and len(set(d.ranked_arm_ids)) == 4
        assert d.ranked_arm_ids[0] == d.arm_id
    s = stats(stub, eid)
    assert sum(a.selections for a in s.values()) == 30 * 4  # every slate member counts


def test_slate_reward_picks_the_clicked_position(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=["p", "q", "r"])
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, num_arms=3))
    clicked = d.ranked_arm_ids[2]
    stub.RecordReward(
        pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, arm_id=clicked, reward=1)
    )
    s = stats(stub, eid)
    assert s[clicked].rewards == 1 and s[clicked].reward_sum == 1
    assert sum(a.rewards for a in s.values()) == 1


def test_same_seed_gives_identical_decisions(stub, new_id):
    def run(eid):
        create(stub, eid, arms=[f"a{i}" for i in range(10)], seed=1234)
        out = []
        for i in range(60):
            d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, num_arms=2))
            out.append((tuple(d.ranked_arm_ids), d.propensity))
            stub.RecordReward(pb.RecordRewardRequest(
                experiment_id=eid, decision_id=d.decision_id, reward=float(i % 4 == 0)))
        return out

    assert run(new_id()) == run(new_id())


def test_contextual_reward_uses_stored_context(stub, new_id):
    eid = new_id()
    policy = pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=0.5))
    create(stub, eid, arms=["u", "v"], policy=policy, context_dim=3,
           reward_type=pb.REWARD_TYPE_CONTINUOUS)
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, context=[1.0, 0.0, 2.0]))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=2.5))
    # Another experiment fed the same (context, reward) by explicit arm must end identical.
    eid2 = new_id()
    create(stub, eid2, arms=["u", "v"], policy=policy, context_dim=3,
           reward_type=pb.REWARD_TYPE_CONTINUOUS)
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid2, arm_id=d.arm_id,
                                             context=[1.0, 0.0, 2.0], reward=2.5))
    s1, s2 = stats(stub, eid), stats(stub, eid2)
    assert s1[d.arm_id].reward_sum == s2[d.arm_id].reward_sum == 2.5


def test_contextual_state_matches_ridge_regression(server, stub, new_id):
    """LinUCB state inside the server equals the closed-form ridge solution."""
    eid = new_id()
    d = 4
    create(stub, eid, arms=["m"], policy=pb.Policy(lin_ucb=pb.Policy.LinUcb(ridge=2.0)),
           context_dim=d, reward_type=pb.REWARD_TYPE_CONTINUOUS)
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(size=(50, d)), rng.normal(size=50)
    batch = [pb.RecordRewardRequest(experiment_id=eid, arm_id="m", context=x.tolist(), reward=y)
             for x, y in zip(xs, ys, strict=True)]
    stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=batch))
    theta = server.call(lambda: server.app.state.experiments.get(eid).state[2][0].copy())
    expected = np.linalg.solve(2.0 * np.eye(d) + xs.T @ xs, xs.T @ ys)
    np.testing.assert_allclose(theta, expected, rtol=1e-9, atol=1e-12)


def test_value_experiment_accepts_revenue(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=["offer1", "offer2"], reward_type=pb.REWARD_TYPE_VALUE)
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=37.5))
    assert stats(stub, eid)[d.arm_id].reward_sum == 37.5


def test_update_arms_keeps_other_arms_state(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=["a", "b", "c"])
    for arm, r in (("a", 1), ("a", 0), ("b", 1), ("c", 1)):
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id=arm, reward=r))
    before = stats(stub, eid)
    resp = stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, add_arm_ids=["d"], remove_arm_ids=["b"]))
    assert [a.arm_id for a in resp.experiment.arms] == ["a", "c", "d"]
    after = stats(stub, eid)

    def learned(a):  # probability_best depends on which other arms exist
        return (a.selections, a.rewards, a.reward_sum, a.posterior_alpha, a.posterior_beta)

    assert learned(after["a"]) == learned(before["a"]) and learned(after["c"]) == learned(before["c"])
    assert after["d"].rewards == 0 and "b" not in after
    got = {stub.SelectArm(pb.SelectArmRequest(experiment_id=eid)).arm_id for _ in range(60)}
    assert got <= {"a", "c", "d"}


def test_reset_clears_statistics_keeps_configuration(stub, new_id):
    eid = new_id()
    created = create(stub, eid)
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=1))
    reset = stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id=eid))
    assert reset.experiment == created
    assert all(a.selections == 0 and a.rewards == 0 for a in stats(stub, eid).values())
    with pytest.raises(grpc.RpcError) as err:  # decisions from before the reset are gone
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reward_for_unknown_decision_with_arm_is_applied_once(stub, new_id):
    eid = new_id()
    create(stub, eid)
    req = pb.RecordRewardRequest(experiment_id=eid, decision_id="from-before-crash", arm_id="b", reward=1)
    assert not stub.RecordReward(req).duplicate
    assert stub.RecordReward(req).duplicate
    assert stats(stub, eid)["b"].rewards == 1


def test_batch_select_and_batch_reward(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=[f"a{i}" for i in range(5)])
    sel = stub.BatchSelectArms(pb.BatchSelectArmsRequest(
        requests=[pb.SelectArmRequest(experiment_id=eid) for _ in range(100)]))
    assert len(sel.responses) == 100
    assert len({r.decision_id for r in sel.responses}) == 100
    rewards = [pb.RecordRewardRequest(experiment_id=eid, decision_id=r.decision_id, reward=1)
               for r in sel.responses]
    rewards.append(rewards[0])  # a duplicate inside the batch
    out = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=rewards))
    assert [r.duplicate for r in out.responses] == [False] * 100 + [True]
    s = stats(stub, eid)
    assert sum(a.rewards for a in s.values()) == 100
    assert sum(a.selections for a in s.values()) == 100


def test_burn_in_tries_every_arm_first(stub, new_id):
    eid = new_id()
    arms = [f"a{i}" for i in range(6)]
    create(stub, eid, arms=arms, min_selections=3)
    # Make a0 look great: without burn-in Thompson would keep choosing it.
    for _ in range(50):
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a0", reward=1))
    for _ in range(18):
        stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
    assert all(a.selections == 3 for a in stats(stub, eid).values())


def test_exploration_floor_keeps_every_arm_alive(stub, new_id):
    eid = new_id()
    arms = [f"a{i}" for i in range(4)]
    create(stub, eid, arms=arms, exploration_floor=0.1, seed=99)
    for _ in range(200):  # a0 is clearly best
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a0", reward=1))
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a1", reward=0))
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a2", reward=0))
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a3", reward=0))
    responses = []
    for _ in range(2):
        responses += stub.BatchSelectArms(pb.BatchSelectArmsRequest(
            requests=[pb.SelectArmRequest(experiment_id=eid) for _ in range(1000)])).responses
    freq = {a: 0 for a in arms}
    for r in responses:
        freq[r.arm_id] += 1
        assert r.propensity >= 0.1 - 1e-12
    for a in arms[1:]:
        # floor 0.1 each: expect ~200 of 2000; 4 sigma below is ~146
        assert freq[a] >= 140, freq


def test_discounted_experiment_forgets(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=["old", "new"], discount=0.9)
    for _ in range(100):
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="old", reward=1))
    for _ in range(30):
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="old", reward=0))
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="new", reward=1))
    picks = [stub.SelectArm(pb.SelectArmRequest(experiment_id=eid)).arm_id for _ in range(100)]
    assert picks.count("new") >= 90


@pytest.mark.parametrize(
    "policy,reward_type,dim",
    [
        (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_BINARY, 0),
        (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_VALUE, 0),
        (pb.Policy(ucb1=pb.Policy.Ucb1()), pb.REWARD_TYPE_CONTINUOUS, 0),
        (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(decay=0.01)), pb.REWARD_TYPE_BINARY, 0),
        (pb.Policy(lin_ucb=pb.Policy.LinUcb()), pb.REWARD_TYPE_CONTINUOUS, 5),
        (pb.Policy(lin_thompson=pb.Policy.LinThompson()), pb.REWARD_TYPE_BINARY, 5),
    ],
    ids=["thompson", "thompson-value", "ucb1", "eps", "linucb", "lints"],
)
def test_every_policy_serves_and_learns(stub, new_id, policy, reward_type, dim):
    eid = new_id()
    create(stub, eid, arms=["a", "b", "c", "d"], policy=policy, reward_type=reward_type, context_dim=dim)
    ctx = [0.5] * dim
    for i in range(30):
        d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, context=ctx, num_arms=2))
        assert len(d.ranked_arm_ids) == 2
        assert 0.0 < d.propensity <= 1.0
        stub.RecordReward(pb.RecordRewardRequest(
            experiment_id=eid, decision_id=d.decision_id, reward=float(i % 2)))
    s = stats(stub, eid)
    assert sum(a.rewards for a in s.values()) == 30
    assert sum(a.selections for a in s.values()) == 60



def test_exploration_floor_holds_during_burn_in(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b"), exploration_floor=0.2, min_selections=1_000_000, seed=3)
    stub.BatchSelectArms(pb.BatchSelectArmsRequest(
        requests=[pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["b"])] * 5))
    # both arms are still in burn-in; b keeps >= 20% whatever burn-in prefers
    got = stub.BatchSelectArms(pb.BatchSelectArmsRequest(
        requests=[pb.SelectArmRequest(experiment_id=eid)] * 1000)).responses
    for r in got:
        assert r.propensity >= 0.2 - 1e-12
    share_b = sum(r.arm_id == "b" for r in got) / len(got)
    assert 0.4 <= share_b <= 0.6  # burn-in is uniform over the two cold arms here


def test_repeated_select_requests_follow_arm_and_experiment_changes(stub, new_id):
    """SelectArm keeps requests it has checked, by their bytes (DecisionServicer.
    select_arm_bytes); the same bytes after UpdateArms, ResetExperiment, DeleteExperiment or a
    re-creation are checked again against what the experiment is now."""
    eid = new_id()
    create(stub, eid, arms=("a", "b", "c"))
    only_c = pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["c"])
    for _ in range(3):
        assert stub.SelectArm(only_c).arm_id == "c"
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, remove_arm_ids=["c"]))
    with pytest.raises(grpc.RpcError) as info:
        stub.SelectArm(only_c)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "arm 'c' not found" in info.value.details()
    two = pb.SelectArmRequest(experiment_id=eid, num_arms=2)
    assert sorted(stub.SelectArm(two).ranked_arm_ids) == ["a", "b"]
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, add_arm_ids=["c", "d"]))
    assert stub.SelectArm(only_c).arm_id == "c"
    three = pb.SelectArmRequest(experiment_id=eid, num_arms=3)
    assert len(set(stub.SelectArm(three).ranked_arm_ids)) == 3
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, remove_arm_ids=["a", "b"]))
    with pytest.raises(grpc.RpcError) as info:  # 3 of 2 arms: checked again, refused
        stub.SelectArm(three)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id=eid))
    assert stub.SelectArm(only_c).model_version == 0
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id=eid))
    with pytest.raises(grpc.RpcError) as info:
        stub.SelectArm(only_c)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    create(stub, eid, arms=("x", "y"))
    with pytest.raises(grpc.RpcError) as info:
        stub.SelectArm(only_c)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.SelectArm(pb.SelectArmRequest(experiment_id=eid)).arm_id in {"x", "y"}
