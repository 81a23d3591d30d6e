"""50 concurrent clients sending rewards produce exactly the expected counts."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import create

CLIENTS = 50
PER_CLIENT = 60


@pytest.mark.slow
def test_fifty_concurrent_clients_exact_counts(server, stub, new_id):
    eid = new_id()
    arms = [f"arm{i}" for i in range(7)]
    create(stub, eid, arms=arms)

    async def client(n: int, expected: dict) -> None:
        rnd = random.Random(n)
        # every client has its own channel: 50 real HTTP/2 connections
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            s = pb_grpc.DecisionServiceStub(ch)
            for i in range(PER_CLIENT):
                d = await s.SelectArm(pb.SelectArmRequest(experiment_id=eid))
                reward = float(rnd.random() < 0.3)
                req = pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id, reward=reward)
                first = await s.RecordReward(req)
                assert not first.duplicate
                if i % 5 == 0:  # a client retry: acknowledged, not counted
                    assert (await s.RecordReward(req)).duplicate
                if i % 7 == 0:  # a reward by explicit arm, no decision
                    await s.RecordReward(pb.RecordRewardRequest(experiment_id=eid, arm_id="arm0", reward=1))
                    expected["arm0"][0] += 1
                    expected["arm0"][1] += 1.0
                expected[d.arm_id][0] += 1
                expected[d.arm_id][1] += reward
                expected[d.arm_id][2] += 1

    async def main() -> list[dict]:
        per_client = [{a: [0, 0.0, 0] for a in arms} for _ in range(CLIENTS)]
        await asyncio.gather(*(client(n, per_client[n]) for n in range(CLIENTS)))
        return per_client

    per_client = asyncio.run(main())
    stats = {a.arm_id: a for a in stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid)).arms}
    for arm in arms:
        rewards = sum(c[arm][0] for c in per_client)
        total = sum(c[arm][1] for c in per_client)
        selections = sum(c[arm][2] for c in per_client)
        assert stats[arm].rewards == rewards
        assert stats[arm].reward_sum == total
        assert stats[arm].selections == selections
    assert sum(a.selections for a in stats.values()) == CLIENTS * PER_CLIENT
