"""The DecisionService servicer: proto in, validation, one kernel call, proto out.

Everything runs on the grpc.aio event loop thread; kernels are microseconds long
and never await, so each request's validate-then-apply is atomic without locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.ads.budget import allocate_budget
from banditd.server.ads.pacing import CampaignRegistry
from banditd.server.api.metrics import Metrics
from banditd.server.api.wire import select_response, select_responses, select_responses_bound
from banditd.server.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from banditd.server.settings import Settings
from banditd.server.state import analytics
from banditd.server.state.decision_store import (
    DecisionColumns,
    DecisionRecord,
    DecisionStore,
    slate_tuples,
)
from banditd.server.state.experiment import ContextRowError, Experiment
from banditd.server.state.registry import ExperimentRegistry
from banditd.server.storage.durability import Durability
from banditd.storage.v1 import storage_pb2 as st

# SelectArm requests kept checked (see DecisionServicer.select_arm_bytes): at most this many,
# of at most this many bytes each.
PLAN_LIMIT = 1024
PLAN_BYTES = 1024


def request_parser(request_class: Any, name: str) -> Callable[[bytes], Any]:
    """``request_class.FromString`` for RPC ``name``: an undecodable request is
    ``InvalidArgument``."""
    parse = request_class.FromString

    def request_of(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError:
            raise InvalidArgument(f"{name}: the request is not a valid "
                                  f"{request_class.__name__}") from None

    return request_of


class _PreparedSelect:
    __slots__ = ("experiment", "eligible", "context", "n")

    def __init__(self, experiment: Experiment, eligible, context, n: int) -> None:
        self.experiment = experiment
        self.eligible = eligible
        self.context = context
        self.n = n


class _SelectGroup:
    """Consecutive batch items of one experiment with the same eligible arms and slate size:
    decided by one batch-kernel call."""

    __slots__ = ("experiment", "eligible", "n", "contexts", "count")

    def __init__(self, experiment: Experiment, eligible: np.ndarray, n: int,
                 contexts: np.ndarray) -> None:
        self.experiment = experiment
        self.eligible = eligible
        self.n = n
        self.contexts = contexts  # (count, context_dim), validated
        self.count = len(contexts)


def _copies_of(request) -> bool:
    """Whether ``request`` (a BatchSelectArmsRequest) is copies of its first item: the last
    item compared, then the whole request's bytes against the first item's repeated
    (≈ 60 µs for 1,000 items; comparing the items one by one ≈ 250 µs)."""
    items = request.requests
    n = len(items)
    first = items[0]
    if n == 1:
        return True
    if items[n - 1] != first:
        return False
    return request.SerializeToString() == \
        pb.BatchSelectArmsRequest(requests=[first]).SerializeToString() * n


_EXPERIMENT_ID = attrgetter("experiment_id")
_NUM_ARMS = attrgetter("num_arms")
_ELIGIBLE = attrgetter("eligible_arm_ids")
_CONTEXT = attrgetter("context")


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


class _RewardGroup:
    """Rewards of one experiment in a batch, learned with one batch-kernel call."""

    __slots__ = ("experiment", "arms", "rewards", "contexts")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.arms: list[int] = []
        self.rewards: list[float] = []
        self.contexts: list[np.ndarray] = []

    def learn(self) -> None:
        n = len(self.arms)
        if not n:
            return
        e = self.experiment
        contexts = np.array(self.contexts) if e.context_dim else np.empty((n, 0))
        e.reward_many(np.array(self.arms, dtype=np.int64),
                      np.array(self.rewards, dtype=np.float64), contexts)


class _RewardLog:
    """Applied rewards of a batch as the columns of one ``reward_table`` log record."""

    def __init__(self) -> None:
        self.rows = 0
        self.experiment_ids: list[str] = []
        self.arm_ids: list[str] = []
        self.rewards: list[float] = []
        self.context_sizes: list[int] = []
        self.contexts: list[np.ndarray] = []
        self.decision_ids: list[str] = []
        self.tombstones: list[bool] = []

    def add(self, p: _PreparedReward, tombstone: bool) -> None:
        self.rows += 1
        self.experiment_ids.append(p.experiment.experiment_id)
        self.arm_ids.append(p.experiment.arm_ids[p.arm])
        self.rewards.append(p.reward)
        self.context_sizes.append(len(p.context))
        if len(p.context):
            self.contexts.append(p.context)
        self.decision_ids.append(p.decision_id)
        self.tombstones.append(tombstone)

    def encode(self) -> st.RewardTable:
        table = st.RewardTable(
            experiment_ids=self.experiment_ids, arm_ids=self.arm_ids, rewards=self.rewards,
            context_sizes=self.context_sizes, decision_ids=self.decision_ids,
            tombstones=self.tombstones)
        if self.contexts:
            table.contexts.extend(np.concatenate(self.contexts).tolist())
        return table


def _in_batch(index: int, exc: DomainError) -> DomainError:
    """The same error, its message prefixed with the batch index it came from."""
    return type(exc)(f"requests[{index}]: {exc}")


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    """Implements decision.v1.DecisionService over the registry and decision store.

    Methods that wait (for the log) are coroutines; those that never do (SelectArm,
    BatchSelectArms) are plain methods, called by :func:`api.app.bytes_handler` without a
    coroutine of their own. Errors are raised as :mod:`server.errors` domain errors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = ExperimentRegistry(settings)
        self.decisions = DecisionStore(settings.decision_capacity, settings.decision_ttl_seconds)
        self.campaigns = CampaignRegistry(settings)
        self.durability = Durability(settings, self.registry, self.decisions, self.campaigns)
        # Build log records at all? Also without a log when other workers replicate them.
        self.logging = settings.durability != "snapshot" or settings.workers > 1
        self.ready = False  # set once kernels are compiled and warmed
        self._parse_select = request_parser(pb.SelectArmRequest, "SelectArm")
        self._plans: dict[bytes, _PreparedSelect] = {}  # see select_arm_bytes
        self._plans_generation = -1
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

    def SelectArm(self, request, context):
        self._check_ready()
        return pb.SelectArmResponse.FromString(self._select(self._prepare_select(request)))

    def select_arm_bytes(self, raw: bytes, context) -> bytes:
        """SelectArm from the request's bytes to the response's (how a single server serves
        it, see :func:`api.app.add_decision_service`), the same decision as
        :meth:`SelectArm`.

        A request seen before, byte for byte, is not parsed and checked again while the
        registry is unchanged: an ad server sends the same few requests (an experiment, an
        eligible subset) over and over, and parsing and checking them cost ≈ 12k of the ≈ 65k
        instructions of banditd's own work per call (callgrind). Requests with a context
        (different every time) or longer than ``PLAN_BYTES`` are not kept, nor more than
        ``PLAN_LIMIT`` (the set is emptied when full)."""
        self._check_ready()
        plans = self._plans
        if self._plans_generation != self.registry.generation:
            plans.clear()
            self._plans_generation = self.registry.generation
        p = plans.get(raw)
        if p is None:
            p = self._prepare_select(self._parse_select(raw))
            if not len(p.context) and len(raw) <= PLAN_BYTES:
                if len(plans) >= PLAN_LIMIT:
                    plans.clear()
                plans[raw] = p
        return self._select(p)

    def _select(self, p: _PreparedSelect) -> bytes:
        """The answer to a checked request, serialised: its decision drawn, stored and logged.
        The response's bytes are joined from pieces (:func:`api.wire.select_response`),
        not built through protobuf's API (≈ 1k instead of ≈ 4.5k instructions)."""
        experiment = p.experiment
        ranked, propensity = experiment.select(p.eligible, p.context, p.n)
        first = ranked[0]
        if p.n == 1:
            slate: tuple[str, ...] = experiment.slates_of_one[first]
            entries = b""
        else:
            ids = experiment.arm_ids
            slate = tuple(ids[i] for i in ranked)
            fields = experiment.ranked_fields
            entries = b"".join([fields[i] for i in ranked])
        context_kept = p.context if experiment.context_dim else None
        version = experiment.version
        now = time.time()
        decision_id = self.decisions.put_new(experiment.uid, slate, context_kept, propensity,
                                             version, now)
        if self.logging:
            self.durability.pending.add(decision_id, experiment.experiment_id, experiment.uid,
                                        slate, context_kept, propensity, version, now)
            self.durability.decisions_logged()
        return select_response(decision_id, experiment.arm_fields[first], propensity, version,
                               entries)

    def BatchSelectArms(self, request, context):
        """Validate every item, then decide group by group: consecutive items of the same
        experiment, eligible arms and slate size take one batch-kernel call, one columnar
        store insert and one columnar log entry (the same decisions as one by one)."""
        self._check_ready()
        self._check_batch(len(request.requests))
        groups = self._prepare_select_groups(request)
        now = time.time()
        response = pb.BatchSelectArmsResponse()
        for group in groups:
            self._apply_select_group(group, now, response)
        if self.logging:
            self.durability.decisions_logged()
        return response

    def _prepare_select_groups(self, request) -> list[_SelectGroup]:
        """Validate every item (errors name the first bad one, as one by one would) and split
        the batch into groups; field access and context conversion are C-level loops."""
        items = request.requests
        n = len(items)
        if _copies_of(request):  # n copies of one request: one group
            return [self._uniform_select_group(items, n)]
        ids = list(map(_EXPERIMENT_ID, items))
        nums = list(map(_NUM_ARMS, items))
        eligibles = list(map(_ELIGIBLE, items))
        contexts = list(map(_CONTEXT, items))
        if ids.count(ids[0]) == n and nums.count(nums[0]) == n and not any(map(len, eligibles)):
            starts = [0]  # the common case: one experiment, every arm, one slate size
        else:
            starts = [0] + [i for i in range(1, n) if ids[i] != ids[i - 1]
                            or nums[i] != nums[i - 1] or eligibles[i] != eligibles[i - 1]]
        groups = []
        for g, start in enumerate(starts):
            stop = starts[g + 1] if g + 1 < len(starts) else n
            p = self._prepare_item(items, start)
            try:
                rows = p.experiment.context_rows(contexts[start:stop])
            except ContextRowError as exc:
                raise _in_batch(start + exc.row, exc.error) from None
            groups.append(_SelectGroup(p.experiment, p.eligible, p.n, rows))
        return groups

    def _prepare_item(self, items, index: int) -> _PreparedSelect:
        """A single SelectArm's checks of ``items[index]``, its errors naming that item."""
        try:
            return self._prepare_select(items[index])
        except DomainError as exc:
            raise _in_batch(index, exc) from None

    def _uniform_select_group(self, items, n: int) -> _SelectGroup:
        """The group of a batch of ``n`` copies of ``items[0]``: checked once instead of
        reading every item's fields; its errors name item 0, as the general path's would."""
        p = self._prepare_item(items, 0)
        rows = np.empty((n, p.experiment.context_dim), dtype=np.float64)
        rows[:] = p.context
        return _SelectGroup(p.experiment, p.eligible, p.n, rows)

    def _apply_select_group(self, g: _SelectGroup, now: float, response) -> None:
        experiment = g.experiment
        count = g.count
        ranked = np.empty((count, g.n), dtype=np.int64)
        propensity = np.empty(count, dtype=np.float64)
        contexts = g.contexts
        experiment.select_many(g.eligible, contexts, ranked, propensity)
        decisions = self.decisions
        first_counter = decisions.new_counters(count)  # no id strings: a ring finds them
        slates = slate_tuples(experiment.arm_ids, ranked, experiment.slates_of_one)
        version = experiment.version
        kept = contexts if experiment.context_dim else None
        decisions.put_many(DecisionColumns(
            None, np.full(count, experiment.uid, dtype=np.int64), slates,
            list(kept) if kept is not None else [None] * count, propensity,
            np.full(count, version, dtype=np.int64), np.full(count, now),
            np.zeros(count, dtype=np.bool_)), first_counter=first_counter)
        if self.logging:
            self.durability.pending.add_block(
                experiment.experiment_id, experiment.uid, decisions.id_prefix, first_counter,
                experiment.arm_ids, ranked, propensity, version, now, kept)
        if g.n == 1:  # the responses' bytes in one compiled loop, appended in order
            prefix = decisions.id_prefix_bytes
            arm_bytes, arm_starts = experiment.arm_wire
            out = np.empty(select_responses_bound(count, len(prefix), experiment.max_arm_bytes),
                           dtype=np.uint8)
            size = select_responses(prefix, first_counter, ranked[:, 0], arm_bytes, arm_starts,
                                    propensity.view(np.uint8), version, out)
            response.MergeFromString(out[:size].data)
        else:
            add = response.responses.add
            for decision_id, slate, p in zip(decisions.ids(first_counter, count), slates,
                                             propensity.tolist(), strict=True):
                add(decision_id=decision_id, arm_id=slate[0], propensity=p,
                    model_version=version, ranked_arm_ids=slate)

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

    def _settle_reward(self, p: _PreparedReward, now: float, version: int) -> bool | None:
        """Exactly-once bookkeeping of a validated reward: None if it is a duplicate (nothing
        to learn), else whether a tombstone was stored for its unknown decision id.
        ``version``: the experiment's model version just before this reward is learned."""
        record = p.record
        if record is None and p.decision_id:
            # An unknown decision rewarded by explicit arm: remember it (as already
            # rewarded) so that a retry of the same request is not counted twice. A record
            # of that id owned by another experiment (or incarnation) is left alone.
            earlier = self.decisions.get(p.decision_id, now)
            if earlier is None:
                self.decisions.put(p.decision_id, DecisionRecord(
                    p.experiment.uid, (p.experiment.arm_ids[p.arm],), None, 0.0, version, now,
                    rewarded=True))
                return True
            if earlier.experiment_uid == p.experiment.uid and earlier.rewarded:
                return None
        elif record is not None:
            if self.decisions.is_rewarded(record):  # also by an earlier item of this batch
                return None
            self.decisions.mark_rewarded(record)
        return False

    def _apply_reward(
        self, p: _PreparedReward, now: float, log: list | None
    ) -> pb.RecordRewardResponse:
        tombstone = self._settle_reward(p, now, p.experiment.version)
        if tombstone is None:
            return pb.RecordRewardResponse(duplicate=True)
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
        # Bookkeeping item by item (duplicates, also within the batch), then one kernel call
        # per experiment: its rewards in batch order give the same state as one by one.
        response = pb.BatchRecordRewardsResponse()
        add = response.responses.add
        learn: dict[int, _RewardGroup] = {}
        table = _RewardLog() if self.logging else None
        for p in prepared:
            group = learn.get(p.experiment.uid)
            if group is None:
                group = learn[p.experiment.uid] = _RewardGroup(p.experiment)
            tombstone = self._settle_reward(p, now, p.experiment.version + len(group.arms))
            if tombstone is None:
                add(duplicate=True)
                continue
            add()
            group.arms.append(p.arm)
            group.rewards.append(p.reward)
            group.contexts.append(p.context)
            if table is not None:
                table.add(p, tombstone)
        for group in learn.values():
            group.learn()
        if table is not None and table.rows:
            self.durability.log(st.WalRecord(reward_table=table.encode()))
        await self.durability.commit()  # also with nothing new: an original may be in flight
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

    async def _log_rewards(self, log: list | None) -> None:
        """Log applied rewards and wait until they are durable; also when ``log`` is empty
        (all duplicates): an original may still be on its way to the disk."""
        if log:
            self.durability.log(st.WalRecord(rewards={"items": log}))  # built in place
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
