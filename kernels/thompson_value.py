"""Thompson sampling for value experiments: conversion rate × revenue per conversion (CR×RPC).

A reward is the revenue of the event (0 = no conversion). Model per arm:

* CR ~ ``Beta(alpha + conv, beta + trials - conv)``;
* revenue per conversion ~ Exponential with rate λ, λ ~ ``Gamma(shape=a0 + conv,
  rate=b0 + revenue_sum)`` with ``a0 = strength + 1`` and ``b0 = strength * prior_mean`` (so the
  prior mean of 1/λ is ``prior_mean``, worth ``strength`` pseudo-conversions);
* sampled RPC = 1/λ = ``(b0 + revenue_sum) / gamma(a0 + conv)``; score = CR draw × RPC draw.

Per arm and draw the order is the beta (its two gammas) then the gamma for λ. State
(:class:`State`, first axis = arm, float64; ``revenue_sq`` is kept for statistics).
``mc``/``mc_valid`` cache ``R`` sampled values per arm for the Monte-Carlo propensity, and
select/update/random-number order are exactly those of :mod:`kernels.thompson` (stale columns
of eligible arms redrawn first, then the decision round; ``select`` ignores ``draws``).
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
from .rng import _beta, _gamma

NAME = "thompson_value"
# Beta prior of the conversion rate; prior mean revenue per conversion and its weight in
# pseudo-conversions
PARAM_NAMES = ("alpha", "beta", "value_prior_mean", "value_prior_strength")
EXAMPLE_PARAMS = (1.0, 1.0, 10.0, 2.0)
CONTEXTUAL = False
ESTIMATED_PROPENSITY = True
REWARDS = "value"  # the event's revenue in currency units, >= 0 (0 = no conversion)


class State(NamedTuple):
    trials: np.ndarray  # [K] events learned
    conversions: np.ndarray  # [K] events with revenue > 0
    revenue_sum: np.ndarray  # [K]
    revenue_sq: np.ndarray  # [K] sum of squared revenues
    mc: np.ndarray  # [K, R] cached Monte-Carlo rounds
    mc_valid: np.ndarray  # [K] 1.0 while mc[arm] is drawn from arm's current posterior


# Only cache derived values: snapshots leave them out, a restored state recomputes them lazily.
CACHE_FIELDS = ("mc", "mc_valid")


def new_state(*, num_arms: int, dim: int, params: np.ndarray, draws: int = 32) -> State:
    """Zero statistics; ``draws`` (R >= 1) Monte-Carlo rounds cached per arm, all invalid."""
    return State(np.zeros(num_arms), np.zeros(num_arms), np.zeros(num_arms), np.zeros(num_arms),
                 *mc_cache(num_arms, draws))


@njit(inline="always", **JIT)
def _draw(trials, conversions, revenue_sum, arm, alpha, beta, a0, b0, rng):
    c = conversions[arm]
    cr = _beta(rng, alpha + c, beta + trials[arm] - c)
    g = _gamma(rng, a0 + c)
    return cr * (b0 + revenue_sum[arm]) / g


@njit(**JIT)
def _select(trials, conversions, revenue_sum, mc, mc_valid, params, eligible, selections, floor,
            burn_in, rng, out):
    m = eligible.shape[0]
    rounds = mc.shape[1]
    alpha = params[0]
    beta = params[1]
    a0 = params[3] + 1.0
    b0 = params[3] * params[2]
    buf = np.empty(2 * m + rounds)
    scores = buf[:m]
    probs = buf[m:2 * m]
    if m > 1:
        for j in range(m):
            arm = eligible[j]
            if mc_valid[arm] != 1.0:
                for r in range(rounds):
                    mc[arm, r] = _draw(trials, conversions, revenue_sum, arm, alpha, beta, a0, b0,
                                       rng)
                mc_valid[arm] = 1.0
    for j in range(m):
        scores[j] = _draw(trials, conversions, revenue_sum, eligible[j], alpha, beta, a0, b0, rng)
    if m == 1:
        probs[0] = 1.0
    else:
        best_j = np.empty(rounds, dtype=np.int64)
        _round_probs(mc, eligible, scores, buf[2 * m:], best_j, probs)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


@njit(**JIT)
def _update(trials, conversions, revenue_sum, revenue_sq, mc_valid, arm, reward, discount):
    if discount < 1.0:
        for i in range(trials.shape[0]):
            trials[i] *= discount
            conversions[i] *= discount
            revenue_sum[i] *= discount
            revenue_sq[i] *= discount
            mc_valid[i] = 0.0
    trials[arm] += 1.0
    if reward > 0.0:
        conversions[arm] += 1.0
        revenue_sum[arm] += reward
        revenue_sq[arm] += reward * reward
    mc_valid[arm] = 0.0


def select_reference(*, state: State, params, eligible, context, t, selections, floor, burn_in,
                     draws, source, out) -> float:
    mc, valid = state.mc, state.mc_valid
    alpha, beta, prior_mean, strength = (float(p) for p in params)
    a0, b0 = strength + 1.0, strength * prior_mean
    c = state.conversions[eligible]
    a = alpha + c
    b = beta + state.trials[eligible] - c
    k = a0 + c
    rate = b0 + state.revenue_sum[eligible]
    m = len(eligible)
    if m > 1:
        stale = valid[eligible] != 1.0
        if stale.any():
            shp = (int(stale.sum()), mc.shape[1])
            rows = eligible[stale]
            cr, g = source.beta_gammas(np.broadcast_to(a[stale, None], shp),
                                       np.broadcast_to(b[stale, None], shp),
                                       np.broadcast_to(k[stale, None], shp))
            mc[rows] = cr * rate[stale, None] / g
            valid[rows] = 1.0
    cr, g = source.beta_gammas(a, b, k)
    scores = cr * rate / g
    probs = np.ones(1) if m == 1 else round_probs_reference(mc[eligible].T, scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def update_reference(*, state: State, params, arm, reward, context, discount) -> None:
    statistics = (state.trials, state.conversions, state.revenue_sum, state.revenue_sq)
    if discount < 1.0:
        for a in statistics:
            a *= discount
        state.mc_valid[:] = 0.0
    trials, conv, rev, sq = statistics
    trials[arm] += 1.0
    if reward > 0.0:
        conv[arm] += 1.0
        rev[arm] += reward
        sq[arm] += reward * reward
    state.mc_valid[arm] = 0.0


def add_aggregate(*, state: State, arm: int, trials: float, successes: float,
                  total: float) -> None:
    """Add (or remove, negative) aggregated trials, conversions and revenue ``total``."""
    state.trials[arm] += trials
    state.conversions[arm] += successes
    state.revenue_sum[arm] += total
    state.mc_valid[arm] = 0.0


def summary(*, state: State, params, binary: bool) -> dict[str, np.ndarray]:
    """Posteriors: CR ~ Beta(alpha, beta); revenue per conversion = rate / Gamma(shape); score =
    posterior mean CR x posterior mean revenue per conversion."""
    a = params[0] + state.conversions
    b = params[1] + state.trials - state.conversions
    shape = params[3] + 1.0 + state.conversions
    rate = params[3] * params[2] + state.revenue_sum
    return {"posterior_alpha": a, "posterior_beta": b, "value_posterior_shape": shape,
            "value_posterior_rate": rate, "score": a / (a + b) * rate / (shape - 1.0)}


# select, update, their batch and bound forms and the batch references: the same for every
# policy, written once in kernels.common and generated from State and the functions above.
(select, update, select_batch, update_batch, bind_select, bind_update, select_batch_reference,
 update_batch_reference, _select_bound, _select_batch, _update_batch) = policy_api(
    State, _select, _update, select_reference, update_reference)
