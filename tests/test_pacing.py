"""Pacing: campaigns, PaceBid / RecordSpend, reservations, the plan and the controller."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from banditd.server.ads.pacing import HOURS, _Day, learn_plan
from helpers import ROOT, running_server

DAY0 = datetime(2026, 6, 1, tzinfo=timezone.utc).timestamp()  # a UTC midnight


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(round(seconds * 1e9)))
    return t


def campaign(stub, cid: str, **kw) -> pb.Campaign:
    fields = dict(campaign_id=cid, daily_budget=100.0, max_bid=5.0)
    fields.update(kw)
    return stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(**fields)))


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


# -- plan and day arithmetic (pure) ---------------------------------------------------------
def test_day_spreads_the_plan_over_dst_days():
    zone = ZoneInfo("America/New_York")
    even = np.full(HOURS, 1 / HOURS)
    short, normal, long_ = (_Day(date(2026, 3, 8), zone, even), _Day(date(2026, 3, 9), zone, even),
                            _Day(date(2026, 11, 1), zone, even))
    assert (len(short.starts), len(normal.starts), len(long_.starts)) == (23, 24, 25)
    for day in (short, normal, long_):
        assert day.end - day.start == len(day.starts) * 3600
        assert day.fraction(day.start) == 0 and day.fraction(day.end) == 1
        fractions = [day.fraction(t) for t in np.linspace(day.start, day.end, 500)]
        assert np.all(np.diff(fractions) >= 0)
        assert day.cum[-1] == pytest.approx(1.0)
    # on the 25-hour day the repeated 1 am hour shares its slot's plan
    assert long_.slots.count(1) == 2 and long_.weights[1] == pytest.approx(long_.weights[0] / 2)


def test_learned_plan_follows_traffic_and_conversions_within_the_daily_shift():
    plan = np.full(HOURS, 1 / HOURS)
    history = np.zeros((HOURS, 3))
    history[:, 0] = 100  # even traffic
    history[:, 1] = 1e6  # even spend
    history[:, 2] = 10
    history[18:22, 2] = 40  # the evening converts 4x better
    new = learn_plan(plan, history, max_shift=0.25)
    assert new.sum() == pytest.approx(1.0)
    assert np.all(new[18:22] > plan[18:22]) and np.all(new[:18] < plan[:18])
    # bounded: a single (extreme) day moves no share by more than 25%
    assert np.all(new <= plan * 1.25 + 1e-12) and np.all(new >= plan * 0.75 - 1e-12)
    # repeated days converge towards the target: the evening keeps gaining
    p = plan
    for _ in range(10):
        p = learn_plan(p, history, 0.25)
    assert p[18:22].sum() > new[18:22].sum() > plan[18:22].sum()



def test_hours_without_traffic_stay_within_the_daily_shift():
    # Traffic only at night: the night hours reach +25% and the rest of the budget goes to
    # the hours without traffic, each still within 25% of its own share.
    plan = np.full(HOURS, 1.5)
    plan[:6] = 2.0  # the night already has a larger share
    plan[6:12] = 0.5  # the morning a small one
    plan /= plan.sum()
    history = np.zeros((HOURS, 3))
    history[:6, 0] = 100
    new = learn_plan(plan, history, max_shift=0.25)
    assert new.sum() == pytest.approx(1.0)
    assert np.all(new <= plan * 1.25 + 1e-12) and np.all(new >= plan * 0.75 - 1e-12)
    assert np.allclose(new[:6], plan[:6] * 1.25)
    assert np.allclose(new[6:12], plan[6:12] * 1.25)  # what the rest of the day cannot take

# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    (dict(daily_budget=-1), "daily_budget"),
    (dict(daily_budget=float("nan")), "daily_budget"),
    (dict(max_bid=0), "max_bid"),
    (dict(bid_cap_fraction=0), "bid_cap_fraction"),
    (dict(bid_cap_fraction=1.5), "bid_cap_fraction"),
    (dict(time_zone="Mars/Olympus"), "time_zone"),
    (dict(pacing_mode=42), "pacing_mode"),
    (dict(reservation_ttl_seconds=0), "reservation_ttl_seconds"),
    (dict(campaign_id=""), "campaign_id"),
])
def test_bad_campaigns_are_rejected_and_not_created(stub, new_id, fields, message):
    cid = new_id()
    code, details = code_of(lambda: campaign(stub, cid, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    if cid and "campaign_id" not in fields:
        code, _ = code_of(lambda: stub.GetPacingStatus(
            pb.GetPacingStatusRequest(campaign_id=cid)))
        assert code == grpc.StatusCode.NOT_FOUND


def test_defaults_duplicates_and_field_mask_updates(stub, new_id):
    cid = new_id()
    c = campaign(stub, cid)
    assert (c.bid_cap_fraction, c.time_zone, c.pacing_mode, c.reservation_ttl_seconds) == \
        (pytest.approx(0.10), "UTC", pb.PACING_MODE_SMOOTH, 60.0)
    code, _ = code_of(lambda: campaign(stub, cid))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    paused = stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid, paused=True, daily_budget=1.0),
        update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
    assert paused.paused and paused.daily_budget == 100.0  # only the masked field changed
    for paths, text in ((["campaign_id"], "cannot change"), (["budget"], "unknown field")):
        code, details = code_of(lambda paths=paths: stub.UpdateCampaign(pb.UpdateCampaignRequest(
            campaign=pb.Campaign(campaign_id=cid), update_mask=field_mask_pb2.FieldMask(
                paths=paths))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text in details
    # no mask = replace the whole campaign (defaults filled in again)
    replaced = stub.UpdateCampaign(pb.UpdateCampaignRequest(campaign=pb.Campaign(
        campaign_id=cid, daily_budget=50, max_bid=2, time_zone="Europe/Berlin")))
    assert (replaced.paused, replaced.daily_budget, replaced.time_zone,
            replaced.bid_cap_fraction) == (False, 50, "Europe/Berlin", pytest.approx(0.1))
    code, _ = code_of(lambda: stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=new_id(), daily_budget=1, max_bid=1))))
    assert code == grpc.StatusCode.NOT_FOUND


# -- bids -----------------------------------------------------------------------------------
def pace(stub, cid, base, t):
    return stub.PaceBid(pb.PaceBidRequest(campaign_id=cid, base_bid=base, event_time=ts(t)))


def spend(stub, cid, bid_id, won, cost, t, conversions=0.0):
    return stub.RecordSpend(pb.RecordSpendRequest(
        campaign_id=cid, bid_id=bid_id, won=won, cost=cost, event_time=ts(t),
        conversions=conversions))


def status(stub, cid, t):
    return stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id=cid, event_time=ts(t)))


def test_bid_caps_reservations_and_settlement(stub, new_id):
    cid = new_id()
    campaign(stub, cid, daily_budget=240.0, max_bid=0.8, pacing_mode=pb.PACING_MODE_ASAP)
    t = DAY0 + 3600 * 5
    # even plan: the hour's allocation is 10, the per-bid cap 10% of it = 1.0; max_bid 0.8
    r = pace(stub, cid, 3.0, t)
    assert (r.bid, r.reason, r.pacing_multiplier) == (pytest.approx(0.8), "capped", 1.0)
    r2 = pace(stub, cid, 0.5, t)
    assert (r2.bid, r2.reason) == (pytest.approx(0.5), "paced") and r2.bid_id != r.bid_id
    s = status(stub, cid, t)
    assert (s.spent, s.reserved, s.open_reservations, s.day) == (0, pytest.approx(1.3), 2,
                                                                  "2026-06-01")
    # a win charges the clearing cost; a cost above the bid is capped at the bid
    assert spend(stub, cid, r.bid_id, True, 0.3, t + 1).charged == pytest.approx(0.3)
    capped = spend(stub, cid, r2.bid_id, True, 0.9, t + 1)
    assert capped.capped and capped.charged == pytest.approx(0.5)
    again = spend(stub, cid, r2.bid_id, True, 0.9, t + 2)
    assert again.duplicate and again.charged == 0
    s = status(stub, cid, t + 2)
    assert (s.spent, s.reserved, s.remaining) == (pytest.approx(0.8), 0, pytest.approx(239.2))
    code, details = code_of(lambda: spend(stub, cid, "no-such-bid", True, 1, t))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-bid" in details
    for bad in (dict(cost=-1.0), dict(cost=float("inf")), dict(conversions=-2.0)):
        r3 = pace(stub, cid, 0.5, t + 3)
        fields = dict(campaign_id=cid, bid_id=r3.bid_id, won=True, cost=0.1,
                      event_time=ts(t + 3))
        fields.update(bad)
        code, _ = code_of(lambda fields=fields: stub.RecordSpend(pb.RecordSpendRequest(**fields)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert not spend(stub, cid, r3.bid_id, False, 0, t + 3).duplicate  # still open: a loss
    code, _ = code_of(lambda: pace(stub, cid, -1, t))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert pace(stub, cid, 0.0, t).reason == "zero_base_bid"


def test_pause_is_an_emergency_stop(stub, new_id):
    cid = new_id()
    campaign(stub, cid)
    t = DAY0 + 3600
    assert pace(stub, cid, 1.0, t).bid > 0
    stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid, paused=True),
        update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
    r = pace(stub, cid, 1.0, t + 1)
    assert (r.bid, r.reason, r.bid_id) == (0, "paused", "")
    stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid, paused=False),
        update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
    assert pace(stub, cid, 1.0, t + 2).bid > 0


def test_reservations_expire_and_late_wins_are_refused(stub, new_id):
    cid = new_id()
    campaign(stub, cid, daily_budget=2.4, max_bid=1.0, bid_cap_fraction=1.0,
             reservation_ttl_seconds=30, pacing_mode=pb.PACING_MODE_ASAP)
    t = DAY0 + 7200
    bids = [pace(stub, cid, 1.0, t) for _ in range(25)]  # per-bid cap: the hour's 0.1
    assert [b.bid for b in bids] == [pytest.approx(0.1)] * 24 + [0]
    assert bids[-1].reason == "budget_reserved"  # the whole budget is held by open bids
    assert status(stub, cid, t + 29).reserved == pytest.approx(2.4)
    assert status(stub, cid, t + 31).reserved == 0  # expired: the money is free again
    assert pace(stub, cid, 1.0, t + 31).bid == pytest.approx(0.1)
    code, details = code_of(lambda: spend(stub, cid, bids[0].bid_id, True, 0.5, t + 32))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "expired" in details
    assert status(stub, cid, t + 32).spent == 0


def test_spend_settled_after_midnight_counts_for_the_bid_day(stub, new_id):
    cid = new_id()
    campaign(stub, cid, daily_budget=48.0, max_bid=1.0, time_zone="Asia/Tokyo",
             pacing_mode=pb.PACING_MODE_ASAP)
    tokyo_midnight = datetime(2026, 6, 2, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    r = pace(stub, cid, 1.0, tokyo_midnight - 5)
    assert status(stub, cid, tokyo_midnight - 5).day == "2026-06-01"
    spend(stub, cid, r.bid_id, True, 0.2, tokyo_midnight + 5)
    today = status(stub, cid, tokyo_midnight + 6)
    assert (today.day, today.spent) == ("2026-06-02", 0)
    yesterday = status(stub, cid, tokyo_midnight - 1)
    assert (yesterday.day, yesterday.spent) == ("2026-06-01", pytest.approx(0.2))


def test_never_overspends_under_concurrent_bids(server, new_id):
    """64 concurrent clients bid and win near the end of a small budget; a watcher reads
    the status throughout: spent + reserved never exceeds the budget, and ends exactly at
    the sum of charged costs."""
    cid = new_id()
    budget = 50.0
    t0 = DAY0 + 3600 * 12

    async def main():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
                campaign_id=cid, daily_budget=budget, max_bid=1.0, bid_cap_fraction=1.0,
                pacing_mode=pb.PACING_MODE_ASAP)))
            charged: list[float] = []
            seen: list[tuple[float, float]] = []
            done = asyncio.Event()

            async def bidder(seed: int) -> None:
                rng = random.Random(seed)
                for i in range(60):
                    r = await stub.PaceBid(pb.PaceBidRequest(
                        campaign_id=cid, base_bid=rng.uniform(0.2, 1.0), event_time=ts(t0 + i)))
                    if not r.bid:
                        continue
                    await asyncio.sleep(rng.uniform(0, 0.003))  # auctions in flight
                    won = rng.random() < 0.8
                    cost = r.bid * rng.uniform(0.5, 1.3)  # sometimes reported above the bid
                    s = await stub.RecordSpend(pb.RecordSpendRequest(
                        campaign_id=cid, bid_id=r.bid_id, won=won, cost=cost,
                        event_time=ts(t0 + i)))
                    charged.append(s.charged)

            async def watcher() -> None:
                while not done.is_set():
                    s = await stub.GetPacingStatus(pb.GetPacingStatusRequest(
                        campaign_id=cid, event_time=ts(t0)))
                    seen.append((s.spent, s.reserved))

            watch = asyncio.create_task(watcher())
            await asyncio.gather(*(bidder(i) for i in range(64)))
            done.set()
            await watch
            final = await stub.GetPacingStatus(pb.GetPacingStatusRequest(
                campaign_id=cid, event_time=ts(t0 + 60)))
            return charged, seen, final

    charged, seen, final = asyncio.run(main())
    assert len(seen) > 10
    assert all(round(s + r, 6) <= budget for s, r in seen)
    assert final.reserved == 0 and final.spent <= budget
    assert final.spent == pytest.approx(sum(charged), abs=1e-6)
    assert final.spent > 0.95 * budget  # the budget was the constraint


def test_campaigns_survive_crash_and_restart(tmp_path):
    t = DAY0 + 3600 * 9
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            campaign(stub, "c1", daily_budget=240.0, max_bid=1.0, time_zone="Europe/Paris")
            open_bid = pace(stub, "c1", 1.0, t)
            settled = pace(stub, "c1", 1.0, t)
            spend(stub, "c1", settled.bid_id, True, 0.25, t)
            before = status(stub, "c1", t)
        srv.crash()
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        after = status(stub, "c1", t)
        assert (after.spent, after.reserved, after.campaign.time_zone) == (
            before.spent, before.reserved, "Europe/Paris")
        assert spend(stub, "c1", settled.bid_id, True, 0.25, t).duplicate
        assert spend(stub, "c1", open_bid.bid_id, True, 0.5, t).charged == 0.5
    # graceful restart: the snapshot holds the same
    with running_server(tmp_path, durability="os", snapshot_interval_seconds=0) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        s = status(pb_grpc.DecisionServiceStub(ch), "c1", t)
        assert (s.spent, s.reserved) == (pytest.approx(0.75), 0)


def test_python_client_pacing_methods(server, new_id):
    from banditd.clients import BanditClient

    cid = new_id()
    t = DAY0 + 3600 * 10
    with BanditClient(f"127.0.0.1:{server.port}") as client:
        c = client.create_campaign(cid, 240.0, 2.0, time_zone="Europe/London",
                                   pacing_mode="even")
        assert (c.pacing_mode, c.time_zone) == (pb.PACING_MODE_EVEN, "Europe/London")
        bid = client.pace_bid(cid, 1.0, event_time=t)
        assert bid.bid == pytest.approx(1.0) and bid.bid_id
        assert client.record_spend(cid, bid.bid_id, True, 0.4, event_time=t).charged == 0.4
        assert client.update_campaign(cid, paused=True).paused
        assert client.pace_bid(cid, 1.0, event_time=t).reason == "paused"
        s = client.get_pacing_status(cid, event_time=t)
        assert (s.spent, s.utilization) == (pytest.approx(0.4), pytest.approx(0.4 / 240))


# -- hourly weights, seeds, reason codes ---------------------------------------------------
EVENING = [0.2 + math.exp(-0.5 * ((h - 20) / 2.5) ** 2) for h in range(HOURS)]


@pytest.mark.parametrize("weights, message", [
    ([1.0] * 23, "hourly_weights has 23 values, expected 24"),
    ([1.0] * 25, "hourly_weights has 25 values"),
    ([1.0] * 23 + [float("nan")], "hourly_weights[23] must be finite"),
    ([1.0] * 5 + [float("inf")] + [1.0] * 18, "hourly_weights[5] must be finite"),
    ([1.0] * 3 + [-0.5] + [1.0] * 20, "hourly_weights[3] must be finite and >= 0"),
    ([0.0] * 24, "hourly_weights are all 0"),
])
def test_bad_hourly_weights_are_rejected(stub, new_id, weights, message):
    cid = new_id()
    code, details = code_of(lambda: campaign(stub, cid, hourly_weights=weights))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    code, _ = code_of(lambda: stub.GetPacingStatus(pb.GetPacingStatusRequest(campaign_id=cid)))
    assert code == grpc.StatusCode.NOT_FOUND
    good = new_id()
    campaign(stub, good)
    code, details = code_of(lambda: stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=good, hourly_weights=weights),
        update_mask=field_mask_pb2.FieldMask(paths=["hourly_weights"]))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert status(stub, good, DAY0 + 60).hourly_plan == pytest.approx([1 / 24] * 24)


def test_hourly_weights_are_the_first_plan(stub, new_id):
    """Day one follows the given traffic shape (SMOOTH learns from there, EVEN keeps it);
    without weights the plan is even; new weights restart the plan from them."""
    shares = np.array(EVENING) / sum(EVENING)
    for mode in (pb.PACING_MODE_SMOOTH, pb.PACING_MODE_EVEN):
        cid = new_id()
        c = campaign(stub, cid, daily_budget=240.0, hourly_weights=EVENING, pacing_mode=mode)
        assert list(c.hourly_weights) == pytest.approx(EVENING)
        s = status(stub, cid, DAY0 + 3600 * 10.5)
        assert s.hourly_plan == pytest.approx(shares.tolist())
        assert s.planned_spend == pytest.approx(240 * (shares[:10].sum() + shares[10] / 2))
        # the per-bid cap follows the hour's planned spend: 10% of it
        r = pace(stub, cid, 100.0, DAY0 + 3600 * 3)
        assert (r.reason, r.bid) == ("capped", pytest.approx(0.1 * 240 * shares[3], abs=1e-6))
    stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid, hourly_weights=[1.0] * 12 + [3.0] * 12),
        update_mask=field_mask_pb2.FieldMask(paths=["hourly_weights"])))
    assert status(stub, cid, DAY0 + 3600 * 11).hourly_plan == pytest.approx(
        [1 / 48] * 12 + [3 / 48] * 12)
    stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid),
        update_mask=field_mask_pb2.FieldMask(paths=["hourly_weights"])))  # cleared: even
    assert status(stub, cid, DAY0 + 3600 * 12).hourly_plan == pytest.approx([1 / 24] * 24)


def test_campaign_seed_is_random_when_unset_and_reported(stub, new_id):
    seeds = {campaign(stub, new_id()).seed for _ in range(3)}
    assert len(seeds) == 3 and 0 not in seeds
    assert campaign(stub, new_id(), seed=0).seed == 0  # explicit 0 is a seed, not "unset"
    cid = new_id()
    campaign(stub, cid, seed=42)
    updated = stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid, paused=True),
        update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
    assert updated.seed == 42


REASONS = {"paced": pb.PACE_REASON_PACED, "throttled": pb.PACE_REASON_THROTTLED,
           "paused": pb.PACE_REASON_PAUSED, "budget_exhausted": pb.PACE_REASON_BUDGET_EXHAUSTED,
           "budget_reserved": pb.PACE_REASON_BUDGET_RESERVED, "capped": pb.PACE_REASON_CAPPED,
           "zero_base_bid": pb.PACE_REASON_ZERO_BASE_BID,
           "slowing_down": pb.PACE_REASON_SLOWING_DOWN}


def test_reason_code_says_what_reason_says(stub, new_id):
    cid = new_id()
    campaign(stub, cid, daily_budget=2.4, max_bid=1.0, bid_cap_fraction=1.0,
             pacing_mode=pb.PACING_MODE_ASAP, reservation_ttl_seconds=30)
    t = DAY0 + 3600
    answers = [pace(stub, cid, 0.05, t), pace(stub, cid, 0.0, t)]
    answers += [pace(stub, cid, 1.0, t) for _ in range(25)]  # capped at 0.1, then reserved
    spend(stub, cid, answers[3].bid_id, True, 0.1, t)
    answers.append(pace(stub, cid, 1.0, t + 31))  # the rest expired: bids again
    stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=pb.Campaign(campaign_id=cid, paused=True),
        update_mask=field_mask_pb2.FieldMask(paths=["paused"])))
    answers.append(pace(stub, cid, 1.0, t + 32))
    seen = {a.reason for a in answers}
    assert seen == {"paced", "zero_base_bid", "capped", "budget_reserved", "paused"}
    for a in answers:
        assert a.reason_code == REASONS[a.reason], a
        assert a.participation_rate == 1.0


# -- throttling and reaction time (seeded markets, event time) ------------------------------
def market(rng: np.random.Generator, start: float, end: float, per_minute: float,
           ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Auctions of a Poisson stream between start and end: times, base bids (ratio x the
    median clearing price, +-20%) and lognormal clearing prices (median 1)."""
    n = rng.poisson(per_minute * (end - start) / 60)
    times = np.sort(rng.uniform(start, end, n))
    return times, ratio * rng.uniform(0.8, 1.2, n), rng.lognormal(0.0, 0.5, n)


