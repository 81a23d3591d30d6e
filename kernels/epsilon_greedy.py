"""ε-greedy with optional decay: ``eps_t = epsilon / (1 + decay * t)``, t = updates so far.

Random-number order: one ``uniform()`` coin first (always drawn); if it is ``< eps_t`` the
scores are ``m`` uniform draws (eligible order), i.e. a uniformly random ranking; otherwise the
scores are the empirical means (0 for untried arms). Then ``_finalize``.

The propensity is exact: ``eps_t/m + (1 - eps_t) * [arm is a greedy argmax] / (greedy ties)``.
"""

from __future__ import annotations

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
from .rng import _uniform
from .ucb1 import _count_summary, _update, _update_batch
from .ucb1 import add_aggregate as add_aggregate  # same state layout (n, reward_sum)
from .ucb1 import retract as retract
from .ucb1 import revalue as revalue
from .ucb1 import update_reference as _ucb1_update_reference

NAME = "epsilon_greedy"
PARAM_NAMES = ("epsilon", "decay")
CONTEXTUAL = False
ESTIMATED_PROPENSITY = False
CACHE_ARRAYS: tuple[int, ...] = ()  # no derived caches in the state


def new_state(
    num_arms: int, dim: int, params: np.ndarray, draws: int = 32
) -> tuple[np.ndarray, ...]:
    """Zero counts and reward sums (``dim`` and ``draws`` are unused)."""
    return (np.zeros(num_arms), np.zeros(num_arms))


@njit(**JIT)
def _select(counts, reward_sum, params, eligible, t, selections, floor, burn_in, rng, out):
    m = eligible.shape[0]
    eps = params[0] / (1.0 + params[1] * t)
    explore = _uniform(rng) < eps
    scores = np.empty(m)
    probs = np.empty(m)
    for j in range(m):
        arm = eligible[j]
        n = counts[arm]
        scores[j] = reward_sum[arm] / n if n > 0.0 else 0.0
    _max_tie_probs(scores, probs)
    for j in range(m):
        probs[j] = eps / m + (1.0 - eps) * probs[j]
    if explore:
        for j in range(m):
            scores[j] = _uniform(rng)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


@njit(**JIT)
def _select_batch(counts, reward_sum, params, eligible, t, selections, floor, burn_in, rng, out,
                  propensity):
    for i in range(out.shape[0]):
        propensity[i] = _select(counts, reward_sum, params, eligible, t, selections, floor,
                                burn_in, rng, out[i])
        _count_selections(selections, out[i])


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
def _select_bound(b, eligible, t, out):
    return _select(b.counts, b.reward_sum, b.params, eligible, t, b.selections, b.floor, b.burn_in,
                   b.rng, out)


def bind_select(state, params, selections, floor, burn_in, draws, rng, eligible, context, t, out):
    """:func:`select` for this state, these scalars and per-call arguments of the types of
    the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible, context, t, out)``
    returns what ``select`` would, the state's arrays and scalars passed as one structure
    and the kernel typed once (:func:`kernels.common.compiled`; the server's hot path)."""
    bound = _Bound(state[0], state[1], params, selections, floor, burn_in, rng)
    kernel = compiled(_select_bound, bound, eligible, t, out)

    def call(eligible, context, t, out):
        return kernel(bound, eligible, t, out)

    return call


def select(state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    Scalars are passed through as given (the server's types: ``t`` and ``burn_in`` int,
    ``floor`` float).
    """
    return _select(state[0], state[1], params, eligible, t, selections, floor, burn_in, rng, out)


def update(state, params, arm, reward, context, discount) -> None:
    _update(state[0], state[1], arm, reward, discount)


def select_batch(state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity) -> None:
    """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm positions, best first)
    and ``propensity[i]`` for ``contexts[i]``, each decision counted in ``selections`` before the
    next: the same decisions, draw for draw, as :func:`select` row by row with the slate counted
    in between (see :mod:`kernels.thompson`)."""
    _select_batch(state[0], state[1], params, eligible, t, selections, floor, burn_in, rng, out,
                  propensity)


def update_batch(state, params, arms, rewards, contexts, discount) -> None:
    """Apply :func:`update` for each row (``arms[i]``, ``rewards[i]``, ``contexts[i]``) in order."""
    _update_batch(state[0], state[1], arms, rewards, discount)


def update_reference(state, params, arm, reward, context, discount) -> None:
    _ucb1_update_reference(state, params, arm, reward, context, discount)


def select_reference(
    state, params, eligible, context, t, selections, floor, burn_in, draws, source, out
) -> float:
    counts, reward_sum = state
    m = len(eligible)
    eps = params[0] / (1.0 + params[1] * t)
    explore = source.uniform() < eps
    n = counts[eligible]
    means = np.divide(reward_sum[eligible], n, out=np.zeros(m), where=n > 0.0)
    probs = eps / m + (1.0 - eps) * max_tie_probs_reference(means)
    scores = source.uniforms(m) if explore else means
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def select_batch_reference(state, params, eligible, contexts, t, selections, floor, burn_in,
                           draws, source, out, propensity) -> None:
    batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                           floor, burn_in, draws, source, out, propensity)


def update_batch_reference(state, params, arms, rewards, contexts, discount) -> None:
    batch_update_reference(update_reference, state, params, arms, rewards, contexts, discount)


def summary(state, params, binary: bool) -> dict[str, np.ndarray]:
    """Greedy score (empirical mean) per arm, plus the binary posterior of :mod:`kernels.ucb1`."""
    n, total = state
    return _count_summary(n, total, _scores_reference(n, total, params), binary)

def _scores_reference(n: np.ndarray, total: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Empirical mean reward (0 for untried arms), the greedy score."""
    return np.divide(total, n, out=np.zeros_like(total), where=n > 0)
