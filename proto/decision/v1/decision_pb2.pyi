import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RewardType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_TYPE_UNSPECIFIED: _ClassVar[RewardType]
    REWARD_TYPE_BINARY: _ClassVar[RewardType]
    REWARD_TYPE_VALUE: _ClassVar[RewardType]
    REWARD_TYPE_CONTINUOUS: _ClassVar[RewardType]

class AllocationStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOCATION_STRATEGY_UNSPECIFIED: _ClassVar[AllocationStrategy]
    ALLOCATION_STRATEGY_EQUAL: _ClassVar[AllocationStrategy]
    ALLOCATION_STRATEGY_PERFORMANCE_BASED: _ClassVar[AllocationStrategy]
    ALLOCATION_STRATEGY_ROAS_OPTIMIZED: _ClassVar[AllocationStrategy]
    ALLOCATION_STRATEGY_CPA_OPTIMIZED: _ClassVar[AllocationStrategy]
    ALLOCATION_STRATEGY_THOMPSON: _ClassVar[AllocationStrategy]

class PacingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACING_MODE_UNSPECIFIED: _ClassVar[PacingMode]
    PACING_MODE_SMOOTH: _ClassVar[PacingMode]
    PACING_MODE_EVEN: _ClassVar[PacingMode]
    PACING_MODE_ASAP: _ClassVar[PacingMode]

class PaceReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACE_REASON_UNSPECIFIED: _ClassVar[PaceReason]
    PACE_REASON_PACED: _ClassVar[PaceReason]
    PACE_REASON_THROTTLED: _ClassVar[PaceReason]
    PACE_REASON_PAUSED: _ClassVar[PaceReason]
    PACE_REASON_BUDGET_EXHAUSTED: _ClassVar[PaceReason]
    PACE_REASON_BUDGET_RESERVED: _ClassVar[PaceReason]
    PACE_REASON_CAPPED: _ClassVar[PaceReason]
    PACE_REASON_ZERO_BASE_BID: _ClassVar[PaceReason]
    PACE_REASON_SLOWING_DOWN: _ClassVar[PaceReason]

class RewardStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_STATUS_UNSPECIFIED: _ClassVar[RewardStatus]
    REWARD_STATUS_PENDING: _ClassVar[RewardStatus]
    REWARD_STATUS_REWARDED: _ClassVar[RewardStatus]
    REWARD_STATUS_DEFAULT: _ClassVar[RewardStatus]
    REWARD_STATUS_LATE: _ClassVar[RewardStatus]
REWARD_TYPE_UNSPECIFIED: RewardType
REWARD_TYPE_BINARY: RewardType
REWARD_TYPE_VALUE: RewardType
REWARD_TYPE_CONTINUOUS: RewardType
ALLOCATION_STRATEGY_UNSPECIFIED: AllocationStrategy
ALLOCATION_STRATEGY_EQUAL: AllocationStrategy
ALLOCATION_STRATEGY_PERFORMANCE_BASED: AllocationStrategy
ALLOCATION_STRATEGY_ROAS_OPTIMIZED: AllocationStrategy
ALLOCATION_STRATEGY_CPA_OPTIMIZED: AllocationStrategy
ALLOCATION_STRATEGY_THOMPSON: AllocationStrategy
PACING_MODE_UNSPECIFIED: PacingMode
PACING_MODE_SMOOTH: PacingMode
PACING_MODE_EVEN: PacingMode
PACING_MODE_ASAP: PacingMode
PACE_REASON_UNSPECIFIED: PaceReason
PACE_REASON_PACED: PaceReason
PACE_REASON_THROTTLED: PaceReason
PACE_REASON_PAUSED: PaceReason
PACE_REASON_BUDGET_EXHAUSTED: PaceReason
PACE_REASON_BUDGET_RESERVED: PaceReason
PACE_REASON_CAPPED: PaceReason
PACE_REASON_ZERO_BASE_BID: PaceReason
PACE_REASON_SLOWING_DOWN: PaceReason
REWARD_STATUS_UNSPECIFIED: RewardStatus
REWARD_STATUS_PENDING: RewardStatus
REWARD_STATUS_REWARDED: RewardStatus
REWARD_STATUS_DEFAULT: RewardStatus
REWARD_STATUS_LATE: RewardStatus

