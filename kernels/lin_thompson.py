"""Linear Thompson sampling (disjoint arms), O(d²) per arm with no matrix factorisation.

Posterior per arm: θ ~ N(θ̂, v² A⁻¹). Arms are disjoint, so only the scalar θ̃ᵀx matters for
the decision, and for a fixed context it is exactly distributed N(θ̂ᵀx, v² · xᵀA⁻¹x). Select
therefore draws ``score = θ̂ᵀx + v * sqrt(xᵀA⁻¹x) * z`` with one standard normal ``z`` per
arm (eligible order) — the same decision distribution as sampling the full θ̃, without a
Cholesky factor. With more than one eligible arm, ``R = draws`` further rounds estimate the
propensity as in :mod:`kernels.common`: (rounds won + share of the decision round) / (R + 1),
so the chosen arm's propensity is >= 1/(R+1). Their normals are drawn after the decision round,
arm-major (arm ``j``'s R normals, then arm ``j+1``'s, in eligible order), one per arm and round,
reusing each arm's mean and standard deviation. The rounds depend on the context, so unlike
:mod:`kernels.thompson` they cannot be cached across decisions. State and update are those of
:mod:`kernels.lin_ucb` (``new_state``'s ``draws`` is unused).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import _finalize, _round_probs, finalize_reference, policy_api, round_probs_reference
from .config import JIT
from .lin_ucb import (  # same state, update and (absent) aggregates and summary as LinUCB
    CACHE_FIELDS,
    REWARDS,
    State,
    _means_widths,
    _update,
    add_aggregate,
    mean_width_reference,
    new_state,
    summary,
    update_reference,
)
from .rng import _normal, _normals_into

NAME = "lin_thompson"
PARAM_NAMES = ("v", "ridge")  # posterior scale; ridge (prior precision) of A
EXAMPLE_PARAMS = (0.5, 1.5)
CONTEXTUAL = True
ESTIMATED_PROPENSITY = True

__all__ = ["CACHE_FIELDS", "REWARDS", "State", "add_aggregate", "new_state", "summary",
           "update_reference"]


@njit(**JIT)
def _select(a_inv, theta, params, eligible, context, selections, floor, burn_in, draws, rng, out):
    m = eligible.shape[0]
    v = params[0]
    rounds = draws if m > 1 else 0
    buf = np.empty(4 * m + rounds * (m + 1))  # one allocation for every float scratch array
    mean = buf[:m]
    sd = buf[m:2 * m]
    scores = buf[2 * m:3 * m]
    probs = buf[3 * m:4 * m]
    _means_widths(a_inv, theta, eligible, context, mean, sd)
    for j in range(m):
        sd[j] *= v
        scores[j] = mean[j] + sd[j] * _normal(rng)
    if m == 1:
        probs[0] = 1.0
    else:
        flat = buf[4 * m:4 * m + m * rounds]
        _normals_into(rng, flat)  # arm-major: arm j's R normals are flat[j*R:(j+1)*R]
        values = flat.reshape((m, rounds))
        for j in range(m):
            mu = mean[j]
            s = sd[j]
            for r in range(rounds):
                values[j, r] = mu + s * values[j, r]
        index = np.empty(m + rounds, dtype=np.int64)
        rows = index[:m]
        for j in range(m):
            rows[j] = j
        _round_probs(values, rows, scores, buf[4 * m + m * rounds:], index[m:], probs)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


def select_reference(*, state: State, params, eligible, context, t, selections, floor, burn_in,
                     draws, source, out) -> float:
    mu, width = mean_width_reference(state, eligible, context)
    sd = params[0] * width
    m = len(eligible)
    scores = mu + sd * source.normals(m)
    if m == 1:
        probs = np.ones(1)
    else:
        rounds = mu[:, None] + sd[:, None] * source.normals((m, draws))  # arm-major
        probs = round_probs_reference(rounds.T, scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


# select, update, their batch and bound forms and the batch references: the same for every
# policy, written once in kernels.common and generated from State and the functions above.
(select, update, select_batch, update_batch, bind_select, bind_update, select_batch_reference,
 update_batch_reference, _select_bound, _select_batch, _update_batch) = policy_api(
    State, _select, _update, select_reference, update_reference)
