"""SelectArm calls that arrive close together are decided together (server/coalescing.py):
the rules on a fake clock, then real servers deciding the same as one call at a time."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import pytest

from conftest import create, running_server
from decision.v1 import decision_pb2 as pb
from decision.v1 import decision_pb2_grpc as pb_grpc
from server.coalescing import MAX_GROUP, PAUSE_SECONDS, SelectCoalescer
from server.decision_store import split_decision_id
from server.errors import InvalidArgument
from server.settings import Settings

WINDOW = 2.0 ** -9  # ~2 ms, exact in binary: a gap of exactly one window is one


class Harness:
    """A coalescer on a fake clock whose decisions are recorded."""

    def __init__(self, window: float = WINDOW) -> None:
        self.now = 100.0
        self.decided: list[str] = []
        self.groups: list[int] = []
        self.coalescer = SelectCoalescer(self.decide, window, self.groups.append)
        self.coalescer._clock = lambda: self.now

    def decide(self, request: str) -> str:
        if request.startswith("bad"):
            raise InvalidArgument(f"{request} is bad")
        self.decided.append(request)
        return f"answer to {request}"

    def at(self, t: float, request: str):
        self.now = 100.0 + t
        return self.coalescer.submit(request)


def run(coroutine):
    return asyncio.run(coroutine())


def test_a_call_after_a_quiet_window_is_decided_at_once():
    async def main():
        h = Harness()
        assert h.at(0.0, "r1") == "answer to r1"
        assert h.at(WINDOW, "r2") == "answer to r2"  # a gap of a whole window: no wait
        assert h.at(3 * WINDOW, "r3") == "answer to r3"
        assert h.decided == ["r1", "r2", "r3"] and h.groups == []

    run(main)


def test_close_calls_wait_and_the_first_call_after_the_window_closes_the_group():
    async def main():
        h = Harness()
        h.at(0.0, "r1")
        waiting = [h.at(WINDOW * 0.1, "r2"), h.at(WINDOW * 0.5, "r3"), h.at(WINDOW * 0.9, "r4")]
        assert all(isinstance(f, asyncio.Future) and not f.done() for f in waiting)
        assert h.decided == ["r1"]
        # r2 opened the group at 0.1 windows: a call at 1.1 windows closes it, decided last.
        assert h.at(WINDOW * 1.1, "r5") == "answer to r5"
        assert h.decided == ["r1", "r2", "r3", "r4", "r5"]
        assert [f.result() for f in waiting] == ["answer to r2", "answer to r3", "answer to r4"]
        assert h.groups == [4]
        assert h.coalescer._timer is None  # its timer went with it

    run(main)


def test_a_full_group_is_decided_without_waiting_for_the_window():
    async def main():
        h = Harness()
        h.at(0.0, "first")
        waiting = [h.at(1e-6 * (i + 1), f"r{i}") for i in range(MAX_GROUP - 1)]
        assert not any(f.done() for f in waiting)
        last = h.at(1e-6 * MAX_GROUP, "last")
        assert last == "answer to last"
        assert h.decided == ["first", *(f"r{i}" for i in range(MAX_GROUP - 1)), "last"]
        assert all(f.done() for f in waiting) and h.groups == [MAX_GROUP]

    run(main)


def test_the_timer_decides_a_group_nobody_closes_and_a_lonely_group_pauses_coalescing():
    async def main():
        h = Harness(window=0.001)
        h.at(0.0, "r1")
        waiting = [h.at(0.0001, "r2"), h.at(0.0002, "r3")]
        assert await asyncio.gather(*waiting) == ["answer to r2", "answer to r3"]
        assert h.groups == [2]
        # Not paused after a group of two: the next close call waits again ...
        lonely = h.at(0.0003, "r4")
        assert isinstance(lonely, asyncio.Future)
        h.now = 100.0 + 0.0005  # the clock the pause is measured from when the timer fires
        assert await lonely == "answer to r4"
        assert h.groups == [2, 1]
        # ... but a group of one means the traffic was not close after all: calls go at
        # once during the pause, however close, and wait again after it.
        assert h.at(0.0006, "r5") == "answer to r5"
        assert h.at(0.0005 + PAUSE_SECONDS * 0.99, "r6") == "answer to r6"
        again = h.at(0.0005 + PAUSE_SECONDS + 0.0002, "r7")  # 0.7 windows after r6
        assert isinstance(again, asyncio.Future)
        assert await again == "answer to r7"

    run(main)


def test_a_call_reaching_the_loop_with_the_timer_joins_the_group_and_nothing_pauses():
    # The loop thread was preempted past the window: the timer and a new call come due in
    # the same pass, the call's handler scheduled behind the timer. It still joins.
    async def main():
        h = Harness()
        h.at(0.0, "r1")
        waiting = h.at(WINDOW * 0.5, "r2")
        h.coalescer._timer.cancel()
        h.coalescer._expire()  # what the timer does when it fires ...
        assert h.at(WINDOW * 3, "r3") == "answer to r3"  # ... then the call's handler runs
        assert waiting.result() == "answer to r2" and h.groups == [2]
        await asyncio.sleep(0)  # the timer's follow-up was cancelled with the group
        assert h.groups == [2]
        assert isinstance(h.at(WINDOW * 3.5, "r4"), asyncio.Future)  # not paused
        assert await h.coalescer._group[0][1] == "answer to r4"

    run(main)


def test_an_error_stays_with_its_own_call_and_a_cancelled_call_is_not_decided():
    async def main():
        h = Harness()
        h.at(0.0, "r1")
        good, bad, gone = h.at(1e-5, "r2"), h.at(2e-5, "bad3"), h.at(3e-5, "r4")
        gone.cancel()  # its client went away while it waited
        assert h.at(WINDOW * 2, "r5") == "answer to r5"
        assert good.result() == "answer to r2"
        with pytest.raises(InvalidArgument, match="bad3 is bad"):
            bad.result()
        assert h.decided == ["r1", "r2", "r5"]  # nothing decided for the cancelled call

    run(main)


def test_settings_window_zero_means_no_coalescer_and_negative_is_refused(tmp_path):
    from server.service import DecisionServicer

    assert DecisionServicer(Settings(data_dir=tmp_path, select_coalesce_seconds=0)).coalescer \
        is None
    assert DecisionServicer(Settings(data_dir=tmp_path)).coalescer.window == pytest.approx(
        Settings.model_fields["select_coalesce_seconds"].default)
    with pytest.raises(ValueError, match="select_coalesce_seconds"):
        Settings(select_coalesce_seconds=-0.001)


# -- real servers ---------------------------------------------------------------------------
def _burst(stub, requests) -> list:
    """Send ``requests`` concurrently; each call's response or its RpcError."""
    futures = [stub.SelectArm.future(r, timeout=30) for r in requests]
    results = []
    for f in futures:
        try:
            results.append(f.result())
        except grpc.RpcError as exc:
            results.append(exc)
    return results


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_a_burst_is_decided_in_groups_the_same_as_one_call_at_a_time(tmp_path):
    # All requests are alike, so the i-th decision made is the same whichever call gets it:
    # the coalescing server's decisions, in the order made, equal the one-at-a-time server's.
    requests = [pb.SelectArmRequest(experiment_id="burst", num_arms=2)] * 24
    made = {}
    for window in (0.1, 0.0):
        with running_server(tmp_path / str(window), select_coalesce_seconds=window,
                            metrics_port=0) as srv, \
                grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            create(stub, "burst", arms=("a", "b", "c", "d"), seed=11)
            replies = _burst(stub, requests) if window else [stub.SelectArm(r) for r in requests]
            grouped = _metric(srv.app.metrics_port, "banditd_select_grouped_calls_total")
            groups = _metric(srv.app.metrics_port, "banditd_select_groups_total")
            if window:
                assert grouped >= 2 and groups >= 1 and grouped > groups
            else:
                assert grouped == 0 and groups == 0
            # Every decision is stored and takes its reward by id alone.
            for i, r in enumerate(replies):
                assert not stub.RecordReward(pb.RecordRewardRequest(
                    experiment_id="burst", decision_id=r.decision_id, reward=i % 2)).duplicate
            stats = stub.GetArmStats(pb.GetArmStatsRequest(experiment_id="burst"))
            assert sum(a.selections for a in stats.arms) == 2 * len(requests)
            assert sum(a.rewards for a in stats.arms) == len(requests)
            # In the order made: ids count up decision by decision.
            made[window] = [(tuple(r.ranked_arm_ids), r.propensity, r.model_version) for r in
                            sorted(replies, key=lambda r: split_decision_id(r.decision_id)[1])]
    assert made[0.1] == made[0.0]