def drive(stub, cid: str, times, base, price) -> dict:
    """Per auction: PaceBid at its time, RecordSpend of the outcome half a second later (second
    price: a win costs the clearing price). The answers and the charged spend, per auction."""
    out = {"multiplier": [], "participation": [], "reason": [], "bid": [], "charged": []}
    for t, b, p in zip(times, base, price, strict=True):
        r = pace(stub, cid, float(b), float(t))
        charged = 0.0
        if r.bid > 0:
            charged = spend(stub, cid, r.bid_id, bool(p <= r.bid), float(p), t + 0.5).charged
        out["multiplier"].append(r.pacing_multiplier)
        out["participation"].append(r.participation_rate)
        out["reason"].append(r.reason_code)
        out["bid"].append(r.bid)
        out["charged"].append(charged)
    return {k: np.array(v) for k, v in out.items()}


def deviation(times, charged, plan, budget: float, start: float, end: float,
              step: float = 60.0) -> np.ndarray:
    """(cumulative spend - planned spend) / budget every ``step`` seconds from start to end."""
    grid = np.arange(start, end + 1, step)
    cum = np.concatenate([[0.0], np.cumsum(charged)])[np.searchsorted(times, grid, "right")]
    hours = (grid - DAY0) / 3600
    h = np.minimum(hours.astype(int), 23)
    fraction = np.concatenate([[0.0], np.cumsum(plan)])[h] + np.asarray(plan)[h] * (hours - h)
    return (cum - budget * fraction) / budget


