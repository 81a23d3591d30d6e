"""ε-greedy with optional decay: ``eps_t = epsilon / (1 + decay * t)``, t = updates so far.

Random-number order: one ``uniform()`` coin first (always drawn); if it is ``< eps_t`` the
scores are ``m`` uniform draws (eligible order), i.e. a uniformly random ranking; otherwise the
scores are the empirical means (0 for untried arms). Then ``_finalize``.

The propensity is exact: ``eps_t/m + (1 - eps_t) * [arm is a greedy argmax] / (greedy ties)``.
State, update, aggregates and rewards are those of :mod:`kernels.ucb1`.
"""

from __future__ import annotations

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
from .rng import _uniform
from .ucb1 import (  # same state layout (n, reward_sum), update and aggregates as UCB1
    CACHE_FIELDS,
    REWARDS,
    State,
    _count_summary,
    _update,
    add_aggregate,
    new_state,
    update_reference,
)

NAME = "epsilon_greedy"
PARAM_NAMES = ("epsilon", "decay")  # exploration probability at t = 0, its decay per update
EXAMPLE_PARAMS = (0.2, 0.01)
CONTEXTUAL = False
ESTIMATED_PROPENSITY = False

__all__ = ["CACHE_FIELDS", "REWARDS", "State", "add_aggregate", "new_state", "update_reference"]


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


def select_reference(*, state: State, params, eligible, context, t, selections, floor, burn_in,
                     draws, source, out) -> float:
    counts, reward_sum = state.counts, state.reward_sum
    m = len(eligible)
    eps = params[0] / (1.0 + params[1] * t)
    explore = source.uniform() < eps
    n = counts[eligible]
    means = np.divide(reward_sum[eligible], n, out=np.zeros(m), where=n > 0.0)
    probs = eps / m + (1.0 - eps) * max_tie_probs_reference(means)
    scores = source.uniforms(m) if explore else means
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def summary(*, state: State, params, binary: bool) -> dict[str, np.ndarray]:
    """Greedy score (empirical mean) per arm, plus the binary posterior of :mod:`kernels.ucb1`."""
    n, total = state.counts, state.reward_sum
    return _count_summary(n, total, _scores_reference(n, total, params), binary)


def _scores_reference(n: np.ndarray, total: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Empirical mean reward (0 for untried arms), the greedy score."""
    return np.divide(total, n, out=np.zeros_like(total), where=n > 0)


# select, update, their batch and bound forms and the batch references: the same for every
# policy, written once in kernels.common and generated from State and the functions above.
(select, update, select_batch, update_batch, bind_select, bind_update, select_batch_reference,
 update_batch_reference, _select_bound, _select_batch, _update_batch) = policy_api(
    State, _select, _update, select_reference, update_reference)
