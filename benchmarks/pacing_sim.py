"""Pacing simulator: days of auctions against a real banditd, against ASAP and even throttling;
and a market grid (``--grid``) of the controller across bid/price ratios, traffic levels,
traffic shapes and days of learning.

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

**Market grid** (``--grid``): every combination of base bid / median clearing price
{1.2, 3, 10, 40}, traffic {0.3, 1, 2, 5} x forecast, diurnal shape {flat, evening peak, two
peaks} and day {1, 8} (day 8: the campaign has run, and learned from, 7 days of the same
market first) -- 96 cells. Each market is one campaign on one real banditd, driven through
PaceBid / RecordSpend with ``event_time`` as the clock; markets run concurrently, each
campaign's auctions in event-time order (a few in flight at once). Clearing prices are
lognormal (median 1, sigma 0.5, second price: a win costs the clearing price), base bids
ratio x U(0.8, 1.2), the daily budget ``BUDGET_SHARE`` of what bidding the base bid on every
auction of a forecast day spends, the per-bid cap the default 10% of the hour's planned
spend, and the campaign gives its traffic shape as ``hourly_weights``. Per cell: overspend,
utilisation, maximum and RMS deviation of cumulative spend from the day's plan (sampled
every minute, as a share of the budget), the hour of exhaustion (99% of the budget spent),
conversions per cost, and whether the budget can be delivered: bidding as much as the
campaign allows (the base bid, within max_bid and the per-bid cap) on every auction of the
day would have spent at least the budget. Writes the JSON, a heat map PNG beside it, and
prints the Markdown table (``--table JSON`` prints it again from a results file).

    python -m benchmarks.pacing_sim --grid [--forecast 3000] [--out ...] [--quick]
        [--ratios R ...] [--traffic T ...] [--shapes S ...] [--grid-days D ...] [--set K=V]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
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
DEFAULT_OUT = "benchmarks/results/pacing.json"
GRID_OUT = "benchmarks/results/pacing_grid.json"


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
            conversions=conversions, event_time=ts(min(t + 0.5, day.start + DAY - 1e-3))))
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


# ------------------------------------------------------------------------------ market grid
GRID_RATIOS = (1.2, 3.0, 10.0, 40.0)  # base bid / median clearing price
GRID_TRAFFIC = (0.3, 1.0, 2.0, 5.0)  # the day's auctions / forecast
GRID_SHAPES = {  # relative traffic per hour
    "flat": np.ones(24),
    "evening_peak": 0.2 + np.exp(-0.5 * ((HOUR - 20) / 2.5) ** 2),
    "two_peaks": 0.2 + np.exp(-0.5 * ((HOUR - 9) / 2.0) ** 2)
    + np.exp(-0.5 * ((HOUR - 20) / 2.0) ** 2),
}
GRID_DAYS = (1, 8)
GRID_PRICE_SIGMA = 0.5  # lognormal clearing prices with median 1
BUDGET_SHARE = 0.6
EXHAUSTED_SHARE = 0.99  # the budget counts as exhausted once this share is spent
STEP = 60.0  # seconds between samples of cumulative spend against the plan
IN_FLIGHT = 8  # a campaign's auctions in flight at once ...
IN_FLIGHT_SECONDS = 10.0  # ... within this much event time of each other
CAP_FRACTION = 0.10  # the server's default bid_cap_fraction
MICROS_PER_UNIT = 1_000_000


class MarketDay:
    """One day of one market: auction times, base bids, clearing prices, conversion draws."""

    def __init__(self, start: float, forecast: int, ratio: float, traffic: float,
                 shape: np.ndarray, rng: np.random.Generator) -> None:
        self.start = start
        counts = rng.poisson(forecast * traffic * shape / shape.sum())
        hours = np.repeat(HOUR, counts)
        times = start + 3600.0 * (hours + rng.random(hours.size))
        order = np.argsort(times)
        self.times, self.hours = times[order], hours[order]
        self.base = ratio * rng.uniform(0.8, 1.2, hours.size)
        self.price = rng.lognormal(0.0, GRID_PRICE_SIGMA, hours.size)
        self.convert_u = rng.random(hours.size)

    def __len__(self) -> int:
        return self.times.size


def grid_budget(ratio: float, forecast: int) -> float:
    """BUDGET_SHARE of the expected spend of bidding the base bid on every auction of a
    forecast day (Monte Carlo, fixed seed), in cents."""
    rng = np.random.default_rng(2024)
    base = ratio * rng.uniform(0.8, 1.2, 1_000_000)
    price = rng.lognormal(0.0, GRID_PRICE_SIGMA, base.size)
    return round(BUDGET_SHARE * forecast * float(np.mean(np.where(price <= base, price, 0.0))), 2)


def plan_fraction(plan: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """The plan's cumulative fraction of the day at ``seconds`` after midnight (a UTC day:
    24 hours, linear within an hour)."""
    hours = np.clip(seconds / 3600.0, 0.0, 24.0)
    cum = np.concatenate([[0.0], np.cumsum(plan)])
    h = np.minimum(hours.astype(int), 23)
    return cum[h] + plan[h] * (hours - h)


def cell_metrics(day: MarketDay, won: np.ndarray, charged: np.ndarray, plan: np.ndarray,
                 budget: float, max_bid: float) -> dict:
    """One market day's results from each auction's outcome (won, charged) and the plan."""
    spent = float(charged.sum())
    cum = np.concatenate([[0.0], np.cumsum(charged)])
    samples = day.start + np.arange(0.0, DAY + 1, STEP)
    actual = cum[np.searchsorted(day.times, samples, side="right")]
    deviation = (actual - budget * plan_fraction(plan, samples - day.start)) / budget
    exhausted = int(np.searchsorted(cum[1:], EXHAUSTED_SHARE * budget))
    cap = np.floor(CAP_FRACTION * budget * plan * MICROS_PER_UNIT) / MICROS_PER_UNIT
    limit = np.minimum(np.minimum(day.base, max_bid), cap[day.hours])
    possible = float(day.price[day.price <= limit].sum())
    conversions = int((won & (day.convert_u < CVR[day.hours])).sum())
    return {
        "auctions": len(day), "spent": round(spent, 4),
        "overspend": round(max(spent - budget, 0.0), 6),
        "utilization": round(spent / budget, 5),
        "deliverable": possible >= budget,
        "possible_spend": round(possible, 4),
        "spent_of_possible": round(spent / possible, 5) if possible else None,
        "possible_spend_at_base_bid": round(float(day.price[day.price <= day.base].sum()), 4),
        "max_deviation": round(float(np.abs(deviation).max()), 5),
        "rms_deviation": round(float(np.sqrt(np.mean(deviation**2))), 5),
        "exhaustion_hour": round(float((day.times[exhausted] - day.start) / 3600.0), 3)
        if exhausted < len(day) else None,
        "conversions": conversions,
        "conversions_per_cost": round(conversions / spent, 6) if spent else 0.0,
        "wins": int(won.sum()),
    }


def targets(cell: dict) -> dict:
    """Which targets a cell meets. Deliverable: no overspend, utilisation >= 98%, maximum
    deviation <= 5% of the budget, no exhaustion before the last hour; otherwise: no
    overspend and at least 98% of the possible spend spent."""
    if cell["deliverable"]:
        met = {"no_overspend": cell["overspend"] == 0,
               "utilization_98": cell["utilization"] >= 0.98,
               "max_deviation_5": cell["max_deviation"] <= 0.05,
               "no_early_exhaustion": cell["exhaustion_hour"] is None
               or cell["exhaustion_hour"] >= 23.0}
    else:
        met = {"no_overspend": cell["overspend"] == 0,
               "spent_possible_98": (cell["spent_of_possible"] or 0.0) >= 0.98}
    return met


class Market:
    """One grid market: a campaign on the server and its days of auctions."""

    def __init__(self, index: int, ratio: float, traffic: float, shape: str, forecast: int,
                 seed: int) -> None:
        self.index, self.ratio, self.traffic, self.shape = index, ratio, traffic, shape
        self.forecast, self.seed = forecast, seed
        self.campaign_id = f"grid-{index}-r{ratio:g}-t{traffic:g}-{shape}"
        self.budget = grid_budget(ratio, forecast)
        self.max_bid = 2.0 * ratio

    def day(self, number: int) -> MarketDay:
        rng = np.random.default_rng([self.seed, self.index, number])
        return MarketDay(START + (number - 1) * DAY, self.forecast, self.ratio, self.traffic,
                         GRID_SHAPES[self.shape], rng)

    async def run(self, stub, days: int, keep: tuple[int, ...], trajectories: bool,
                  progress) -> list[dict]:
        await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=pb.Campaign(
            campaign_id=self.campaign_id, daily_budget=self.budget, max_bid=self.max_bid,
            time_zone="UTC", pacing_mode=pb.PACING_MODE_SMOOTH, seed=self.seed + self.index,
            hourly_weights=[float(w) for w in GRID_SHAPES[self.shape]])))
        cells = []
        for number in range(1, days + 1):
            day = self.day(number)
            cell = await self._day(stub, day, trajectories and number in keep)
            if number in keep:
                cell.update(ratio=self.ratio, traffic=self.traffic, shape=self.shape,
                            day=number, budget=self.budget)
                cell["targets"] = targets(cell)
                cell["market"] = self.index
                cells.append(cell)
            progress(self, number, cell)
        return cells

    async def _day(self, stub, day: MarketDay, trajectory: bool) -> dict:
        cid = self.campaign_id
        first = await stub.GetPacingStatus(pb.GetPacingStatusRequest(
            campaign_id=cid, event_time=ts(day.start)))
        plan = np.array(first.hourly_plan)
        n = len(day)
        won = np.zeros(n, dtype=bool)
        charged = np.zeros(n)
        multiplier = np.zeros(n)
        participation = np.zeros(n)
        reasons: Counter[str] = Counter()

        async def auction(i: int) -> None:
            t = float(day.times[i])
            r = await stub.PaceBid(pb.PaceBidRequest(
                campaign_id=cid, base_bid=float(day.base[i]), event_time=ts(t)))
            reasons[pb.PaceReason.Name(r.reason_code)] += 1
            multiplier[i], participation[i] = r.pacing_multiplier, r.participation_rate
            if r.bid <= 0:
                return
            won[i] = day.price[i] <= r.bid
            conversions = 1.0 if won[i] and day.convert_u[i] < CVR[day.hours[i]] else 0.0
            s = await stub.RecordSpend(pb.RecordSpendRequest(
                campaign_id=cid, bid_id=r.bid_id, won=bool(won[i]), cost=float(day.price[i]),
                conversions=conversions, event_time=ts(min(t + 0.5, day.start + DAY - 1e-3))))
            charged[i] = s.charged

        i = 0
        while i < n:  # a few auctions in flight, close together in event time
            j = i + 1
            while j < n and j - i < IN_FLIGHT and day.times[j] - day.times[i] < IN_FLIGHT_SECONDS:
                j += 1
            await asyncio.gather(*(auction(k) for k in range(i, j)))
            i = j
        end = await stub.GetPacingStatus(pb.GetPacingStatusRequest(
            campaign_id=cid, event_time=ts(day.start + DAY - 1)))
        cell = cell_metrics(day, won, charged, plan, self.budget, self.max_bid)
        assert abs(end.spent - cell["spent"]) < 1e-3, (end.spent, cell["spent"])
        prefix = "PACE_REASON_"
        cell["reasons"] = {k.removeprefix(prefix).lower(): v for k, v in sorted(reasons.items())}
        cell["mean_multiplier"] = round(float(multiplier.mean()), 5) if n else None
        cell["min_participation"] = round(float(participation.min()), 5) if n else None
        cell["plan"] = [round(float(x), 6) for x in plan]
        if trajectory:  # per 10 minutes: the controller and the spend against the plan
            edges = day.start + np.arange(600.0, DAY + 1, 600.0)
            at = np.clip(np.searchsorted(day.times, edges, side="right") - 1, 0, max(n - 1, 0))
            cum = np.concatenate([[0.0], np.cumsum(charged)])
            cell["trajectory"] = {
                "hour": [round(float((e - day.start) / 3600), 3) for e in edges],
                "multiplier": [round(float(multiplier[k]), 5) for k in at] if n else [],
                "participation": [round(float(participation[k]), 5) for k in at] if n else [],
                "spent": [round(float(cum[np.searchsorted(day.times, e, side="right")]), 4)
                          for e in edges],
                "planned": [round(float(self.budget * f), 4)
                            for f in plan_fraction(plan, edges - day.start)]}
        return cell


def grid_markets(args: argparse.Namespace) -> tuple[list[Market], tuple[int, ...]]:
    """The markets of the grid (or of the part of it asked for) and the days measured."""
    ratios, traffics, shapes = args.ratios, args.traffic, args.shapes
    keep = tuple(args.grid_days)
    if args.quick:
        ratios, traffics, shapes, keep = (3.0, 40.0), (0.3, 2.0), ("evening_peak",), (1, 2)
    # a market's index (its random days, its seed) is its place in the whole grid, so a part
    # of the grid runs the same markets as the whole
    markets = [Market(i, r, tr, sh, args.forecast, args.seed) for i, (r, tr, sh) in enumerate(
        itertools.product(GRID_RATIOS, GRID_TRAFFIC, GRID_SHAPES))
        if r in ratios and tr in traffics and sh in shapes]
    return markets, keep


def split_markets(markets: list[Market], parts: int) -> list[list[Market]]:
    """The markets in ``parts`` groups of about the same number of auctions (greedy: the
    busiest market to the least loaded group)."""
    groups: list[list[Market]] = [[] for _ in range(max(1, min(parts, len(markets))))]
    load = [0.0] * len(groups)
    for m in sorted(markets, key=lambda m: (-m.traffic, m.index)):
        k = load.index(min(load))
        groups[k].append(m)
        load[k] += m.traffic
    return groups


def cells_path(out: Path) -> Path:
    """Where a grid run appends each measured cell as it completes (a JSON line), so an
    interrupted run keeps what it measured and ``--resume`` runs only the markets missing."""
    return out.with_suffix(".cells.jsonl")


def read_cells(out: Path) -> list[dict]:
    path = cells_path(out)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_part(args: argparse.Namespace, indices: list[int], part: str) -> list[dict]:
    """One process's share of the grid: its own banditd and the markets ``indices`` (each
    market is a campaign of its own and markets never share state, so a cell does not depend
    on which server ran it)."""
    markets, keep = grid_markets(args)
    mine = [m for m in markets if m.index in indices]
    return asyncio.run(_run_markets(args, mine, keep, part))


async def _run_markets(args: argparse.Namespace, markets: list[Market], keep: tuple[int, ...],
                       part: str) -> list[dict]:
    days = max(keep)
    total = sum(m.traffic for m in markets) * days
    done = {"traffic": 0.0, "cells": 0}
    started = time.perf_counter()

    sink = cells_path(Path(args.out)) if args.out else None

    def progress(market: Market, number: int, cell: dict) -> None:
        done["traffic"] += market.traffic
        if number in keep:
            done["cells"] += 1
            if sink is not None:
                with open(sink, "a") as f:  # one line per write: parts may append at once
                    f.write(json.dumps(cell) + "\n")
            print(f"  {part}[{done['traffic'] / total:5.1%} of auctions, "
                  f"{time.perf_counter() - started:5.0f} s] ratio {market.ratio:g} traffic "
                  f"{market.traffic:g}x {market.shape} day {number}: util "
                  f"{cell['utilization']:.4f} max dev {cell['max_deviation']:.4f} exhausted "
                  f"{cell['exhaustion_hour']} deliverable {cell['deliverable']}", flush=True)

    data = Path(tempfile.mkdtemp(prefix="banditd-grid-"))
    settings = dict(kv.split("=", 1) for kv in args.set)
    server = Server(data, durability="os", snapshot_interval_seconds=300, **settings)
    sem = asyncio.Semaphore(args.markets)
    try:
        async with grpc.aio.insecure_channel(server.target) as ch:
            stub = pb_grpc.DecisionServiceStub(ch)

            async def one(market: Market) -> list[dict]:
                async with sem:
                    return await market.run(stub, days, keep, True, progress)

            # the busiest markets first, so the slowest do not start last
            order = sorted(markets, key=lambda m: -m.traffic)
            results = await asyncio.gather(*(one(m) for m in order))
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return [c for r in results for c in r]


def summarize(cells: list[dict]) -> dict:
    """The grid's summary: cells, deliverable cells, overspend, the targets met."""
    deliverable = [c for c in cells if c["deliverable"]]
    return {
        "cells": len(cells), "deliverable_cells": len(deliverable),
        "overspend_total": round(sum(c["overspend"] for c in cells), 6),
        "cells_meeting_all_targets": sum(all(c["targets"].values()) for c in cells),
        "deliverable_cells_meeting_all_targets": sum(all(c["targets"].values())
                                                     for c in deliverable),
        "per_target_misses": dict(Counter(k for c in cells for k, ok in c["targets"].items()
                                          if not ok)),
        "min_utilization_deliverable": min((c["utilization"] for c in deliverable),
                                           default=None),
        "max_deviation_deliverable": max((c["max_deviation"] for c in deliverable),
                                         default=None),
        "earliest_exhaustion_deliverable": min(
            (c["exhaustion_hour"] for c in deliverable if c["exhaustion_hour"] is not None),
            default=None),
        "min_spent_of_possible_undeliverable": min(
            (c["spent_of_possible"] for c in cells if not c["deliverable"]), default=None),
    }