def test_throttles_when_bids_are_far_above_prices(stub, new_id):
    """Base bids 40x the clearing prices and 20x the traffic the budget needs: the multiplier
    goes to its floor and the campaign then bids in a fraction of auctions (reason
    throttled), bringing spend to the plan; the same seed and requests give the same bids."""
    rng = np.random.default_rng(31)
    times, base, price = market(rng, DAY0 + 6 * 3600, DAY0 + 9 * 3600, 40, 40.0)
    # at the base bid every auction is won: 40 a minute x ~1.13 = ~2,700 an hour; the plan
    # spends a 20th of that from 6:00 to 9:00 (at the multiplier's floor, 0.8 x the median
    # price, bids still spend about a 6th)
    weights = [0.0] * 6 + [1.0] * 3 + [0.0] * 15
    budget = round(3 * 40 * 60 * 1.13 / 20, 2)
    seed = 20260601
    cid, twin, other = new_id(), new_id(), new_id()
    for c, s in ((cid, seed), (twin, seed), (other, seed + 1)):
        campaign(stub, c, daily_budget=budget, max_bid=100.0, seed=s, hourly_weights=weights)
    a = drive(stub, cid, times, base, price)
    floor = 0.02
    throttled = a["reason"] == pb.PACE_REASON_THROTTLED
    assert throttled.sum() > len(times) / 2  # most auctions are skipped
    assert np.all(a["bid"][throttled] == 0)
    assert np.all(a["participation"] > 0) and np.all(a["participation"] <= 1)
    assert np.all(a["multiplier"][a["participation"] < 1] == pytest.approx(floor))
    assert 0.1 < a["participation"][-1000:].mean() < 0.5
    plan = np.array(weights) / sum(weights)
    dev = deviation(times, a["charged"], plan, budget, DAY0 + 6 * 3600, DAY0 + 9 * 3600)
    # the first minutes at multiplier 1 (a first day) spend ~20x the plan; then the plan
    assert np.abs(dev).max() < 0.08 and np.abs(dev[60:]).max() < 0.04
    assert a["charged"].sum() >= 0.98 * budget
    # the same seed and requests: the same coins; another seed: other auctions skipped (the
    # first hour of the same auctions, throttled after its first minutes, shows both)
    n = int(np.searchsorted(times, DAY0 + 7 * 3600))
    b = drive(stub, twin, times[:n], base[:n], price[:n])
    for key in ("bid", "reason", "multiplier", "participation"):
        assert np.array_equal(a[key][:n], b[key]), key
    c = drive(stub, other, times[:n], base[:n], price[:n])
    assert (c["reason"] == pb.PACE_REASON_THROTTLED).sum() > n / 2
    assert not np.array_equal(c["reason"] == pb.PACE_REASON_THROTTLED, throttled[:n])


