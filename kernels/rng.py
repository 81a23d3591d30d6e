"""Per-experiment reproducible random numbers: xoshiro256** with state in ``uint64[4]``.

Why a hand-written generator rather than NumPy's or Numba's:

* **Kernels and references draw the same numbers.** The kernel tests compare every decision of a
  kernel with its plain-Python/NumPy reference draw for draw, and the propensity to 1e-9, so the
  reference needs the kernel's exact stream and sampling formulas. :class:`Xoshiro` below is
  that stream in pure Python. Numba's ``np.random`` inside a kernel is its own per-thread
  Mersenne Twister, and NumPy's ``Generator`` distributions may change between NumPy versions
  (NEP 19): neither can be reproduced outside the kernel.
* **One stream per experiment, seedable and saved with it.** The state is a plain
  ``uint64[4]`` array seeded from the experiment's ``seed`` (:func:`seed_state`): the server
  keeps it beside the other state arrays, snapshots it as an array, and the same seed gives the
  same decisions. Numba's global generator has one state per thread, not per experiment.
* **Jumpable.** :func:`jump_state` advances a stream by 2**128 draws, so worker processes
  serving the same experiment draw from non-overlapping streams of one seed.
* **Usable inside ``nogil`` jitted code.** The helpers take the state array and mutate it in
  place: no Python object (a ``Generator`` or its BitGenerator) crosses into the kernel, they are
  inlined into each kernel, and :func:`_normals_into` keeps the state in registers.

Hence only: seeding and jumping (Python), the jitted draws the kernels use (``_next_u64``,
``_uniform``, ``_randint``, ``_normal``, ``_normals_into``, ``_gamma``, ``_beta``, each mutating
the state in place), :class:`Xoshiro` (the identical stream in pure Python, for the references
and the tests) and :class:`NumpyDraws` (``np.random.Generator`` behind the method names the
references call: fast and vectorised but not the same stream, for the benchmark's reference
timings and the distribution tests).

Exact formulas (both implementations):

* ``uniform``  = ``(next_u64() >> 11) * 2**-53`` — a 53-bit double in [0, 1).
* ``normal``   = 256-layer ziggurat (Marsaglia & Tsang 2000, the layout NumPy uses): one
  ``next_u64`` gives the layer (low 8 bits), the sign (bit 8) and a 52-bit magnitude (bits
  9..60); ~99% of draws return at once. Otherwise a wedge test draws one ``uniform()``, or for
  the base layer the tail loop draws pairs of ``uniform()`` (``log1p`` form), and a rejected
  draw starts over with a new ``next_u64``. Tables are built at import by :func:`_zig_tables`.
* ``gamma(k)`` = Marsaglia–Tsang for ``k >= 1`` (one normal, then one uniform per attempt);
  for ``k < 1``: ``gamma(k+1) * (1-uniform()) ** (1/k)`` (uniform drawn after the gamma).
* ``beta(a, b)`` = ``X / (X+Y)`` with ``X = gamma(a)`` drawn before ``Y = gamma(b)``
  (if both underflow to 0 — only for shapes far below 0.01 — the mean ``a/(a+b)`` is returned).
* ``randint(n)`` = ``int(uniform() * n)``.

Numba note: mixing ``uint64`` with ``int64`` literals promotes to float64, so every shift,
xor and multiply constant below is an explicit ``np.uint64``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from .config import JIT

_MASK = 0xFFFFFFFFFFFFFFFF
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53

_U5 = np.uint64(5)
_U7 = np.uint64(7)
_U9 = np.uint64(9)
_U11 = np.uint64(11)
_U17 = np.uint64(17)
_U45 = np.uint64(45)
_U64 = np.uint64(64)


def _zig_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ziggurat tables for 256 layers on 52-bit magnitudes (Marsaglia & Tsang's ``zigset``)."""
    m1 = 4503599627370496.0  # 2**52
    dn = _ZIG_R
    tn = dn
    vn = 0.00492867323399
    ki = np.zeros(256, dtype=np.int64)
    wi = np.zeros(256)
    fi = np.zeros(256)
    q = vn / math.exp(-0.5 * dn * dn)
    ki[0] = int((dn / q) * m1)
    ki[1] = 0
    wi[0] = q / m1
    wi[255] = dn / m1
    fi[0] = 1.0
    fi[255] = math.exp(-0.5 * dn * dn)
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = int((dn / tn) * m1)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / m1
    return ki, wi, fi


