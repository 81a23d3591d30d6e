"""Reward windows: finding the decisions whose window passed without a reward.

An experiment with ``reward_wait_seconds`` (its *window*) learns every decision exactly once: with
the reward the ad server reports within the window, or else with the experiment's
``default_reward``. :meth:`Settlement.due` is the check half of that: it finds the decisions of
windowed experiments made at least a window ago that have neither a reward nor a default, and
builds the ``DefaultRewards`` records settling them (one per experiment, each decision learned
for the first arm of its slate). Applying and logging them is the caller's (the API's sweep,
:mod:`api.reward_windows`), through :meth:`state.rewards.Learning.apply_defaults`, the same
applier as restore and a replica use.

The search is cheap: experiments are grouped by window length, and each group keeps the position
in the decision store up to which it has looked (rows are in creation order). A sweep looks only
at rows from there to the first one still inside its window, so each row is looked at about
once per distinct window length, with NumPy over the store's columns. The store keeps rows from
the smallest such position on past their TTL (``DecisionStore.expire_hold``) until the sweep has
seen them; capacity still evicts them (a decision evicted before its window ends is never
learned: size ``decision_capacity`` for the window times the decision rate).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from banditd.server.state.decision_store import DecisionStore
from banditd.server.state.experiment import Experiment
from banditd.server.state.registry import ExperimentRegistry
from banditd.storage.v1 import storage_pb2 as st


class Settlement:
    """Finds the decisions to settle with their experiment's default reward."""

    def __init__(self, experiments: ExperimentRegistry, store: DecisionStore) -> None:
        self.experiments = experiments
        self.store = store
        self._cursors: dict[float, int] = {}  # window (s) -> first store row not looked at
        self._generation = store.generation

    def due(self, now: float, limit: int) -> list[tuple[st.WalRecord, np.ndarray]]:
        """The records settling the decisions whose window has passed at ``now`` (seconds since
        the epoch), at most about ``limit`` decisions (call again for more), each with the
        decision store rows it settles. Changes nothing but where the next search starts."""
        store = self.store
        if self._generation != store.generation:  # the store was loaded: rows renumbered
            self._cursors.clear()
            self._generation = store.generation
        windowed = self.experiments.windowed
        if not windowed or not store.keeps_records:
            self._cursors.clear()
            store.expire_hold = np.inf
            return []
        groups: dict[float, list[Experiment]] = {}
        for e in windowed.values():
            groups.setdefault(e.reward_wait, []).append(e)  # type: ignore[arg-type]
        for wait in list(self._cursors):
            if wait not in groups:
                del self._cursors[wait]
        for wait in groups:
            self._cursors.setdefault(wait, store.head)
        out: list[tuple[st.WalRecord, np.ndarray]] = []
        budget = limit
        for wait, members in groups.items():
            if budget <= 0:
                break
            uids = np.array([e.uid for e in members], dtype=np.int64)
            seqs, self._cursors[wait] = store.unsettled(self._cursors[wait], uids, now - wait,
                                                        budget)
            budget -= len(seqs)
            if len(seqs):
                out.extend(self._records(members, seqs, now))
        store.expire_hold = min(self._cursors.values())
        return out

    def _records(self, members: list[Experiment], seqs: np.ndarray, now: float
                 ) -> list[tuple[st.WalRecord, np.ndarray]]:
        """One ``default_rewards`` record per experiment among ``members`` with rows in
        ``seqs`` (creation order)."""
        store = self.store
        owners = store.uids_of(seqs)
        out = []
        for e in members:
            mine = seqs[owners == e.uid]
            if not len(mine):
                continue
            prefixes, issuers, counters = store.id_parts(mine)
            if (issuers < 0).any():  # an id not of the store's form: it cannot be named
                keep = issuers >= 0
                mine, issuers, counters = mine[keep], issuers[keep], counters[keep]
            firsts = store.first_arms(mine)
            arm_ids = list(dict.fromkeys(firsts))
            position = {a: i for i, a in enumerate(arm_ids)}
            positions = np.fromiter(map(position.__getitem__, firsts), dtype="<u4",
                                    count=len(firsts))
            record = st.DefaultRewards(
                experiment_id=e.experiment_id, experiment_uid=e.uid, reward=e.default_reward,
                created=now, count=len(mine), arm_ids=arm_ids, arm_positions=positions.tobytes(),
                id_prefixes=prefixes, id_issuers=issuers.astype("<u4").tobytes(),
                id_counters=counters.astype("<u8").tobytes())
            if e.context_dim:
                record.context_dim = e.context_dim
                contexts = cast(list[np.ndarray], store.contexts_of(mine))
                record.contexts = np.stack(contexts).astype("<f8").tobytes()
            out.append((st.WalRecord(default_rewards=record), mine))
        return out
