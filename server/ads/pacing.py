"""Budget pacing: campaigns, the hourly plan, the pacing controller and bid reservations.

A bidder calls ``PaceBid`` per auction with its base bid; banditd answers the paced bid
``min(base_bid x multiplier, max_bid, per-bid cap, remaining budget)`` or 0 (for a
throttled auction, among others), and reserves it. ``RecordSpend`` settles the reservation
(a loss releases it, a win charges the clearing cost, at most the reserved bid). Money is
kept in integer micro-units per local day, and every reservation is checked against
``budget - spent - reserved`` in the same event-loop step that makes it, so spent +
reserved never exceeds the daily budget, however many auctions are in flight.

**Hourly plan.** The day's budget is spread over local hours 0-23 by a plan of 24 shares:
the campaign's ``hourly_weights`` (its expected traffic shape) when given, else even; in
``PACING_MODE_SMOOTH`` it is re-learned from there at every day rollover from a decayed
history of past days (``pacing_history_decay`` per day) as

    target_h  ~  traffic_share_h x (conversions_per_cost_h / overall conversions_per_cost)

where conversions per cost are shrunk towards the overall rate (a prior of ``PRIOR_CONVERSIONS``
conversions) so that a quiet hour cannot swing the plan, and every share may move by at most
``pacing_plan_max_shift`` (relative) per day. A day of 23 or 25 hours (DST) spreads the plan
over its real hours. The planned cumulative spend at time t is ``budget x P(t)``, P the
plan's cumulative fraction of the day, linear within an hour.

**Controller: shading, then throttling.** One control variable, the pace level L in
(0, 1], sets both the multiplier m and the participation rate p (the fraction of auctions
the campaign bids in), with f = ``pacing_min_multiplier``::

    m = max(L, f)        p = L / m

Above the floor the controller shades bids (m = L, p = 1); once the level would take the
multiplier below its floor it throttles instead (m = f, p = L / f < 1). Shading comes first
because in a second-price auction a lower bid gives up the most expensive impressions first,
where throttling gives up impressions at random; throttling takes over where lower bids have
stopped mattering (far above the clearing prices, a bid of f x base still wins). A throttled
auction answers bid 0 (reason ``throttled``); which auctions are skipped is a coin drawn from
the campaign's seed and the bid's sequence number (:func:`coin`), so the same requests give
the same bids, live and on replay.

Every ``pacing_control_interval_seconds`` of event time (and at least ``MIN_CONTROL_BIDS``
bids, or 4 intervals when traffic is thin) -- and sooner when spending fast: once the spend
since the last update passes ``RUSH`` intervals' worth of the plan while cumulative spend is
ahead of the plan for the end of the next interval (after ``RUSH_BIDS`` bids at least) --
with S the committed spend (spent + reserved), r the spend rate observed since the last
update and w the highest clearing cost / base bid of the wins settled since then::

    H        = min(pacing_horizon_seconds, time left in the day)
    desired  = max(budget x P'(t) + (budget x P(t) - S) / H, 0)  # plan rate + way back
    ratio    = clip(desired / r, 1/2, 2)                # 2 when nothing was spent
    L0       = min(L, max(w, f))   if ratio < 1, p = 1 and a win was settled, else L
    L        = clip(L0 x ratio^GAIN, f x pacing_min_participation, 1)

so the level moves smoothly (at most x1.37 or /1.37 per update: ratio^GAIN) and never above
1. The desired rate is the plan's own rate at t (P' is the plan's share per second) plus the
deviation spread over H: on the plan, the controller follows the plan's rate as it changes
from hour to hour, where aiming at the plan H seconds ahead would lag behind every change of
the plan by about H/2 (and be short by the end of a plan that stops before midnight). GAIN
trades noise against speed: on the market grid a larger gain (0.6) let the level swing with
the noise of a minute's spend, a smaller one (0.25) reacted too slowly to a change of traffic.
The early update bounds what a burst can spend before the controller reacts (about RUSH
intervals of the plan per step) however fast the money goes, e.g. on a first day that starts
at multiplier 1 far above the prices or when traffic jumps; it waits for being ahead of the
plan so that the noise of an interval's spend alone does not set it off.
L0 is where the win rate starts to respond to the multiplier: every win of the interval
cleared at or below w x its base bid, so any multiplier above w bids above all those
clearing prices and changes no outcome; when bids are far above prices the step starts
there instead of walking down through multipliers that change nothing. (Spreading a deficit
over the rest of the day instead of chasing the plan was tried: on the simulator the mean
deviation from the plan grew from 0.5% to 3.0% of the budget, and no more budget was
delivered.) When the observed rate would exhaust the budget before the end of the day while
spend is ahead of the plan, the bid's reason says ``slowing_down``. A new day starts from the
previous day's mean level. ``PACING_MODE_ASAP`` keeps m = p = 1.

**Time.** ``event_time`` (or the server clock) drives days, hours, the controller and
reservation expiry, so a simulator can run a day in seconds. A PaceBid whose event_time is
before the current day counts in the current day; a settlement counts toward the day of its
PaceBid.
"""

