"""Probability that each arm is best under its posterior, by Monte-Carlo (traffic allocation).

Used by ``GetAllocation`` (next-period traffic percentages), ``GetArmStats`` (probability
best) and ``AllocateBudget``'s THOMPSON strategy. Two posterior families:

* Beta: arm k's mean ~ ``Beta(a[k], b[k])`` (conversion rate, click-through rate);
* value: ``Beta(a[k], b[k]) * rate[k] / Gamma(shape[k])`` — conversion rate times revenue
  per conversion, the CR×RPC objective of :mod:`kernels.thompson_value`.

Random-number order: round-major, arm-minor; per arm the beta (its two gammas) and, for the
value family, then the gamma. The argmax takes the first arm on an exact tie. The references
reproduce the order exactly with :class:`kernels.rng.Xoshiro`, and vectorise with
:class:`kernels.rng.NumpyDraws`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import JIT
from .rng import _beta, _gamma


@njit(**JIT)
def _prob_best(a, b, shape, rate, draws, rng, wins):
    """Beta family when ``shape`` is empty, else the value family (see the module doc)."""
    k = a.shape[0]
    value = shape.shape[0] > 0
    for i in range(k):
        wins[i] = 0.0
    for _ in range(draws):
        best = -np.inf
        best_i = 0
        for i in range(k):
            v = _beta(rng, a[i], b[i])
            if value:
                v = v * rate[i] / _gamma(rng, shape[i])
            if v > best:
                best = v
                best_i = i
        wins[best_i] += 1.0
    for i in range(k):
        wins[i] /= draws


_NONE = np.empty(0)


def prob_best_beta(a: np.ndarray, b: np.ndarray, draws: int, rng: np.ndarray) -> np.ndarray:
    """P(arm k has the largest mean) for independent Beta(a[k], b[k]) posteriors."""
    wins = np.empty(a.shape[0])
    _prob_best(np.ascontiguousarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64),
               _NONE, _NONE, int(draws), rng, wins)
    return wins


def prob_best_value(
    a: np.ndarray, b: np.ndarray, shape: np.ndarray, rate: np.ndarray, draws: int, rng: np.ndarray
) -> np.ndarray:
    """P(arm k has the largest CR × RPC) with CR ~ Beta(a, b), RPC = rate / Gamma(shape)."""
    wins = np.empty(a.shape[0])
    arrays = [np.ascontiguousarray(x, dtype=np.float64) for x in (a, b, shape, rate)]
    _prob_best(arrays[0], arrays[1], arrays[2], arrays[3], int(draws), rng, wins)
    return wins


def prob_best_beta_reference(a, b, draws: int, source) -> np.ndarray:
    """Plain NumPy/Python twin of :func:`prob_best_beta` (``source``: Xoshiro or NumpyDraws)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if hasattr(source, "gen"):  # NumpyDraws: vectorised, same distribution
        samples = source.gen.beta(a, b, size=(draws, a.shape[0]))
        return np.bincount(np.argmax(samples, axis=1), minlength=a.shape[0]) / draws
    wins = np.zeros(a.shape[0])
    for _ in range(draws):
        row = [source.beta(a[i], b[i]) for i in range(a.shape[0])]
        wins[int(np.argmax(row))] += 1.0
    return wins / draws


def prob_best_value_reference(a, b, shape, rate, draws: int, source) -> np.ndarray:
    """Plain NumPy/Python twin of :func:`prob_best_value`."""
    a, b, shape, rate = (np.asarray(x, dtype=np.float64) for x in (a, b, shape, rate))
    k = a.shape[0]
    if hasattr(source, "gen"):
        g = source.gen
        samples = g.beta(a, b, size=(draws, k)) * rate / g.standard_gamma(shape, size=(draws, k))
        return np.bincount(np.argmax(samples, axis=1), minlength=k) / draws
    wins = np.zeros(k)
    for _ in range(draws):
        row = []
        for i in range(k):
            cr = source.beta(a[i], b[i])
            row.append(cr * rate[i] / source.gamma(shape[i]))
        wins[int(np.argmax(row))] += 1.0
    return wins / draws
