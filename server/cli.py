"""``banditd`` command line: ``banditd serve [--port N ...]`` (also ``python -m server``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from banditd.server.cluster.engine import EngineError
from banditd.server.settings import Settings
from banditd.server.storage.recovery import RecoveryRefused

log = logging.getLogger("banditd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banditd", description="gRPC bandit decision server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (settings from BANDITD_* and flags)")
    serve.add_argument("--host", help="listen address (BANDITD_HOST)")
    serve.add_argument("--port", type=int, help="gRPC port, 0 = any free port (BANDITD_PORT)")
    serve.add_argument("--data-dir", type=Path, help="data directory (BANDITD_DATA_DIR)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (BANDITD_LOG_LEVEL)")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other setting, e.g. --set max_arms=500 (repeatable)",
    )
    serve.add_argument(
        "--workers", type=int,
        help="replicas sharing the port (and an engine: an embedded one unless "
        "BANDITD_REDIS_URL is set), 1 = a single process (BANDITD_WORKERS)",
    )
    serve.add_argument(
        "--start-from-remains", action="store_true", default=None,
        help="start even if the data directory cannot give the whole state back, from the "
        "records that can still be applied (BANDITD_START_FROM_REMAINS)",
    )
    serve.add_argument(
        "--port-file", type=Path,
        help="write the bound port to this file once listening (with --workers N > 1: once "
        "every replica is SERVING)",
    )
    replica = sub.add_parser("replica", help="(internal) one replica of serve --workers N")
    replica.add_argument("--index", type=int, required=True)
    replica.add_argument("--settings", required=True, help="the supervisor's settings, JSON")
    sub.add_parser("check-health", help="exit 0 if the local server reports SERVING")
    sub.add_parser("warmup", help="compile every kernel into the Numba on-disk cache")
    snap = sub.add_parser("snapshot", help="snapshot tools")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True)
    inspect = snap_sub.add_parser("inspect", help="print what a snapshot file contains")
    inspect.add_argument("path", type=Path)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "log_level", "workers", "start_from_remains"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    for item in getattr(args, "set", []):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"banditd: --set expects NAME=VALUE, got {item!r}")
        overrides[name.strip()] = value
    return Settings(**overrides)


async def _serve(settings: Settings, port_file: Path | None) -> None:
    from banditd.server.api.app import create_server

    parts = None
    if settings.redis_url is not None:  # one replica of several sharing the engine's log
        from banditd.server.cluster.replica import replica_parts

        parts = replica_parts(settings)
    app, port = await create_server(settings, parts)
    log.info("listening on %s:%d (NOT_SERVING until kernels are warm)", settings.host, port)
    if port_file is not None:
        port_file.write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.wait_ready_or(stop)
    await stop.wait()
    log.info("shutting down (drain %.1f s, grace %.1f s)", settings.drain_seconds,
             settings.grace_seconds)
    await app.stop(settings.grace_seconds, settings.drain_seconds)
    log.info("stopped")


def _check_health(settings: Settings) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    try:
        with grpc.insecure_channel(f"{host}:{settings.port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(name)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _inspect_snapshot(path: Path) -> int:
    """``banditd snapshot inspect PATH``: what a snapshot file holds."""
    from banditd.server.state import image
    from banditd.server.storage import snapshot

    try:
        message, section = snapshot.read(path)
        snap = image.parse(message, path.name)
        lines = image.describe(snap, section)
    except (snapshot.SnapshotError, image.ImageError, OSError) as exc:
        print(f"banditd: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: banditd snapshot, format {snap.format_version}, "
          f"{path.stat().st_size:,} bytes")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Snapshots are written by a forked child that never touches gRPC; gRPC's own fork
    # handlers are not needed (and only log noise when other threads are busy).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    args = _parser().parse_args(argv)
    tag = ""
    try:
        if args.command == "replica":
            from banditd.server.cluster.replica import replica_settings

            settings = replica_settings(args.settings)
            tag = f"[{args.index}]"
        else:
            settings = load_settings(args)
    except ValidationError as exc:
        print(f"banditd: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and settings.workers > 1:
        tag = "[supervisor]"
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
    )
    if args.command == "replica":
        from banditd.server.cluster.replica import run_replica

        return run_replica(settings, args.index)
    if args.command == "check-health":
        return _check_health(settings)
    if args.command == "snapshot":
        return _inspect_snapshot(args.path)
    if args.command == "warmup":
        from banditd.server.api.warmup import warm_up

        print(f"kernels compiled and cached in {warm_up():.2f} s")
        return 0
    try:
        if settings.workers > 1:
            from banditd.server.cluster.supervisor import supervise

            return supervise(settings, args.port_file)
        asyncio.run(_serve(settings, args.port_file))
    except (OSError, RecoveryRefused, EngineError) as exc:
        print(f"banditd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
