"""Analyst questions about an experiment: metrics ingestion, allocation, per-arm statistics.

Traffic allocation is the probability that each arm is best under the experiment's current
posterior (Monte-Carlo in a compiled kernel, :mod:`kernels.allocation`), with an optional
floor, rounded to hundredths of a percent that sum to exactly 100.00.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

import numpy as np

from banditd.decision.v1 import decision_pb2 as pb
from banditd.kernels.allocation import prob_best_beta, prob_best_value
from banditd.kernels.rng import seed_state
from banditd.server.ads.budget import project_to_box, round_to_units
from banditd.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    shown,
)
from banditd.server.state.experiment import Experiment

DEFAULT_DRAWS = 10_000
MAX_DRAWS = 1_000_000
STATS_DRAW_BUDGET = 1_000_000  # GetArmStats: draws x arms at most (10,000 draws up to 100 arms)
MAX_PERIOD_LENGTH = 64


def check_ingest(experiment: Experiment, request: pb.IngestMetricsRequest,
                 max_periods: int) -> None:
    """Validate an IngestMetrics request (its record is the request itself; applied by
    :meth:`ExperimentRegistry.apply_ingest`); ``max_periods``: periods an arm may hold.
    Changes nothing."""
    if experiment.spec.contextual:
        raise FailedPrecondition(
            f"experiment '{experiment.experiment_id}' is contextual ({experiment.spec.kind}): "
            "aggregated metrics carry no context, send rewards with their context instead"
        )
    if experiment.discount < 1.0:
        raise FailedPrecondition(
            f"experiment '{experiment.experiment_id}' discounts old data (discount "
            f"{experiment.discount}): a period's contribution cannot be replaced exactly"
        )
    period = request.period
    if not period or len(period) > MAX_PERIOD_LENGTH:
        raise InvalidArgument(f"period must be 1-{MAX_PERIOD_LENGTH} characters, got {period!r}",
                              field="period")
    if not request.metrics:
        raise InvalidArgument("metrics is empty", field="metrics")
    seen: set[str] = set()
    for i, m in enumerate(request.metrics):
        field = f"metrics[{i}]"
        arm = experiment.arm_index.get(m.arm_id)
        if arm is None:
            raise NotFound(
                f"{field}: arm {shown(m.arm_id)} not found in experiment "
                f"'{experiment.experiment_id}'"
            )
        if m.arm_id in seen:
            raise InvalidArgument(f"{field}: duplicate arm id '{m.arm_id}'",
                                  field=f"{field}.arm_id")
        seen.add(m.arm_id)
        for name in ("trials", "successes", "value"):
            value = getattr(m, name)
            if not math.isfinite(value) or value < 0 or value > experiment.max_abs:
                raise InvalidArgument(
                    f"{field}.{name} must be in [0, {experiment.max_abs:g}], got {value}",
                    field=f"{field}.{name}"
                )
        if m.successes > m.trials:
            raise InvalidArgument(
                f"{field}: successes ({m.successes}) exceed trials ({m.trials})",
                field=f"{field}.successes"
            )
        held = experiment.period_counts.get(m.arm_id, 0)
        if held >= max_periods and m.arm_id not in experiment.periods.get(period, ()):
            raise ResourceExhausted(
                f"{field}: arm {shown(m.arm_id)} holds {held} ingested periods, the limit is "
                f"{max_periods} (max_ingest_periods); re-send an existing period to replace it")


def next_period(periods) -> str:
    """The day after the latest period that is a date (YYYY-MM-DD); '' if none is."""
    latest = None
    for key in periods:
        try:
            day = dt.date.fromisoformat(key)
        except ValueError:
            continue
        if len(key) == 10 and (latest is None or day > latest):
            latest = day
    return (latest + dt.timedelta(days=1)).isoformat() if latest else ""


def posterior_copy(experiment: Experiment) -> dict[str, np.ndarray]:
    """The policy's per-arm posterior figures (``kernel.summary``), as fresh arrays."""
    binary = experiment.reward_type == pb.REWARD_TYPE_BINARY
    post = experiment.spec.kernel.summary(state=experiment.state, params=experiment.spec.params,
                                          binary=binary)
    return {name: np.array(values, dtype=np.float64) for name, values in post.items()}


