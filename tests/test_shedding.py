"""Load shedding: past BANDITD_MAX_CONCURRENT_RPCS calls in progress, a call is answered
RESOURCE_EXHAUSTED at once instead of waiting in a queue; the server goes on serving."""

from __future__ import annotations

import asyncio

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import make_experiment, running_server


def test_calls_past_the_bound_are_refused_at_once(tmp_path):
    bound = 4
    with running_server(tmp_path, max_concurrent_rpcs=bound) as server:
        target = f"127.0.0.1:{server.port}"

        async def main() -> list[str]:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.DecisionServiceStub(channel)
                await stub.CreateExperiment(pb.CreateExperimentRequest(
                    experiment=make_experiment("shed", arms=[f"a{i}" for i in range(100)])))
                # Monte-Carlo allocations run off the event loop: many are in progress at once
                slow = pb.GetAllocationRequest(experiment_id="shed", num_draws=100_000, seed=1)

                async def one() -> str:
                    try:
                        await stub.GetAllocation(slow, timeout=120)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                        assert "limit" in exc.details()
                        return exc.code().name
                    return "OK"

                outcomes = await asyncio.gather(*(one() for _ in range(32)))
                # below the bound again: served as before
                after = await stub.GetExperiment(pb.GetExperimentRequest(experiment_id="shed"))
                assert after.experiment_id == "shed"
                return list(outcomes)

        outcomes = asyncio.run(main())
    assert outcomes.count("OK") >= bound
    assert outcomes.count("RESOURCE_EXHAUSTED") >= 1
    assert outcomes.count("OK") + outcomes.count("RESOURCE_EXHAUSTED") == 32
