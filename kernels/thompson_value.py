"""Thompson sampling for value experiments: conversion rate × revenue per conversion (CR×RPC).

A reward is the revenue of the event (0 = no conversion). Model per arm:

* CR ~ ``Beta(alpha + conv, beta + trials - conv)``;
* revenue per conversion ~ Exponential with rate λ, λ ~ ``Gamma(shape=a0 + conv,
  rate=b0 + revenue_sum)`` with ``a0 = strength + 1`` and ``b0 = strength * prior_mean`` (so the
  prior mean of 1/λ is ``prior_mean``, worth ``strength`` pseudo-conversions);
* sampled RPC = 1/λ = ``(b0 + revenue_sum) / gamma(a0 + conv)``; score = CR draw × RPC draw.

Per arm and draw the order is the beta (its two gammas) then the gamma for λ. State (first axis
= arm, float64): ``(trials, conversions, revenue_sum, revenue_sq, mc[K, R], mc_valid[K])``
(``revenue_sq`` is kept for statistics). ``mc``/``mc_valid`` cache ``R`` sampled values per arm
for the Monte-Carlo propensity, and select/update/random-number order are exactly those of
:mod:`kernels.thompson` (stale columns of eligible arms redrawn first, then the decision round;
``select`` ignores ``draws``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.experimental import structref

from .common import (
    _count_selections,
    _finalize,
    _round_probs,
    batch_select_reference,
    batch_update_reference,
    compiled,
    finalize_reference,
    mc_cache,
    round_probs_reference,
)
from .config import JIT, JIT_GIL
from .rng import _beta, _gamma

NAME = "thompson_value"
PARAM_NAMES = ("alpha", "beta", "value_prior_mean", "value_prior_strength")
CONTEXTUAL = False
ESTIMATED_PROPENSITY = True
# State arrays that only cache derived values (Monte-Carlo rounds and their validity flags):
# snapshots leave them out and a restored state recomputes them lazily.
CACHE_ARRAYS = (4, 5)


def new_state(
    num_arms: int, dim: int, params: np.ndarray, draws: int = 32
) -> tuple[np.ndarray, ...]:
    """Zero statistics; ``draws`` (R >= 1) Monte-Carlo rounds cached per arm, all invalid."""
    return (*(np.zeros(num_arms) for _ in range(4)), *mc_cache(num_arms, draws))


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
def _select_batch(trials, conversions, revenue_sum, mc, mc_valid, params, eligible, selections,
                  floor, burn_in, rng, out, propensity):
    for i in range(out.shape[0]):
        propensity[i] = _select(trials, conversions, revenue_sum, mc, mc_valid, params, eligible,
                                selections, floor, burn_in, rng, out[i])
        _count_selections(selections, out[i])


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


@njit(**JIT)
def _update_batch(trials, conversions, revenue_sum, revenue_sq, mc_valid, arms, rewards, discount):
    for i in range(arms.shape[0]):
        _update(trials, conversions, revenue_sum, revenue_sq, mc_valid, arms[i], rewards[i],
                discount)


@structref.register
class _BoundType(types.StructRef):
    """:func:`bind_select`'s arrays and scalars as one kernel argument."""


class _Bound(structref.StructRefProxy):
    def __new__(cls, *fields):
        return _new_bound(*fields)  # compiled once, then loaded from the cache


structref.define_proxy(_Bound, _BoundType, ["trials", "conversions", "revenue", "mc", "mc_valid",
                                            "params", "selections", "floor", "burn_in", "rng"])


@njit(**JIT)
def _new_bound(trials, conversions, revenue, mc, mc_valid, params, selections, floor, burn_in, rng):
    return _Bound(trials, conversions, revenue, mc, mc_valid, params, selections, floor, burn_in,
                  rng)


@njit(**JIT_GIL)
def _select_bound(b, eligible, out):
    return _select(b.trials, b.conversions, b.revenue, b.mc, b.mc_valid, b.params, eligible,
                   b.selections, b.floor, b.burn_in, b.rng, out)


def bind_select(state, params, selections, floor, burn_in, draws, rng, eligible, context, t, out):
    """:func:`select` for this state, these scalars and per-call arguments of the types of
    the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible, context, t, out)``
    returns what ``select`` would, the state's arrays and scalars passed as one structure
    and the kernel typed once (:func:`kernels.common.compiled`; the server's hot path)."""
    bound = _Bound(state[0], state[1], state[2], state[4], state[5], params, selections, floor,
                   burn_in, rng)
    kernel = compiled(_select_bound, bound, eligible, out)

    def call(eligible, context, t, out):
        return kernel(bound, eligible, out)

    return call


