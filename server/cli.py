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

from banditd.server import logs
from banditd.server.settings import Settings, effective, unknown_variables
from banditd.server.storage.recovery import RecoveryRefused

log = logging.getLogger("banditd")


# Flags of `banditd serve` naming a setting (the rest: --set name=value).
_FLAGS = ("host", "port", "data_dir", "log_level", "workers", "log_format", "tls_cert_file",
          "tls_key_file", "tls_client_ca_file", "auth_tokens_file", "allow_insecure",
          "start_from_remains")


def version() -> str:
    """The installed banditd's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("banditd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banditd", description="gRPC bandit decision server")
    parser.add_argument("--version", action="version", version=f"banditd {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (settings from BANDITD_* and flags)")
    serve.add_argument("--host", help="listen address (BANDITD_HOST)")
    serve.add_argument("--port", type=int, help="gRPC port, 0 = any free port (BANDITD_PORT)")
    serve.add_argument("--data-dir", type=Path, help="data directory (BANDITD_DATA_DIR)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (BANDITD_LOG_LEVEL)")
    serve.add_argument("--log-format", choices=("text", "json"),
                       help="text or JSON lines (BANDITD_LOG_FORMAT)")
    serve.add_argument("--tls-cert-file", type=Path,
                       help="PEM certificate chain: serve TLS (BANDITD_TLS_CERT_FILE)")
    serve.add_argument("--tls-key-file", type=Path,
                       help="PEM private key of the certificate (BANDITD_TLS_KEY_FILE)")
    serve.add_argument("--tls-client-ca-file", type=Path,
                       help="PEM CAs: require client certificates (BANDITD_TLS_CLIENT_CA_FILE)")
    serve.add_argument("--auth-tokens-file", type=Path,
                       help="bearer tokens with roles (BANDITD_AUTH_TOKENS_FILE)")
    serve.add_argument("--allow-insecure", action="store_const", const=True,
                       help="allow plaintext on a non-loopback address (BANDITD_ALLOW_INSECURE)")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other setting, e.g. --set max_arms=500 (repeatable)",
    )
    serve.add_argument(
        "--workers", type=int,
        help="server processes sharing the port, 1 = a single process (BANDITD_WORKERS)",
    )
    serve.add_argument(
        "--start-from-remains", action="store_true", default=None,
        help="start even if the data directory cannot give the whole state back, from the "
        "records that can still be applied (BANDITD_START_FROM_REMAINS)",
    )
    serve.add_argument(
        "--port-file", type=Path,
        help="write the bound port to this file once listening (with --workers N > 1: once "
        "every worker is SERVING)",
    )
    worker = sub.add_parser("worker", help="(internal) one worker process of serve --workers N")
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--settings", required=True, help="the supervisor's settings, JSON")
    health = sub.add_parser("check-health", help="exit 0 if the local server reports SERVING")
    health.add_argument("--ca-file", type=Path,
                        help="with TLS: PEM CAs to verify the server by (default: its own "
                        "BANDITD_TLS_CERT_FILE, for a self-signed certificate)")
    health.add_argument("--server-name",
                        help="with TLS: the name the server's certificate is checked for "
                        "(default: the certificate's first DNS name)")
    health.add_argument("--cert-file", type=Path,
                        help="with mutual TLS: the client certificate (default: the server's)")
    health.add_argument("--key-file", type=Path,
                        help="with mutual TLS: the client key (default: the server's)")
    audit = sub.add_parser("audit", help="print the audit trail of a data directory (JSON lines)")
    audit.add_argument("--data-dir", type=Path, help="data directory (BANDITD_DATA_DIR)")
    audit.add_argument("--since", type=float, default=0.0,
                       help="only entries at or after this time (seconds since the epoch)")
    sub.add_parser("warmup", help="compile every kernel into the Numba on-disk cache")
    snap = sub.add_parser("snapshot", help="snapshot tools")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True)
    inspect = snap_sub.add_parser("inspect", help="print what a snapshot file contains")
    inspect.add_argument("path", type=Path)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in _FLAGS:
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

    app, port = await create_server(settings)
    log.info("listening on %s:%d (%s, NOT_SERVING until kernels are warm)", settings.host,
             port, "TLS" if settings.tls else "plaintext")
    if port_file is not None:
        port_file.write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    await app.wait_ready_or(stop)
    await stop.wait()
    log.info("shutting down (drain %.1f s, grace %.1f s)", settings.drain_seconds,
             settings.grace_seconds)
    await app.stop(settings.grace_seconds, settings.drain_seconds)
    log.info("stopped")


def _health_channel(settings: Settings, args: argparse.Namespace):
    """A channel to the local server: plaintext, or TLS trusting ``--ca-file`` (default: the
    server's own certificate, enough for a self-signed one) for ``--server-name`` (default:
    the certificate's first DNS name), with mutual TLS presenting ``--cert-file`` /
    ``--key-file`` (default: the server's own pair)."""
    import grpc

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    target = f"{host}:{settings.port}"
    if not settings.tls:
        return grpc.insecure_channel(target)
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    ca = args.ca_file or settings.tls_cert_file
    pair: tuple[bytes | None, bytes | None] = (None, None)
    if settings.tls_client_ca_file is not None:
        pair = ((args.key_file or settings.tls_key_file).read_bytes(),
                (args.cert_file or settings.tls_cert_file).read_bytes())
    name = args.server_name or _first_dns_name(Path(settings.tls_cert_file)) or "localhost"
    credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes(), *pair)
    return grpc.secure_channel(target, credentials,
                               options=[("grpc.ssl_target_name_override", name)])


def _first_dns_name(cert_file: Path) -> str | None:
    """The first DNS subject-alternative name of a PEM certificate, if it can be read."""
    import ssl

    try:
        decoded = ssl._ssl._test_decode_cert(str(cert_file))  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError):
        return None
    return next((value for kind, value in decoded.get("subjectAltName", ())
                 if kind == "DNS"), None)


