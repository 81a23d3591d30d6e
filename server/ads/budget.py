"""AllocateBudget: split a total budget across ad groups. A pure computation.

Strategy scores -> shares -> amounts inside the per-group [min, max] box that sum exactly
to the total, in integer cents:

1. Scores (higher = more budget), from each group's metrics:
   - EQUAL: 1 for every group.
   - ROAS_OPTIMIZED: ROAS = revenue / spend (the ``roas`` field when spend is 0).
   - CPA_OPTIMIZED: 1 / CPA = conversions / spend.
   - PERFORMANCE_BASED: 0.5 x ROAS / mean ROAS + 0.25 x CTR / mean CTR
     + 0.25 x CVR / mean CVR (CTR = clicks / impressions, CVR = conversions / clicks, or the
     ``ctr`` / ``conversion_rate`` fields when the denominator is 0). A term whose mean is 0
     is dropped and the weights renormalised.
   - THOMPSON: the probability that the group's conversion-rate posterior
     Beta(1 + conversions, 1 + clicks - conversions) is the best (Monte-Carlo, seeded).
   Missing metrics are explicit, not accidental: a group whose metric cannot be computed
   (no spend, no impressions, no clicks and no derived field) gets the mean of that metric
   over the groups that have it — a new group is treated as an average performer. If no
   group has the metric, every group scores the same on it. Shares = score / sum of scores
   (equal shares when every score is 0).
2. Projection: amount_i = clip(lambda x share_i x total, min, max) with lambda >= 0 solved
   exactly (the sum is piecewise linear in lambda) so that the amounts sum to the total.
   Scaling (not shifting) keeps the proportions of the groups inside the box, and the order
   of the groups by score. Groups whose share is 0 stay at min unless the others all reach
   max.
3. Cents: amounts are floored to integer cents and the missing cents go one by one to the
   groups with the largest remainders (ties: higher score, then request order) that still
   have room below max, so the sum equals round(total x 100) cents exactly.

Infeasible bounds (min > max, groups x min > total, groups x max < total) are
INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.allocation import prob_best_beta
from banditd.kernels.rng import seed_state
from banditd.server.errors import InvalidArgument, ResourceExhausted

MAX_GROUPS = 10_000
MAX_DRAWS = 1_000_000
MAX_MONEY = 1e13  # currency units: exact in integer cents within int64 and float64
_METRIC_FIELDS = ("spend", "impressions", "clicks", "conversions", "revenue", "roas", "ctr",
                  "conversion_rate")


@dataclass(frozen=True)
class BudgetSplit:
    ids: list[str]
    amounts: list[float]  # currency units, whole cents
    shares: np.ndarray


def _column(groups, name: str) -> np.ndarray:
    return np.array([getattr(g, name) for g in groups], dtype=np.float64)


def _validate(request: pb.AllocateBudgetRequest) -> None:
    total = request.total_budget
    if not math.isfinite(total) or total <= 0 or total > MAX_MONEY:
        raise InvalidArgument(f"total_budget must be in (0, {MAX_MONEY:g}], got {total}",
                              field="total_budget")
    if round(total * 100) == 0:
        raise InvalidArgument(f"total_budget {total} is less than half a cent",
                              field="total_budget")
    n = len(request.ad_groups)
    if n == 0:
        raise InvalidArgument("ad_groups is empty", field="ad_groups")
    if n > MAX_GROUPS:
        raise ResourceExhausted(f"ad_groups has {n} groups, the limit is {MAX_GROUPS}")
    seen: set[str] = set()
    for i, g in enumerate(request.ad_groups):
        if not g.id:
            raise InvalidArgument(f"ad_groups[{i}].id is empty", field=f"ad_groups[{i}].id")
        if g.id in seen:
            raise InvalidArgument(f"ad_groups[{i}].id: duplicate id '{g.id}'",
                                  field=f"ad_groups[{i}].id")
        seen.add(g.id)
        for name in _METRIC_FIELDS:
            value = getattr(g, name)
            if not math.isfinite(value) or value < 0 or value > MAX_MONEY:
                raise InvalidArgument(
                    f"ad_groups[{i}].{name} must be in [0, {MAX_MONEY:g}], got {value}",
                    field=f"ad_groups[{i}].{name}"
                )
        for name in ("ctr", "conversion_rate"):
            if getattr(g, name) > 1:
                value = getattr(g, name)
                raise InvalidArgument(f"ad_groups[{i}].{name} must be <= 1, got {value}",
                                      field=f"ad_groups[{i}].{name}")
        if g.impressions > 0 and g.clicks > g.impressions:
            raise InvalidArgument(
                f"ad_groups[{i}]: clicks ({g.clicks}) exceed impressions ({g.impressions})",
                field=f"ad_groups[{i}].clicks"
            )


# A spend, impression or click count below this is no denominator (a ratio over 1e-310
# overflows to inf, and inf / inf made NaN shares): the group's ratio field, or the mean.
_MIN_DENOMINATOR = 1e-9


def _ratio(num: np.ndarray, den: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """num / den where den is one (> _MIN_DENOMINATOR), else the fallback field where > 0,
    else NaN (missing)."""
    out = np.full(num.shape, np.nan)
    has = den > _MIN_DENOMINATOR
    out[has] = num[has] / den[has]
    use_field = ~has & (fallback > 0)
    out[use_field] = fallback[use_field]
    return out


def _impute(metric: np.ndarray) -> np.ndarray:
    """Missing (NaN) -> mean of the present values; all missing -> ones (no information)."""
    present = ~np.isnan(metric)
    if not present.any():
        return np.ones_like(metric)
    filled = metric.copy()
    filled[~present] = metric[present].mean()
    return filled


def strategy_scores(request: pb.AllocateBudgetRequest, max_samples: int = 20_000_000) -> np.ndarray:
    """Per-group scores of the request's strategy (see the module docstring)."""
    groups = request.ad_groups
    spend, impressions, clicks, conversions, revenue = (
        _column(groups, f) for f in ("spend", "impressions", "clicks", "conversions", "revenue")
    )
    strategy = request.strategy
    if strategy == pb.ALLOCATION_STRATEGY_EQUAL:
        return np.ones(len(groups))
    if strategy == pb.ALLOCATION_STRATEGY_ROAS_OPTIMIZED:
        return _impute(_ratio(revenue, spend, _column(groups, "roas")))
    if strategy == pb.ALLOCATION_STRATEGY_CPA_OPTIMIZED:
        return _impute(_ratio(conversions, spend, np.zeros(len(groups))))
    if strategy == pb.ALLOCATION_STRATEGY_PERFORMANCE_BASED:
        terms = (
            (0.5, _impute(_ratio(revenue, spend, _column(groups, "roas")))),
            (0.25, _impute(_ratio(clicks, impressions, _column(groups, "ctr")))),
            (0.25, _impute(_ratio(conversions, clicks, _column(groups, "conversion_rate")))),
        )
        score = np.zeros(len(groups))
        weight = 0.0
        for w, metric in terms:
            mean = metric.mean()
            if mean > 0:
                score += w * metric / mean
                weight += w
        return score / weight if weight > 0 else np.ones(len(groups))
    if strategy == pb.ALLOCATION_STRATEGY_THOMPSON:
        bad = np.flatnonzero(conversions > clicks)
        if bad.size:
            i = int(bad[0])
            raise InvalidArgument(
                f"ad_groups[{i}]: conversions ({conversions[i]}) exceed clicks ({clicks[i]}); "
                "the THOMPSON strategy models conversions per click",
                field=f"ad_groups[{i}].conversions"
            )
        draws = request.num_draws if request.HasField("num_draws") else 10_000
        if not 1 <= draws <= MAX_DRAWS:
            raise InvalidArgument(f"num_draws must be in [1, {MAX_DRAWS}], got {draws}",
                                  field="num_draws")
        if draws * len(groups) > max_samples:
            raise ResourceExhausted(
                f"num_draws ({draws}) x ad groups ({len(groups)}) exceeds the server's limit of "
                f"{max_samples:,} Monte-Carlo samples per request"
            )
        seed = request.seed if request.HasField("seed") else 0
        a, b = 1.0 + conversions, 1.0 + clicks - conversions
        return prob_best_beta(a, b, draws, seed_state(seed))
    raise InvalidArgument(
        "strategy must be one of ALLOCATION_STRATEGY_EQUAL, _PERFORMANCE_BASED, _ROAS_OPTIMIZED, "
        f"_CPA_OPTIMIZED, _THOMPSON; got {strategy}", field="strategy"
    )


