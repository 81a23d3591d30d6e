"""Bounded store of recent decisions, so a late reward needs only its decision_id.

Each record keeps what the reward needs (experiment, slate, context) and what
off-policy evaluation needs (propensity, model version, time). Capacity and TTL
bound memory: the oldest records go first. A record remembers whether it was
rewarded, so a retried RecordReward is recognised as a duplicate.

Storage is columnar: a ring of ``capacity`` rows (NumPy columns for the numbers, lists for
the ids, slates and contexts). No Python object is made per decision beyond its id string and
slate tuple (both ignored by the cyclic garbage collector, which would otherwise walk a million
records on every full collection). Rows are found by id in one of two ways:

* ids this store issued for a batch (``new_counters`` + ``put_many(..., first_counter=...)``),
  and batches of consecutive ids of another registered issuer (``register_prefix``: the other
  workers of ``serve --workers N``, whose decisions the leader keeps): the id's counter
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
from collections.abc import Callable, Iterable, Sequence
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
    ) -> None:
        self.experiment_uid = experiment_uid
        self.arm_ids = arm_ids
        self.context = context
        self.propensity = propensity
        self.model_version = model_version
        self.created = created  # wall clock, seconds since the epoch
        self.rewarded = rewarded
        self.row = row  # sequence number in the store (-1: not stored)


class DecisionColumns:
    """Many decisions as columns, oldest first (the store's contents, or a batch to add)."""

    __slots__ = ("ids", "uids", "slates", "contexts", "propensities", "versions", "created",
                 "rewarded")

    def __init__(self, ids: list[str] | None, uids: np.ndarray, slates: list[tuple[str, ...]],
                 contexts: list[np.ndarray | None], propensities: np.ndarray,
                 versions: np.ndarray, created: np.ndarray, rewarded: np.ndarray) -> None:
        self.ids = ids
        self.uids = uids
        self.slates = slates
        self.contexts = contexts
        self.propensities = propensities
        self.versions = versions
        self.created = created
        self.rewarded = rewarded

    def __len__(self) -> int:
        return len(self.uids)


class DecisionStore:
    """decision_id -> decision, insertion ordered, with capacity and TTL."""

    keeps_records = True  # a follower's store keeps none (cluster.replication)

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
        self._own = np.full(c, -1, dtype=np.int64)  # row -> counter of its issued id (-1: none)
        self._owner = np.zeros(c, dtype=np.int16)  # row -> ring of that id (when _own >= 0)
        # per issuer: counter % capacity -> row seq
        self._own_rows = [np.full(c, -1, dtype=np.int64) for _ in self._issuers]
        self._head = 0  # sequence number of the oldest row held
        self._tail = 0  # sequence number the next row gets
        # Item views of the columns :meth:`put_new` writes (a memoryview's item assignment
        # is a few C lines; a NumPy one goes through its whole indexing machinery).
        self._row_views: tuple[Any, ...] = tuple(a.data for a in (
            self._uids, self._propensities, self._versions, self._created, self._rewarded,
            self._own, self._owner, self._own_rows[0]))

    def __len__(self) -> int:
        """Rows held (a re-stored or discarded id's old row counts until it is evicted)."""
        return self._tail - self._head

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
        dict, which holds the tombstone, before the rings that hold a follower's decision; a
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
        uids, props, versions, times, rewarded, own, owner, ring = self._row_views
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
            batch = DecisionColumns(None if batch.ids is None else batch.ids[cut:],
                                    batch.uids[cut:], batch.slates[cut:],
                                    batch.contexts[cut:], batch.propensities[cut:],
                                    batch.versions[cut:], batch.created[cut:],
                                    batch.rewarded[cut:])
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

    def uid_of(self, seq: int) -> int:
        """The experiment incarnation of row ``seq`` (a live row: from :meth:`find`)."""
        return int(self._uids[seq % self.capacity])

    def mark_rewarded_row(self, seq: int) -> None:
        """Remember that the decision in row ``seq`` has had its reward (no-op for a row
        evicted since it was found)."""
        if seq >= self._head:
            self._rewarded[seq % self.capacity] = True

    def get(self, decision_id: str, now: float | None = None) -> DecisionRecord | None:
        """The live record of ``decision_id`` (a copy), or None if unknown or expired."""
        seq = self.find(decision_id, now if now is not None else time.time())
        if seq is None:
            return None
        pos = seq % self.capacity
        created = float(self._created[pos])
        return DecisionRecord(int(self._uids[pos]), self._slates[pos],  # type: ignore[arg-type]
                              self._contexts[pos], float(self._propensities[pos]),
                              int(self._versions[pos]), created, bool(self._rewarded[pos]), seq)

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
        # Rows are in creation order, so expired ones sit at the front.
        deadline = now - self.ttl_seconds
        head, tail, c = self._head, self._tail, self.capacity
        if head == tail or self._created[head % c] >= deadline:
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
            self._created[pos], self._rewarded[pos])

    def items(self) -> list[tuple[str, DecisionRecord]]:
        """The records, oldest first, as (decision_id, record) pairs."""
        cols = self.columns()
        assert cols.ids is not None
        return [(cols.ids[i], DecisionRecord(int(cols.uids[i]), cols.slates[i], cols.contexts[i],
                                             float(cols.propensities[i]), int(cols.versions[i]),
                                             float(cols.created[i]), bool(cols.rewarded[i])))
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
