"""The audit trail: every administrative change is a structured log line and an entry kept with
its record, so it survives restarts (from a snapshot, and from the log after a crash) and
``banditd audit`` prints it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import BIN, Served, bearer, make_experiment, running_server, write_tokens

TOKENS = {"ops-alice": ("t-alice", "admin"), "bidder": ("t-bid", "decide")}
ADMIN = bearer("t-alice")


def _audit(data: Path, *args: str) -> list[dict]:
    proc = subprocess.run([str(BIN / "banditd"), "audit", "--data-dir", str(data), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _admin_changes(stub) -> None:
    stub.CreateExperiment(pb.CreateExperimentRequest(
        experiment=make_experiment("hero", arms=("a", "b"))), metadata=ADMIN)
    stub.UpdateArms(pb.UpdateArmsRequest(experiment_id="hero", add_arm_ids=["c"],
                                         remove_arm_ids=["a"]), metadata=ADMIN)
    stub.SelectArm(pb.SelectArmRequest(experiment_id="hero"), metadata=bearer("t-bid"))
    stub.ResetExperiment(pb.ResetExperimentRequest(experiment_id="hero"), metadata=ADMIN)
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="spring", daily_budget=100.0, max_bid=2.0)), metadata=ADMIN)
    stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id="spring", paused=True),
        update_mask=field_mask_pb2.FieldMask(paths=["paused"])), metadata=ADMIN)
    stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="hero"), metadata=ADMIN)


EXPECTED = [("CreateExperiment", ["hero", "a", "b"]), ("UpdateArms", ["hero", "c", "a"]),
            ("ResetExperiment", ["hero"]), ("CreateCampaign", ["spring"]),
            ("UpdateCampaign", ["spring"]), ("DeleteExperiment", ["hero"])]


def test_audit_trail_survives_restarts_and_banditd_audit_prints_it(tmp_path):
    data = tmp_path / "data"
    tokens = write_tokens(tmp_path / "tokens", TOKENS)
    with running_server(data, auth_tokens_file=tokens) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        _admin_changes(pb_grpc.DecisionServiceStub(channel))
    # graceful stop: the trail is in the snapshot, the log before it pruned or not
    assert list(data.glob("snapshot-*.snap"))
    entries = _audit(data)
    assert [(e["rpc"], e["ids"]) for e in entries] == EXPECTED
    assert {e["token_name"] for e in entries} == {"ops-alice"}
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") for e in entries)
    times = [e["time"] for e in entries]
    assert times == sorted(times) and times[0] > 1.7e9

    with running_server(data, auth_tokens_file=tokens) as server:
        restored = server.call(lambda: [(a.rpc, list(a.ids), a.token_name)
                                        for a in server.app.state.audit.entries()])
        assert restored == [(rpc, ids, "ops-alice") for rpc, ids in EXPECTED]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            pb_grpc.DecisionServiceStub(channel).CreateExperiment(pb.CreateExperimentRequest(
                experiment=make_experiment("after", arms=("x",))), metadata=ADMIN)
        server.crash()  # no snapshot: the new entry is in the log only
    entries = _audit(data)
    assert [(e["rpc"], e["ids"]) for e in entries] == EXPECTED + [
        ("CreateExperiment", ["after", "x"])]


def test_audit_since_filters_by_time(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        for name in ("one", "two", "three"):
            stub.CreateExperiment(pb.CreateExperimentRequest(
                experiment=make_experiment(name, arms=("x",))))
    entries = _audit(data)
    assert [e["ids"][0] for e in entries] == ["one", "two", "three"]
    assert all(e["token_name"] == "" for e in entries)  # authentication off
    later = _audit(data, "--since", repr(entries[1]["time"]))
    assert [e["ids"][0] for e in later] == ["two", "three"]


def test_json_logs_have_the_settings_and_the_audit_line(tmp_path):
    tokens = write_tokens(tmp_path / "tokens", TOKENS)
    server = Served(tmp_path, "--log-format", "json", "--auth-tokens-file", str(tokens))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            server.wait_serving(channel)
            pb_grpc.DecisionServiceStub(channel).CreateCampaign(pb.CreateCampaignRequest(
                campaign=pb.Campaign(campaign_id="json", daily_budget=5.0, max_bid=1.0)),
                metadata=ADMIN)
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.log.read_text().splitlines()
             if line.startswith("{")]
    assert len(lines) >= 5 and all({"time", "level", "logger", "message"} <= set(x)
                                   for x in lines)
    start = next(x for x in lines if "settings" in x)
    assert start["settings"]["auth_tokens_file"] == str(tokens)
    assert start["settings"]["log_format"] == "json"
    audit = next(x for x in lines if x["logger"] == "banditd.audit")["audit"]
    assert (audit["rpc"], audit["ids"], audit["token_name"]) == (
        "CreateCampaign", ["json"], "ops-alice")
    assert "t-alice" not in server.log.read_text()
