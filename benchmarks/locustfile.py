"""Locust load test of banditd: an ad server's traffic mix over gRPC.

    locust -f benchmarks/locustfile.py --host 127.0.0.1:50051            # web UI on :8089
    locust -f benchmarks/locustfile.py --host HOST:PORT --headless -u 32 -r 8 --run-time 60s
    make load          # a local server + a headless run; reports in benchmarks/results/locust/

Locust's documented gRPC pattern: gRPC is made gevent-cooperative
(``grpc.experimental.gevent.init_gevent()``, before any channel exists), each user owns an
insecure channel wrapped by an interceptor that fires Locust's ``request`` event once per call
(name = the RPC, or ``RPC [variant]``; response time in ms; a failed status is a failure).

The mix, per simulated ad-server connection (a user, closed loop, no think time):

* ``SelectArm`` on a 20-creative Thompson experiment with a random eligible subset per request
  (weight 6), a ranked slate of 3 (weight 1), and a contextual LinUCB offer router with an
  8-feature context (weight 3);
* ``RecordReward`` by ``decision_id`` for a fraction of those decisions (``REWARD_FRACTION``)
  after a random delay (``REWARD_DELAY_S``): clicks come back late, most decisions get none;
* ``PaceBid`` then ``RecordSpend`` (win or loss, clearing cost) on a paced campaign, when the
  server's contract has pacing (the generated stub has ``PaceBid``) — weight 3.

Experiments (and the campaign) are created when the test starts if they do not exist yet, so
the file works against any banditd, local or remote; ids start with ``locust-``.
"""

from __future__ import annotations

import random
import time
from collections import deque

import grpc
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC's C core must yield to gevent

from locust import User, constant, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from banditd.decision.v1 import decision_pb2 as pb  # noqa: E402
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc  # noqa: E402

CREATIVES = [f"creative-{i}" for i in range(20)]
OFFERS = [f"offer-{i}" for i in range(12)]
CONTEXT_DIM = 8
THOMPSON_ID = "locust-creatives"
CONTEXTUAL_ID = "locust-offer-router"
CAMPAIGN_ID = "locust-campaign"
REWARD_FRACTION = 0.3  # decisions that get a reward
REWARD_DELAY_S = (0.2, 3.0)  # how late it comes
CLICK_RATE = 0.1
HAS_PACING = hasattr(pb_grpc.DecisionServiceServicer, "PaceBid")  # the contract has pacing
NAME_KEY = "locust-name"  # call metadata: the name the call is reported under


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Fires one Locust ``request`` event per unary call (Locust's gRPC pattern)."""

    def __init__(self, environment) -> None:
        self.env = environment

    def intercept_unary_unary(self, continuation, client_call_details, request):
        name = client_call_details.method.rsplit("/", 1)[-1]
        for key, value in client_call_details.metadata or ():
            if key == NAME_KEY:
                name = value
        start = time.perf_counter()
        exception = None
        length = 0
        response = continuation(client_call_details, request)
        try:
            length = response.result().ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.env.events.request.fire(
            request_type="grpc", name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length, response=response, context=None, exception=exception,
        )
        return response  # the stub re-raises a failure to the task, which moves on


def _named(name: str) -> tuple[tuple[str, str], ...]:
    return ((NAME_KEY, name),)


def setup_experiments(host: str) -> bool:
    """Create the load test's experiments (and campaign) unless they exist; True if pacing
    is available. Called once per Locust process when a test starts."""
    with grpc.insecure_channel(host) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        experiments = [
            pb.Experiment(experiment_id=THOMPSON_ID, arms=[pb.Arm(arm_id=a) for a in CREATIVES],
                          policy=pb.Policy(thompson=pb.Policy.Thompson()),
                          reward_type=pb.REWARD_TYPE_BINARY, exploration_floor=0.01),
            pb.Experiment(experiment_id=CONTEXTUAL_ID, arms=[pb.Arm(arm_id=a) for a in OFFERS],
                          policy=pb.Policy(lin_ucb=pb.Policy.LinUcb(alpha=0.5)),
                          reward_type=pb.REWARD_TYPE_CONTINUOUS, context_dim=CONTEXT_DIM),
        ]
        for experiment in experiments:
            try:
                stub.CreateExperiment(pb.CreateExperimentRequest(experiment=experiment),
                                      timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
        if not HAS_PACING:
            return False
        try:
            campaign = pb.Campaign(campaign_id=CAMPAIGN_ID, daily_budget=1_000_000.0,
                                   max_bid=5.0)
            stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign), timeout=30)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                print(f"locustfile: pacing disabled, CreateCampaign failed: {exc.details()}")
                return False
        except (AttributeError, TypeError, ValueError) as exc:  # a different pacing contract
            print(f"locustfile: pacing disabled ({exc})")
            return False
        return True


