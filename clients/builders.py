"""Request builders shared by the sync and asyncio clients (plain Python in, proto out)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import field_mask_pb2, timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb

REWARD_TYPES = {
    "binary": pb.REWARD_TYPE_BINARY,
    "value": pb.REWARD_TYPE_VALUE,
    "continuous": pb.REWARD_TYPE_CONTINUOUS,
}
POLICY_MESSAGES = {
    "thompson": pb.Policy.Thompson,
    "ucb1": pb.Policy.Ucb1,
    "epsilon_greedy": pb.Policy.EpsilonGreedy,
    "lin_ucb": pb.Policy.LinUcb,
    "lin_thompson": pb.Policy.LinThompson,
}


def policy(name: str, **params: float) -> pb.Policy:
    """``policy("thompson", alpha=1, beta=1)``; unset parameters take server defaults."""
    if name not in POLICY_MESSAGES:
        raise ValueError(f"unknown policy {name!r}; one of {', '.join(POLICY_MESSAGES)}")
    return pb.Policy(**{name: POLICY_MESSAGES[name](**params)})


def create_experiment(
    experiment_id: str,
    arm_ids: Iterable[str],
    policy_name: str = "thompson",
    *,
    reward_type: str = "binary",
    context_dim: int = 0,
    seed: int | None = None,
    exploration_floor: float = 0.0,
    min_selections: int = 0,
    discount: float | None = None,
    **params: float,
) -> pb.CreateExperimentRequest:
    if reward_type not in REWARD_TYPES:
        raise ValueError(f"unknown reward_type {reward_type!r}; one of {', '.join(REWARD_TYPES)}")
    experiment = pb.Experiment(
        experiment_id=experiment_id,
        arms=[pb.Arm(arm_id=a) for a in arm_ids],
        policy=policy(policy_name, **params),
        context_dim=context_dim,
        reward_type=REWARD_TYPES[reward_type],
        exploration_floor=exploration_floor,
        min_selections=min_selections,
    )
    if seed is not None:
        experiment.seed = seed
    if discount is not None:
        experiment.discount = discount
    return pb.CreateExperimentRequest(experiment=experiment)


def select_arm(
    experiment_id: str,
    eligible_arm_ids: Sequence[str] = (),
    context: Sequence[float] = (),
    num_arms: int = 0,
) -> pb.SelectArmRequest:
    return pb.SelectArmRequest(
        experiment_id=experiment_id,
        eligible_arm_ids=eligible_arm_ids,
        context=context,
        num_arms=num_arms,
    )


def record_reward(
    experiment_id: str,
    reward: float,
    decision_id: str = "",
    arm_id: str = "",
    context: Sequence[float] = (),
) -> pb.RecordRewardRequest:
    return pb.RecordRewardRequest(
        experiment_id=experiment_id,
        decision_id=decision_id,
        arm_id=arm_id,
        context=context,
        reward=reward,
    )


def update_arms(
    experiment_id: str, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> pb.UpdateArmsRequest:
    return pb.UpdateArmsRequest(
        experiment_id=experiment_id, add_arm_ids=add, remove_arm_ids=remove
    )


STRATEGIES = {
    "equal": pb.ALLOCATION_STRATEGY_EQUAL,
    "performance_based": pb.ALLOCATION_STRATEGY_PERFORMANCE_BASED,
    "roas_optimized": pb.ALLOCATION_STRATEGY_ROAS_OPTIMIZED,
    "cpa_optimized": pb.ALLOCATION_STRATEGY_CPA_OPTIMIZED,
    "thompson": pb.ALLOCATION_STRATEGY_THOMPSON,
}


def ingest_metrics(
    experiment_id: str, period: str, metrics: Mapping[str, Sequence[float]]
) -> pb.IngestMetricsRequest:
    """``metrics``: arm_id -> (trials, successes) or (trials, successes, value)."""
    rows = []
    for arm_id, values in metrics.items():
        trials, successes, *rest = values
        rows.append(pb.ArmMetrics(arm_id=arm_id, trials=trials, successes=successes,
                                  value=rest[0] if rest else 0.0))
    return pb.IngestMetricsRequest(experiment_id=experiment_id, period=period, metrics=rows)


def get_allocation(
    experiment_id: str,
    num_draws: int | None = None,
    seed: int | None = None,
    min_percentage: float = 0.0,
) -> pb.GetAllocationRequest:
    request = pb.GetAllocationRequest(experiment_id=experiment_id, min_percentage=min_percentage)
    if num_draws is not None:
        request.num_draws = num_draws
    if seed is not None:
        request.seed = seed
    return request


def _ad_group(fields: Mapping[str, float | str]) -> pb.AdGroup:
    group = pb.AdGroup()
    for name, value in fields.items():
        setattr(group, name, value)  # an unknown name raises AttributeError, as AdGroup(**g)
    return group


def allocate_budget(
    total_budget: float,
    ad_groups: Sequence[Mapping[str, float | str]],
    strategy: str,
    *,
    min_allocation: float | None = None,
    max_allocation: float | None = None,
    seed: int | None = None,
    num_draws: int | None = None,
) -> pb.AllocateBudgetRequest:
    """``ad_groups``: dicts with ``id`` and any of spend, impressions, clicks, conversions,
    revenue, roas, ctr, conversion_rate."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    request = pb.AllocateBudgetRequest(
        total_budget=total_budget,
        ad_groups=[_ad_group(g) for g in ad_groups],
        strategy=STRATEGIES[strategy],
    )
    for name, value in (("min_allocation", min_allocation), ("max_allocation", max_allocation),
                        ("seed", seed), ("num_draws", num_draws)):
        if value is not None:
            setattr(request, name, value)
    return request


_PACING_MODES = {"smooth": pb.PACING_MODE_SMOOTH, "even": pb.PACING_MODE_EVEN,
                 "asap": pb.PACING_MODE_ASAP}


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """Seconds since the epoch -> google.protobuf.Timestamp."""
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(round(seconds * 1e9)))
    return t


def at_event_time(request: Any, seconds: float | None) -> Any:
    """``request`` with its ``event_time`` set to ``seconds`` since the epoch (None: left unset,
    the server's clock is used)."""
    if seconds is not None:
        request.event_time.CopyFrom(timestamp(seconds))
    return request


def campaign(campaign_id: str, **fields: Any) -> pb.Campaign:
    """A Campaign; ``pacing_mode`` may be "smooth", "even" or "asap"."""
    mode = fields.pop("pacing_mode", None)
    if isinstance(mode, str):
        if mode not in _PACING_MODES:
            raise ValueError(f"pacing_mode {mode!r}: one of {', '.join(_PACING_MODES)}")
        mode = _PACING_MODES[mode]
    if mode is not None:
        fields["pacing_mode"] = mode
    return pb.Campaign(campaign_id=campaign_id, **fields)


def update_campaign(campaign_id: str, **fields: Any) -> pb.UpdateCampaignRequest:
    """UpdateCampaign changing exactly ``fields`` (their names form the update_mask)."""
    if not fields:
        raise ValueError("name at least one field to change")
    return pb.UpdateCampaignRequest(
        campaign=campaign(campaign_id, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=sorted(fields)))
