"""Fuzzing the gRPC surface with hypothesis: any request gets OK or a precise client-error
status (never INTERNAL / UNKNOWN), the server stays up, and failed requests change nothing."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banditd.decision.v1 import decision_pb2 as pb
from helpers import create

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.ALREADY_EXISTS}

ids = st.sampled_from(["fz-bin", "fz-ctx", "fz-val", "nope", "", "bad id"])
arms = st.sampled_from(["a", "b", "c", "zz", ""])
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, -1.0, 1e300])
contexts = st.lists(numbers, max_size=5)

selects = st.builds(pb.SelectArmRequest, experiment_id=ids, eligible_arm_ids=st.lists(arms, max_size=4),
                    context=contexts, num_arms=st.integers(0, 5))
rewards = st.builds(pb.RecordRewardRequest, experiment_id=ids,
                    decision_id=st.sampled_from(["", "unknown-decision"]), arm_id=arms,
                    context=contexts, reward=numbers)
ingests = st.builds(pb.IngestMetricsRequest, experiment_id=ids, period=st.sampled_from(["", "2025-01-01", "x" * 70]),
                    metrics=st.lists(st.builds(pb.ArmMetrics, arm_id=arms, trials=numbers,
                                               successes=numbers, value=numbers), max_size=3))


def _call(stub, request):
    method = {pb.SelectArmRequest: stub.SelectArm, pb.RecordRewardRequest: stub.RecordReward,
              pb.IngestMetricsRequest: stub.IngestMetrics}[type(request)]
    try:
        method(request, timeout=10)
        return None
    except grpc.RpcError as exc:
        return exc.code()


def _state(stub):
    return [stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=e)) for e in ("fz-bin", "fz-ctx", "fz-val")]


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(selects | rewards | ingests, min_size=1, max_size=5))
def test_random_requests_never_break_the_server(stub, requests):
    for eid, kw in (("fz-bin", {}),
                    ("fz-ctx", dict(policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()), context_dim=2,
                                    reward_type=pb.REWARD_TYPE_CONTINUOUS)),
                    ("fz-val", dict(reward_type=pb.REWARD_TYPE_VALUE))):
        try:
            create(stub, eid, **kw)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    for request in requests:
        before = _state(stub)
        code = _call(stub, request)
        if code is not None:
            assert code in CLIENT_ERRORS, (code, request)
            assert _state(stub) == before, request  # a failed request changes nothing
    for s in _state(stub):  # the learned state stays finite
        for a in s.arms:
            assert all(abs(v) < float("inf") for v in (a.reward_sum, a.mean_reward, a.trials))
