"""Health, reflection, warm-up (no JIT on the request path), CLI and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.api.auth import Authenticator
from helpers import (
    BIN,
    RunningServer,
    create,
    free_port,
    make_experiment,
    running_server,
    wait_serving,
)


def test_health_serving_for_both_names(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "decision.v1.DecisionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"decision.v1.DecisionService", "grpc.health.v1.Health"} <= names


def test_health_watch_and_reflection_descriptors_through_generic_handlers(channel):
    """Both services are served through generic handlers only (api.app.GenericHandlersOnly):
    the streaming health Watch and a reflection lookup by symbol still answer."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="decision.v1.DecisionService"), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="decision.v1.DecisionService")]))
    names = {descriptor_pb2.FileDescriptorProto.FromString(raw).name
             for raw in reply.file_descriptor_response.file_descriptor_proto}
    assert any(name.endswith("decision.proto") for name in names), names


def test_no_registered_method_handlers_on_the_server(tmp_path, monkeypatch):
    """Generated add_*_to_server functions also call add_registered_method_handlers, which
    makes every call on the server dearer; the server gets generic handlers only
    (api.app.GenericHandlersOnly) and still answers health checks."""

    real = grpc.aio.server
    registered = []

    def server_factory(*args, **kwargs):
        server = real(*args, **kwargs)
        add = server.add_registered_method_handlers

        def spy(service, handlers):
            registered.append(service)
            return add(service, handlers)

        server.add_registered_method_handlers = spy
        return server

    monkeypatch.setattr(grpc.aio, "server", server_factory)
    with running_server(tmp_path) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert registered == []


def test_start_up_collects_garbage_before_serving(tmp_path, monkeypatch):
    """Start-up (compilation, restore) leaves a full collection due that, run a few seconds
    into the traffic, stopped the event loop for 70-90 ms (benchmarks/startup_load.py): the
    server runs it before turning SERVING instead."""
    import gc
    import types

    import banditd.server.api.app as app_module
    from banditd.server.settings import Settings

    srv = RunningServer(Settings(host="127.0.0.1", port=0, data_dir=tmp_path))
    calls = []

    def collect(generation: int = 2) -> int:
        calls.append((generation, srv.app.core.ready))
        return gc.collect(generation)

    monkeypatch.setattr(app_module, "gc", types.SimpleNamespace(collect=collect))
    srv.start()
    try:
        assert calls == [(2, False)]  # one full collection, while not yet ready
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


