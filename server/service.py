"""The DecisionService servicer: proto in, validation, one kernel call, proto out.

Everything runs on the grpc.aio event loop thread; kernels are microseconds long
and never await, so each request's validate-then-apply is atomic without locks.
"""

from __future__ import annotations

import asyncio
import time

from banditd.storage.v1 import storage_pb2 as st

from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from server import analytics
from server.budget import allocate_budget
from server.decision_store import DecisionRecord, DecisionStore
from server.durability import Durability
from server.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    grpc_errors,
)
from server.experiment import Experiment
from server.metrics import Metrics
from server.pacing import CampaignRegistry
from server.registry import ExperimentRegistry
from server.settings import Settings


class _PreparedSelect:
    __slots__ = ("experiment", "eligible", "context", "n")

    def __init__(self, experiment: Experiment, eligible, context, n: int) -> None:
        self.experiment = experiment
        self.eligible = eligible
        self.context = context
        self.n = n


class _PreparedReward:
    __slots__ = ("experiment", "arm", "reward", "context", "decision_id", "record")

    def __init__(self, experiment, arm, reward, context, decision_id, record) -> None:
        self.experiment = experiment
        self.arm = arm
        self.reward = reward
        self.context = context
        self.decision_id = decision_id
        self.record = record


def _event_time(request) -> float:
    """The request's event_time in seconds since the epoch, or the server clock."""
    if not request.HasField("event_time"):
        return time.time()
    ts = request.event_time
    if not (0 <= ts.seconds < 7_258_118_400 and 0 <= ts.nanos < 1_000_000_000):  # < 2200
        raise InvalidArgument(
            f"event_time must be between 1970 and 2200, got {ts.seconds} s {ts.nanos} ns")
    return ts.seconds + ts.nanos * 1e-9


def _in_batch(index: int, exc: DomainError) -> DomainError:
    """The same error, its message prefixed with the batch index it came from."""
    return type(exc)(f"requests[{index}]: {exc}")


