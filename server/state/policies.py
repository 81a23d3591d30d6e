"""Maps the proto ``Policy`` to a kernel module and its float64 parameter vector.

Defaults for unset optional parameters and their valid ranges live here, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels import POLICIES
from banditd.server.errors import InvalidArgument

# (name, default, check, description of the valid range)
_POSITIVE = (lambda x: x > 0, "> 0")
_NON_NEGATIVE = (lambda x: x >= 0, ">= 0")
_UNIT = (lambda x: 0 <= x <= 1, "in [0, 1]")

PARAMETERS: dict[str, tuple[tuple[str, float, tuple], ...]] = {
    "thompson": (
        ("alpha", 1.0, _POSITIVE),
        ("beta", 1.0, _POSITIVE),
        ("value_prior_mean", 1.0, _POSITIVE),
        ("value_prior_strength", 1.0, _POSITIVE),
    ),
    "ucb1": (("c", math.sqrt(2.0), _NON_NEGATIVE),),
    "epsilon_greedy": (("epsilon", 0.1, _UNIT), ("decay", 0.0, _NON_NEGATIVE)),
    "lin_ucb": (("alpha", 1.0, _NON_NEGATIVE), ("ridge", 1.0, _POSITIVE)),
    "lin_thompson": (("v", 1.0, _POSITIVE), ("ridge", 1.0, _POSITIVE)),
}

REWARD_TYPE_NAMES = {
    pb.REWARD_TYPE_BINARY: "binary",
    pb.REWARD_TYPE_VALUE: "value",
    pb.REWARD_TYPE_CONTINUOUS: "continuous",
}


@dataclass(frozen=True)
class PolicySpec:
    """A validated policy: which kernel runs it and with which parameters."""

    kind: str  # the proto oneof name
    kernel: ModuleType
    params: np.ndarray  # float64, in kernel.PARAM_NAMES order

    @property
    def contextual(self) -> bool:
        return bool(self.kernel.CONTEXTUAL)


def resolve_policy(policy: pb.Policy, reward_type: int, context_dim: int) -> PolicySpec:
    """Validate ``policy`` (filling defaults into it, in place) and pick its kernel."""
    kind = policy.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(
            "experiment.policy: set exactly one of thompson, ucb1, epsilon_greedy, "
            "lin_ucb, lin_thompson", field="experiment.policy"
        )
    message = getattr(policy, kind)
    values: dict[str, float] = {}
    for name, default, (check, rule) in PARAMETERS[kind]:
        value = getattr(message, name) if message.HasField(name) else default
        if not math.isfinite(value) or not check(value):
            raise InvalidArgument(f"experiment.policy.{kind}.{name} must be {rule}, got {value}",
                                  field=f"experiment.policy.{kind}.{name}")
        setattr(message, name, value)  # report the effective value back
        values[name] = value

    kernel_name = kind
    if kind == "thompson":
        if reward_type == pb.REWARD_TYPE_VALUE:
            kernel_name = "thompson_value"
        elif reward_type != pb.REWARD_TYPE_BINARY:
            raise InvalidArgument(
                "experiment.policy.thompson supports reward_type REWARD_TYPE_BINARY or "
                "REWARD_TYPE_VALUE; use ucb1 or epsilon_greedy for continuous rewards",
                field="experiment.reward_type"
            )
    kernel = POLICIES[kernel_name]
    if kernel.CONTEXTUAL and context_dim == 0:
        raise InvalidArgument(f"experiment.context_dim must be > 0 for policy {kind}",
                              field="experiment.context_dim")
    if not kernel.CONTEXTUAL and context_dim != 0:
        raise InvalidArgument(
            f"experiment.context_dim must be 0 for non-contextual policy {kind}, got {context_dim}",
            field="experiment.context_dim"
        )
    params = np.array([values[name] for name in kernel.PARAM_NAMES], dtype=np.float64)
    return PolicySpec(kind=kind, kernel=kernel, params=params)
