"""The state's image: everything the state machine holds, as a ``banditd.storage.v1.Snapshot``
message plus an array section (what a snapshot file holds, and what a leader sends a new
follower). The file format around it is :mod:`storage.snapshot`'s.

The message's arrays (``Array``) name their place (offset, length) in the array section instead
of holding their bytes, so the arrays are written straight from the state, never copied into the
message. Cache arrays of a policy state (Monte-Carlo rounds) are left out: a restored state
recomputes them lazily.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.ads.pacing import Campaign
from banditd.server.state.decision_store import DecisionColumns
from banditd.server.state.decisions import columns_table, table_columns
from banditd.storage.v1 import storage_pb2 as st

if TYPE_CHECKING:
    from banditd.server.state.machine import StateMachine


class ImageError(Exception):
    """An image that must not be loaded (and why)."""


class _Arrays:
    """Collects the arrays of an image: each becomes an ``Array`` that records its place in
    the array section, and its bytes are written after the message, not copied into it."""

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
        raise ImageError(f"array of {msg.length} bytes at {msg.offset} is past the end")
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
    """References to the state's parts at one instant (see :func:`capture`)."""

    next_uid: int
    experiments: list[_ExperimentImage] = field(default_factory=list)
    decisions: DecisionColumns | None = None
    campaigns: list[Campaign] = field(default_factory=list)
    audit: list[st.Audit] = field(default_factory=list)


_COUNTERS = ("selections", "rewards", "reward_sum", "positives", "ingested", "rng")


def capture(state: StateMachine) -> Capture:
    """References to the state's arrays and decision records, without copying: call it where
    the memory is already a private image of the instant (the forked snapshot writer), or
    encode at once."""
    registry = state.experiments
    cap = Capture(next_uid=registry.next_uid)
    for e in registry.experiments():
        config = pb.Experiment()
        config.CopyFrom(e.config)
        cache = set(e.spec.kernel.CACHE_FIELDS)
        arrays = [None if name in cache else a for name, a in e.state._asdict().items()]
        counters = {name: getattr(e, name) for name in _COUNTERS}
        periods = {p: dict(arms) for p, arms in e.periods.items()}
        cap.experiments.append(_ExperimentImage(config, e.uid, e.version, arrays, counters,
                                                periods))
    cap.decisions = state.store.columns()
    cap.campaigns = state.campaigns.campaigns()
    cap.audit = state.audit.entries()
    return cap


def encode(cap: Capture, lsn: int) -> tuple[bytes, list[memoryview]]:
    """The image's message (arrays by reference) and its array section's pieces: views of the
    arrays' bytes, in order (no copies). ``lsn``: the log position it is the state of."""
    arrays = _Arrays()
    snap = st.Snapshot(format_version=2, lsn=lsn, created=time.time(), next_uid=cap.next_uid)
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
    if cap.decisions is not None and len(cap.decisions):
        snap.decisions.CopyFrom(columns_table(cap.decisions))
    snap.campaigns.extend(c.to_proto() for c in cap.campaigns)
    snap.audit.extend(cap.audit)
    return snap.SerializeToString(), [part.data.cast("B") if part.nbytes else memoryview(b"")
                                      for part in arrays.parts]


def parse(message: bytes, name: str) -> st.Snapshot:
    """An image's message, or ImageError naming ``name``."""
    snap = st.Snapshot()
    try:
        snap.ParseFromString(message)
    except Exception as exc:  # protobuf's DecodeError
        raise ImageError(f"{name}: undecodable message ({exc})") from None
    return snap


def load(state: StateMachine, snap: st.Snapshot, section: memoryview) -> None:
    """Replace the state's contents with the image's (``section``: its array bytes)."""
    registry = state.experiments
    registry.clear()
    for es in snap.experiments:
        e = registry.restore(es.config, es.uid)
        if len(es.state) != len(e.state):
            raise ImageError(f"experiment '{es.config.experiment_id}': {len(es.state)} state "
                             f"arrays, its policy has {len(e.state)}")
        for name, msg in zip(e.state._fields, es.state, strict=True):  # in State order
            if msg.dtype:  # cache arrays were left out: keep new_state's (invalid) ones
                getattr(e.state, name)[...] = _from_array(msg, section)
        for name in _COUNTERS:
            setattr(e, name, _from_array(getattr(es, name), section))
        registry.own_stream(e)  # the image holds the stream it was taken from
        e.version = es.version
        e.load_periods({pm.period: {m.arm_id: (m.trials, m.successes, m.value)
                                    for m in pm.metrics} for pm in es.periods})
    registry.next_uid = max(registry.next_uid, snap.next_uid)
    state.store.load_columns(table_columns(snap.decisions))
    state.campaigns.clear()
    for campaign in snap.campaigns:
        state.campaigns.load(campaign)
    state.audit.load(snap.audit)


def describe(snap: st.Snapshot, section: memoryview) -> list[str]:
    """Human-readable lines about an image (``banditd snapshot inspect``)."""
    lines = [
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
    lines.append(f"  audit entries: {len(snap.audit)}")
    return lines