def test_throttling_coins_replay_after_a_crash(tmp_path):
    """A campaign that throttles, interrupted by a crash half way (restored from its log),
    answers exactly as the same campaign run without interruption."""
    rng = np.random.default_rng(7)
    times, base, price = market(rng, DAY0 + 3600, DAY0 + 2 * 3600, 30, 40.0)
    config = dict(daily_budget=400.0, max_bid=100.0, seed=99)
    with running_server(tmp_path / "whole") as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        stub = pb_grpc.DecisionServiceStub(ch)
        campaign(stub, "c", **config)
        whole = drive(stub, "c", times, base, price)
    assert (whole["reason"] == pb.PACE_REASON_THROTTLED).sum() > 100
    half = len(times) // 2
    while whole["bid"][half - 1] <= 0:  # end the first run on a settlement (waited for)
        half += 1
    parts = []
    with running_server(tmp_path / "crashed", snapshot_interval_seconds=0) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            campaign(stub, "c", **config)
            parts.append(drive(stub, "c", times[:half], base[:half], price[:half]))
        srv.crash()
    with running_server(tmp_path / "crashed", snapshot_interval_seconds=0) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        parts.append(drive(pb_grpc.DecisionServiceStub(ch), "c", times[half:], base[half:],
                           price[half:]))
    for key in ("bid", "reason", "multiplier", "participation", "charged"):
        assert np.array_equal(np.concatenate([p[key] for p in parts]), whole[key]), key


