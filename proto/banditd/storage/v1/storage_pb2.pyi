from banditd.decision.v1 import decision_pb2 as _decision_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WalRecord(_message.Message):
    __slots__ = ("create_experiment", "delete_experiment", "update_arms", "reset_experiment", "ingest_metrics", "rewards", "decisions", "campaign", "campaign_state", "reservation", "spend", "decision_table", "reward_table", "decision_block", "campaign_day", "pace", "create_campaign", "default_rewards", "audit")
    CREATE_EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    DELETE_EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ARMS_FIELD_NUMBER: _ClassVar[int]
    RESET_EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    INGEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_STATE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    DECISION_TABLE_FIELD_NUMBER: _ClassVar[int]
    REWARD_TABLE_FIELD_NUMBER: _ClassVar[int]
    DECISION_BLOCK_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_DAY_FIELD_NUMBER: _ClassVar[int]
    PACE_FIELD_NUMBER: _ClassVar[int]
    CREATE_CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REWARDS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    create_experiment: _decision_pb2.Experiment
    delete_experiment: DeleteExperiment
    update_arms: _decision_pb2.UpdateArmsRequest
    reset_experiment: ResetExperiment
    ingest_metrics: _decision_pb2.IngestMetricsRequest
    rewards: Rewards
    decisions: Decisions
    campaign: _decision_pb2.Campaign
    campaign_state: CampaignState
    reservation: BidReservation
    spend: SpendSettlement
    decision_table: DecisionTable
    reward_table: RewardTable
    decision_block: DecisionBlock
    campaign_day: CampaignDay
    pace: PaceEvent
    create_campaign: _decision_pb2.Campaign
    default_rewards: DefaultRewards
    audit: Audit
    def __init__(self, create_experiment: _Optional[_Union[_decision_pb2.Experiment, _Mapping]] = ..., delete_experiment: _Optional[_Union[DeleteExperiment, _Mapping]] = ..., update_arms: _Optional[_Union[_decision_pb2.UpdateArmsRequest, _Mapping]] = ..., reset_experiment: _Optional[_Union[ResetExperiment, _Mapping]] = ..., ingest_metrics: _Optional[_Union[_decision_pb2.IngestMetricsRequest, _Mapping]] = ..., rewards: _Optional[_Union[Rewards, _Mapping]] = ..., decisions: _Optional[_Union[Decisions, _Mapping]] = ..., campaign: _Optional[_Union[_decision_pb2.Campaign, _Mapping]] = ..., campaign_state: _Optional[_Union[CampaignState, _Mapping]] = ..., reservation: _Optional[_Union[BidReservation, _Mapping]] = ..., spend: _Optional[_Union[SpendSettlement, _Mapping]] = ..., decision_table: _Optional[_Union[DecisionTable, _Mapping]] = ..., reward_table: _Optional[_Union[RewardTable, _Mapping]] = ..., decision_block: _Optional[_Union[DecisionBlock, _Mapping]] = ..., campaign_day: _Optional[_Union[CampaignDay, _Mapping]] = ..., pace: _Optional[_Union[PaceEvent, _Mapping]] = ..., create_campaign: _Optional[_Union[_decision_pb2.Campaign, _Mapping]] = ..., default_rewards: _Optional[_Union[DefaultRewards, _Mapping]] = ..., audit: _Optional[_Union[Audit, _Mapping]] = ...) -> None: ...