def probability_best_job(
    post: dict[str, np.ndarray], draws: int, seed: int
) -> Callable[[], np.ndarray] | None:
    """P(arm is best) under ``post`` (from :func:`posterior_copy`), as a job that may run off
    the event loop (the compiled Monte-Carlo releases the GIL), or None when the policy has
    no posterior. The draws use their own seeded stream, so statistics
    never perturb the experiment's decisions."""
    if "value_posterior_shape" in post:
        return lambda: prob_best_value(
            post["posterior_alpha"], post["posterior_beta"], post["value_posterior_shape"],
            post["value_posterior_rate"], draws, seed_state(seed),
        )
    if "posterior_alpha" in post:
        return lambda: prob_best_beta(
            post["posterior_alpha"], post["posterior_beta"], draws, seed_state(seed)
        )
    return None


def allocation_job(
    experiment: Experiment, request: pb.GetAllocationRequest, max_samples: int = 20_000_000
) -> Callable[[], pb.GetAllocationResponse]:
    """Validate now; the returned job computes the allocation (safe off the event loop)."""
    draws = request.num_draws if request.HasField("num_draws") else DEFAULT_DRAWS
    if not 1 <= draws <= MAX_DRAWS:
        raise InvalidArgument(f"num_draws must be in [1, {MAX_DRAWS}], got {draws}",
                              field="num_draws")
    k = experiment.num_arms
    if draws * k > max_samples:
        raise ResourceExhausted(
            f"num_draws ({draws}) x arms ({k}) exceeds the server's limit of {max_samples:,} "
            "Monte-Carlo samples per request"
        )
    floor = request.min_percentage
    if not math.isfinite(floor) or floor < 0 or floor * k > 100.0 + 1e-9:
        raise InvalidArgument(
            f"min_percentage is {floor}: it must be >= 0 and min_percentage x arms ({k}) <= 100",
            field="min_percentage"
        )
    seed = request.seed if request.HasField("seed") else int(experiment.config.seed)
    probs_job = probability_best_job(posterior_copy(experiment), draws, seed)
    if probs_job is None:
        raise FailedPrecondition(
            f"experiment '{experiment.experiment_id}' has no posterior to allocate from: "
            "allocation needs a thompson policy, or ucb1 / epsilon_greedy with binary rewards "
            "(contextual policies decide per request context)"
        )
    arm_ids = list(experiment.arm_ids)
    following = next_period(experiment.periods)
    # hundredths of a percent; a floor of exactly 100/k rounds down so that k floors fit
    lo_units = min(math.ceil(floor * 100 - 1e-7), 10_000 // k)

    def job() -> pb.GetAllocationResponse:
        probs = probs_job()
        percent = project_to_box(probs, 100.0, lo_units / 100.0, 100.0)
        units = round_to_units(percent, probs, 10_000, lo_units, 10_000)
        return pb.GetAllocationResponse(
            allocations=[
                pb.ArmAllocation(arm_id=a, percentage=int(u) / 100.0)
                for a, u in zip(arm_ids, units, strict=True)
            ],
            next_period=following,
        )

    return job


def arm_stats_job(experiment: Experiment) -> Callable[[], pb.GetArmStatsResponse]:
    """Copy the statistics now; the returned job builds the response (safe off the loop)."""
    e = experiment
    post = posterior_copy(e)
    draws = max(1, min(DEFAULT_DRAWS, STATS_DRAW_BUDGET // max(1, e.num_arms)))
    probs_job = probability_best_job(post, draws, int(e.config.seed))
    arm_ids = list(e.arm_ids)
    selections, rewards, reward_sum = e.selections.copy(), e.rewards.copy(), e.reward_sum.copy()
    positives, ingested, version = e.positives.copy(), e.ingested.copy(), e.version
    live_value = reward_sum if e.reward_type == pb.REWARD_TYPE_VALUE else np.zeros_like(reward_sum)

    def job() -> pb.GetArmStatsResponse:
        p_best = probs_job() if probs_job is not None else np.zeros(len(arm_ids))
        arms = []
        for i, arm_id in enumerate(arm_ids):
            n = int(rewards[i])
            total = float(reward_sum[i])
            trials = n + float(ingested[i, 0])
            successes = int(positives[i]) + float(ingested[i, 1])
            value = float(ingested[i, 2]) + float(live_value[i])
            stats = pb.ArmStats(
                arm_id=arm_id,
                selections=int(selections[i]),
                rewards=n,
                reward_sum=total,
                mean_reward=total / n if n else 0.0,
                trials=trials,
                successes=successes,
                conversion_rate=successes / trials if trials else 0.0,
                revenue_per_event=value / trials if trials else 0.0,
                probability_best=float(p_best[i]),
            )
            for name, values in post.items():
                value = float(values[i])
                # every number sent is finite: an untried ucb1 arm has no bound yet (it is
                # chosen first) and reports 0
                setattr(stats, name, value if math.isfinite(value) else 0.0)
            arms.append(stats)
        return pb.GetArmStatsResponse(arms=arms, model_version=version)

    return job
