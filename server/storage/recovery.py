"""Recovery: bring the state up from the data directory before serving.

Restore = the newest readable snapshot + the log records after its position, each applied by
the state machine (the same apply as a live request). A damaged snapshot falls back to the
previous one (the log is kept back to it); a damaged log record ends the replay there: the
rest of that segment is moved aside to ``<data_dir>/damaged/`` and reported, and later
appends start after the last good record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from banditd.server.storage import snapshot
from banditd.server.storage.wal import list_segments, read_segment


class Machine(Protocol):
    """What storage needs of the state: records and images in, as opaque bytes."""

    def apply_bytes(self, payload: bytes) -> object: ...

    def image(self, lsn: int) -> tuple[bytes, list[memoryview]]: ...

    def load_image(self, message: bytes, section: memoryview, name: str) -> int: ...


@dataclass
class RestoreReport:
    snapshot: str = ""
    snapshot_lsn: int = 0
    replayed: int = 0
    last_lsn: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def recover(directory: Path, machine: Machine) -> RestoreReport:
    """Restore ``machine`` from ``directory`` (created if missing); what was found."""
    start = time.perf_counter()
    report = RestoreReport()
    directory.mkdir(parents=True, exist_ok=True)
    for tmp in directory.glob("*.tmp"):  # an interrupted snapshot write
        tmp.unlink()
    for lsn, path in snapshot.list_snapshots(directory):
        try:
            message, section = snapshot.read(path)
            machine.load_image(message, section, path.name)
        except Exception as exc:  # SnapshotError, ImageError, a state it cannot hold
            report.problems.append(f"ignored snapshot {path.name}: {exc}")
            continue
        report.snapshot, report.snapshot_lsn = path.name, lsn
        break
    last = report.snapshot_lsn
    for first, path in list_segments(directory):
        scan = read_segment(path)
        for i, payload in enumerate(scan.records):
            lsn = first + i
            if lsn <= last:
                continue
            if lsn != last + 1:
                report.problems.append(
                    f"log gap: record {last + 1} missing before {path.name}; replay stops")
                _set_aside(directory, path, 0, report)
                break
            try:
                machine.apply_bytes(payload)
            except Exception as exc:  # a record that cannot be applied: stop here
                report.problems.append(f"{path.name}: record {lsn} not applied ({exc})")
                _set_aside(directory, path, sum(8 + len(r) for r in scan.records[:i]), report)
                break
            last = lsn
            report.replayed += 1
        else:
            if scan.problem:
                report.problems.append(f"{path.name}: {scan.problem}; "
                                       f"{scan.total_bytes - scan.valid_bytes} bytes ignored")
                _set_aside(directory, path, scan.valid_bytes, report)
                break
            continue
        break
    # segments after a damaged one cannot be replayed in order: move them aside too
    for first, path in list_segments(directory):
        if first > last + 1:
            _set_aside(directory, path, 0, report)
    report.last_lsn = last
    report.seconds = time.perf_counter() - start
    return report


def _set_aside(directory: Path, path: Path, keep_bytes: int, report: RestoreReport) -> None:
    """Keep the first ``keep_bytes`` of a segment; move the original to damaged/."""
    damaged = directory / "damaged"
    damaged.mkdir(exist_ok=True)
    data = path.read_bytes()
    (damaged / f"{path.name}.{int(time.time())}").write_bytes(data)
    if keep_bytes:
        path.write_bytes(data[:keep_bytes])
    else:
        path.unlink()
    report.problems.append(f"{path.name}: damaged part kept in {damaged.name}/")
