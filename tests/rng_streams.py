"""Compiled loops drawing ``n`` values from the jitted xoshiro256** helpers of
``banditd.kernels.rng`` (which only compiled callers can call), for tests/test_kernels_rng.py.

They live apart from the tests because Numba's on-disk cache of a function is invalidated
whenever the file defining it changes: here, editing a test does not recompile them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from banditd.kernels.config import JIT
from banditd.kernels.rng import _beta, _gamma, _next_u64, _normal, _randint, _uniform


@njit(**JIT)
def u64_stream(s, n):
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = _next_u64(s)
    return out


@njit(**JIT)
def uniform_stream(s, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = _uniform(s)
    return out


@njit(**JIT)
def normal_stream(s, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = _normal(s)
    return out


@njit(**JIT)
def gamma_stream(s, shape, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = _gamma(s, shape)
    return out


@njit(**JIT)
def beta_stream(s, a, b, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = _beta(s, a, b)
    return out


@njit(**JIT)
def randint_stream(s, k, n):
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = _randint(s, k)
    return out
