"""The batch fast path: BatchSelectArms groups items into batch-kernel calls and stores /
logs decisions as columns; it must give exactly what the same requests one by one give."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np
import pytest

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.rng import seed_state
from banditd.server.api.metrics import Metrics
from banditd.server.settings import Settings
from banditd.server.state.decision_store import DecisionColumns, DecisionRecord, DecisionStore
from banditd.storage.v1 import storage_pb2 as st
from helpers import (
    ROOT,
    InProcess,
    RunningServer,
    create,
    make_experiment,
    running_server,
    stub_for,
)

POLICIES = {
    "thompson": (pb.Policy(thompson=pb.Policy.Thompson()), 0, pb.REWARD_TYPE_BINARY),
    "thompson_value": (pb.Policy(thompson=pb.Policy.Thompson()), 0, pb.REWARD_TYPE_VALUE),
    "ucb1": (pb.Policy(ucb1=pb.Policy.Ucb1()), 0, pb.REWARD_TYPE_BINARY),
    "epsilon_greedy": (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy(epsilon=0.3)), 0,
                       pb.REWARD_TYPE_BINARY),
    "lin_ucb": (pb.Policy(lin_ucb=pb.Policy.LinUcb()), 4, pb.REWARD_TYPE_CONTINUOUS),
    "lin_thompson": (pb.Policy(lin_thompson=pb.Policy.LinThompson()), 4,
                     pb.REWARD_TYPE_CONTINUOUS),
}
ARMS = [f"a{i}" for i in range(6)]


def _mixed_items(eid: str, dim: int, n: int, seed: int) -> list[pb.SelectArmRequest]:
    """Runs of identical shape (one group each) mixed with single odd items."""
    gen = np.random.default_rng(seed)
    items = []
    while len(items) < n:
        run = int(gen.choice([1, 1, 3, 17]))
        eligible = [] if gen.random() < 0.5 else sorted(gen.choice(ARMS, size=3, replace=False))
        num = int(gen.choice([0, 1, 2]))
        for _ in range(run):
            items.append(pb.SelectArmRequest(
                experiment_id=eid, eligible_arm_ids=eligible, num_arms=num,
                context=gen.uniform(-1, 1, size=dim).tolist()))
    return items[:n]


def _decided(r: pb.SelectArmResponse) -> tuple:
    return (r.arm_id, tuple(r.ranked_arm_ids), round(r.propensity, 12), r.model_version)


def _one_by_one(stub, items: list[pb.SelectArmRequest], eid: str) -> list:
    """The responses of ``items`` sent as single SelectArm calls to experiment ``eid``."""
    out = []
    for item in items:
        single = pb.SelectArmRequest()
        single.CopyFrom(item)
        single.experiment_id = eid
        out.append(stub.SelectArm(single))
    return out


@pytest.mark.parametrize("name", list(POLICIES))
def test_batch_equals_the_same_requests_one_by_one(stub, new_id, name):
    policy, dim, reward_type = POLICIES[name]
    one, batch = new_id(), new_id()
    for eid in (one, batch):
        create(stub, eid, arms=ARMS, policy=policy, context_dim=dim, reward_type=reward_type,
               seed=42, min_selections=2, exploration_floor=0.02)
        for i in range(12):  # some learned state, identical in both
            stub.RecordReward(pb.RecordRewardRequest(
                experiment_id=eid, arm_id=ARMS[i % 6], reward=float(i % 2),
                context=[0.1 * i] * dim))
    items = _mixed_items(batch, dim, 120, seed=len(name))
    got = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items)).responses
    want = _one_by_one(stub, items, one)
    assert [_decided(r) for r in got] == [_decided(r) for r in want]
    assert len({r.decision_id for r in got}) == len(items)
    stats = {eid: [(a.arm_id, a.selections) for a in stub.GetArmStats(
        pb.GetArmStatsRequest(experiment_id=eid)).arms] for eid in (one, batch)}
    assert stats[one] == stats[batch]
    # every decision of the batch takes its reward by id, once
    rewards = [pb.RecordRewardRequest(experiment_id=batch, decision_id=r.decision_id,
                                      arm_id=r.ranked_arm_ids[-1] if r.ranked_arm_ids else "",
                                      reward=1.0) for r in got]
    out = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=rewards))
    assert not any(r.duplicate for r in out.responses)
    again = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=rewards[:5]))
    assert all(r.duplicate for r in again.responses)


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("shape", ["all arms", "eligible, slate of 2", "middle item differs"])
def test_batch_of_copies_equals_the_same_requests_one_by_one(stub, new_id, name, shape):
    """n copies of one request take the uniform path (checked once, responses written by
    api.wire for one-arm slates); a batch whose first and last items match but a middle
    one differs must take the general path. Either way: the decisions one by one give."""
    policy, dim, reward_type = POLICIES[name]
    one, batch = new_id(), new_id()
    for eid in (one, batch):
        create(stub, eid, arms=ARMS, policy=policy, context_dim=dim, reward_type=reward_type,
               seed=7, min_selections=1)
        for i in range(8):
            stub.RecordReward(pb.RecordRewardRequest(
                experiment_id=eid, arm_id=ARMS[i % 6], reward=float(i % 3 == 0),
                context=[0.2 * i - 0.5] * dim))
    eligible, num = ([], 0) if shape == "all arms" else (["a1", "a3", "a4"], 2)
    item = pb.SelectArmRequest(experiment_id=batch, eligible_arm_ids=eligible, num_arms=num,
                               context=[0.25] * dim)
    items = [item] * 64
    if shape == "middle item differs":
        odd = pb.SelectArmRequest()
        odd.CopyFrom(item)
        odd.num_arms = 1
        items = [item] * 30 + [odd] + [item] * 33
    got = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items)).responses
    want = _one_by_one(stub, items, one)
    assert [_decided(r) for r in got] == [_decided(r) for r in want]
    ids = [r.decision_id for r in got]
    assert len(set(ids)) == len(items)
    # the ids written by the compiled loop are the ones stored: each takes its reward once
    rewards = [pb.RecordRewardRequest(experiment_id=batch, decision_id=i, reward=1.0)
               for i in ids]
    out = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=rewards))
    assert not any(r.duplicate for r in out.responses)
    again = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=rewards[-3:]))
    assert all(r.duplicate for r in again.responses)


def test_batch_of_bad_copies_names_item_0_and_changes_nothing(stub, new_id):
    eid = new_id()
    create(stub, eid, arms=ARMS, policy=POLICIES["lin_ucb"][0], context_dim=3,
           reward_type=pb.REWARD_TYPE_CONTINUOUS)
    cases = [
        (pb.SelectArmRequest(experiment_id=eid, context=[0.1, float("nan"), 0.3]),
         grpc.StatusCode.INVALID_ARGUMENT, "requests[0]: context[1]"),
        (pb.SelectArmRequest(experiment_id=eid, context=[0.1]),
         grpc.StatusCode.INVALID_ARGUMENT, "requests[0]: context has 1 values"),
        (pb.SelectArmRequest(experiment_id=eid + "-gone", context=[0.1, 0.2, 0.3]),
         grpc.StatusCode.NOT_FOUND, "requests[0]: "),
        (pb.SelectArmRequest(experiment_id=eid, context=[0.1, 0.2, 0.3], num_arms=7),
         grpc.StatusCode.INVALID_ARGUMENT, "requests[0]: num_arms is 7"),
    ]
    for item, code, start in cases:
        got_code, msg = _code_and_message(
            lambda item=item: stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[item] * 5)))
        assert got_code == code and msg.startswith(start), msg
    arms = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid)).arms
    assert sum(a.selections for a in arms) == 0


def _code_and_message(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_batch_errors_name_the_first_bad_item_and_change_nothing(stub, new_id):
    eid, other = new_id(), new_id()
    create(stub, eid, arms=ARMS, policy=POLICIES["lin_ucb"][0], context_dim=3,
           reward_type=pb.REWARD_TYPE_CONTINUOUS)
    create(stub, other, arms=ARMS)
    good = [pb.SelectArmRequest(experiment_id=eid, context=[0.1, 0.2, 0.3]) for _ in range(6)]

    def batch(items):
        return lambda: stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items))

    bad = list(good)
    bad[4] = pb.SelectArmRequest(experiment_id=eid, context=[0.1, float("nan"), 0.3])
    bad[5] = pb.SelectArmRequest(experiment_id=eid, context=[0.1])  # later: not reported
    code, msg = _code_and_message(batch(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("requests[4]: context[1]")
    bad = list(good)
    bad[2] = pb.SelectArmRequest(experiment_id=eid, context=[0.1, 0.2])
    code, msg = _code_and_message(batch(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert msg.startswith("requests[2]: context has 2 values"), msg
    bad = [*good[:3], pb.SelectArmRequest(experiment_id=other), pb.SelectArmRequest(
        experiment_id=other, eligible_arm_ids=["a1", "nope"]), *good[:2]]
    code, msg = _code_and_message(batch(bad))
    assert code == grpc.StatusCode.NOT_FOUND and msg.startswith("requests[4]: eligible_arm_ids[1]")
    bad = [*good[:2], pb.SelectArmRequest(experiment_id=other, context=[1.0])]
    code, msg = _code_and_message(batch(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("requests[2]: context has")
    for e in (eid, other):
        arms = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=e)).arms
        assert sum(a.selections for a in arms) == 0


def test_batch_decisions_survive_a_crash_and_a_restart(tmp_path):
    """Batch decisions are logged as one columnar record per group: a crash right after
    (the log as written) and a graceful restart both keep them, with their selections."""
    srv = RunningServer(Settings(host="127.0.0.1", port=0, data_dir=tmp_path)).start()
    ch, stub = stub_for(srv.port)
    create(stub, "t", arms=ARMS, seed=3)
    create(stub, "l", arms=ARMS, policy=POLICIES["lin_ucb"][0], context_dim=4,
           reward_type=pb.REWARD_TYPE_CONTINUOUS, seed=4)
    items = _mixed_items("t", 0, 50, 1) + _mixed_items("l", 4, 50, 2)
    decided = stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items)).responses
    # a reward is written after the decision records before it: this one makes them durable
    stub.RecordReward(pb.RecordRewardRequest(experiment_id="t", decision_id=decided[0].decision_id,
                                             reward=1))
    stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=[  # a reward_table record
        pb.RecordRewardRequest(experiment_id="l", arm_id="a1", context=[0.5, 0.1, 0.2, 0.3],
                               reward=2.5, decision_id="explicit-1"),
        pb.RecordRewardRequest(experiment_id="t", arm_id="a2", reward=0)]))
    before = {e: stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=e)) for e in ("t", "l")}
    ch.close()
    srv.crash()
    for _ in range(2):  # after the crash, then after a graceful restart (snapshot)
        with running_server(tmp_path) as srv2:
            ch, stub = stub_for(srv2.port)
            after = {e: stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=e))
                     for e in ("t", "l")}
            assert after == before
            ch.close()
    with running_server(tmp_path) as srv3:
        ch, stub = stub_for(srv3.port)
        rewards = [pb.RecordRewardRequest(experiment_id=items[i].experiment_id,
                                          decision_id=r.decision_id, reward=1.0)
                   for i, r in enumerate(decided)]
        out = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=rewards))
        assert [r.duplicate for r in out.responses] == [True] + [False] * (len(rewards) - 1)
        ch.close()


@pytest.mark.parametrize("name", list(POLICIES))
def test_batch_rewards_equal_the_same_rewards_one_by_one(stub, new_id, name):
    policy, dim, reward_type = POLICIES[name]
    one, batch = new_id(), new_id()
    decided = {}
    for eid in (one, batch):
        create(stub, eid, arms=ARMS, policy=policy, context_dim=dim, reward_type=reward_type,
               seed=9, discount=0.97 if dim == 0 else 1.0)
        decided[eid] = stub.BatchSelectArms(pb.BatchSelectArmsRequest(
            requests=_mixed_items(eid, dim, 40, seed=5))).responses
    gen = np.random.default_rng(len(name))

    def rewards_for(eid):
        out = []
        for i, d in enumerate(decided[eid]):
            value = float(gen.random() < 0.4) if reward_type == pb.REWARD_TYPE_BINARY else \
                float(gen.exponential(3.0))
            out.append(pb.RecordRewardRequest(experiment_id=eid, decision_id=d.decision_id,
                                              reward=value))
            if i % 7 == 0:  # explicit arms, with and without an (unknown) decision id
                out.append(pb.RecordRewardRequest(
                    experiment_id=eid, arm_id=ARMS[i % 6], reward=value,
                    decision_id=f"ext-{eid}-{i}" if i % 2 else "",
                    context=gen.uniform(-1, 1, size=dim).tolist()))
        out += out[::9]  # retries inside the batch: duplicates
        return out

    state = gen.bit_generator.state
    singles = [stub.RecordReward(r).duplicate for r in rewards_for(one)]
    gen.bit_generator.state = state
    batched = stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(
        requests=rewards_for(batch))).responses
    assert [r.duplicate for r in batched] == singles and any(singles)

    def fields(eid):
        arms = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=eid)).arms
        return [(a.arm_id, a.selections, a.rewards, round(a.reward_sum, 9)) for a in arms]

    assert fields(one) == fields(batch)
    after = {eid: stub.BatchSelectArms(pb.BatchSelectArmsRequest(
        requests=_mixed_items(eid, dim, 30, seed=6))).responses for eid in (one, batch)}
    assert [_decided(r) for r in after[one]] == [_decided(r) for r in after[batch]]


# -- the columnar decision store ---------------------------------------------------------------
def _batch(ids: list[str], created: float) -> DecisionColumns:
    n = len(ids)
    return DecisionColumns(ids, np.arange(n), [(f"arm{i}",) for i in range(n)],
                           [np.full(2, float(i)) for i in range(n)], np.full(n, 0.5),
                           np.arange(n), np.full(n, created), np.zeros(n, dtype=bool))


def test_decision_store_ring_keeps_the_newest_capacity_records():
    store = DecisionStore(capacity=5, ttl_seconds=100.0, id_prefix="p")
    for i in range(3):
        store.put(f"s{i}", DecisionRecord(1, (f"x{i}",), None, 0.1, i, 10.0))
    store.put_many(_batch([f"b{i}" for i in range(4)], 11.0))  # wraps the ring
    assert len(store) == 5 and store.get("s1", 11.0) is None
    assert store.get("s2", 11.0).arm_ids == ("x2",)
    rec = store.get("b3", 11.0)
    assert (rec.experiment_uid, rec.arm_ids, rec.model_version) == (3, ("arm3",), 3)
    assert rec.context.tolist() == [3.0, 3.0] and not rec.rewarded
    store.mark_rewarded(rec)
    assert store.get("b3", 11.0).rewarded and store.is_rewarded(store.get("b3", 11.0))
    assert store.columns().ids == ["s2", "b0", "b1", "b2", "b3"]
    store.put_many(_batch([f"c{i}" for i in range(7)], 12.0))  # more than the capacity
    assert store.columns().ids == [f"c{i}" for i in range(2, 7)]
    assert store.get("b3", 12.0) is None and store.get("c6", 12.0).arm_ids == ("arm6",)
    store.put("c6", DecisionRecord(9, ("y",), None, 0.2, 0, 12.5))  # same id, newer row
    store.put_many(_batch(["d0", "d1", "d2", "d3"], 13.0))  # evicts the old c6 row only
    assert store.get("c6", 13.0).arm_ids == ("y",)
    assert store.new_ids(3) == ["p-1", "p-2", "p-3"] and store.new_id() == "p-4"


def test_decision_store_expires_by_ttl_and_restores_from_columns():
    store = DecisionStore(capacity=1000, ttl_seconds=5.0)
    store.put_many(_batch([f"old{i}" for i in range(10)], 100.0))
    store.put_many(_batch([f"new{i}" for i in range(10)], 103.0))
    assert store.get("old1", 104.0) is not None and store.get("old1", 105.5) is None
    store.put_many(_batch(["late"], 106.0))  # sweeps the expired front
    assert len(store) == 11 and store.columns().ids[0] == "new0"
    copy = DecisionStore(capacity=1000, ttl_seconds=5.0)
    copy.load_columns(store.columns())
    assert copy.columns().ids == store.columns().ids and len(copy) == 11
    assert copy.get("new4", 106.0).context.tolist() == [4.0, 4.0]


def test_metrics_exposition_counts_requests_and_latencies():
    from prometheus_client import generate_latest

    metrics = Metrics()
    metrics.track(lambda: 2, lambda: 7)
    for seconds in (2e-5, 2e-5, 3e-4):
        metrics.observe("SelectArm", "OK", seconds)
    metrics.observe("RecordReward", "NOT_FOUND", 1e-5)
    text = generate_latest(metrics.registry).decode()
    select = 'grpc_method="SelectArm",grpc_service="decision.v1.DecisionService",grpc_type="unary"'
    reward = select.replace("SelectArm", "RecordReward")
    assert f'grpc_server_handled_total{{grpc_code="OK",{select}}} 3.0' in text
    assert f'grpc_server_handled_total{{grpc_code="NOT_FOUND",{reward}}} 1.0' in text
    assert f'grpc_server_handling_seconds_bucket{{{select},le="2.5e-05"}} 2.0' in text
    assert f'grpc_server_handling_seconds_bucket{{{select},le="+Inf"}} 3.0' in text
    assert f'grpc_server_handling_seconds_bucket{{{reward},le="1e-05"}} 1.0' in text
    assert f'grpc_server_handling_seconds_bucket{{{select},le="10.0"}} 3.0' in text
    assert "banditd_decisions_stored 7.0" in text and "banditd_experiments 2.0" in text


def _requests_by_code(server) -> Counter:
    """The server's grpc_server_handled_total: (method, status code) -> calls."""
    counts: Counter = Counter()
    for family in server.app.core.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total":
                counts[sample.labels["grpc_method"], sample.labels["grpc_code"]] += int(
                    sample.value)
    return counts