class Arm(_message.Message):
    __slots__ = ("arm_id",)
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    arm_id: str
    def __init__(self, arm_id: _Optional[str] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("thompson", "ucb1", "epsilon_greedy", "lin_ucb", "lin_thompson")
    class Thompson(_message.Message):
        __slots__ = ("alpha", "beta", "value_prior_mean", "value_prior_strength")
        ALPHA_FIELD_NUMBER: _ClassVar[int]
        BETA_FIELD_NUMBER: _ClassVar[int]
        VALUE_PRIOR_MEAN_FIELD_NUMBER: _ClassVar[int]
        VALUE_PRIOR_STRENGTH_FIELD_NUMBER: _ClassVar[int]
        alpha: float
        beta: float
        value_prior_mean: float
        value_prior_strength: float
        def __init__(self, alpha: _Optional[float] = ..., beta: _Optional[float] = ..., value_prior_mean: _Optional[float] = ..., value_prior_strength: _Optional[float] = ...) -> None: ...
    class Ucb1(_message.Message):
        __slots__ = ("c",)
        C_FIELD_NUMBER: _ClassVar[int]
        c: float
        def __init__(self, c: _Optional[float] = ...) -> None: ...
    class EpsilonGreedy(_message.Message):
        __slots__ = ("epsilon", "decay")
        EPSILON_FIELD_NUMBER: _ClassVar[int]
        DECAY_FIELD_NUMBER: _ClassVar[int]
        epsilon: float
        decay: float
        def __init__(self, epsilon: _Optional[float] = ..., decay: _Optional[float] = ...) -> None: ...
    class LinUcb(_message.Message):
        __slots__ = ("alpha", "ridge")
        ALPHA_FIELD_NUMBER: _ClassVar[int]
        RIDGE_FIELD_NUMBER: _ClassVar[int]
        alpha: float
        ridge: float
        def __init__(self, alpha: _Optional[float] = ..., ridge: _Optional[float] = ...) -> None: ...
    class LinThompson(_message.Message):
        __slots__ = ("v", "ridge")
        V_FIELD_NUMBER: _ClassVar[int]
        RIDGE_FIELD_NUMBER: _ClassVar[int]
        v: float
        ridge: float
        def __init__(self, v: _Optional[float] = ..., ridge: _Optional[float] = ...) -> None: ...
    THOMPSON_FIELD_NUMBER: _ClassVar[int]
    UCB1_FIELD_NUMBER: _ClassVar[int]
    EPSILON_GREEDY_FIELD_NUMBER: _ClassVar[int]
    LIN_UCB_FIELD_NUMBER: _ClassVar[int]
    LIN_THOMPSON_FIELD_NUMBER: _ClassVar[int]
    thompson: Policy.Thompson
    ucb1: Policy.Ucb1
    epsilon_greedy: Policy.EpsilonGreedy
    lin_ucb: Policy.LinUcb
    lin_thompson: Policy.LinThompson
    def __init__(self, thompson: _Optional[_Union[Policy.Thompson, _Mapping]] = ..., ucb1: _Optional[_Union[Policy.Ucb1, _Mapping]] = ..., epsilon_greedy: _Optional[_Union[Policy.EpsilonGreedy, _Mapping]] = ..., lin_ucb: _Optional[_Union[Policy.LinUcb, _Mapping]] = ..., lin_thompson: _Optional[_Union[Policy.LinThompson, _Mapping]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("experiment_id", "arms", "policy", "context_dim", "reward_type", "seed", "exploration_floor", "min_selections", "discount", "reward_wait_seconds", "default_reward")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    REWARD_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    MIN_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    REWARD_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REWARD_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    policy: Policy
    context_dim: int
    reward_type: RewardType
    seed: int
    exploration_floor: float
    min_selections: int
    discount: float
    reward_wait_seconds: float
    default_reward: float
    def __init__(self, experiment_id: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., context_dim: _Optional[int] = ..., reward_type: _Optional[_Union[RewardType, str]] = ..., seed: _Optional[int] = ..., exploration_floor: _Optional[float] = ..., min_selections: _Optional[int] = ..., discount: _Optional[float] = ..., reward_wait_seconds: _Optional[float] = ..., default_reward: _Optional[float] = ...) -> None: ...

class CreateExperimentRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "next_page_token")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    next_page_token: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteExperimentRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class DeleteExperimentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateArmsRequest(_message.Message):
    __slots__ = ("experiment_id", "add_arm_ids", "remove_arm_ids")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    add_arm_ids: _containers.RepeatedScalarFieldContainer[str]
    remove_arm_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment_id: _Optional[str] = ..., add_arm_ids: _Optional[_Iterable[str]] = ..., remove_arm_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateArmsResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class SelectArmRequest(_message.Message):
    __slots__ = ("experiment_id", "eligible_arm_ids", "context", "num_arms")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_ARMS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    eligible_arm_ids: _containers.RepeatedScalarFieldContainer[str]
    context: _containers.RepeatedScalarFieldContainer[float]
    num_arms: int
    def __init__(self, experiment_id: _Optional[str] = ..., eligible_arm_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Iterable[float]] = ..., num_arms: _Optional[int] = ...) -> None: ...

class SelectArmResponse(_message.Message):
    __slots__ = ("decision_id", "arm_id", "propensity", "ranked_arm_ids", "model_version")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    RANKED_ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    arm_id: str
    propensity: float
    ranked_arm_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: int
    def __init__(self, decision_id: _Optional[str] = ..., arm_id: _Optional[str] = ..., propensity: _Optional[float] = ..., ranked_arm_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class BatchSelectArmsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SelectArmRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SelectArmRequest, _Mapping]]] = ...) -> None: ...

class BatchSelectArmsResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SelectArmResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SelectArmResponse, _Mapping]]] = ...) -> None: ...

class RecordRewardRequest(_message.Message):
    __slots__ = ("experiment_id", "decision_id", "arm_id", "context", "reward")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    decision_id: str
    arm_id: str
    context: _containers.RepeatedScalarFieldContainer[float]
    reward: float
    def __init__(self, experiment_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., arm_id: _Optional[str] = ..., context: _Optional[_Iterable[float]] = ..., reward: _Optional[float] = ...) -> None: ...

class RecordRewardResponse(_message.Message):
    __slots__ = ("duplicate", "late")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    late: bool
    def __init__(self, duplicate: _Optional[bool] = ..., late: _Optional[bool] = ...) -> None: ...

class BatchRecordRewardsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecordRewardRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecordRewardRequest, _Mapping]]] = ...) -> None: ...

class BatchRecordRewardsResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecordRewardResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecordRewardResponse, _Mapping]]] = ...) -> None: ...

class GetArmStatsRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class ArmStats(_message.Message):
    __slots__ = ("arm_id", "selections", "rewards", "reward_sum", "mean_reward", "trials", "successes", "conversion_rate", "revenue_per_event", "posterior_alpha", "posterior_beta", "value_posterior_shape", "value_posterior_rate", "score", "probability_best")
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SUM_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_PER_EVENT_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_ALPHA_FIELD_NUMBER: _ClassVar[int]
    POSTERIOR_BETA_FIELD_NUMBER: _ClassVar[int]
    VALUE_POSTERIOR_SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_POSTERIOR_RATE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_BEST_FIELD_NUMBER: _ClassVar[int]
    arm_id: str
    selections: int
    rewards: int
    reward_sum: float
    mean_reward: float
    trials: float
    successes: float
    conversion_rate: float
    revenue_per_event: float
    posterior_alpha: float
    posterior_beta: float
    value_posterior_shape: float
    value_posterior_rate: float
    score: float
    probability_best: float
    def __init__(self, arm_id: _Optional[str] = ..., selections: _Optional[int] = ..., rewards: _Optional[int] = ..., reward_sum: _Optional[float] = ..., mean_reward: _Optional[float] = ..., trials: _Optional[float] = ..., successes: _Optional[float] = ..., conversion_rate: _Optional[float] = ..., revenue_per_event: _Optional[float] = ..., posterior_alpha: _Optional[float] = ..., posterior_beta: _Optional[float] = ..., value_posterior_shape: _Optional[float] = ..., value_posterior_rate: _Optional[float] = ..., score: _Optional[float] = ..., probability_best: _Optional[float] = ...) -> None: ...

