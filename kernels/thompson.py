"""Beta–Bernoulli Thompson sampling (binary rewards: click / no click).

State (first axis = arm, all float64): ``(successes[K], failures[K], mc[K, R], mc_valid[K])``.
``successes``/``failures`` are the learned counts (float so that discounting can shrink them).
``mc[arm]`` caches ``R`` posterior draws of the arm for the Monte-Carlo propensity and
``mc_valid[arm]`` is 1.0 while they are i.i.d. draws from the arm's *current* posterior:
:func:`update` clears it for the updated arm (for every arm when ``discount < 1``, since every
posterior then changes), and new arms start at 0. ``R`` is fixed by ``new_state(..., draws)``;
:func:`select` ignores its ``draws`` argument.

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
from .rng import _beta

NAME = "thompson"
PARAM_NAMES = ("alpha", "beta")
CONTEXTUAL = False
ESTIMATED_PROPENSITY = True
# State arrays that only cache derived values (Monte-Carlo rounds and their validity flags):
# snapshots leave them out and a restored state recomputes them lazily.
CACHE_ARRAYS = (2, 3)


def new_state(
    num_arms: int, dim: int, params: np.ndarray, draws: int = 32
) -> tuple[np.ndarray, ...]:
    """Zero counts; ``draws`` (R >= 1) Monte-Carlo rounds cached per arm, all invalid."""
    return (np.zeros(num_arms), np.zeros(num_arms), *mc_cache(num_arms, draws))


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
def _select_batch(successes, failures, mc, mc_valid, params, eligible, selections, floor, burn_in,
                  rng, out, propensity):
    for i in range(out.shape[0]):
        propensity[i] = _select(successes, failures, mc, mc_valid, params, eligible, selections,
                                floor, burn_in, rng, out[i])
        _count_selections(selections, out[i])


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


@njit(**JIT)
def _update_batch(successes, failures, mc_valid, arms, rewards, discount):
    for i in range(arms.shape[0]):
        _update(successes, failures, mc_valid, arms[i], rewards[i], discount)


@structref.register
class _BoundType(types.StructRef):
    """:func:`bind_select`'s arrays and scalars as one kernel argument."""


class _Bound(structref.StructRefProxy):
    def __new__(cls, *fields):
        return _new_bound(*fields)  # compiled once, then loaded from the cache


structref.define_proxy(_Bound, _BoundType, ["successes", "failures", "mc", "mc_valid", "params",
                                            "selections", "floor", "burn_in", "rng"])


@njit(**JIT)
def _new_bound(successes, failures, mc, mc_valid, params, selections, floor, burn_in, rng):
    return _Bound(successes, failures, mc, mc_valid, params, selections, floor, burn_in, rng)


@njit(**JIT_GIL)
def _select_bound(b, eligible, out):
    return _select(b.successes, b.failures, b.mc, b.mc_valid, b.params, eligible, b.selections,
                   b.floor, b.burn_in, b.rng, out)


def bind_select(state, params, selections, floor, burn_in, draws, rng, eligible, context, t, out):
    """:func:`select` for this state, these scalars and per-call arguments of the types of
    the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible, context, t, out)``
    returns what ``select`` would, the state's arrays and scalars passed as one structure
    and the kernel typed once (:func:`kernels.common.compiled`; the server's hot path)."""
    bound = _Bound(state[0], state[1], state[2], state[3], params, selections, floor, burn_in,
                   rng)
    kernel = compiled(_select_bound, bound, eligible, out)

    def call(eligible, context, t, out):
        return kernel(bound, eligible, out)

    return call


def select(state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    Scalars are passed through as given (the server's types: ``floor`` float, ``burn_in`` int);
    other scalar types compile another specialisation. ``draws`` is ignored: ``R`` is the
    state's ``mc.shape[1]``.
    """
    return _select(state[0], state[1], state[2], state[3], params, eligible, selections, floor,
                   burn_in, rng, out)


def update(state, params, arm, reward, context, discount) -> None:
    """Add one 0/1 reward for ``arm`` (after discounting every arm when ``discount < 1``)."""
    _update(state[0], state[1], state[3], arm, reward, discount)


def select_batch(state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity) -> None:
    """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm positions, best first)
    and ``propensity[i]`` for ``contexts[i]``, with every decision counted in ``selections``
    before the next one. The same decisions, draw for draw, as calling :func:`select` row by row
    and counting each slate in between (what the server did per item).
    """
    _select_batch(state[0], state[1], state[2], state[3], params, eligible, selections, floor,
                  burn_in, rng, out, propensity)


def update_batch(state, params, arms, rewards, contexts, discount) -> None:
    """Apply ``update`` for each row (``arms[i]``, ``rewards[i]``, ``contexts[i]``) in order."""
    _update_batch(state[0], state[1], state[3], arms, rewards, discount)


def select_reference(
    state, params, eligible, context, t, selections, floor, burn_in, draws, source, out
) -> float:
    s, f, mc, valid = state
    a = params[0] + s[eligible]
    b = params[1] + f[eligible]
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


def update_reference(state, params, arm, reward, context, discount) -> None:
    s, f, _, valid = state
    if discount < 1.0:
        s *= discount
        f *= discount
        valid[:] = 0.0
    s[arm] += reward
    f[arm] += 1.0 - reward
    valid[arm] = 0.0


def select_batch_reference(state, params, eligible, contexts, t, selections, floor, burn_in,
                           draws, source, out, propensity) -> None:
    batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                            floor, burn_in, draws, source, out, propensity)


def update_batch_reference(state, params, arms, rewards, contexts, discount) -> None:
    batch_update_reference(update_reference, state, params, arms, rewards, contexts, discount)


def add_aggregate(state, arm: int, trials: float, successes: float, total: float) -> None:
    """Add (or, with negative values, remove) aggregated counts of ``arm`` (IngestMetrics)."""
    s, f, _, valid = state
    s[arm] += successes
    f[arm] += trials - successes
    valid[arm] = 0.0


def revalue(state, params, arm: int, old: float, new: float, context) -> None:
    """One reward ``old`` that ``arm`` learned becomes ``new`` (a late reward replacing a
    default): the counts are those of having learned ``new`` instead (0/1 rewards: exactly).
    Undiscounted experiments only."""
    s, f, _, valid = state
    s[arm] += new - old
    f[arm] += old - new
    valid[arm] = 0.0


def retract(state, params, arm: int, reward: float, context) -> None:
    """Remove one learned reward of ``arm``: the inverse of :func:`update` without discount."""
    s, f, _, valid = state
    s[arm] -= reward
    f[arm] -= 1.0 - reward
    valid[arm] = 0.0


def summary(state, params, binary: bool) -> dict[str, np.ndarray]:
    """Beta posterior of each arm's success rate and its mean (the arm's score)."""
    a = params[0] + state[0]
    b = params[1] + state[1]
    return {"posterior_alpha": a, "posterior_beta": b, "score": a / (a + b)}