@pytest.mark.slow
def test_locustfile_runs_against_a_real_server(server, tmp_path):
    """The Locust load test (benchmarks/locustfile.py) for a few seconds: every request
    kind is sent, and neither Locust nor the server (its request counters) saw a failure;
    every call Locust counted was handled by the server."""
    import csv
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
           "--headless", "--host", f"127.0.0.1:{server.port}", "--users", "4",
           "--spawn-rate", "4", "--run-time", "5s", "--stop-timeout", "2",
           "--csv", str(tmp_path / "run"), "--only-summary"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "proto")]))
    before = _requests_by_code(server)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    served = _requests_by_code(server) - before
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"SelectArm [eligible subset]", "SelectArm [slate of 3]",
                         "SelectArm [LinUCB context]", "RecordReward", "PaceBid", "RecordSpend",
                         "Aggregated"}
    assert all(int(r["Request Count"]) > 0 for r in rows.values()), rows
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    counted: Counter = Counter()
    for name, row in rows.items():
        if name != "Aggregated":
            counted[name.split(" [")[0]] += int(row["Request Count"])
    assert sum(counted.values()) == int(rows["Aggregated"]["Request Count"])
    # the set-up creates the experiments and the campaign (ALREADY_EXISTS on a second run)
    methods = {method for method, _ in served} - {"CreateExperiment", "CreateCampaign"}
    assert methods == set(counted)
    assert {code for method, code in served if method in methods} == {"OK"}, served
    for method in methods:
        assert counted[method] <= served[method, "OK"], (counted, served)