_NO_JIT_SCRIPT = r"""
import asyncio, json, sys
import grpc
from banditd import kernels
from banditd.kernels import allocation as kernels_allocation
from banditd.decision.v1 import decision_pb2 as pb, decision_pb2_grpc as pb_grpc
from banditd.server.api.app import create_server
from banditd.server.settings import Settings

def signatures():
    out = {}
    for name, module in [*kernels.POLICIES.items(), ("allocation", kernels_allocation)]:
        for attr in dir(module):
            fn = getattr(module, attr)
            if hasattr(fn, "signatures") and hasattr(fn, "py_func"):
                out[f"{name}.{attr}"] = len(fn.signatures)
    return out

CASES = [
    (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_BINARY, 0),
    (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_VALUE, 0),
    (pb.Policy(ucb1=pb.Policy.Ucb1()), pb.REWARD_TYPE_CONTINUOUS, 0),
    (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy()), pb.REWARD_TYPE_BINARY, 0),
    (pb.Policy(lin_ucb=pb.Policy.LinUcb()), pb.REWARD_TYPE_CONTINUOUS, 3),
    (pb.Policy(lin_thompson=pb.Policy.LinThompson()), pb.REWARD_TYPE_BINARY, 3),
]

async def main():
    app, port = await create_server(Settings(host="127.0.0.1", port=0, data_dir=sys.argv[1]))
    await app.wait_ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        # what may compile: a policy's first CreateExperiment, the first allocation request
        for i, (policy, rtype, dim) in enumerate(CASES):
            await stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
                experiment_id=f"first{i}", arms=[pb.Arm(arm_id="a")], policy=policy,
                reward_type=rtype, context_dim=dim)))
        await stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="first0"))
        before = signatures()
        n = 0
        for policy, rtype, dim in CASES:
            for floor, burn, discount in ((0.0, 0, None), (0.05, 2, 0.99 if dim == 0 else None)):
                n += 1
                e = pb.Experiment(experiment_id=f"e{n}", arms=[pb.Arm(arm_id=a) for a in "abc"],
                                  policy=policy, reward_type=rtype, context_dim=dim, seed=n,
                                  exploration_floor=floor, min_selections=burn)
                if discount is not None:
                    e.discount = discount
                await stub.CreateExperiment(pb.CreateExperimentRequest(experiment=e))
                ctx = [0.1] * dim
                for k in (1, 2):
                    d = await stub.SelectArm(pb.SelectArmRequest(experiment_id=e.experiment_id, context=ctx, num_arms=k))
                    await stub.SelectArm(pb.SelectArmRequest(experiment_id=e.experiment_id, context=ctx, eligible_arm_ids=["b", "c"], num_arms=k))
                    await stub.SelectArm(pb.SelectArmRequest(experiment_id=e.experiment_id, context=ctx, eligible_arm_ids=["c"]))
                    await stub.RecordReward(pb.RecordRewardRequest(experiment_id=e.experiment_id, decision_id=d.decision_id, reward=1))
                    await stub.RecordReward(pb.RecordRewardRequest(experiment_id=e.experiment_id, arm_id="a", context=[0.2] * dim, reward=0))
                await stub.UpdateArms(pb.UpdateArmsRequest(experiment_id=e.experiment_id, add_arm_ids=["d"]))
                await stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[pb.SelectArmRequest(experiment_id=e.experiment_id, context=ctx)] * 3))
                await stub.GetArmStats(pb.GetArmStatsRequest(experiment_id=e.experiment_id))
                if dim == 0 and discount is None:
                    await stub.IngestMetrics(pb.IngestMetricsRequest(experiment_id=e.experiment_id, period="2025-01-01", metrics=[pb.ArmMetrics(arm_id="a", trials=10, successes=1, value=5)]))
                    if rtype != pb.REWARD_TYPE_CONTINUOUS:
                        await stub.GetAllocation(pb.GetAllocationRequest(experiment_id=e.experiment_id, min_percentage=1))
    after = signatures()
    await app.stop(None)
    print(json.dumps({"before": before, "after": after}))

asyncio.run(main())
"""


