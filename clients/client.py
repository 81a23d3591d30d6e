"""Typed Python clients for banditd: ``BanditClient`` (sync) and ``AsyncBanditClient``.

Retries happen only where they are safe: reads (Get/List/Stats) and rewards that
carry a ``decision_id`` (the server counts a decision's reward once and answers a
retry with ``duplicate=True``). ``SelectArm``, ``CreateExperiment`` and rewards by
explicit arm are never retried: a retry could count twice.

Example::

    with BanditClient("127.0.0.1:50051") as bandit:
        bandit.create_experiment("homepage-hero", ["a", "b", "c"], "thompson", seed=7)
        decision = bandit.select_arm("homepage-hero")
        bandit.record_reward("homepage-hero", 1.0, decision_id=decision.decision_id)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from banditd.clients import builders as build
from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class RetryPolicy:
    """Exponential backoff: ``attempts`` tries, first pause ``backoff`` seconds, doubling."""

    def __init__(self, attempts: int = 3, backoff: float = 0.05) -> None:
        self.attempts = max(1, attempts)
        self.backoff = backoff

    def pause(self, attempt: int) -> float:
        return self.backoff * (2**attempt)


def _safe_to_retry(method: str, request: Any) -> bool:
    if method in ("GetExperiment", "ListExperiments", "GetArmStats", "GetAllocation",
                  "AllocateBudget", "IngestMetrics", "GetPacingStatus", "RecordSpend"):
        return True  # reads, pure, idempotent per period, or settled once per bid_id
    if method == "RecordReward":
        return bool(request.decision_id)
    if method == "BatchRecordRewards":
        return all(r.decision_id for r in request.requests)
    return False


class _Methods:
    """The RPCs as typed methods; subclasses provide ``_invoke``."""

    def _invoke(self, method: str, request: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def create_experiment(
        self, experiment_id: str, arm_ids: Sequence[str], policy: str = "thompson", **kw: Any
    ) -> pb.Experiment:
        """Create an experiment; ``kw``: reward_type, context_dim, seed, exploration_floor,
        min_selections, discount and the policy's parameters (alpha, beta, c, epsilon, ...)."""
        return self._invoke(
            "CreateExperiment", build.create_experiment(experiment_id, arm_ids, policy, **kw)
        )

    def get_experiment(self, experiment_id: str) -> pb.Experiment:
        return self._invoke("GetExperiment", pb.GetExperimentRequest(experiment_id=experiment_id))

    def list_experiments(
        self, page_size: int = 0, page_token: str = ""
    ) -> pb.ListExperimentsResponse:
        return self._invoke(
            "ListExperiments", pb.ListExperimentsRequest(page_size=page_size, page_token=page_token)
        )

    def delete_experiment(self, experiment_id: str) -> pb.DeleteExperimentResponse:
        return self._invoke(
            "DeleteExperiment", pb.DeleteExperimentRequest(experiment_id=experiment_id)
        )

    def update_arms(
        self, experiment_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> pb.UpdateArmsResponse:
        return self._invoke("UpdateArms", build.update_arms(experiment_id, add, remove))

    def reset_experiment(self, experiment_id: str) -> pb.ResetExperimentResponse:
        return self._invoke(
            "ResetExperiment", pb.ResetExperimentRequest(experiment_id=experiment_id)
        )

    def select_arm(
        self,
        experiment_id: str,
        eligible_arm_ids: Sequence[str] = (),
        context: Sequence[float] = (),
        num_arms: int = 0,
    ) -> pb.SelectArmResponse:
        return self._invoke(
            "SelectArm", build.select_arm(experiment_id, eligible_arm_ids, context, num_arms)
        )

    def batch_select_arms(
        self, requests: Sequence[pb.SelectArmRequest]
    ) -> pb.BatchSelectArmsResponse:
        return self._invoke("BatchSelectArms", pb.BatchSelectArmsRequest(requests=requests))

    def record_reward(
        self,
        experiment_id: str,
        reward: float,
        decision_id: str = "",
        arm_id: str = "",
        context: Sequence[float] = (),
    ) -> pb.RecordRewardResponse:
        return self._invoke(
            "RecordReward", build.record_reward(experiment_id, reward, decision_id, arm_id, context)
        )

    def batch_record_rewards(
        self, requests: Sequence[pb.RecordRewardRequest]
    ) -> pb.BatchRecordRewardsResponse:
        return self._invoke("BatchRecordRewards", pb.BatchRecordRewardsRequest(requests=requests))

    def get_arm_stats(self, experiment_id: str) -> pb.GetArmStatsResponse:
        return self._invoke("GetArmStats", pb.GetArmStatsRequest(experiment_id=experiment_id))

    def ingest_metrics(
        self, experiment_id: str, period: str, metrics: Mapping[str, Sequence[float]]
    ) -> pb.IngestMetricsResponse:
        """``metrics``: arm_id -> (trials, successes[, value]) for one period (e.g. a date)."""
        return self._invoke("IngestMetrics", build.ingest_metrics(experiment_id, period, metrics))

    def get_allocation(self, experiment_id: str, **kw: Any) -> pb.GetAllocationResponse:
        """``kw``: num_draws, seed, min_percentage."""
        return self._invoke("GetAllocation", build.get_allocation(experiment_id, **kw))

    def allocate_budget(
        self,
        total_budget: float,
        ad_groups: Sequence[Mapping[str, Any]],
        strategy: str = "performance_based",
        **kw: Any,
    ) -> pb.AllocateBudgetResponse:
        """``kw``: min_allocation, max_allocation, seed, num_draws."""
        return self._invoke(
            "AllocateBudget", build.allocate_budget(total_budget, ad_groups, strategy, **kw)
        )

    # -- pacing ----------------------------------------------------------------------------
    def create_campaign(self, campaign_id: str, daily_budget: float, max_bid: float,
                        **kw: Any) -> pb.Campaign:
        """``kw``: bid_cap_fraction, time_zone, paused, pacing_mode ("smooth", "even",
        "asap"), reservation_ttl_seconds."""
        return self._invoke("CreateCampaign", pb.CreateCampaignRequest(
            campaign=build.campaign(campaign_id, daily_budget=daily_budget, max_bid=max_bid,
                                    **kw)))

    def update_campaign(self, campaign_id: str, **fields: Any) -> pb.Campaign:
        """Change only the given fields (sent as the update_mask), e.g. ``paused=True``."""
        return self._invoke("UpdateCampaign", build.update_campaign(campaign_id, **fields))

    def get_pacing_status(self, campaign_id: str,
                          event_time: float | None = None) -> pb.PacingStatus:
        """``event_time``: seconds since the epoch (default: the server clock)."""
        return self._invoke("GetPacingStatus", build.at_event_time(
            pb.GetPacingStatusRequest(campaign_id=campaign_id), event_time))

    def pace_bid(self, campaign_id: str, base_bid: float,
                 event_time: float | None = None) -> pb.PaceBidResponse:
        """The paced bid for one auction (0 = skip); settle non-zero bids with record_spend."""
        return self._invoke("PaceBid", build.at_event_time(
            pb.PaceBidRequest(campaign_id=campaign_id, base_bid=base_bid), event_time))

    def record_spend(self, campaign_id: str, bid_id: str, won: bool, cost: float = 0.0,
                     conversions: float = 0.0,
                     event_time: float | None = None) -> pb.RecordSpendResponse:
        return self._invoke("RecordSpend", build.at_event_time(
            pb.RecordSpendRequest(campaign_id=campaign_id, bid_id=bid_id, won=won, cost=cost,
                                  conversions=conversions), event_time))


def _channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class BanditClient(_Methods):
    """Blocking client. ``timeout`` is the per-call deadline in seconds."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target, options=_channel_options(max_message_bytes)
        )
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def _invoke(self, method: str, request: Any) -> Any:
        call = getattr(self.stub, method)
        attempts = self.retry.attempts if _safe_to_retry(method, request) else 1
        for attempt in range(attempts):
            try:
                return call(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if attempt + 1 >= attempts or exc.code() not in RETRYABLE:
                    raise
                time.sleep(self.retry.pause(attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> BanditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncBanditClient(_Methods):
    """asyncio client (grpc.aio); every method returns an awaitable of the same type."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._own_channel = channel is None
        self.channel = channel or grpc.aio.insecure_channel(
            target, options=_channel_options(max_message_bytes)
        )
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    async def _invoke(self, method: str, request: Any) -> Any:  # type: ignore[override]
        call = getattr(self.stub, method)
        attempts = self.retry.attempts if _safe_to_retry(method, request) else 1
        for attempt in range(attempts):
            try:
                return await call(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if attempt + 1 >= attempts or exc.code() not in RETRYABLE:
                    raise
                await asyncio.sleep(self.retry.pause(attempt))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    async def __aenter__(self) -> AsyncBanditClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
