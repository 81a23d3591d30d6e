"""api.wire against its reference (protobuf's own serialisation of the same messages):
the bytes must be identical, for any arm ids, counters, propensities and model versions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.wire import (
    arm_field,
    encode_arm_ids,
    ranked_field,
    select_response,
    select_response_reference,
    select_responses,
    select_responses_bound,
    select_responses_reference,
)


def _written(prefix: str, first_counter: int, arms: list[int], arm_ids: list[str],
             propensity: list[float], version: int) -> bytes:
    arm_bytes, arm_starts = encode_arm_ids(arm_ids)
    raw = prefix.encode()
    out = np.empty(select_responses_bound(len(arms), len(raw),
                                          max(len(a.encode()) for a in arm_ids)), np.uint8)
    size = select_responses(np.frombuffer(raw, dtype=np.uint8), first_counter,
                            np.array(arms, dtype=np.int64), arm_bytes, arm_starts,
                            np.array(propensity, dtype=np.float64).view(np.uint8), version, out)
    return out[:size].tobytes()


@pytest.mark.parametrize("first_counter", [0, 1, 9, 10, 15, 16, 255, 256, 2**32 - 1, 2**62])
@pytest.mark.parametrize("version", [0, 1, 127, 128, 16_384, 2**40, 2**63 - 1])
def test_select_responses_at_the_edges_of_hex_and_varint_widths(first_counter, version):
    arm_ids = ["arm-0", "x" * 130, "é"]  # a 130-byte id has a 2-byte length varint
    arms = [0, 1, 2, 1]
    propensity = [0.0, 1.0, 0.25, -0.0]  # 0.0 is left out, -0.0 is not (as protobuf does)
    got = _written("a1b2c3", first_counter, arms, arm_ids, propensity, version)
    want = select_responses_reference("a1b2c3", first_counter, np.array(arms), arm_ids,
                                      np.array(propensity), version)
    assert got == want
    parsed = pb.BatchSelectArmsResponse.FromString(got).responses
    assert [r.decision_id for r in parsed] == [
        f"a1b2c3-{first_counter + i:x}" for i in range(len(arms))]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    prefix=st.text(max_size=20),
    first_counter=st.integers(0, 2**62),
    arm_ids=st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=8),
    data=st.data(),
    version=st.integers(0, 2**63 - 1),
)
def test_select_responses_equal_protobufs_bytes(prefix, first_counter, arm_ids, data, version):
    n = data.draw(st.integers(1, 30))
    arms = data.draw(st.lists(st.integers(0, len(arm_ids) - 1), min_size=n, max_size=n))
    propensity = data.draw(st.lists(st.floats(0.0, 1.0) | st.just(0.0), min_size=n, max_size=n))
    got = _written(prefix, first_counter, arms, arm_ids, propensity, version)
    assert got == select_responses_reference(prefix, first_counter, np.array(arms), arm_ids,
                                             np.array(propensity), version)


def test_encode_arm_ids_offsets():
    arm_bytes, starts = encode_arm_ids(["a", "bcd", "é"])
    assert starts.tolist() == [0, 1, 4, 6]
    assert arm_bytes.tobytes() == "abcdé".encode()


@pytest.mark.parametrize("version", [0, 1, 127, 128, 16_384, 2**40, 2**64 - 1])
@pytest.mark.parametrize("propensity", [0.0, -0.0, 1.0, 0.25, 1e-300, float("inf")])
def test_select_response_at_the_edges(version, propensity):
    """One SelectArmResponse joined from pieces: the same bytes as protobuf's, with 0.0 left
    out and -0.0 kept, a 2-byte id length past 127 bytes and every varint width."""
    for decision_id, arm_id in (("a1b2c3-1f", "arm-3"), ("x" * 130, "é" * 70), ("d", "")):
        got = select_response(decision_id, arm_field(arm_id), propensity, version)
        assert got == select_response_reference(decision_id, arm_id, propensity, version)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    decision_id=st.text(min_size=1, max_size=200),
    arm_ids=st.lists(st.text(max_size=150), min_size=1, max_size=6),
    propensity=st.floats(allow_nan=False),
    version=st.integers(0, 2**64 - 1),
    slate=st.booleans(),
)
def test_select_response_equals_protobufs_bytes(decision_id, arm_ids, propensity, version,
                                               slate):
    ranked = arm_ids if slate else []
    got = select_response(decision_id, arm_field(arm_ids[0]), propensity, version,
                          b"".join(ranked_field(a) for a in ranked))
    assert got == select_response_reference(decision_id, arm_ids[0], propensity, version,
                                            ranked)
    parsed = pb.SelectArmResponse.FromString(got)
    assert (parsed.decision_id, parsed.arm_id, list(parsed.ranked_arm_ids)) == (
        decision_id, arm_ids[0], ranked)
