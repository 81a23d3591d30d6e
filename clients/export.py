"""Decision-log export: ExportDecisions' rows as JSON lines or a Parquet file (``banditd
export``), the data a team's offline analysis starts from.

One record per decision, oldest first:

============== ==================================================================
field          meaning
============== ==================================================================
decision_id    the decision's id
time           when it was made (UTC; ISO 8601 in JSON, timestamp[us] in Parquet)
arm_id         the arm it returned (the first of a slate)
arm_ids        the whole slate, best first
propensity     probability with which the policy chose arm_id
model_version  the experiment's model version when it decided
context        its context (empty for non-contextual experiments)
reward_status  pending, rewarded, default (settled with the default reward) or late
               (a reward corrected the default)
reward         the reward learned (null while pending)
rewarded_arm   the arm the reward was learned for (null while pending)
============== ==================================================================
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from google.protobuf import timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

STATUS = {pb.REWARD_STATUS_PENDING: "pending", pb.REWARD_STATUS_REWARDED: "rewarded",
          pb.REWARD_STATUS_DEFAULT: "default", pb.REWARD_STATUS_LATE: "late"}
FORMATS = ("jsonl", "parquet")


def timestamp(when: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A datetime (naive = UTC) as a protobuf Timestamp."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def decision_rows(stub: pb_grpc.DecisionServiceStub, experiment_id: str,
                  start: dt.datetime | None = None, end: dt.datetime | None = None,
                  timeout: float | None = None, metadata: Any = None
                  ) -> Iterator[list[pb.DecisionRow]]:
    """ExportDecisions' messages (lists of rows, oldest first) for decisions made in
    [``start``, ``end``); ``metadata``: sent with the call (a bearer token)."""
    request = pb.ExportDecisionsRequest(experiment_id=experiment_id, start_time=timestamp(start),
                                        end_time=timestamp(end))
    for message in stub.ExportDecisions(request, timeout=timeout, metadata=metadata):
        yield list(message.decisions)


def record(row: pb.DecisionRow) -> dict[str, Any]:
    """One row as plain values (see the module docstring)."""
    pending = row.reward_status == pb.REWARD_STATUS_PENDING
    reward = None if pending or math.isnan(row.reward) else row.reward
    return {
        "decision_id": row.decision_id,
        "time": row.time.ToDatetime(tzinfo=dt.timezone.utc),
        "arm_id": row.arm_ids[0] if row.arm_ids else None,
        "arm_ids": list(row.arm_ids),
        "propensity": row.propensity,
        "model_version": row.model_version,
        "context": list(row.context),
        "reward_status": STATUS.get(row.reward_status, "unknown"),
        "reward": reward,
        "rewarded_arm": None if pending else row.rewarded_arm_id,
    }


def write_jsonl(chunks: Iterable[list[pb.DecisionRow]], out: IO[str]) -> int:
    """Write one JSON object per decision; returns how many."""
    n = 0
    for rows in chunks:
        for row in rows:
            r = record(row)
            r["time"] = r["time"].isoformat().replace("+00:00", "Z")
            out.write(json.dumps(r, allow_nan=False) + "\n")
            n += 1
    return n


def write_parquet(chunks: Iterable[list[pb.DecisionRow]], path: Path) -> int:
    """Write the decisions as one Parquet file (one row group per 1,000-row message at most
    in memory at once); returns how many."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = pa.schema([
        ("decision_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
        ("arm_id", pa.string()), ("arm_ids", pa.list_(pa.string())),
        ("propensity", pa.float64()), ("model_version", pa.uint64()),
        ("context", pa.list_(pa.float64())), ("reward_status", pa.string()),
        ("reward", pa.float64()), ("rewarded_arm", pa.string()),
    ])
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for rows in chunks:
            records = [record(row) for row in rows]
            if records:
                writer.write_table(pa.Table.from_pylist(records, schema=schema))
                n += len(records)
    return n


def export(stub: pb_grpc.DecisionServiceStub, experiment_id: str, out: Path | None,
           fmt: str = "jsonl", start: dt.datetime | None = None,
           end: dt.datetime | None = None, stdout: IO[str] | None = None,
           timeout: float | None = None, metadata: Any = None) -> int:
    """Export an experiment's decisions to ``out`` (JSON lines to ``stdout`` when ``out`` is
    None); returns how many were written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chunks = decision_rows(stub, experiment_id, start, end, timeout, metadata)
    if fmt == "parquet":
        if out is None:
            raise ValueError("Parquet needs an output file")
        return write_parquet(chunks, out)
    if out is None:
        assert stdout is not None
        return write_jsonl(chunks, stdout)
    with open(out, "w") as f:
        return write_jsonl(chunks, f)