def test_undecodable_request_bytes_are_invalid_argument(channel, stub, new_id):
    """The service parses requests itself (bytes-in handlers): bytes that are not a valid
    message are INVALID_ARGUMENT, change nothing, and the server keeps serving."""
    eid = new_id()
    create(stub, eid)
    call = channel.unary_unary("/decision.v1.DecisionService/SelectArm")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid SelectArmRequest" in info.value.details()
    raw = channel.unary_unary("/decision.v1.DecisionService/SelectArm")(
        pb.SelectArmRequest(experiment_id=eid, eligible_arm_ids=["b"]).SerializeToString(),
        timeout=10)
    assert pb.SelectArmResponse.FromString(raw).arm_id == "b"
    listed = pb.ListExperimentsResponse.FromString(channel.unary_unary(
        "/decision.v1.DecisionService/ListExperiments")(
        pb.ListExperimentsRequest().SerializeToString(), timeout=10))
    assert eid in [e.experiment_id for e in listed.experiments]
    stats = {a.arm_id: a.selections for a in stub.GetArmStats(
        pb.GetArmStatsRequest(experiment_id=eid)).arms}
    assert stats == {"a": 0, "b": 1, "c": 0}  # the undecodable call selected nothing


def test_decision_store_finds_issued_batch_ids_without_the_dict():
    store = DecisionStore(capacity=6, ttl_seconds=100.0, id_prefix="me")
    store.put("foreign", DecisionRecord(1, ("x",), None, 0.1, 0, 10.0))
    for round_ in range(3):  # wraps the ring twice
        ids = store.new_ids(4)
        store.put_many(_batch(ids, 10.0 + round_), first_counter=store.last_counter - 3)
        assert not (set(ids) & set(store._index))  # not in the dict
        for i, decision_id in enumerate(ids):
            rec = store.get(decision_id, 12.0)
            assert rec is not None and rec.arm_ids == (f"arm{i}",)
    assert store.columns().ids == [f"me-{c:x}" for c in range(7, 13)]
    assert store.get("me-6", 12.0) is None and store.get("foreign", 12.0) is None
    assert store.get("me-zz", 12.0) is None and store.get("me-", 12.0) is None
    rec = store.get("me-c", 12.0)
    store.mark_rewarded(rec)
    assert store.is_rewarded(store.get("me-c", 12.0))
    store.put("me-7", DecisionRecord(2, ("t",), None, 0.0, 0, 12.5, rewarded=True))  # tombstone
    store.put_many(_batch(["f1", "f2", "f3", "f4", "f5"], 13.0))  # evicts me-7's batch row
    assert store.get("me-7", 13.0).arm_ids == ("t",)
    store.discard("me-7")
    assert store.get("me-7", 13.0) is None
    copy = DecisionStore(capacity=6, ttl_seconds=100.0)
    copy.load_columns(store.columns())
    assert copy.columns().ids == store.columns().ids