# Shares below this fraction of the largest count as 0: every breakpoint of the projection
# stays finite (shares 1e300 apart overflowed it and broke the sum).
_NEGLIGIBLE_SHARE = 1e-250


def project_to_box(shares: np.ndarray, total: float, lo, hi) -> np.ndarray:
    """clip(lambda * shares * total, lo, hi) summing to total (see the module docstring);
    ``lo`` and ``hi`` are scalars or per-element arrays."""
    n = shares.shape[0]
    top = float(shares.max()) if n else 0.0
    positive = shares > top * _NEGLIGIBLE_SHARE if top > 0 else np.zeros(n, dtype=bool)
    if not positive.any():  # no preference: equal shares, still inside the box
        shares, top = np.ones(n), 1.0
        positive = shares > 0
    lo_all = np.broadcast_to(np.asarray(lo, dtype=np.float64), shares.shape)
    hi_all = np.broadcast_to(np.asarray(hi, dtype=np.float64), shares.shape)
    # If the positive-share groups cannot absorb the total even at max, they get max and
    # the zero-share groups split the rest equally, each inside its own box.
    ceiling = np.where(positive, hi_all, lo_all)
    if float(ceiling.sum()) <= total:
        rest = total - float(ceiling.sum())
        idle = ~positive
        if rest > 0 and idle.any():
            ceiling[idle] = project_to_box(np.ones(int(idle.sum())),
                                           rest + float(lo_all[idle].sum()),
                                           lo_all[idle], hi_all[idle])
        return ceiling
    if total <= float(lo_all.sum()):
        return np.array(lo_all, dtype=np.float64)  # every group at lo
    # Solved in units of the total with shares relative to the largest (no amount exceeds
    # the total), so every breakpoint below is at most 1 / _NEGLIGIBLE_SHARE.
    # spent(lam) = sum(clip(lam * share, lo, hi)) is continuous, non-decreasing and linear
    # between the breakpoints lo/share and hi/share of the positive-share groups. A binary
    # search over the sorted breakpoints (spent evaluated directly: running sums of slopes
    # cancel badly when shares span many orders of magnitude) finds the piece where it
    # reaches the total; on that piece every group is at lo, at hi or at lam * share, and
    # the total gives lam (exact, unlike a bisection of lam, and a few steps instead of
    # hundreds).
    unit = np.where(positive, shares / top, 0.0)
    lo_u = lo_all / total
    hi_u = np.minimum(hi_all, total) / total
    t, lo_p, hi_p = unit[positive], lo_u[positive], hi_u[positive]
    idle_floor = float(lo_u[~positive].sum())
    lower, upper = lo_p / t, hi_p / t
    at = np.sort(np.concatenate((lower, upper)))

    def spent(lam: float) -> float:
        return idle_floor + float(np.clip(lam * t, lo_p, hi_p).sum())

    # spent(at[0]) is the sum of lo, below 1; spent(at[-1]) is ceiling.sum(), above
    first, last = 1, len(at) - 1
    while first < last:
        mid = (first + last) // 2
        if spent(at[mid]) >= 1.0:
            last = mid
        else:
            first = mid + 1
    start, end = at[first - 1], at[first]
    middle = 0.5 * start + 0.5 * end
    linear = (lower <= middle) & (middle < upper)
    fixed = idle_floor + float(lo_p[middle < lower].sum()) + float(hi_p[upper <= middle].sum())
    rate = float(t[linear].sum())
    lam = (1.0 - fixed) / rate if rate > 0 else end
    amounts = np.clip(min(max(lam, start), end) * unit, lo_u, hi_u) * total
    return np.clip(amounts, lo_all, hi_all)


