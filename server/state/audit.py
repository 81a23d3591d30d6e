"""The audit trail: who made each administrative change (create, update, delete or reset of
experiments, arms and campaigns; ingested metrics), when, from where, through which RPC.

An entry travels in the record of its change (``WalRecord.audit``), so it is applied with it
(live, on restore, on a replica) and kept in snapshots: the newest ``BANDITD_AUDIT_ENTRIES``
entries survive restarts and log pruning. ``banditd audit`` prints them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from banditd.storage.v1 import storage_pb2 as st

log = logging.getLogger("banditd.audit")


def as_fields(entry: st.Audit) -> dict[str, object]:
    """An entry as plain fields (a JSON line, a structured log line)."""
    return {"time": entry.time, "token_name": entry.token_name, "peer": entry.peer,
            "rpc": entry.rpc, "ids": list(entry.ids)}


class AuditTrail:
    """The newest ``capacity`` audit entries, oldest first."""

    def __init__(self, capacity: int) -> None:
        self._entries: deque[st.Audit] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[st.Audit]:
        return list(self._entries)

    def apply(self, entry: st.Audit) -> None:
        """Apply the ``audit`` of a record (after the change it describes was applied)."""
        if self._entries.maxlen:
            self._entries.append(entry)

    def load(self, entries: Iterable[st.Audit]) -> None:
        """Replace the trail with an image's entries."""
        self._entries.clear()
        self._entries.extend(entries)


def log_entry(entry: st.Audit) -> None:
    """The structured log line of an administrative change made through this server."""
    log.info("%s by %s from %s: %s", entry.rpc, entry.token_name or "(no token)", entry.peer,
             " ".join(entry.ids), extra={"fields": {"audit": as_fields(entry)}})


def read_trail(directory: Path) -> tuple[list[st.Audit], list[str]]:
    """The audit trail of a data directory, read without changing it (a running server's
    too): the newest readable snapshot's entries, then those of the log records after it.
    Also what could not be read."""
    from banditd.server.state.image import ImageError, parse
    from banditd.server.storage import snapshot
    from banditd.server.storage.wal import list_segments, read_segment

    entries: list[st.Audit] = []
    problems: list[str] = []
    after = 0
    for lsn, path in snapshot.list_snapshots(directory):
        try:
            message, _section = snapshot.read(path)
            entries.extend(parse(message, path.name).audit)
        except (snapshot.SnapshotError, ImageError, OSError) as exc:
            problems.append(f"ignored snapshot {path.name}: {exc}")
            continue
        after = lsn
        break
    for first, path in list_segments(directory):
        try:
            scan = read_segment(path)
        except OSError as exc:  # pruned while we looked
            problems.append(f"{path.name}: {exc}")
            continue
        for i, payload in enumerate(scan.records):
            if first + i <= after:
                continue
            record = st.WalRecord.FromString(payload)
            if record.HasField("audit"):
                entries.append(record.audit)
        if scan.problem:
            problems.append(f"{path.name}: {scan.problem}")
    return entries, problems