_ZIG_R = 3.6541528853610088
_ZIG_INV_R = 1.0 / _ZIG_R
_ZIG_K, _ZIG_W, _ZIG_F = _zig_tables()
_ZIG_KL = [int(v) for v in _ZIG_K]
_ZIG_WL = [float(v) for v in _ZIG_W]
_ZIG_FL = [float(v) for v in _ZIG_F]
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U8 = np.uint64(8)
_UFF = np.uint64(0xFF)
_U52MASK = np.uint64(0xFFFFFFFFFFFFF)


def _splitmix64(x: int) -> tuple[int, int]:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return x, z ^ (z >> 31)


def _seed_words(seed: int) -> list[int]:
    x = int(seed) & _MASK  # negative seeds wrap; seed 0 is fine (splitmix64 never yields 4 zeros)
    words = []
    for _ in range(4):
        x, z = _splitmix64(x)
        words.append(z)
    if not any(words):  # unreachable in practice; xoshiro must not start from all zeros
        words[0] = 1
    return words


def seed_state(seed: int) -> np.ndarray:
    """Fresh xoshiro256** state (``uint64[4]``) filled from ``seed`` with splitmix64."""
    return np.array(_seed_words(seed), dtype=np.uint64)


# xoshiro256**'s jump polynomial: advancing by it equals 2**128 calls of next_u64.
_JUMP = (0x180EC6D33CFD0ABA, 0xD5A61266F0C9392C, 0xA9582618E03FC9AA, 0x39ABDC4529B1661C)


def _jump_once(words: list[int]) -> list[int]:
    """Blackman & Vigna's ``jump`` (256 steps of the generator, pure Python)."""
    gen = Xoshiro(state=np.array(words, dtype=np.uint64))
    acc = [0, 0, 0, 0]
    for word in _JUMP:
        for bit in range(64):
            if word >> bit & 1:
                acc = [a ^ s for a, s in zip(acc, gen.s, strict=True)]
            gen.next_u64()
    return acc


def _state_bits(state: np.ndarray) -> np.ndarray:
    """The 256 state bits (bit b of word i at 64 i + b) as float64 0/1."""
    return np.unpackbits(state.astype("<u8").view(np.uint8), bitorder="little").astype(np.float64)


@functools.lru_cache(maxsize=8)
def _jump_matrix(times: int) -> np.ndarray:
    """The generator is linear over GF(2): the 256 x 256 matrix of ``times`` jumps."""
    one = np.array([_state_bits(np.array(_jump_once([(1 << j % 64) if j // 64 == i else 0
                                                      for i in range(4)]), dtype=np.uint64))
                    for j in range(256)]).T
    result, power = np.eye(256), one
    while times:
        if times & 1:
            result = (power @ result) % 2
        power = (power @ power) % 2
        times >>= 1
    return result


def jump_state(state: np.ndarray, times: int = 1) -> np.ndarray:
    """``state`` advanced by ``times`` x 2**128 draws (a new array): non-overlapping streams
    from one seed, e.g. one per worker process. The first call for a given ``times`` builds
    its matrix (~0.1 s); later calls take microseconds."""
    bits = (_jump_matrix(times) @ _state_bits(state)) % 2
    return np.packbits(bits.astype(np.uint8), bitorder="little").view("<u8").astype(np.uint64)


# ----------------------------------------------------------------------------- jitted kernels


@njit(inline="always", **JIT)
def _rotl(x, k):
    return (x << k) | (x >> (_U64 - k))


@njit(inline="always", **JIT)
def _next_u64(s):
    s0 = s[0]
    s1 = s[1]
    s2 = s[2]
    s3 = s[3]
    result = _rotl(s1 * _U5, _U7) * _U9
    t = s1 << _U17
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, _U45)
    s[0] = s0
    s[1] = s1
    s[2] = s2
    s[3] = s3
    return result


@njit(inline="always", **JIT)
def _uniform(s):
    return np.float64(_next_u64(s) >> _U11) * _TWO_M53


