"""Snapshots: a point-in-time image of all experiments and the decision store.

File ``snapshot-<lsn, 20 digits>.snap`` (little-endian)::

    magic b"BANDITD-SNAP" | u32 format version | u64 message length | message
    | array section | u64 bytes before the trailer | u32 crc32 of those bytes

where the message is a ``banditd.storage.v1.Snapshot`` whose arrays name their place
(offset, length) in the array section instead of holding their bytes. Written to a temporary
file, fsynced, atomically renamed, then the directory is fsynced; the previous good
snapshot is kept. A file whose magic, version, length or checksum is wrong is reported and
never loaded.

The server writes snapshots from a forked child process (see
:meth:`storage.durability.Durability.take_snapshot`): the child's memory is a copy-on-write
image of the state at the log rotation instant, so ``capture`` + ``write`` run there, paced
to a write rate, and the serving process never waits for serialisation.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.ads.pacing import Campaign, CampaignRegistry
from banditd.server.state.decision_store import DecisionColumns, DecisionStore
from banditd.server.state.registry import ExperimentRegistry
from banditd.server.storage.wal import fsync_dir, numbered_files
from banditd.storage.v1 import storage_pb2 as st

MAGIC = b"BANDITD-SNAP"
FORMAT_VERSION = 2
HEADER = struct.Struct("<12sIQ")  # magic, format version, message length
TRAILER = struct.Struct("<QI")  # bytes before the trailer, crc32 of them
CHUNK = 1 << 20  # array bytes written per write(2)
SYNC_EVERY = 8 << 20  # fdatasync after this many array bytes
PREFIX, SUFFIX = "snapshot-", ".snap"


class SnapshotError(Exception):
    """A snapshot file that must not be loaded (and why)."""


def snapshot_name(lsn: int) -> str:
    return f"{PREFIX}{lsn:020d}{SUFFIX}"


def temp_path(directory: Path, lsn: int) -> Path:
    """Where :func:`write` builds snapshot ``lsn`` before renaming it into place."""
    return directory / (snapshot_name(lsn) + ".tmp")


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(lsn, path) of snapshot files, newest first."""
    return numbered_files(directory, PREFIX, SUFFIX)[::-1]