def run_grid(args: argparse.Namespace) -> dict:
    markets, keep = grid_markets(args)
    started = time.perf_counter()
    earlier: list[dict] = []
    if args.resume:  # the cells of the markets an interrupted run finished
        earlier = read_cells(Path(args.out))
        finished = {c["market"] for c in earlier
                    if sum(e["market"] == c["market"] for e in earlier) == len(keep)}
        earlier = [c for c in earlier if c["market"] in finished]
        markets = [m for m in markets if m.index not in finished]
        print(f"resuming: {len(finished)} markets measured, {len(markets)} to run", flush=True)
    cells_path(Path(args.out)).write_text("".join(json.dumps(c) + "\n" for c in earlier))
    groups = split_markets(markets, args.processes)
    if not markets:
        results = []
    elif len(groups) == 1:
        results = [asyncio.run(_run_markets(args, markets, keep, ""))]
    else:  # a banditd and a driver per process: the servers' work spreads over the cores
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(groups), mp_context=context) as pool:
            futures = [pool.submit(run_part, args, [m.index for m in g],
                                   f"part {k + 1}/{len(groups)} ")
                       for k, g in enumerate(groups)]
            results = [f.result() for f in futures]
    return grid_report(args, earlier + [c for r in results for c in r], keep,
                       time.perf_counter() - started, len(groups))


