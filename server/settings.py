"""The one settings object: environment (BANDITD_*), overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server configuration. Every field can be set as ``BANDITD_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BANDITD_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in the container).")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 = pick a free one.")
    data_dir: Path = Field(Path("./data"), description="Directory for logs and snapshots.")
    durability: Literal["os", "fsync", "snapshot"] = Field(
        "os",
        description="os: log written before acking (survives kill -9); fsync: and fsynced "
        "(survives power loss); snapshot: periodic snapshots only.",
    )
    decision_log_delay_seconds: float = Field(
        0.025, gt=0, le=1.0, description="Longest wait before SelectArm's decision records are "
        "written to the log (without waiting for them; a crash loses at most this much of "
        "them). Each write costs the event loop a few hundred µs on ext4: 0.025 s instead of "
        "0.005 measured +4.7% SelectArm QPS at 32 in flight.",
    )
    snapshot_interval_seconds: float = Field(
        300.0, ge=0, description="Seconds between snapshots; 0 = only on graceful shutdown."
    )
    snapshot_write_mb_per_s: float = Field(
        10.0, ge=0, description="Write-rate cap of periodic snapshots, MB/s: the disk I/O of a "
        "faster writer delays the serving process (measured SelectArm p99 during a snapshot: "
        "1.2-1.7x at 10 MB/s, 2.3x at 20, 2-4x at 100); a snapshot takes size / rate, keep it "
        "well under the interval. 0 = unlimited (the shutdown snapshot always is).",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics port; unset = no endpoint."
    )
    batch_schedule_io_threads: bool = Field(
        True, description="Linux: run the threads gRPC creates at start (I/O, poller, "
        "timers) under SCHED_BATCH, so their wake-ups do not preempt the "
        "event loop; measured +8-11% SelectArm QPS and -15% server CPU per call on a busy "
        "2-core host. No effect elsewhere.",
    )
    workers: int = Field(
        1, ge=1, le=64,
        description="Server processes sharing the port (SO_REUSEPORT); 1 = a single process.",
    )
    replication_flush_seconds: float = Field(
        0.01, gt=0, le=0.1, description="With several workers: how long a follower gathers "
        "its decisions into one message to the leader, and the leader its log records into "
        "one message to each follower (sent at once to a follower waiting for them: a "
        "configuration change, a write it forwarded). Each message costs both processes a "
        "gRPC call's CPU: 0.01 instead of 0.002 cut 2 workers' server CPU per decision from "
        "1.14-1.15x to 1.03-1.08x one worker's (batch 1,000). The time adds to the "
        "propagation delay and to what a follower's crash can lose of its decisions.",
    )

    # Limits: requests beyond them get RESOURCE_EXHAUSTED / INVALID_ARGUMENT.
    max_experiments: int = Field(10_000, ge=1, description="Experiments held at once.")
    max_arms: int = Field(10_000, ge=1, description="Arms per experiment.")
    max_context_dim: int = Field(256, ge=1, description="Context features per experiment.")
    max_batch_size: int = Field(10_000, ge=1, description="Items per Batch* request.")
    max_abs_value: float = Field(
        1e12, gt=0, description="Largest |value| accepted for context features, rewards, metrics."
    )
    max_monte_carlo_samples: int = Field(
        20_000_000, ge=1, description="num_draws x arms allowed per GetAllocation/AllocateBudget."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC request accepted, in bytes."
    )

    # Decisions kept so that a late reward needs only its decision_id.
    decision_capacity: int = Field(1_000_000, ge=1, description="Decisions kept (oldest go).")
    decision_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds a decision accepts its reward."
    )

    propensity_draws: int = Field(
        32, ge=1, le=100_000, description="Monte-Carlo draws estimating Thompson propensities."
    )
    budget_min_allocation: float = Field(
        10.0, ge=0, description="AllocateBudget minimum per ad group when the request has none."
    )
    budget_max_allocation: float = Field(
        1000.0, ge=0, description="AllocateBudget maximum per ad group when the request has none."
    )
    # Pacing (see server/ads/pacing.py for the control law).
    max_campaigns: int = Field(10_000, ge=1, description="Paced campaigns held at once.")
    pacing_reservation_ttl_seconds: float = Field(
        60.0, gt=0, le=86_400, description="Default seconds before an unsettled bid's "
        "reservation is released (campaigns may override).",
    )
    pacing_control_interval_seconds: float = Field(
        60.0, gt=0, description="Event-time seconds between multiplier updates.",
    )
    pacing_horizon_seconds: float = Field(
        1800.0, gt=0, description="The controller aims to be back on the plan this many "
        "seconds ahead.",
    )
    pacing_min_multiplier: float = Field(
        0.02, gt=0, le=1, description="Lowest pacing multiplier; below it the controller "
        "throttles (bids in a fraction of auctions) instead of shading further.",
    )
    pacing_min_participation: float = Field(
        0.001, gt=0, le=1, description="Lowest participation rate (fraction of auctions "
        "a throttled campaign bids in).",
    )
    pacing_plan_max_shift: float = Field(
        0.25, ge=0, le=1, description="Largest relative change of one hour's plan share "
        "per day (bounds what one odd day can do).",
    )
    pacing_history_decay: float = Field(
        0.7, ge=0, lt=1, description="Weight of older days in the hourly history (per day).",
    )
    grace_seconds: float = Field(5.0, ge=0, description="Graceful-shutdown grace period, s.")
    log_level: str = Field("INFO", description="Python logging level.")

    @model_validator(mode="after")
    def _check_log_level(self) -> Settings:
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(
                f"log_level must be DEBUG/INFO/WARNING/ERROR/CRITICAL, got {self.log_level!r}"
            )
        return self