def test_decision_store_put_new_stores_through_the_own_ring():
    """SelectArm's single decisions (put_new): fresh ids found through the ring, not the dict;
    a full store overwrites its oldest row, whichever way that one was indexed; TTL sweeps;
    ids continue batch ids' counter; restore keeps them findable."""
    store = DecisionStore(capacity=4, ttl_seconds=100.0, id_prefix="me")
    store.put("tomb", DecisionRecord(1, ("t",), None, 0.0, 0, 10.0, rewarded=True))
    ids = [store.put_new(7, (f"a{i}",), None, 0.1 * i, i, 10.0 + i) for i in range(3)]
    assert ids == ["me-1", "me-2", "me-3"] and not (set(ids) & set(store._index))
    rec = store.get("me-2", 12.0)
    assert (rec.experiment_uid, rec.arm_ids, rec.propensity, rec.model_version, rec.created,
            rec.rewarded) == (7, ("a1",), 0.1, 1, 11.0, False)
    store.mark_rewarded(rec)
    assert store.is_rewarded(store.get("me-2", 12.0))
    ctx = np.array([0.5, -1.0])
    ids.append(store.put_new(8, ("x", "y"), ctx, 0.25, 9, 13.0))  # full: evicts the tombstone
    assert store.get("tomb", 13.0) is None and "tomb" not in store._index and len(store) == 4
    assert store.get(ids[-1], 13.0).context is ctx and store.get(ids[-1], 13.0).arm_ids == (
        "x", "y")
    batch = store.new_ids(2)  # the same counter: the ring finds both kinds
    store.put_many(_batch(batch, 14.0), first_counter=store.last_counter - 1)
    assert store.get("me-1", 14.0) is None and store.get("me-2", 14.0) is None  # evicted
    assert store.get("me-3", 14.0).arm_ids == ("a2",) and store.get("me-6", 14.0) is not None
    assert store.put_new(1, ("z",), None, 1.0, 0, 15.0) == "me-7"
    assert store.columns().ids == ["me-4", "me-5", "me-6", "me-7"]
    assert store.get("me-4", 200.0) is None  # past its TTL
    copy = DecisionStore(capacity=4, ttl_seconds=100.0)
    copy.load_columns(store.columns())
    assert copy.get("me-7", 15.0).arm_ids == ("z",)