def test_reacts_within_minutes_to_thin_night_traffic(stub, new_id):
    """A few bids a minute at night, bid far above the prices, from midnight of the first
    day (no history): the controller's first step comes within 3 minutes of event time, the
    pace level is down to a third within 10 minutes, and spend stays within 1% of the budget
    of the plan all night."""
    rng = np.random.default_rng(5)
    start, end = DAY0, DAY0 + 6 * 3600
    times, base, price = market(rng, start, end, 3, 10.0)
    shares = np.array(EVENING) / sum(EVENING)
    # at the base bid the night would spend ~4x its plan
    night_potential = 3 * 60 * 6 * 1.13
    budget = round(night_potential / (4 * shares[:6].sum()), 2)
    cid = new_id()
    campaign(stub, cid, daily_budget=budget, max_bid=100.0, seed=3, hourly_weights=EVENING)
    r = drive(stub, cid, times, base, price)
    level = r["multiplier"] * r["participation"]
    first_step = times[np.argmax(level < 1)]
    assert first_step - start <= 3 * 60
    assert level[np.searchsorted(times, start + 10 * 60)] < 1 / 3
    dev = deviation(times, r["charged"], shares, budget, start, end)
    assert np.abs(dev).max() < 0.01
    assert abs(dev[-1]) < 0.005  # by 6:00 on the plan: the night's share spent
    assert 0.95 < r["charged"].sum() / (budget * shares[:6].sum()) < 1.05