from __future__ import annotations

import bisect
import math
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.server.ads.budget import project_to_box
from banditd.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    shown,
)
from banditd.server.ids import check_experiment_id
from banditd.server.settings import Settings
from banditd.storage.v1 import storage_pb2 as st

MICROS = 1_000_000
MAX_MONEY = 1e12  # currency units; in micros still far inside int64
HOURS = 24
GAIN = 0.45  # damping of the multiplicative pace-level update
MIN_CONTROL_BIDS = 20  # bids between multiplier updates (unless 4 intervals passed)
RUSH = 2.0  # an early update once an interval's spend passes RUSH x its plan ...
RUSH_BIDS = 5  # ... over at least this many bids
PRIOR_CONVERSIONS = 5.0  # shrinkage of an hour's conversions per cost to the overall rate
CLOSED_BIDS_KEPT = 20_000  # closed bid ids remembered per campaign (answers retries)
LEDGER_DAYS_KEPT = 8
DEFAULT_CAP_FRACTION = 0.10
MAX_ZONE_NAME = 64
_MUTABLE = ("daily_budget", "max_bid", "bid_cap_fraction", "time_zone", "paused",
            "pacing_mode", "reservation_ttl_seconds", "hourly_weights", "seed")
_OPTIONAL = ("bid_cap_fraction", "reservation_ttl_seconds", "seed")  # unset != 0
_MASK64 = (1 << 64) - 1

# reason text and code of each PaceBid answer
PACED = ("paced", pb.PACE_REASON_PACED)
THROTTLED = ("throttled", pb.PACE_REASON_THROTTLED)
PAUSED = ("paused", pb.PACE_REASON_PAUSED)
EXHAUSTED = ("budget_exhausted", pb.PACE_REASON_BUDGET_EXHAUSTED)
RESERVED = ("budget_reserved", pb.PACE_REASON_BUDGET_RESERVED)
CAPPED = ("capped", pb.PACE_REASON_CAPPED)
ZERO_BASE = ("zero_base_bid", pb.PACE_REASON_ZERO_BASE_BID)
SLOWING = ("slowing_down", pb.PACE_REASON_SLOWING_DOWN)