class GetArmStatsResponse(_message.Message):
    __slots__ = ("arms", "model_version")
    ARMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    arms: _containers.RepeatedCompositeFieldContainer[ArmStats]
    model_version: int
    def __init__(self, arms: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ResetExperimentRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class ResetExperimentResponse(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ArmMetrics(_message.Message):
    __slots__ = ("arm_id", "trials", "successes", "value")
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    arm_id: str
    trials: float
    successes: float
    value: float
    def __init__(self, arm_id: _Optional[str] = ..., trials: _Optional[float] = ..., successes: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class IngestMetricsRequest(_message.Message):
    __slots__ = ("experiment_id", "period", "metrics")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    period: str
    metrics: _containers.RepeatedCompositeFieldContainer[ArmMetrics]
    def __init__(self, experiment_id: _Optional[str] = ..., period: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[ArmMetrics, _Mapping]]] = ...) -> None: ...

class IngestMetricsResponse(_message.Message):
    __slots__ = ("replaced_arms", "new_arms")
    REPLACED_ARMS_FIELD_NUMBER: _ClassVar[int]
    NEW_ARMS_FIELD_NUMBER: _ClassVar[int]
    replaced_arms: int
    new_arms: int
    def __init__(self, replaced_arms: _Optional[int] = ..., new_arms: _Optional[int] = ...) -> None: ...

class GetAllocationRequest(_message.Message):
    __slots__ = ("experiment_id", "num_draws", "seed", "min_percentage")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAWS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MIN_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    num_draws: int
    seed: int
    min_percentage: float
    def __init__(self, experiment_id: _Optional[str] = ..., num_draws: _Optional[int] = ..., seed: _Optional[int] = ..., min_percentage: _Optional[float] = ...) -> None: ...

class ArmAllocation(_message.Message):
    __slots__ = ("arm_id", "percentage")
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    arm_id: str
    percentage: float
    def __init__(self, arm_id: _Optional[str] = ..., percentage: _Optional[float] = ...) -> None: ...

class GetAllocationResponse(_message.Message):
    __slots__ = ("allocations", "next_period")
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PERIOD_FIELD_NUMBER: _ClassVar[int]
    allocations: _containers.RepeatedCompositeFieldContainer[ArmAllocation]
    next_period: str
    def __init__(self, allocations: _Optional[_Iterable[_Union[ArmAllocation, _Mapping]]] = ..., next_period: _Optional[str] = ...) -> None: ...

class AdGroup(_message.Message):
    __slots__ = ("id", "spend", "impressions", "clicks", "conversions", "revenue", "roas", "ctr", "conversion_rate")
    ID_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    ROAS_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    spend: float
    impressions: float
    clicks: float
    conversions: float
    revenue: float
    roas: float
    ctr: float
    conversion_rate: float
    def __init__(self, id: _Optional[str] = ..., spend: _Optional[float] = ..., impressions: _Optional[float] = ..., clicks: _Optional[float] = ..., conversions: _Optional[float] = ..., revenue: _Optional[float] = ..., roas: _Optional[float] = ..., ctr: _Optional[float] = ..., conversion_rate: _Optional[float] = ...) -> None: ...

class AllocateBudgetRequest(_message.Message):
    __slots__ = ("total_budget", "ad_groups", "strategy", "min_allocation", "max_allocation", "seed", "num_draws")
    TOTAL_BUDGET_FIELD_NUMBER: _ClassVar[int]
    AD_GROUPS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MIN_ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    MAX_ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAWS_FIELD_NUMBER: _ClassVar[int]
    total_budget: float
    ad_groups: _containers.RepeatedCompositeFieldContainer[AdGroup]
    strategy: AllocationStrategy
    min_allocation: float
    max_allocation: float
    seed: int
    num_draws: int
    def __init__(self, total_budget: _Optional[float] = ..., ad_groups: _Optional[_Iterable[_Union[AdGroup, _Mapping]]] = ..., strategy: _Optional[_Union[AllocationStrategy, str]] = ..., min_allocation: _Optional[float] = ..., max_allocation: _Optional[float] = ..., seed: _Optional[int] = ..., num_draws: _Optional[int] = ...) -> None: ...

class GroupAllocation(_message.Message):
    __slots__ = ("id", "amount", "share")
    ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    id: str
    amount: float
    share: float
    def __init__(self, id: _Optional[str] = ..., amount: _Optional[float] = ..., share: _Optional[float] = ...) -> None: ...

class AllocateBudgetResponse(_message.Message):
    __slots__ = ("allocations",)
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    allocations: _containers.RepeatedCompositeFieldContainer[GroupAllocation]
    def __init__(self, allocations: _Optional[_Iterable[_Union[GroupAllocation, _Mapping]]] = ...) -> None: ...

class Campaign(_message.Message):
    __slots__ = ("campaign_id", "daily_budget", "max_bid", "bid_cap_fraction", "time_zone", "paused", "pacing_mode", "reservation_ttl_seconds", "hourly_weights", "seed")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    DAILY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_BID_FIELD_NUMBER: _ClassVar[int]
    BID_CAP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PACING_MODE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HOURLY_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    daily_budget: float
    max_bid: float
    bid_cap_fraction: float
    time_zone: str
    paused: bool
    pacing_mode: PacingMode
    reservation_ttl_seconds: float
    hourly_weights: _containers.RepeatedScalarFieldContainer[float]
    seed: int
    def __init__(self, campaign_id: _Optional[str] = ..., daily_budget: _Optional[float] = ..., max_bid: _Optional[float] = ..., bid_cap_fraction: _Optional[float] = ..., time_zone: _Optional[str] = ..., paused: _Optional[bool] = ..., pacing_mode: _Optional[_Union[PacingMode, str]] = ..., reservation_ttl_seconds: _Optional[float] = ..., hourly_weights: _Optional[_Iterable[float]] = ..., seed: _Optional[int] = ...) -> None: ...

class CreateCampaignRequest(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class UpdateCampaignRequest(_message.Message):
    __slots__ = ("campaign", "update_mask")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class GetPacingStatusRequest(_message.Message):
    __slots__ = ("campaign_id", "event_time")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, campaign_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PacingStatus(_message.Message):
    __slots__ = ("campaign_id", "spent", "reserved", "remaining", "utilization", "pacing_multiplier", "day", "hourly_plan", "planned_spend", "open_reservations", "campaign", "days_learned", "participation_rate")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    PACING_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    HOURLY_PLAN_FIELD_NUMBER: _ClassVar[int]
    PLANNED_SPEND_FIELD_NUMBER: _ClassVar[int]
    OPEN_RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEARNED_FIELD_NUMBER: _ClassVar[int]
    PARTICIPATION_RATE_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    spent: float
    reserved: float
    remaining: float
    utilization: float
    pacing_multiplier: float
    day: str
    hourly_plan: _containers.RepeatedScalarFieldContainer[float]
    planned_spend: float
    open_reservations: int
    campaign: Campaign
    days_learned: int
    participation_rate: float
    def __init__(self, campaign_id: _Optional[str] = ..., spent: _Optional[float] = ..., reserved: _Optional[float] = ..., remaining: _Optional[float] = ..., utilization: _Optional[float] = ..., pacing_multiplier: _Optional[float] = ..., day: _Optional[str] = ..., hourly_plan: _Optional[_Iterable[float]] = ..., planned_spend: _Optional[float] = ..., open_reservations: _Optional[int] = ..., campaign: _Optional[_Union[Campaign, _Mapping]] = ..., days_learned: _Optional[int] = ..., participation_rate: _Optional[float] = ...) -> None: ...

class PaceBidRequest(_message.Message):
    __slots__ = ("campaign_id", "base_bid", "event_time")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_BID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    base_bid: float
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, campaign_id: _Optional[str] = ..., base_bid: _Optional[float] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PaceBidResponse(_message.Message):
    __slots__ = ("bid", "pacing_multiplier", "bid_id", "reason", "reason_code", "participation_rate")
    BID_FIELD_NUMBER: _ClassVar[int]
    PACING_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    BID_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPATION_RATE_FIELD_NUMBER: _ClassVar[int]
    bid: float
    pacing_multiplier: float
    bid_id: str
    reason: str
    reason_code: PaceReason
    participation_rate: float
    def __init__(self, bid: _Optional[float] = ..., pacing_multiplier: _Optional[float] = ..., bid_id: _Optional[str] = ..., reason: _Optional[str] = ..., reason_code: _Optional[_Union[PaceReason, str]] = ..., participation_rate: _Optional[float] = ...) -> None: ...

class RecordSpendRequest(_message.Message):
    __slots__ = ("campaign_id", "bid_id", "won", "cost", "event_time", "conversions")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    BID_ID_FIELD_NUMBER: _ClassVar[int]
    WON_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    bid_id: str
    won: bool
    cost: float
    event_time: _timestamp_pb2.Timestamp
    conversions: float
    def __init__(self, campaign_id: _Optional[str] = ..., bid_id: _Optional[str] = ..., won: _Optional[bool] = ..., cost: _Optional[float] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., conversions: _Optional[float] = ...) -> None: ...

class RecordSpendResponse(_message.Message):
    __slots__ = ("duplicate", "charged", "capped")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    charged: float
    capped: bool
    def __init__(self, duplicate: _Optional[bool] = ..., charged: _Optional[float] = ..., capped: _Optional[bool] = ...) -> None: ...

class ExportDecisionsRequest(_message.Message):
    __slots__ = ("experiment_id", "start_time", "end_time")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, experiment_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DecisionRow(_message.Message):
    __slots__ = ("decision_id", "time", "arm_ids", "propensity", "model_version", "context", "reward_status", "reward", "rewarded_arm_id")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REWARD_STATUS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    REWARDED_ARM_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    time: _timestamp_pb2.Timestamp
    arm_ids: _containers.RepeatedScalarFieldContainer[str]
    propensity: float
    model_version: int
    context: _containers.RepeatedScalarFieldContainer[float]
    reward_status: RewardStatus
    reward: float
    rewarded_arm_id: str
    def __init__(self, decision_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., arm_ids: _Optional[_Iterable[str]] = ..., propensity: _Optional[float] = ..., model_version: _Optional[int] = ..., context: _Optional[_Iterable[float]] = ..., reward_status: _Optional[_Union[RewardStatus, str]] = ..., reward: _Optional[float] = ..., rewarded_arm_id: _Optional[str] = ...) -> None: ...

class ExportDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionRow]
    def __init__(self, decisions: _Optional[_Iterable[_Union[DecisionRow, _Mapping]]] = ...) -> None: ...

class EvaluatePolicyRequest(_message.Message):
    __slots__ = ("experiment_id", "policy", "num_bootstrap", "seed")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NUM_BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    policy: Policy
    num_bootstrap: int
    seed: int
    def __init__(self, experiment_id: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., num_bootstrap: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class PolicyEstimate(_message.Message):
    __slots__ = ("value", "ci_low", "ci_high")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    value: float
    ci_low: float
    ci_high: float
    def __init__(self, value: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ...) -> None: ...

class EvaluatePolicyResponse(_message.Message):
    __slots__ = ("decisions", "ips", "snips", "doubly_robust", "logging_policy", "effective_sample_size", "max_weight", "candidate_shares")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    SNIPS_FIELD_NUMBER: _ClassVar[int]
    DOUBLY_ROBUST_FIELD_NUMBER: _ClassVar[int]
    LOGGING_POLICY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SHARES_FIELD_NUMBER: _ClassVar[int]
    decisions: int
    ips: PolicyEstimate
    snips: PolicyEstimate
    doubly_robust: PolicyEstimate
    logging_policy: PolicyEstimate
    effective_sample_size: float
    max_weight: float
    candidate_shares: _containers.RepeatedCompositeFieldContainer[ArmShare]
    def __init__(self, decisions: _Optional[int] = ..., ips: _Optional[_Union[PolicyEstimate, _Mapping]] = ..., snips: _Optional[_Union[PolicyEstimate, _Mapping]] = ..., doubly_robust: _Optional[_Union[PolicyEstimate, _Mapping]] = ..., logging_policy: _Optional[_Union[PolicyEstimate, _Mapping]] = ..., effective_sample_size: _Optional[float] = ..., max_weight: _Optional[float] = ..., candidate_shares: _Optional[_Iterable[_Union[ArmShare, _Mapping]]] = ...) -> None: ...

class ArmShare(_message.Message):
    __slots__ = ("arm_id", "share")
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    arm_id: str
    share: float
    def __init__(self, arm_id: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...