def test_reacts_within_minutes_to_a_5x_traffic_jump(stub, new_id):
    """Traffic jumps 5x at 10:30 and falls back at 12:00. Within 10 minutes of each change
    the pace level has moved the right way (its median over the next 10 minutes by at least
    1.5x), cumulative spend never strays from the plan by more than 3% of the budget and the
    budget is spent by 13:00."""
    rng = np.random.default_rng(11)
    pieces = [market(rng, DAY0 + a * 3600, DAY0 + b * 3600, rate, 3.0)
              for a, b, rate in ((9, 10.5, 10), (10.5, 12, 50), (12, 13, 10))]
    times, base, price = (np.concatenate(x) for x in zip(*pieces, strict=True))
    weights = [0.0] * 9 + [1.0] * 4 + [0.0] * 11  # the plan: 25% an hour from 9:00 to 13:00
    budget = 1000.0  # ~40% of the 10-a-minute traffic at the base bid
    cid = new_id()
    campaign(stub, cid, daily_budget=budget, max_bid=100.0, seed=4, hourly_weights=weights)
    r = drive(stub, cid, times, base, price)
    level = r["multiplier"] * r["participation"]

    def median_level(hour: float, minutes: float) -> float:
        """The median pace level over ``minutes`` from ``hour`` (negative: up to it)."""
        a, b = sorted((DAY0 + hour * 3600, DAY0 + hour * 3600 + minutes * 60))
        return float(np.median(level[(times >= a) & (times < b)]))

    assert median_level(10.5 + 10 / 60, 10) < median_level(10.5, -10) / 1.5  # slowed down
    assert median_level(12 + 10 / 60, 10) > 1.5 * median_level(12, -10)  # sped up again
    plan = np.array(weights) / sum(weights)
    dev = deviation(times, r["charged"], plan, budget, DAY0 + 9 * 3600, DAY0 + 13 * 3600)
    assert np.abs(dev).max() < 0.03
    assert r["charged"].sum() >= 0.98 * budget


@pytest.mark.slow
def test_pacing_simulator_smoke(tmp_path):
    """benchmarks/pacing_sim.py against a real server for a few days: never overspends,
    delivers the budget on days whose traffic allows it, writes its JSON and plot."""
    import json
    import subprocess
    import sys

    out = tmp_path / "pacing.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pacing_sim", "--days", "4",
                           "--auctions", "1500", "--learned-after", "2", "--out", str(out)],
                          cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    banditd = report["all_days"]["banditd"]
    assert banditd["overspend_total"] == 0 and banditd["days_with_overspend"] == 0
    assert banditd["days_allowing_full_delivery"] >= 2
    assert banditd["min_utilization_allowed_days"] >= 0.95
    for day in report["per_day"]:
        assert day["banditd"]["spent"] <= report["setup"]["daily_budget"] + 1e-6
    # the plot: a PNG of the 9 x 5 in figure at 110 dpi, where the report says it is
    assert report["plot"] == str(tmp_path / "pacing.png")
    png = (tmp_path / "pacing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    size = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
    assert size == (990, 550)
