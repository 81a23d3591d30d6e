"""One experiment: its arms, learned state arrays and the select / reward operations.

Arms live in contiguous arrays indexed by position; ``arm_index`` maps arm_id to
position. Every method either validates everything and then changes state, or
raises a DomainError having changed nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.rng import seed_state
from banditd.server.errors import InvalidArgument, NotFound, shown
from banditd.server.state.checks import first_out_of_range
from banditd.server.state.policies import PolicySpec

_EMPTY_CONTEXT = np.empty(0, dtype=np.float64)


class ContextRowError(Exception):
    """Row ``row`` of :meth:`Experiment.context_rows` is invalid (``error`` says why)."""

    def __init__(self, row: int, error: InvalidArgument) -> None:
        super().__init__(str(error))
        self.row = row
        self.error = error


class Experiment:
    """Configuration + learned statistics of one experiment."""

    def __init__(
        self, config: pb.Experiment, spec: PolicySpec, uid: int, draws: int,
        max_abs: float = 1e12,
    ) -> None:
        self.config = config  # normalised proto (defaults filled in); arms kept in sync
        self.spec = spec
        self.uid = uid  # changes on reset, so decisions made before it no longer match
        self.draws = draws  # Monte-Carlo rounds of estimated propensities
        self.max_abs = max_abs  # bound on |context value| and |reward|: keeps sums finite
        self.experiment_id = config.experiment_id
        self.context_dim = int(config.context_dim)
        self.reward_type = int(config.reward_type)
        self.floor = float(config.exploration_floor)
        self.burn_in = int(config.min_selections)
        self.discount = float(config.discount) if config.HasField("discount") else 1.0
        self.arm_ids: list[str] = [arm.arm_id for arm in config.arms]
        self.arms_version = 0  # goes up whenever the arm list changes
        self.footprint = 0  # estimated bytes (state.footprint), kept by the registry
        self._slate_buffers: dict[int, np.ndarray] = {}  # slate size -> decide()'s output
        # decide()'s kernel: the (state, selections, rng) it was bound to, and the call
        self._bound: tuple = (None, None, None, None)
        self._bound_update: tuple = (None, None)  # reward()'s kernel: state bound to, call
        self._counts = np.zeros(0, dtype=np.int64).data  # item view of selections
        self._reindex()
        self._reset_state()

    # -- state -----------------------------------------------------------------
    def _reindex(self) -> None:
        self.arm_index = {arm_id: i for i, arm_id in enumerate(self.arm_ids)}
        # the slate of one arm, per arm: shared by every decision that names only that arm
        self.slates_of_one = [(arm_id,) for arm_id in self.arm_ids]
        self.all_arms = np.arange(len(self.arm_ids), dtype=np.int64)
        self.arms_version += 1

    def _reset_state(self) -> None:
        k = len(self.arm_ids)
        self.state = self.spec.kernel.new_state(num_arms=k, dim=self.context_dim,
                                                params=self.spec.params, draws=self.draws)
        self.selections = np.zeros(k, dtype=np.int64)
        self.rewards = np.zeros(k, dtype=np.int64)
        self.reward_sum = np.zeros(k, dtype=np.float64)
        self.positives = np.zeros(k, dtype=np.int64)  # live rewards > 0 (conversions)
        # Ingested aggregates: period -> arm_id -> (trials, successes, value), and their
        # per-arm totals (trials, successes, value), kept exact (see _add_exact).
        self.periods: dict[str, dict[str, tuple[float, float, float]]] = {}
        self.ingested = np.zeros((k, 3), dtype=np.float64)
        self._sums: dict[str, list[list[float]]] = {}  # arm_id -> 3 exact partial sums
        self.period_counts: dict[str, int] = {}  # arm_id -> periods holding it
        self.rng = seed_state(int(self.config.seed))
        self.version = 0

    def load_periods(self, periods: dict[str, dict[str, tuple[float, float, float]]]) -> None:
        """Take restored ingest periods (a snapshot's), with their exact per-arm sums."""
        self.periods = periods
        self._sums = {}
        self.period_counts = {}
        for book in periods.values():
            for arm_id, numbers in book.items():
                sums = self._sums.setdefault(arm_id, [[], [], []])
                for column in range(3):
                    _add_exact(sums[column], numbers[column])
                self.period_counts[arm_id] = self.period_counts.get(arm_id, 0) + 1

    def reset(self, uid: int) -> None:
        self.uid = uid
        self._reset_state()

    @property
    def num_arms(self) -> int:
        return len(self.arm_ids)

    def update_arms(self, add: list[str], remove: list[str]) -> None:
        """Remove then add arms; the remaining arms keep their state. Validated by the caller."""
        if remove:
            drop = np.array([self.arm_index[a] for a in remove], dtype=np.int64)
            self.state = self.state._make(np.ascontiguousarray(np.delete(a, drop, axis=0))
                                          for a in self.state)
            self.selections = np.delete(self.selections, drop)
            self.rewards = np.delete(self.rewards, drop)
            self.reward_sum = np.delete(self.reward_sum, drop)
            self.positives = np.delete(self.positives, drop)
            self.ingested = np.delete(self.ingested, drop, axis=0)
            gone = set(remove)
            for period in self.periods.values():  # a re-added arm starts from the prior
                for arm_id in gone:
                    period.pop(arm_id, None)
            for arm_id in gone:
                self._sums.pop(arm_id, None)
                self.period_counts.pop(arm_id, None)
            self.arm_ids = [a for a in self.arm_ids if a not in gone]
        if add:
            fresh = self.spec.kernel.new_state(
                num_arms=len(add), dim=self.context_dim, params=self.spec.params, draws=self.draws
            )
            self.state = self.state._make(
                np.ascontiguousarray(np.concatenate([old, new], axis=0))
                for old, new in zip(self.state, fresh, strict=True)
            )
            self.selections = np.concatenate([self.selections, np.zeros(len(add), np.int64)])
            self.rewards = np.concatenate([self.rewards, np.zeros(len(add), np.int64)])
            self.reward_sum = np.concatenate([self.reward_sum, np.zeros(len(add), np.float64)])
            self.positives = np.concatenate([self.positives, np.zeros(len(add), np.int64)])
            self.ingested = np.concatenate([self.ingested, np.zeros((len(add), 3))])
            self.arm_ids.extend(add)
        self._reindex()
        del self.config.arms[:]
        self.config.arms.extend(pb.Arm(arm_id=a) for a in self.arm_ids)

    # -- validation ------------------------------------------------------------
    def context_array(self, values, field: str = "context") -> np.ndarray:
        """``values`` as a float64 context vector, or InvalidArgument naming ``field``."""
        n = len(values)
        if n != self.context_dim:
            if self.context_dim == 0:
                raise InvalidArgument(
                    f"{field} has {n} values, experiment '{self.experiment_id}' is not "
                    "contextual (expects none)", field=field
                )
            raise InvalidArgument(
                f"{field} has {n} values, experiment '{self.experiment_id}' expects "
                f"{self.context_dim}", field=field
            )
        if n == 0:
            return _EMPTY_CONTEXT
        ctx = np.fromiter(values, dtype=np.float64, count=n)
        bad = first_out_of_range(ctx, self.max_abs)
        if bad >= 0:
            raise InvalidArgument(
                f"{field}[{bad}] is {ctx[bad]}, context values must be finite with "
                f"|value| <= {self.max_abs:g}", field=f"{field}[{bad}]"
            )
        return ctx

    def eligible_array(self, arm_ids, field: str = "eligible_arm_ids") -> np.ndarray:
        """Positions of ``arm_ids`` (empty = every arm)."""
        if not arm_ids:
            return self.all_arms
        index = self.arm_index
        out = []
        for i, arm_id in enumerate(arm_ids):
            pos = index.get(arm_id)
            if pos is None:
                if not arm_id:
                    raise InvalidArgument(f"{field}[{i}] is empty", field=f"{field}[{i}]")
                raise NotFound(
                    f"{field}[{i}]: arm {shown(arm_id)} not found in experiment "
                    f"'{self.experiment_id}'"
                )
            out.append(pos)
        if len(set(out)) != len(out):
            raise InvalidArgument(f"{field} contains duplicate arm ids", field=field)
        return np.array(out, dtype=np.int64)

    def check_reward(self, reward: float, field: str = "reward") -> float:
        if not math.isfinite(reward):
            raise InvalidArgument(f"{field} is {reward}, rewards must be finite", field=field)
        if abs(reward) > self.max_abs:
            raise InvalidArgument(f"{field} is {reward}, |reward| must be <= {self.max_abs:g}",
                                  field=field)
        if self.reward_type == pb.REWARD_TYPE_BINARY and reward not in (0.0, 1.0):
            raise InvalidArgument(
                f"{field} is {reward}, experiment '{self.experiment_id}' has binary rewards "
                "(exactly 0 or 1)", field=field
            )
        if self.reward_type == pb.REWARD_TYPE_VALUE and reward < 0:
            raise InvalidArgument(
                f"{field} is {reward}, experiment '{self.experiment_id}' has value rewards (>= 0)",
                field=field
            )
        return reward

    def slate_size(self, num_arms: int, eligible: int) -> int:
        n = num_arms if num_arms > 0 else 1
        if n > eligible:
            raise InvalidArgument(f"num_arms is {num_arms}, but only {eligible} arms are eligible",
                                  field="num_arms")
        return n

    # -- operations ------------------------------------------------------------
    def decide(self, eligible: np.ndarray, context: np.ndarray, n: int
               ) -> tuple[list[int], float]:
        """Draw a slate of ``n`` ranked arms among ``eligible``: (positions, propensity). Only
        the random stream moves; the decision is applied (counted, stored) by
        :class:`state.decisions.Decisions`.

        The kernel is called through its module's ``bind_select`` (typed once per state, see
        :func:`kernels.common.compiled`), bound again when the state, the selection counts or
        the random state were replaced (arms changed, reset, restore, replication). It writes
        into a buffer kept per slate size: no NumPy call on the way but the kernel's.
        ``eligible`` must be an int64 and ``context`` a float64 C-contiguous 1-D array
        (:meth:`eligible_array`, :meth:`context_array`): the bound kernel does not check them."""
        out = self._slate_buffers.get(n)
        if out is None:
            out = self._slate_buffers[n] = np.empty(n, dtype=np.int64)
        state, selections, rng, call = self._bound
        if state is not self.state or selections is not self.selections or rng is not self.rng:
            call = self._bind(eligible, context, out)
        propensity = call(eligible, context, self.version, out)
        return out.tolist(), propensity

    def _bind(self, eligible: np.ndarray, context: np.ndarray, out: np.ndarray):
        """:meth:`decide`'s kernel bound to the current arrays."""
        call = self.spec.kernel.bind_select(
            state=self.state, params=self.spec.params, selections=self.selections,
            floor=self.floor, burn_in=self.burn_in, draws=self.draws, rng=self.rng,
            eligible=eligible, context=context, t=self.version, out=out)
        self._bound = (self.state, self.selections, self.rng, call)
        return call

    def count_selections(self, ranked: list[int]) -> None:
        """Count a decision's slate (arm positions) as selected."""
        counts = self._counts
        if counts.obj is not self.selections:
            counts = self._counts = self.selections.data
        for arm in ranked:
            counts[arm] += 1

    def add_selections(self, counts: Iterable[tuple[str, int]]) -> None:
        """Add (arm id, selections) pairs; arms the experiment no longer has are skipped."""
        index, selections = self.arm_index, self.selections
        for arm_id, k in counts:
            pos = index.get(arm_id)
            if k and pos is not None:
                selections[pos] += k

    def decide_many(self, eligible: np.ndarray, contexts: np.ndarray, out: np.ndarray,
                    propensity: np.ndarray) -> None:
        """``out.shape[0]`` decisions in one kernel call: row ``i`` of ``out`` (``n`` ranked
        positions) and ``propensity[i]`` for ``contexts[i]`` (a ``(rows, context_dim)`` array).
        The same decisions as :meth:`decide` row by row, each applied before the next: the
        kernel counts them in a copy of the selection counts (burn-in sees them), the copy is
        dropped, and applying the decisions counts them for real."""
        self.spec.kernel.select_batch(
            state=self.state,
            params=self.spec.params,
            eligible=eligible,
            contexts=contexts,
            t=self.version,
            selections=self.selections.copy(),
            floor=self.floor,
            burn_in=self.burn_in,
            draws=self.draws,
            rng=self.rng,
            out=out,
            propensity=propensity,
        )

    def context_rows(self, rows: list, field: str = "context") -> np.ndarray:
        """The contexts of several requests (sequences of floats) as one ``(len(rows),
        context_dim)`` float64 array, validated like :meth:`context_array`. A bad row raises
        :class:`ContextRowError` naming the first one (its index in ``rows``)."""
        n = len(rows)
        d = self.context_dim
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
        wrong = np.flatnonzero(lengths != d)
        good = int(wrong[0]) if len(wrong) else n  # rows before the first wrong length
        if d == 0:
            ctx = np.empty((good, 0), dtype=np.float64)
        else:
            ctx = np.fromiter(itertools.chain.from_iterable(rows[:good]), dtype=np.float64,
                              count=good * d).reshape(good, d)
            bad = first_out_of_range(ctx.ravel(), self.max_abs)
            if bad >= 0:
                good = bad // d
        if good < n:
            try:
                self.context_array(rows[good], field)
            except InvalidArgument as exc:
                raise ContextRowError(good, exc) from None
        return ctx

    def reward(self, arm: int, reward: float, context: np.ndarray) -> None:
        """Learn from one reward of the arm at position ``arm`` (validated by the caller),
        through the kernel module's ``bind_update`` (bound again when the state was replaced)."""
        state, update = self._bound_update
        if state is not self.state:
            state, update = self._bind_update()
        update(arm, reward, context)
        self.rewards[arm] += 1
        self.reward_sum[arm] += reward
        if reward > 0:
            self.positives[arm] += 1
        self.version += 1

    def _bind_update(self) -> tuple:
        call = self.spec.kernel.bind_update(state=self.state, params=self.spec.params,
                                            discount=self.discount)
        self._bound_update = (self.state, call)
        return self._bound_update

    def reward_many(self, arms: np.ndarray, rewards: np.ndarray, contexts: np.ndarray) -> None:
        """Learn from rewards ``rewards[i]`` of arm positions ``arms[i]`` (contexts: ``(rows,
        context_dim)``) in one kernel call: the same state as :meth:`reward` row by row."""
        self.spec.kernel.update_batch(state=self.state, params=self.spec.params, arms=arms,
                                      rewards=rewards, contexts=contexts, discount=self.discount)
        np.add.at(self.rewards, arms, 1)
        np.add.at(self.reward_sum, arms, rewards)  # in row order, as one by one
        np.add.at(self.positives, arms[rewards > 0], 1)
        self.version += len(arms)

    def ingest(self, period: str, rows: list[tuple[int, float, float, float]]) -> tuple[int, int]:
        """Replace ``period``'s aggregates for the given arms (validated by the caller).

        ``rows``: (arm position, trials, successes, value). Returns (replaced, new) arm counts.
        Re-sending identical numbers changes nothing at all, so repeats are exact no-ops.
        The per-arm totals are exact sums of the periods' numbers (the same as summing every
        period again with ``math.fsum``), kept in O(1) per ingest.
        """
        book = self.periods.setdefault(period, {})
        value_rewards = self.reward_type != pb.REWARD_TYPE_BINARY
        replaced = new = 0
        changed = False
        for arm, trials, successes, value in rows:
            arm_id = self.arm_ids[arm]
            old = book.get(arm_id)
            if old is None:
                new += 1
                old = (0.0, 0.0, 0.0)
            else:
                replaced += 1
            fresh = (trials, successes, value)
            if fresh == old:
                continue
            if arm_id not in book:
                self.period_counts[arm_id] = self.period_counts.get(arm_id, 0) + 1
            book[arm_id] = fresh
            changed = True
            d_trials, d_successes, d_value = (f - o for f, o in zip(fresh, old, strict=True))
            total = d_value if value_rewards else d_successes
            self.spec.kernel.add_aggregate(state=self.state, arm=arm, trials=d_trials,
                                           successes=d_successes, total=total)
            sums = self._sums.setdefault(arm_id, [[], [], []])
            for column in range(3):
                _add_exact(sums[column], fresh[column])
                _add_exact(sums[column], -old[column])
                self.ingested[arm, column] = math.fsum(sums[column])
        if changed:
            self.version += 1
        return replaced, new


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to the exact sum held as non-overlapping ``partials`` (Shewchuk's algorithm,
    the one behind ``math.fsum``): ``math.fsum(partials)`` is then the correctly rounded sum of
    everything added, whatever the order, and adding ``-x`` removes ``x`` exactly."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]
