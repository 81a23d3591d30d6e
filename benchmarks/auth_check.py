"""CPU cost of the bearer-token check every call pays with ``BANDITD_AUTH_TOKENS_FILE`` set.

    python -m benchmarks.auth_check [--out benchmarks/results/auth_check.json]

Times :meth:`Authenticator.identify` (find the ``authorization`` metadata, SHA-256 the token,
compare digests in constant time) on metadata shaped as a gRPC client sends it, with tokens
files of 3 and 1,000 tokens, and an unknown token. Process CPU time (``resource.getrusage``)
over 300,000 calls, 7 repeats, the minimum and median reported: CPU time is far less disturbed
by other load on a shared host than wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import tempfile
from pathlib import Path

from banditd.server.api.auth import Authenticator
from benchmarks.local_server import machine

CALLS = 300_000
REPEATS = 7


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(tokens: int, known: bool, directory: Path) -> dict:
    path = directory / f"tokens-{tokens}"
    path.write_text("".join(f"{hashlib.sha256(f'token-{i:040d}'.encode()).hexdigest()} "
                            f"decide caller-{i}\n" for i in range(tokens)))
    auth = Authenticator(path)
    token = f"token-{tokens // 2:040d}" if known else "token-never-issued-0000000000000000000"
    metadata = (("user-agent", "grpc-python-asyncio/1.85.4 grpc-c/51.0.0 (linux; chttp2)"),
                ("authorization", f"Bearer {token}"))
    assert (auth.identify(metadata) is not None) == known
    per_call = []
    for _ in range(REPEATS):
        start = _cpu()
        for _ in range(CALLS):
            auth.identify(metadata)
        per_call.append((_cpu() - start) / CALLS * 1e9)
    return {"tokens": tokens, "known_token": known, "min_ns": round(min(per_call)),
            "median_ns": round(statistics.median(per_call))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/auth_check.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, known, Path(tmp)) for n in (3, 1000) for known in (True, False)]
    for row in rows:
        print(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "calls": CALLS, "repeats": REPEATS,
                                    "results": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
