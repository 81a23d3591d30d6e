"""The decision log, read: ExportDecisions (server streaming) and EvaluatePolicy.

Both read the decisions the decision store holds for an experiment's current incarnation (the
newest ``decision_capacity`` within ``decision_ttl_seconds``), copied at once on the event loop,
so a request sees one instant of the log; EvaluatePolicy's arithmetic then runs off the loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import cast

import numpy as np
from google.protobuf import timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.core import Core
from banditd.server.api.warmup import ALLOCATION
from banditd.server.errors import FailedPrecondition, InvalidArgument
from banditd.server.state import evaluation
from banditd.server.state.decision_store import DecisionColumns
from banditd.server.state.experiment import Experiment
from banditd.server.state.policies import resolve_policy

EXPORT_ROWS = 1000  # decisions per ExportDecisions message
DEFAULT_BOOTSTRAP = 1000
MAX_BOOTSTRAP = 10_000
MIN_BOOTSTRAP = 100


def _seconds(request, field: str, unset: float) -> float:
    """A request's Timestamp field in seconds since the epoch (``unset`` when not set)."""
    if not request.HasField(field):
        return unset
    ts = getattr(request, field)
    if not (0 <= ts.seconds < 7_258_118_400 and 0 <= ts.nanos < 1_000_000_000):  # < 2200
        raise InvalidArgument(
            f"{field} must be between 1970 and 2200, got {ts.seconds} s {ts.nanos} ns",
            field=field)
    return ts.seconds + ts.nanos * 1e-9


def _status(rewarded: bool, defaulted: bool) -> pb.RewardStatus:
    if rewarded:
        return pb.REWARD_STATUS_LATE if defaulted else pb.REWARD_STATUS_REWARDED
    return pb.REWARD_STATUS_DEFAULT if defaulted else pb.REWARD_STATUS_PENDING


def export_rows(cols: DecisionColumns, start: int, stop: int) -> list[pb.DecisionRow]:
    """Rows ``start .. stop-1`` of ``cols`` (from :meth:`DecisionStore.decisions_of`) as
    ``DecisionRow`` messages."""
    assert cols.ids is not None and cols.defaulted is not None
    assert cols.rewards is not None and cols.reward_slots is not None
    out = []
    for i in range(start, stop):
        created = float(cols.created[i])
        seconds = math.floor(created)
        rewarded, defaulted = bool(cols.rewarded[i]), bool(cols.defaulted[i])
        slate = cols.slates[i]
        slot = int(cols.reward_slots[i])
        row = pb.DecisionRow(
            decision_id=cols.ids[i],
            time=timestamp_pb2.Timestamp(seconds=seconds,
                                         nanos=min(int((created - seconds) * 1e9), 999_999_999)),
            arm_ids=slate, propensity=float(cols.propensities[i]),
            model_version=int(cols.versions[i]), reward_status=_status(rewarded, defaulted))
        context = cols.contexts[i]
        if context is not None:
            row.context.extend(context.tolist())
        if rewarded or defaulted:
            row.reward = float(cols.rewards[i])
            row.rewarded_arm_id = slate[slot] if 0 <= slot < len(slate) else slate[0]
        out.append(row)
    return out