def grid_report(args: argparse.Namespace, cells: list[dict], keep: tuple[int, ...],
                seconds: float, processes: int) -> dict:
    """The results file of a grid run from its cells."""
    cells = sorted(cells, key=lambda c: (c["day"], c["shape"], c["ratio"], c["traffic"]))
    planned, _ = grid_markets(args)  # the grid asked for (a partial run lacks some cells)
    ratios = sorted({m.ratio for m in planned})
    traffics = sorted({m.traffic for m in planned})
    shapes = [sh for sh in GRID_SHAPES if any(m.shape == sh for m in planned)]
    summary = summarize(cells)
    settings = dict(kv.split("=", 1) for kv in args.set)
    return {
        "machine": machine(),
        "setup": {"ratios": list(ratios), "traffic": list(traffics), "shapes": list(shapes),
                  "days": list(keep), "forecast_auctions_per_day": args.forecast,
                  "shape_weights": {k: [round(float(x), 5) for x in GRID_SHAPES[k]]
                                    for k in shapes},
                  "clearing_price": f"lognormal(0, {GRID_PRICE_SIGMA}), median 1",
                  "base_bid": "ratio x U(0.8, 1.2)",
                  "budget": f"{BUDGET_SHARE} x E[spend of bidding the base bid on every "
                            "auction of a forecast day]",
                  "budgets": {f"{r:g}": grid_budget(r, args.forecast) for r in ratios},
                  "max_bid": "2 x ratio", "bid_cap_fraction": CAP_FRACTION,
                  "hourly_weights": "the market's shape",
                  "deliverable": "bidding min(base bid, max_bid, per-bid cap) on every auction "
                                 "of the day would have spent at least the budget",
                  "exhausted": f"{EXHAUSTED_SHARE:.0%} of the budget spent",
                  "deviation": f"|cumulative spend - budget x plan fraction| / budget, every "
                               f"{STEP:g} s", "conversion_rate_by_hour":
                  [round(float(c), 4) for c in CVR],
                  "in_flight": IN_FLIGHT, "in_flight_seconds": IN_FLIGHT_SECONDS,
                  "concurrent_markets": args.markets, "processes": processes,
                  "seed": args.seed,
                  "server_settings": settings},
        "summary": summary, "seconds": round(seconds, 1), "cells": cells,
    }


