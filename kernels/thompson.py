"""Beta–Bernoulli Thompson sampling (binary rewards: click / no click).

State (:class:`State`, first axis = arm, all float64): ``successes``/``failures`` are the
learned counts (float so that discounting can shrink them). ``mc[arm]`` caches ``R`` posterior
draws of the arm for the Monte-Carlo propensity and ``mc_valid[arm]`` is 1.0 while they are
i.i.d. draws from the arm's *current* posterior: ``update`` clears it for the updated arm (for
every arm when ``discount < 1``, since every posterior then changes), and new arms start at 0.
``R`` is fixed by ``new_state(draws=...)``; ``select`` ignores its ``draws`` argument. Rewards
are 0/1.

Select, random-number order: when more than one arm is eligible, every eligible arm whose
column is not valid (eligible order) gets ``R`` fresh ``Beta(alpha + s, beta + f)`` draws (in
column order) and is marked valid. Then the decision round: one Beta draw per eligible arm
(eligible order) gives the scores. ``probs[j]`` = (cached rounds in which ``j`` is the first
argmax among the eligible arms + ``j``'s share of the decision round's maximum) / ``(R + 1)``
(see :mod:`kernels.common`): unbiased, and the chosen arm's propensity is >= ``1/(R+1)``. With a
single eligible arm probs = 1 and no column is touched. Then ``_finalize``.

So a decision costs one Beta draw per eligible arm plus ``R·m`` comparisons, and ``R`` draws more
per arm updated since its column was last drawn.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .common import (
    _finalize,
    _round_probs,
    finalize_reference,
    mc_cache,
    policy_api,
    round_probs_reference,
)
from .config import JIT
from .rng import _beta

NAME = "thompson"
PARAM_NAMES = ("alpha", "beta")  # the Beta prior's pseudo-successes and pseudo-failures
EXAMPLE_PARAMS = (1.0, 2.0)
CONTEXTUAL = False
ESTIMATED_PROPENSITY = True
REWARDS = "binary"


class State(NamedTuple):
    successes: np.ndarray  # [K]
    failures: np.ndarray  # [K]
    mc: np.ndarray  # [K, R] cached Monte-Carlo rounds
    mc_valid: np.ndarray  # [K] 1.0 while mc[arm] is drawn from arm's current posterior


# Only cache derived values: snapshots leave them out, a restored state recomputes them lazily.
CACHE_FIELDS = ("mc", "mc_valid")


def new_state(*, num_arms: int, dim: int, params: np.ndarray, draws: int = 32) -> State:
    """Zero counts; ``draws`` (R >= 1) Monte-Carlo rounds cached per arm, all invalid."""
    return State(np.zeros(num_arms), np.zeros(num_arms), *mc_cache(num_arms, draws))


@njit(**JIT)
def _select(successes, failures, mc, mc_valid, params, eligible, selections, floor, burn_in,
            rng, out):
    m = eligible.shape[0]
    rounds = mc.shape[1]
    alpha = params[0]
    beta = params[1]
    buf = np.empty(2 * m + rounds)
    scores = buf[:m]
    probs = buf[m:2 * m]
    if m > 1:
        for j in range(m):
            arm = eligible[j]
            if mc_valid[arm] != 1.0:
                a = alpha + successes[arm]
                b = beta + failures[arm]
                for r in range(rounds):
                    mc[arm, r] = _beta(rng, a, b)
                mc_valid[arm] = 1.0
    for j in range(m):
        arm = eligible[j]
        scores[j] = _beta(rng, alpha + successes[arm], beta + failures[arm])
    if m == 1:
        probs[0] = 1.0
    else:
        best_j = np.empty(rounds, dtype=np.int64)
        _round_probs(mc, eligible, scores, buf[2 * m:], best_j, probs)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


@njit(**JIT)
def _update(successes, failures, mc_valid, arm, reward, discount):
    if discount < 1.0:
        for i in range(successes.shape[0]):
            successes[i] *= discount
            failures[i] *= discount
            mc_valid[i] = 0.0
    successes[arm] += reward
    failures[arm] += 1.0 - reward
    mc_valid[arm] = 0.0


def select_reference(*, state: State, params, eligible, context, t, selections, floor, burn_in,
                     draws, source, out) -> float:
    a = params[0] + state.successes[eligible]
    b = params[1] + state.failures[eligible]
    mc, valid = state.mc, state.mc_valid
    m = len(eligible)
    if m > 1:
        stale = valid[eligible] != 1.0
        if stale.any():
            shp = (int(stale.sum()), mc.shape[1])
            rows = eligible[stale]
            mc[rows] = source.betas(np.broadcast_to(a[stale, None], shp),
                                    np.broadcast_to(b[stale, None], shp))
            valid[rows] = 1.0
    scores = source.betas(a, b)
    probs = np.ones(1) if m == 1 else round_probs_reference(mc[eligible].T, scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def update_reference(*, state: State, params, arm, reward, context, discount) -> None:
    s, f, valid = state.successes, state.failures, state.mc_valid
    if discount < 1.0:
        s *= discount
        f *= discount
        valid[:] = 0.0
    s[arm] += reward
    f[arm] += 1.0 - reward
    valid[arm] = 0.0


def add_aggregate(*, state: State, arm: int, trials: float, successes: float,
                  total: float) -> None:
    """Add (or, with negative values, remove) aggregated counts of ``arm`` (IngestMetrics)."""
    state.successes[arm] += successes
    state.failures[arm] += trials - successes
    state.mc_valid[arm] = 0.0


def summary(*, state: State, params, binary: bool) -> dict[str, np.ndarray]:
    """Beta posterior of each arm's success rate and its mean (the arm's score)."""
    a = params[0] + state.successes
    b = params[1] + state.failures
    return {"posterior_alpha": a, "posterior_beta": b, "score": a / (a + b)}


# select, update, their batch and bound forms and the batch references: the same for every
# policy, written once in kernels.common and generated from State and the functions above.
(select, update, select_batch, update_batch, bind_select, bind_update, select_batch_reference,
 update_batch_reference, _select_bound, _select_batch, _update_batch) = policy_api(
    State, _select, _update, select_reference, update_reference)
