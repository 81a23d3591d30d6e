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
REWARD_TYPE_UNSPECIFIED: RewardType
REWARD_TYPE_BINARY: RewardType
REWARD_TYPE_VALUE: RewardType
REWARD_TYPE_CONTINUOUS: RewardType

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
    __slots__ = ("experiment_id", "arms", "policy", "context_dim", "reward_type", "seed", "exploration_floor", "min_selections", "discount")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    REWARD_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    MIN_SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    policy: Policy
    context_dim: int
    reward_type: RewardType
    seed: int
    exploration_floor: float
    min_selections: int
    discount: float
    def __init__(self, experiment_id: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., context_dim: _Optional[int] = ..., reward_type: _Optional[_Union[RewardType, str]] = ..., seed: _Optional[int] = ..., exploration_floor: _Optional[float] = ..., min_selections: _Optional[int] = ..., discount: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("arm_id", "selections", "rewards", "reward_sum", "mean_reward")
    ARM_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SUM_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    arm_id: str
    selections: int
    rewards: int
    reward_sum: float
    mean_reward: float
    def __init__(self, arm_id: _Optional[str] = ..., selections: _Optional[int] = ..., rewards: _Optional[int] = ..., reward_sum: _Optional[float] = ..., mean_reward: _Optional[float] = ...) -> None: ...

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
