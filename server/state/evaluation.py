"""Off-policy evaluation: what a candidate policy's reward would have been on an experiment's
logged decisions (EvaluatePolicy).

The data are the experiment's settled decisions (rewarded, or settled with the default reward):
for decision ``i`` the context ``x_i``, the logged arm ``a_i`` (the first arm of a slate), its
logged propensity ``p_i`` and the reward ``r_i`` of that arm (a reward that named another arm of
the slate leaves the first arm with the experiment's default reward, as an ad server that reports
events only would have it). The candidate's probability of each arm on each logged context,
``pi[i, a]``, comes from :func:`candidate_probabilities`; ``w_i = pi[i, a_i] / p_i``.

* IPS: ``mean(w_i r_i)``. Unbiased when every ``p_i > 0`` is the true probability the logging
  policy had (exact for epsilon-greedy, UCB and LinUCB; a Monte-Carlo estimate for the Thompson
  policies, see :mod:`kernels.common`) and the candidate only picks arms the logging policy
  could pick (an exploration floor makes every ``p > 0``).
* SNIPS: ``sum(w_i r_i) / sum(w_i)``: slightly biased, much less variance.
* Doubly robust: ``mean(sum_a pi[i, a] rhat(x_i, a) + w_i (r_i - rhat(x_i, a_i)))`` with a reward
  model ``rhat``: per arm, ridge regression of the reward on the context (and an intercept), or
  the arm's mean reward without context (the overall mean for an arm never logged). Unbiased if
  either the propensities or the model are right.

Intervals: 95% percentile bootstrap over decisions (``B`` resamples with replacement, seeded),
with the reward model kept fixed. Effective sample size: ``sum(w)^2 / sum(w^2)``.

:func:`estimate` is the whole computation in plain NumPy; the tests check it against the
textbook formulas written out with loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.allocation import prob_best_beta, prob_best_value
from banditd.kernels.rng import seed_state
from banditd.server.state.policies import PolicySpec

THOMPSON_DRAWS = 10_000  # Monte-Carlo draws of a Thompson candidate's P(arm is best)
LIN_THOMPSON_DRAWS = 256  # ... of a linear Thompson candidate, per logged context
RIDGE = 1.0  # the reward model's regularisation


@dataclass
class Estimate:
    """A point estimate and its 95% bootstrap interval."""

    value: float
    low: float
    high: float


@dataclass
class Evaluation:
    ips: Estimate
    snips: Estimate
    dr: Estimate
    logging: Estimate
    effective_sample_size: float
    max_weight: float
    shares: np.ndarray  # mean candidate probability per arm


def reward_model(arms: np.ndarray, rewards: np.ndarray, contexts: np.ndarray,
                 num_arms: int, ridge: float = RIDGE) -> np.ndarray:
    """``rhat[i, a]`` for every decision ``i`` and arm ``a``: per arm a ridge regression of the
    reward on ``[context, 1]`` (``contexts`` is ``(n, d)``), or the arm's mean reward when
    ``d == 0``; arms without data predict the overall mean."""
    n, d = contexts.shape
    overall = float(rewards.mean()) if n else 0.0
    out = np.full((n, num_arms), overall)
    if d == 0:
        counts = np.bincount(arms, minlength=num_arms)
        sums = np.bincount(arms, weights=rewards, minlength=num_arms)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        out[:] = means
        return out
    x = np.hstack([contexts, np.ones((n, 1))])
    for a in range(num_arms):
        mine = arms == a
        if not mine.any():
            continue
        xa = x[mine]
        theta = np.linalg.solve(ridge * np.eye(d + 1) + xa.T @ xa, xa.T @ rewards[mine])
        out[:, a] = x @ theta
    return out


def estimate(pi: np.ndarray, arms: np.ndarray, propensities: np.ndarray, rewards: np.ndarray,
             rhat: np.ndarray, num_bootstrap: int, seed: int) -> Evaluation:
    """IPS, SNIPS, DR and the logging policy's value with 95% bootstrap intervals (see the
    module docstring). ``pi`` and ``rhat`` are ``(n, K)``; ``arms`` the logged arms,
    ``propensities`` their logged probabilities (> 0), ``rewards`` their rewards."""
    n = len(arms)
    rows = np.arange(n)
    w = pi[rows, arms] / propensities
    wr = w * rewards
    dr = (pi * rhat).sum(axis=1) + w * (rewards - rhat[rows, arms])
    terms = np.stack([wr, w, dr, rewards])  # per decision: what every estimate sums
    point = terms.mean(axis=1)
    boot = np.empty((num_bootstrap, 4))
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // max(n, 1))  # resamples at once: bounded memory
    for start in range(0, num_bootstrap, chunk):
        stop = min(num_bootstrap, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = terms[:, idx].mean(axis=2).T
    snips_boot = boot[:, 0] / boot[:, 1]

    def interval(value: float, samples: np.ndarray) -> Estimate:
        low, high = np.percentile(samples, [2.5, 97.5])
        return Estimate(float(value), float(low), float(high))

    total = w.sum()
    return Evaluation(
        ips=interval(point[0], boot[:, 0]),
        snips=interval(wr.sum() / total if total > 0 else 0.0,
                       snips_boot[np.isfinite(snips_boot)]),
        dr=interval(point[2], boot[:, 2]),
        logging=interval(point[3], boot[:, 3]),
        effective_sample_size=float(total * total / (w * w).sum()) if total > 0 else 0.0,
        max_weight=float(w.max()) if n else 0.0,
        shares=pi.mean(axis=0),
    )


@dataclass
class CandidateState:
    """What a candidate policy's probabilities are computed from (copies, so the computation
    can run off the event loop): its spec, and the experiment's learned statistics."""

    spec: PolicySpec
    reward_type: int
    counts: np.ndarray  # (K, 3): trials, successes, total reward per arm (live + ingested)
    linear: tuple[np.ndarray, np.ndarray] | None  # (A^-1, b) per arm, at the candidate's ridge
    version: int  # the experiment's model version (epsilon decay)
    seed: int


