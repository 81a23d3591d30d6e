"""Pacing simulator: days of auctions against a real banditd, against ASAP and even throttling.

Each simulated day has a diurnal traffic curve scaled by a random factor between 0.5x and
3x the forecast, lognormal clearing prices (second price: a win costs the clearing price),
and a conversion rate that varies by hour. Three bidders see the same auctions:

* **banditd**: ``PaceBid`` per auction (PACING_MODE_SMOOTH: learned hourly plan +
  controller) against a ``banditd serve`` subprocess on 127.0.0.1, ``RecordSpend`` with
  the outcome and conversions; the day's money is read back with ``GetPacingStatus``.
* **ASAP** (no pacing): bids the base bid on every auction until the budget is spent.
* **even throttling**: bids the base bid on a random fraction p of auctions, p adjusted
  every 5 minutes so cumulative spend follows a straight line over the day.

Per day: spend, overspend, utilisation, conversions, conversions per cost, and the RMS
deviation of cumulative spend from the strategy's own plan (sampled every 5 minutes).
A day "allows" full delivery when bidding the base bid on every auction would have spent
at least the budget. Writes a JSON of metrics and a PNG of planned vs actual cumulative
spend for a sample day.

    python -m benchmarks.pacing_sim [--days 100] [--auctions 4000] [--out ...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from banditd.decision.v1 import decision_pb2 as pb
from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from benchmarks.local_server import LocalServer as Server
from benchmarks.local_server import machine

DAY = 86_400.0
START = datetime(2026, 1, 5, tzinfo=timezone.utc).timestamp()  # a Monday, UTC midnight
HOUR = np.arange(24)
# Share of a day's auctions per hour: quiet nights, a lunch bump, a busy evening.
TRAFFIC = 0.25 + np.exp(-0.5 * ((HOUR - 13) / 3.0) ** 2) + 1.4 * np.exp(
    -0.5 * ((HOUR - 20) / 2.0) ** 2)
TRAFFIC /= TRAFFIC.sum()
# Conversion rate per won impression by hour: mornings convert best, late evening worst.
CVR = 0.02 * (1.0 + 0.6 * np.cos(2 * np.pi * (HOUR - 9) / 24))
BASE_BID = 1.0
PRICE_MU, PRICE_SIGMA = math.log(0.55), 0.45
SAMPLE = 300.0  # seconds between cumulative-spend samples


def ts(seconds: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


class Day:
    """One day's auctions (times, base bids, clearing prices, conversion draws)."""

    def __init__(self, index: int, forecast: int, rng: np.random.Generator,
                 factor: float | None = None) -> None:
        self.index = index
        self.start = START + index * DAY
        self.factor = float(rng.uniform(0.5, 3.0)) if factor is None else factor
        counts = rng.poisson(forecast * self.factor * TRAFFIC)
        hours = np.repeat(HOUR, counts)
        self.times = self.start + 3600.0 * (hours + rng.random(hours.size))
        order = np.argsort(self.times)
        self.times, hours = self.times[order], hours[order]
        self.hours = hours
        self.base = BASE_BID * rng.uniform(0.8, 1.2, hours.size)
        self.price = rng.lognormal(PRICE_MU, PRICE_SIGMA, hours.size)
        self.convert_u = rng.random(hours.size)  # conversion happens if u < CVR[hour]

    def __len__(self) -> int:
        return self.times.size

    def potential(self) -> float:
        """Spend of bidding the base bid on every auction."""
        return float(self.price[self.price <= self.base].sum())


def _curve(times: np.ndarray, costs: np.ndarray, start: float) -> np.ndarray:
    """Cumulative spend sampled every SAMPLE seconds over the day."""
    grid = start + np.arange(SAMPLE, DAY + 1, SAMPLE)
    cum = np.concatenate([[0.0], np.cumsum(costs)])
    return cum[np.searchsorted(times, grid, side="right")]