def select(state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    Scalars are passed through as given (the server's types: ``floor`` float, ``burn_in`` int);
    ``draws`` is ignored (``R`` is the state's ``mc.shape[1]``).
    """
    return _select(state[0], state[1], state[2], state[4], state[5], params, eligible,
                   selections, floor, burn_in, rng, out)


def update(state, params, arm, reward, context, discount) -> None:
    """One event for ``arm``; ``reward`` is its revenue in currency units (0 = no conversion)."""
    _update(state[0], state[1], state[2], state[3], state[5], arm, reward, discount)


def select_batch(state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity) -> None:
    """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm positions, best first)
    and ``propensity[i]`` for ``contexts[i]``, each decision counted in ``selections`` before the
    next: the same decisions, draw for draw, as :func:`select` row by row with the slate counted
    in between (see :mod:`kernels.thompson`)."""
    _select_batch(state[0], state[1], state[2], state[4], state[5], params, eligible, selections,
                  floor, burn_in, rng, out, propensity)


def update_batch(state, params, arms, rewards, contexts, discount) -> None:
    """Apply :func:`update` for each row (``arms[i]``, ``rewards[i]``, ``contexts[i]``) in order."""
    _update_batch(state[0], state[1], state[2], state[3], state[5], arms, rewards, discount)


def select_reference(
    state, params, eligible, context, t, selections, floor, burn_in, draws, source, out
) -> float:
    trials, conv, rev, _, mc, valid = state
    alpha, beta, prior_mean, strength = (float(p) for p in params)
    a0, b0 = strength + 1.0, strength * prior_mean
    c = conv[eligible]
    a = alpha + c
    b = beta + trials[eligible] - c
    k = a0 + c
    rate = b0 + rev[eligible]
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


def update_reference(state, params, arm, reward, context, discount) -> None:
    valid = state[5]
    if discount < 1.0:
        for a in state[:4]:
            a *= discount
        valid[:] = 0.0
    trials, conv, rev, sq = state[:4]
    trials[arm] += 1.0
    if reward > 0.0:
        conv[arm] += 1.0
        rev[arm] += reward
        sq[arm] += reward * reward
    valid[arm] = 0.0


def select_batch_reference(state, params, eligible, contexts, t, selections, floor, burn_in,
                           draws, source, out, propensity) -> None:
    batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                           floor, burn_in, draws, source, out, propensity)


def update_batch_reference(state, params, arms, rewards, contexts, discount) -> None:
    batch_update_reference(update_reference, state, params, arms, rewards, contexts, discount)


def add_aggregate(state, arm: int, trials: float, successes: float, total: float) -> None:
    """Add (or remove, negative) aggregated trials, conversions and revenue ``total``."""
    state[0][arm] += trials
    state[1][arm] += successes
    state[2][arm] += total
    state[5][arm] = 0.0


def revalue(state, params, arm: int, old: float, new: float, context) -> None:
    """One reward ``old`` that ``arm`` learned becomes ``new`` (a late reward replacing a
    default): the statistics are those of having learned ``new`` instead (the same sums, the
    terms added in another order). Undiscounted experiments only."""
    _, conv, rev, sq, _, valid = state
    if old > 0.0:
        conv[arm] -= 1.0
        rev[arm] -= old
        sq[arm] -= old * old
    if new > 0.0:
        conv[arm] += 1.0
        rev[arm] += new
        sq[arm] += new * new
    valid[arm] = 0.0


def retract(state, params, arm: int, reward: float, context) -> None:
    """Remove one learned reward of ``arm``: the inverse of :func:`update` without discount."""
    trials, conv, rev, sq, _, valid = state
    trials[arm] -= 1.0
    if reward > 0.0:
        conv[arm] -= 1.0
        rev[arm] -= reward
        sq[arm] -= reward * reward
    valid[arm] = 0.0


def summary(state, params, binary: bool) -> dict[str, np.ndarray]:
    """Posteriors: CR ~ Beta(alpha, beta); revenue per conversion = rate / Gamma(shape); score =
    posterior mean CR x posterior mean revenue per conversion."""
    trials, conv, revenue = state[0], state[1], state[2]
    a = params[0] + conv
    b = params[1] + trials - conv
    shape = params[3] + 1.0 + conv
    rate = params[3] * params[2] + revenue
    return {"posterior_alpha": a, "posterior_beta": b, "value_posterior_shape": shape,
            "value_posterior_rate": rate, "score": a / (a + b) * rate / (shape - 1.0)}