class DecisionLogHandlers:
    RPCS = ("ExportDecisions", "EvaluatePolicy")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.experiments = core.state.experiments
        self.store = core.state.store

    async def ExportDecisions(self, request: pb.ExportDecisionsRequest, context
                              ) -> AsyncIterator[pb.ExportDecisionsResponse]:
        experiment = self.experiments.get(request.experiment_id)
        start = _seconds(request, "start_time", -math.inf)
        end = _seconds(request, "end_time", math.inf)
        if start >= end:
            raise InvalidArgument(f"start_time ({start:.6f}) must be before end_time "
                                  f"({end:.6f})", field="start_time")
        cols = self.store.decisions_of(experiment.uid, start, end)
        for first in range(0, len(cols), EXPORT_ROWS):
            yield pb.ExportDecisionsResponse(
                decisions=export_rows(cols, first, min(len(cols), first + EXPORT_ROWS)))

    async def EvaluatePolicy(self, request: pb.EvaluatePolicyRequest, context
                             ) -> pb.EvaluatePolicyResponse:
        experiment = self.experiments.get(request.experiment_id)
        if not request.HasField("policy"):
            raise InvalidArgument("policy is required: the candidate policy to evaluate",
                                  field="policy")
        candidate = pb.Policy()
        candidate.CopyFrom(request.policy)
        kind = candidate.WhichOneof("kind")
        linear = kind in ("lin_ucb", "lin_thompson")
        if linear and not experiment.context_dim:
            raise InvalidArgument(f"policy.{kind} needs a contextual experiment; experiment "
                                  f"'{experiment.experiment_id}' has context_dim 0",
                                  field=f"policy.{kind}")
        spec = resolve_policy(candidate, experiment.reward_type,
                              experiment.context_dim if linear else 0, "policy")
        resamples = (request.num_bootstrap if request.HasField("num_bootstrap")
                     else DEFAULT_BOOTSTRAP)
        if not MIN_BOOTSTRAP <= resamples <= MAX_BOOTSTRAP:
            raise InvalidArgument(f"num_bootstrap must be in [{MIN_BOOTSTRAP}, "
                                  f"{MAX_BOOTSTRAP}], got {resamples}", field="num_bootstrap")
        seed = request.seed if request.HasField("seed") else int(experiment.config.seed)
        if kind == "thompson":  # its probabilities come from the allocation kernels
            await self.core.kernels.ensure(ALLOCATION)
            experiment = self.experiments.get(request.experiment_id)  # may have changed since
        arms, propensities, rewards, contexts = _logged(experiment, self.store.decisions_of(
            experiment.uid, -math.inf, math.inf))
        if not len(arms):
            raise FailedPrecondition(
                f"experiment '{experiment.experiment_id}' holds no settled decisions (rewarded, "
                "or settled with the default reward) to evaluate on")
        state = evaluation.candidate_state(
            spec, experiment.state, experiment.spec, experiment.rewards.astype(np.float64),
            experiment.positives.astype(np.float64), experiment.reward_sum.copy(),
            experiment.ingested.copy(), experiment.reward_type, experiment.version, seed)
        k = experiment.num_arms

        def job() -> evaluation.Evaluation:
            pi = evaluation.candidate_probabilities(state, contexts)
            rhat = evaluation.reward_model(arms, rewards, contexts, k)
            return evaluation.estimate(pi, arms, propensities, rewards, rhat, resamples, seed)

        result = await asyncio.to_thread(job)

        def message(e: evaluation.Estimate) -> pb.PolicyEstimate:
            return pb.PolicyEstimate(value=e.value, ci_low=e.low, ci_high=e.high)

        return pb.EvaluatePolicyResponse(
            decisions=len(arms), ips=message(result.ips), snips=message(result.snips),
            doubly_robust=message(result.dr), logging_policy=message(result.logging),
            effective_sample_size=result.effective_sample_size, max_weight=result.max_weight,
            candidate_shares=[pb.ArmShare(arm_id=a, share=float(s))
                              for a, s in zip(experiment.arm_ids, result.shares, strict=True)])


def _logged(experiment: Experiment, cols: DecisionColumns
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The settled decisions as (logged arm positions, propensities, rewards, contexts ``(n,
    d)``): the first arm of each slate with its reward (a reward that named another arm of the
    slate leaves the first one with the default reward); decisions whose first arm was removed
    since, or whose reward was not recorded, are left out."""
    assert cols.rewards is not None and cols.reward_slots is not None
    settled = cols.rewarded | (cols.defaulted if cols.defaulted is not None else False)
    rewards = np.where(cols.reward_slots > 0, experiment.default_reward, cols.rewards)
    index = experiment.arm_index
    arms = np.array([index.get(s[0], -1) for s in cols.slates], dtype=np.int64)
    keep = np.flatnonzero(settled & (arms >= 0) & np.isfinite(rewards))
    d = experiment.context_dim
    rows = [cast(np.ndarray, cols.contexts[i]) for i in keep.tolist()]
    contexts = np.stack(rows) if d and len(keep) else np.empty((len(keep), d))
    return arms[keep], cols.propensities[keep], rewards[keep], contexts
