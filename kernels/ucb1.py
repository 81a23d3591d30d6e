"""UCB1: score = mean + c * sqrt(ln N / n), N = sum of n over all arms; untried arms first.

Untried arms (``n == 0``) score +inf, so ``_finalize`` tries them first in random order. When
discounting makes ``N < 1``, ``ln N`` is clamped at 0. The policy is deterministic given the
state, so probs = ``1 / ties`` for the arms sharing the maximum score and 0 otherwise (exact).
Rewards are any real numbers (their sum per arm is kept).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .common import (
    _finalize,
    _max_tie_probs,
    finalize_reference,
    max_tie_probs_reference,
    policy_api,
)
from .config import JIT

NAME = "ucb1"
PARAM_NAMES = ("c",)  # exploration weight of the confidence width
EXAMPLE_PARAMS = (0.7,)
CONTEXTUAL = False
ESTIMATED_PROPENSITY = False
REWARDS = "real"


class State(NamedTuple):
    counts: np.ndarray  # [K] rewards learned (discounted)
    reward_sum: np.ndarray  # [K] their sum


CACHE_FIELDS: tuple[str, ...] = ()  # no derived caches in the state


def new_state(*, num_arms: int, dim: int, params: np.ndarray, draws: int = 32) -> State:
    """Zero counts and reward sums (``dim`` and ``draws`` are unused)."""
    return State(np.zeros(num_arms), np.zeros(num_arms))


@njit(**JIT)
def _select(counts, reward_sum, params, eligible, selections, floor, burn_in, rng, out):
    m = eligible.shape[0]
    c = params[0]
    total = 0.0
    for i in range(counts.shape[0]):
        total += counts[i]
    log_total = math.log(total) if total > 1.0 else 0.0
    scores = np.empty(m)
    probs = np.empty(m)
    for j in range(m):
        arm = eligible[j]
        n = counts[arm]
        if n > 0.0:
            scores[j] = reward_sum[arm] / n + c * math.sqrt(log_total / n)
        else:
            scores[j] = np.inf
    _max_tie_probs(scores, probs)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


@njit(**JIT)
def _update(counts, reward_sum, arm, reward, discount):
    if discount < 1.0:
        for i in range(counts.shape[0]):
            counts[i] *= discount
            reward_sum[i] *= discount
    counts[arm] += 1.0
    reward_sum[arm] += reward


def select_reference(*, state: State, params, eligible, context, t, selections, floor, burn_in,
                     draws, source, out) -> float:
    counts, reward_sum = state.counts, state.reward_sum
    total = counts.sum()
    log_total = math.log(total) if total > 1.0 else 0.0
    n = counts[eligible]
    tried = n > 0.0
    scores = np.full(len(eligible), np.inf)
    nt = n[tried]
    scores[tried] = reward_sum[eligible][tried] / nt + params[0] * np.sqrt(log_total / nt)
    probs = max_tie_probs_reference(scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def update_reference(*, state: State, params, arm, reward, context, discount) -> None:
    counts, reward_sum = state.counts, state.reward_sum
    if discount < 1.0:
        counts *= discount
        reward_sum *= discount
    counts[arm] += 1.0
    reward_sum[arm] += reward


def add_aggregate(*, state: State, arm: int, trials: float, successes: float,
                  total: float) -> None:
    """Add (or remove, negative) ``trials`` events whose rewards sum to ``total``."""
    state.counts[arm] += trials
    state.reward_sum[arm] += total


def summary(*, state: State, params, binary: bool) -> dict[str, np.ndarray]:
    """The policy's score per arm; with binary rewards also a Beta(1 + sum, 1 + n - sum)
    posterior (uniform prior) so that allocation and probability-best are defined."""
    n, total = state.counts, state.reward_sum
    return _count_summary(n, total, _scores_reference(n, total, params), binary)


def _count_summary(n, total, score, binary: bool) -> dict[str, np.ndarray]:
    out = {"score": score}
    if binary:
        out["posterior_alpha"] = 1.0 + total
        out["posterior_beta"] = 1.0 + n - total
    return out


def _scores_reference(n: np.ndarray, total: np.ndarray, params: np.ndarray) -> np.ndarray:
    """mean + c * sqrt(ln N / n); +inf for untried arms (as :func:`_select`)."""
    big_n = n.sum()
    log_total = math.log(big_n) if big_n > 1.0 else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = total / n + params[0] * np.sqrt(log_total / n)
    return np.where(n > 0, score, np.inf)


# select, update, their batch and bound forms and the batch references: the same for every
# policy, written once in kernels.common and generated from State and the functions above.
(select, update, select_batch, update_batch, bind_select, bind_update, select_batch_reference,
 update_batch_reference, _select_bound, _select_batch, _update_batch) = policy_api(
    State, _select, _update, select_reference, update_reference)