def _check_health(settings: Settings, args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with _health_channel(settings, args) as channel:
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


def _print_audit(settings: Settings, since: float) -> int:
    """``banditd audit``: the data directory's audit trail as JSON lines, oldest first."""
    import json

    from banditd.server.state.audit import as_fields, read_trail

    directory = Path(settings.data_dir)
    if not directory.is_dir():
        print(f"banditd: no data directory {directory}", file=sys.stderr)
        return 1
    entries, problems = read_trail(directory)
    for problem in problems:
        print(f"banditd: {problem}", file=sys.stderr)
    for entry in entries:
        if entry.time >= since:
            print(json.dumps(as_fields(entry)))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Snapshots are written by a forked child that never touches gRPC; gRPC's own fork
    # handlers are not needed (and only log noise when other threads are busy).
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    args = _parser().parse_args(argv)
    unknown = unknown_variables(os.environ)
    if unknown:
        print("banditd: unknown settings in the environment:\n  " + "\n  ".join(unknown),
              file=sys.stderr)
        return 2
    tag = ""
    try:
        if args.command == "worker":
            from banditd.server.cluster.workers import worker_settings

            settings = worker_settings(args.settings)
            tag = f"[{args.index}]"
        else:
            settings = load_settings(args)
        if args.command == "serve":
            settings.check_listen()
    except (ValidationError, ValueError) as exc:
        print(f"banditd: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "serve" and settings.workers > 1:
        tag = "[supervisor]"
    logs.configure(settings.log_level, settings.log_format, tag)
    if args.command == "worker":
        from banditd.server.cluster.workers import run_worker

        return run_worker(settings, args.index)
    if args.command == "check-health":
        return _check_health(settings, args)
    if args.command == "snapshot":
        return _inspect_snapshot(args.path)
    if args.command == "audit":
        return _print_audit(settings, args.since)
    if args.command == "warmup":
        from banditd.server.api.warmup import warm_up

        print(f"kernels compiled and cached in {warm_up():.2f} s")  # every policy
        return 0
    log.info("banditd %s starting", version(), extra={"fields": {"settings": effective(settings)}})
    try:
        if settings.workers > 1:
            from banditd.server.cluster.supervisor import supervise

            return supervise(settings, args.port_file)
        asyncio.run(_serve(settings, args.port_file))
    except (OSError, RecoveryRefused) as exc:
        print(f"banditd: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # TLS or tokens files that cannot be used
        print(f"banditd: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