def candidate_state(spec: PolicySpec, experiment_state: tuple, experiment_spec: PolicySpec,
                    rewards: np.ndarray, positives: np.ndarray, reward_sum: np.ndarray,
                    ingested: np.ndarray, reward_type: int, version: int,
                    seed: int) -> CandidateState:
    """The candidate's statistics: the experiment's per-arm counts (live rewards plus ingested
    metrics, undiscounted) for a non-contextual candidate, its A^-1 and b (turned to the
    candidate's ridge) for a linear one."""
    value_rewards = reward_type != pb.REWARD_TYPE_BINARY
    total = reward_sum + (ingested[:, 2] if value_rewards else ingested[:, 1])
    counts = np.stack([rewards + ingested[:, 0], positives + ingested[:, 1], total], axis=1)
    linear = None
    if spec.contextual:
        a_inv, b = experiment_state[0].copy(), experiment_state[1].copy()
        shift = float(spec.params[1]) - float(experiment_spec.params[1])  # ridge difference
        if shift != 0.0:
            d = a_inv.shape[1]
            a_inv = np.linalg.inv(np.linalg.inv(a_inv) + shift * np.eye(d))
        linear = (a_inv, b)
    return CandidateState(spec, reward_type, counts.astype(np.float64), linear, version, seed)


def candidate_probabilities(c: CandidateState, contexts: np.ndarray) -> np.ndarray:
    """``pi[i, a]``: the probability that the candidate, as a fixed policy with the statistics
    of ``c``, chooses arm ``a`` for context ``contexts[i]`` among all arms (no exploration floor,
    no burn-in). Exact for ucb1, epsilon_greedy and lin_ucb (ties shared equally); Monte-Carlo
    for the Thompson policies (seeded)."""
    n = len(contexts)
    kind = c.spec.kind
    params = c.spec.params
    k = len(c.counts)
    if c.linear is not None:
        a_inv, b = c.linear
        theta = np.einsum("kde,ke->kd", a_inv, b)
        mu = contexts @ theta.T  # (n, K)
        width = np.sqrt(np.maximum(np.einsum("nd,kde,ne->nk", contexts, a_inv, contexts), 0.0))
        if kind == "lin_ucb":
            return _argmax_shares(mu + params[0] * width)
        return _gaussian_best(mu, params[0] * width, LIN_THOMPSON_DRAWS, c.seed)
    kernel = c.spec.kernel
    state = kernel.new_state(num_arms=k, dim=0, params=params, draws=1)
    for arm in range(k):
        trials, successes, total = c.counts[arm]
        kernel.add_aggregate(state=state, arm=arm, trials=trials, successes=successes,
                             total=total)
    binary = c.reward_type == pb.REWARD_TYPE_BINARY
    post = kernel.summary(state=state, params=params, binary=binary)
    if kind == "thompson":
        rng = seed_state(c.seed)
        if "value_posterior_shape" in post:
            probs = prob_best_value(post["posterior_alpha"], post["posterior_beta"],
                                    post["value_posterior_shape"], post["value_posterior_rate"],
                                    THOMPSON_DRAWS, rng)
        else:
            probs = prob_best_beta(post["posterior_alpha"], post["posterior_beta"],
                                   THOMPSON_DRAWS, rng)
        return np.tile(np.asarray(probs, dtype=np.float64), (n, 1))
    greedy = _argmax_shares(np.asarray(post["score"], dtype=np.float64)[None, :])[0]
    if kind == "epsilon_greedy":
        eps = params[0] / (1.0 + params[1] * c.version)
        greedy = eps / k + (1.0 - eps) * greedy
    return np.tile(greedy, (n, 1))


def _argmax_shares(scores: np.ndarray) -> np.ndarray:
    """Per row: 1/ties on the arms sharing the maximum score, 0 elsewhere."""
    best = scores == scores.max(axis=1, keepdims=True)
    return best / best.sum(axis=1, keepdims=True)


def _gaussian_best(mean: np.ndarray, sd: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Per row: the Monte-Carlo probability that each arm's N(mean, sd^2) draw is the largest."""
    n, k = mean.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n, k))
    chunk = max(1, 2_000_000 // (k * draws))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        z = rng.standard_normal((stop - start, draws, k))
        best = np.argmax(mean[start:stop, None, :] + sd[start:stop, None, :] * z, axis=2)
        out[start:stop] = np.stack([np.bincount(row, minlength=k) for row in best]) / draws
    return out
