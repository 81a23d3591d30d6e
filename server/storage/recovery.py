"""Recovery: bring the state up from the data directory before serving.

Restore = the newest readable snapshot + the log records after its position, each applied by
the state machine (the same apply as a live request). Recovery never deletes what it cannot
read:

* an unreadable snapshot is moved aside to ``<data_dir>/damaged/`` and reported (never again
  counted as the newest, so it can never be the reason valid files are pruned), and the
  previous one is tried (the log is kept back to it);
* a damaged log record ends the replay there: the rest of that segment is copied to
  ``damaged/``, the segment cut back to its last good record, and later segments moved aside;
* if no snapshot is readable and the log does not reach back to its first record (or to the
  snapshot restored), the state cannot be rebuilt whole: :class:`RecoveryRefused`, unless the
  operator asked to start from what remains (``start_from_remains``), in which case every
  record that can be applied is, and the others are counted and reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from typing_extensions import Self

from banditd.server.storage import snapshot
from banditd.server.storage.wal import list_segments, read_segment

DAMAGED = "damaged"


class Machine(Protocol):
    """What storage needs of the state: records and images in, as opaque bytes."""

    def apply_bytes(self, payload: bytes) -> object: ...

    def image(self, lsn: int) -> tuple[bytes, list[memoryview]]: ...

    def load_image(self, message: bytes, section: memoryview, name: str) -> int: ...

    def fresh(self) -> Self:
        """An empty machine of the same configuration (to rebuild the state into)."""
        ...

    def adopt(self, other: Self) -> None:
        """Take over ``other``'s contents (a rebuilt state), in place."""
        ...


class RecoveryRefused(RuntimeError):
    """The data directory cannot give the whole state back (and why, and what to do)."""


@dataclass
class RestoreReport:
    snapshot: str = ""
    snapshot_lsn: int = 0
    replayed: int = 0
    skipped: int = 0  # records that could not be applied (start_from_remains only)
    last_lsn: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def recover(directory: Path, machine: Machine, start_from_remains: bool = False,
            tidy: bool = True) -> RestoreReport:
    """Restore ``machine`` from ``directory`` (created if missing); what was found.
    ``tidy``: remove temp files of interrupted snapshot writes (not while a writer may run).
    :class:`RecoveryRefused` when the state cannot be rebuilt whole (see the module)."""
    start = time.perf_counter()
    report = RestoreReport()
    directory.mkdir(parents=True, exist_ok=True)
    if tidy:
        for tmp in directory.glob("*.tmp"):  # an interrupted snapshot write
            tmp.unlink()
    unreadable = 0
    for lsn, path in snapshot.list_snapshots(directory):
        try:
            message, section = snapshot.read(path)
            machine.load_image(message, section, path.name)
        except Exception as exc:  # SnapshotError, ImageError, a state it cannot hold
            report.problems.append(f"unreadable snapshot {path.name}: {exc}")
            _move_aside(directory, path, report)
            unreadable += 1
            continue
        report.snapshot, report.snapshot_lsn = path.name, lsn
        break
    segments = list_segments(directory)
    if segments:
        first = segments[0][0]
    elif unreadable and not report.snapshot:
        first = -1  # snapshots were all there was, and none can be read
    else:
        first = report.snapshot_lsn + 1
    if first > report.snapshot_lsn + 1 or first < 0:
        what = (f"snapshot {report.snapshot} (position {report.snapshot_lsn})"
                if report.snapshot else
                f"no readable snapshot ({unreadable} unreadable, moved to {DAMAGED}/)"
                if unreadable else "no snapshot")
        why = (f"{what}, and no log" if first < 0 else
               f"{what}, and the log starts at record {first}: records "
               f"{report.snapshot_lsn + 1}-{first - 1} are missing")
        if not start_from_remains:
            raise RecoveryRefused(
                f"cannot restore {directory}: {why}. Nothing was deleted. Restore the missing "
                "files, or start from what remains with --start-from-remains "
                "(BANDITD_START_FROM_REMAINS=true): the state is then rebuilt from the "
                "records that can still be applied.")
        report.problems.append(f"{why}; starting from what remains")
        _replay_remains(segments, machine, report)
    else:
        _replay(directory, segments, machine, report)
    report.seconds = time.perf_counter() - start
    return report


def _replay(directory: Path, segments: list[tuple[int, Path]], machine: Machine,
            report: RestoreReport) -> None:
    """Apply the log after the snapshot, in order; stop at the first damaged record."""
    last = report.snapshot_lsn
    for first, path in segments:
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


def _replay_remains(segments: list[tuple[int, Path]], machine: Machine,
                    report: RestoreReport) -> None:
    """Apply every readable record that can be applied, counting the others; positions
    continue after the last record found."""
    last = report.snapshot_lsn
    for first, path in segments:
        scan = read_segment(path)
        for i, payload in enumerate(scan.records):
            lsn = first + i
            if lsn <= last:
                continue
            try:
                machine.apply_bytes(payload)
                report.replayed += 1
            except Exception:
                report.skipped += 1
            last = lsn
        if scan.problem:
            report.problems.append(f"{path.name}: {scan.problem}")
    if report.skipped:
        report.problems.append(f"{report.skipped} records could not be applied (their "
                               "experiment or campaign is missing) and were skipped")
    report.last_lsn = last


def _move_aside(directory: Path, path: Path, report: RestoreReport) -> None:
    """Move a file into damaged/ (never delete what cannot be read)."""
    damaged = directory / DAMAGED
    damaged.mkdir(exist_ok=True)
    target = damaged / f"{path.name}.{int(time.time())}"
    path.rename(target)
    report.problems.append(f"{path.name} moved to {DAMAGED}/{target.name}")


def _set_aside(directory: Path, path: Path, keep_bytes: int, report: RestoreReport) -> None:
    """Keep the first ``keep_bytes`` of a segment; its whole original goes to damaged/."""
    damaged = directory / DAMAGED
    damaged.mkdir(exist_ok=True)
    data = path.read_bytes()
    (damaged / f"{path.name}.{int(time.time())}").write_bytes(data)
    if keep_bytes:
        path.write_bytes(data[:keep_bytes])
    else:
        path.unlink()
    report.problems.append(f"{path.name}: damaged part kept in {DAMAGED}/")
