"""The Python client (sync and asyncio) against a real server, and its retry rules."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from banditd.clients import AsyncBanditClient, BanditClient, RetryPolicy
from helpers import free_port


def test_sync_client_full_cycle(server, new_id):
    eid = new_id()
    with BanditClient(f"127.0.0.1:{server.port}") as bandit:
        created = bandit.create_experiment(eid, ["a", "b"], "epsilon_greedy", epsilon=0.2, seed=3)
        assert created.policy.epsilon_greedy.epsilon == 0.2
        d = bandit.select_arm(eid)
        assert not bandit.record_reward(eid, 1.0, decision_id=d.decision_id).duplicate
        assert bandit.record_reward(eid, 1.0, decision_id=d.decision_id).duplicate
        stats = {a.arm_id: a for a in bandit.get_arm_stats(eid).arms}
        assert stats[d.arm_id].rewards == 1
        bandit.update_arms(eid, add=["c"])
        assert [a.arm_id for a in bandit.get_experiment(eid).arms] == ["a", "b", "c"]
        assert eid in [e.experiment_id for e in bandit.list_experiments().experiments]
        bandit.reset_experiment(eid)
        bandit.delete_experiment(eid)
        with pytest.raises(grpc.RpcError) as err:
            bandit.get_experiment(eid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_async_client_contextual_cycle(server, new_id):
    eid = new_id()

    async def main():
        async with AsyncBanditClient(f"127.0.0.1:{server.port}") as bandit:
            await bandit.create_experiment(eid, ["x", "y"], "lin_thompson", context_dim=2,
                                           reward_type="continuous", v=0.5)
            d = await bandit.select_arm(eid, context=[0.1, 0.9], num_arms=2)
            assert list(d.ranked_arm_ids) in (["x", "y"], ["y", "x"])
            await bandit.record_reward(eid, 0.7, decision_id=d.decision_id, arm_id=d.ranked_arm_ids[1])
            return await bandit.get_arm_stats(eid)

    stats = {a.arm_id: a for a in asyncio.run(main()).arms}
    assert sum(a.rewards for a in stats.values()) == 1


class _Counter(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    def intercept_unary_unary(self, continuation, details, request):
        self.calls += 1
        return continuation(details, request)


@pytest.mark.parametrize(
    "call,attempts",
    [
        (lambda c: c.get_experiment("e"), 3),
        (lambda c: c.get_arm_stats("e"), 3),
        (lambda c: c.record_reward("e", 1.0, decision_id="d1"), 3),  # deduplicated server-side
        (lambda c: c.record_reward("e", 1.0, arm_id="a"), 1),  # would count twice
        (lambda c: c.select_arm("e"), 1),  # a new decision each time
        (lambda c: c.create_experiment("e", ["a"]), 1),
    ],
    ids=["get", "stats", "reward-by-decision", "reward-by-arm", "select", "create"],
)
def test_retries_only_where_safe(call, attempts):
    counter = _Counter()
    raw = grpc.insecure_channel(f"127.0.0.1:{free_port()}")  # nothing listens: UNAVAILABLE
    client = BanditClient(channel=grpc.intercept_channel(raw, counter), timeout=2,
                          retry=RetryPolicy(attempts=3, backoff=0.001))
    with pytest.raises(grpc.RpcError) as err:
        call(client)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert counter.calls == attempts
    raw.close()


def test_unknown_policy_or_reward_type_fails_before_sending():
    client = BanditClient(f"127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="unknown policy"):
        client.create_experiment("e", ["a"], "softmax")
    with pytest.raises(ValueError, match="unknown reward_type"):
        client.create_experiment("e", ["a"], reward_type="ctr")
    client.close()
