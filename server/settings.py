"""The one settings object: environment (BANDITD_*), overridable by CLI flags."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BANDITD_"


def _physical_memory() -> int:
    """Bytes of physical memory (8 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class Settings(BaseSettings):
    """Server configuration. Every field can be set as ``BANDITD_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

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
        "them). Each write costs the event loop a few hundred µs: fewer, larger writes leave "
        "more of it to requests.",
    )
    snapshot_interval_seconds: float = Field(
        300.0, ge=0, description="Seconds between snapshots; 0 = only on graceful shutdown."
    )
    snapshot_write_mb_per_s: float = Field(
        10.0, ge=0, description="Write-rate cap of periodic snapshots, MB/s: the disk I/O of a "
        "faster writer delays the serving process (its p99 grows with the rate); a snapshot "
        "takes size / rate, keep it well under the interval. 0 = unlimited (the shutdown "
        "snapshot always is).",
    )
    start_from_remains: bool = Field(
        False, description="Start even when the data directory cannot give the whole state "
        "back (no readable snapshot and the log does not reach back to its start): rebuild "
        "from the records that can still be applied. Without it such a server refuses to "
        "start, and deletes nothing.",
    )
    log_retry_seconds: float = Field(
        1.0, gt=0, le=60, description="After a failed log write (disk full, I/O error): how "
        "often the log checks whether it can write again. Changes are refused meanwhile.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics port; unset = no endpoint."
    )
    batch_schedule_io_threads: bool = Field(
        True, description="Linux: run the threads gRPC creates at start (I/O, poller, "
        "timers) under SCHED_BATCH, so their wake-ups do not preempt the "
        "event loop (more throughput and less CPU per call on a busy host). No effect "
        "elsewhere.",
    )
    workers: int = Field(
        1, ge=1, le=64,
        description="Replicas on this host sharing the port (SO_REUSEPORT), each a process "
        "sharing the engine's log (an embedded engine unless redis_url is set); 1 = a single "
        "process.",
    )
    redis_url: str | None = Field(
        None, description="The engine replicas share: redis:// or rediss:// (TLS) for Redis "
        ">= 7 or Valkey, unix:///path for a Unix socket; a password may be given in the URL "
        "(redis://:password@host:6379/0). Every replica configured with it serves the same "
        "experiments and campaigns. Unset: a single server with its own log.",
    )
    redis_key_prefix: str = Field(
        "banditd:", min_length=1, max_length=64,
        description="Prefix of every engine key (<prefix>log, <prefix>image, ...): several "
        "fleets may share one engine under different prefixes.",
    )
    replica_id: str = Field(
        "", max_length=32, pattern=r"^[A-Za-z0-9_.:]*$",
        description="This replica's name in the engine and in its decision ids (<replica_id>."
        "<6 hex digits per start>-<counter>); empty = the host name (a pod's name).",
    )
    replica_flush_seconds: float = Field(
        0.02, gt=0, le=0.1,
        description="Replicas: longest wait before decision records go to the engine in one "
        "entry (changes that are waited for go at once; the next entry takes whatever "
        "gathered meanwhile). Each entry costs the replica an XADD and every replica its "
        "read; the wait adds to the time a reward on another replica may wait for its "
        "decision, and bounds what a replica's crash can lose of its decisions.",
    )
    replica_linger_seconds: float = Field(
        0.002, ge=0, le=0.05,
        description="Replicas: shortest time between two entries that carry changes "
        "(rewards, bids, spend, configuration). A change arriving sooner after the last "
        "entry waits for the rest of it and goes in one entry with every change that "
        "arrives meanwhile (group commit: one XADD, and one read by every replica, for all "
        "of them); under light load a change goes at once. 0 = no wait.",
    )
    image_interval_seconds: float = Field(
        60.0, ge=0,
        description="Replicas: seconds between images of the state uploaded to the engine "
        "by one of them (a lease), after which the stream is trimmed; the stream holds "
        "about write rate x this many entries. 0 = never (the stream grows).",
    )
    engine_timeout_seconds: float = Field(
        5.0, gt=0, le=60,
        description="Replicas: longest wait for the engine to confirm a write; past it the "
        "engine counts as unreachable (changes refused, health NOT_SERVING) until it answers "
        "again.",
    )
    engine_apply_timeout_seconds: float = Field(
        10.0, gt=0, le=300,
        description="Replicas: longest wait of a change, confirmed by the engine, to be read "
        "back and applied here before its caller gets UNAVAILABLE (it is still applied).",
    )
    engine_binary: str | None = Field(
        None, description="The engine server binary --workers N starts when redis_url is "
        "unset; default: valkey-server or redis-server on PATH, else next to this Python.",
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
    max_ingest_periods: int = Field(
        3660, ge=1, description="Ingested periods (IngestMetrics) an arm may hold, e.g. ten "
        "years of days.",
    )
    memory_budget_bytes: int = Field(
        default_factory=lambda: _physical_memory() // 2, ge=1,
        description="Memory the experiments' arms and the decision store may take, bytes "
        "(estimated; checked when experiments are created and arms added). Default: half "
        "of this machine's memory.",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest gRPC request accepted, in bytes."
    )

    # Decisions kept so that a late reward needs only its decision_id.
    decision_capacity: int = Field(1_000_000, ge=1, description="Decisions kept (oldest go).")
    decision_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds a decision accepts its reward."
    )
    reward_sweeper: bool = Field(
        True, description="Whether this server settles decisions whose reward window passed. "
        "Of several replicas sharing one log exactly one must (--workers N: the first).",
    )
    reward_sweep_interval_seconds: float = Field(
        0.1, gt=0, le=60, description="Seconds between two looks for decisions whose reward "
        "window (an experiment's reward_wait_seconds) passed without a reward: they are settled "
        "with the default reward at most this long after their window ends.",
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
    max_event_time_skew_seconds: float = Field(
        3600.0, ge=0, description="How far ahead of the server clock a request's event_time "
        "may be, seconds (pacing's clock: a later time is INVALID_ARGUMENT).",
    )
    drain_seconds: float = Field(
        5.0, ge=0, description="On SIGTERM: seconds the server keeps serving with health "
        "NOT_SERVING, so load balancers stop sending it calls, before it stops accepting "
        "new ones.",
    )
    grace_seconds: float = Field(
        5.0, ge=0, description="After the drain: seconds in-flight calls get to finish.",
    )
    # Connections (closed when idle, so idle clients cannot use up the fd limit).
    max_connection_idle_seconds: float = Field(
        300.0, gt=0, description="A connection with no call for this long is closed (GOAWAY).",
    )
    handshake_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection that has not completed its handshake (HTTP/2 "
        "preface, TLS) within this is closed.",
    )
    keepalive_time_seconds: float = Field(
        60.0, gt=0, description="Seconds between the server's keepalive pings on a connection.",
    )
    keepalive_timeout_seconds: float = Field(
        20.0, gt=0, description="A connection whose keepalive ping is not answered within "
        "this is closed.",
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per "
        "line (time, level, logger, message and the event's fields).",
    )

    # Security (see the README's Security section).
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain the server presents; with tls_key_file, the "
        "gRPC port speaks TLS only. Re-read on SIGHUP.",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA certificates: when set, every client must present a "
        "certificate signed by one of them (mutual TLS).",
    )
    allow_insecure: bool = Field(
        False, description="Allow plaintext gRPC on an address other than loopback.",
    )
    auth_tokens_file: Path | None = Field(
        None, description="Bearer tokens with roles: lines `<sha256 of token> <role> <name>` "
        "(or TOML); unset = no authentication. Re-read on SIGHUP.",
    )
    max_concurrent_rpcs: int = Field(
        1000, ge=1, description="RPCs in progress at once (health checks included); past it "
        "gRPC answers RESOURCE_EXHAUSTED at once instead of queueing.",
    )
    audit_entries: int = Field(
        100_000, ge=0, description="Audit-trail entries kept in the state (and snapshots), "
        "newest; older ones go.",
    )

    @model_validator(mode="after")
    def _check_redis_url(self) -> Settings:
        if self.redis_url is not None and not self.redis_url.startswith(
                ("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got "
                             f"{self.redis_url.split('@')[-1][:80]!r}")
        return self

    @model_validator(mode="after")
    def _check_log_level(self) -> Settings:
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(
                f"log_level must be DEBUG/INFO/WARNING/ERROR/CRITICAL, got {self.log_level!r}"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and "
                             "tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self

    @property
    def tls(self) -> bool:
        """Whether the gRPC port speaks TLS."""
        return self.tls_cert_file is not None

    def check_listen(self) -> None:
        """Refuse plaintext on any address but loopback unless ``allow_insecure`` (called by
        ``banditd serve``; other commands read the same settings without listening).
        ValueError naming the settings."""
        if not self.tls and not self.allow_insecure and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address and TLS is off: set "
                f"{ENV_PREFIX}TLS_CERT_FILE and {ENV_PREFIX}TLS_KEY_FILE, or "
                f"{ENV_PREFIX}ALLOW_INSECURE=true to serve plaintext there anyway")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per ``BANDITD_*`` variable of ``environ`` that is not a setting, naming
    the closest setting (pydantic-settings ignores them: a typo would go unnoticed)."""
    known = sorted(name.upper() for name in Settings.model_fields)
    problems = []
    for variable in sorted(environ):
        name = variable.upper()
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):] not in known:
            close = difflib.get_close_matches(name[len(ENV_PREFIX):], known, n=1, cutoff=0.6)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            problems.append(f"{variable} is not a setting{hint}")
    return problems


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+(?=@)", re.I)
REDACTED = "<redacted>"


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as printed at start: every value, secrets redacted (fields marked
    ``secret`` in their ``json_schema_extra``; a password in any URL-valued string)."""
    out: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("secret") and value is not None:
            out[name] = REDACTED
        elif isinstance(value, Path):
            out[name] = str(value)
        elif isinstance(value, str):
            out[name] = redact_url(value)
        else:
            out[name] = value
    return out


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` replaced."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
