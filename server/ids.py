"""The ids clients choose (experiments, campaigns, arms) and their checks."""

from __future__ import annotations

import re

from banditd.server.errors import InvalidArgument, shown

EXPERIMENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_ARM_ID_LENGTH = 256
MAX_DECISION_ID_LENGTH = 128


def check_experiment_id(experiment_id: str, field: str = "experiment_id") -> None:
    if not EXPERIMENT_ID.fullmatch(experiment_id):
        raise InvalidArgument(
            f"{field} {shown(experiment_id)} must be 1-128 characters of letters, digits "
            "and ._:-", field=field
        )


def check_decision_id(decision_id: str, field: str = "decision_id") -> None:
    if len(decision_id) > MAX_DECISION_ID_LENGTH:
        raise InvalidArgument(f"{field} has {len(decision_id):,} characters, at most "
                              f"{MAX_DECISION_ID_LENGTH}", field=field)


def check_new_arm_ids(arm_ids, field: str) -> None:
    seen: set[str] = set()
    for i, arm_id in enumerate(arm_ids):
        if not arm_id:
            raise InvalidArgument(f"{field}[{i}] is empty", field=f"{field}[{i}]")
        if len(arm_id) > MAX_ARM_ID_LENGTH:
            raise InvalidArgument(f"{field}[{i}] is longer than {MAX_ARM_ID_LENGTH} characters",
                                  field=f"{field}[{i}]")
        if arm_id in seen:
            raise InvalidArgument(f"{field}[{i}]: duplicate arm id {shown(arm_id)}",
                                  field=f"{field}[{i}]")
        seen.add(arm_id)
