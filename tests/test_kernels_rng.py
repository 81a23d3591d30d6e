"""xoshiro256** kernels vs the pure-Python port (identical stream) and distribution checks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import stats

from banditd.kernels.rng import (
    NumpyDraws,
    Xoshiro,
    _jump_once,
    _normals_into,
    jump_state,
    seed_state,
)
from rng_streams import (
    beta_stream,
    gamma_stream,
    normal_stream,
    randint_stream,
    u64_stream,
    uniform_stream,
)


def test_seed_state_dtype_and_seed_zero():
    s = seed_state(0)
    assert s.dtype == np.uint64 and s.shape == (4,) and s.flags.c_contiguous
    assert s.any()
    assert not np.array_equal(seed_state(0), seed_state(1))
    assert np.array_equal(seed_state(123), seed_state(123))
    assert seed_state(-1).any()


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 + 5])
def test_u64_and_uniform_streams_identical(seed):
    ref = Xoshiro(seed)
    got = u64_stream(seed_state(seed), 10_000)
    assert [int(v) for v in got] == [ref.next_u64() for _ in range(10_000)]
    ref = Xoshiro(seed)
    got = uniform_stream(seed_state(seed), 10_000)
    want = np.array([ref.uniform() for _ in range(10_000)])
    assert np.array_equal(got, want)
    assert got.min() >= 0.0 and got.max() < 1.0


def test_state_is_mutated_in_place_and_matches_port():
    s = seed_state(9)
    ref = Xoshiro(9)
    normal_stream(s, 1000)
    ref.normals(1000)
    assert np.array_equal(s, ref.state())


@pytest.mark.parametrize("seed", [3, 17])
def test_normal_gamma_beta_randint_match_port(seed):
    s = seed_state(seed)
    ref = Xoshiro(seed)
    np.testing.assert_allclose(normal_stream(s, 5000), ref.normals(5000), rtol=0, atol=1e-12)
    for shape in (0.05, 0.3, 0.999, 1.0, 2.5, 40.0, 1e6):
        want = np.array([ref.gamma(shape) for _ in range(500)])
        np.testing.assert_allclose(gamma_stream(s, shape, 500), want, rtol=1e-12, atol=0)
    for a, b in ((0.2, 0.5), (1.0, 1.0), (3.0, 0.7), (30.0, 400.0)):
        want = np.array([ref.beta(a, b) for _ in range(500)])
        np.testing.assert_allclose(beta_stream(s, a, b, 500), want, rtol=1e-12, atol=1e-300)
    assert list(randint_stream(s, 7, 500)) == [ref.randint(7) for _ in range(500)]
    assert np.array_equal(s, ref.state())


@pytest.mark.parametrize("seed", [4, 23])
def test_normals_into_is_thenormal_stream(seed):
    """The register-state bulk sampler gives exactly the stream of repeated ``_normal``
    (100k draws exercise the wedge and tail paths, where the state goes through memory)."""
    s = seed_state(seed)
    ref = Xoshiro(seed)
    out = np.empty(100_000)
    _normals_into(s, out[:7])
    _normals_into(s, out[7:])
    want = ref.normals(100_000)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    assert np.array_equal(s, ref.state())
    s2 = seed_state(seed)
    assert np.array_equal(normal_stream(s2, 100_000), out) and np.array_equal(s2, s)
    assert (np.abs(out) > 3.6541528853610088).any()  # the base layer's tail was reached


def test_normal_distribution():
    x = normal_stream(seed_state(5), 200_000)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1.0) < 0.015
    tail = np.mean(np.abs(x) > 3.0)  # exercises the ziggurat tail and wedges
    assert abs(tail - 2 * stats.norm.sf(3.0)) < 0.001


@pytest.mark.parametrize("shape", [0.1, 0.5, 0.9, 1.0, 3.0, 50.0, 1e6])
def test_gamma_distribution(shape):
    x = gamma_stream(seed_state(11), shape, 50_000)
    assert (x >= 0).all()
    assert stats.kstest(x, stats.gamma(shape).cdf).pvalue > 1e-3
    se = np.sqrt(shape / len(x))
    assert abs(x.mean() - shape) < 5 * se
    assert abs(x.var() / shape - 1.0) < 0.05


@pytest.mark.parametrize(
    ("a", "b"), [(0.3, 0.3), (0.5, 2.0), (2.0, 5.0), (1.0, 1.0), (200.0, 1800.0)]
)
def test_beta_distribution(a, b):
    x = beta_stream(seed_state(13), a, b, 50_000)
    assert ((x >= 0) & (x <= 1)).all()
    assert stats.kstest(x, stats.beta(a, b).cdf).pvalue > 1e-3


def _public_methods(cls) -> dict[str, list[str]]:
    return {name: list(inspect.signature(fn).parameters)
            for name, fn in vars(cls).items() if callable(fn) and not name.startswith("_")}


def test_numpy_draws_and_xoshiro_are_interchangeable_sources():
    """The references take either source: NumpyDraws offers exactly Xoshiro's drawing
    methods with the same parameters, and is reproducible from its seed."""
    numpy_methods = _public_methods(NumpyDraws)
    xoshiro_methods = _public_methods(Xoshiro)
    assert sorted(numpy_methods) == ["beta_gammas", "betas", "normals", "randint", "uniform",
                                     "uniforms"]  # what the references call
    assert {n: xoshiro_methods[n] for n in numpy_methods} == numpy_methods
    a, b, shape = np.array([0.5, 2.0, 30.0]), np.array([1.0, 3.0, 400.0]), np.full(3, 2.5)
    for source in (NumpyDraws, Xoshiro):
        one, two = source(8), source(8)
        draws = [one.uniform(), one.randint(7), *one.uniforms(3), *one.normals((2, 2)).ravel(),
                 *one.betas(a, b), *np.concatenate(one.beta_gammas(a, b, shape))]
        again = [two.uniform(), two.randint(7), *two.uniforms(3), *two.normals((2, 2)).ravel(),
                 *two.betas(a, b), *np.concatenate(two.beta_gammas(a, b, shape))]
        assert draws == again, source.__name__
    assert NumpyDraws(8).uniforms(5).tolist() != NumpyDraws(9).uniforms(5).tolist()
    assert {NumpyDraws(seed).randint(5) for seed in range(200)} == {0, 1, 2, 3, 4}


def test_xoshiro_vectorised_draws_are_its_scalar_stream_in_c_order():
    """uniforms / normals / betas / beta_gammas draw element by element in C order (beta then
    gamma per element), as the compiled kernels consume the stream."""
    a = np.array([[0.5, 2.0], [30.0, 1.0]])
    b = np.array([[1.0, 3.0], [400.0, 1.0]])
    shape = np.array([[2.5, 0.3], [1.0, 40.0]])
    vec, one = Xoshiro(21), Xoshiro(21)
    assert vec.uniforms((2, 3)).ravel().tolist() == [one.uniform() for _ in range(6)]
    assert vec.normals(4).tolist() == [one.normal() for _ in range(4)]
    assert vec.betas(a, b).ravel().tolist() == [one.beta(x, y) for x, y in
                                                zip(a.ravel(), b.ravel(), strict=True)]
    be, ga = vec.beta_gammas(a, b, shape)
    pairs = [(one.beta(x, y), one.gamma(k))
             for x, y, k in zip(a.ravel(), b.ravel(), shape.ravel(), strict=True)]
    assert list(zip(be.ravel().tolist(), ga.ravel().tolist(), strict=True)) == pairs
    assert vec.s == one.s  # both consumed exactly the same draws


def _bits(words) -> np.ndarray:
    return np.array([(int(w) >> b) & 1 for w in words for b in range(64)], dtype=np.float64)


@pytest.mark.slow
def test_jump_equals_2_pow_128_steps():
    """The transition is linear over GF(2): build its 256 x 256 matrix, square it 128 times
    and compare with the jump polynomial (one jump = 2**128 draws)."""
    columns = []
    for j in range(256):
        gen = Xoshiro(state=np.array([(1 << (j % 64)) if j // 64 == i else 0 for i in range(4)],
                                     dtype=np.uint64))
        gen.next_u64()
        columns.append(_bits(gen.s))
    t = np.array(columns).T
    for _ in range(128):
        t = (t @ t) % 2
    state = seed_state(2024)
    expected = (t @ _bits(state)) % 2
    assert np.array_equal(_bits(jump_state(state)), expected)
    assert [int(w) for w in jump_state(state)] == _jump_once([int(w) for w in state])
    assert np.array_equal(jump_state(state, 3), jump_state(jump_state(state), 2))
    assert np.array_equal(state, seed_state(2024)), "the argument is left alone"
