"""Decisions and rewards: SelectArm, BatchSelectArms, RecordReward, BatchRecordRewards.

SelectArm is the hot path: the request's bytes are checked once per distinct request (see
:meth:`DecisionHandlers.select_arm_bytes`), the experiment's kernel draws the slate, the decision
is applied (:meth:`state.decisions.Decisions.apply_new`) and its record joins the pending
decision table, and the response's bytes are joined from pieces encoded once per arm
(:mod:`api.wire`). Nothing waits: decisions are logged without waiting for the disk.
"""

from __future__ import annotations

import time
from operator import attrgetter

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.core import Core
from banditd.server.api.handlers import request_parser
from banditd.server.api.wire import (
    ArmWire,
    select_response,
    select_responses,
    select_responses_bound,
)
from banditd.server.errors import DomainError, InvalidArgument, NotFound, shown
from banditd.server.ids import check_decision_id
from banditd.server.state.decision_store import DecisionColumns, slate_tuples
from banditd.server.state.experiment import ContextRowError, Experiment
from banditd.server.state.rewards import RewardRows

# SelectArm requests kept checked (see DecisionHandlers.select_arm_bytes): at most this many,
# of at most this many bytes each.
PLAN_LIMIT = 1024
PLAN_BYTES = 1024

_EXPERIMENT_ID = attrgetter("experiment_id")
_NUM_ARMS = attrgetter("num_arms")
_ELIGIBLE = attrgetter("eligible_arm_ids")
_CONTEXT = attrgetter("context")


class _PreparedSelect:
    """A checked SelectArm request: what its decision needs."""

    __slots__ = ("experiment", "eligible", "context", "n", "wire")

    def __init__(self, experiment: Experiment, eligible, context, n: int, wire: ArmWire) -> None:
        self.experiment = experiment
        self.eligible = eligible
        self.context = context
        self.n = n
        self.wire = wire


class _SelectGroup:
    """Consecutive batch items of one experiment with the same eligible arms and slate size:
    decided by one batch-kernel call."""

    __slots__ = ("experiment", "eligible", "n", "contexts", "count", "wire")

    def __init__(self, p: _PreparedSelect, contexts: np.ndarray) -> None:
        self.experiment = p.experiment
        self.eligible = p.eligible
        self.n = p.n
        self.wire = p.wire
        self.contexts = contexts  # (count, context_dim), validated
        self.count = len(contexts)


class _PreparedReward:
    """A checked reward: the experiment, the arm position, the value, the context, and its
    decision (the store's record, when the decision is known for this incarnation)."""

    __slots__ = ("experiment", "arm", "reward", "context", "decision_id", "record")

    def __init__(self, experiment, arm, reward, context, decision_id, record) -> None:
        self.experiment = experiment
        self.arm = arm
        self.reward = reward
        self.context = context
        self.decision_id = decision_id
        self.record = record


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


def _in_batch(index: int, exc: DomainError) -> DomainError:
    """The same error, its message (and field) prefixed with the batch index it came from."""
    if isinstance(exc, InvalidArgument):
        field = f"requests[{index}].{exc.field}" if exc.field else f"requests[{index}]"
        return InvalidArgument(f"requests[{index}]: {exc}", field=field)
    return type(exc)(f"requests[{index}]: {exc}")


