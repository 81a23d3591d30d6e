"""Disjoint LinUCB: score = θ̂ᵀx + alpha * sqrt(xᵀA⁻¹x) per arm, A = ridge·I + Σ x xᵀ.

State (:class:`State`): ``a_inv[K, d, d]`` starting at ``I / ridge``, ``b[K, d]``, ``theta[K, d]``.
Update is a Sherman–Morrison rank-one downdate of A⁻¹ in O(d²) without allocation (``theta[arm]``
holds ``u = A⁻¹x`` while A⁻¹ is updated, then is recomputed as ``A⁻¹ b``); A⁻¹ is kept exactly
symmetric by writing both triangles from one value. Discounting is not supported (the server
rejects it for contextual policies). The policy is deterministic given the state, so probs are
``1/ties`` on the arms sharing the maximum score. Rewards are any real numbers.

The K·d² multiply-adds of select are in :func:`_means_widths`, compiled with ``JIT_DOT``
(reassociation: vectorised sums).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .common import (
    _finalize,
    _max_tie_probs,
    finalize_reference,
    max_tie_probs_reference,
    policy_api,
)
from .config import JIT, JIT_DOT

NAME = "lin_ucb"
PARAM_NAMES = ("alpha", "ridge")  # exploration weight; ridge (prior precision) of A
EXAMPLE_PARAMS = (0.8, 1.5)
CONTEXTUAL = True
ESTIMATED_PROPENSITY = False
REWARDS = "real"


class State(NamedTuple):
    a_inv: np.ndarray  # [K, d, d] A⁻¹
    b: np.ndarray  # [K, d] Σ reward·x
    theta: np.ndarray  # [K, d] θ̂ = A⁻¹b


CACHE_FIELDS: tuple[str, ...] = ()  # no derived caches in the state


def new_state(*, num_arms: int, dim: int, params: np.ndarray, draws: int = 32) -> State:
    """A⁻¹ = I/ridge, b = θ̂ = 0 for each arm (``draws`` is unused)."""
    ridge = float(params[1])
    a_inv = np.zeros((num_arms, dim, dim))
    idx = np.arange(dim)
    a_inv[:, idx, idx] = 1.0 / ridge
    return State(a_inv, np.zeros((num_arms, dim)), np.zeros((num_arms, dim)))


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
def _select(a_inv, theta, params, eligible, context, selections, floor, burn_in, rng, out):
    m = eligible.shape[0]
    alpha = params[0]
    buf = np.empty(3 * m)
    scores = buf[:m]
    width = buf[m:2 * m]
    probs = buf[2 * m:]
    _means_widths(a_inv, theta, eligible, context, scores, width)
    for j in range(m):
        scores[j] += alpha * width[j]
    _max_tie_probs(scores, probs)
    return _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out)


@njit(**JIT)
def _update(a_inv, b, theta, arm, reward, context):
    x = context
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


def mean_width_reference(state: State, eligible, x) -> tuple[np.ndarray, np.ndarray]:
    """(θ̂ᵀx, sqrt(xᵀA⁻¹x)) per eligible arm, as one small product per arm (a stacked matmul):
    a single matrix-vector product can round identical rows differently (BLAS gemv blocking),
    which would break the exact ties of arms with identical state (e.g. untrained arms)."""
    mu = (state.theta[eligible][:, None, :] @ x)[:, 0]
    q = ((state.a_inv[eligible] @ x)[:, None, :] @ x)[:, 0]
    return mu, np.sqrt(np.maximum(q, 0.0))


def select_reference(*, state: State, params, eligible, context, t, selections, floor, burn_in,
                     draws, source, out) -> float:
    mu, width = mean_width_reference(state, eligible, context)
    scores = mu + params[0] * width
    probs = max_tie_probs_reference(scores)
    return finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out)


def update_reference(*, state: State, params, arm, reward, context, discount) -> None:
    a_inv, b, theta = state.a_inv, state.b, state.theta
    x = context
    u = a_inv[arm] @ x
    a_inv[arm] -= np.outer(u, u) / (1.0 + x @ u)
    b[arm] += reward * x
    theta[arm] = a_inv[arm] @ b[arm]


def add_aggregate(*, state: State, arm: int, trials: float, successes: float,
                  total: float) -> None:
    """Aggregates carry no context: contextual policies cannot learn from them."""
    raise NotImplementedError(f"{NAME} learns from (context, reward) pairs only")


def summary(*, state: State, params, binary: bool) -> dict[str, np.ndarray]:
    """No per-arm score without a context."""
    return {}


# select, update, their batch and bound forms and the batch references: the same for every
# policy, written once in kernels.common and generated from State and the functions above.
(select, update, select_batch, update_batch, bind_select, bind_update, select_batch_reference,
 update_batch_reference, _select_bound, _select_batch, _update_batch) = policy_api(
    State, _select, _update, select_reference, update_reference)
