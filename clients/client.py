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

Against a server with TLS and tokens::

    BanditClient("banditd.internal:50051", token=os.environ["BANDITD_TOKEN"],
                 root_certificates="ca.pem")            # + client_certificate / client_key
                                                        #   for mutual TLS
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
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


def _channel_options(max_message_bytes: int, server_name: str | None = None
                     ) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


PEM = bytes | str | Path  # PEM bytes, or the path of a PEM file


def _pem(value: PEM | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class Security:
    """How a client reaches a server with TLS and tokens (see :class:`BanditClient`)."""

    def __init__(self, token: str | None, tls: bool, root_certificates: PEM | None,
                 client_certificate: PEM | None, client_key: PEM | None,
                 server_name: str | None) -> None:
        if (client_certificate is None) != (client_key is None):
            raise ValueError("client_certificate and client_key go together")
        self.tls = tls or any(v is not None for v in (root_certificates, client_certificate))
        self.server_name = server_name
        self.credentials = grpc.ssl_channel_credentials(
            _pem(root_certificates), _pem(client_key), _pem(client_certificate)
        ) if self.tls else None
        # Sent with every call (on plaintext loopback too, where call credentials are refused).
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None


class BanditClient(_Methods):
    """Blocking client. ``timeout`` is the per-call deadline in seconds.

    ``token``: the bearer token sent with every call (``authorization`` metadata). TLS is on
    with ``tls=True`` or any certificate: ``root_certificates`` (PEM bytes or a file; default:
    the system's roots) verifies the server, ``client_certificate`` + ``client_key`` are
    presented for mutual TLS, ``server_name`` overrides the name the server's certificate is
    checked for (e.g. when connecting by IP address)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        token: str | None = None,
        tls: bool = False,
        root_certificates: PEM | None = None,
        client_certificate: PEM | None = None,
        client_key: PEM | None = None,
        server_name: str | None = None,
    ) -> None:
        self.security = Security(token, tls, root_certificates, client_certificate,
                                 client_key, server_name)
        self._own_channel = channel is None
        options = _channel_options(max_message_bytes, server_name)
        if channel is not None:
            self.channel = channel
        elif self.security.credentials is not None:
            self.channel = grpc.secure_channel(target, self.security.credentials,
                                                 options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def _invoke(self, method: str, request: Any) -> Any:
        call = getattr(self.stub, method)
        attempts = self.retry.attempts if _safe_to_retry(method, request) else 1
        for attempt in range(attempts):
            try:
                return call(request, timeout=self.timeout, metadata=self.security.metadata)
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
    """asyncio client (grpc.aio); every method returns an awaitable of the same type. Security
    options as for :class:`BanditClient`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        token: str | None = None,
        tls: bool = False,
        root_certificates: PEM | None = None,
        client_certificate: PEM | None = None,
        client_key: PEM | None = None,
        server_name: str | None = None,
    ) -> None:
        self.security = Security(token, tls, root_certificates, client_certificate,
                                 client_key, server_name)
        self._own_channel = channel is None
        options = _channel_options(max_message_bytes, server_name)
        if channel is not None:
            self.channel = channel
        elif self.security.credentials is not None:
            self.channel = grpc.aio.secure_channel(target, self.security.credentials,
                                                 options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    async def _invoke(self, method: str, request: Any) -> Any:  # type: ignore[override]
        call = getattr(self.stub, method)
        attempts = self.retry.attempts if _safe_to_retry(method, request) else 1
        for attempt in range(attempts):
            try:
                return await call(request, timeout=self.timeout,
                                  metadata=self.security.metadata)
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