@njit(inline="always", **JIT)
def _randint(s, n):
    return np.int64(_uniform(s) * n)


@njit(inline="always", **JIT)
def _normal_slow(s, r):
    """The ziggurat's rare path for the 64-bit draw ``r`` that missed its layer's rectangle:
    the wedge test (one uniform) or the base layer's tail loop. Returns (accepted, value)."""
    idx = np.int64(r & _UFF)
    negative = ((r >> _U8) & _U1) != _U0
    x = np.int64((r >> _U9) & _U52MASK) * _ZIG_W[idx]
    if negative:
        x = -x
    if idx == 0:
        while True:
            xx = -_ZIG_INV_R * math.log1p(-_uniform(s))
            yy = -math.log1p(-_uniform(s))
            if yy + yy > xx * xx:
                return True, (-(_ZIG_R + xx) if negative else _ZIG_R + xx)
    if (_ZIG_F[idx - 1] - _ZIG_F[idx]) * _uniform(s) + _ZIG_F[idx] < math.exp(-0.5 * x * x):
        return True, x
    return False, 0.0


@njit(inline="always", **JIT)
def _normal(s):
    while True:
        r = _next_u64(s)
        idx = np.int64(r & _UFF)
        rabs = np.int64((r >> _U9) & _U52MASK)
        if rabs < _ZIG_K[idx]:  # ~99%: inside the layer's rectangle
            x = rabs * _ZIG_W[idx]
            return -x if ((r >> _U8) & _U1) != _U0 else x
        accepted, x = _normal_slow(s, r)
        if accepted:
            return x


@njit(**JIT)
def _normals_into(s, out):
    """Fill ``out`` with standard normals: the same stream as ``len(out)`` calls of
    :func:`_normal`, faster because the xoshiro state stays in registers (it is written back to
    ``s`` only around the rare slow path and at the end)."""
    s0 = s[0]
    s1 = s[1]
    s2 = s[2]
    s3 = s[3]
    n = out.shape[0]
    i = 0
    while i < n:
        r = _rotl(s1 * _U5, _U7) * _U9  # _next_u64 on local copies of the state
        t = s1 << _U17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, _U45)
        idx = np.int64(r & _UFF)
        rabs = np.int64((r >> _U9) & _U52MASK)
        if rabs < _ZIG_K[idx]:
            x = rabs * _ZIG_W[idx]
            out[i] = -x if ((r >> _U8) & _U1) != _U0 else x
            i += 1
        else:
            s[0] = s0
            s[1] = s1
            s[2] = s2
            s[3] = s3
            accepted, x = _normal_slow(s, r)
            s0 = s[0]
            s1 = s[1]
            s2 = s[2]
            s3 = s[3]
            if accepted:
                out[i] = x
                i += 1
    s[0] = s0
    s[1] = s1
    s[2] = s2
    s[3] = s3


@njit(inline="always", **JIT)
def _gamma_ge1(s, shape):
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = _normal(s)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = _uniform(s)
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2:
            return d * v
        if u > 0.0 and math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d * v


@njit(inline="always", **JIT)
def _gamma(s, shape):
    if shape < 1.0:
        g = _gamma_ge1(s, shape + 1.0)
        return g * (1.0 - _uniform(s)) ** (1.0 / shape)
    return _gamma_ge1(s, shape)


@njit(inline="always", **JIT)
def _beta(s, a, b):
    x = _gamma(s, a)
    y = _gamma(s, b)
    t = x + y
    if t == 0.0:
        return a / (a + b)
    return x / t


# ------------------------------------------------------------------------- Python references