class Audit(_message.Message):
    __slots__ = ("time", "token_name", "peer", "rpc", "ids")
    TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    time: float
    token_name: str
    peer: str
    rpc: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, time: _Optional[float] = ..., token_name: _Optional[str] = ..., peer: _Optional[str] = ..., rpc: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteExperiment(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class ResetExperiment(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("experiment_id", "arm_id", "reward", "context", "decision_id", "tombstone")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONE_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    arm_id: str
    reward: float
    context: _containers.RepeatedScalarFieldContainer[float]
    decision_id: str
    tombstone: bool
    def __init__(self, experiment_id: _Optional[str] = ..., arm_id: _Optional[str] = ..., reward: _Optional[float] = ..., context: _Optional[_Iterable[float]] = ..., decision_id: _Optional[str] = ..., tombstone: _Optional[bool] = ...) -> None: ...

class RewardTable(_message.Message):
    __slots__ = ("experiment_ids", "arm_ids", "rewards", "context_sizes", "contexts", "decision_ids", "tombstones", "created", "corrections", "corrected_arm_ids")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SIZES_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    DECISION_IDS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CORRECTIONS_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    arm_ids: _containers.RepeatedScalarFieldContainer[str]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    context_sizes: _containers.RepeatedScalarFieldContainer[int]
    contexts: _containers.RepeatedScalarFieldContainer[float]
    decision_ids: _containers.RepeatedScalarFieldContainer[str]
    tombstones: _containers.RepeatedScalarFieldContainer[bool]
    created: float
    corrections: _containers.RepeatedScalarFieldContainer[int]
    corrected_arm_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., arm_ids: _Optional[_Iterable[str]] = ..., rewards: _Optional[_Iterable[float]] = ..., context_sizes: _Optional[_Iterable[int]] = ..., contexts: _Optional[_Iterable[float]] = ..., decision_ids: _Optional[_Iterable[str]] = ..., tombstones: _Optional[_Iterable[bool]] = ..., created: _Optional[float] = ..., corrections: _Optional[_Iterable[int]] = ..., corrected_arm_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Rewards(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Reward]
    def __init__(self, items: _Optional[_Iterable[_Union[Reward, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "experiment_uid", "arm_ids", "context", "propensity", "model_version", "created", "rewarded", "has_context", "experiment_id")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_UID_FIELD_NUMBER: _ClassVar[int]
    ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REWARDED_FIELD_NUMBER: _ClassVar[int]
    HAS_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    experiment_uid: int
    arm_ids: _containers.RepeatedScalarFieldContainer[str]
    context: _containers.RepeatedScalarFieldContainer[float]
    propensity: float
    model_version: int
    created: float
    rewarded: bool
    has_context: bool
    experiment_id: str
    def __init__(self, decision_id: _Optional[str] = ..., experiment_uid: _Optional[int] = ..., arm_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Iterable[float]] = ..., propensity: _Optional[float] = ..., model_version: _Optional[int] = ..., created: _Optional[float] = ..., rewarded: _Optional[bool] = ..., has_context: _Optional[bool] = ..., experiment_id: _Optional[str] = ...) -> None: ...

class Decisions(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, items: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class Array(_message.Message):
    __slots__ = ("shape", "dtype", "data", "offset", "length")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    offset: int
    length: int
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class PeriodMetrics(_message.Message):
    __slots__ = ("period", "metrics")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    period: str
    metrics: _containers.RepeatedCompositeFieldContainer[_decision_pb2.ArmMetrics]
    def __init__(self, period: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[_decision_pb2.ArmMetrics, _Mapping]]] = ...) -> None: ...

class ExperimentState(_message.Message):
    __slots__ = ("config", "uid", "version", "state", "selections", "rewards", "reward_sum", "positives", "ingested", "rng", "periods")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SUM_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    INGESTED_FIELD_NUMBER: _ClassVar[int]
    RNG_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    config: _decision_pb2.Experiment
    uid: int
    version: int
    state: _containers.RepeatedCompositeFieldContainer[Array]
    selections: Array
    rewards: Array
    reward_sum: Array
    positives: Array
    ingested: Array
    rng: Array
    periods: _containers.RepeatedCompositeFieldContainer[PeriodMetrics]
    def __init__(self, config: _Optional[_Union[_decision_pb2.Experiment, _Mapping]] = ..., uid: _Optional[int] = ..., version: _Optional[int] = ..., state: _Optional[_Iterable[_Union[Array, _Mapping]]] = ..., selections: _Optional[_Union[Array, _Mapping]] = ..., rewards: _Optional[_Union[Array, _Mapping]] = ..., reward_sum: _Optional[_Union[Array, _Mapping]] = ..., positives: _Optional[_Union[Array, _Mapping]] = ..., ingested: _Optional[_Union[Array, _Mapping]] = ..., rng: _Optional[_Union[Array, _Mapping]] = ..., periods: _Optional[_Iterable[_Union[PeriodMetrics, _Mapping]]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("format_version", "lsn", "created", "next_uid", "experiments", "decisions", "campaigns", "audit")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_UID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    lsn: int
    created: float
    next_uid: int
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentState]
    decisions: DecisionTable
    campaigns: _containers.RepeatedCompositeFieldContainer[CampaignState]
    audit: _containers.RepeatedCompositeFieldContainer[Audit]
    def __init__(self, format_version: _Optional[int] = ..., lsn: _Optional[int] = ..., created: _Optional[float] = ..., next_uid: _Optional[int] = ..., experiments: _Optional[_Iterable[_Union[ExperimentState, _Mapping]]] = ..., decisions: _Optional[_Union[DecisionTable, _Mapping]] = ..., campaigns: _Optional[_Iterable[_Union[CampaignState, _Mapping]]] = ..., audit: _Optional[_Iterable[_Union[Audit, _Mapping]]] = ...) -> None: ...

class CampaignState(_message.Message):
    __slots__ = ("config", "day", "plan", "history", "today", "multiplier", "control_time", "control_spent", "ledgers", "reservations", "closed", "days_learned", "multiplier_sum", "multiplier_count", "control_bids", "participation", "bids", "control_win_threshold")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TODAY_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CONTROL_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTROL_SPENT_FIELD_NUMBER: _ClassVar[int]
    LEDGERS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEARNED_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_SUM_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_BIDS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPATION_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_WIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    config: _decision_pb2.Campaign
    day: str
    plan: _containers.RepeatedScalarFieldContainer[float]
    history: _containers.RepeatedScalarFieldContainer[float]
    today: _containers.RepeatedScalarFieldContainer[float]
    multiplier: float
    control_time: float
    control_spent: int
    ledgers: _containers.RepeatedCompositeFieldContainer[DayLedger]
    reservations: _containers.RepeatedCompositeFieldContainer[BidReservation]
    closed: _containers.RepeatedCompositeFieldContainer[ClosedBid]
    days_learned: int
    multiplier_sum: float
    multiplier_count: int
    control_bids: int
    participation: float
    bids: int
    control_win_threshold: float
    def __init__(self, config: _Optional[_Union[_decision_pb2.Campaign, _Mapping]] = ..., day: _Optional[str] = ..., plan: _Optional[_Iterable[float]] = ..., history: _Optional[_Iterable[float]] = ..., today: _Optional[_Iterable[float]] = ..., multiplier: _Optional[float] = ..., control_time: _Optional[float] = ..., control_spent: _Optional[int] = ..., ledgers: _Optional[_Iterable[_Union[DayLedger, _Mapping]]] = ..., reservations: _Optional[_Iterable[_Union[BidReservation, _Mapping]]] = ..., closed: _Optional[_Iterable[_Union[ClosedBid, _Mapping]]] = ..., days_learned: _Optional[int] = ..., multiplier_sum: _Optional[float] = ..., multiplier_count: _Optional[int] = ..., control_bids: _Optional[int] = ..., participation: _Optional[float] = ..., bids: _Optional[int] = ..., control_win_threshold: _Optional[float] = ...) -> None: ...

class DayLedger(_message.Message):
    __slots__ = ("day", "spent_micros", "reserved_micros")
    DAY_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MICROS_FIELD_NUMBER: _ClassVar[int]
    day: str
    spent_micros: int
    reserved_micros: int
    def __init__(self, day: _Optional[str] = ..., spent_micros: _Optional[int] = ..., reserved_micros: _Optional[int] = ...) -> None: ...

class BidReservation(_message.Message):
    __slots__ = ("campaign_id", "bid_id", "day", "amount_micros", "expires", "slot", "event_time", "multiplier", "base_micros")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    BID_ID_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    BASE_MICROS_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    bid_id: str
    day: str
    amount_micros: int
    expires: float
    slot: int
    event_time: float
    multiplier: float
    base_micros: int
    def __init__(self, campaign_id: _Optional[str] = ..., bid_id: _Optional[str] = ..., day: _Optional[str] = ..., amount_micros: _Optional[int] = ..., expires: _Optional[float] = ..., slot: _Optional[int] = ..., event_time: _Optional[float] = ..., multiplier: _Optional[float] = ..., base_micros: _Optional[int] = ...) -> None: ...

class SpendSettlement(_message.Message):
    __slots__ = ("campaign_id", "bid_id", "won", "charged_micros", "conversions", "event_time")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    BID_ID_FIELD_NUMBER: _ClassVar[int]
    WON_FIELD_NUMBER: _ClassVar[int]
    CHARGED_MICROS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    bid_id: str
    won: bool
    charged_micros: int
    conversions: float
    event_time: float
    def __init__(self, campaign_id: _Optional[str] = ..., bid_id: _Optional[str] = ..., won: _Optional[bool] = ..., charged_micros: _Optional[int] = ..., conversions: _Optional[float] = ..., event_time: _Optional[float] = ...) -> None: ...

class ClosedBid(_message.Message):
    __slots__ = ("bid_id", "expired")
    BID_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    bid_id: str
    expired: bool
    def __init__(self, bid_id: _Optional[str] = ..., expired: _Optional[bool] = ...) -> None: ...

class DecisionBlock(_message.Message):
    __slots__ = ("experiment_id", "experiment_uid", "id_prefix", "first_counter", "count", "slate_size", "arm_ids", "arm_positions", "propensities", "model_version", "created", "context_dim", "contexts")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_UID_FIELD_NUMBER: _ClassVar[int]
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FIRST_COUNTER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SLATE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    ARM_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    experiment_uid: int
    id_prefix: str
    first_counter: int
    count: int
    slate_size: int
    arm_ids: _containers.RepeatedScalarFieldContainer[str]
    arm_positions: bytes
    propensities: bytes
    model_version: int
    created: float
    context_dim: int
    contexts: bytes
    def __init__(self, experiment_id: _Optional[str] = ..., experiment_uid: _Optional[int] = ..., id_prefix: _Optional[str] = ..., first_counter: _Optional[int] = ..., count: _Optional[int] = ..., slate_size: _Optional[int] = ..., arm_ids: _Optional[_Iterable[str]] = ..., arm_positions: _Optional[bytes] = ..., propensities: _Optional[bytes] = ..., model_version: _Optional[int] = ..., created: _Optional[float] = ..., context_dim: _Optional[int] = ..., contexts: _Optional[bytes] = ...) -> None: ...

class DecisionTable(_message.Message):
    __slots__ = ("decision_ids", "experiment_uids", "slate_sizes", "arm_ids", "propensities", "model_versions", "created", "rewarded", "context_sizes", "contexts", "experiment_ids", "defaulted", "rewards", "reward_slots")
    DECISION_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_UIDS_FIELD_NUMBER: _ClassVar[int]
    SLATE_SIZES_FIELD_NUMBER: _ClassVar[int]
    ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    PROPENSITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REWARDED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SIZES_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTED_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SLOTS_FIELD_NUMBER: _ClassVar[int]
    decision_ids: _containers.RepeatedScalarFieldContainer[str]
    experiment_uids: _containers.RepeatedScalarFieldContainer[int]
    slate_sizes: _containers.RepeatedScalarFieldContainer[int]
    arm_ids: _containers.RepeatedScalarFieldContainer[str]
    propensities: _containers.RepeatedScalarFieldContainer[float]
    model_versions: _containers.RepeatedScalarFieldContainer[int]
    created: _containers.RepeatedScalarFieldContainer[float]
    rewarded: _containers.RepeatedScalarFieldContainer[bool]
    context_sizes: _containers.RepeatedScalarFieldContainer[int]
    contexts: _containers.RepeatedScalarFieldContainer[float]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    defaulted: _containers.RepeatedScalarFieldContainer[bool]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    reward_slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, decision_ids: _Optional[_Iterable[str]] = ..., experiment_uids: _Optional[_Iterable[int]] = ..., slate_sizes: _Optional[_Iterable[int]] = ..., arm_ids: _Optional[_Iterable[str]] = ..., propensities: _Optional[_Iterable[float]] = ..., model_versions: _Optional[_Iterable[int]] = ..., created: _Optional[_Iterable[float]] = ..., rewarded: _Optional[_Iterable[bool]] = ..., context_sizes: _Optional[_Iterable[int]] = ..., contexts: _Optional[_Iterable[float]] = ..., experiment_ids: _Optional[_Iterable[str]] = ..., defaulted: _Optional[_Iterable[bool]] = ..., rewards: _Optional[_Iterable[float]] = ..., reward_slots: _Optional[_Iterable[int]] = ...) -> None: ...

class CampaignDay(_message.Message):
    __slots__ = ("campaign_id", "day", "event_time")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    day: str
    event_time: float
    def __init__(self, campaign_id: _Optional[str] = ..., day: _Optional[str] = ..., event_time: _Optional[float] = ...) -> None: ...

class PaceEvent(_message.Message):
    __slots__ = ("campaign_id", "event_time", "slot", "multiplier", "control", "bid_id", "amount_micros", "expires", "participation", "throttled", "base_micros")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    BID_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    PARTICIPATION_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    BASE_MICROS_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    event_time: float
    slot: int
    multiplier: float
    control: bool
    bid_id: str
    amount_micros: int
    expires: float
    participation: float
    throttled: bool
    base_micros: int
    def __init__(self, campaign_id: _Optional[str] = ..., event_time: _Optional[float] = ..., slot: _Optional[int] = ..., multiplier: _Optional[float] = ..., control: _Optional[bool] = ..., bid_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., expires: _Optional[float] = ..., participation: _Optional[float] = ..., throttled: _Optional[bool] = ..., base_micros: _Optional[int] = ...) -> None: ...

class DefaultRewards(_message.Message):
    __slots__ = ("experiment_id", "experiment_uid", "reward", "created", "count", "arm_ids", "arm_positions", "context_dim", "contexts", "id_prefixes", "id_issuers", "id_counters")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_UID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ARM_IDS_FIELD_NUMBER: _ClassVar[int]
    ARM_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    ID_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    ID_ISSUERS_FIELD_NUMBER: _ClassVar[int]
    ID_COUNTERS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    experiment_uid: int
    reward: float
    created: float
    count: int
    arm_ids: _containers.RepeatedScalarFieldContainer[str]
    arm_positions: bytes
    context_dim: int
    contexts: bytes
    id_prefixes: _containers.RepeatedScalarFieldContainer[str]
    id_issuers: bytes
    id_counters: bytes
    def __init__(self, experiment_id: _Optional[str] = ..., experiment_uid: _Optional[int] = ..., reward: _Optional[float] = ..., created: _Optional[float] = ..., count: _Optional[int] = ..., arm_ids: _Optional[_Iterable[str]] = ..., arm_positions: _Optional[bytes] = ..., context_dim: _Optional[int] = ..., contexts: _Optional[bytes] = ..., id_prefixes: _Optional[_Iterable[str]] = ..., id_issuers: _Optional[bytes] = ..., id_counters: _Optional[bytes] = ...) -> None: ...
