"""Start-up compiles only the serving helpers and the kernels of the policies the restored state
uses; CreateExperiment compiles a new policy's kernels (off the event loop) before answering, the
first allocation request the allocation kernels; SelectArm and the other hot-path RPCs never
compile or load a kernel.

Run in a fresh process (nothing compiled in memory yet): every Numba dispatcher of banditd is
watched, and a dispatcher that gains a specialisation (compiled, or loaded from the on-disk
cache) during a hot-path call fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grpc

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import ROOT, make_experiment, running_server

SCRIPT = r'''
import asyncio, importlib, json, pkgutil, sys
from pathlib import Path

import grpc
from numba.core.registry import CPUDispatcher

import banditd.kernels, banditd.server
from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.api.app import create_server
from banditd.server.settings import Settings

def dispatchers():
    found = {}
    for package in (banditd.kernels, banditd.server):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if isinstance(value, CPUDispatcher):
                    found[f"{value.py_func.__module__}.{value.py_func.__name__}"] = value
    return found

def loaded():
    return {name: len(d.overloads) for name, d in dispatchers().items()}

POLICIES = {
    "thompson": (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_BINARY, 0),
    "thompson_value": (pb.Policy(thompson=pb.Policy.Thompson()), pb.REWARD_TYPE_VALUE, 0),
    "ucb1": (pb.Policy(ucb1=pb.Policy.Ucb1()), pb.REWARD_TYPE_BINARY, 0),
    "epsilon_greedy": (pb.Policy(epsilon_greedy=pb.Policy.EpsilonGreedy()),
                       pb.REWARD_TYPE_BINARY, 0),
    "lin_ucb": (pb.Policy(lin_ucb=pb.Policy.LinUcb()), pb.REWARD_TYPE_CONTINUOUS, 3),
    "lin_thompson": (pb.Policy(lin_thompson=pb.Policy.LinThompson()),
                     pb.REWARD_TYPE_CONTINUOUS, 3),
}

async def main(data):
    out = {}
    app, port = await create_server(Settings(host="127.0.0.1", port=0, data_dir=data,
                                             snapshot_interval_seconds=0))
    await app.wait_ready()
    out["ready_at_start"] = sorted(app.core.kernels.ready)
    start = loaded()
    out["policy_modules_loaded_at_start"] = sorted(
        n for n, k in start.items() if k and n.split(".")[2] in POLICIES)
    out["shared_loaded_at_start"] = sorted(n for n, k in start.items() if k)
    out["hot_path_loads"] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        for name, (policy, reward_type, dim) in POLICIES.items():
            before = loaded()
            await stub.CreateExperiment(pb.CreateExperimentRequest(experiment=pb.Experiment(
                experiment_id=name, arms=[pb.Arm(arm_id=a) for a in "abcd"], policy=policy,
                reward_type=reward_type, context_dim=dim, seed=1)))
            created = loaded()
            out.setdefault("create_loaded", {})[name] = sorted(
                n for n in created if created[n] > before[n])
            context = [0.5] * dim
            reward = 1.0
            for slate in (1, 2):
                d = await stub.SelectArm(pb.SelectArmRequest(
                    experiment_id=name, context=context, num_arms=slate))
                await stub.RecordReward(pb.RecordRewardRequest(
                    experiment_id=name, decision_id=d.decision_id, reward=reward))
            batch = await stub.BatchSelectArms(pb.BatchSelectArmsRequest(requests=[
                pb.SelectArmRequest(experiment_id=name, context=context, num_arms=2)] * 5))
            await stub.BatchRecordRewards(pb.BatchRecordRewardsRequest(requests=[
                pb.RecordRewardRequest(experiment_id=name, decision_id=r.decision_id,
                                       reward=0.0) for r in batch.responses]))
            await stub.RecordReward(pb.RecordRewardRequest(
                experiment_id=name, arm_id="b", context=context, reward=1.0))
            after = loaded()
            out["hot_path_loads"][name] = sorted(n for n in after if after[n] > created[n])
        before = loaded()
        split = await stub.GetAllocation(pb.GetAllocationRequest(experiment_id="thompson",
                                                                 num_draws=100))
        out["allocation_total"] = sum(a.percentage for a in split.allocations)
        after = loaded()
        out["allocation_loaded"] = sorted(n for n in after if after[n] > before[n])
    await app.stop(None)
    print(json.dumps(out))

asyncio.run(main(Path(sys.argv[1])))
'''


def test_only_used_policies_compile_at_start_and_selects_never_compile(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # an empty state: no policy and no allocation kernel at start, the serving helpers are
    assert out["ready_at_start"] == []
    assert out["policy_modules_loaded_at_start"] == []
    assert not any(".allocation." in n for n in out["shared_loaded_at_start"])
    assert any(".wire." in n for n in out["shared_loaded_at_start"])
    # the first GetAllocation compiled them
    assert "banditd.kernels.allocation._prob_best" in out["allocation_loaded"]
    assert abs(out["allocation_total"] - 100.0) < 0.01
    # each CreateExperiment of a new policy compiled (or loaded) its kernels first
    for policy, names in out["create_loaded"].items():
        assert any(n.startswith(f"banditd.kernels.{policy}.") for n in names), (policy, names)
    # and no hot-path call ever compiled or loaded anything
    assert out["hot_path_loads"] == {p: [] for p in out["create_loaded"]}


def test_start_compiles_the_policies_of_the_restored_state(tmp_path):
    data = tmp_path / "data"
    with running_server(data) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert server.app.core.kernels.ready == set()
        pb_grpc.DecisionServiceStub(channel).CreateExperiment(pb.CreateExperimentRequest(
            experiment=make_experiment("u", policy=pb.Policy(ucb1=pb.Policy.Ucb1()))))
        assert server.app.core.kernels.ready == {"ucb1"}
    with running_server(data) as server:
        assert server.app.core.kernels.ready == {"ucb1"}
