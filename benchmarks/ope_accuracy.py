"""Off-policy evaluation against known truth: EvaluatePolicy's IPS, SNIPS and doubly robust
estimates of a candidate policy, on decisions logged by banditd under another policy, compared
with the candidate's true value in a simulated problem whose arm means are known.

Scenarios (each run: a new experiment with its own seed; decisions are made in rounds of
BatchSelectArms, and each round's rewards, drawn by this script from the true means, are
recorded with BatchRecordRewards before the next round, so the logging policy learns as it
goes):

* ``bernoulli``: 4 arms with conversion rates 0.20, 0.30, 0.40, 0.50 (binary rewards), logged
  by epsilon-greedy (epsilon 0.3: exact propensities); candidates: epsilon-greedy with epsilon
  0.6, and Thompson sampling.
* ``linear``: 3 arms, a 4-feature context (3 standard normals and a constant 1), reward =
  theta_a . x + N(0, 0.5^2) (continuous), logged by LinUCB (alpha 1) with an exploration floor
  of 0.05; candidates: LinUCB with alpha 0 (greedy on the learned model), and linear Thompson
  sampling.

The true value of a candidate is the expected reward of its action probabilities (EvaluatePolicy
evaluates it as a fixed policy with the statistics the experiment learned): ``sum_a pi(a)
mu_a`` without context; for the linear scenario the mean of ``sum_a pi(a|x) mu(a, x)`` over
20,000 fresh contexts, with ``pi`` computed by the server's own function on the experiment's
state.

    python -m benchmarks.ope_accuracy [--runs 100] [--decisions 5000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

MEANS = np.array([0.20, 0.30, 0.40, 0.50])
THETA = np.array([[0.5, -0.3, 0.2, 0.1],  # per arm; the last feature is the constant
                  [-0.2, 0.4, 0.1, 0.3],
                  [0.1, 0.1, -0.5, 0.4]])
NOISE = 0.5
ESTIMATORS = ("ips", "snips", "doubly_robust")

SCENARIOS: dict[str, dict[str, Any]] = {
    "bernoulli": {
        "arms": [f"arm{i}" for i in range(len(MEANS))], "context_dim": 0,
        "reward_type": pb.REWARD_TYPE_BINARY,
        "logging": pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.3)), "floor": 0.0,
        "candidates": {
            "epsilon_greedy(0.6)": pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.6)),
            "thompson": pb.Policy(thompson=pb.Policy.Thompson()),
        },
    },
    "linear": {
        "arms": [f"arm{i}" for i in range(len(THETA))], "context_dim": THETA.shape[1],
        "reward_type": pb.REWARD_TYPE_CONTINUOUS,
        "logging": pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=1.0)), "floor": 0.05,
        "candidates": {
            "lin_ucb(alpha 0)": pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=0.0)),
            "lin_thompson": pb.Policy(lin_thompson=pb.Policy.LinThompson(v=0.3)),
        },
    },
}


def contexts(gen: np.random.Generator, n: int, d: int) -> np.ndarray:
    if d == 0:
        return np.empty((n, 0))
    return np.hstack([gen.standard_normal((n, d - 1)), np.ones((n, 1))])


def true_means(x: np.ndarray, k: int) -> np.ndarray:
    """mu[i, a]: the expected reward of arm ``a`` for context ``x[i]``."""
    if x.shape[1] == 0:
        return np.tile(MEANS[:k], (len(x), 1))
    return x @ THETA.T


def log_decisions(stub: pb_grpc.DecisionServiceStub, scenario: str, experiment_id: str,
                  seed: int, decisions: int, rounds: int) -> None:
    """Create the experiment and log ``decisions`` decisions with their rewards."""
    s = SCENARIOS[scenario]
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
        experiment_id=experiment_id, arms=[pb.Arm(arm_id=a) for a in s["arms"]],
        policy=s["logging"], context_dim=s["context_dim"], reward_type=s["reward_type"],
        seed=seed, exploration_floor=s["floor"])))
    gen = np.random.default_rng(seed)
    index = {a: i for i, a in enumerate(s["arms"])}
    per_round = decisions // rounds
    for _ in range(rounds):
        x = contexts(gen, per_round, s["context_dim"])
        reply = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
            pb.SelectArmRequest(experiment_id=experiment_id, context=row.tolist())
            for row in x]))
        arms = np.array([index[r.arm_id] for r in reply.responses])
        mu = true_means(x, len(s["arms"]))[np.arange(per_round), arms]
        if s["context_dim"]:
            rewards = mu + NOISE * gen.standard_normal(per_round)
        else:
            rewards = (gen.random(per_round) < mu).astype(float)
        stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=[
            pb.RecordRewardRequest(experiment_id=experiment_id, decision_id=r.decision_id,
                                   reward=float(v))
            for r, v in zip(reply.responses, rewards, strict=True)]))


def candidate_state(experiment, candidate: pb.Policy, seed: int):
    """What EvaluatePolicy computes the candidate's probabilities from, for ``experiment`` (an
    in-process server's ``Experiment``; call on the server's event loop)."""
    from banditd.server.state import evaluation
    from banditd.server.state.policies import resolve_policy

    e = experiment
    policy = pb.Policy()
    policy.CopyFrom(candidate)
    spec = resolve_policy(policy, e.reward_type, e.context_dim, "policy")
    return evaluation.candidate_state(
        spec, e.state, e.spec, e.rewards.astype(float), e.positives.astype(float),
        e.reward_sum.copy(), e.ingested.copy(), e.reward_type, e.version, seed)


StateOf = Callable[[str, pb.Policy, int], Any]  # (experiment id, candidate, seed) -> its state


def true_value(scenario: str, reply: pb.EvaluatePolicyResponse, candidate: pb.Policy,
               state_of: StateOf, experiment_id: str, seed: int) -> float:
    """The candidate's expected reward per decision (see the module docstring)."""
    s = SCENARIOS[scenario]
    if not s["context_dim"]:
        shares = np.array([a.share for a in reply.candidate_shares])
        return float(shares @ MEANS)
    from banditd.server.state import evaluation

    fresh = contexts(np.random.default_rng(10_000 + seed), 20_000, s["context_dim"])
    pi = evaluation.candidate_probabilities(state_of(experiment_id, candidate, seed), fresh)
    return float((pi * true_means(fresh, len(s["arms"]))).sum(axis=1).mean())