def test_no_compilation_on_the_request_path(tmp_path):
    """In a fresh process: once each policy's first experiment and the first allocation request
    compiled what they need, requests of every policy and shape compile nothing."""
    proc = subprocess.run([sys.executable, "-c", _NO_JIT_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["before"], "no kernels found"
    assert all(n >= 1 for k, n in result["before"].items() if k.endswith("._select")), result
    bound = [n for k, n in result["before"].items() if k.endswith("._select_bound")]
    assert len(bound) == 6 and min(bound) >= 1, result  # every policy's hot-path kernel
    assert result["after"] == result["before"]


@pytest.mark.slow
@pytest.mark.parametrize("entry", [["banditd"], ["python", "-m", "banditd"]])
def test_cli_serves_checks_health_and_stops_gracefully_on_sigterm(tmp_path, entry):
    port = free_port()
    cmd = [str(BIN / "banditd")] if entry == ["banditd"] else [sys.executable, "-m", "banditd"]
    env = dict(os.environ, BANDITD_HOST="127.0.0.1", BANDITD_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(cmd + ["serve", "--port", str(port), "--set", "grace_seconds=2",
                                   "--set", "drain_seconds=0"],
                            env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(port, proc)
        check = subprocess.run([str(BIN / "banditd"), "check-health"],
                               env=dict(env, BANDITD_PORT=str(port)), capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0 and check.stdout.strip() == "SERVING", check
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

            create(pb_grpc.DecisionServiceStub(ch), "cli-check")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policy")
@pytest.mark.parametrize("enabled", [True, False])
def test_grpc_helper_threads_run_under_sched_batch(tmp_path, enabled):
    """gRPC's threads (I/O, poller, timers) must not preempt the event loop: SCHED_BATCH for
    every thread but the loop's (the main thread of ``serve``), unless switched off."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "banditd", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(tmp_path),
                             "--set", f"batch_schedule_io_threads={str(enabled).lower()}"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(port, proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # let gRPC start every thread
            from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

            stub = pb_grpc.DecisionServiceStub(ch)
            create(stub, "sched")
            for _ in range(20):
                stub.SelectArm(pb.SelectArmRequest(experiment_id="sched"))
        policy = {}
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            name = Path(f"/proc/{proc.pid}/task/{tid}/comm").read_text().strip()
            policy[(name, int(tid))] = os.sched_getscheduler(int(tid))
    finally:
        proc.kill()
        proc.wait()
    loop = [p for (name, tid), p in policy.items() if tid == proc.pid]
    grpc_threads = [p for (name, tid), p in policy.items()
                    if name.startswith(("event_engine", "grpc_global_tim", "lifeguard"))]
    assert loop == [os.SCHED_OTHER], policy
    assert len(grpc_threads) >= 2, policy
    expected = os.SCHED_BATCH if enabled else os.SCHED_OTHER
    assert set(grpc_threads) == {expected}, policy


@pytest.mark.slow
def test_check_health_fails_when_nothing_listens():
    check = subprocess.run([str(BIN / "banditd"), "check-health"],
                           env=dict(os.environ, BANDITD_PORT=str(free_port())),
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and "UNAVAILABLE" in check.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,env,contains",
    [
        (["--port", "70000"], {}, "port"),
        (["--set", "max_arms=0"], {}, "max_arms"),
        (["--set", "no_such_setting=1"], {}, "no_such_setting"),
        ([], {"BANDITD_DECISION_TTL_SECONDS": "-5"}, "decision_ttl_seconds"),
        ([], {"BANDITD_LOG_LEVEL": "LOUD"}, "log_level"),
    ],
)
def test_invalid_settings_fail_at_start_with_clear_message(args, env, contains):
    proc = subprocess.run([str(BIN / "banditd"), "serve", *args], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid settings" in proc.stderr and contains in proc.stderr


@pytest.mark.slow
def test_port_in_use_is_reported_not_a_traceback(server, tmp_path):
    proc = subprocess.run([str(BIN / "banditd"), "serve", "--port", str(server.port)],
                          env=dict(os.environ, BANDITD_DATA_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and str(server.port) in proc.stderr



def test_prometheus_metrics_count_requests_by_code(tmp_path):
    import gc
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from banditd.decision.v1 import decision_pb2_grpc as pb_grpc

    with running_server(tmp_path, metrics_port=0) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        create(stub, "m")
        for _ in range(3):
            stub.SelectArm(pb.SelectArmRequest(experiment_id="m"))
        with pytest.raises(grpc.RpcError):
            stub.SelectArm(pb.SelectArmRequest(experiment_id="missing"))
        url = f"http://127.0.0.1:{srv.app.metrics_port}/metrics"
        cpu_before, gc_before = time.process_time(), gc.get_stats()[2]["collections"]
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        cpu_after, gc_after = time.process_time(), gc.get_stats()[2]["collections"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    unary = (("grpc_service", "decision.v1.DecisionService"), ("grpc_type", "unary"))

    def labels(method: str, *more) -> tuple:
        return tuple(sorted((*unary, ("grpc_method", method), *more)))

    assert samples[("grpc_server_handled_total", labels("SelectArm", ("grpc_code", "OK")))] == 3
    assert samples[("grpc_server_handled_total",
                    labels("SelectArm", ("grpc_code", "NOT_FOUND")))] == 1
    assert samples[("grpc_server_handling_seconds_count", labels("SelectArm"))] == 4
    assert samples[("banditd_experiments", ())] == 1
    assert samples[("banditd_decisions_stored", ())] == 3
    # the client library's process and garbage-collector families, of this process (the
    # server runs in it): CPU time as /proc counts it (whole clock ticks, <= the exact
    # figure) and the full collections so far (start-up runs one before SERVING)
    cpu = samples[("process_cpu_seconds_total", ())]
    assert cpu_before - 0.05 <= cpu <= cpu_after
    full = samples[("python_gc_collections_total", (("generation", "2"),))]
    assert 1 <= gc_before <= full <= gc_after


class _AbortRecorder:
    """A ServicerContext stand-in whose abort notes what /metrics held when the status was
    sent (abort sends it, then raises)."""

    def __init__(self, metrics):
        self._metrics = metrics
        self.counts_at_abort = None

    def set_trailing_metadata(self, metadata):
        pass

    def trailing_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:1"

    async def abort(self, code, details, trailing_metadata=()):
        self.counts_at_abort = dict(self._metrics._stats.counts)
        raise grpc.aio.AbortError(code, details)


def test_a_failed_call_is_counted_before_its_status_is_sent():
    # The client may scrape /metrics as soon as it has its answer.
    import asyncio

    from banditd.server.api.handlers import bytes_handler
    from banditd.server.api.metrics import Metrics
    from banditd.server.errors import NotFound

    method = pb.DESCRIPTOR.services_by_name["DecisionService"].methods_by_name["SelectArm"]
    metrics = Metrics()

    def select(request, context):
        raise NotFound(f"experiment {request.experiment_id!r} not found")

    context = _AbortRecorder(metrics)
    handler = bytes_handler(select, method, metrics, SimpleNamespace(ready=True, auth=Authenticator(None)))
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(handler(pb.SelectArmRequest(experiment_id="x").SerializeToString(), context))
    assert context.counts_at_abort == {("SelectArm", "NOT_FOUND"): 1}


def test_a_follower_counts_a_refused_call_before_its_status_is_sent():
    import asyncio
    from types import SimpleNamespace

    from banditd.server.api.metrics import Metrics
    from banditd.server.cluster.workers import _Forwarder

    metrics = Metrics()
    forwarder = _Forwarder(durability=None, leader_address=None, metadata=(), index=1)
    forwarder.core = SimpleNamespace(ready=False, metrics=metrics)
    context = _AbortRecorder(metrics)
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(forwarder.forward("SelectArm", b"", context))
    assert context.counts_at_abort == {("SelectArm", "UNAVAILABLE"): 1}


def test_a_cancelled_call_is_counted_once_as_cancelled():
    # gRPC cancels the handler's task when the client cancels or its deadline passes.
    import asyncio

    from banditd.server.api.handlers import bytes_handler
    from banditd.server.api.metrics import Metrics

    method = pb.DESCRIPTOR.services_by_name["DecisionService"].methods_by_name["GetAllocation"]
    metrics = Metrics()

    async def allocate(request, context):
        raise asyncio.CancelledError

    handler = bytes_handler(allocate, method, metrics, SimpleNamespace(ready=True, auth=Authenticator(None)))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(handler(pb.GetAllocationRequest(experiment_id="x").SerializeToString(),
                            _AbortRecorder(metrics)))
    assert metrics._stats.counts == {("GetAllocation", "CANCELLED"): 1}


def test_a_follower_counts_a_leader_refusal_once_even_if_sending_it_fails():
    # The client's deadline can pass while the leader's error comes back: abort then raises
    # something other than AbortError, which must not be counted a second time.
    import asyncio
    from types import SimpleNamespace

    from banditd.server.api.metrics import Metrics
    from banditd.server.cluster.workers import FORWARDED_BY_KEY, _Forwarder

    metrics = Metrics()

    class SendFails(_AbortRecorder):
        def time_remaining(self):
            return 1.0

        def invocation_metadata(self):
            return ()

        async def abort(self, code, details, trailing_metadata=()):
            self.counts_at_abort = dict(self._metrics._stats.counts)
            raise RuntimeError("the call is already over")

    sent = []

    async def refused(request, timeout, metadata):
        sent.append(metadata)
        raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(), "experiment 'x' not found")

    forwarder = _Forwarder(durability=SimpleNamespace(publisher=None), leader_address=None,
                           metadata=(), index=1)
    forwarder.core = SimpleNamespace(ready=True, metrics=metrics)

    async def leader_call(name):
        return refused

    forwarder._call = leader_call
    context = SendFails(metrics)
    with pytest.raises(RuntimeError):
        asyncio.run(forwarder.forward("GetExperiment", b"", context))
    assert context.counts_at_abort == {("GetExperiment", "NOT_FOUND"): 1}
    assert metrics._stats.counts == {("GetExperiment", "NOT_FOUND"): 1}
    # the leader learns which follower forwarded the call (it hurries that follower's stream)
    assert (FORWARDED_BY_KEY, "1") in sent[0]


def test_select_from_bytes_decides_as_the_typed_path(tmp_path, monkeypatch):
    """Single servers answer SelectArm from bytes to bytes (kept checked requests, the answer
    written directly); multi-worker ones through the typed method. With the same seeds both
    make the same decisions, for every policy and request shape, also when the set of kept
    requests overflows and is emptied; requests with a context are not kept."""
    import asyncio

    import banditd.server.api.decisions as decisions_module
    from banditd.server.api.app import build_service
    from banditd.server.api.service import DecisionService
    from banditd.server.settings import Settings

    monkeypatch.setattr(decisions_module, "PLAN_LIMIT", 3)

    def servicer(directory) -> DecisionService:
        s = build_service(Settings(host="127.0.0.1", port=0, data_dir=directory,
                                   durability="snapshot"))
        s.core.ready = True
        return s

    rng = np.random.default_rng(5)
    requests = []
    for i in range(300):
        kind = i % 4
        if kind == 0:
            requests.append(pb.SelectArmRequest(experiment_id="t"))
        elif kind == 1:
            eligible = [f"a{j}" for j in sorted(rng.choice(6, size=3, replace=False))]
            requests.append(pb.SelectArmRequest(experiment_id="t", eligible_arm_ids=eligible,
                                                num_arms=int(rng.integers(0, 3))))
        elif kind == 2:
            requests.append(pb.SelectArmRequest(experiment_id="u", num_arms=2))
        else:
            requests.append(pb.SelectArmRequest(experiment_id="lin", num_arms=1,
                                                context=rng.uniform(-1, 1, 2).tolist()))

    async def decide(service: DecisionService, raw: bool) -> list[tuple]:
        s = service.decisions
        create = service.behaviors()["CreateExperiment"]
        arms = [f"a{j}" for j in range(6)]
        for experiment in (make_experiment("t", arms=arms, seed=3),
                           make_experiment("u", arms=arms, seed=4,
                                           policy=pb.Policy(ucb1=pb.Policy.Ucb1())),
                           make_experiment("lin", arms=arms, seed=5, context_dim=2,
                                           policy=pb.Policy(lin_ucb=pb.Policy.LinUcb()))):
            await create(pb.CreateExperimentRequest(experiment=experiment), None)
        out = []
        for r in requests:
            if raw:
                reply = pb.SelectArmResponse.FromString(
                    s.select_arm_bytes(r.SerializeToString(), None))
            else:
                reply = s.SelectArm(r, None)
            assert reply.decision_id
            out.append((reply.arm_id, tuple(reply.ranked_arm_ids), reply.propensity,
                        reply.model_version))
        return out

    raw_servicer = servicer(tmp_path / "raw")
    typed = asyncio.run(decide(servicer(tmp_path / "typed"), raw=False))
    assert asyncio.run(decide(raw_servicer, raw=True)) == typed
    assert len({t[0] for t in typed}) == 6  # every arm was chosen at some point
    assert 0 < len(raw_servicer.decisions._plans) <= 3
    assert all(not p.context.size for p in raw_servicer.decisions._plans.values())