def merge_reports(reports: list[dict]) -> dict:
    """One grid results file from files of parts of the grid (run with --ratios, --traffic,
    --shapes on the same commit and settings): their cells together, the summary again."""
    first = reports[0]
    setup = dict(first["setup"])
    for key in ("days", "forecast_auctions_per_day", "seed", "server_settings"):
        if any(r["setup"][key] != setup[key] for r in reports):
            raise SystemExit(f"cannot merge parts with different {key}")
    cells = sorted((c for r in reports for c in r["cells"]),
                   key=lambda c: (c["day"], c["shape"], c["ratio"], c["traffic"]))
    keys = [(c["ratio"], c["traffic"], c["shape"], c["day"]) for c in cells]
    if len(set(keys)) != len(keys):
        raise SystemExit("the parts overlap")
    setup["ratios"] = sorted({c["ratio"] for c in cells})
    setup["traffic"] = sorted({c["traffic"] for c in cells})
    setup["shapes"] = [sh for sh in GRID_SHAPES if any(c["shape"] == sh for c in cells)]
    setup["budgets"] = {k: v for r in reports for k, v in r["setup"]["budgets"].items()}
    setup["shape_weights"] = {k: v for r in reports
                              for k, v in r["setup"]["shape_weights"].items()}
    setup["parts"] = [{"ratios": r["setup"]["ratios"], "traffic": r["setup"]["traffic"],
                       "shapes": r["setup"]["shapes"], "seconds": r["seconds"],
                       "commit": r["machine"].get("commit")} for r in reports]
    return {"machine": first["machine"], "setup": setup, "summary": summarize(cells),
            "seconds": round(sum(r["seconds"] for r in reports), 1), "cells": cells}


