"""Bounded store of recent decisions, so a late reward needs only its decision_id.

Each record keeps what the reward needs (experiment, slate, context) and what
off-policy evaluation needs (propensity, model version, time). Capacity and TTL
bound memory: the oldest records go first. A record remembers whether it was
rewarded, so a retried RecordReward is recognised as a duplicate, whether it was
settled with its experiment's default reward (reward windows: a later reward then
corrects it), and the reward learned and the slot of the slate it was learned for
(for the decision-log export).

Storage is columnar: a ring of ``capacity`` rows (NumPy columns for the numbers, lists for
the ids, slates and contexts). No Python object is made per decision beyond its id string and
slate tuple (both ignored by the cyclic garbage collector, which would otherwise walk a million
records on every full collection). Rows are found by id in one of two ways:

* ids this store issued for a batch (``new_counters`` + ``put_many(..., first_counter=...)``),
  and batches of consecutive ids of another registered issuer (``register_prefix``: the other
  replicas sharing a log in the engine, whose decisions every replica keeps): the id's counter
  locates the row through a second ring per issuer (``counter % capacity -> row``), so a
  batch is stored with slice assignments only — no per-decision dict insert or delete, which
  in a million-entry dict cost more than the decisions themselves. Such a batch need not
  even make its id strings: a row found through a ring knows its id (issuer and counter);
  SelectArm's single decisions (``put_new``) take the own ring as well;
* any other id (rewarded tombstones, restored decisions): a dict ``decision_id -> row
  sequence number``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

_EXPIRE_EVERY = 256  # single puts between two TTL sweeps (gets check the TTL themselves)


def split_decision_id(decision_id: str) -> tuple[str, int] | None:
    """(prefix, counter) of an id as a decision store makes them (``<prefix>-<counter in
    hex>``), None if ``decision_id`` is not one."""
    prefix, _, counter = decision_id.rpartition("-")
    if not prefix:
        return None
    try:
        return prefix, int(counter, 16)
    except ValueError:
        return None


def id_format(prefix: str) -> Callable[[int], str]:
    """counter -> ``<prefix>-<counter in hex>``, the id of a decision (mapped over a range,
    ≈ 30% faster than an f-string per id)."""
    return (prefix.replace("%", "%%") + "-%x").__mod__


class DecisionRecord:
    """What the server remembers of one decision (a copy; ``row`` locates it in the store)."""

    __slots__ = (
        "experiment_uid",
        "arm_ids",
        "context",
        "propensity",
        "model_version",
        "created",
        "rewarded",
        "row",
        "defaulted",
    )

    def __init__(
        self,
        experiment_uid: int,
        arm_ids: tuple[str, ...],
        context: np.ndarray | None,
        propensity: float,
        model_version: int,
        created: float,
        rewarded: bool = False,
        row: int = -1,
        defaulted: bool = False,
    ) -> None:
        self.experiment_uid = experiment_uid
        self.arm_ids = arm_ids
        self.context = context
        self.propensity = propensity
        self.model_version = model_version
        self.created = created  # wall clock, seconds since the epoch
        self.rewarded = rewarded
        self.row = row  # sequence number in the store (-1: not stored)
        self.defaulted = defaulted  # settled with its experiment's default reward


class DecisionColumns:
    """Many decisions as columns, oldest first (the store's contents, or a batch to add).
    ``defaulted``, ``rewards`` and ``reward_slots`` (how each was settled) may be None: none
    was settled by default, and no reward or slot is recorded (NaN, -1)."""

    __slots__ = ("ids", "uids", "slates", "contexts", "propensities", "versions", "created",
                 "rewarded", "defaulted", "rewards", "reward_slots")

    def __init__(self, ids: list[str] | None, uids: np.ndarray, slates: list[tuple[str, ...]],
                 contexts: list[np.ndarray | None], propensities: np.ndarray,
                 versions: np.ndarray, created: np.ndarray, rewarded: np.ndarray,
                 defaulted: np.ndarray | None = None, rewards: np.ndarray | None = None,
                 reward_slots: np.ndarray | None = None) -> None:
        self.ids = ids
        self.uids = uids
        self.slates = slates
        self.contexts = contexts
        self.propensities = propensities
        self.versions = versions
        self.created = created
        self.rewarded = rewarded
        self.defaulted = defaulted
        self.rewards = rewards
        self.reward_slots = reward_slots

    def __len__(self) -> int:
        return len(self.uids)

    def tail(self, cut: int) -> DecisionColumns:
        """Rows ``cut`` .. end."""
        def part(a):
            return None if a is None else a[cut:]

        return DecisionColumns(part(self.ids), self.uids[cut:], self.slates[cut:],
                               self.contexts[cut:], self.propensities[cut:], self.versions[cut:],
                               self.created[cut:], self.rewarded[cut:], part(self.defaulted),
                               part(self.rewards), part(self.reward_slots))


class DecisionStore:
    """decision_id -> decision, insertion ordered, with capacity and TTL."""

    keeps_records = True  # a store that keeps none only counts selections (decisions.py)

    def __init__(self, capacity: int, ttl_seconds: float, id_prefix: str | None = None) -> None:
        self.capacity = capacity
        self.ttl_seconds = ttl_seconds
        # A random per-process prefix keeps ids unique across restarts without a
        # per-request uuid4 (which costs more than the rest of the id).
        self._prefix = id_prefix if id_prefix is not None else secrets.token_hex(6)
        self._id_format = id_format(self._prefix)
        self._counter = 0
        self._puts = 0
        self._issuers = {self._prefix: 0}  # id prefix -> its ring (0: this store's own ids)
        self.expire_hold: float = np.inf  # see _expire
        # Decisions dropped since the process started (restore included), for the metrics:
        # the oldest when the store is full, and those past their TTL.
        self.evicted = 0
        self.expired = 0
        self.clear()

    def fresh(self) -> DecisionStore:
        """An empty store of the same capacity, TTL, id prefix and registered issuers."""
        other = type(self)(self.capacity, self.ttl_seconds, id_prefix=self._prefix)
        for prefix in self._issuers:
            other.register_prefix(prefix)
        return other

    def adopt(self, other: DecisionStore) -> None:
        """Take over ``other``'s records (a store rebuilt from the disk); ids issued here
        before are never issued again."""
        counter = max(self._counter, other._counter)
        self.__dict__.update(other.__dict__)
        self._counter = counter

    # -- ids -------------------------------------------------------------------------------
    @property
    def last_counter(self) -> int:
        """Counter of the newest id issued."""
        return self._counter

    def new_id(self) -> str:
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"

    @property
    def id_prefix(self) -> str:
        """The prefix of this store's own ids."""
        return self._prefix

    @property
    def id_prefix_bytes(self) -> np.ndarray:
        """The prefix of this store's own ids, as UTF-8 bytes (``api.wire`` writes ids)."""
        return np.frombuffer(self._prefix.encode(), dtype=np.uint8)

    def new_counters(self, n: int) -> int:
        """Issue ``n`` fresh ids without making their strings (:meth:`ids`); the counter of
        the first one."""
        self._counter += n
        return self._counter - n + 1

    def new_ids(self, n: int) -> list[str]:
        """``n`` fresh ids, as ``n`` calls of :meth:`new_id` would give."""
        return self.ids(self.new_counters(n), n)

    def ids(self, first_counter: int, n: int, issuer: str | None = None) -> list[str]:
        """The ids of counters ``first_counter .. first_counter + n - 1`` of ``issuer`` (an
        id prefix; None: this store)."""
        fmt = self._id_format if issuer is None else id_format(issuer)
        return list(map(fmt, range(first_counter, first_counter + n)))

    # -- storage ---------------------------------------------------------------------------
    def clear(self) -> None:
        c = self.capacity
        self._index: dict[str, int] = {}
        self._ids: list[str | None] = [None] * c
        self._slates: list[tuple[str, ...] | None] = [None] * c
        self._contexts: list[np.ndarray | None] = [None] * c
        self._uids = np.zeros(c, dtype=np.int64)
        self._propensities = np.zeros(c)
        self._versions = np.zeros(c, dtype=np.int64)
        self._created = np.zeros(c)
        self._rewarded = np.zeros(c, dtype=np.bool_)
        self._defaulted = np.zeros(c, dtype=np.bool_)  # settled with the default reward
        self._reward = np.full(c, np.nan)  # reward learned (rewarded or defaulted rows)
        self._slot = np.full(c, -1, dtype=np.int32)  # slot it was learned for (same rows)
        self._own = np.full(c, -1, dtype=np.int64)  # row -> counter of its issued id (-1: none)
        self._owner = np.zeros(c, dtype=np.int16)  # row -> ring of that id (when _own >= 0)
        # per issuer: counter % capacity -> row seq
        self._own_rows = [np.full(c, -1, dtype=np.int64) for _ in self._issuers]
        self._head = 0  # sequence number of the oldest row held
        self._tail = 0  # sequence number the next row gets
        self.generation = getattr(self, "generation", 0) + 1  # sequence numbers start again
        # Item views of the columns :meth:`put_new` writes (a memoryview's item assignment
        # is a few C lines; a NumPy one goes through its whole indexing machinery).
        self._row_views: tuple[Any, ...] = tuple(a.data for a in (
            self._uids, self._propensities, self._versions, self._created, self._rewarded,
            self._defaulted, self._own, self._owner, self._own_rows[0]))
        # ... and those a reward writes (:meth:`mark_rewarded_row`)
        self._reward_views: tuple[Any, ...] = tuple(a.data for a in (
            self._rewarded, self._reward, self._slot))

    def __len__(self) -> int:
        """Rows held (a re-stored or discarded id's old row counts until it is evicted)."""
        return self._tail - self._head

    @property
    def head(self) -> int:
        """Sequence number of the oldest row held."""
        return self._head

    def register_prefix(self, prefix: str) -> None:
        """Ids ``<prefix>-<counter in hex>`` are issued elsewhere with consecutive counters
        (another worker): batches of them are stored through a ring, like this store's own."""
        if prefix not in self._issuers:
            self._issuers[prefix] = len(self._own_rows)
            self._own_rows.append(np.full(self.capacity, -1, dtype=np.int64))

    def _counter_run(self, ids: list[str] | None) -> tuple[int, int] | None:
        """(ring, first counter) if ``ids`` are consecutive ids of one registered issuer."""
        if len(self._issuers) == 1 or not ids:
            return None
        head, tail = split_decision_id(ids[0]), split_decision_id(ids[-1])
        if head is None or tail is None or head[0] != tail[0]:
            return None
        prefix, start = head
        last = tail[1]
        ring = self._issuers.get(prefix)
        if ring is None:
            return None
        if last - start + 1 != len(ids) or \
                [f"{prefix}-{k:x}" for k in range(start, last + 1)] != ids:
            return None  # a gap or an id out of order: a ring would find the wrong row
        return ring, start

    def _seq(self, decision_id: str) -> int | None:
        """Row sequence number holding ``decision_id``, if any."""
        seq = self._index.get(decision_id)
        if seq is not None:
            return seq
        parts = split_decision_id(decision_id)
        if parts is None:
            return None
        prefix, counter = parts
        ring = self._issuers.get(prefix)
        if ring is None:
            return None
        c = self.capacity
        seq = int(self._own_rows[ring][counter % c])
        if self._head <= seq < self._tail and self._own[seq % c] == counter and \
                self._owner[seq % c] == ring:
            return seq
        return None

    def _forget(self, start: int, stop: int) -> None:
        """Drop rows ``start .. stop-1`` (sequence numbers)."""
        c = self.capacity
        ids = self._ids
        first = start
        while first < stop:  # at most two contiguous pieces of the ring
            pos = first % c
            take = min(stop - first, c - pos)
            rows = slice(pos, pos + take)
            for k in np.flatnonzero(self._own[rows] < 0).tolist():  # dict-indexed rows only
                self._unindex(pos + k, first + k)
            blank = [None] * take
            ids[rows] = blank
            self._slates[rows] = blank
            self._contexts[rows] = blank
            self._own[rows] = -1
            first += take

    def _unindex(self, pos: int, seq: int) -> None:
        """Drop the id dict's entry of dict-indexed row ``pos`` (sequence number ``seq``),
        unless its id was stored again since."""
        old = self._ids[pos]
        if old is not None and self._index.get(old) == seq:
            del self._index[old]

    def _keeps_id(self, earlier: int | None, seq: int) -> bool:
        """Whether the row the id dict holds for an id (``earlier``) keeps it against row
        ``seq`` being stored under the same id: a rewarded row (a tombstone, stored when a
        reward by explicit arm came before its decision) is not displaced by an unrewarded
        one (that decision, turning up later). The live store does the same by reading its id
        dict, which holds the tombstone, before the rings that hold another replica's decision; a
        replay, where such ids go through the dict too, would otherwise lose the reward."""
        c = self.capacity
        return earlier is not None and bool(self._rewarded[earlier % c]) and \
            not self._rewarded[seq % c]

    def _keep_rewarded_ids(self, ids: list[str], start: int) -> None:
        """After a batch from row ``start`` took its ids into the id dict, give back those
        that held rewarded rows (:meth:`_keeps_id`). Rare: called when the dict did not grow
        by the batch size; looks at the earlier rewarded rows of the dict, newest first."""
        c = self.capacity
        wanted = set(ids)
        seqs = np.arange(self._head, start)
        pos = seqs % c
        index = self._index
        for seq in reversed(seqs[self._rewarded[pos] & (self._own[pos] == -1)].tolist()):
            decision_id = self._ids[seq % c]
            if decision_id in wanted:
                wanted.discard(decision_id)  # the newest such row was the dict's
                now = index[decision_id]
                if now >= start and self._keeps_id(seq, now):
                    index[decision_id] = seq

    def put(self, decision_id: str, record: DecisionRecord, expire: bool = True) -> None:
        seq = self._tail
        if seq - self._head >= self.capacity:
            self._forget(self._head, self._head + 1)
            self._head += 1
            self.evicted += 1
        pos = seq % self.capacity
        self._ids[pos] = decision_id
        self._slates[pos] = record.arm_ids
        self._contexts[pos] = record.context
        self._uids[pos] = record.experiment_uid
        self._propensities[pos] = record.propensity
        self._versions[pos] = record.model_version
        self._created[pos] = record.created
        self._rewarded[pos] = record.rewarded
        self._defaulted[pos] = record.defaulted
        self._reward[pos] = np.nan
        self._slot[pos] = -1
        self._own[pos] = -1
        if not self._keeps_id(self._index.get(decision_id), seq):
            self._index[decision_id] = seq
        self._tail = seq + 1
        record.row = seq
        self._puts += 1
        if expire and self._puts % _EXPIRE_EVERY == 0:
            self._expire(record.created)

    def put_new(self, uid: int, slate: tuple[str, ...], context: np.ndarray | None,
                propensity: float, version: int, created: float) -> str:
        """Store one new decision (SelectArm's) under a fresh id of this store's own and
        return the id; like :meth:`new_id` + :meth:`put`, but found through the own ring, as
        a batch's ids are (no entry in the id dict, which costs most in a full store, and no
        id string kept: :meth:`columns` writes it from the counter)."""
        counter = self._counter = self._counter + 1
        decision_id = self._id_format(counter)
        uids, props, versions, times, rewarded, defaulted, own, owner, ring = self._row_views
        c = self.capacity
        seq = self._tail
        pos = seq % c
        if seq - self._head >= c:  # full: the oldest row is the one overwritten here
            if own[pos] < 0:  # a dict-indexed row (the rest is overwritten below)
                self._unindex(pos, self._head)
            self._head += 1
            self.evicted += 1
        self._ids[pos] = None  # the id is the ring's: nothing kept per decision for it
        self._slates[pos] = slate
        self._contexts[pos] = context
        uids[pos] = uid
        props[pos] = propensity
        versions[pos] = version
        times[pos] = created
        rewarded[pos] = False
        defaulted[pos] = False
        own[pos] = counter
        owner[pos] = 0
        ring[counter % c] = seq
        self._tail = seq + 1
        self._puts += 1
        if self._puts % _EXPIRE_EVERY == 0:
            self._expire(created)
        return decision_id

    def put_many(self, batch: DecisionColumns, expire: bool = True,
                 first_counter: int | None = None, issuer: str | None = None) -> None:
        """Store a batch of decisions (their order is their age order). ``first_counter``:
        the ids are consecutive, from that counter on, of ``issuer`` (an id prefix; None:
        this store), and ``batch.ids`` may be None (ids of an issuer that is not registered
        are then made and kept in the id dict). Without it, consecutive ids of a registered
        issuer are recognised by themselves."""
        n = len(batch)
        c = self.capacity
        ring = 0
        if first_counter is not None:
            prefix = self._prefix if issuer is None else issuer
            found = self._issuers.get(prefix)
            if found is None:  # e.g. a logged batch of an earlier process
                if batch.ids is None:
                    batch.ids = self.ids(first_counter, n, prefix)
                first_counter = None
            else:
                ring = found
        elif (run := self._counter_run(batch.ids)) is not None:
            ring, first_counter = run
        if n > c:  # only the newest ``capacity`` can be kept
            cut = n - c
            batch = batch.tail(cut)
            if first_counter is not None:
                first_counter += cut
            n = c
        start = self._tail
        overflow = start + n - self._head - c
        if overflow > 0:
            self._forget(self._head, self._head + overflow)
            self._head += overflow
            self.evicted += overflow
        done = 0
        while done < n:  # at most two contiguous pieces of the ring
            pos = (start + done) % c
            take = min(n - done, c - pos)
            rows = slice(pos, pos + take)
            part = slice(done, done + take)
            self._ids[rows] = [None] * take if batch.ids is None else batch.ids[part]
            self._slates[rows] = batch.slates[part]
            self._contexts[rows] = batch.contexts[part]
            self._uids[rows] = batch.uids[part]
            self._propensities[rows] = batch.propensities[part]
            self._versions[rows] = batch.versions[part]
            self._created[rows] = batch.created[part]
            self._rewarded[rows] = batch.rewarded[part]
            self._defaulted[rows] = False if batch.defaulted is None else batch.defaulted[part]
            self._reward[rows] = np.nan if batch.rewards is None else batch.rewards[part]
            self._slot[rows] = -1 if batch.reward_slots is None else batch.reward_slots[part]
            if first_counter is None:
                self._own[rows] = -1
            else:
                counters = np.arange(first_counter + done, first_counter + done + take)
                self._own[rows] = counters
                self._owner[rows] = ring
                self._own_rows[ring][counters % c] = np.arange(start + done, start + done + take)
            done += take
        if first_counter is None:
            assert batch.ids is not None
            before = len(self._index)
            self._index.update(zip(batch.ids, range(start, start + n), strict=True))
            if len(self._index) - before < n:  # some of these ids were stored before
                self._keep_rewarded_ids(batch.ids, start)
        self._tail = start + n
        if expire and n:
            self._expire(float(batch.created[-1]))

    def find(self, decision_id: str, now: float) -> int | None:
        """The row (sequence number) of ``decision_id`` as of time ``now`` (seconds since the
        epoch), or None if unknown or expired by then."""
        seq = self._seq(decision_id)
        if seq is None or now - self._created[seq % self.capacity] > self.ttl_seconds:
            return None
        return seq

    def uids_of(self, seqs: np.ndarray) -> np.ndarray:
        """The experiment incarnations of live rows ``seqs``."""
        return self._uids[seqs % self.capacity]

    def uid_of(self, seq: int) -> int:
        """The experiment incarnation of row ``seq`` (a live row: from :meth:`find`)."""
        return int(self._uids[seq % self.capacity])

    def is_rewarded_row(self, seq: int) -> bool:
        """Whether the decision in row ``seq`` has had its reward (False for a row evicted
        since it was found)."""
        return seq >= self._head and bool(self._rewarded[seq % self.capacity])

    def mark_rewarded_row(self, seq: int, reward: float = np.nan, slot: int = -1) -> None:
        """Remember that the decision in row ``seq`` has had its reward, ``reward`` for the arm
        in ``slot`` of its slate (no-op for a row evicted since it was found)."""
        if seq >= self._head:
            pos = seq % self.capacity
            rewarded, rewards, slots = self._reward_views
            rewarded[pos] = True
            rewards[pos] = reward
            slots[pos] = slot

    def mark_defaulted_rows(self, seqs: np.ndarray, reward: float) -> None:
        """Remember that the decisions in rows ``seqs`` were settled with the default reward
        ``reward`` for their first arm (rows evicted since they were found are skipped)."""
        seqs = seqs[seqs >= self._head]
        pos = seqs % self.capacity
        self._defaulted[pos] = True
        self._reward[pos] = reward
        self._slot[pos] = 0

    def slot_of(self, seq: int, arm_id: str) -> int:
        """The slot of ``arm_id`` in the slate of live row ``seq`` (-1 if not in it)."""
        slate = self._slates[seq % self.capacity]
        return slate.index(arm_id) if slate is not None and arm_id in slate else -1

    def get(self, decision_id: str, now: float | None = None) -> DecisionRecord | None:
        """The live record of ``decision_id`` (a copy), or None if unknown or expired."""
        seq = self.find(decision_id, now if now is not None else time.time())
        if seq is None:
            return None
        pos = seq % self.capacity
        created = float(self._created[pos])
        return DecisionRecord(int(self._uids[pos]), self._slates[pos],  # type: ignore[arg-type]
                              self._contexts[pos], float(self._propensities[pos]),
                              int(self._versions[pos]), created, bool(self._rewarded[pos]), seq,
                              bool(self._defaulted[pos]))

    def is_rewarded(self, record: DecisionRecord) -> bool:
        """Whether the stored decision ``record`` came from has had its reward by now (the
        record is a copy: a reward applied after it was read does not show in it)."""
        if record.rewarded:
            return True
        return record.row >= self._head and bool(self._rewarded[record.row % self.capacity])

    def mark_rewarded(self, record: DecisionRecord) -> None:
        """Remember that the stored decision ``record`` came from has had its reward."""
        record.rewarded = True
        self.mark_rewarded_row(record.row)

    def _expire(self, now: float) -> None:
        # Rows are in creation order, so expired ones sit at the front. Rows from
        # ``expire_hold`` on are kept past the TTL (only capacity evicts them) until the reward
        # windows' sweep has looked at them (see :class:`state.settlement.Settlement`).
        deadline = now - self.ttl_seconds
        head, c = self._head, self.capacity
        tail = self._tail if self.expire_hold >= self._tail else int(self.expire_hold)
        if head >= tail or self._created[head % c] >= deadline:
            return
        stop = head
        while stop < tail:  # chunked scan of the (sorted) creation times
            pos = stop % c
            chunk = self._created[pos : min(pos + (tail - stop), c)]
            older = int(np.searchsorted(chunk, deadline, side="left"))
            stop += older
            if older < len(chunk):
                break
        self._forget(head, stop)
        self._head = stop
        self.expired += stop - head

    def discard(self, decision_id: str) -> None:
        seq = self._seq(decision_id)
        if seq is not None:
            self._index.pop(decision_id, None)
            self._own[seq % self.capacity] = -2  # neither index finds the row any more

    # -- snapshots -------------------------------------------------------------------------
    def columns(self) -> DecisionColumns:
        """Every record held, oldest first, as columns (copies, taken at once)."""
        c = self.capacity
        formats = [id_format(prefix) for prefix in self._issuers]  # ring -> its ids
        rows = np.arange(self._head, self._tail, dtype=np.int64) % c
        ids: list[str] = []
        plist: list[int] = []
        for seq, p, counter, ring in zip(range(self._head, self._tail), rows.tolist(),
                                         self._own[rows].tolist(), self._owner[rows].tolist(),
                                         strict=True):
            decision_id = self._ids[p]
            if decision_id is None:  # a batch row found through a ring: no id string made
                if counter < 0:
                    continue
                decision_id = formats[ring](counter)
            if self._seq(decision_id) == seq:
                ids.append(decision_id)
                plist.append(p)
        pos = np.array(plist, dtype=np.int64)
        return DecisionColumns(
            ids, self._uids[pos], [self._slates[p] for p in plist],  # type: ignore[misc]
            [self._contexts[p] for p in plist], self._propensities[pos], self._versions[pos],
            self._created[pos], self._rewarded[pos], *self._settlement(pos))

    def _settlement(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(defaulted, reward, slot) of rows at ring positions ``pos``; reward and slot are
        NaN / -1 where the row has neither a reward nor a default (a row SelectArm stored over
        an older one keeps that one's values until it is settled)."""
        settled = self._rewarded[pos] | self._defaulted[pos]
        return (self._defaulted[pos], np.where(settled, self._reward[pos], np.nan),
                np.where(settled, self._slot[pos], -1).astype(np.int32))

    # -- reward windows, export ------------------------------------------------------------
    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, slice]]:
        """(first sequence number, ring slice) of the at most two contiguous pieces of rows
        ``start .. stop-1``."""
        c = self.capacity
        while start < stop:
            pos = start % c
            take = min(stop - start, c - pos)
            yield start, slice(pos, pos + take)
            start += take

    def unsettled(self, start: int, uids: np.ndarray, deadline: float, limit: int
                  ) -> tuple[np.ndarray, int]:
        """Rows of experiment incarnations ``uids`` made at or before ``deadline`` (seconds
        since the epoch) that have neither a reward nor a default, from sequence number
        ``start`` on (older rows evicted since are skipped), at most ``limit``: (their sequence
        numbers, where to look next time). Looking stops at the first such row made after
        ``deadline`` (rows are in creation order, but for a few ms of other workers'
        decisions), so no row of ``uids`` before the returned position is left unsettled."""
        found: list[np.ndarray] = []
        count = 0
        seq = max(start, self._head)
        for first, rows in self._pieces(seq, self._tail):
            created = self._created[rows]
            ends = int(np.searchsorted(created, deadline, side="right"))
            due = slice(rows.start, rows.start + ends)  # only these are looked at
            mine = np.isin(self._uids[due], uids) & ~self._rewarded[due] & \
                ~self._defaulted[due] & (self._own[due] != -2)
            early = np.flatnonzero(mine & (created[:ends] > deadline))  # out of order
            if len(early):
                ends = int(early[0])
            hits = np.flatnonzero(mine[:ends])
            if count + len(hits) >= limit:
                hits = hits[:limit - count]
                found.append(first + hits)
                return np.concatenate(found), first + int(hits[-1]) + 1 if len(hits) else first
            found.append(first + hits)
            count += len(hits)
            seq = first + ends
            if ends < len(created):
                break
        return (np.concatenate(found) if found else np.empty(0, dtype=np.int64)), seq

    def first_arms(self, seqs: np.ndarray) -> list[str]:
        """The first arm of each live row's slate."""
        slates = self._slates
        return [slates[p][0] for p in (seqs % self.capacity).tolist()]  # type: ignore[index]

    def contexts_of(self, seqs: np.ndarray) -> list[np.ndarray | None]:
        """The stored context of each live row."""
        contexts = self._contexts
        return [contexts[p] for p in (seqs % self.capacity).tolist()]

    def id_parts(self, seqs: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Each live row's id as (issuer prefixes, issuer index per row, counter per row):
        row ``i``'s id is ``<prefixes[issuers[i]]>-<counters[i] in hex>``. A row whose id is
        not of that form (never the case for ids a store issued) gets issuer -1."""
        c = self.capacity
        pos = seqs % c
        counters = self._own[pos].copy()
        rings = self._owner[pos].astype(np.int64)
        prefixes = list(self._issuers)  # ring -> prefix
        issuers = np.where(counters >= 0, rings, -1)
        index = {prefix: i for i, prefix in enumerate(prefixes)}
        for k in np.flatnonzero(counters < 0).tolist():  # ids kept as strings
            parts = split_decision_id(self._ids[int(pos[k])] or "")
            if parts is None:
                continue
            ring = index.get(parts[0])
            if ring is None:
                ring = index[parts[0]] = len(prefixes)
                prefixes.append(parts[0])
            issuers[k] = ring
            counters[k] = parts[1]
        return prefixes, issuers, counters

    def rows_of_ids(self, prefixes: Sequence[str], issuers: np.ndarray, counters: np.ndarray,
                    now: float) -> np.ndarray:
        """The rows (sequence numbers; -1 = not held, or expired at ``now``) of the ids
        ``<prefixes[issuers[i]]>-<counters[i] in hex>`` (see :meth:`id_parts`)."""
        c = self.capacity
        out = np.full(len(counters), -1, dtype=np.int64)
        for i, prefix in enumerate(prefixes):
            which = np.flatnonzero(issuers == i)
            if not len(which):
                continue
            ring = self._issuers.get(prefix)
            mine = counters[which]
            if ring is not None:  # found through the issuer's ring
                seqs = self._own_rows[ring][mine % c]
                pos = seqs % c
                ok = (seqs >= self._head) & (seqs < self._tail) & (self._own[pos] == mine) & \
                    (self._owner[pos] == ring)
                out[which[ok]] = seqs[ok]
                which, mine = which[~ok], mine[~ok]
            fmt = id_format(prefix)
            for k, counter in zip(which.tolist(), mine.tolist(), strict=True):
                seq = self._index.get(fmt(counter))
                if seq is not None:
                    out[k] = seq
        live = out >= 0
        if now > -np.inf:
            live &= now - self._created[out % c] <= self.ttl_seconds
        out[~live] = -1
        return out

    def decisions_of(self, uid: int, start: float, end: float) -> DecisionColumns:
        """The decisions of experiment incarnation ``uid`` made in [``start``, ``end``) (seconds
        since the epoch), oldest first, with their ids and how they were settled (copies, taken
        at once). Rewarded tombstones (rewards by explicit arm for decisions made elsewhere:
        propensity 0, which no decision of a policy has) are not decisions and are left out."""
        c = self.capacity
        parts = []
        for first, rows in self._pieces(self._head, self._tail):
            created = self._created[rows]
            hit = (self._uids[rows] == uid) & (created >= start) & (created < end) & \
                (self._propensities[rows] > 0) & (self._own[rows] != -2)
            parts.append(first + np.flatnonzero(hit))
        seqs = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        prefixes, issuers, counters = self.id_parts(seqs)
        formats = [id_format(prefix) for prefix in prefixes]
        ids = [formats[i](k) if i >= 0 else self._ids[s % c] or ""
               for i, k, s in zip(issuers.tolist(), counters.tolist(), seqs.tolist(),
                                  strict=True)]
        pos = seqs % c
        plist = pos.tolist()
        return DecisionColumns(
            ids, self._uids[pos], [self._slates[p] for p in plist],  # type: ignore[misc]
            [self._contexts[p] for p in plist], self._propensities[pos], self._versions[pos],
            self._created[pos], self._rewarded[pos], *self._settlement(pos))

    def items(self) -> list[tuple[str, DecisionRecord]]:
        """The records, oldest first, as (decision_id, record) pairs."""
        cols = self.columns()
        assert cols.ids is not None
        assert cols.defaulted is not None
        return [(cols.ids[i], DecisionRecord(int(cols.uids[i]), cols.slates[i], cols.contexts[i],
                                             float(cols.propensities[i]), int(cols.versions[i]),
                                             float(cols.created[i]), bool(cols.rewarded[i]),
                                             defaulted=bool(cols.defaulted[i])))
                for i in range(len(cols))]

    def load(self, pairs: Iterable[tuple[str, DecisionRecord]]) -> None:
        """Replace the contents with (decision_id, record) pairs, oldest first (restore)."""
        self.clear()
        for decision_id, record in pairs:
            self.put(decision_id, record, expire=False)

    def load_columns(self, cols: DecisionColumns) -> None:
        """Replace the contents with ``cols``, oldest first (restore)."""
        self.clear()
        self.put_many(cols, expire=False)


def slate_tuples(arm_ids: Sequence[str], ranked: np.ndarray,
                 slates_of_one: Sequence[tuple[str]] | None = None) -> list[tuple[str, ...]]:
    """Rows of arm positions (``ranked[i]``) as tuples of arm ids. Single-arm slates are
    ``slates_of_one[arm]`` when given (an experiment's, shared with its SelectArm decisions),
    else share one tuple per arm when there are at least as many rows as arms."""
    if ranked.shape[1] == 1:
        positions = ranked[:, 0].tolist()
        if slates_of_one is not None:
            return list(map(slates_of_one.__getitem__, positions))
        if len(arm_ids) <= len(positions):
            return list(map([(a,) for a in arm_ids].__getitem__, positions))
        return [(arm_ids[i],) for i in positions]
    return [tuple(arm_ids[i] for i in row) for row in ranked.tolist()]
