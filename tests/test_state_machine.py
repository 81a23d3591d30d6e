"""One apply path: the state a live server reaches equals the state its log replays to.

Every change of state is a record applied by the module that owns the state, the same way
for a live request and for restore. So replaying a server's log into an empty state machine
must give exactly the live state (all but the random streams, which the log does not
replay), for every record type."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from google.protobuf import field_mask_pb2, timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.settings import Settings
from banditd.server.state.machine import StateMachine
from banditd.server.storage import snapshot
from banditd.server.storage.recovery import recover
from banditd.server.storage.wal import list_segments, read_segment
from banditd.storage.v1 import storage_pb2 as st
from helpers import make_experiment, running_server

DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def _at(t: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(t), nanos=int((t % 1) * 1e9))


def _traffic(stub) -> None:
    """Mixed traffic touching every record type (seeded, no clock assumptions)."""
    rng = np.random.default_rng(7)
    arms = [f"a{i}" for i in range(5)]
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "ts", arms=arms, seed=1, min_selections=2)))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "val", arms=arms, seed=2, reward_type=pb.REWARD_TYPE_VALUE)))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "lin", arms=arms, seed=3, context_dim=3, reward_type=pb.REWARD_TYPE_CONTINUOUS,
        policy=pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=0.5)))))
    stub.CreateExperiment(pb.CreateExperimentRequest(experiment=make_experiment(
        "gone", arms=arms, seed=4, policy=pb.Policy(ucb1=pb.Policy.Ucb1()))))
    decisions = []
    for i in range(60):
        decisions.append(("ts", stub.SelectArm(pb.SelectArmRequest(
            experiment_id="ts", num_arms=1 + i % 3))))
        decisions.append(("lin", stub.SelectArm(pb.SelectArmRequest(
            experiment_id="lin", context=rng.uniform(-1, 1, 3).tolist()))))
        decisions.append(("gone", stub.SelectArm(pb.SelectArmRequest(experiment_id="gone"))))
    batch = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
        pb.SelectArmRequest(experiment_id="val", eligible_arm_ids=arms[:3])] * 40 + [
        pb.SelectArmRequest(experiment_id="lin", context=rng.uniform(-1, 1, 3).tolist(),
                            num_arms=2) for _ in range(20)]))
    decisions += [("val", r) for r in batch.responses[:40]]
    decisions += [("lin", r) for r in batch.responses[40:]]
    rewards = []
    for eid, d in decisions[::2]:
        value = {"ts": float(rng.integers(0, 2)), "val": float(rng.uniform(0, 5)),
                 "lin": float(rng.normal()), "gone": float(rng.integers(0, 2))}[eid]
        rewards.append(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id,
                                              reward=value))
    for r in rewards[:30]:
        stub.RecordReward(r)
    assert stub.RecordReward(rewards[0]).duplicate
    reply = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(
        requests=rewards[30:] + rewards[30:32]))
    assert [r.duplicate for r in reply.responses[-2:]] == [True, True]
    # by explicit arm, for a decision the server never made: a tombstone
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="ts", decision_id="elsewhere-1",
                                             arm_id="a2", reward=1.0))
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="lin", arm_id="a1", reward=2.0,
                                             context=[0.1, 0.2, 0.3]))
    stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id="ts", period="2026-01-01",
                                               metrics=[pb.ArmMetrics(arm_id="a1", trials=50,
                                                                      successes=7)]))
    stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id="ts", period="2026-01-01",
                                               metrics=[pb.ArmMetrics(arm_id="a1", trials=60,
                                                                      successes=9)]))
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id="ts", add_arm_ids=["a9"],
                                         remove_arm_ids=["a0"]))
    stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id="val"))
    stub.SelectArm(pb.SelectArmRequest(experiment_id="val"))
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="gone"))
    # pacing over two days, with settlements, a pause and an expiry
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="c", daily_budget=50.0, max_bid=2.0, reservation_ttl_seconds=300)))
    t = T0
    for i in range(400):
        t += 300.0 * (1 + rng.random())
        if i == 150:
            stub.UpdateCampaign(pb.UpdateCampaignRequest(
                campaign=pb.Campaign(campaign_id="c", paused=True),
                update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
        if i == 170:
            stub.UpdateCampaign(pb.UpdateCampaignRequest(
                campaign=pb.Campaign(campaign_id="c", paused=False),
                update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
        bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="c", base_bid=float(rng.uniform(0, 3)),
                                             event_time=_at(t)))
        if bid.bid_id and i % 7:  # every 7th reservation is left to expire
            won = bool(rng.random() < 0.6)
            stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id="c", bid_id=bid.bid_id, won=won, cost=bid.bid * 0.7,
                conversions=float(won and rng.random() < 0.2), event_time=_at(t + 20)))
    stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id="c", event_time=_at(t + DAY)))
    # a campaign whose bids are far above the clearing costs: shading to the floor, then
    # throttling (the coins, the participation rate and the win thresholds replay); its
    # traffic shape changes half way
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="thr", daily_budget=20.0, max_bid=50.0, seed=5,
        hourly_weights=[1.0 + (h >= 12) for h in range(24)])))
    t, reasons = T0 + 3600, set()
    for i in range(900):
        t += 4.0 * rng.random()
        if i == 600:
            stub.UpdateCampaign(pb.UpdateCampaignRequest(
                campaign=pb.Campaign(campaign_id="thr", hourly_weights=[1.0] * 24),
                update_mask=field_mask_pb2.FieldMask(paths=["hourly_weights"])))
        bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="thr", base_bid=10.0,
                                             event_time=_at(t)))
        reasons.add(bid.reason_code)
        if bid.bid_id:
            stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id="thr", bid_id=bid.bid_id, won=True,
                cost=float(rng.uniform(0.01, 0.3)), event_time=_at(t + 1)))
    assert {pb.PACE_REASON_THROTTLED, pb.PACE_REASON_CAPPED} <= reasons


def _comparable(message: bytes, section: memoryview) -> dict:
    """An image as plain values, without what the log does not replay (random streams, the
    policies' cache arrays) or cannot (the time the image was taken)."""
    from banditd.server.state.image import _from_array

    snap = st.Snapshot.FromString(message)
    out: dict = {"next_uid": snap.next_uid, "experiments": {}}
    for es in snap.experiments:
        arrays = {name: _from_array(getattr(es, name), section).tolist()
                  for name in ("selections", "rewards", "reward_sum", "positives", "ingested")}
        state = [_from_array(a, section).tolist() for a in es.state if a.dtype]
        out["experiments"][es.config.experiment_id] = (
            es.config.SerializeToString(deterministic=True), es.uid, es.version, arrays, state,
            sorted((p.period, p.SerializeToString(deterministic=True)) for p in es.periods))
    out["decisions"] = snap.decisions.SerializeToString(deterministic=True)
    out["campaigns"] = [c.SerializeToString(deterministic=True) for c in snap.campaigns]
    out["audit"] = [a.SerializeToString(deterministic=True) for a in snap.audit]
    return out


def test_live_state_equals_the_replay_of_its_log(tmp_path):
    data = tmp_path / "data"
    with running_server(data, snapshot_interval_seconds=0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            _traffic(pb_grpc.DecisionServiceStub(channel))
        storage = server.app.storage

        async def settle() -> tuple[bytes, list]:
            storage.hand_over_pending()  # every decision record into the log
            await storage.commit()
            return server.app.state.image(storage.last_lsn)

        message, pieces = asyncio.run_coroutine_threadsafe(settle(), server.loop).result(60)
        live = _comparable(message, memoryview(b"".join(pieces)))
        server.crash()  # no final snapshot: the log is all there is
    assert not list(data.glob("snapshot-*"))
    replayed = StateMachine(Settings(data_dir=data))
    report = recover(data, replayed)
    assert not report.problems and report.replayed > 100
    kinds = {st.WalRecord.FromString(p).WhichOneof("op")
             for _, path in list_segments(data) for p in read_segment(path).records}
    assert kinds == {"create_experiment", "delete_experiment", "update_arms",
                     "reset_experiment", "ingest_metrics", "decision_table", "decision_block",
                     "reward_table", "campaign", "campaign_day", "pace", "spend"}
    message, pieces = replayed.image(report.last_lsn)
    again = _comparable(message, memoryview(b"".join(pieces)))
    assert again["experiments"].keys() == live["experiments"].keys() == {"ts", "val", "lin"}
    # every administrative change carries its audit entry, replayed with it
    audited = [st.Audit.FromString(a) for a in live["audit"]]
    assert [a.rpc for a in audited] == ["CreateExperiment"] * 4 + ["IngestMetrics"] * 2 + [
        "UpdateArms", "ResetExperiment", "DeleteExperiment", "CreateCampaign"] + [
        "UpdateCampaign"] * 2 + ["CreateCampaign", "UpdateCampaign"]
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
    with running_server(data, snapshot_interval_seconds=0) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            _traffic(pb_grpc.DecisionServiceStub(channel))
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