def evaluate_run(stub, scenario: str, seed: int, decisions: int, rounds: int,
                 state_of: StateOf, bootstrap: int = 1000) -> list[dict[str, Any]]:
    """One run: log, then evaluate every candidate; one result per candidate."""
    experiment_id = f"ope-{scenario}-{seed}"
    log_decisions(stub, scenario, experiment_id, seed, decisions, rounds)
    out = []
    for name, candidate in SCENARIOS[scenario]["candidates"].items():
        reply = stub.EvaluatePolicy(pb.EvaluatePolicyRequest(
            experiment_id=experiment_id, policy=candidate, num_bootstrap=bootstrap, seed=seed))
        truth = true_value(scenario, reply, candidate, state_of, experiment_id, seed)
        result: dict[str, Any] = {"scenario": scenario, "candidate": name, "seed": seed,
                                  "truth": truth, "decisions": reply.decisions,
                                  "effective_sample_size": reply.effective_sample_size,
                                  "logging_policy": reply.logging_policy.value}
        for estimator in ESTIMATORS:
            e = getattr(reply, estimator)
            result[estimator] = {"value": e.value, "ci": [e.ci_low, e.ci_high],
                                 "covers": e.ci_low <= truth <= e.ci_high}
        out.append(result)
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id=experiment_id))
    return out


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and candidate: mean truth, and per estimator mean estimate, bias, RMSE,
    interval coverage and mean width."""
    rows = []
    keys = dict.fromkeys((r["scenario"], r["candidate"]) for r in results)
    for scenario, candidate in keys:
        mine = [r for r in results if (r["scenario"], r["candidate"]) == (scenario, candidate)]
        truth = np.array([r["truth"] for r in mine])
        row: dict[str, Any] = {"scenario": scenario, "candidate": candidate, "runs": len(mine),
                               "decisions": mine[0]["decisions"], "mean_truth": truth.mean(),
                               "mean_logging_policy": np.mean([r["logging_policy"]
                                                               for r in mine]),
                               "mean_effective_sample_size": np.mean(
                                   [r["effective_sample_size"] for r in mine])}
        for estimator in ESTIMATORS:
            values = np.array([r[estimator]["value"] for r in mine])
            widths = np.array([r[estimator]["ci"][1] - r[estimator]["ci"][0] for r in mine])
            row[estimator] = {
                "mean": values.mean(), "bias": (values - truth).mean(),
                "rmse": float(np.sqrt(((values - truth) ** 2).mean())),
                "coverage": float(np.mean([r[estimator]["covers"] for r in mine])),
                "mean_ci_width": widths.mean()}
        rows.append({k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()})
    return rows


def main() -> None:
    import asyncio

    from benchmarks.in_process import InProcessServer
    from benchmarks.local_server import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--decisions", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--out", default="benchmarks/results/ope_accuracy.json")
    args = ap.parse_args()
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="banditd-ope-") as data, \
            InProcessServer.on_loopback(Path(data), durability="snapshot",
                            max_batch_size=max(10_000, args.decisions)) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        assert srv.app is not None
        registry = srv.app.state.experiments

        def state_of(experiment_id: str, candidate: pb.Policy, seed: int):
            async def on_loop():
                return candidate_state(registry.get(experiment_id), candidate, seed)

            return asyncio.run_coroutine_threadsafe(on_loop(), srv.loop).result(60)

        stub = pb_grpc.DecisionServiceStub(ch)
        for scenario in args.scenarios.split(","):
            for seed in range(args.runs):
                results += evaluate_run(stub, scenario, seed, args.decisions, args.rounds,
                                        state_of, args.bootstrap)
    summary = summarise(results)
    for row in summary:
        print(f"{row['scenario']:9} {row['candidate']:20} truth {row['mean_truth']:.4f} "
              + "  ".join(f"{e} {row[e]['mean']:.4f} (cov {row[e]['coverage']:.2f}, "
                          f"w {row[e]['mean_ci_width']:.3f})" for e in ESTIMATORS))
    out = {"benchmark": "ope_accuracy", "machine": machine(), "runs": args.runs,
           "decisions": args.decisions, "rounds": args.rounds, "bootstrap": args.bootstrap,
           "seconds": time.perf_counter() - started, "summary": summary, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