def grid_table(report: dict) -> str:
    """The grid as Markdown: a row per (ratio, traffic), a column per (shape, day); each
    entry utilisation % / maximum deviation % of the budget, marked when a target is missed;
    cells that cannot be delivered show the share of the possible spend that was spent."""
    setup = report["setup"]
    cells = {(c["ratio"], c["traffic"], c["shape"], c["day"]): c for c in report["cells"]}
    columns = [(sh, d) for d in setup["days"] for sh in setup["shapes"]]
    head = "| bid / price | traffic | " + " | ".join(
        f"{sh.replace('_', ' ')}, day {d}" for sh, d in columns) + " |"
    lines = [head, "|---:|---:|" + "---:|" * len(columns)]
    for ratio in setup["ratios"]:
        for traffic in setup["traffic"]:
            row = [f"{ratio:g}", f"{traffic:g}x"]
            for sh, d in columns:
                c = cells.get((ratio, traffic, sh, d))
                if c is None:
                    row.append("not run")
                    continue
                miss = "" if all(c["targets"].values()) else " ✗"
                if c["deliverable"]:
                    exhausted = "" if c["exhaustion_hour"] is None or c["exhaustion_hour"] >= 23 \
                        else f", out {c['exhaustion_hour']:.1f} h"
                    row.append(f"{100 * c['utilization']:.1f} / {100 * c['max_deviation']:.1f}"
                               f"{exhausted}{miss}")
                else:
                    row.append(f"thin: {100 * (c['spent_of_possible'] or 0):.1f}% of possible"
                               f"{miss}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_grid(report: dict, path: Path) -> None:
    """Heat map: a panel per (day, shape), bid/price ratio x traffic; colour = maximum
    deviation from the plan (% of budget); text = utilisation / maximum deviation (%), or
    the share of the possible spend for cells that cannot be delivered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = report["setup"]
    cells = {(c["ratio"], c["traffic"], c["shape"], c["day"]): c for c in report["cells"]}
    ratios, traffics = setup["ratios"], setup["traffic"]
    fig, axes = plt.subplots(len(setup["days"]), len(setup["shapes"]), squeeze=False,
                             figsize=(4.2 * len(setup["shapes"]), 3.9 * len(setup["days"])))
    image = None
    for row, d in enumerate(setup["days"]):
        for col, sh in enumerate(setup["shapes"]):
            ax = axes[row][col]
            grid = np.full((len(ratios), len(traffics)), np.nan)
            for i, r in enumerate(ratios):
                for j, tr in enumerate(traffics):
                    c = cells.get((r, tr, sh, d))
                    if c is None:
                        ax.text(j, i, "not run", ha="center", va="center", fontsize=8)
                        continue
                    if c["deliverable"]:
                        grid[i, j] = 100 * c["max_deviation"]
                        text = f"{100 * c['utilization']:.1f}\n{100 * c['max_deviation']:.1f}"
                    else:
                        text = f"thin\n{100 * (c['spent_of_possible'] or 0):.0f}%"
                    if not all(c["targets"].values()):
                        text += " ✗"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8)
            image = ax.imshow(grid, cmap="RdYlGn_r", vmin=0, vmax=5, origin="lower")
            ax.set_xticks(range(len(traffics)), [f"{t:g}x" for t in traffics])
            ax.set_yticks(range(len(ratios)), [f"{r:g}" for r in ratios])
            ax.set_xlabel("traffic / forecast")
            ax.set_ylabel("base bid / median price")
            ax.set_title(f"{sh.replace('_', ' ')}, day {d}", fontsize=10)
    fig.suptitle("Pacing market grid: utilisation % / max deviation from the plan, % of budget\n"
                 "grey: cannot be delivered (share of the possible spend spent); "
                 "✗: a target missed", fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="max deviation, % of budget (target 5)")
    for ax in axes.flat:
        ax.set_facecolor("#dddddd")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=100)
    ap.add_argument("--auctions", type=int, default=4000, help="forecast auctions per day")
    ap.add_argument("--concurrency", type=int, default=16, help="auctions in flight")
    ap.add_argument("--learned-after", type=int, default=7,
                    help="days the plan learns before conversions per cost are compared")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help=f"default {DEFAULT_OUT}, with --grid {GRID_OUT}")
    ap.add_argument("--quick", action="store_true", help="10 days of 1500 auctions (smoke); "
                    "with --grid: 8 cells of 1000 forecast auctions, day 2 for day 8")
    ap.add_argument("--grid", action="store_true", help="the market grid (see above)")
    ap.add_argument("--forecast", type=int, default=3000,
                    help="grid: forecast auctions per day")
    ap.add_argument("--markets", type=int, default=24,
                    help="grid: markets run at once per process")
    ap.add_argument("--processes", type=int, default=2,
                    help="grid: processes, each with its own banditd and a share of the markets")
    ap.add_argument("--ratios", type=float, nargs="+", default=list(GRID_RATIOS),
                    help="grid: a part of its bid/price ratios")
    ap.add_argument("--traffic", type=float, nargs="+", default=list(GRID_TRAFFIC),
                    help="grid: a part of its traffic levels")
    ap.add_argument("--shapes", nargs="+", default=list(GRID_SHAPES), choices=list(GRID_SHAPES),
                    help="grid: a part of its traffic shapes")
    ap.add_argument("--grid-days", type=int, nargs="+", default=list(GRID_DAYS),
                    help="grid: the days measured (the campaign runs every day up to the last)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="grid: a server setting (banditd serve --set), e.g. "
                         "pacing_min_participation=1 for shading alone")
    ap.add_argument("--table", metavar="JSON", help="print a grid results file's table")
    ap.add_argument("--merge", metavar="JSON", nargs="+",
                    help="grid: merge results files of parts of the grid into --out")
    ap.add_argument("--resume", action="store_true",
                    help="grid: keep the markets an interrupted run into --out finished "
                         "(its .cells.jsonl) and run the others")
    ap.add_argument("--partial", action="store_true",
                    help="grid: write --out from the cells an interrupted run measured")
    ap.add_argument("--replot", metavar="JSON",
                    help="redraw a grid results file's heat map (the PNG beside it)")
    args = ap.parse_args()
    if args.table:
        print(grid_table(json.loads(Path(args.table).read_text())))
        return
    if args.replot:
        plot_grid(json.loads(Path(args.replot).read_text()), Path(args.replot).with_suffix(".png"))
        return
    if args.grid:
        if args.quick:
            args.forecast = 1000
        out = Path(args.out if args.out != DEFAULT_OUT else GRID_OUT)
        args.out = str(out)
        if args.merge:
            report = merge_reports([json.loads(Path(p).read_text()) for p in args.merge])
        elif args.partial:  # the cells an interrupted run measured
            report = grid_report(args, read_cells(out), grid_markets(args)[1], 0.0,
                                 args.processes)
            report["partial"] = True
        else:
            report = run_grid(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        plot_grid(report, out.with_suffix(".png"))
        print(grid_table(report))
        print(json.dumps(report["summary"], indent=1))
        print(f"wrote {out} and {out.with_suffix('.png')} in {report['seconds']} s")
        return
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