def round_to_units(
    amounts: np.ndarray, scores: np.ndarray, total_c: int, lo_c: int, hi_c: int
) -> np.ndarray:
    """Hundredths (cents, or 0.01 %) summing exactly to ``total_c`` within [lo_c, hi_c]."""
    scaled = amounts * 100.0
    cents = np.clip(np.floor(scaled + 1e-7).astype(np.int64), lo_c, hi_c)
    remainder = scaled - cents
    n = cents.shape[0]
    # Give missing cents to the largest remainders first (ties: higher score, then order).
    give = sorted(range(n), key=lambda i: (-remainder[i], -scores[i], i))
    diff = total_c - int(cents.sum())
    if abs(diff) > 2 * n + 2:  # flooring loses < 1 cent per group: anything else is a bug
        raise AssertionError(f"rounding is off by {diff} units for {n} groups")
    while diff > 0:
        moved = False
        for i in give:
            if diff == 0:
                break
            if cents[i] < hi_c:
                cents[i] += 1
                diff -= 1
                moved = True
        if not moved:
            break
    while diff < 0:
        moved = False
        for i in reversed(give):
            if diff == 0:
                break
            if cents[i] > lo_c:
                cents[i] -= 1
                diff += 1
                moved = True
        if not moved:
            break
    return cents


