"""/metrics of a running server: the gRPC ecosystem's RPC metrics and banditd's own (log,
snapshots, evictions, pacing per campaign, build), with exact values for known traffic; and
every metric the shipped Grafana dashboard queries is exported."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from importlib.metadata import version

import grpc
from google.protobuf import timestamp_pb2
from prometheus_client.parser import text_string_to_metric_families

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import ROOT, make_experiment, running_server

DASHBOARD = ROOT / "deploy" / "grafana" / "banditd.json"
T0 = 1_767_258_000  # 2026-01-01 09:00 UTC
SERVICE = (("grpc_service", "decision.v1.DecisionService"), ("grpc_type", "unary"))


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard's queries use."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(exprs) >= 16
    return {m for e in exprs
            for m in re.findall(r"\b((?:grpc_server|banditd|process|python)_[a-z_]+)\b", e)}


def _traffic(stub) -> dict:
    stub.CreateExperiment(pb.CreateExperimentRequest(
        experiment=make_experiment("m", arms=("a", "b"))))
    decisions = [stub.SelectArm(pb.SelectArmRequest(experiment_id="m")) for _ in range(8)]
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="m", reward=1.0,
                                             decision_id=decisions[-1].decision_id))
    stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
        campaign_id="spring", daily_budget=20.0, max_bid=1.0)))
    bids, charged = 0, 0.0
    for i in range(30):
        at = timestamp_pb2.Timestamp(seconds=T0 + 60 * i)
        bid = stub.PaceBid(pb.PaceBidRequest(campaign_id="spring", base_bid=0.0 if i % 3 == 0
                                             else 0.8, event_time=at))
        if bid.bid > 0:
            bids += 1
            spent = stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id="spring", bid_id=bid.bid_id, won=True, cost=bid.bid / 2,
                event_time=at))
            charged += spent.charged
    status = stub.GetPacingStatus(pb.GetPacingStatusRequest(
        campaign_id="spring", event_time=timestamp_pb2.Timestamp(seconds=T0 + 1800)))
    return {"bids": bids, "charged": charged, "status": status}


def test_metrics_of_a_running_server_have_exact_values(tmp_path):
    with running_server(tmp_path, metrics_port=0, durability="fsync", decision_capacity=5,
                        snapshot_interval_seconds=0) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        seen = _traffic(stub)
        asyncio.run_coroutine_threadsafe(server.app.storage.take_snapshot(),
                                         server.loop).result(60)
        samples = scrape(server.app.metrics_port)

    def rpc(method: str, *more) -> tuple:
        return tuple(sorted((*SERVICE, ("grpc_method", method), *more)))

    assert samples[("grpc_server_handled_total", rpc("SelectArm", ("grpc_code", "OK")))] == 8
    assert samples[("grpc_server_handled_total", rpc("PaceBid", ("grpc_code", "OK")))] == 30
    assert samples[("grpc_server_handling_seconds_count", rpc("PaceBid"))] == 30
    assert samples[("grpc_server_handling_seconds_bucket", rpc("PaceBid", ("le", "10.0")))] == 30
    # 8 decisions in a store of 5: the 3 oldest were evicted
    assert samples[("banditd_decisions_evicted_total", (("reason", "capacity"),))] == 3
    assert samples[("banditd_decisions_evicted_total", (("reason", "expired"),))] == 0
    campaign = (("campaign_id", "spring"),)
    assert 0 < seen["bids"] < 30
    assert samples[("banditd_campaign_pace_requests_total", campaign)] == 30
    assert samples[("banditd_campaign_bids_total", campaign)] == seen["bids"]
    assert abs(samples[("banditd_campaign_spent", campaign)] - seen["charged"]) < 1e-6
    assert abs(samples[("banditd_campaign_spent", campaign)] - seen["status"].spent) < 1e-6
    assert samples[("banditd_campaign_budget", campaign)] == 20.0
    assert samples[("banditd_campaign_pacing_multiplier", campaign)] == \
        seen["status"].pacing_multiplier
    assert samples[("banditd_campaign_paused", campaign)] == 0
    # fsync mode: every acknowledged write was fsynced; one snapshot taken
    assert samples[("banditd_log_fsync_seconds_count", ())] >= 1
    assert samples[("banditd_log_write_seconds_count", ())] >= 1
    assert samples[("banditd_log_bytes_written_total", ())] > 1000
    assert samples[("banditd_snapshot_seconds_count", ())] == 1
    assert samples[("banditd_snapshot_last_success_timestamp_seconds", ())] > 1.7e9
    assert samples[("banditd_snapshot_failures_total", ())] == 0
    build = [labels for name, labels in samples if name == "banditd_build_info"]
    assert len(build) == 1 and ("version", version("banditd")) in build[0]


def test_every_metric_the_dashboard_queries_is_exported(tmp_path):
    wanted = dashboard_metrics()
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
            "banditd_log_fsync_seconds_bucket", "banditd_campaign_spent",
            "banditd_replication_lag_seconds"} <= wanted
    with running_server(tmp_path, metrics_port=0) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        _traffic(pb_grpc.DecisionServiceStub(channel))
        names = {name for name, _ in scrape(server.app.metrics_port)}
    # replication metrics come from workers of `--workers N` (tests/test_workers.py)
    missing = {m for m in wanted - names if not m.startswith("banditd_replication_")}
    assert not missing, missing