_state = {"pacing": False}


@events.test_start.add_listener
def _on_test_start(environment, **kwargs) -> None:
    if environment.host:
        _state["pacing"] = setup_experiments(environment.host)


class AdServerUser(User):
    """One ad-server connection: decisions on the hot path, late rewards, paced bids."""

    wait_time = constant(0)  # closed loop: the next request as soon as the last one answered

    def __init__(self, environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise StopUser("set --host HOST:PORT of a banditd server")
        channel = grpc.insecure_channel(self.host)
        self.channel = grpc.intercept_channel(channel, LocustInterceptor(environment))
        self.stub = pb_grpc.DecisionServiceStub(self.channel)
        self.rng = random.Random()
        self.pending: deque[tuple[float, pb.RecordRewardRequest]] = deque()  # (due, reward)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, rpc, request, name: str):
        """One call; a failure was already reported by the interceptor."""
        try:
            return rpc(request, timeout=10, metadata=_named(name))
        except grpc.RpcError:
            return None

    def _decided(self, experiment_id: str, response, reward: float) -> None:
        if response is not None and self.rng.random() < REWARD_FRACTION:
            due = time.monotonic() + self.rng.uniform(*REWARD_DELAY_S)
            self.pending.append((due, pb.RecordRewardRequest(
                experiment_id=experiment_id, decision_id=response.decision_id, reward=reward)))
        self._send_due_rewards()

    def _send_due_rewards(self) -> None:
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            _, request = self.pending.popleft()
            self._call(self.stub.RecordReward, request, "RecordReward")

    @task(6)
    def select_creative(self) -> None:
        eligible = self.rng.sample(CREATIVES, self.rng.randint(5, len(CREATIVES)))
        response = self._call(self.stub.SelectArm, pb.SelectArmRequest(
            experiment_id=THOMPSON_ID, eligible_arm_ids=eligible), "SelectArm [eligible subset]")
        self._decided(THOMPSON_ID, response, float(self.rng.random() < CLICK_RATE))

    @task(1)
    def select_slate(self) -> None:
        response = self._call(self.stub.SelectArm, pb.SelectArmRequest(
            experiment_id=THOMPSON_ID, num_arms=3), "SelectArm [slate of 3]")
        self._decided(THOMPSON_ID, response, float(self.rng.random() < CLICK_RATE))

    @task(3)
    def select_offer(self) -> None:
        context = [self.rng.uniform(-1.0, 1.0) for _ in range(CONTEXT_DIM)]
        response = self._call(self.stub.SelectArm, pb.SelectArmRequest(
            experiment_id=CONTEXTUAL_ID, context=context), "SelectArm [LinUCB context]")
        revenue = round(self.rng.expovariate(1 / 20.0), 2) if self.rng.random() < 0.05 else 0.0
        self._decided(CONTEXTUAL_ID, response, revenue)

    @task(3)
    def paced_bid(self) -> None:
        if not _state["pacing"]:
            self._send_due_rewards()
            return
        reply = self._call(self.stub.PaceBid, pb.PaceBidRequest(  # type: ignore[attr-defined]
            campaign_id=CAMPAIGN_ID, base_bid=round(self.rng.uniform(0.2, 3.0), 2)), "PaceBid")
        if reply is not None and reply.bid > 0:
            won = self.rng.random() < 0.3
            self._call(self.stub.RecordSpend, pb.RecordSpendRequest(  # type: ignore[attr-defined]
                campaign_id=CAMPAIGN_ID, bid_id=reply.bid_id, won=won,
                cost=round(reply.bid * self.rng.uniform(0.5, 1.0), 4) if won else 0.0),
                "RecordSpend")
        self._send_due_rewards()
