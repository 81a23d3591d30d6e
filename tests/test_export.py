"""ExportDecisions (server streaming) and ``banditd export``: every decision of an experiment
in a time range, oldest first, with its propensity, model version, context and joined reward."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.auth import Authenticator
from banditd.server.api.handlers import SERVICE, stream_handler
from banditd.server.api.metrics import Metrics
from helpers import create

BIN = Path(sys.executable).parent
LIN = pb.Policy(lin_ucb=pb.Policy.LinUcb())


def rows_of(stub, experiment_id, **fields):
    return [row for m in stub.ExportDecisions(pb.ExportDecisionsRequest(
        experiment_id=experiment_id, **fields)) for row in m.decisions]


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos * 1e-9


def test_rows_carry_the_decision_and_its_joined_reward(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=("a", "b", "c"), policy=LIN, context_dim=2,
           reward_type=pb.REWARD_TYPE_CONTINUOUS, seed=3)
    gen = np.random.default_rng(3)
    contexts = gen.uniform(-1, 1, (6, 2)).round(3).tolist()
    made = [stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, context=c,
                                               num_arms=1 + i % 2))
            for i, c in enumerate(contexts)]
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=made[0].decision_id,
                                             reward=2.5))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=made[1].decision_id,
                                             arm_id=made[1].ranked_arm_ids[1], reward=-1.0))
    # a reward by explicit arm for a decision made elsewhere is not a decision of this log
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id="elsewhere-7",
                                             arm_id="a", context=[0.0, 0.0], reward=1.0))
    rows = rows_of(stub, eid)
    assert [r.decision_id for r in rows] == [d.decision_id for d in made]
    for row, d, c in zip(rows, made, contexts, strict=True):
        assert list(row.arm_ids) == (list(d.ranked_arm_ids) or [d.arm_id])
        assert row.propensity == d.propensity and row.model_version == d.model_version
        assert list(row.context) == c
    assert (rows[0].reward_status, rows[0].reward, rows[0].rewarded_arm_id) == (
        pb.REWARD_STATUS_REWARDED, 2.5, made[0].arm_id)
    assert (rows[1].reward_status, rows[1].reward, rows[1].rewarded_arm_id) == (
        pb.REWARD_STATUS_REWARDED, -1.0, made[1].ranked_arm_ids[1])
    assert {r.reward_status for r in rows[2:]} == {pb.REWARD_STATUS_PENDING}
    assert all(r.reward == 0 and not r.rewarded_arm_id for r in rows[2:])
    times = [_seconds(r.time) for r in rows]
    assert times == sorted(times) and abs(times[0] - time.time()) < 600


def test_a_time_range_and_many_messages(stub, new_id):
    eid = new_id()
    create(stub, eid, seed=4)
    made = []
    for _ in range(3):
        made += stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
            pb.SelectArmRequest(experiment_id=eid)] * 1000)).responses
        time.sleep(0.02)
    messages = list(stub.ExportDecisions(pb.ExportDecisionsRequest(experiment_id=eid)))
    assert [len(m.decisions) for m in messages] == [1000, 1000, 1000]
    rows = [r for m in messages for r in m.decisions]
    assert [r.decision_id for r in rows] == [d.decision_id for d in made]
    t = [r.time for r in rows]
    middle = rows_of(stub, eid, start_time=t[1000], end_time=t[2000])
    assert [r.decision_id for r in middle] == [d.decision_id for d in made[1000:2000]]
    assert rows_of(stub, eid, start_time=t[2000]) == rows[2000:]
    assert rows_of(stub, eid, end_time=t[1000]) == rows[:1000]


def test_defaults_and_late_rewards_are_marked(tmp_path):
    from helpers import running_server

    with running_server(tmp_path, reward_sweep_interval_seconds=0.05) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

        stub = pb_grpc.DecisionServiceStub(ch)
        create(stub, "w", reward_type=pb.REWARD_TYPE_VALUE, reward_wait_seconds=0.2,
               default_reward=0.5)
        made = [stub.SelectArm(pb.SelectArmRequest(experiment_id="w")) for _ in range(4)]
        stub.RecordReward(pb.RecordRewardRequest(experiment_id="w",
                                                 decision_id=made[0].decision_id, reward=9.0))
        deadline = time.monotonic() + 30
        while stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="w")).model_version < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert stub.RecordReward(pb.RecordRewardRequest(
            experiment_id="w", decision_id=made[1].decision_id, reward=3.0)).late
        rows = rows_of(stub, "w")
    assert [(r.reward_status, r.reward) for r in rows] == [
        (pb.REWARD_STATUS_REWARDED, 9.0), (pb.REWARD_STATUS_LATE, 3.0),
        (pb.REWARD_STATUS_DEFAULT, 0.5), (pb.REWARD_STATUS_DEFAULT, 0.5)]
    assert [r.rewarded_arm_id for r in rows] == [d.arm_id for d in made]


@pytest.mark.parametrize("fields, code, words", [
    ({"experiment_id": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
    ({"start_time": timestamp_pb2.Timestamp(seconds=20), "end_time": timestamp_pb2.Timestamp(
        seconds=10)}, grpc.StatusCode.INVALID_ARGUMENT, "start_time"),
    ({"end_time": timestamp_pb2.Timestamp(seconds=-5)}, grpc.StatusCode.INVALID_ARGUMENT,
     "end_time"),
])
def test_bad_exports_are_refused_precisely(stub, new_id, fields, code, words):
    eid = new_id()
    create(stub, eid)
    with pytest.raises(grpc.RpcError) as err:
        rows_of(stub, **{"experiment_id": eid, **fields})
    assert err.value.code() == code and words in err.value.details()


def test_a_stream_is_refused_until_ready_and_counted():
    method = SERVICE.methods_by_name["ExportDecisions"]
    metrics = Metrics()

    async def behavior(request, context):
        yield pb.ExportDecisionsResponse()
        yield pb.ExportDecisionsResponse()

    class Context:
        async def abort(self, code, details, trailing_metadata=()):
            self.status = (code, details)
            raise grpc.aio.AbortError(code, details)

    async def collect(gate):
        handler = stream_handler(behavior, method, metrics, gate)
        return [m async for m in handler(pb.ExportDecisionsRequest().SerializeToString(),
                                         context)]

    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(collect(SimpleNamespace(ready=False, auth=Authenticator(None))))
    assert context.status[0] == grpc.StatusCode.UNAVAILABLE
    assert asyncio.run(collect(SimpleNamespace(ready=True, auth=Authenticator(None)))) == [b"", b""]
    assert metrics._stats.counts == {("ExportDecisions", "UNAVAILABLE"): 1,
                                     ("ExportDecisions", "OK"): 1}


def test_banditd_export_writes_json_lines_and_parquet(server, stub, new_id, tmp_path):
    import pyarrow.parquet as pq

    eid = new_id()
    create(stub, eid, arms=("a", "b"), policy=LIN, context_dim=2,
           reward_type=pb.REWARD_TYPE_CONTINUOUS, seed=5)
    made = [stub.SelectArm(pb.SelectArmRequest(experiment_id=eid, context=[0.5, float(i)]))
            for i in range(5)]
    stub.RecordReward(pb.RecordRewardRequest(experiment_id=eid, decision_id=made[2].decision_id,
                                             reward=1.5))
    address = f"127.0.0.1:{server.port}"
    out = subprocess.run([str(BIN / "banditd"), "export", eid, "--address", address],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["decision_id"] for r in lines] == [d.decision_id for d in made]
    assert lines[2]["reward_status"] == "rewarded" and lines[2]["reward"] == 1.5
    assert lines[0]["reward_status"] == "pending" and lines[0]["reward"] is None
    assert lines[3]["context"] == [0.5, 3.0] and lines[3]["arm_ids"] == [made[3].arm_id]
    assert lines[1]["propensity"] == made[1].propensity
    when = dt.datetime.fromisoformat(lines[0]["time"].replace("Z", "+00:00"))
    assert abs(when.timestamp() - time.time()) < 600

    path = tmp_path / "log.parquet"
    done = subprocess.run([str(BIN / "banditd"), "export", eid, "--address", address,
                           "--out", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 decisions" in done.stderr
    table = pq.read_table(path).to_pylist()
    assert [r["decision_id"] for r in table] == [r["decision_id"] for r in lines]
    assert [r["reward"] for r in table] == [r["reward"] for r in lines]
    assert [r["context"] for r in table] == [r["context"] for r in lines]
    assert table[0]["time"].timestamp() == pytest.approx(when.timestamp(), abs=1e-6)

    later = subprocess.run([str(BIN / "banditd"), "export", eid, "--address", address,
                            "--start", lines[3]["time"]], capture_output=True, text=True,
                           timeout=120)
    assert [json.loads(x)["decision_id"] for x in later.stdout.splitlines()] == [
        d.decision_id for d in made[3:]]
    missing = subprocess.run([str(BIN / "banditd"), "export", "nope", "--address", address],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