def allocate_budget(
    request: pb.AllocateBudgetRequest, default_min: float, default_max: float,
    max_samples: int = 20_000_000,
) -> BudgetSplit:
    """Validate the request and split its budget (amounts in currency units, whole cents)."""
    _validate(request)
    lo = request.min_allocation if request.HasField("min_allocation") else default_min
    hi = request.max_allocation if request.HasField("max_allocation") else default_max
    for name, value in (("min_allocation", lo), ("max_allocation", hi)):
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"{name} must be finite and >= 0, got {value}", field=name)
    hi = min(hi, request.total_budget)  # no group can get more than the total anyway
    if lo > hi:
        raise InvalidArgument(f"min_allocation ({lo}) is above max_allocation ({hi})",
                              field="min_allocation")
    n = len(request.ad_groups)
    total_c = round(request.total_budget * 100)
    lo_c = math.ceil(lo * 100 - 1e-7)
    hi_c = math.floor(hi * 100 + 1e-7)
    if n * lo_c > total_c:
        raise InvalidArgument(
            f"infeasible bounds: {n} groups x min_allocation {lo} = {n * lo_c / 100:.2f} "
            f"exceeds total_budget {total_c / 100:.2f}", field="min_allocation"
        )
    if n * hi_c < total_c:
        raise InvalidArgument(
            f"infeasible bounds: {n} groups x max_allocation {hi} = {n * hi_c / 100:.2f} "
            f"is below total_budget {total_c / 100:.2f}", field="max_allocation"
        )
    scores = strategy_scores(request, max_samples)
    total_score = float(scores.sum())
    shares = scores / total_score if total_score > 0 else np.full(n, 1.0 / n)
    amounts = project_to_box(shares, total_c / 100.0, lo_c / 100.0, hi_c / 100.0)
    cents = round_to_units(amounts, scores, total_c, lo_c, hi_c)
    return BudgetSplit(
        ids=[g.id for g in request.ad_groups],
        amounts=[int(c) / 100.0 for c in cents],
        shares=shares,
    )
