"""UCB1: score = mean + c * sqrt(ln N / n), N = sum of n over all arms; untried arms first.

Untried arms (``n == 0``) score +inf, so ``_finalize`` tries them first in random order. When
discounting makes ``N < 1``, ``ln N`` is clamped at 0. The policy is deterministic given the
state, so probs = ``1 / ties`` for the arms sharing the maximum score and 0 otherwise (exact).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.experimental import structref

from .common import (
    _count_selections,
    _finalize,
    _max_tie_probs,
    batch_select_reference,
    batch_update_reference,
    compiled,
    finalize_reference,
    max_tie_probs_reference,
)
from .config import JIT, JIT_GIL

NAME = "ucb1"
PARAM_NAMES = ("c",)
CONTEXTUAL = False
ESTIMATED_PROPENSITY = False
CACHE_ARRAYS: tuple[int, ...] = ()  # no derived caches in the state


def new_state(
    num_arms: int, dim: int, params: np.ndarray, draws: int = 32
) -> tuple[np.ndarray, ...]:
    """Zero counts and reward sums (``dim`` and ``draws`` are unused)."""
    return (np.zeros(num_arms), np.zeros(num_arms))


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
def _select_batch(counts, reward_sum, params, eligible, selections, floor, burn_in, rng, out,
                  propensity):
    for i in range(out.shape[0]):
        propensity[i] = _select(counts, reward_sum, params, eligible, selections, floor, burn_in,
                                rng, out[i])
        _count_selections(selections, out[i])


@njit(**JIT)
def _update(counts, reward_sum, arm, reward, discount):
    if discount < 1.0:
        for i in range(counts.shape[0]):
            counts[i] *= discount
            reward_sum[i] *= discount
    counts[arm] += 1.0
    reward_sum[arm] += reward


@njit(**JIT)
def _update_batch(counts, reward_sum, arms, rewards, discount):
    for i in range(arms.shape[0]):
        _update(counts, reward_sum, arms[i], rewards[i], discount)


@structref.register
class _BoundType(types.StructRef):
    """:func:`bind_select`'s arrays and scalars as one kernel argument."""


class _Bound(structref.StructRefProxy):
    def __new__(cls, *fields):
        return _new_bound(*fields)  # compiled once, then loaded from the cache


structref.define_proxy(_Bound, _BoundType, ["counts", "reward_sum", "params", "selections", "floor",
                                            "burn_in", "rng"])


@njit(**JIT)
def _new_bound(counts, reward_sum, params, selections, floor, burn_in, rng):
    return _Bound(counts, reward_sum, params, selections, floor, burn_in, rng)


@njit(**JIT_GIL)
def _select_bound(b, eligible, out):
    return _select(b.counts, b.reward_sum, b.params, eligible, b.selections, b.floor, b.burn_in,
                   b.rng, out)


def bind_select(state, params, selections, floor, burn_in, draws, rng, eligible, context, t, out):
    """:func:`select` for this state, these scalars and per-call arguments of the types of
    the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible, context, t, out)``
    returns what ``select`` would, the state's arrays and scalars passed as one structure
    and the kernel typed once (:func:`kernels.common.compiled`; the server's hot path)."""
    bound = _Bound(state[0], state[1], params, selections, floor, burn_in, rng)
    kernel = compiled(_select_bound, bound, eligible, out)

    def call(eligible, context, t, out):
        return kernel(bound, eligible, out)

    return call


def select(state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    Scalars are passed through as given (the server's types: ``floor`` float, ``burn_in`` int).
    """
    return _select(state[0], state[1], params, eligible, selections, floor, burn_in, rng, out)


def update(state, params, arm, reward, context, discount) -> None:
    _update(state[0], state[1], arm, reward, discount)


def select_batch(state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity) -> None:
    """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm positions, best first)
    and ``propensity[i]`` for ``contexts[i]``, each decision counted in ``selections`` before the
    next: the same decisions, draw for draw, as :func:`select` row by row with the slate counted
    in between (see :mod:`kernels.thompson`)."""
    _select_batch(state[0], state[1], params, eligible, selections, floor, burn_in, rng, out,
                  propensity)


def update_batch(state, params, arms, rewards, contexts, discount) -> None:
    """Apply :func:`update` for each row (``arms[i]``, ``rewards[i]``, ``contexts[i]``) in order."""
    _update_batch(state[0], state[1], arms, rewards, discount)


def select_reference(
    state, params, eligible, context, t, selections, floor, burn_in, draws, source, out
) -> float:
    counts, reward_sum = state
    total = counts.sum()
    log_total = math.log(total) if total > 1.0 else 0.0
    n = counts[eligible]
    tried = n > 0.0
    scores = np.full(len(eligible), np.inf)
    nt = n[tried]
    scores[tried] = reward_sum[eligible][tried] / nt + params[0] * np.sqrt(log_total / nt)
    probs = max_tie_probs_reference(scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def update_reference(state, params, arm, reward, context, discount) -> None:
    counts, reward_sum = state
    if discount < 1.0:
        counts *= discount
        reward_sum *= discount
    counts[arm] += 1.0
    reward_sum[arm] += reward


def select_batch_reference(state, params, eligible, contexts, t, selections, floor, burn_in,
                           draws, source, out, propensity) -> None:
    batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                           floor, burn_in, draws, source, out, propensity)


def update_batch_reference(state, params, arms, rewards, contexts, discount) -> None:
    batch_update_reference(update_reference, state, params, arms, rewards, contexts, discount)


def add_aggregate(state, arm: int, trials: float, successes: float, total: float) -> None:
    """Add (or remove, negative) ``trials`` events whose rewards sum to ``total``."""
    state[0][arm] += trials
    state[1][arm] += total


def revalue(state, params, arm: int, old: float, new: float, context) -> None:
    """One reward ``old`` that ``arm`` learned becomes ``new`` (a late reward replacing a
    default): the reward sum is that of having learned ``new`` instead (the same terms, added
    in another order). Undiscounted experiments only."""
    state[1][arm] += new - old


def retract(state, params, arm: int, reward: float, context) -> None:
    """Remove one learned reward of ``arm``: the inverse of :func:`update` without discount."""
    state[0][arm] -= 1.0
    state[1][arm] -= reward


def summary(state, params, binary: bool) -> dict[str, np.ndarray]:
    """The policy's score per arm; with binary rewards also a Beta(1 + sum, 1 + n - sum)
    posterior (uniform prior) so that allocation and probability-best are defined."""
    n, total = state
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
