"""One apply path: the state a live server reaches equals the state its log replays to.

Every change of state is a record applied by the module that owns the state, the same way
for a live request and for restore. So replaying a server's log into an empty state machine
must give exactly the live state (all but the random streams, which the log does not
replay), for every record type."""

from __future__ import annotations

import asyncio

import grpc

from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.settings import Settings
from banditd.server.state.machine import StateMachine
from banditd.server.storage import snapshot
from banditd.server.storage.recovery import recover
from banditd.server.storage.wal import list_segments, read_segment
from banditd.storage.v1 import storage_pb2 as st
from helpers import (
    comparable_image,
    mixed_traffic,
    running_server,
    throttled_traffic,
    windowed_traffic,
)


def test_live_state_equals_the_replay_of_its_log(tmp_path):
    data = tmp_path / "data"
    with running_server(data, snapshot_interval_seconds=0,
                        reward_sweep_interval_seconds=0.05) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            mixed_traffic(pb_grpc.DecisionServiceStub(channel))
            windowed_traffic(pb_grpc.DecisionServiceStub(channel))
            throttled_traffic(pb_grpc.DecisionServiceStub(channel))
        storage = server.app.storage

        async def settle() -> tuple[bytes, list]:
            storage.hand_over_pending()  # every decision record into the log
            await storage.commit()
            return server.app.state.image(storage.last_lsn)

        message, pieces = asyncio.run_coroutine_threadsafe(settle(), server.loop).result(60)
        live = comparable_image(message, memoryview(b"".join(pieces)))
        server.crash()  # no final snapshot: the log is all there is
    assert not list(data.glob("snapshot-*"))
    replayed = StateMachine(Settings(data_dir=data))
    report = recover(data, replayed)
    assert not report.problems and report.replayed > 100
    kinds = {st.WalRecord.FromString(p).WhichOneof("op")
             for _, path in list_segments(data) for p in read_segment(path).records}
    assert kinds == {"create_experiment", "delete_experiment", "update_arms",
                     "reset_experiment", "ingest_metrics", "decision_table", "decision_block",
                     "reward_table", "default_rewards", "create_campaign", "campaign",
                     "campaign_day", "pace", "spend"}
    message, pieces = replayed.image(report.last_lsn)
    again = comparable_image(message, memoryview(b"".join(pieces)))
    assert again["experiments"].keys() == live["experiments"].keys() == {
        "ts", "val", "lin", "win", "winlin"}
    # every administrative change carries its audit entry, replayed with it
    audited = [st.Audit.FromString(a) for a in live["audit"]]
    assert [a.rpc for a in audited] == ["CreateExperiment"] * 4 + ["IngestMetrics"] * 2 + [
        "UpdateArms", "ResetExperiment", "DeleteExperiment", "CreateCampaign"] + [
        "UpdateCampaign"] * 2 + ["CreateExperiment"] * 2 + ["CreateCampaign", "UpdateCampaign"]
    assert audited[6].ids == ["ts", "a9", "a0"] and audited[11].ids == ["c"]
    assert audited[-1].ids == ["thr"]
    assert all(a.peer.startswith("ipv4:127.0.0.1:") and a.time > 0 for a in audited)
    for eid in live["experiments"]:
        assert again["experiments"][eid] == live["experiments"][eid], eid
    assert again == live


def test_an_image_loads_back_to_the_same_state(tmp_path):
    """An image (what a snapshot file and a new follower get) loads into an empty state
    machine and gives back the same image, byte for byte but for its time."""
    data = tmp_path / "data"
    with running_server(data, snapshot_interval_seconds=0,
                        reward_sweep_interval_seconds=0.05) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            mixed_traffic(pb_grpc.DecisionServiceStub(channel))
            windowed_traffic(pb_grpc.DecisionServiceStub(channel))
            throttled_traffic(pb_grpc.DecisionServiceStub(channel))
        message, pieces = server.call(lambda: server.app.state.image(7))
    copy = StateMachine(Settings(data_dir=tmp_path / "other"))
    body, section = snapshot.decode(snapshot.image(message, pieces), "image")
    assert copy.load_image(body, section, "image") == 7
    again, again_pieces = copy.image(7)
    first, second = st.Snapshot.FromString(message), st.Snapshot.FromString(again)
    first.ClearField("created")
    second.ClearField("created")
    assert first == second
    assert b"".join(again_pieces) == b"".join(pieces)
