"""Disjoint LinUCB: score = θ̂ᵀx + alpha * sqrt(xᵀA⁻¹x) per arm, A = ridge·I + Σ x xᵀ.

State: ``(a_inv[K, d, d], b[K, d], theta[K, d])`` with ``a_inv`` starting at ``I / ridge``.
Update is a Sherman–Morrison rank-one downdate of A⁻¹ in O(d²) without allocation (``theta[arm]``
holds ``u = A⁻¹x`` while A⁻¹ is updated, then is recomputed as ``A⁻¹ b``); A⁻¹ is kept exactly
symmetric by writing both triangles from one value. Discounting is not supported (the server
rejects it for contextual policies). The policy is deterministic given the state, so probs are
``1/ties`` on the arms sharing the maximum score.

The K·d² multiply-adds of select are in :func:`_means_widths`, compiled with ``JIT_DOT``
(reassociation: vectorised sums).
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
from .config import JIT, JIT_DOT, JIT_GIL

NAME = "lin_ucb"
PARAM_NAMES = ("alpha", "ridge")
CONTEXTUAL = True
ESTIMATED_PROPENSITY = False
CACHE_ARRAYS: tuple[int, ...] = ()  # no derived caches in the state


def new_state(
    num_arms: int, dim: int, params: np.ndarray, draws: int = 32
) -> tuple[np.ndarray, ...]:
    """A⁻¹ = I/ridge, b = θ̂ = 0 for each arm (``draws`` is unused)."""
    ridge = float(params[1])
    a_inv = np.zeros((num_arms, dim, dim))
    idx = np.arange(dim)
    a_inv[:, idx, idx] = 1.0 / ridge
    return (a_inv, np.zeros((num_arms, dim)), np.zeros((num_arms, dim)))


@njit(**JIT_DOT)
def _means_widths(a_inv, theta, eligible, x, mean, width):
    """mean[j] = θ̂ᵀx and width[j] = sqrt(xᵀA⁻¹x) of arm ``eligible[j]`` (O(d²) each; each row
    of A⁻¹ is read contiguously, and ``JIT_DOT`` lets LLVM vectorise the row sums)."""
    d = x.shape[0]
    for j in range(eligible.shape[0]):
        arm = eligible[j]
        mu = 0.0
        for k in range(d):
            mu += theta[arm, k] * x[k]
        q = 0.0
        for i in range(d):
            acc = 0.0
            for k in range(d):
                acc += a_inv[arm, i, k] * x[k]
            q += x[i] * acc
        mean[j] = mu
        width[j] = np.sqrt(q) if q > 0.0 else 0.0


@njit(**JIT)
def _select(a_inv, theta, params, eligible, x, selections, floor, burn_in, rng, out):
    m = eligible.shape[0]
    alpha = params[0]
    buf = np.empty(3 * m)
    scores = buf[:m]
    width = buf[m:2 * m]
    probs = buf[2 * m:]
    _means_widths(a_inv, theta, eligible, x, scores, width)
    for j in range(m):
        scores[j] += alpha * width[j]
    _max_tie_probs(scores, probs)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


@njit(**JIT)
def _select_batch(a_inv, theta, params, eligible, contexts, selections, floor, burn_in, rng, out,
                  propensity):
    for i in range(out.shape[0]):
        propensity[i] = _select(a_inv, theta, params, eligible, contexts[i], selections, floor,
                                burn_in, rng, out[i])
        _count_selections(selections, out[i])


@njit(**JIT)
def _update(a_inv, b, theta, arm, reward, x):
    d = x.shape[0]
    u = theta[arm]  # scratch: overwritten with A⁻¹b below
    xu = 0.0
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += a_inv[arm, i, j] * x[j]
        u[i] = acc
        xu += x[i] * acc
    scale = 1.0 / (1.0 + xu)
    for i in range(d):
        for j in range(i, d):
            v = a_inv[arm, i, j] - u[i] * u[j] * scale
            a_inv[arm, i, j] = v
            a_inv[arm, j, i] = v
    for i in range(d):
        b[arm, i] += reward * x[i]
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += a_inv[arm, i, j] * b[arm, j]
        theta[arm, i] = acc


@njit(**JIT)
def _update_batch(a_inv, b, theta, arms, rewards, contexts):
    for i in range(arms.shape[0]):
        _update(a_inv, b, theta, arms[i], rewards[i], contexts[i])


@njit(**JIT)
def _revalue(a_inv, b, theta, arm, delta, x):
    """b[arm] += delta * x, then θ̂ = A⁻¹b as :func:`_update` computes it."""
    d = x.shape[0]
    for i in range(d):
        b[arm, i] += delta * x[i]
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += a_inv[arm, i, j] * b[arm, j]
        theta[arm, i] = acc


@structref.register
class _BoundType(types.StructRef):
    """:func:`bind_select`'s arrays and scalars as one kernel argument."""


class _Bound(structref.StructRefProxy):
    def __new__(cls, *fields):
        return _new_bound(*fields)  # compiled once, then loaded from the cache


