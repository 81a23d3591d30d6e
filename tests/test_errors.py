"""Bad input gets the right status code and a message naming the field; state never changes."""

from __future__ import annotations

import math

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from banditd.decision.v1 import decision_pb2 as pb
from helpers import create, make_experiment, running_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def snapshot(stub, eid):
    """Everything observable about an experiment."""
    return (
        stub.GetExperiment(pb.GetExperimentRequest(experiment_id=eid)),
        stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid)),
    )


def expect(code, call, *args, contains=""):
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    assert err.value.code() == code, err.value.details()
    assert contains in err.value.details(), err.value.details()
    if code == INVALID:  # every one names its field in a google.rpc.BadRequest too
        bad_field(err.value)
    return err.value.details()


def bad_field(error: grpc.RpcError) -> str:
    """The field of the one BadRequest field violation an INVALID_ARGUMENT carries."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status: {error.details()}"
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == error.details()
    (detail,) = status.details
    request = error_details_pb2.BadRequest()
    assert detail.Unpack(request)
    (violation,) = request.field_violations
    assert violation.field and violation.description == error.details()
    return violation.field


@pytest.mark.parametrize("call, request_, field", [
    ("CreateExperiment", pb.CreateExperimentRequest(experiment=make_experiment("f", arms=())),
     "experiment.arms"),
    ("CreateExperiment", pb.CreateExperimentRequest(experiment=make_experiment(
        "f", policy=pb.Policy(ucb1=pb.Policy.Ucb1(c=-1.0)))), "experiment.policy.ucb1.c"),
    ("CreateCampaign", pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="f", daily_budget=-1.0, max_bid=1.0)), "campaign.daily_budget"),
    ("AllocateBudget", pb.AllocateBudgetRequest(total_budget=100.0, ad_groups=[
        pb.AdGroup(id="a"), pb.AdGroup(id="a")]), "ad_groups[1].id"),
])
def test_invalid_argument_names_its_field_in_bad_request(stub, call, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, call)(request_)
    assert err.value.code() == INVALID
    assert bad_field(err.value) == field


def test_a_batch_items_field_is_prefixed_with_its_index(stub, contextual):
    items = [pb.SelectArmRequest(experiment_id=contextual, context=[0.0] * 4)] * 2 + [
        pb.SelectArmRequest(experiment_id=contextual, context=[0.0] * 3)]
    with pytest.raises(grpc.RpcError) as err:
        stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items))
    assert bad_field(err.value) == "requests[2].context"


@pytest.fixture
def binary(stub, new_id):
    eid = new_id("bin")
    create(stub, eid, arms=("a", "b", "c"))
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="b", reward=1))
    return eid, d


@pytest.fixture
def contextual(stub, new_id):
    eid = new_id("ctx")
    create(stub, eid, arms=("a", "b"), policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()),
           context_dim=4, reward_type=pb.REWARD_TYPE_CONTINUOUS)
    return eid


@pytest.mark.parametrize(
    "reward,contains",
    [(math.nan, "finite"), (math.inf, "finite"), (-math.inf, "finite"), (0.5, "binary"),
     (-1.0, "binary"), (2.0, "binary")],
)
def test_bad_binary_reward(stub, binary, reward, contains):
    eid, d = binary
    before = snapshot(stub, eid)
    expect(INVALID, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=reward),
           contains=contains)
    assert snapshot(stub, eid) == before
    # the decision still accepts its (valid) reward afterwards
    assert not stub.RecordReward(
        pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=1)).duplicate


def test_negative_value_reward(stub, new_id):
    eid = new_id()
    create(stub, eid, reward_type=pb.REWARD_TYPE_VALUE)
    before = snapshot(stub, eid)
    expect(INVALID, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=-3.0), contains=">= 0")
    assert snapshot(stub, eid) == before


@pytest.mark.parametrize("ctx", [[1.0, 2.0, 3.0], [1.0] * 5, [], [1.0, math.nan, 0.0, 0.0],
                                 [math.inf, 0.0, 0.0, 0.0]])
def test_bad_context_on_select_and_reward(stub, contextual, ctx):
    eid = contextual
    before = snapshot(stub, eid)
    msg = expect(INVALID, stub.SelectArm, pb.SelectArmRequest(experiment_id=eid, context=ctx),
                 contains="context")
    if len(ctx) != 4:
        assert f"has {len(ctx)} values" in msg and "expects 4" in msg
    expect(INVALID, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, arm_id="a", context=ctx, reward=1.0),
           contains="context")
    assert snapshot(stub, eid) == before


def test_context_for_non_contextual_experiment(stub, binary):
    eid, _ = binary
    before = snapshot(stub, eid)
    expect(INVALID, stub.SelectArm, pb.SelectArmRequest(experiment_id=eid, context=[1.0]),
           contains="not contextual")
    assert snapshot(stub, eid) == before


def test_unknown_ids(stub, binary):
    eid, d = binary
    before = snapshot(stub, eid)
    expect(NOT_FOUND, stub.SelectArm, pb.SelectArmRequest(experiment_id="nope"), contains="'nope'")
    expect(NOT_FOUND, stub.GetExperiment, pb.GetExperimentRequest(experiment_id="nope"))
    expect(NOT_FOUND, stub.GetArmStats, pb.GetArmStatsRequest(experiment_id="nope"))
    expect(NOT_FOUND, stub.DeleteExperiment, pb.DeleteExperimentRequest(experiment_id="nope"))
    expect(NOT_FOUND, stub.ResetExperiment, pb.ResetExperimentRequest(experiment_id="nope"))
    expect(NOT_FOUND, stub.SelectArm,
           pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["a", "zz"]),
           contains="eligible_arm_ids[1]")
    expect(NOT_FOUND, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, decision_id="no-such-decision", reward=1),
           contains="no-such-decision")
    expect(NOT_FOUND, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, arm_id="zz", reward=1), contains="'zz'")
    expect(NOT_FOUND, stub.UpdateArms,
           pb.UpdateArmsRequest(experiment_id=eid, remove_arm_ids=["zz"]), contains="zz")
    assert snapshot(stub, eid) == before


def test_decision_of_other_experiment_is_not_found(stub, binary, new_id):
    eid, d = binary
    other = new_id()
    create(stub, other)
    expect(NOT_FOUND, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=other, decision_id=d.decision_id, reward=1))


def test_reward_arm_outside_decision(stub, binary):
    eid, d = binary
    before = snapshot(stub, eid)
    other = next(a for a in ("a", "b", "c") if a != d.arm_id)
    expect(INVALID, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, arm_id=other, reward=1),
           contains="not part of decision")
    assert snapshot(stub, eid) == before


def test_reward_without_decision_or_arm(stub, binary):
    eid, _ = binary
    expect(INVALID, stub.RecordReward, pb.RecordRewardRequest(experiment_id=eid, reward=1),
           contains="decision_id")


def test_duplicate_ids(stub, binary, new_id):
    eid, _ = binary
    before = snapshot(stub, eid)
    expect(INVALID, stub.SelectArm,
           pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["a", "a"]), contains="duplicate")
    expect(INVALID, stub.UpdateArms,
           pb.UpdateArmsRequest(experiment_id=eid, add_arm_ids=["n", "n"]), contains="duplicate")
    expect(grpc.StatusCode.ALREADY_EXISTS, stub.UpdateArms,
           pb.UpdateArmsRequest(experiment_id=eid, add_arm_ids=["a"]), contains="'a'")
    expect(INVALID, stub.CreateExperiment,
           pb.CreateExperimentRequest(experiment=make_experiment(new_id(), arms=("x", "y", "x"))),
           contains="duplicate")
    expect(grpc.StatusCode.ALREADY_EXISTS, stub.CreateExperiment,
           pb.CreateExperimentRequest(experiment=make_experiment(eid)))
    assert snapshot(stub, eid) == before


@pytest.mark.parametrize(
    "fields,contains",
    [
        (dict(arms=()), "arms is empty"),
        (dict(arms=("a", "")), "arms[1] is empty"),
        (dict(reward_type=pb.REWARD_TYPE_UNSPECIFIED), "reward_type"),
        (dict(reward_type=7), "reward_type"),
        (dict(policy=pb.Policy()), "policy"),
        (dict(policy=pb.Policy(thompson=pb.Policy.Thompson(alpha=0))), "alpha must be > 0"),
        (dict(policy=pb.Policy(thompson=pb.Policy.Thompson(beta=math.nan))), "beta"),
        (dict(policy=pb.Policy(ucb1=pb.Policy.Ucb1(c=-1))), "c must be >= 0"),
        (dict(policy=pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=1.5))), "epsilon"),
        (dict(policy=pb.Policy(lin_ucb=pb.Policy.LinUcb(ridge=0)), context_dim=3), "ridge"),
        (dict(policy=pb.Policy(lin_ucb=pb.Policy.LinUcb())), "context_dim must be > 0"),
        (dict(context_dim=3), "context_dim must be 0"),
        (dict(context_dim=100_000, policy=pb.Policy(lin_ucb=pb.Policy.LinUcb())), "limit"),
        (dict(reward_type=pb.REWARD_TYPE_CONTINUOUS), "thompson supports"),
        (dict(exploration_floor=0.5), "floor"),
        (dict(exploration_floor=-0.1), "floor"),
        (dict(exploration_floor=math.nan), "floor"),
        (dict(discount=0.0), "discount"),
        (dict(discount=1.5), "discount"),
        (dict(discount=0.9, policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()), context_dim=2), "discount"),
    ],
)
def test_bad_experiment_is_rejected_and_not_created(stub, new_id, fields, contains):
    eid = new_id("bad")
    expect(INVALID, stub.CreateExperiment,
           pb.CreateExperimentRequest(experiment=make_experiment(eid, **fields)), contains=contains)
    expect(NOT_FOUND, stub.GetExperiment, pb.GetExperimentRequest(experiment_id=eid))


@pytest.mark.parametrize("eid", ["", "has space", "x" * 129, "slash/no"])
def test_bad_experiment_id(stub, eid):
    expect(INVALID, stub.CreateExperiment,
           pb.CreateExperimentRequest(experiment=make_experiment(eid)), contains="experiment_id")


def test_missing_experiment_message(stub):
    expect(INVALID, stub.CreateExperiment, pb.CreateExperimentRequest(), contains="experiment")


def test_slate_larger_than_eligible(stub, binary):
    eid, _ = binary
    before = snapshot(stub, eid)
    expect(INVALID, stub.SelectArm,
           pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["a", "b"], num_arms=3),
           contains="num_arms")
    assert snapshot(stub, eid) == before


def test_update_arms_cannot_empty_experiment(stub, binary):
    eid, _ = binary
    before = snapshot(stub, eid)
    expect(INVALID, stub.UpdateArms,
           pb.UpdateArmsRequest(experiment_id=eid, remove_arm_ids=["a", "b", "c"]), contains="at least one")
    expect(INVALID, stub.UpdateArms, pb.UpdateArmsRequest(experiment_id=eid), contains="empty")
    assert snapshot(stub, eid) == before


def test_batch_with_one_bad_item_applies_nothing(stub, binary):
    eid, _ = binary
    before = snapshot(stub, eid)
    good = pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=1)
    bad = pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=math.nan)
    msg = expect(INVALID, stub.BatchRecordRewards,
                 pb.BatchRecordRewardsRequest(requests=[good, good, bad, good]),
                 contains="requests[2]")
    assert "finite" in msg
    sel_good = pb.SelectArmRequest(experiment_id=eid)
    sel_bad = pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["a", "a"])
    expect(INVALID, stub.BatchSelectArms,
           pb.BatchSelectArmsRequest(requests=[sel_good, sel_bad]), contains="requests[1]")
    expect(NOT_FOUND, stub.BatchSelectArms,
           pb.BatchSelectArmsRequest(requests=[sel_good, pb.SelectArmRequest(experiment_id="nope")]),
           contains="requests[1]")
    assert snapshot(stub, eid) == before


def test_oversize_and_empty_batch(stub, binary):
    eid, _ = binary
    before = snapshot(stub, eid)
    items = [pb.SelectArmRequest(experiment_id=eid)] * 1001  # the shared server's limit: 1000
    expect(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.BatchSelectArms,
           pb.BatchSelectArmsRequest(requests=items), contains="limit is 1000")
    expect(INVALID, stub.BatchRecordRewards, pb.BatchRecordRewardsRequest(), contains="empty")
    assert snapshot(stub, eid) == before


def test_limits(tmp_path):
    from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

    with running_server(tmp_path, max_experiments=2, max_arms=3, max_message_bytes=4096) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        create(stub, "one")
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.CreateExperiment,
               pb.CreateExperimentRequest(experiment=make_experiment("big", arms=("a", "b", "c", "d"))),
               contains="limit is 3")
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.UpdateArms,
               pb.UpdateArmsRequest(experiment_id="one", add_arm_ids=["d"]), contains="limit is 3")
        create(stub, "two")
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.CreateExperiment,
               pb.CreateExperimentRequest(experiment=make_experiment("three")), contains="maximum")
        huge = pb.BatchSelectArmsRequest(requests=[pb.SelectArmRequest(experiment_id="one")] * 1000)
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.BatchSelectArms, huge)
        # the server is still healthy and its state intact
        assert len(stub.ListExperiments(pb.ListExperimentsRequest()).experiments) == 2
        assert sum(a.selections for a in stub.GetArmStats(
            pb.GetArmStatsRequest(experiment_id="one")).arms) == 0


@pytest.mark.parametrize("value", [1e200, -1e13, 1.5e12])
def test_huge_finite_values_are_rejected_not_learned(stub, contextual, new_id, value):
    """Finite but huge inputs would overflow the sums (inf / NaN state): refused."""
    eid = contextual
    before = snapshot(stub, eid)
    expect(INVALID, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, arm_id="a", context=[value, 1, 0, 0], reward=1.0),
           contains="context[0]")
    expect(INVALID, stub.SelectArm, pb.SelectArmRequest(experiment_id=eid, context=[0, 0, value, 0]),
           contains="context[2]")
    expect(INVALID, stub.RecordReward,
           pb.RecordRewardRequest(experiment_id=eid, arm_id="a", context=[1, 0, 0, 0], reward=value),
           contains="|reward|")
    assert snapshot(stub, eid) == before
    # still a healthy model: it decides, and learns from a sane reward
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, context=[1, 0, 0, 0]))
    assert d.arm_id in ("a", "b") and 0 < d.propensity <= 1
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id,
                                             reward=2.5))
    learned = {a.arm_id: (a.rewards, a.reward_sum) for a in stub.GetArmStats(
        pb.GetArmStatsRequest(experiment_id=eid)).arms}
    assert learned[d.arm_id] == (1, 2.5)


def test_malformed_ids_are_invalid_argument(stub, binary):
    eid, _ = binary
    expect(INVALID, stub.SelectArm, pb.SelectArmRequest(experiment_id=""), contains="experiment_id")
    expect(INVALID, stub.GetExperiment, pb.GetExperimentRequest(experiment_id="bad id!"),
           contains="experiment_id")
    expect(INVALID, stub.SelectArm, pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["a", ""]),
           contains="eligible_arm_ids[1] is empty")


def test_retry_is_duplicate_even_after_its_arm_was_removed(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b"))
    d = stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["a"]))
    req = pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=1)
    assert not stub.RecordReward(req).duplicate
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, remove_arm_ids=["a"]))
    assert stub.RecordReward(req).duplicate


def test_explicit_arm_reward_never_touches_another_experiments_decision(stub, new_id):
    one, two = new_id(), new_id()
    create(stub, one)
    create(stub, two)
    d1 = stub.SelectArm(pb.SelectArmRequest(experiment_id=one))
    # a client mistakenly sends d1's id to experiment two, with an explicit arm
    r = stub.RecordReward(pb.RecordRewardRequest(experiment_id=two, decision_id=d1.decision_id,
                                                 arm_id="a", reward=1))
    assert not r.duplicate
    assert sum(a.rewards for a in stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=two)).arms) == 1
    # d1 still takes its own reward, once
    req = pb.RecordRewardRequest(experiment_id=one, decision_id=d1.decision_id, reward=1)
    assert not stub.RecordReward(req).duplicate
    assert stub.RecordReward(req).duplicate
