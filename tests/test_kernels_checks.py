"""state.checks against its NumPy reference, on the values that matter (NaN, ±inf, the
bound itself, just beyond it) and on random arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from banditd.server.state.checks import first_out_of_range, first_out_of_range_reference

BOUND = 1e12
EDGES = [0.0, -0.0, 1.0, BOUND, -BOUND, math.nextafter(BOUND, math.inf), -1e300, math.nan,
         math.inf, -math.inf]


@pytest.mark.parametrize("value", EDGES)
@pytest.mark.parametrize("position", [0, 3, 15])
def test_first_out_of_range_at_each_position(value, position):
    values = np.zeros(16)
    values[position] = value
    expected = -1 if abs(value) <= BOUND else position
    assert first_out_of_range(values, BOUND) == expected
    assert first_out_of_range_reference(values, BOUND) == expected


def test_first_out_of_range_finds_the_first_of_several():
    values = np.array([1.0, math.inf, 2.0, math.nan, 1e13])
    assert first_out_of_range(values, BOUND) == 1
    assert first_out_of_range(values[2:], BOUND) == 1
    assert first_out_of_range(np.empty(0), BOUND) == -1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(arrays(np.float64, st.integers(0, 40),
              elements=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(EDGES)),
       st.sampled_from([0.0, 1.0, BOUND]))
def test_first_out_of_range_matches_the_reference(values, bound):
    assert first_out_of_range(values, bound) == first_out_of_range_reference(values, bound)
