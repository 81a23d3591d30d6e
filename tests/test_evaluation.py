"""Off-policy evaluation (EvaluatePolicy): the estimators equal the textbook formulas, the
estimates on decisions banditd logged equal a plain NumPy computation from the exported log,
and the 95% intervals cover a candidate's known true value in at least 90% of 50 seeded runs."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.state import evaluation
from benchmarks import ope_accuracy
from helpers import create


def _data(seed: int, n: int = 400, k: int = 4, d: int = 0):
    gen = np.random.default_rng(seed)
    pi = gen.dirichlet(np.ones(k), size=n)
    arms = gen.integers(0, k, n)
    propensities = gen.uniform(0.05, 1.0, n)
    rewards = gen.normal(0.5, 1.0, n)
    contexts = gen.standard_normal((n, d))
    return pi, arms, propensities, rewards, contexts


def test_estimators_are_the_textbook_formulas():
    pi, arms, p, r, x = _data(1, d=3)
    rhat = evaluation.reward_model(arms, r, x, 4)
    got = evaluation.estimate(pi, arms, p, r, rhat, 200, seed=3)
    n = len(arms)
    ips = sum(pi[i, arms[i]] / p[i] * r[i] for i in range(n)) / n
    w = [pi[i, arms[i]] / p[i] for i in range(n)]
    snips = sum(w[i] * r[i] for i in range(n)) / sum(w)
    dr = sum(sum(pi[i, a] * rhat[i, a] for a in range(4)) + w[i] * (r[i] - rhat[i, arms[i]])
             for i in range(n)) / n
    assert got.ips.value == pytest.approx(ips, abs=1e-9)
    assert got.snips.value == pytest.approx(snips, abs=1e-9)
    assert got.dr.value == pytest.approx(dr, abs=1e-9)
    assert got.logging.value == pytest.approx(sum(r) / n, abs=1e-9)
    assert got.effective_sample_size == pytest.approx(sum(w) ** 2 / sum(v * v for v in w))
    assert got.max_weight == pytest.approx(max(w))
    for e in (got.ips, got.snips, got.dr, got.logging):
        assert e.low < e.value < e.high
    again = evaluation.estimate(pi, arms, p, r, rhat, 200, seed=3)
    assert (again.ips, again.snips, again.dr) == (got.ips, got.snips, got.dr)  # seeded


def test_the_reward_model_is_a_ridge_regression_per_arm():
    pi, arms, p, r, x = _data(2, d=2)
    rhat = evaluation.reward_model(arms, r, x, 4, ridge=1.0)
    xa = np.hstack([x, np.ones((len(x), 1))])
    for a in range(4):
        m = arms == a
        theta = np.linalg.inv(np.eye(3) + xa[m].T @ xa[m]) @ xa[m].T @ r[m]
        np.testing.assert_allclose(rhat[:, a], xa @ theta, rtol=1e-9, atol=1e-9)
    means = evaluation.reward_model(arms, r, np.empty((len(r), 0)), 5)
    for a in range(4):
        assert means[0, a] == pytest.approx(r[arms == a].mean())
    assert means[0, 4] == pytest.approx(r.mean())  # an arm never logged: the overall mean


def _log(stub, experiment_id, gen, rounds=10, per_round=100, slate=False):
    """Epsilon-greedy decisions on 4 Bernoulli arms, rewarded round by round."""
    means = dict(zip("abcd", (0.1, 0.3, 0.5, 0.7), strict=True))
    for _ in range(rounds):
        reply = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
            pb.SelectArmRequest(experiment_id=experiment_id, num_arms=2 if slate else 0)]
            * per_round))
        stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=[
            pb.RecordRewardRequest(experiment_id=experiment_id, decision_id=r.decision_id,
                                   reward=float(gen.random() < means[r.arm_id]))
            for r in reply.responses]))


def _exported(stub, experiment_id):
    return [row for m in stub.ExportDecisions(pb.ExportDecisionsRequest(
        experiment_id=experiment_id)) for row in m.decisions]


def test_ips_and_snips_on_logged_decisions_equal_numpy_from_the_export(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b", "c", "d"), seed=11,
           policy=pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.3)))
    _log(stub, eid, np.random.default_rng(11))
    # the candidate: epsilon-greedy with epsilon 0.5 on the learned means (no decay)
    reply = stub.EvaluatePolicy(pb.EvaluatePolicyRequest(
        experiment_id=eid, policy=pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.5)),
        seed=5))
    stats = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid)).arms
    means = np.array([s.reward_sum / s.rewards for s in stats])
    best = means == means.max()
    pi = 0.5 / 4 + 0.5 * best / best.sum()
    np.testing.assert_allclose([s.share for s in reply.candidate_shares], pi, atol=1e-12)
    rows = _exported(stub, eid)
    index = {a: i for i, a in enumerate("abcd")}
    arm = np.array([index[r.arm_ids[0]] for r in rows])
    p = np.array([r.propensity for r in rows])
    r = np.array([r.reward for r in rows])
    w = pi[arm] / p
    assert reply.decisions == len(rows) == 1000
    assert reply.ips.value == pytest.approx(np.sum(w * r) / len(r), abs=1e-9)
    assert reply.snips.value == pytest.approx(np.sum(w * r) / np.sum(w), abs=1e-9)
    assert reply.logging_policy.value == pytest.approx(r.mean(), abs=1e-9)
    assert reply.effective_sample_size == pytest.approx(w.sum() ** 2 / (w * w).sum())
    assert reply.ips.ci_low < reply.ips.value < reply.ips.ci_high


def test_a_slate_is_evaluated_on_its_first_arm(stub, new_id):
    """A reward that named the second arm of a slate leaves the first arm with the default."""
    eid = new_id()
    create(stub, eid, arms=("a", "b", "c", "d"), seed=12,
           policy=pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.3)))
    made = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
        pb.SelectArmRequest(experiment_id=eid, num_arms=2)] * 50)).responses
    stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=[
        pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=1.0,
                               arm_id=d.ranked_arm_ids[i % 2]) for i, d in enumerate(made)]))
    reply = stub.EvaluatePolicy(pb.EvaluatePolicyRequest(
        experiment_id=eid, policy=pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=1.0))))
    assert reply.logging_policy.value == pytest.approx(0.5)  # half the rewards were slot 1's
    rows = _exported(stub, eid)
    assert [r.rewarded_arm_id for r in rows] == [d.ranked_arm_ids[i % 2]
                                                 for i, d in enumerate(made)]


@pytest.mark.parametrize("request_fields, code, words", [
    ({"experiment_id": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
    ({}, grpc.StatusCode.INVALID_ARGUMENT, "policy is required"),
    ({"policy": pb.Policy(ucb1=pb.Policy.Ucb1(c=-1))}, grpc.StatusCode.INVALID_ARGUMENT,
     "policy.ucb1.c"),
    ({"policy": pb.Policy(lin_ucb=pb.Policy.LinUcb())}, grpc.StatusCode.INVALID_ARGUMENT,
     "contextual experiment"),
    ({"policy": pb.Policy(ucb1=pb.Policy.Ucb1()), "num_bootstrap": 5},
     grpc.StatusCode.INVALID_ARGUMENT, "num_bootstrap"),
    ({"policy": pb.Policy(ucb1=pb.Policy.Ucb1())}, grpc.StatusCode.FAILED_PRECONDITION,
     "no settled decisions"),
])
def test_bad_evaluations_are_refused_precisely(stub, new_id, request_fields, code, words):
    eid = new_id()
    create(stub, eid)
    stub.SelectArm(pb.SelectArmRequest(experiment_id=eid))  # made, never rewarded
    fields = {"experiment_id": eid, **request_fields}
    with pytest.raises(grpc.RpcError) as err:
        stub.EvaluatePolicy(pb.EvaluatePolicyRequest(**fields))
    assert err.value.code() == code
    assert words in err.value.details()


def test_intervals_cover_the_true_value_in_90_percent_of_50_seeded_runs(server, stub):
    """Decisions logged by banditd under epsilon-greedy (epsilon 0.3) on 4 Bernoulli arms with
    known means; candidates epsilon-greedy (epsilon 0.6) and Thompson sampling, whose true
    value is sum_a pi(a) mu_a (see benchmarks/ope_accuracy.py)."""
    results = []
    for seed in range(50):
        results += ope_accuracy.evaluate_run(stub, "bernoulli", 1000 + seed, 2000, 20,
                                             state_of=None, bootstrap=1000)
    for row in ope_accuracy.summarise(results):
        assert row["runs"] == 50 and row["decisions"] == 2000
        for estimator in ope_accuracy.ESTIMATORS:
            assert row[estimator]["coverage"] >= 0.9, (row["candidate"], estimator, row)
            assert abs(row[estimator]["bias"]) < 0.01, (row["candidate"], estimator, row)