class Xoshiro:
    """Pure-Python xoshiro256** giving the identical stream to the jitted helpers."""

    def __init__(self, seed: int | None = None, state: np.ndarray | None = None) -> None:
        if state is not None:
            self.s = [int(w) for w in state]
        else:
            self.s = _seed_words(0 if seed is None else seed)

    def state(self) -> np.ndarray:
        return np.array(self.s, dtype=np.uint64)

    def next_u64(self) -> int:
        s0, s1, s2, s3 = self.s
        x = (s1 * 5) & _MASK
        result = ((((x << 7) | (x >> 57)) & _MASK) * 9) & _MASK
        t = (s1 << 17) & _MASK
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = ((s3 << 45) | (s3 >> 19)) & _MASK
        self.s = [s0, s1, s2, s3]
        return result

    def uniform(self) -> float:
        return float(self.next_u64() >> 11) * _TWO_M53

    def randint(self, n: int) -> int:
        return int(self.uniform() * n)

    def normal(self) -> float:
        while True:
            r = self.next_u64()
            idx = r & 0xFF
            negative = (r >> 8) & 1 == 1
            rabs = (r >> 9) & 0xFFFFFFFFFFFFF
            x = rabs * _ZIG_WL[idx]
            if negative:
                x = -x
            if rabs < _ZIG_KL[idx]:
                return x
            if idx == 0:
                while True:
                    xx = -_ZIG_INV_R * math.log1p(-self.uniform())
                    yy = -math.log1p(-self.uniform())
                    if yy + yy > xx * xx:
                        return -(_ZIG_R + xx) if negative else _ZIG_R + xx
            elif (_ZIG_FL[idx - 1] - _ZIG_FL[idx]) * self.uniform() + _ZIG_FL[idx] < math.exp(
                -0.5 * x * x
            ):
                return x

    def _gamma_ge1(self, shape: float) -> float:
        d = shape - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = self.uniform()
            x2 = x * x
            if u < 1.0 - 0.0331 * x2 * x2:
                return d * v
            if u > 0.0 and math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
                return d * v

    def gamma(self, shape: float) -> float:
        if shape < 1.0:
            g = self._gamma_ge1(shape + 1.0)
            return g * (1.0 - self.uniform()) ** (1.0 / shape)
        return self._gamma_ge1(shape)

    def beta(self, a: float, b: float) -> float:
        x = self.gamma(a)
        y = self.gamma(b)
        t = x + y
        if t == 0.0:
            return a / (a + b)
        return x / t

    # vectorised names (C order, element by element, so the stream matches the kernels)
    def uniforms(self, n: int | tuple[int, ...]) -> np.ndarray:
        out = np.empty(n)
        flat = out.reshape(-1)
        for i in range(flat.size):
            flat[i] = self.uniform()
        return out

    def normals(self, n: int | tuple[int, ...]) -> np.ndarray:
        out = np.empty(n)
        flat = out.reshape(-1)
        for i in range(flat.size):
            flat[i] = self.normal()
        return out

    def betas(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
        vals = [self.beta(x, y) for x, y in zip(a.ravel(), b.ravel(), strict=True)]
        return np.array(vals, dtype=np.float64).reshape(a.shape)

    def beta_gammas(
        self, a: np.ndarray, b: np.ndarray, shape: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per element, in C order: ``beta(a, b)`` then ``gamma(shape)``."""
        a, b, shape = np.broadcast_arrays(
            np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(shape, np.float64)
        )
        be = np.empty(a.shape)
        ga = np.empty(a.shape)
        fb, fg = be.reshape(-1), ga.reshape(-1)
        for i, (x, y, k) in enumerate(zip(a.ravel(), b.ravel(), shape.ravel(), strict=True)):
            fb[i] = self.beta(x, y)
            fg[i] = self.gamma(k)
        return be, ga


class NumpyDraws:
    """``np.random.Generator`` behind the method names the references call on a source, as
    :class:`Xoshiro` has them (fast, not stream-identical: for distribution tests and the
    benchmark's reference timings; the allocation references use ``gen`` directly)."""

    def __init__(self, seed: int | None = None) -> None:
        self.gen = np.random.default_rng(seed)

    def uniform(self) -> float:
        return float(self.gen.random())

    def randint(self, n: int) -> int:
        return int(self.gen.random() * n)

    def uniforms(self, n: int | tuple[int, ...]) -> np.ndarray:
        return self.gen.random(n)

    def normals(self, n: int | tuple[int, ...]) -> np.ndarray:
        return self.gen.standard_normal(n)

    def betas(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.gen.beta(a, b)

    def beta_gammas(
        self, a: np.ndarray, b: np.ndarray, shape: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.gen.beta(a, b), self.gen.standard_gamma(shape)