class _Arrays:
    """Collects the arrays of a snapshot: each becomes an ``Array`` that records its place
    in the array section, and its bytes are written after the message, not copied into it."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, a: np.ndarray) -> st.Array:
        a = np.ascontiguousarray(a)
        msg = st.Array(shape=list(a.shape), dtype=a.dtype.str, offset=self.size, length=a.nbytes)
        self.parts.append(a)
        self.size += a.nbytes
        return msg


def _from_array(msg: st.Array, section: memoryview) -> np.ndarray:
    if msg.length != 0 and msg.offset + msg.length > len(section):
        raise SnapshotError(f"array of {msg.length} bytes at {msg.offset} is past the end")
    data = section[msg.offset : msg.offset + msg.length]
    return np.frombuffer(data, dtype=np.dtype(msg.dtype)).reshape(tuple(msg.shape)).copy()


@dataclass
class _ExperimentImage:
    config: pb.Experiment
    uid: int
    version: int
    state: list[np.ndarray | None]  # None = a cache array left out
    counters: dict[str, np.ndarray]
    periods: dict[str, dict[str, tuple[float, float, float]]]


@dataclass
class Capture:
    """What ``capture`` took at the rotation instant."""

    lsn: int
    next_uid: int
    experiments: list[_ExperimentImage] = field(default_factory=list)
    decisions: DecisionColumns | None = None
    uid_to_id: dict[int, str] = field(default_factory=dict)
    campaigns: list[Campaign] = field(default_factory=list)


_COUNTERS = ("selections", "rewards", "reward_sum", "positives", "ingested", "rng")


def capture(lsn: int, registry: ExperimentRegistry, decisions: DecisionStore,
            campaigns: CampaignRegistry) -> Capture:
    """References to the state's arrays and decision records, without copying: call it in
    the forked snapshot writer, whose memory is already a private image of the instant."""
    cap = Capture(lsn=lsn, next_uid=registry.next_uid)
    for e in registry.experiments():
        config = pb.Experiment()
        config.CopyFrom(e.config)
        cache = set(e.spec.kernel.CACHE_FIELDS)
        state = [None if name in cache else a for name, a in e.state._asdict().items()]
        counters = {name: getattr(e, name) for name in _COUNTERS}
        periods = {p: dict(arms) for p, arms in e.periods.items()}
        cap.experiments.append(_ExperimentImage(config, e.uid, e.version, state, counters, periods))
        cap.uid_to_id[e.uid] = e.experiment_id
    cap.decisions = decisions.columns()
    cap.campaigns = campaigns.campaigns()
    return cap


def encode(cap: Capture) -> tuple[bytes, list[memoryview]]:
    """The file's head (magic, version, length, the message with arrays by reference) and
    the array section's pieces: views of the arrays' bytes, in file order (no copies)."""
    arrays = _Arrays()
    snap = st.Snapshot(format_version=FORMAT_VERSION, lsn=cap.lsn, created=time.time(),
                       next_uid=cap.next_uid)
    for img in cap.experiments:
        es = snap.experiments.add()
        es.config.CopyFrom(img.config)
        es.uid = img.uid
        es.version = img.version
        for a in img.state:
            es.state.append(arrays.add(a) if a is not None else st.Array())
        for name in _COUNTERS:
            getattr(es, name).CopyFrom(arrays.add(img.counters[name]))
        for period, arms in img.periods.items():
            pm = es.periods.add(period=period)
            for arm_id, (t, s, v) in arms.items():
                pm.metrics.add(arm_id=arm_id, trials=t, successes=s, value=v)
    table = snap.decisions
    cols = cap.decisions
    if cols is not None and len(cols):
        table.decision_ids.extend(cols.ids)
        table.experiment_uids.extend(cols.uids.tolist())
        table.slate_sizes.extend([len(s) for s in cols.slates])
        table.arm_ids.extend([a for s in cols.slates for a in s])
        table.propensities.extend(cols.propensities.tolist())
        table.model_versions.extend(cols.versions.tolist())
        table.created.extend(cols.created.tolist())
        table.rewarded.extend(cols.rewarded.tolist())
        table.context_sizes.extend([0 if c is None else len(c) for c in cols.contexts])
        contexts = [c for c in cols.contexts if c is not None]
        if contexts:
            table.contexts.extend(np.concatenate(contexts).tolist())
    snap.campaigns.extend(c.to_proto() for c in cap.campaigns)
    message = snap.SerializeToString()
    head = HEADER.pack(MAGIC, FORMAT_VERSION, len(message)) + message
    return head, [part.data.cast("B") if part.nbytes else memoryview(b"")
                  for part in arrays.parts]


def write(directory: Path, lsn: int, cap: Capture, mb_per_s: float = 0.0) -> Path:
    """Atomically write a snapshot file: temp -> fsync -> rename -> fsync(dir).

    The array section is streamed in ``CHUNK`` slices straight from the arrays (no copy of
    the state is built), checksummed as it goes, and paced to ``mb_per_s`` (0 = as fast as
    possible) with an fdatasync every ``SYNC_EVERY`` bytes, like Redis'
    rdb-save-incremental-fsync: a burst of copying and dirty pages would take memory
    bandwidth and disk from the serving process.
    """
    head, pieces = encode(cap)
    final = directory / snapshot_name(lsn)
    tmp = temp_path(directory, lsn)
    rate = mb_per_s * 1e6
    started = time.monotonic()
    written = unsynced = 0
    with open(tmp, "wb", buffering=0) as f:
        crc = zlib.crc32(head)
        f.write(head)
        for view in pieces:
            for pos in range(0, len(view), CHUNK):
                chunk = view[pos : pos + CHUNK]
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
                written += len(chunk)
                unsynced += len(chunk)
                if unsynced >= SYNC_EVERY:
                    os.fdatasync(f.fileno())
                    unsynced = 0
                if rate:
                    ahead = written / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        size = len(head) + written
        f.write(TRAILER.pack(size, crc))
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def read(path: Path) -> tuple[st.Snapshot, memoryview]:
    """Parse and verify a snapshot file, or raise SnapshotError saying what is wrong.

    Returns the message and its array section (see ``load``)."""
    return decode(path.read_bytes(), path.name)


def decode(data: bytes, name: str) -> tuple[st.Snapshot, memoryview]:
    """Parse and verify a snapshot's bytes (a file's, or an :func:`image` a leader sends to
    its followers); errors name it ``name``."""
    if len(data) < HEADER.size:
        raise SnapshotError(f"{name}: {len(data)} bytes, shorter than the header")
    magic, version, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{name}: not a banditd snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"{name}: format version {version}, this server reads {FORMAT_VERSION}")
    if len(data) < HEADER.size + TRAILER.size:
        raise SnapshotError(f"{name}: {len(data)} bytes, truncated (no trailer)")
    size, crc = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    if size != len(data) - TRAILER.size:
        raise SnapshotError(f"{name}: truncated or extended ({len(data) - TRAILER.size} "
                            f"bytes before the trailer, it says {size})")
    body = memoryview(data)[:size]
    if zlib.crc32(body) != crc:
        raise SnapshotError(f"{name}: checksum mismatch (corrupt)")
    if HEADER.size + length > size:
        raise SnapshotError(f"{name}: message length {length} is past the end")
    snap = st.Snapshot()
    try:
        snap.ParseFromString(body[HEADER.size : HEADER.size + length])
    except Exception as exc:  # protobuf's DecodeError
        raise SnapshotError(f"{name}: undecodable message ({exc})") from None
    return snap, body[HEADER.size + length :]


def image(cap: Capture) -> bytes:
    """The bytes :func:`write` would put in the file, in memory (a leader's state for its
    followers; the arrays are copied once, so the state may move on afterwards)."""
    head, pieces = encode(cap)
    body = b"".join([head, *pieces])
    return body + TRAILER.pack(len(body), zlib.crc32(body))


def load(snap: st.Snapshot, section: memoryview, registry: ExperimentRegistry,
         decisions: DecisionStore, campaigns: CampaignRegistry) -> None:
    """Replace the registry's and decision store's contents with the snapshot's (``section``
    holds the array bytes, as returned by ``read``)."""
    registry.clear()
    for es in snap.experiments:
        e = registry.restore(es.config, es.uid)
        for name, msg in zip(e.state._fields, es.state, strict=True):  # in State order
            if msg.dtype:  # cache arrays were left out: keep new_state's (invalid) ones
                getattr(e.state, name)[...] = _from_array(msg, section)
        for name in _COUNTERS:
            setattr(e, name, _from_array(getattr(es, name), section))
        e.version = es.version
        e.periods = {pm.period: {m.arm_id: (m.trials, m.successes, m.value) for m in pm.metrics}
                     for pm in es.periods}
    registry.next_uid = max(registry.next_uid, snap.next_uid)
    decisions.load_columns(decision_columns(snap.decisions))
    campaigns.clear()
    for state in snap.campaigns:
        campaigns.load(state)


def decision_columns(t: st.DecisionTable) -> DecisionColumns:
    """A ``DecisionTable`` (log record or snapshot) as the decision store's columns; a table
    whose columns disagree in length is refused (ValueError) before anything is stored."""
    n = len(t.decision_ids)
    for name in ("experiment_uids", "slate_sizes", "propensities", "model_versions", "created"):
        if len(getattr(t, name)) != n:
            raise ValueError(f"decision table of {n} ids has {len(getattr(t, name))} {name}")
    if len(t.rewarded) not in (0, n) or len(t.context_sizes) not in (0, n):
        raise ValueError(f"decision table of {n} ids has {len(t.rewarded)} rewarded flags and "
                         f"{len(t.context_sizes)} context sizes")
    arm_ids = list(t.arm_ids)
    sizes = list(t.slate_sizes)
    slates: list[tuple[str, ...]]
    if n and len(arm_ids) == n:  # single-arm decisions only
        slates = [(a,) for a in arm_ids]
    else:
        slates = []
        a = 0
        for size in sizes:
            slates.append(tuple(arm_ids[a : a + size]))
            a += size
    contexts: list[np.ndarray | None] = [None] * n
    if len(t.contexts):
        values = np.array(t.contexts, dtype=np.float64)
        c = 0
        for i, size in enumerate(t.context_sizes):
            if size:
                contexts[i] = values[c : c + size]
                c += size
    rewarded = (np.array(t.rewarded, dtype=np.bool_) if len(t.rewarded)
                else np.zeros(n, dtype=np.bool_))
    return DecisionColumns(list(t.decision_ids), np.array(t.experiment_uids, dtype=np.int64),
                           slates, contexts, np.array(t.propensities, dtype=np.float64),
                           np.array(t.model_versions, dtype=np.int64),
                           np.array(t.created, dtype=np.float64), rewarded)


def describe(path: Path) -> str:
    """Human-readable summary of a snapshot file (``banditd snapshot inspect``)."""
    snap, section = read(path)
    lines = [
        f"{path}: banditd snapshot, format {snap.format_version}, {path.stat().st_size:,} bytes",
        f"  log position (lsn): {snap.lsn}",
        f"  taken: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(snap.created))} UTC",
        f"  experiments: {len(snap.experiments)}",
    ]
    for es in snap.experiments:
        c = es.config
        rewards = _from_array(es.rewards, section)
        selections = _from_array(es.selections, section)
        lines.append(
            f"    {c.experiment_id}: policy {c.policy.WhichOneof('kind')}, "
            f"{len(c.arms)} arms, context_dim {c.context_dim}, "
            f"{pb.RewardType.Name(c.reward_type)}, model_version {es.version}, "
            f"{int(selections.sum())} selections, {int(rewards.sum())} rewards, "
            f"{len(es.periods)} ingested periods"
        )
    lines.append(f"  campaigns: {len(snap.campaigns)}")
    for cs in snap.campaigns:
        spent = sum(x.spent_micros for x in cs.ledgers if x.day == cs.day) / 1e6
        lines.append(f"    {cs.config.campaign_id}: budget {cs.config.daily_budget:g} "
                     f"{cs.config.time_zone}, day {cs.day or '-'} spent {spent:g}, "
                     f"{len(cs.reservations)} open reservations, {cs.days_learned} days learned")
    rewarded = sum(snap.decisions.rewarded)
    lines.append(f"  decisions: {len(snap.decisions.decision_ids)} ({rewarded} rewarded)")
    return "\n".join(lines)