class DecisionHandlers:
    RPCS = ("SelectArm", "BatchSelectArms", "RecordReward", "BatchRecordRewards")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.experiments = core.state.experiments
        self.decisions = core.state.decisions
        self.store = core.state.store
        self.learning = core.state.learning
        self._parse_select = request_parser(pb.SelectArmRequest, "SelectArm")
        self._plans: dict[bytes, _PreparedSelect] = {}  # see select_arm_bytes
        self._wires: dict[int, ArmWire] = {}  # experiment uid -> its arms on the wire
        self._generation = -1  # of the registry, when the plans and wires were made

    # -- SelectArm -------------------------------------------------------------------------------
    def _wire(self, experiment: Experiment) -> ArmWire:
        wire = self._wires.get(experiment.uid)
        if wire is None or wire.arms_version != experiment.arms_version:
            wire = self._wires[experiment.uid] = ArmWire(experiment.arm_ids,
                                                         experiment.arms_version)
        return wire

    def _prepare_select(self, request) -> _PreparedSelect:
        experiment = self.experiments.get(request.experiment_id)
        eligible = experiment.eligible_array(request.eligible_arm_ids)
        context = experiment.context_array(request.context)
        n = experiment.slate_size(request.num_arms, len(eligible))
        return _PreparedSelect(experiment, eligible, context, n, self._wire(experiment))

    def _fresh(self) -> None:
        """Forget checked requests and wires once experiments or their arms changed."""
        generation = self.experiments.generation
        if self._generation != generation:
            self._plans.clear()
            self._wires.clear()
            self._generation = generation

    def SelectArm(self, request, context):
        self._fresh()
        return pb.SelectArmResponse.FromString(self._select(self._prepare_select(request)))

    def select_arm_bytes(self, raw: bytes, context) -> bytes:
        """SelectArm from the request's bytes to the response's (how the server serves it),
        the same decision as :meth:`SelectArm`.

        A request seen before, byte for byte, is not parsed and checked again while the
        registry is unchanged: an ad server sends the same few requests (an experiment, an
        eligible subset) over and over, and parsing and checking them is about a fifth of
        banditd's own work per call. Requests with a context
        (different every time) or longer than ``PLAN_BYTES`` are not kept, nor more than
        ``PLAN_LIMIT`` (the set is emptied when full)."""
        self._fresh()
        plans = self._plans
        p = plans.get(raw)
        if p is None:
            p = self._prepare_select(self._parse_select(raw))
            if not len(p.context) and len(raw) <= PLAN_BYTES:
                if len(plans) >= PLAN_LIMIT:
                    plans.clear()
                plans[raw] = p
        return self._select(p)

    def _select(self, p: _PreparedSelect) -> bytes:
        """The answer to a checked request, serialised: its decision drawn, applied and
        logged. The response's bytes are joined from pieces (:func:`api.wire.select_response`),
        not built through protobuf's API (a quarter of the cost)."""
        experiment = p.experiment
        ranked, propensity = experiment.decide(p.eligible, p.context, p.n)
        first = ranked[0]
        if p.n == 1:
            slate: tuple[str, ...] = experiment.slates_of_one[first]
            entries = b""
        else:
            ids = experiment.arm_ids
            slate = tuple(ids[i] for i in ranked)
            fields = p.wire.ranked_fields
            entries = b"".join([fields[i] for i in ranked])
        context_kept = p.context if experiment.context_dim else None
        version = experiment.version
        now = time.time()
        decision_id = self.decisions.apply_new(experiment, ranked, slate, context_kept,
                                               propensity, version, now)
        core = self.core
        if core.logging:
            core.pending.add(decision_id, experiment.experiment_id, experiment.uid, slate,
                             context_kept, propensity, version, now)
            core.storage.written_lazily()
        return select_response(decision_id, p.wire.arm_fields[first], propensity, version,
                               entries)

    # -- BatchSelectArms -------------------------------------------------------------------------
    def BatchSelectArms(self, request, context):
        """Check every item, then decide group by group: consecutive items of the same
        experiment, eligible arms and slate size take one batch-kernel call, one columnar
        apply and one columnar record (the same decisions as one by one)."""
        self.core.check_batch(len(request.requests))
        self._fresh()
        groups = self._prepare_select_groups(request)
        now = time.time()
        response = pb.BatchSelectArmsResponse()
        for group in groups:
            self._apply_select_group(group, now, response)
        if self.core.logging:
            self.core.storage.written_lazily()
        return response

    def _prepare_select_groups(self, request) -> list[_SelectGroup]:
        """Check every item (errors name the first bad one, as one by one would) and split
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
            groups.append(_SelectGroup(p, rows))
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
        return _SelectGroup(p, rows)

    def _apply_select_group(self, g: _SelectGroup, now: float, response) -> None:
        experiment = g.experiment
        count = g.count
        ranked = np.empty((count, g.n), dtype=np.int64)
        propensity = np.empty(count, dtype=np.float64)
        contexts = g.contexts
        experiment.decide_many(g.eligible, contexts, ranked, propensity)
        store = self.store
        first_counter = store.new_counters(count)  # no id strings: a ring finds them
        slates = slate_tuples(experiment.arm_ids, ranked, experiment.slates_of_one)
        version = experiment.version
        kept = contexts if experiment.context_dim else None
        self.decisions.apply_columns(DecisionColumns(
            None, np.full(count, experiment.uid, dtype=np.int64), slates,
            list(kept) if kept is not None else [None] * count, propensity,
            np.full(count, version, dtype=np.int64), np.full(count, now),
            np.zeros(count, dtype=np.bool_)), [experiment.experiment_id], first_counter,
            positions=(experiment.arm_ids, ranked.ravel()))
        if self.core.logging:
            self.core.pending.add_block(
                experiment.experiment_id, experiment.uid, store.id_prefix, first_counter,
                experiment.arm_ids, ranked, propensity, version, now, kept)
        if g.n == 1:  # the responses' bytes in one compiled loop, appended in order
            prefix = store.id_prefix_bytes
            wire = g.wire
            out = np.empty(select_responses_bound(count, len(prefix), wire.max_arm_bytes),
                           dtype=np.uint8)
            size = select_responses(prefix, first_counter, ranked[:, 0], wire.arm_bytes,
                                    wire.arm_starts, propensity.view(np.uint8), version, out)
            response.MergeFromString(out[:size].data)
        else:
            add = response.responses.add
            for decision_id, slate, p in zip(store.ids(first_counter, count), slates,
                                             propensity.tolist(), strict=True):
                add(decision_id=decision_id, arm_id=slate[0], propensity=p,
                    model_version=version, ranked_arm_ids=slate)

    # -- rewards ---------------------------------------------------------------------------------
    def _prepare_reward(self, request, now: float) -> _PreparedReward:
        experiment = self.experiments.get(request.experiment_id)
        reward = experiment.check_reward(request.reward)
        decision_id = request.decision_id
        check_decision_id(decision_id)
        record = self.store.get(decision_id, now) if decision_id else None
        if record is not None and record.experiment_uid != experiment.uid:
            record = None  # made before a reset, or for another experiment
        if record is not None:
            if record.rewarded:  # a retry: acknowledged as such even if the arm is gone now
                return _PreparedReward(experiment, -1, reward, None, decision_id, record)
            slate = record.arm_ids
            arm_id = request.arm_id or slate[0]
            if arm_id not in slate:
                raise InvalidArgument(
                    f"arm_id {shown(arm_id)} is not part of decision '{decision_id}' "
                    f"(it returned {', '.join(slate)})", field="arm_id"
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
            raise InvalidArgument("set decision_id, or arm_id (and context) for an explicit arm",
                                  field="decision_id")
        arm = experiment.arm_index.get(request.arm_id)
        if arm is None:
            raise NotFound(
                f"arm {shown(request.arm_id)} not found in experiment '{experiment.experiment_id}'"
            )
        context = experiment.context_array(request.context)
        return _PreparedReward(experiment, arm, reward, context, decision_id, None)

    def _row(self, p: _PreparedReward, rows: RewardRows, now: float,
             seen: set[tuple[int, str]] | None) -> bool:
        """Add ``p`` to ``rows`` unless it is a duplicate (its decision rewarded already, also
        by an earlier item of the same batch: ``seen`` holds theirs). Whether it was added."""
        decision_id = p.decision_id
        record = p.record
        if decision_id:
            key = (p.experiment.uid, decision_id)
            if seen is not None:
                if key in seen:
                    return False
                seen.add(key)
            if record is not None:
                if record.rewarded:
                    return False
                rows.add(p.experiment, p.arm, p.reward, p.context, decision_id, False,
                         record.row)
                return True
            # An unknown decision rewarded by explicit arm: a rewarded tombstone is stored
            # under its id, so a retry of the same request is not counted twice, unless a
            # record of that id is held for another experiment (or incarnation).
            earlier = self.store.get(decision_id, now)
            if earlier is not None and earlier.experiment_uid == p.experiment.uid and \
                    earlier.rewarded:
                return False
            rows.add(p.experiment, p.arm, p.reward, p.context, decision_id, earlier is None)
            return True
        rows.add(p.experiment, p.arm, p.reward, p.context, "", False)
        return True

    async def RecordReward(self, request, context):
        now = time.time()
        rows = RewardRows(now)
        if not self._row(self._prepare_reward(request, now), rows, now, None):
            await self.core.synced()  # the original may still be on its way to the disk
            return pb.RecordRewardResponse(duplicate=True)
        await self._learn(rows)
        return pb.RecordRewardResponse(duplicate=False)

    async def BatchRecordRewards(self, request, context):
        items = request.requests
        self.core.check_batch(len(items))
        now = time.time()
        prepared = []
        for i, item in enumerate(items):
            try:
                prepared.append(self._prepare_reward(item, now))
            except DomainError as exc:
                raise _in_batch(i, exc) from None
        response = pb.BatchRecordRewardsResponse()
        add = response.responses.add
        rows = RewardRows(now)
        seen: set[tuple[int, str]] = set()
        for p in prepared:
            if self._row(p, rows, now, seen):
                add()
            else:
                add(duplicate=True)
        if len(rows):
            await self._learn(rows)
        else:
            await self.core.synced()  # the originals may still be on their way to the disk
        return response

    async def _learn(self, rows: RewardRows) -> None:
        """Apply the rewards' record and log it; return once it is durable."""
        self.core.check_writable()
        self.learning.apply(rows)
        core = self.core
        if core.logging:
            core.storage.append(rows.encode().SerializeToString())
        await core.synced()