def test_decision_store_put_new_keeps_no_object_per_decision():
    """A single decision's id is the ring's counter, so the store keeps no string for it (at
    the default capacity of 1,000,000 the strings alone were ≈ 80 MB); with a shared slate
    tuple, as SelectArm passes for slates of one arm, storing allocates nothing that stays."""
    import tracemalloc

    store = DecisionStore(capacity=20_000, ttl_seconds=1e9, id_prefix="me")
    slate = ("arm-1",)
    for _ in range(1_000):  # the columns' first pages, the interpreter's free lists
        store.put_new(3, slate, None, 0.5, 1, 10.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = [store.put_new(3, slate, None, 0.5, 1, 10.0) for _ in range(10_000)]
        held = tracemalloc.get_traced_memory()[0] - before
        del ids
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held > 10_000 * 40  # the returned ids themselves (the check can see strings)
    assert kept < 10_000 * 4, f"{kept / 10_000:.1f} bytes kept per decision"
    assert store.get(f"me-{5_000:x}", 10.0).arm_ids is slate  # ids count in hex
    assert store.columns().ids[-1] == f"me-{11_000:x}"


def _servicer_with_thompson(tmp_path):
    """An in-process servicer (no log) holding experiment "e": Thompson, arms a0..a2."""
    from banditd.server.settings import Settings

    sv = InProcess(Settings(data_dir=tmp_path, durability="snapshot"))
    sv.create_experiment(pb.Experiment(
        experiment_id="e", arms=[pb.Arm(arm_id=f"a{i}") for i in range(3)],
        policy=pb.Policy(thompson=pb.Policy.Thompson()), reward_type=pb.REWARD_TYPE_BINARY,
        seed=1))
    return sv, sv.registry.get("e")


def test_select_arm_shares_one_slate_tuple_per_arm(tmp_path):
    """SelectArm's and BatchSelectArms' one-arm slates are the experiment's tuples (nothing
    new kept per decision), rebuilt when the arms change."""
    sv, exp = _servicer_with_thompson(tmp_path)
    assert exp.slates_of_one == [("a0",), ("a1",), ("a2",)]
    for _ in range(20):
        answer = sv.SelectArm(pb.SelectArmRequest(experiment_id="e"), None)
        record = sv.decisions.get(answer.decision_id)
        assert record.arm_ids is exp.slates_of_one[exp.arm_index[answer.arm_id]]
    batch = sv.BatchSelectArms(pb.BatchSelectArmsRequest(
        requests=[pb.SelectArmRequest(experiment_id="e")] * 5), None)
    for answer in batch.responses:  # a batch's one-arm slates are the same tuples
        record = sv.decisions.get(answer.decision_id)
        assert record.arm_ids is exp.slates_of_one[exp.arm_index[answer.arm_id]]
    exp.update_arms(["a3"], ["a0"])
    assert exp.slates_of_one == [("a1",), ("a2",), ("a3",)]


def test_select_follows_replaced_arrays(tmp_path):
    """Experiment.select binds its kernel to the state, selection counts and random state
    once; when one of them is replaced (arms changed, reset, a restore's counters,
    replication's random stream) the next decision uses the new array, never the old one."""
    sv, exp = _servicer_with_thompson(tmp_path)
    every = pb.SelectArmRequest(experiment_id="e")
    for _ in range(5):
        sv.SelectArm(every, None)
    old_selections, old_successes = exp.selections, exp.state[0]
    exp.update_arms(["a3"], ["a0"])  # a3 is position 2: past the old arrays' rows for it
    only_new = pb.SelectArmRequest(experiment_id="e", eligible_arm_ids=["a3"])
    for _ in range(4):
        assert sv.SelectArm(only_new, None).arm_id == "a3"
    assert exp.selections.tolist() == [*old_selections.tolist()[1:], 4]
    assert old_selections.sum() == 5  # the replaced counts were left alone
    exp.selections = exp.selections.copy()  # as a snapshot's restore replaces the counters
    sv.SelectArm(only_new, None)
    assert exp.selections[2] == 5
    exp.rng = seed_state(99)  # as replication gives a worker its own stream
    drawn = exp.rng.copy()
    sv.SelectArm(every, None)
    assert not np.array_equal(exp.rng, drawn)
    sv.registry.apply_reset(st.ResetExperiment(experiment_id="e"))
    sv.SelectArm(every, None)
    assert exp.selections.sum() == 1 and exp.state[0] is not old_successes


def test_decision_store_batch_ids_equal_single_ids_whatever_the_prefix():
    for prefix in ("a1b2", "w%d-1", "%%x"):
        store = DecisionStore(100, 60.0, id_prefix=prefix)
        singles = [store.new_id() for _ in range(3)]
        batch = store.new_ids(20)
        assert singles + batch == [f"{prefix}-{c:x}" for c in range(1, 24)]
        assert store.id_prefix_bytes.tobytes() == prefix.encode()


def _record(store: DecisionStore, decision_id: str) -> tuple:
    r = store.get(decision_id, 0.0)
    assert r is not None, decision_id
    context = None if r.context is None else r.context.tolist()
    return (r.experiment_uid, r.arm_ids, context, r.propensity, r.model_version, r.created,
            r.rewarded)


def test_decision_store_keeps_batches_without_their_id_strings():
    """A batch of consecutive ids (new_counters, or a registered issuer's) is stored without
    id strings; the ring finds its rows, snapshots (columns) name them, an unregistered
    issuer's batch falls back to the id dict."""
    store = DecisionStore(capacity=9, ttl_seconds=100.0, id_prefix="m%e")
    store.register_prefix("w-1")
    store.put_many(DecisionColumns(
        None, np.arange(3), [("a",), ("b",), ("c",)], [None] * 3, np.full(3, 0.5),
        np.arange(3), np.full(3, 10.0), np.zeros(3, dtype=bool)),
        first_counter=store.new_counters(3))
    assert store.last_counter == 3 and store._ids[:3] == [None] * 3 and not store._index
    assert store.get("m%e-2", 10.0).arm_ids == ("b",)
    theirs = _batch(["x"] * 4, 11.0)
    theirs.ids = None
    store.put_many(theirs, first_counter=0xFE, issuer="w-1")
    assert [store.get(f"w-1-{c:x}", 11.0).arm_ids for c in range(0xFE, 0x102)] == [
        ("arm0",), ("arm1",), ("arm2",), ("arm3",)]
    old = _batch(["x"] * 2, 12.0)
    old.ids = None
    store.put_many(old, first_counter=9, issuer="gone")  # not registered: the id dict
    assert sorted(store._index) == ["gone-9", "gone-a"]
    store.discard("w-1-ff")
    expected = ["m%e-1", "m%e-2", "m%e-3", "w-1-fe", "w-1-100", "w-1-101", "gone-9", "gone-a"]
    assert store.columns().ids == expected
    copy = DecisionStore(capacity=9, ttl_seconds=100.0)
    copy.load_columns(store.columns())
    assert [_record(copy, i) for i in expected] == [_record(store, i) for i in expected]
    store.put_many(_batch(["n0", "n1", "n2"], 13.0))  # evicts the oldest three rows
    assert store.get("m%e-3", 13.0) is None and store.get("w-1-fe", 13.0) is not None
    assert store.columns().ids == expected[3:] + ["n0", "n1", "n2"]


def _block_servicers(tmp_path):
    """A servicer whose logged records are captured (as a leader's stream would send them),
    and a second one with the same experiments to replay them."""
    class Recorder:
        def __init__(self):
            self.records: list[bytes] = []

        def publish(self, payload: bytes, origin: int) -> None:
            self.records.append(payload)

        async def wait_applied(self) -> None:
            pass

    source = InProcess(Settings(data_dir=tmp_path / "a", durability="snapshot", workers=2))
    source.storage.replication = recorder = Recorder()
    replica = InProcess(Settings(data_dir=tmp_path / "b", durability="snapshot"))
    return source, recorder, replica


async def _create_in_both(source, replica, recorder, *experiments) -> None:
    """Create ``experiments`` in both servicers; the recorder then holds no record."""
    for e in experiments:
        for s in (source, replica):
            await s.CreateExperiment(pb.CreateExperimentRequest(experiment=e), None)
    recorder.records.clear()


@pytest.mark.parametrize("registered", [True, False])
def test_batch_groups_are_logged_as_blocks_that_replay_to_the_same_records(tmp_path,
                                                                         registered):
    source, recorder, replica = _block_servicers(tmp_path)
    experiments = [
        make_experiment("t", arms=ARMS, seed=3),
        make_experiment("lin", arms=ARMS, policy=POLICIES["lin_ucb"][0], context_dim=4,
                        reward_type=pb.REWARD_TYPE_CONTINUOUS, seed=4),
        make_experiment("wide", arms=[f"w{i}" for i in range(300)], seed=5),
    ]
    batches = [
        [pb.SelectArmRequest(experiment_id="t")] * 40,
        [pb.SelectArmRequest(experiment_id="t", num_arms=3, eligible_arm_ids=ARMS[1:5])] * 9,
        _mixed_items("lin", 4, 60, seed=8),
        [pb.SelectArmRequest(experiment_id="wide", num_arms=2)] * 5,  # few of many arms
    ]

    async def main():
        await _create_in_both(source, replica, recorder, *experiments)
        ids = []
        for items in batches:
            reply = source.BatchSelectArms(pb.BatchSelectArmsRequest(requests=items), None)
            ids += [r.decision_id for r in reply.responses]
            source.storage.hand_over_pending()
        return ids

    ids = asyncio.run(main())
    records = [st.WalRecord.FromString(p) for p in recorder.records]
    assert {r.WhichOneof("op") for r in records} == {"decision_block"}
    assert sum(r.decision_block.count for r in records) == len(ids) == 114
    wide = [r.decision_block for r in records if r.decision_block.experiment_id == "wide"]
    assert len(wide[0].arm_ids) <= 10  # only the arms its slates use
    if registered:
        replica.decisions.register_prefix(source.decisions.id_prefix)
    for record in records:
        replica.state.apply(record)
    assert bool(replica.decisions._index) != registered  # a ring, or the id dict
    assert [_record(replica.decisions, i) for i in ids] == [
        _record(source.decisions, i) for i in ids]
    for e in experiments:
        eid = e.experiment_id
        assert replica.registry.get(eid).selections.tolist() == \
            source.registry.get(eid).selections.tolist()
    assert source.registry.get("wide").selections.sum() == 10


@pytest.mark.parametrize("damage", ["short", "arm out of range", "no arms per slate",
                                    "short propensities", "table columns disagree"])
def test_damaged_decision_records_are_refused_and_change_nothing(tmp_path, damage):
    _, _, replica = _block_servicers(tmp_path)
    asyncio.run(replica.CreateExperiment(pb.CreateExperimentRequest(
        experiment=make_experiment("t", arms=ARMS)), None))
    uid = replica.registry.get("t").uid
    positions = np.array([0, 1, 2], dtype="<u4")
    propensities = np.full(3, 0.5)
    size = 1
    if damage == "short":
        positions = positions[:2]
    elif damage == "arm out of range":
        positions[1] = len(ARMS)
    elif damage == "no arms per slate":
        size = 0
    elif damage == "short propensities":
        propensities = propensities[:2]
    record = st.WalRecord(decision_block=st.DecisionBlock(
        experiment_id="t", experiment_uid=uid, id_prefix="x", first_counter=1, count=3,
        slate_size=size, arm_ids=ARMS, arm_positions=positions.tobytes(),
        propensities=propensities.tobytes(), created=1.0))
    if damage == "table columns disagree":  # more incarnations than ids
        record = st.WalRecord(decision_table=st.DecisionTable(
            decision_ids=["x-1", "x-2"], experiment_ids=["t"] * 2, experiment_uids=[uid] * 3,
            slate_sizes=[1, 1], arm_ids=["a0", "a1"], propensities=[0.5] * 2,
            model_versions=[0] * 2, created=[1.0] * 2))
    with pytest.raises(ValueError):
        replica.state.apply(record)
    store = replica.decisions
    assert len(store) == 0 and len(store._ids) == len(store._slates) == store.capacity
    assert replica.registry.get("t").selections.sum() == 0


def test_single_and_batch_decisions_are_logged_in_the_order_they_were_made(tmp_path):
    """Single decisions (a table) and batch groups (blocks) made in one log window come out
    as records in decision order, so a replay stores them in that order."""
    source, recorder, replica = _block_servicers(tmp_path)

    async def main():
        await _create_in_both(source, replica, recorder, make_experiment("t", arms=ARMS))
        ids = []
        for step in range(4):
            if step % 2:
                reply = source.BatchSelectArms(pb.BatchSelectArmsRequest(
                    requests=[pb.SelectArmRequest(experiment_id="t")] * 3), None)
                ids += [r.decision_id for r in reply.responses]
            else:
                for _ in range(2):
                    ids.append(source.SelectArm(pb.SelectArmRequest(experiment_id="t"),
                                                None).decision_id)
        source.storage.hand_over_pending()  # one log write for all of them
        return ids

    ids = asyncio.run(main())
    records = [st.WalRecord.FromString(p) for p in recorder.records]
    assert [r.WhichOneof("op") for r in records] == [
        "decision_table", "decision_block", "decision_table", "decision_block"]
    logged = []
    for r in records:
        if r.HasField("decision_table"):
            logged += list(r.decision_table.decision_ids)
        else:
            b = r.decision_block
            logged += [f"{b.id_prefix}-{c:x}" for c in range(b.first_counter,
                                                            b.first_counter + b.count)]
    assert logged == ids
    for r in records:
        replica.state.apply(r)
    assert replica.decisions.columns().ids == ids


@pytest.mark.parametrize("made_by, between", [
    ("BatchSelectArms", None), ("SelectArm", None),
    ("SelectArm", "reset"),  # the reward is for the experiment's next incarnation
    ("SelectArm", "other experiment"),  # the reward names another experiment
])
def test_a_reward_that_came_before_its_decision_stays_counted_once_after_replay(
        tmp_path, made_by, between):
    """A reward by explicit arm for a decision not seen yet (a follower's, still on its way)
    leaves a rewarded tombstone; the decision, replayed after it from a log whose issuer
    this process does not know, must not make a retried reward count again (the live leader,
    which reads the tombstone before its rings, does not either)."""
    source, recorder, replica = _block_servicers(tmp_path)

    async def main():
        await _create_in_both(source, replica, recorder, make_experiment("t", arms=ARMS),
                              make_experiment("u", arms=ARMS))
        if made_by == "BatchSelectArms":
            reply = source.BatchSelectArms(pb.BatchSelectArmsRequest(
                requests=[pb.SelectArmRequest(experiment_id="t")] * 4), None)
            decisions = list(reply.responses)
        else:
            decisions = [source.SelectArm(pb.SelectArmRequest(experiment_id="t"), None)
                         for _ in range(4)]
        source.storage.hand_over_pending()
        if between == "reset":
            await replica.ResetExperiment(pb.ResetExperimentRequest(experiment_id="t"), None)
        rewarded = "u" if between == "other experiment" else "t"
        early = decisions[2]
        reward = pb.RecordRewardRequest(experiment_id=rewarded, decision_id=early.decision_id,
                                        arm_id=early.arm_id, reward=1.0)
        first = await replica.RecordReward(reward, None)  # before the decision: a tombstone
        for record in recorder.records:
            replica.state.apply(st.WalRecord.FromString(record))
        retry = await replica.RecordReward(reward, None)
        other = None
        if between != "reset":  # (a reset leaves the earlier decisions nothing to reward)
            other = await replica.RecordReward(pb.RecordRewardRequest(
                experiment_id="t", decision_id=decisions[1].decision_id, reward=1.0), None)
        return rewarded, first, retry, other

    rewarded, first, retry, other = asyncio.run(main())
    assert not first.duplicate and retry.duplicate
    assert other is None or not other.duplicate  # the other decisions are not rewarded
    counted = {e: int(replica.registry.get(e).rewards.sum()) for e in ("t", "u")}
    expected = {"t": 0, "u": 0}
    expected[rewarded] += 1  # the early reward, once
    expected["t"] += other is not None
    assert counted == expected


def test_a_replayed_tombstone_keeps_its_own_time_to_live():
    """The tombstone (made when the reward came) keeps the id, not the earlier decision: the
    reward is remembered for the TTL from the reward on, as in the live store."""
    stores = []
    for registered in (True, False):  # the live leader's ring, or a replay's id dict
        store = DecisionStore(capacity=100, ttl_seconds=10.0, id_prefix="me")
        if registered:
            store.register_prefix("fw")
        store.put("fw-3", DecisionRecord(1, ("a1",), None, 0.0, 0, 100.0, rewarded=True))
        n = 3
        store.put_many(DecisionColumns([f"fw-{i}" for i in range(1, n + 1)],
                                       np.ones(n, np.int64), [("a1",)] * n, [None] * n,
                                       np.full(n, 0.5), np.zeros(n, np.int64), np.full(n, 98.0),
                                       np.zeros(n, bool)), expire=False)
        stores.append(store)
    for store in stores:
        assert store.get("fw-3", 109.0).rewarded  # 11 s after the decision, 9 after the reward
        assert store.get("fw-3", 111.0) is None
        assert store.get("fw-2", 107.0) is not None and not store.get("fw-2", 107.0).rewarded


def test_a_rewarded_tombstone_and_its_late_decision_restore_as_one_rewarded_decision():
    """The live store reads its id dict (the tombstone) before the rings (the follower's
    decision); a snapshot holds what the live store reads, so its restore keeps the reward."""
    live = DecisionStore(capacity=100, ttl_seconds=1e9, id_prefix="me")
    live.register_prefix("fw")
    live.put("fw-3", DecisionRecord(1, ("a2",), None, 0.0, 0, 1.0, rewarded=True))
    n = 5
    live.put_many(DecisionColumns(None, np.ones(n, np.int64), [("a1",), ("a2",)] * 2 + [("a0",)],
                                  [None] * n, np.full(n, 0.5), np.zeros(n, np.int64),
                                  np.full(n, 2.0), np.zeros(n, bool)),
                  first_counter=1, issuer="fw")
    assert live.get("fw-3", 3.0).rewarded and not live.get("fw-2", 3.0).rewarded
    snapshot = live.columns()
    assert sorted(snapshot.ids) == [f"fw-{i}" for i in range(1, 6)]
    for chunks in ([snapshot], [_rows(snapshot, 0, 1), _rows(snapshot, 1, 5)]):
        restored = DecisionStore(capacity=100, ttl_seconds=1e9, id_prefix="new")
        for chunk in chunks:
            restored.put_many(chunk, expire=False)
        assert restored.get("fw-3", 3.0).rewarded
        assert [restored.get(f"fw-{i}", 3.0).rewarded for i in (1, 2, 4, 5)] == [False] * 4


def _rows(cols: DecisionColumns, start: int, stop: int) -> DecisionColumns:
    part = slice(start, stop)
    return DecisionColumns(cols.ids[part], cols.uids[part], cols.slates[part],
                           cols.contexts[part], cols.propensities[part], cols.versions[part],
                           cols.created[part], cols.rewarded[part])


def test_successful_calls_times_are_binned_in_bulk_as_one_by_one():
    """Successful calls append their handler times (Metrics.ok_times) and are binned with
    NumPy in bulk; /metrics shows exactly what binning each call with bisect showed, for
    times held and binned alike, bucket edges included."""
    from bisect import bisect_left

    from prometheus_client import generate_latest

    from banditd.server.api import metrics as metrics_module

    rng = np.random.default_rng(4)
    times = np.concatenate([rng.exponential(2e-4, 3000), metrics_module._BUCKETS, [0.0, 5.0]])
    bulk, one_by_one = Metrics(), Metrics()
    held, bin_held = bulk.ok_times("SelectArm")
    for seconds in times.tolist():
        held.append(seconds)
        if len(held) >= metrics_module.OK_TIMES_HELD:
            bin_held()
        one_by_one.observe("SelectArm", "OK", seconds)
    assert 0 < len(held) < metrics_module.OK_TIMES_HELD  # some held, some binned
    reference = [0] * (len(metrics_module._BUCKETS) + 1)
    for seconds in times.tolist():
        reference[bisect_left(metrics_module._BUCKETS, seconds)] += 1

    def lines(m: Metrics) -> list[str]:
        return [line for line in generate_latest(m.registry).decode().splitlines()
                if line.startswith(("grpc_server_handled_total", "grpc_server_handling_seconds"))
                and "_created" not in line]

    def sums(got: list[str]) -> list[float]:
        return [float(line.rsplit(" ", 1)[1]) for line in got if "_sum{" in line]

    got = lines(bulk)
    # the same lines; the sums equal but for float rounding (added in another order)
    assert [x for x in got if "_sum{" not in x] == [
        x for x in lines(one_by_one) if "_sum{" not in x]
    assert np.allclose(sums(got), sums(lines(one_by_one)), rtol=1e-12)
    select = 'grpc_method="SelectArm",grpc_service="decision.v1.DecisionService",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{select}}} {float(len(times))}' in got
    assert (f'grpc_server_handling_seconds_bucket{{{select},le="0.0001"}} '
            f'{float(sum(reference[:4]))}') in got