@grpc_errors
class DecisionServicer(pb_grpc.DecisionServiceServicer):
    """Implements decision.v1.DecisionService over the registry and decision store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ExperimentRegistry(settings)
        self.decisions = DecisionStore(settings.decision_capacity, settings.decision_ttl_seconds)
        self.campaigns = CampaignRegistry(settings)
        self.durability = Durability(settings, self.registry, self.decisions, self.campaigns)
        # Build log records at all? Also without a log when other workers replicate them.
        self.logging = settings.durability != "snapshot" or settings.workers > 1
        self.ready = False  # set once kernels are compiled and warmed
        self.metrics = Metrics()
        self.metrics.track(lambda: len(self.registry), lambda: len(self.decisions))

    def _check_ready(self) -> None:
        if not self.ready:
            raise Unavailable("server is starting (compiling kernels); retry shortly")

    # -- experiments -------------------------------------------------------------
    async def CreateExperiment(self, request, context):
        self._check_ready()
        if not request.HasField("experiment"):
            raise InvalidArgument("experiment is required")
        config = self.registry.create(request.experiment).config
        await self._log(st.WalRecord(create_experiment=config))
        return config

    async def GetExperiment(self, request, context):
        self._check_ready()
        return self.registry.get(request.experiment_id).config

    async def ListExperiments(self, request, context):
        self._check_ready()
        experiments, token = self.registry.list_page(request.page_size, request.page_token)
        return pb.ListExperimentsResponse(
            experiments=[e.config for e in experiments], next_page_token=token
        )

    async def DeleteExperiment(self, request, context):
        self._check_ready()
        self.registry.delete(request.experiment_id)
        await self._log(st.WalRecord(
            delete_experiment=st.DeleteExperiment(experiment_id=request.experiment_id)))
        return pb.DeleteExperimentResponse()

    async def UpdateArms(self, request, context):
        self._check_ready()
        experiment = self.registry.update_arms(
            request.experiment_id, list(request.add_arm_ids), list(request.remove_arm_ids)
        )
        await self._log(st.WalRecord(update_arms=request))
        return pb.UpdateArmsResponse(experiment=experiment.config)

    async def ResetExperiment(self, request, context):
        self._check_ready()
        experiment = self.registry.reset(request.experiment_id)
        await self._log(st.WalRecord(
            reset_experiment=st.ResetExperiment(experiment_id=request.experiment_id)))
        return pb.ResetExperimentResponse(experiment=experiment.config)

    async def GetArmStats(self, request, context):
        self._check_ready()
        job = analytics.arm_stats_job(self.registry.get(request.experiment_id))
        return await asyncio.to_thread(job)  # Monte-Carlo off the event loop

    # -- decisions ---------------------------------------------------------------
    def _prepare_select(self, request) -> _PreparedSelect:
        experiment = self.registry.get(request.experiment_id)
        eligible = experiment.eligible_array(request.eligible_arm_ids)
        context = experiment.context_array(request.context)
        n = experiment.slate_size(request.num_arms, len(eligible))
        return _PreparedSelect(experiment, eligible, context, n)

    def _apply_select(
        self, p: _PreparedSelect, now: float, log: list | None
    ) -> pb.SelectArmResponse:
        experiment = p.experiment
        ranked, propensity = experiment.select(p.eligible, p.context, p.n)
        ids = experiment.arm_ids
        if p.n == 1:
            slate: tuple[str, ...] = (ids[ranked[0]],)
        else:
            slate = tuple(ids[i] for i in ranked)
        decisions = self.decisions
        decision_id = decisions.new_id()
        context = p.context if experiment.context_dim else None
        decisions.put(
            decision_id,
            DecisionRecord(experiment.uid, slate, context, propensity, experiment.version, now),
        )
        if log is not None:
            log.append(st.Decision(
                decision_id=decision_id, experiment_id=experiment.experiment_id,
                experiment_uid=experiment.uid, arm_ids=slate,
                context=context.tolist() if context is not None else (),
                has_context=context is not None, propensity=propensity,
                model_version=experiment.version, created=now,
            ))
        response = pb.SelectArmResponse(
            decision_id=decision_id,
            arm_id=slate[0],
            propensity=propensity,
            model_version=experiment.version,
        )
        if p.n > 1:
            response.ranked_arm_ids.extend(slate)
        return response

    async def SelectArm(self, request, context):
        self._check_ready()
        log: list | None = [] if self.logging else None
        response = self._apply_select(self._prepare_select(request), time.time(), log)
        self._log_decisions(log)
        return response

    async def BatchSelectArms(self, request, context):
        self._check_ready()
        items = request.requests
        self._check_batch(len(items))
        prepared = []
        for i, item in enumerate(items):
            try:
                prepared.append(self._prepare_select(item))
            except DomainError as exc:
                raise _in_batch(i, exc) from None
        now = time.time()
        log: list | None = [] if self.logging else None
        response = pb.BatchSelectArmsResponse(
            responses=[self._apply_select(p, now, log) for p in prepared]
        )
        self._log_decisions(log)
        return response

    # -- rewards -----------------------------------------------------------------
    def _prepare_reward(self, request, now: float) -> _PreparedReward:
        experiment = self.registry.get(request.experiment_id)
        reward = experiment.check_reward(request.reward)
        decision_id = request.decision_id
        record = self.decisions.get(decision_id, now) if decision_id else None
        if record is not None and record.experiment_uid != experiment.uid:
            record = None  # made before a reset, or for another experiment
        if record is not None:
            if record.rewarded:  # a retry: acknowledged as such even if the arm is gone now
                return _PreparedReward(experiment, -1, reward, None, decision_id, record)
            slate = record.arm_ids
            arm_id = request.arm_id or slate[0]
            if arm_id not in slate:
                raise InvalidArgument(
                    f"arm_id '{arm_id}' is not part of decision '{decision_id}' "
                    f"(it returned {', '.join(slate)})"
                )
            arm = experiment.arm_index.get(arm_id)
            if arm is None:  # the arm was removed since the decision
                raise NotFound(
                    f"arm '{arm_id}' of decision '{decision_id}' no longer exists in experiment "
                    f"'{experiment.experiment_id}'"
                )
            context = record.context if record.context is not None else experiment.context_array(())
            return _PreparedReward(experiment, arm, reward, context, decision_id, record)
        if not request.arm_id:
            if decision_id:
                raise NotFound(
                    f"decision '{decision_id}' not found in experiment "
                    f"'{experiment.experiment_id}' (unknown or expired); send arm_id (and "
                    "context) to record the reward without it"
                )
            raise InvalidArgument("set decision_id, or arm_id (and context) for an explicit arm")
        arm = experiment.arm_index.get(request.arm_id)
        if arm is None:
            raise NotFound(
                f"arm '{request.arm_id}' not found in experiment '{experiment.experiment_id}'"
            )
        context = experiment.context_array(request.context)
        return _PreparedReward(experiment, arm, reward, context, decision_id, None)

    def _apply_reward(
        self, p: _PreparedReward, now: float, log: list | None
    ) -> pb.RecordRewardResponse:
        record = p.record
        tombstone = False
        if record is None and p.decision_id:
            # An unknown decision rewarded by explicit arm: remember it (as already
            # rewarded) so that a retry of the same request is not counted twice. A record
            # of that id owned by another experiment (or incarnation) is left alone.
            earlier = self.decisions.get(p.decision_id, now)
            if earlier is None:
                tombstone = True
                self.decisions.put(p.decision_id, DecisionRecord(
                    p.experiment.uid, (p.experiment.arm_ids[p.arm],), None, 0.0,
                    p.experiment.version, now, rewarded=True))
            elif earlier.experiment_uid == p.experiment.uid and earlier.rewarded:
                return pb.RecordRewardResponse(duplicate=True)
        elif record is not None:
            if record.rewarded:
                return pb.RecordRewardResponse(duplicate=True)
            record.rewarded = True
        p.experiment.reward(p.arm, p.reward, p.context)
        if log is not None:
            log.append(st.Reward(
                experiment_id=p.experiment.experiment_id, arm_id=p.experiment.arm_ids[p.arm],
                reward=p.reward, context=p.context.tolist(), decision_id=p.decision_id,
                tombstone=tombstone,
            ))
        return pb.RecordRewardResponse(duplicate=False)

    async def RecordReward(self, request, context):
        self._check_ready()
        now = time.time()
        log: list | None = [] if self.logging else None
        response = self._apply_reward(self._prepare_reward(request, now), now, log)
        await self._log_rewards(log)
        return response

    async def BatchRecordRewards(self, request, context):
        self._check_ready()
        items = request.requests
        self._check_batch(len(items))
        now = time.time()
        prepared = []
        for i, item in enumerate(items):
            try:
                prepared.append(self._prepare_reward(item, now))
            except DomainError as exc:
                raise _in_batch(i, exc) from None
        log: list | None = [] if self.logging else None
        response = pb.BatchRecordRewardsResponse(
            responses=[self._apply_reward(p, now, log) for p in prepared]
        )
        await self._log_rewards(log)
        return response

    # -- analyst RPCs ------------------------------------------------------------
    async def IngestMetrics(self, request, context):
        self._check_ready()
        response = analytics.ingest(self.registry.get(request.experiment_id), request)
        await self._log(st.WalRecord(ingest_metrics=request))
        return response

    async def GetAllocation(self, request, context):
        self._check_ready()
        job = analytics.allocation_job(
            self.registry.get(request.experiment_id), request,
            self.settings.max_monte_carlo_samples,
        )
        return await asyncio.to_thread(job)  # Monte-Carlo off the event loop

    async def AllocateBudget(self, request, context):
        self._check_ready()
        split = await asyncio.to_thread(  # pure; THOMPSON runs Monte-Carlo
            allocate_budget,
            request,
            self.settings.budget_min_allocation,
            self.settings.budget_max_allocation,
            self.settings.max_monte_carlo_samples,
        )
        return pb.AllocateBudgetResponse(
            allocations=[
                pb.GroupAllocation(id=i, amount=a, share=float(s))
                for i, a, s in zip(split.ids, split.amounts, split.shares, strict=True)
            ]
        )

    # -- pacing ------------------------------------------------------------------------
    async def CreateCampaign(self, request, context):
        self._check_ready()
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign is required")
        config = self.campaigns.create(request.campaign)
        await self._log(st.WalRecord(campaign=config))
        return config

    async def UpdateCampaign(self, request, context):
        self._check_ready()
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign is required")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else None
        config = self.campaigns.update(request.campaign, paths)
        await self._log(st.WalRecord(campaign=config))
        return config

    async def GetPacingStatus(self, request, context):
        self._check_ready()
        campaign = self.campaigns.get(request.campaign_id)
        out: list = []
        status = campaign.status(_event_time(request), out)
        await self._log_all(out)
        return status

    async def PaceBid(self, request, context):
        self._check_ready()
        campaign = self.campaigns.get(request.campaign_id)
        out: list = []
        response = campaign.pace(request.base_bid, _event_time(request), out)
        await self._log_all(out)
        return response

    async def RecordSpend(self, request, context):
        self._check_ready()
        campaign = self.campaigns.get(request.campaign_id)
        out: list = []
        response = campaign.settle(request.bid_id, request.won, request.cost,
                                   request.conversions, _event_time(request), out)
        if not out and response.duplicate:
            await self.durability.commit()  # the original may still be on its way to disk
        await self._log_all(out)
        return response

    async def _log_all(self, records: list) -> None:
        """Log applied changes (if any) and wait until they are durable."""
        if records and self.logging:
            for record in records:
                self.durability.log(record)
            await self.durability.commit()

    def _log_decisions(self, log: list | None) -> None:
        """Log decision records without waiting for the disk (see server.durability)."""
        if log:
            self.durability.log_decisions(st.WalRecord(decisions=st.Decisions(items=log)))

    async def _log_rewards(self, log: list | None) -> None:
        """Log applied rewards and wait until they are durable; also when ``log`` is empty
        (all duplicates): an original may still be on its way to the disk."""
        if log:
            self.durability.log(st.WalRecord(rewards=st.Rewards(items=log)))
        await self.durability.commit()

    async def _log(self, record: st.WalRecord) -> None:
        """Log an applied configuration change and wait until it is durable (and, with
        several workers, applied by all of them)."""
        if self.logging:
            self.durability.log(record)
            await self.durability.commit(replicated=True)

    def _check_batch(self, size: int) -> None:
        if size == 0:
            raise InvalidArgument("requests is empty")
        if size > self.settings.max_batch_size:
            raise ResourceExhausted(
                f"requests has {size} items, the limit is {self.settings.max_batch_size}"
            )
