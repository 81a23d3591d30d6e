"""Analyst RPCs: IngestMetrics (idempotent per period), GetAllocation, rich GetArmStats."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from scipy import integrate, stats

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.allocation import (
    prob_best_beta,
    prob_best_beta_reference,
    prob_best_value,
    prob_best_value_reference,
)
from banditd.kernels.rng import NumpyDraws, Xoshiro, seed_state
from helpers import create


def exact_p_b_beats_a(a1, b1, a2, b2) -> float:
    """P(Y > X), X ~ Beta(a1, b1), Y ~ Beta(a2, b2): integral of f_Y(y) F_X(y) dy."""
    value, _ = integrate.quad(lambda y: stats.beta.pdf(y, a2, b2) * stats.beta.cdf(y, a1, b1),
                              0, 1, limit=200, epsabs=1e-10)
    return value


def ingest(stub, eid, period, rows):
    return stub.IngestMetrics(pb.IngestMetricsRequest(
        experiment_id=eid, period=period,
        metrics=[pb.ArmMetrics(arm_id=a, trials=t, successes=s, value=v) for a, t, s, v in rows]))


def allocation(stub, eid, **kw):
    reply = stub.GetAllocation(pb.GetAllocationRequest(experiment_id=eid, **kw))
    return {a.arm_id: a.percentage for a in reply.allocations}, reply.next_period


def arm_stats(stub, eid):
    return stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid))


# -- kernels -------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prob_best_kernels_match_references_draw_for_draw(seed):
    gen = np.random.default_rng(seed)
    k = 7
    a, b = gen.uniform(0.5, 50, k), gen.uniform(0.5, 500, k)
    shape, rate = gen.uniform(1.5, 30, k), gen.uniform(1, 300, k)
    np.testing.assert_array_equal(prob_best_beta(a, b, 500, seed_state(seed)),
                                  prob_best_beta_reference(a, b, 500, Xoshiro(seed)))
    np.testing.assert_array_equal(prob_best_value(a, b, shape, rate, 500, seed_state(seed)),
                                  prob_best_value_reference(a, b, shape, rate, 500, Xoshiro(seed)))


def test_prob_best_value_matches_numpy_distribution():
    a, b = np.array([20.0, 10.0, 15.0]), np.array([380.0, 390.0, 385.0])
    shape, rate = np.array([21.0, 11.0, 16.0]), np.array([200.0, 300.0, 160.0])
    kernel = prob_best_value(a, b, shape, rate, 200_000, seed_state(4))
    reference = prob_best_value_reference(a, b, shape, rate, 200_000, NumpyDraws(4))
    np.testing.assert_allclose(kernel, reference, atol=0.006)  # ~4 sigma of the difference


# -- GetAllocation -------------------------------------------------------------------------

@pytest.mark.parametrize("counts", [(30, 970, 40, 960), (5, 45, 9, 41), (120, 880, 118, 882),
                                    (0, 0, 1, 3)])
def test_two_arm_allocation_matches_exact_probability(stub, new_id, counts):
    s_a, f_a, s_b, f_b = counts
    eid = new_id()
    create(stub, eid, arms=("A", "B"))
    ingest(stub, eid, "2025-12-01", [("A", s_a + f_a, s_a, 0), ("B", s_b + f_b, s_b, 0)])
    exact = 100 * exact_p_b_beats_a(1 + s_a, 1 + f_a, 1 + s_b, 1 + f_b)
    # 200k draws: Monte-Carlo sd <= 0.11 percentage points, so 0.5 pp is a > 4-sigma bound
    share, _ = allocation(stub, eid, num_draws=200_000, seed=9)
    assert abs(share["B"] - exact) <= 0.5, (share, exact)
    # the default 10,000 draws (sd <= 0.5 pp) stay within 3 sd
    share, _ = allocation(stub, eid)
    assert abs(share["B"] - exact) <= 1.5, (share, exact)


def test_allocation_sums_to_100_and_respects_floor(stub, new_id):
    eid = new_id()
    arms = [f"v{i}" for i in range(7)]
    create(stub, eid, arms=arms)
    ingest(stub, eid, "2025-12-01", [(a, 1000, 10 + 7 * i, 0) for i, a in enumerate(arms)])
    for floor in (0.0, 1.0, 5.0, 100 / 7):
        share, _ = allocation(stub, eid, min_percentage=floor)
        units = [round(p * 100) for p in share.values()]
        assert sum(units) == 10_000
        assert all(p == u / 100 for p, u in zip(share.values(), units, strict=True))
        assert all(p >= floor - 0.01 for p in share.values())  # to the hundredth
    share, _ = allocation(stub, eid, min_percentage=5.0)
    assert max(share, key=share.get) == "v6"
    assert share == allocation(stub, eid, min_percentage=5.0)[0]  # seeded: reproducible


def test_allocation_next_period_is_day_after_latest_date(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b"))
    assert allocation(stub, eid)[1] == ""
    ingest(stub, eid, "2025-12-31", [("a", 10, 1, 0)])
    ingest(stub, eid, "2025-12-22", [("a", 10, 1, 0)])
    ingest(stub, eid, "campaign-launch", [("b", 10, 1, 0)])
    assert allocation(stub, eid)[1] == "2026-01-01"


def test_value_experiment_allocation_prefers_revenue(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("cheap", "premium"), reward_type=pb.REWARD_TYPE_VALUE)
    # cheap converts more (8% vs 4%) but premium earns 5x per conversion
    ingest(stub, eid, "2025-12-01", [("cheap", 5000, 400, 400 * 10.0), ("premium", 5000, 200, 200 * 50.0)])
    share, _ = allocation(stub, eid)
    assert share["premium"] > 99.0
    s = {a.arm_id: a for a in arm_stats(stub, eid).arms}
    assert s["premium"].revenue_per_event == pytest.approx(2.0)
    assert s["cheap"].conversion_rate == pytest.approx(0.08)
    assert s["premium"].value_posterior_shape == pytest.approx(1 + 1 + 200)  # strength 1
    assert s["premium"].value_posterior_rate == pytest.approx(1 * 1.0 + 10_000)


def test_allocation_needs_a_posterior(stub, new_id):
    ctx = new_id()
    create(stub, ctx, policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()), context_dim=2,
           reward_type=pb.REWARD_TYPE_CONTINUOUS)
    ucb_cont = new_id()
    create(stub, ucb_cont, policy=pb.Policy(ucb1=pb.Policy.Ucb1()), reward_type=pb.REWARD_TYPE_CONTINUOUS)
    for eid in (ctx, ucb_cont):
        with pytest.raises(grpc.RpcError) as err:
            allocation(stub, eid)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "posterior" in err.value.details()
    ucb_bin = new_id()
    create(stub, ucb_bin, arms=("a", "b"), policy=pb.Policy(ucb1=pb.Policy.Ucb1()))
    ingest(stub, ucb_bin, "2025-12-01", [("a", 1000, 100, 0), ("b", 1000, 50, 0)])
    share, _ = allocation(stub, ucb_bin)
    assert share["a"] > 99


@pytest.mark.parametrize("kw,contains", [(dict(num_draws=0), "num_draws"),
                                         (dict(min_percentage=40), "min_percentage"),
                                         (dict(min_percentage=math.nan), "min_percentage")])
def test_bad_allocation_requests(stub, new_id, kw, contains):
    eid = new_id()
    create(stub, eid)
    with pytest.raises(grpc.RpcError) as err:
        allocation(stub, eid, **kw)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and contains in err.value.details()


# -- IngestMetrics -------------------------------------------------------------------------

def test_reingesting_a_period_is_idempotent(stub, new_id):
    once, twice = new_id(), new_id()
    rows = [("a", 1000, 31, 0), ("b", 800, 40, 0), ("c", 1200, 30, 0)]
    for eid in (once, twice):
        create(stub, eid, seed=5)
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=1))
        ingest(stub, eid, "2025-12-20", rows)
    reply = ingest(stub, twice, "2025-12-20", rows)
    assert (reply.replaced_arms, reply.new_arms) == (3, 0)
    assert arm_stats(stub, once) == arm_stats(stub, twice)
    assert allocation(stub, once) == allocation(stub, twice)


def test_resending_replaces_only_the_arms_in_the_request(stub, new_id):
    eid = new_id()
    create(stub, eid)
    ingest(stub, eid, "2025-12-20", [("a", 100, 10, 0), ("b", 100, 20, 0)])
    ingest(stub, eid, "2025-12-21", [("a", 50, 5, 0)])
    reply = ingest(stub, eid, "2025-12-20", [("a", 300, 60, 0), ("c", 10, 1, 0)])
    assert (reply.replaced_arms, reply.new_arms) == (1, 1)
    s = {a.arm_id: a for a in arm_stats(stub, eid).arms}
    assert (s["a"].trials, s["a"].successes) == (350, 65)  # 300/60 replaced 100/10, + 50/5
    assert (s["b"].trials, s["b"].successes) == (100, 20)  # left out: kept
    assert (s["c"].trials, s["c"].successes) == (10, 1)
    assert (s["a"].posterior_alpha, s["a"].posterior_beta) == (1 + 65, 1 + 285)


def test_ingested_metrics_and_live_rewards_feed_the_same_posterior(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b"), policy=pb.Policy(thompson=pb.Policy.Thompson(alpha=2, beta=3)))
    for r in (1, 1, 0):
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=r))
    ingest(stub, eid, "2025-12-01", [("a", 100, 7, 0)])
    a = {x.arm_id: x for x in arm_stats(stub, eid).arms}["a"]
    assert (a.rewards, a.reward_sum) == (3, 2.0)  # live only
    assert (a.trials, a.successes) == (103, 9)
    assert a.conversion_rate == pytest.approx(9 / 103)
    assert (a.posterior_alpha, a.posterior_beta) == (2 + 9, 3 + 94)
    assert a.score == pytest.approx(11 / 108)


def test_arm_stats_probability_best_sums_to_one(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("x", "y", "z"))
    ingest(stub, eid, "p1", [("x", 500, 50, 0), ("y", 500, 40, 0), ("z", 500, 30, 0)])
    arms = arm_stats(stub, eid).arms
    assert sum(a.probability_best for a in arms) == pytest.approx(1.0)
    assert arms[0].probability_best > 0.8


def test_ucb_stats_report_the_confidence_bound(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b"), policy=pb.Policy(ucb1=pb.Policy.Ucb1(c=1.0)))
    ingest(stub, eid, "p1", [("a", 100, 30, 0), ("b", 300, 60, 0)])
    s = {a.arm_id: a for a in arm_stats(stub, eid).arms}
    assert s["a"].score == pytest.approx(0.3 + math.sqrt(math.log(400) / 100))
    assert s["b"].score == pytest.approx(0.2 + math.sqrt(math.log(400) / 300))


def snapshot(stub, eid):
    return (stub.GetExperiment(pb.GetExperimentRequest(experiment_id=eid)), arm_stats(stub, eid))


@pytest.mark.parametrize(
    "period,rows,code,contains",
    [
        ("d", [("a", 10, 11, 0)], "INVALID_ARGUMENT", "exceed trials"),
        ("d", [("a", -1, 0, 0)], "INVALID_ARGUMENT", "trials"),
        ("d", [("a", 10, 1, math.nan)], "INVALID_ARGUMENT", "value"),
        ("d", [("a", math.inf, 1, 0)], "INVALID_ARGUMENT", "trials"),
        ("d", [("a", 10, 1, 0), ("a", 5, 1, 0)], "INVALID_ARGUMENT", "duplicate"),
        ("d", [("a", 10, 1, 0), ("zz", 5, 1, 0)], "NOT_FOUND", "metrics[2]"),
        ("", [("a", 10, 1, 0)], "INVALID_ARGUMENT", "period"),
        ("x" * 65, [("a", 10, 1, 0)], "INVALID_ARGUMENT", "period"),
        ("d", [], "INVALID_ARGUMENT", "metrics is empty"),
    ],
)
def test_bad_ingest_changes_nothing(stub, new_id, period, rows, code, contains):
    eid = new_id()
    create(stub, eid)
    ingest(stub, eid, "d", [("b", 10, 2, 0)])
    before = snapshot(stub, eid)
    with pytest.raises(grpc.RpcError) as err:
        # a valid row first (when there are rows): it must not be applied either
        ingest(stub, eid, period, [("b", 99, 9, 0)] + rows if rows else [])
    assert err.value.code().name == code and contains in err.value.details()
    assert snapshot(stub, eid) == before


@pytest.mark.parametrize("kind", ["contextual", "discounted"])
def test_ingest_precondition(stub, new_id, kind):
    eid = new_id()
    if kind == "contextual":
        create(stub, eid, policy=pb.Policy(lin_thompson=pb.Policy.LinThompson()), context_dim=2)
    else:
        create(stub, eid, discount=0.99)
    with pytest.raises(grpc.RpcError) as err:
        ingest(stub, eid, "d", [("a", 10, 1, 0)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert {"contextual": "is contextual", "discounted": "discounts"}[kind] in err.value.details()


def test_removed_arm_forgets_its_periods(stub, new_id):
    eid = new_id()
    create(stub, eid)
    ingest(stub, eid, "d", [("a", 100, 50, 0)])
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, remove_arm_ids=["a"]))
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=eid, add_arm_ids=["a"]))
    reply = ingest(stub, eid, "d", [("a", 10, 1, 0)])
    assert reply.new_arms == 1
    a = {x.arm_id: x for x in arm_stats(stub, eid).arms}["a"]
    assert (a.trials, a.posterior_alpha, a.posterior_beta) == (10, 2, 10)


def test_reset_clears_ingested_metrics(stub, new_id):
    eid = new_id()
    create(stub, eid)
    ingest(stub, eid, "2025-01-01", [("a", 100, 50, 0)])
    stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id=eid))
    a = arm_stats(stub, eid).arms[0]
    assert (a.trials, a.posterior_alpha) == (0, 1)
    assert allocation(stub, eid)[1] == ""


def test_replacing_a_period_then_restoring_it_is_exact(stub, new_id):
    """The delta arithmetic: A, then B replacing A, then A again == A once."""
    a = [("a", 1000, 31, 0), ("b", 800, 40, 0)]
    b = [("a", 7, 2, 0), ("b", 123, 99, 0)]
    once, replaced = new_id(), new_id()
    for eid in (once, replaced):
        create(stub, eid, seed=5, reward_type=pb.REWARD_TYPE_VALUE)
        stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="a", reward=12.25))
        ingest(stub, eid, "2025-12-20", [(x, t, s, s * 3.1) for x, t, s, _ in a])
    ingest(stub, replaced, "2025-12-20", [(x, t, s, s * 7.7) for x, t, s, _ in b])
    ingest(stub, replaced, "2025-12-20", [(x, t, s, s * 3.1) for x, t, s, _ in a])

    def learned(eid):
        return [(x.trials, x.successes, x.revenue_per_event, x.posterior_alpha, x.posterior_beta,
                 x.value_posterior_shape, x.value_posterior_rate) for x in arm_stats(stub, eid).arms]

    got, want = learned(replaced), learned(once)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-12)