structref.define_proxy(_Bound, _BoundType, ["a_inv", "theta", "params", "selections", "floor",
                                            "burn_in", "rng"])


@njit(**JIT)
def _new_bound(a_inv, theta, params, selections, floor, burn_in, rng):
    return _Bound(a_inv, theta, params, selections, floor, burn_in, rng)


@njit(**JIT_GIL)
def _select_bound(b, eligible, x, out):
    return _select(b.a_inv, b.theta, b.params, eligible, x, b.selections, b.floor, b.burn_in, b.rng,
                   out)


def bind_select(state, params, selections, floor, burn_in, draws, rng, eligible, context, t, out):
    """:func:`select` for this state, these scalars and per-call arguments of the types of
    the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible, context, t, out)``
    returns what ``select`` would, the state's arrays and scalars passed as one structure
    and the kernel typed once (:func:`kernels.common.compiled`; the server's hot path)."""
    bound = _Bound(state[0], state[2], params, selections, floor, burn_in, rng)
    kernel = compiled(_select_bound, bound, eligible, context, out)

    def call(eligible, context, t, out):
        return kernel(bound, eligible, context, out)

    return call


def select(state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    Scalars are passed through as given (the server's types: ``floor`` float, ``burn_in`` int).
    """
    return _select(state[0], state[2], params, eligible, context, selections, floor, burn_in,
                   rng, out)


def update(state, params, arm, reward, context, discount) -> None:
    """Add one (context, reward) observation to ``arm``; ``discount`` is ignored."""
    _update(state[0], state[1], state[2], arm, reward, context)


def select_batch(state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity) -> None:
    """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm positions, best first)
    and ``propensity[i]`` for ``contexts[i]``, each decision counted in ``selections`` before the
    next: the same decisions, draw for draw, as :func:`select` row by row with the slate counted
    in between (see :mod:`kernels.thompson`)."""
    _select_batch(state[0], state[2], params, eligible, contexts, selections, floor, burn_in, rng,
                  out, propensity)


def update_batch(state, params, arms, rewards, contexts, discount) -> None:
    """Apply :func:`update` for each row (``arms[i]``, ``rewards[i]``, ``contexts[i]``) in order."""
    _update_batch(state[0], state[1], state[2], arms, rewards, contexts)


def mean_width_reference(state, eligible, x) -> tuple[np.ndarray, np.ndarray]:
    """(θ̂ᵀx, sqrt(xᵀA⁻¹x)) per eligible arm, as one small product per arm (a stacked matmul):
    a single matrix-vector product can round identical rows differently (BLAS gemv blocking),
    which would break the exact ties of arms with identical state (e.g. untrained arms)."""
    a_inv, _, theta = state
    mu = (theta[eligible][:, None, :] @ x)[:, 0]
    q = ((a_inv[eligible] @ x)[:, None, :] @ x)[:, 0]
    return mu, np.sqrt(np.maximum(q, 0.0))


def select_reference(
    state, params, eligible, context, t, selections, floor, burn_in, draws, source, out
) -> float:
    mu, width = mean_width_reference(state, eligible, context)
    scores = mu + params[0] * width
    probs = max_tie_probs_reference(scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def update_reference(state, params, arm, reward, context, discount) -> None:
    a_inv, b, theta = state
    x = context
    u = a_inv[arm] @ x
    a_inv[arm] -= np.outer(u, u) / (1.0 + x @ u)
    b[arm] += reward * x
    theta[arm] = a_inv[arm] @ b[arm]


def select_batch_reference(state, params, eligible, contexts, t, selections, floor, burn_in,
                           draws, source, out, propensity) -> None:
    batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                           floor, burn_in, draws, source, out, propensity)


def update_batch_reference(state, params, arms, rewards, contexts, discount) -> None:
    batch_update_reference(update_reference, state, params, arms, rewards, contexts, discount)


def add_aggregate(state, arm: int, trials: float, successes: float, total: float) -> None:
    """Aggregates carry no context: contextual policies cannot learn from them."""
    raise NotImplementedError(f"{NAME} learns from (context, reward) pairs only")


def revalue(state, params, arm: int, old: float, new: float, context) -> None:
    """One observation (``context``, ``old``) that ``arm`` learned becomes (``context``,
    ``new``) (a late reward replacing a default). A⁻¹ does not depend on rewards, so only
    b changes (by (new - old)·x) and θ̂ = A⁻¹b is recomputed: the state of having learned
    ``new`` instead (b the same sum, its terms added in another order)."""
    _revalue(state[0], state[1], state[2], arm, new - old, context)


def retract(state, params, arm: int, reward: float, context) -> None:
    """Not supported: removing x xᵀ from A⁻¹ (a Sherman–Morrison downdate) does not give
    back the earlier A⁻¹ exactly in floating point."""
    raise NotImplementedError(f"{NAME} cannot remove an observation exactly")


def summary(state, params, binary: bool) -> dict[str, np.ndarray]:
    """No per-arm score without a context."""
    return {}