def _plan_curve(plan: np.ndarray) -> np.ndarray:
    """Planned cumulative fraction at the sample times (linear within an hour)."""
    grid = np.arange(SAMPLE, DAY + 1, SAMPLE) / 3600.0
    cum = np.concatenate([[0.0], np.cumsum(plan)])
    h = np.minimum(grid.astype(int), 23)
    return cum[h] + plan[h] * (grid - h)


def _day_metrics(day: Day, won_mask: np.ndarray, costs: np.ndarray, budget: float,
                 planned: np.ndarray) -> dict:
    spent = float(costs.sum())
    conversions = int((won_mask & (day.convert_u < CVR[day.hours])).sum())
    actual = _curve(day.times[won_mask], costs[won_mask], day.start)
    rms = float(np.sqrt(np.mean((actual - budget * planned) ** 2)) / budget)
    return {"spent": round(spent, 6), "overspend": round(max(spent - budget, 0.0), 6),
            "utilization": round(spent / budget, 5), "conversions": conversions,
            "conversions_per_cost": round(conversions / spent, 6) if spent else 0.0,
            "rms_deviation_of_budget": round(rms, 5), "curve": actual}


def asap(day: Day, budget: float) -> dict:
    remaining = budget
    costs = np.zeros(len(day))
    for i in range(len(day)):
        bid = min(day.base[i], remaining)
        if bid > 0 and day.price[i] <= bid:
            costs[i] = day.price[i]
            remaining -= day.price[i]
    return _day_metrics(day, costs > 0, costs, budget, _plan_curve(np.full(24, 1 / 24)))


def even_throttle(day: Day, budget: float, rng: np.random.Generator, p0: float) -> dict:
    remaining, p, spent = budget, p0, 0.0
    costs = np.zeros(len(day))
    next_update, last_spent, last_t = day.start + SAMPLE, 0.0, day.start
    for i in range(len(day)):
        t = day.times[i]
        if t >= next_update:  # proportional throttle towards the straight line
            elapsed = (t - day.start) / DAY
            left = max(1.0 - elapsed, 1e-3)
            rate = (spent - last_spent) / max(t - last_t, 1.0)
            desired = max(budget - spent, 0.0) / (left * DAY)
            ratio = 2.0 if rate <= 0 else min(max(desired / rate, 0.5), 2.0)
            p = min(max(p * ratio**0.6, 0.01), 1.0)
            next_update, last_spent, last_t = t + SAMPLE, spent, t
        if rng.random() >= p:
            continue
        bid = min(day.base[i], remaining)
        if bid > 0 and day.price[i] <= bid:
            costs[i] = day.price[i]
            remaining -= day.price[i]
            spent += day.price[i]
    return _day_metrics(day, costs > 0, costs, budget, _plan_curve(np.full(24, 1 / 24))), p


async def banditd_day(stub, cid: str, day: Day, budget: float, concurrency: int) -> dict:
    costs = np.zeros(len(day))
    reasons: dict[str, int] = {}
    first = await stub.GetPacingStatus(pb.GetPacingStatusRequest(
        campaign_id=cid, event_time=ts(day.start)))
    plan = np.array(first.hourly_plan)

    async def auction(i: int) -> None:
        t = float(day.times[i])
        r = await stub.PaceBid(pb.PaceBidRequest(campaign_id=cid, base_bid=float(day.base[i]),
                                                 event_time=ts(t)))
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
        if r.bid <= 0:
            return
        won = day.price[i] <= r.bid
        conversions = 1.0 if won and day.convert_u[i] < CVR[day.hours[i]] else 0.0
        s = await stub.RecordSpend(pb.RecordSpendRequest(
            campaign_id=cid, bid_id=r.bid_id, won=bool(won), cost=float(day.price[i]),
            conversions=conversions, event_time=ts(t + 0.5)))
        costs[i] = s.charged

    for lo in range(0, len(day), concurrency):
        await asyncio.gather(*(auction(i) for i in range(lo, min(lo + concurrency, len(day)))))
    end = await stub.GetPacingStatus(pb.GetPacingStatusRequest(
        campaign_id=cid, event_time=ts(day.start + DAY - 1)))
    m = _day_metrics(day, costs > 0, costs, budget, _plan_curve(plan))
    assert abs(end.spent - m["spent"]) < 1e-3, (end.spent, m["spent"])
    m["server_spent"] = end.spent
    m["server_reserved_at_end"] = end.reserved
    m["reasons"] = reasons
    m["plan"] = plan
    return m