def test_each_call_in_a_group_gets_its_own_status_and_a_waiting_call_sees_a_deletion(tmp_path):
    with running_server(tmp_path, select_coalesce_seconds=0.1) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        create(stub, "mixed", arms=("a", "b"))
        ok = pb.SelectArmRequest(experiment_id="mixed")
        replies = _burst(stub, [
            ok, ok, pb.SelectArmRequest(experiment_id="nope"), ok,
            pb.SelectArmRequest(experiment_id="mixed", num_arms=3), ok,
        ])
        codes = [r.code() if isinstance(r, grpc.RpcError) else grpc.StatusCode.OK
                 for r in replies]
        assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND,
                         grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                         grpc.StatusCode.OK]
        assert "nope" in replies[2].details() and "num_arms is 3" in replies[4].details()
        assert len({r.decision_id for r in replies if not isinstance(r, grpc.RpcError)}) == 4

        # Calls waiting in a group are decided against the state of when they are decided:
        # here the experiment is deleted first (the group's timer is held so that the order
        # does not depend on timing), and the call that closes the group after the window
        # is decided with them.
        coalescer = srv.app.servicer.coalescer
        waiting = [stub.SelectArm.future(ok, timeout=30) for _ in range(3)]

        def held() -> int:
            if coalescer._timer is not None:
                coalescer._timer.cancel()
                coalescer._timer = None
            return len(coalescer._group)

        while (n := srv.call(held)) < 2:  # the first may be decided at once
            assert not all(f.done() for f in waiting)
        stub.DeleteExperiment(pb.DeleteExperimentRequest(experiment_id="mixed"))
        srv.call(lambda: setattr(coalescer, "_opened", coalescer._opened - 1.0))
        with pytest.raises(grpc.RpcError) as closing:
            stub.SelectArm(ok, timeout=30)
        assert closing.value.code() == grpc.StatusCode.NOT_FOUND
        late = [f.exception() for f in waiting[-n:]]
        assert [e.code() for e in late] == [grpc.StatusCode.NOT_FOUND] * n
        assert srv.call(lambda: len(coalescer._group)) == 0