def coin(seed: int, sequence: int) -> float:
    """The throttling coin of a campaign's bid number ``sequence``: uniform in [0, 1), a
    function of (seed, sequence) only (SplitMix64's output function of seed + (sequence + 1)
    x the golden ratio, a counter-based generator), so a replay draws the same coins."""
    z = (seed + (sequence + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) / 18446744073709551616.0  # 2**64


def _money(value: float, field: str, allow_zero: bool = False) -> int:
    """Validated currency amount -> micros."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) \
            or value > MAX_MONEY:
        bound = "[0" if allow_zero else "(0"
        raise InvalidArgument(f"{field} must be in {bound}, {MAX_MONEY:g}], got {value}",
                              field=field)
    return int(value * MICROS)


def _zone(name: str) -> ZoneInfo:
    if len(name) > MAX_ZONE_NAME:
        raise InvalidArgument(f"time_zone {shown(name)} is not an IANA time zone (names are "
                              f"at most {MAX_ZONE_NAME} characters)", field="time_zone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name the OS rejects
        raise InvalidArgument(f"time_zone {shown(name)} is not an IANA time zone",
                              field="time_zone") from None


def _check_weights(weights: Sequence[float]) -> None:
    if not weights:
        return
    if len(weights) != HOURS:
        raise InvalidArgument(
            f"hourly_weights has {len(weights)} values, expected {HOURS} (one per local "
            "hour) or none", field="hourly_weights")
    for hour, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise InvalidArgument(f"hourly_weights[{hour}] must be finite and >= 0, got {w}",
                                  field=f"hourly_weights[{hour}]")
    if sum(weights) <= 0:
        raise InvalidArgument("hourly_weights are all 0: at least one hour needs a weight",
                              field="hourly_weights")


def initial_plan(config: pb.Campaign) -> np.ndarray:
    """The plan a campaign starts from: its hourly_weights' shares, else 1/24 per hour."""
    if config.hourly_weights:
        weights = np.array(config.hourly_weights, dtype=np.float64)
        return weights / weights.sum()
    return np.full(HOURS, 1.0 / HOURS)


def normalize(config: pb.Campaign, ttl_default: float) -> pb.Campaign:
    """Validate a campaign and fill in defaults; raises InvalidArgument naming the field (its
    path in the request: ``campaign.<field>``)."""
    try:
        return _normalize(config, ttl_default)
    except InvalidArgument as exc:
        exc.field = f"campaign.{exc.field}"
        raise


def _normalize(config: pb.Campaign, ttl_default: float) -> pb.Campaign:
    check_experiment_id(config.campaign_id, "campaign_id")
    _money(config.daily_budget, "daily_budget")
    _money(config.max_bid, "max_bid")
    out = pb.Campaign()
    out.CopyFrom(config)
    if not config.HasField("bid_cap_fraction"):
        out.bid_cap_fraction = DEFAULT_CAP_FRACTION
    elif not (0 < config.bid_cap_fraction <= 1):
        raise InvalidArgument(f"bid_cap_fraction must be in (0, 1], got {config.bid_cap_fraction}",
                              field="bid_cap_fraction")
    out.time_zone = config.time_zone or "UTC"
    _zone(out.time_zone)
    if config.pacing_mode not in pb.PacingMode.values():
        raise InvalidArgument(f"pacing_mode {config.pacing_mode} is not a PacingMode value",
                              field="pacing_mode")
    if config.pacing_mode == pb.PACING_MODE_UNSPECIFIED:
        out.pacing_mode = pb.PACING_MODE_SMOOTH
    if not config.HasField("reservation_ttl_seconds"):
        out.reservation_ttl_seconds = ttl_default
    elif not (0 < config.reservation_ttl_seconds <= 86_400):
        raise InvalidArgument("reservation_ttl_seconds must be in (0, 86400], got "
                              f"{config.reservation_ttl_seconds}", field="reservation_ttl_seconds")
    _check_weights(config.hourly_weights)
    if not config.HasField("seed"):
        out.seed = secrets.randbits(63)
    return out


class _Day:
    """One local day of a campaign: its bounds and the plan spread over its real hours."""

    __slots__ = ("key", "start", "end", "starts", "ends", "slots", "cum", "weights", "_last")

    def __init__(self, local: date, zone: ZoneInfo, plan: np.ndarray) -> None:
        self.key = local.isoformat()
        self.start = datetime(local.year, local.month, local.day, tzinfo=zone).timestamp()
        nxt = local + timedelta(days=1)
        self.end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp()
        starts, slots = [], []
        t = self.start
        while t < self.end:  # real hours: 23 or 25 on DST change days
            starts.append(t)
            slots.append(datetime.fromtimestamp(t + 1, zone).hour)
            t += 3600.0
        self.starts, self.slots = starts, slots
        self.ends = [*starts[1:], self.end]
        self._last = 0  # the segment of the last lookup: most lookups are in the same hour
        counts = np.bincount(slots, minlength=HOURS)
        w = np.array([plan[s] / counts[s] for s in slots])
        total = w.sum()
        weights = w / total if total > 0 else np.full(len(w), 1.0 / len(w))
        self.cum = np.concatenate([[0.0], np.cumsum(weights)])
        self.weights = weights.tolist()  # Python floats: read per bid (the hour cap)

    def segment(self, t: float) -> int:
        i = self._last
        if self.starts[i] <= t < self.ends[i]:
            return i
        i = self._last = min(max(bisect.bisect_right(self.starts, t) - 1, 0),
                             len(self.starts) - 1)
        return i

    def fraction(self, t: float) -> float:
        """Planned cumulative fraction of the day's budget at time t."""
        if t <= self.start:
            return 0.0
        if t >= self.end:
            return 1.0
        i = self.segment(t)
        within = (t - self.starts[i]) / (self.ends[i] - self.starts[i])
        return float(self.cum[i] + self.weights[i] * within)

    def rate(self, t: float) -> float:
        """Planned fraction of the day's budget per second at time t."""
        if t < self.start or t >= self.end:
            return 0.0
        i = self.segment(t)
        return self.weights[i] / (self.ends[i] - self.starts[i])


def learn_plan(plan: np.ndarray, history: np.ndarray, max_shift: float) -> np.ndarray:
    """Next day's plan from the decayed history (24 x [traffic, spend, conversions]).

    Budget follows traffic, tilted towards hours with more conversions per cost, and no
    share moves by more than ``max_shift`` of itself in one day."""
    traffic, spend, conversions = history[:, 0], history[:, 1], history[:, 2]
    if traffic.sum() <= 0:
        return plan
    target = traffic / traffic.sum()
    if spend.sum() > 0 and conversions.sum() > 0:
        overall = conversions.sum() / spend.sum()
        efficiency = (conversions + PRIOR_CONVERSIONS) / (spend + PRIOR_CONVERSIONS / overall)
        target = target * efficiency / overall
        target /= target.sum()
    return project_to_box(target, 1.0, plan * (1 - max_shift), plan * (1 + max_shift))


class Reservation(NamedTuple):
    day: str
    amount: int
    expires: float
    slot: int
    base: int  # the bid's base_bid, micros (0: unknown, older records)


class Campaign:
    """One campaign's configuration and pacing state. Every method validates first and
    either changes state completely or raises having changed nothing."""

    def __init__(self, config: pb.Campaign, settings: Settings, id_prefix: str) -> None:
        self.settings = settings
        self._prefix = id_prefix
        self._issued = 0  # bid ids handed out by this process (see decide_bid)
        self.config = config
        self.plan = initial_plan(config)
        self.history = np.zeros((HOURS, 3))  # decayed past days: traffic, spend µ, conversions
        self.today = np.zeros((HOURS, 3))
        self.days_learned = 0
        self.ledgers: OrderedDict[str, list[int]] = OrderedDict()  # day -> [spent, reserved]
        self.reservations: OrderedDict[str, Reservation] = OrderedDict()
        self.closed: OrderedDict[str, bool] = OrderedDict()  # bid_id -> expired?
        self.multiplier = 1.0
        self.participation = 1.0
        self.multiplier_sum = 0.0  # of levels (multiplier x participation), one per bid
        self.multiplier_count = 0
        self.bids = 0  # PaceBids applied: the throttling coin's sequence number
        self.control_time = 0.0
        self.control_spent = 0
        self.control_bids = 0
        self.control_win = 0.0  # highest clearing cost / base bid of wins since the update
        self._rush: tuple[float, float] | None = None  # (control_time, early-update limit)
        self.interval = settings.pacing_control_interval_seconds
        self.day: _Day | None = None
        self.day_key = ""  # current local day, "" before the first request
        self.configure(config)

    # -- configuration ---------------------------------------------------------------------
    def configure(self, config: pb.Campaign) -> None:
        """Apply a normalised configuration (the day is recomputed on the next request). The
        plan restarts from the campaign's initial plan when it is not learned (EVEN, ASAP)
        or the hourly_weights changed."""
        before = self.config
        self.config = config
        self.campaign_id = config.campaign_id
        self.budget = int(config.daily_budget * MICROS)
        self.max_bid = int(config.max_bid * MICROS)
        self.zone = ZoneInfo(config.time_zone)
        self.seed = config.seed
        # read per bid: kept as plain attributes (a protobuf field read costs more)
        self.paused = config.paused
        self.asap = config.pacing_mode == pb.PACING_MODE_ASAP
        self.cap_fraction = config.bid_cap_fraction
        self.ttl = config.reservation_ttl_seconds
        self.day = None  # bounds recomputed (zone or plan may change) for day_key
        self._rush = None
        if (config.pacing_mode != pb.PACING_MODE_SMOOTH
                or list(before.hourly_weights) != list(config.hourly_weights)):
            self.plan = initial_plan(config)

    # -- time ------------------------------------------------------------------------------
    def _current_day(self) -> _Day | None:
        """The current day's bounds and plan (rebuilt after a reconfiguration or a load)."""
        if self.day is None and self.day_key:
            self.day = _Day(date.fromisoformat(self.day_key), self.zone, self.plan)
        return self.day

    def day_change(self, t: float) -> st.CampaignDay | None:
        """The record that must be applied before an event at time t: a new local day (None
        while t is within the current day). Changes nothing."""
        day = self._current_day()
        if day is not None and t < day.end:
            return None
        local = datetime.fromtimestamp(t, self.zone).date()
        return st.CampaignDay(campaign_id=self.campaign_id, day=local.isoformat(), event_time=t)

    def apply_day(self, record: st.CampaignDay) -> None:
        """Apply a ``campaign_day`` record: learn from the day that ended (if any) and start
        ``record.day``. A day that has begun already is not begun again (replicas: several
        may see the same new day and log it; the first in the shared log's order counts)."""
        if self.day_key and record.day <= self.day_key:  # ISO dates sort as days do
            return
        if self._current_day() is not None:
            self._rollover()
        self.day_key = record.day
        ledger = self._ledger(self.day_key)
        day = self.day = _Day(date.fromisoformat(record.day), self.zone, self.plan)
        self._rush = None
        self.control_time = max(record.event_time, day.start)
        self.control_spent = ledger[0] + ledger[1]
        self.control_bids = 0
        self.control_win = 0.0
        self._expire(self.control_time)

    def _in_day(self, t: float) -> float:
        """t moved up to the current day's start if it is earlier (a late event counts in the
        current day); the current day must cover t (see :meth:`day_change`)."""
        day = self._current_day()
        assert day is not None and t < day.end, "apply the day_change record first"
        return max(t, day.start)

    def _rollover(self) -> None:
        """The day ended: learn the plan from it, start the multiplier from its mean."""
        self.history = self.history * self.settings.pacing_history_decay + self.today
        self.today = np.zeros((HOURS, 3))
        self.days_learned += 1
        if self.config.pacing_mode == pb.PACING_MODE_SMOOTH:
            self.plan = learn_plan(self.plan, self.history, self.settings.pacing_plan_max_shift)
        if self.multiplier_count:
            level = self.multiplier_sum / self.multiplier_count
            floor = self.settings.pacing_min_multiplier
            self.multiplier = max(level, floor)
            self.participation = min(level / floor, 1.0)
        self.multiplier_sum = 0.0
        self.multiplier_count = 0
        while len(self.ledgers) > LEDGER_DAYS_KEPT:
            oldest = next(iter(self.ledgers))
            if self.ledgers[oldest][1]:
                break  # still holds open reservations
            del self.ledgers[oldest]

    def _ledger(self, day: str) -> list[int]:
        ledger = self.ledgers.get(day)
        if ledger is None:
            ledger = self.ledgers[day] = [0, 0]
        return ledger

    def _expire(self, t: float) -> None:
        """Release the reservations that expired by t (part of applying any record at t)."""
        reservations = self.reservations
        while reservations:
            bid_id, r = next(iter(reservations.items()))
            if r.expires > t:
                break
            del reservations[bid_id]
            self.ledgers[r.day][1] -= r.amount
            self._close(bid_id, expired=True)

    def _close(self, bid_id: str, expired: bool) -> None:
        self.closed[bid_id] = expired
        if len(self.closed) > CLOSED_BIDS_KEPT:
            self.closed.popitem(last=False)

    # -- controller ------------------------------------------------------------------------
    def _control(self, t: float, committed: int) -> tuple[float, float, bool, bool]:
        """The controller's step for a bid at t with ``committed`` = spent + reserved (the
        reservations expired by t released): (multiplier, participation rate, whether it
        updated now, whether the budget is projected to run out before the end of the day
        while spend is ahead of the plan). Changes nothing."""
        day = self.day
        assert day is not None
        if self.asap:
            return 1.0, 1.0, False, False
        dt = t - self.control_time
        interval = self.interval
        due = dt >= interval and (self.control_bids + 1 >= MIN_CONTROL_BIDS or dt >= 4 * interval)
        if not due and dt > 0 and self.control_bids + 1 >= RUSH_BIDS:
            due = committed > self._rush_limit(day, interval)
        if not due:
            return self.multiplier, self.participation, False, False
        s = self.settings
        rate = (committed - self.control_spent) / dt
        horizon = max(min(s.pacing_horizon_seconds, day.end - t), 1.0)
        # the plan's rate now, plus the way back to the plan within the horizon
        desired = max(self.budget * day.rate(t)
                      + (self.budget * day.fraction(t) - committed) / horizon, 0.0)
        ratio = (2.0 if desired > 0 else 0.5) if rate <= 0 else desired / rate
        ratio = min(max(ratio, 0.5), 2.0)
        floor = s.pacing_min_multiplier
        level = self.multiplier * self.participation
        if ratio < 1 and self.participation >= 1 and self.control_win > 0:
            level = min(level, max(self.control_win, floor))  # multipliers that change nothing
        level = min(max(level * ratio**GAIN, floor * s.pacing_min_participation), 1.0)
        m = max(level, floor)
        ahead = committed > self.budget * day.fraction(t)
        slowing = bool(ahead and rate > 0 and t + (self.budget - committed) / rate < day.end)
        return m, min(level / m, 1.0), True, slowing

    def _rush_limit(self, day: _Day, interval: float) -> float:
        """Committed spend above which the controller updates early: more than RUSH
        intervals' worth of the plan spent since the last update, and ahead of the plan for
        the end of the next interval. A function of the last update, cached (not state)."""
        t = self.control_time
        if self._rush is None or self._rush[0] != t:
            end = self.budget * day.fraction(t + interval)
            burst = self.control_spent + RUSH * (end - self.budget * day.fraction(t))
            self._rush = (t, max(burst, self.budget * day.fraction(t + 2 * interval)))
        return self._rush[1]

    def _committed(self, t: float) -> int:
        """spent + reserved of the current day once the reservations expired by t are gone."""
        spent, reserved = self.ledgers[self.day_key]
        for r in self.reservations.values():  # in expiry order
            if r.expires > t:
                break
            if r.day == self.day_key:
                reserved -= r.amount
        return spent + reserved

    # -- requests --------------------------------------------------------------------------
    def decide_bid(self, base_bid: float, t: float) -> tuple[st.WalRecord, pb.PaceBidResponse]:
        """One auction at event time t: its ``pace`` record (applied by :meth:`apply_pace`)
        and the answer. The current day must cover t (see :meth:`day_change`). Changes
        nothing."""
        if not 0.0 <= base_bid <= MAX_MONEY:  # NaN compares false
            raise InvalidArgument(f"base_bid must be in [0, {MAX_MONEY:g}], got {base_bid}",
                                  field="base_bid")
        t = self._in_day(t)
        day = self.day
        assert day is not None
        segment = day.segment(t)
        record = st.WalRecord()
        event = record.pace  # filled in place: building it apart and copying it in costs more
        event.campaign_id = self.campaign_id
        event.event_time = t
        event.slot = day.slots[segment]
        if self.paused:
            event.multiplier = self.multiplier
            if self.participation < 1.0:
                event.participation = self.participation
            return record, _answer(0, 0.0, self.participation, PAUSED)
        committed = self._committed(t)
        m, p, control, slowing = self._control(t, committed)
        event.multiplier = m
        if control:
            event.control = True
        if p < 1.0:  # unset (0) reads as 1
            event.participation = p
        if base_bid == 0:
            return record, _answer(0, m, p, ZERO_BASE)
        available = self.budget - committed
        if available <= 0:
            spent = self.ledgers[self.day_key][0]
            return record, _answer(0, m, p, EXHAUSTED if spent >= self.budget else RESERVED)
        if p < 1.0 and coin(self.seed, self.bids) >= p:
            event.throttled = True
            return record, _answer(0, m, p, THROTTLED)
        wanted = int(base_bid * m * MICROS)
        hour_cap = int(self.cap_fraction * self.budget * day.weights[segment])
        amount = min(wanted, self.max_bid, hour_cap, available)
        if amount <= 0:
            return record, _answer(0, m, p, CAPPED)
        # A bid id is unique when it is made, before its record is applied (replicas apply
        # it later, in the shared log's order): this process's prefix and its own counter.
        self._issued += 1
        bid_id = f"{self._prefix}-{self._issued:x}"
        event.bid_id = bid_id
        event.amount_micros = amount
        event.base_micros = int(base_bid * MICROS)
        event.expires = t + self.ttl
        reason = CAPPED if amount < wanted else (SLOWING if slowing else PACED)
        return record, _answer(amount, m, p, reason, bid_id)

    def apply_pace(self, event: st.PaceEvent) -> int:
        """Apply a ``pace`` record: the reservations expired by its time released, the bid
        counted as the hour's traffic (and in the coin's sequence), the controller's step
        taken and the bid reserved.

        The reservation is checked again here against ``budget - spent - reserved`` and cut
        to what is left (nothing, when nothing is: the bid is then 0), and a campaign paused
        by then reserves nothing. On a single server the bid was decided in the same step
        and is never cut; replicas apply every replica's bids in one order, so this check is
        what keeps their sum within the budget. Returns the micros reserved."""
        t = event.event_time
        slot = event.slot
        self._expire(t)
        self.today[slot, 0] += 1
        self.bids += 1
        if self.paused:
            return 0
        ledger = self._ledger(self.day_key)
        if event.control:
            self.control_time, self.control_spent, self.control_bids = t, sum(ledger), 0
            self.control_win = 0.0
        else:
            self.control_bids += 1
        m = self.multiplier = event.multiplier
        p = self.participation = event.participation or 1.0  # 0: older record, no throttling
        self.multiplier_sum += m * p
        self.multiplier_count += 1
        amount = event.amount_micros
        if not amount:
            return 0
        bid_id = event.bid_id
        if bid_id in self.reservations or bid_id in self.closed:
            return 0
        amount = min(amount, max(self.budget - ledger[0] - ledger[1], 0))
        if amount:
            self.reservations[bid_id] = Reservation(self.day_key, amount, event.expires, slot,
                                                    event.base_micros)
            ledger[1] += amount
        return amount

    def check_settlement(self, bid_id: str, won: bool, cost: float, conversions: float,
                         t: float) -> st.SpendSettlement | pb.RecordSpendResponse:
        """RecordSpend at event time t: its record (applied by :meth:`apply_settlement`), or
        the answer to a retry of a settled bid. The current day must cover t. Changes
        nothing."""
        if not bid_id:
            raise InvalidArgument("bid_id is required", field="bid_id")
        cost_micros = _money(cost, "cost", allow_zero=True) if won else 0
        if not math.isfinite(conversions) or conversions < 0 or conversions > MAX_MONEY:
            raise InvalidArgument(f"conversions must be in [0, {MAX_MONEY:g}], got {conversions}",
                                  field="conversions")
        reservation = self.reservations.get(bid_id)
        if reservation is None:
            expired = self.closed.get(bid_id)
            if expired is False:
                return pb.RecordSpendResponse(duplicate=True)
            if expired:
                raise self._expired(bid_id)
            raise NotFound(f"bid {shown(bid_id)} not found in campaign '{self.campaign_id}'")
        t = self._in_day(t)
        if reservation.expires <= t:  # expired by this very event time
            raise self._expired(bid_id)
        return st.SpendSettlement(
            campaign_id=self.campaign_id, bid_id=bid_id, won=won,
            charged_micros=min(cost_micros, reservation.amount) if won else 0,
            conversions=conversions if won else 0.0, event_time=t)

    def _expired(self, bid_id: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"the reservation of bid '{bid_id}' expired after "
            f"{self.config.reservation_ttl_seconds:g} s (reservation_ttl_seconds); "
            "its spend was not recorded")

    def apply_settlement(self, s: st.SpendSettlement) -> bool:
        """Apply a ``spend`` record: the reservations expired by its time released, then its
        bid's reservation settled (charged at most what it reserved, or released for a
        loss). Returns False when there was nothing to settle any more: the bid was settled
        already (replicas: a retry of the same bid checked on two replicas at once; the
        first in the shared log's order counts), or (older logs) its reservation is gone;
        :class:`FailedPrecondition` when it expired by then."""
        self._expire(s.event_time)
        r = self.reservations.pop(s.bid_id, None)
        if r is None:
            if self.closed.get(s.bid_id):
                raise self._expired(s.bid_id)
            return False
        charged = min(s.charged_micros, r.amount)
        ledger = self.ledgers[r.day]
        ledger[1] -= r.amount
        ledger[0] += charged
        if r.day == self.day_key:
            self.today[r.slot, 1] += charged
            self.today[r.slot, 2] += s.conversions
            if s.won and r.base > 0:
                self.control_win = max(self.control_win, s.charged_micros / r.base)
        self._close(s.bid_id, expired=False)
        return True

    def status(self, t: float) -> pb.PacingStatus:
        """The pacing status as of event time t. For a t in the current day or later, the
        day_change record must be applied first. Changes nothing."""
        day = self._current_day()
        if day is not None and t < day.start:  # an earlier day: its ledger
            day_key = datetime.fromtimestamp(t, self.zone).date().isoformat()
            spent, reserved = self.ledgers.get(day_key, [0, 0])
            planned = 0.0
            expiring = []
        else:
            t = self._in_day(t)
            day_key = self.day_key
            spent, reserved = self.ledgers[day_key]
            planned = self.budget * self.day.fraction(t) / MICROS  # type: ignore[union-attr]
            expiring = [r for r in self.reservations.values() if r.expires <= t]
        open_ = [r for r in self.reservations.values() if r.day == day_key]
        reserved -= sum(r.amount for r in expiring if r.day == day_key)
        return pb.PacingStatus(
            campaign_id=self.campaign_id, spent=spent / MICROS, reserved=reserved / MICROS,
            remaining=max(self.budget - spent - reserved, 0) / MICROS,
            utilization=spent / self.budget, pacing_multiplier=self.multiplier, day=day_key,
            participation_rate=self.participation,
            hourly_plan=self.plan.tolist(), planned_spend=planned,
            open_reservations=len(open_) - sum(1 for r in expiring if r.day == day_key),
            campaign=self.config, days_learned=self.days_learned)

    # -- older logs ------------------------------------------------------------------------
    def apply_reservation(self, r: st.BidReservation) -> None:
        """Apply a ``reservation`` record of an older log (its day begun as it did then)."""
        day = self.day_change(r.event_time)
        if day is not None:
            self.apply_day(day)
        self._expire(r.event_time)
        self.reservations[r.bid_id] = Reservation(r.day, r.amount_micros, r.expires, r.slot,
                                                  r.base_micros)
        self._ledger(r.day)[1] += r.amount_micros
        if r.day == self.day_key:
            self.today[r.slot, 0] += 1
        self.multiplier = r.multiplier

    # -- snapshot --------------------------------------------------------------------------
    def to_proto(self) -> st.CampaignState:
        return st.CampaignState(
            config=self.config, day=self.day_key, plan=self.plan.tolist(),
            history=self.history.ravel().tolist(), today=self.today.ravel().tolist(),
            multiplier=self.multiplier, control_time=self.control_time,
            control_spent=self.control_spent, control_bids=self.control_bids,
            ledgers=[st.DayLedger(day=d, spent_micros=s, reserved_micros=r)
                     for d, (s, r) in self.ledgers.items()],
            reservations=[st.BidReservation(campaign_id=self.campaign_id, bid_id=b, day=r.day,
                                            amount_micros=r.amount, expires=r.expires,
                                            slot=r.slot, base_micros=r.base)
                          for b, r in self.reservations.items()],
            closed=[st.ClosedBid(bid_id=b, expired=e) for b, e in self.closed.items()],
            days_learned=self.days_learned, multiplier_sum=self.multiplier_sum,
            multiplier_count=self.multiplier_count, participation=self.participation,
            bids=self.bids, control_win_threshold=self.control_win)

    def load(self, state: st.CampaignState) -> None:
        self.configure(state.config)
        self.day_key = state.day
        self.day = None
        self.plan = np.array(state.plan, dtype=np.float64)
        self.history = np.array(state.history, dtype=np.float64).reshape(HOURS, 3)
        self.today = np.array(state.today, dtype=np.float64).reshape(HOURS, 3)
        self.multiplier = state.multiplier
        self.control_time, self.control_spent = state.control_time, state.control_spent
        self.control_bids = state.control_bids
        self.ledgers = OrderedDict((x.day, [x.spent_micros, x.reserved_micros])
                                   for x in state.ledgers)
        self.reservations = OrderedDict(
            (r.bid_id, Reservation(r.day, r.amount_micros, r.expires, r.slot, r.base_micros))
            for r in state.reservations)
        self.closed = OrderedDict((c.bid_id, c.expired) for c in state.closed)
        self.days_learned = state.days_learned
        self.multiplier_sum, self.multiplier_count = state.multiplier_sum, state.multiplier_count
        self.participation = state.participation or 1.0  # 0: an older snapshot
        self.bids, self.control_win = state.bids, state.control_win_threshold


def _answer(amount: int, multiplier: float, participation: float,
            reason: tuple[str, pb.PaceReason],
            bid_id: str = "") -> pb.PaceBidResponse:
    return pb.PaceBidResponse(bid=amount / MICROS, pacing_multiplier=multiplier, bid_id=bid_id,
                              reason=reason[0], reason_code=reason[1],
                              participation_rate=participation)


class CampaignRegistry:
    """campaign_id -> Campaign, with the campaign limit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._campaigns: dict[str, Campaign] = {}
        # Bid ids: a per-process prefix (unique across restarts) + a per-campaign counter.
        self._prefix = secrets.token_hex(4)

    def __len__(self) -> int:
        return len(self._campaigns)

    def campaigns(self) -> list[Campaign]:
        return list(self._campaigns.values())

    def clear(self) -> None:
        self._campaigns.clear()

    def adopt(self, other: CampaignRegistry) -> None:
        """Take over ``other``'s campaigns (see :meth:`StateMachine.adopt`)."""
        self._campaigns = other._campaigns

    def get(self, campaign_id: str) -> Campaign:
        campaign = self._campaigns.get(campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {shown(campaign_id)} not found")
        return campaign

    def check_create(self, config: pb.Campaign) -> pb.Campaign:
        """Validate a new campaign; its record: the configuration with defaults filled in.
        Changes nothing."""
        normalized = normalize(config, self.settings.pacing_reservation_ttl_seconds)
        if normalized.campaign_id in self._campaigns:
            raise AlreadyExists(f"campaign '{normalized.campaign_id}' already exists")
        if len(self._campaigns) >= self.settings.max_campaigns:
            raise ResourceExhausted(
                f"the server holds {len(self._campaigns)} campaigns, the limit is "
                f"{self.settings.max_campaigns} (max_campaigns)")
        return normalized

    def check_update(self, config: pb.Campaign, paths: list[str] | None) -> pb.Campaign:
        """Validate a change (``paths``: the update mask's, None = replace all); its record:
        the whole new configuration. Changes nothing."""
        campaign = self.get(config.campaign_id)
        merged = pb.Campaign()
        merged.CopyFrom(campaign.config)
        if paths is None:
            merged.CopyFrom(config)
        else:
            if not paths:
                raise InvalidArgument("update_mask has no paths", field="update_mask")
            for path in paths:
                if path == "campaign_id":
                    raise InvalidArgument("update_mask: campaign_id cannot change",
                                          field="update_mask")
                if path not in _MUTABLE:
                    raise InvalidArgument(
                        f"update_mask: unknown field {path!r} (one of {', '.join(_MUTABLE)})",
                        field="update_mask")
                if path == "hourly_weights":
                    del merged.hourly_weights[:]
                    merged.hourly_weights.extend(config.hourly_weights)
                elif config.HasField(path) if path in _OPTIONAL else True:
                    setattr(merged, path, getattr(config, path))
                else:
                    merged.ClearField(path)
        return normalize(merged, self.settings.pacing_reservation_ttl_seconds)

    def apply_create(self, config: pb.Campaign) -> Campaign:
        """Apply a ``create_campaign`` record (a configuration from :meth:`check_create`):
        :class:`AlreadyExists`, changing nothing, if the campaign exists by then."""
        if config.campaign_id in self._campaigns:
            raise AlreadyExists(f"campaign '{config.campaign_id}' already exists")
        return self.apply_config(config)

    def apply_config(self, config: pb.Campaign) -> Campaign:
        """Apply a ``campaign`` record: reconfigure the campaign (a normalised configuration
        from :meth:`check_update`), or create it (older logs, which created campaigns with
        this record too)."""
        campaign = self._campaigns.get(config.campaign_id)
        if campaign is None:
            campaign = self._campaigns[config.campaign_id] = Campaign(
                config, self.settings, f"{self._prefix}{len(self._campaigns):x}")
        else:
            campaign.configure(config)
        return campaign

    def load(self, state: st.CampaignState) -> None:
        """Apply a ``campaign_state`` record (snapshots, older logs): the whole state."""
        self.apply_config(state.config).load(state)

    def campaign_of(self, record) -> Campaign:
        """The campaign a pacing record (campaign_day, pace, spend, reservation) belongs to."""
        return self.get(record.campaign_id)