def _summary(rows: list[dict], allowed: list[bool]) -> dict:
    ok = [r for r, a in zip(rows, allowed, strict=True) if a]
    spend = sum(r["spent"] for r in rows)
    conv = sum(r["conversions"] for r in rows)
    return {
        "days": len(rows), "days_allowing_full_delivery": len(ok),
        "overspend_total": round(sum(r["overspend"] for r in rows), 6),
        "days_with_overspend": sum(1 for r in rows if r["overspend"] > 0),
        "min_utilization_allowed_days": min((r["utilization"] for r in ok), default=None),
        "mean_utilization_allowed_days": round(float(np.mean([r["utilization"] for r in ok])), 5)
        if ok else None,
        "days_below_98pct_allowed": sum(1 for r in ok if r["utilization"] < 0.98),
        "rms_deviation_allowed_days_mean": round(float(np.mean(
            [r["rms_deviation_of_budget"] for r in ok])), 5) if ok else None,
        "rms_deviation_allowed_days_max": round(float(np.max(
            [r["rms_deviation_of_budget"] for r in ok])), 5) if ok else None,
        "conversions": conv, "spend": round(spend, 2),
        "conversions_per_cost": round(conv / spend, 6) if spend else 0.0,
    }


def _plot(path: Path, day: Day, budget: float, rows: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = np.arange(SAMPLE, DAY + 1, SAMPLE) / 3600.0
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.plot(hours, budget * _plan_curve(rows["banditd"]["plan"]), "k--",
            label="banditd plan (learned)")
    ax.plot(hours, budget * _plan_curve(np.full(24, 1 / 24)), ":", color="grey",
            label="even plan")
    for name, style in (("banditd", "-"), ("even_throttle", "-"), ("asap", "-")):
        ax.plot(hours, rows[name]["curve"], style, label=f"{name} actual")
    ax.axhline(budget, color="red", lw=0.8, label="daily budget")
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("cumulative spend")
    ax.set_xlim(0, 24)
    ax.set_title(f"day {day.index}: traffic {day.factor:.2f}x forecast, {len(day)} auctions")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    # Budget: 60% of what bidding every auction would spend at forecast traffic.
    probe = [Day(-1 - i, args.auctions, np.random.default_rng(10_000 + i), factor=1.0)
             for i in range(5)]
    budget = round(0.6 * float(np.mean([d.potential() for d in probe])), 2)
    data = Path(tempfile.mkdtemp(prefix="banditd-pacing-"))
    server = Server(data, durability="os", snapshot_interval_seconds=60)
    cid = "sim"
    rows: dict[str, list[dict]] = {"banditd": [], "asap": [], "even_throttle": []}
    allowed: list[bool] = []
    factors: list[float] = []
    sample: dict[str, dict] = {}
    sample_day = None
    p = 0.5
    started = time.perf_counter()
    calls = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.DecisionServiceStub(ch)
            await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
                campaign_id=cid, daily_budget=budget, max_bid=2.0 * BASE_BID,
                time_zone="UTC", pacing_mode=pb.PACING_MODE_SMOOTH,
                # auctions run `concurrency` at a time, which at night spans minutes of
                # simulated time: settlements must not find their bids expired
                reservation_ttl_seconds=3600)))
            for d in range(args.days):
                day = Day(d, args.auctions, rng)
                b = await banditd_day(stub, cid, day, budget, args.concurrency)
                a = asap(day, budget)
                e, p = even_throttle(day, budget, np.random.default_rng(args.seed * 7 + d), p)
                calls += len(day) + sum(v for k, v in b["reasons"].items() if k != "paused")
                allowed.append(day.potential() >= budget)
                factors.append(day.factor)
                for name, m in (("banditd", b), ("asap", a), ("even_throttle", e)):
                    rows[name].append(m)
                if d == args.days - 1 or (sample_day is None and d >= args.days // 2
                                          and 1.0 <= day.factor <= 2.0):
                    sample_day, sample = day, {"banditd": b, "asap": a, "even_throttle": e}
                if (d + 1) % 5 == 0 or d == args.days - 1:
                    print(f"  day {d + 1}/{args.days}: traffic {day.factor:.2f}x, banditd "
                          f"util {b['utilization']:.3f} rms {b['rms_deviation_of_budget']:.3f} "
                          f"conv/cost {b['conversions_per_cost']:.4f} | even "
                          f"{e['conversions_per_cost']:.4f} | asap "
                          f"{a['conversions_per_cost']:.4f}  "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    assert sample_day is not None
    _plot(out.with_suffix(".png"), sample_day, budget, sample)
    learned_from = args.learned_after
    summary = {name: _summary(r, allowed) for name, r in rows.items()}
    late = {name: _summary(r[learned_from:], allowed[learned_from:]) for name, r in rows.items()}
    gain = late["banditd"]["conversions_per_cost"] / late["even_throttle"]["conversions_per_cost"]
    return {
        "machine": machine(),
        "setup": {"days": args.days, "forecast_auctions_per_day": args.auctions,
                  "traffic_factor_range": [0.5, 3.0], "daily_budget": budget,
                  "base_bid": BASE_BID, "clearing_price": "lognormal(log 0.55, 0.45)",
                  "conversion_rate_by_hour": [round(float(c), 4) for c in CVR],
                  "traffic_share_by_hour": [round(float(c), 4) for c in TRAFFIC],
                  "concurrency": args.concurrency, "seed": args.seed,
                  "full_delivery_allowed": "bidding base on every auction spends >= budget"},
        "all_days": summary,
        f"after_day_{learned_from}": late,
        "conversions_per_cost_vs_even_throttle_after_learning": round(gain, 4),
        "rpc_calls": calls, "seconds": round(elapsed, 1),
        "plot": str(out.with_suffix(".png")),
        "learned_plan": [round(float(x), 5) for x in rows["banditd"][-1]["plan"]],
        "per_day": [{"day": i, "traffic_factor": round(f, 3), "allowed": ok,
                     **{k: {kk: v for kk, v in rows[k][i].items()
                            if kk not in ("curve", "plan", "reasons")} for k in rows}}
                    for i, (f, ok) in enumerate(zip(factors, allowed, strict=True))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=100)
    ap.add_argument("--auctions", type=int, default=4000, help="forecast auctions per day")
    ap.add_argument("--concurrency", type=int, default=16, help="auctions in flight")
    ap.add_argument("--learned-after", type=int, default=7,
                    help="days the plan learns before conversions per cost are compared")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/pacing.json")
    ap.add_argument("--quick", action="store_true", help="10 days of 1500 auctions (smoke)")
    args = ap.parse_args()
    if args.quick:
        args.days, args.auctions, args.learned_after = 10, 1500, 3
    report = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(report, indent=2))
    for name, s in report["all_days"].items():
        print(name, json.dumps(s))
    print("conversions per cost vs even throttling after learning:",
          report["conversions_per_cost_vs_even_throttle_after_learning"])
    print(f"wrote {args.out} and {report['plot']}")


if __name__ == "__main__":
    main()
