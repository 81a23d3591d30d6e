"""Snapshots: a point-in-time image of all experiments and the decision store.

File ``snapshot-<lsn, 20 digits>.snap``::

    magic b"BANDITD-SNAP" | u32 format version | u64 payload length | u32 crc32 | payload

where the payload is a ``banditd.storage.v1.Snapshot`` message. Written to a temporary
file, fsynced, atomically renamed, then the directory is fsynced; the previous good
snapshot is kept. A file whose magic, version, length or checksum is wrong is reported and
never loaded.

The server writes snapshots from a forked child process (see
:meth:`server.durability.Durability.take_snapshot`): the child's memory is a copy-on-write
image of the state at the log rotation instant, so ``capture`` + ``encode`` + ``write`` run
there at leisure and the serving process never waits for serialisation.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from banditd.storage.v1 import storage_pb2 as st

from decision.v1 import decision_pb2 as pb
from server.decision_store import DecisionColumns, DecisionStore
from server.registry import ExperimentRegistry
from server.wal import fsync_dir, numbered_files

MAGIC = b"BANDITD-SNAP"
FORMAT_VERSION = 1
HEADER = struct.Struct("<12sIQI")
PREFIX, SUFFIX = "snapshot-", ".snap"


class SnapshotError(Exception):
    """A snapshot file that must not be loaded (and why)."""


def snapshot_name(lsn: int) -> str:
    return f"{PREFIX}{lsn:020d}{SUFFIX}"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(lsn, path) of snapshot files, newest first."""
    return numbered_files(directory, PREFIX, SUFFIX)[::-1]


def _array(a: np.ndarray) -> st.Array:
    a = np.ascontiguousarray(a)
    return st.Array(shape=list(a.shape), dtype=a.dtype.str, data=a.tobytes())


def _from_array(msg: st.Array) -> np.ndarray:
    return np.frombuffer(msg.data, dtype=np.dtype(msg.dtype)).reshape(tuple(msg.shape)).copy()


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


_COUNTERS = ("selections", "rewards", "reward_sum", "positives", "ingested", "rng")


def capture(lsn: int, registry: ExperimentRegistry, decisions: DecisionStore) -> Capture:
    """References to the state's arrays and decision records, without copying: call it in
    the forked snapshot writer, whose memory is already a private image of the instant."""
    cap = Capture(lsn=lsn, next_uid=registry.next_uid)
    for e in registry.experiments():
        config = pb.Experiment()
        config.CopyFrom(e.config)
        cache = set(e.spec.kernel.CACHE_ARRAYS)
        state = [None if i in cache else a for i, a in enumerate(e.state)]
        counters = {name: getattr(e, name) for name in _COUNTERS}
        periods = {p: dict(arms) for p, arms in e.periods.items()}
        cap.experiments.append(_ExperimentImage(config, e.uid, e.version, state, counters, periods))
        cap.uid_to_id[e.uid] = e.experiment_id
    cap.decisions = decisions.columns()
    return cap


def encode(cap: Capture) -> bytes:
    """Serialise a capture (safe in a worker thread)."""
    snap = st.Snapshot(format_version=FORMAT_VERSION, lsn=cap.lsn, created=time.time(),
                       next_uid=cap.next_uid)
    for img in cap.experiments:
        es = snap.experiments.add()
        es.config.CopyFrom(img.config)
        es.uid = img.uid
        es.version = img.version
        for a in img.state:
            es.state.append(_array(a) if a is not None else st.Array())
        for name in _COUNTERS:
            getattr(es, name).CopyFrom(_array(img.counters[name]))
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
    payload = snap.SerializeToString()
    return HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


def write(directory: Path, lsn: int, data: bytes) -> Path:
    """Atomically write a snapshot file: temp -> fsync -> rename -> fsync(dir)."""
    final = directory / snapshot_name(lsn)
    tmp = directory / (final.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def read(path: Path) -> st.Snapshot:
    """Parse and verify a snapshot file, or raise SnapshotError saying what is wrong."""
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise SnapshotError(f"{path.name}: {len(data)} bytes, shorter than the header")
    magic, version, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError(f"{path.name}: not a banditd snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"{path.name}: format version {version}, this server reads 1")
    payload = data[HEADER.size :]
    if len(payload) != length:
        raise SnapshotError(f"{path.name}: truncated ({len(payload)} of {length} payload bytes)")
    if zlib.crc32(payload) != crc:
        raise SnapshotError(f"{path.name}: checksum mismatch (corrupt)")
    snap = st.Snapshot()
    try:
        snap.ParseFromString(payload)
    except Exception as exc:  # protobuf's DecodeError
        raise SnapshotError(f"{path.name}: undecodable payload ({exc})") from None
    return snap


def load(snap: st.Snapshot, registry: ExperimentRegistry, decisions: DecisionStore) -> None:
    """Replace the registry's and decision store's contents with the snapshot's."""
    registry.clear()
    for es in snap.experiments:
        e = registry.restore(es.config, es.uid)
        for i, msg in enumerate(es.state):
            if msg.dtype:  # cache arrays were left out: keep new_state's (invalid) ones
                e.state[i][...] = _from_array(msg)
        for name in _COUNTERS:
            setattr(e, name, _from_array(getattr(es, name)))
        e.version = es.version
        e.periods = {pm.period: {m.arm_id: (m.trials, m.successes, m.value) for m in pm.metrics}
                     for pm in es.periods}
    registry.next_uid = max(registry.next_uid, snap.next_uid)
    decisions.load_columns(decision_columns(snap.decisions))


def decision_columns(t: st.DecisionTable) -> DecisionColumns:
    """A ``DecisionTable`` (log record or snapshot) as the decision store's columns."""
    n = len(t.decision_ids)
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
    snap = read(path)
    lines = [
        f"{path}: banditd snapshot, format {snap.format_version}, {path.stat().st_size:,} bytes",
        f"  log position (lsn): {snap.lsn}",
        f"  taken: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(snap.created))} UTC",
        f"  experiments: {len(snap.experiments)}",
    ]
    for es in snap.experiments:
        c = es.config
        rewards = _from_array(es.rewards)
        selections = _from_array(es.selections)
        lines.append(
            f"    {c.experiment_id}: policy {c.policy.WhichOneof('kind')}, "
            f"{len(c.arms)} arms, context_dim {c.context_dim}, "
            f"{pb.RewardType.Name(c.reward_type)}, model_version {es.version}, "
            f"{int(selections.sum())} selections, {int(rewards.sum())} rewards, "
            f"{len(es.periods)} ingested periods"
        )
    rewarded = sum(snap.decisions.rewarded)
    lines.append(f"  decisions: {len(snap.decisions.decision_ids)} ({rewarded} rewarded)")
    return "\n".join(lines)
