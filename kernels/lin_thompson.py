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
from numba import njit, types
from numba.experimental import structref

from .common import (
    _count_selections,
    _finalize,
    _round_probs,
    batch_select_reference,
    compiled,
    finalize_reference,
    round_probs_reference,
)
from .config import JIT, JIT_GIL
from .lin_ucb import (  # same state, update and (absent) aggregates as LinUCB
    _means_widths,
    _update,
    mean_width_reference,
    new_state,
    update_batch,
    update_batch_reference,
    update_reference,
)
from .lin_ucb import (
    add_aggregate as add_aggregate,
)
from .lin_ucb import (
    retract as retract,
)
from .lin_ucb import (
    revalue as revalue,
)
from .lin_ucb import (
    summary as summary,
)
from .rng import _normal, _normals_into

NAME = "lin_thompson"
PARAM_NAMES = ("v", "ridge")
CONTEXTUAL = True
ESTIMATED_PROPENSITY = True
CACHE_ARRAYS: tuple[int, ...] = ()  # no derived caches in the state (contexts differ)

__all__ = ["new_state", "select", "update", "select_reference", "update_reference",
           "select_batch", "update_batch", "select_batch_reference", "update_batch_reference",
           "revalue", "retract"]


@njit(**JIT)
def _select(a_inv, theta, params, eligible, x, selections, floor, burn_in, draws, rng, out):
    m = eligible.shape[0]
    v = params[0]
    rounds = draws if m > 1 else 0
    buf = np.empty(4 * m + rounds * (m + 1))  # one allocation for every float scratch array
    mean = buf[:m]
    sd = buf[m:2 * m]
    scores = buf[2 * m:3 * m]
    probs = buf[3 * m:4 * m]
    _means_widths(a_inv, theta, eligible, x, mean, sd)
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


@njit(**JIT)
def _select_batch(a_inv, theta, params, eligible, contexts, selections, floor, burn_in, draws, rng,
                  out, propensity):
    for i in range(out.shape[0]):
        propensity[i] = _select(a_inv, theta, params, eligible, contexts[i], selections, floor,
                                burn_in, draws, rng, out[i])
        _count_selections(selections, out[i])


@structref.register
class _BoundType(types.StructRef):
    """:func:`bind_select`'s arrays and scalars as one kernel argument."""


class _Bound(structref.StructRefProxy):
    def __new__(cls, *fields):
        return _new_bound(*fields)  # compiled once, then loaded from the cache


structref.define_proxy(_Bound, _BoundType, ["a_inv", "theta", "params", "selections", "floor",
                                            "burn_in", "draws", "rng"])


@njit(**JIT)
def _new_bound(a_inv, theta, params, selections, floor, burn_in, draws, rng):
    return _Bound(a_inv, theta, params, selections, floor, burn_in, draws, rng)


@njit(**JIT_GIL)
def _select_bound(b, eligible, x, out):
    return _select(b.a_inv, b.theta, b.params, eligible, x, b.selections, b.floor, b.burn_in,
                   b.draws, b.rng, out)


def bind_select(state, params, selections, floor, burn_in, draws, rng, eligible, context, t, out):
    """:func:`select` for this state, these scalars and per-call arguments of the types of
    the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible, context, t, out)``
    returns what ``select`` would, the state's arrays and scalars passed as one structure
    and the kernel typed once (:func:`kernels.common.compiled`; the server's hot path)."""
    bound = _Bound(state[0], state[2], params, selections, floor, burn_in, draws, rng)
    kernel = compiled(_select_bound, bound, eligible, context, out)

    def call(eligible, context, t, out):
        return kernel(bound, eligible, context, out)

    return call


def select(state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    Scalars are passed through as given (the server's types: ``floor`` float, ``burn_in`` and
    ``draws`` int).
    """
    return _select(state[0], state[2], params, eligible, context, selections, floor, burn_in,
                   draws, rng, out)


def update(state, params, arm, reward, context, discount) -> None:
    """Add one (context, reward) observation to ``arm``; ``discount`` is ignored."""
    _update(state[0], state[1], state[2], arm, reward, context)


def select_batch(state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity) -> None:
    """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm positions, best first)
    and ``propensity[i]`` for ``contexts[i]``, each decision counted in ``selections`` before the
    next: the same decisions, draw for draw, as :func:`select` row by row with the slate counted
    in between (see :mod:`kernels.thompson`)."""
    _select_batch(state[0], state[2], params, eligible, contexts, selections, floor, burn_in,
                  draws, rng, out, propensity)


def select_reference(
    state, params, eligible, context, t, selections, floor, burn_in, draws, source, out
) -> float:
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


def select_batch_reference(state, params, eligible, contexts, t, selections, floor, burn_in,
                           draws, source, out, propensity) -> None:
    batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                           floor, burn_in, draws, source, out, propensity)
