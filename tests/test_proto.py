"""The contract: buf lint clean, and the checked-in generated code is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

GENERATED = (
    "decision/v1/decision_pb2.py",
    "decision/v1/decision_pb2.pyi",
    "decision/v1/decision_pb2_grpc.py",
    "banditd/storage/v1/storage_pb2.py",
    "banditd/storage/v1/storage_pb2.pyi",
    "banditd/storage/v1/storage_pb2_grpc.py",
)
SOURCES = ("proto/decision/v1/decision.proto", "proto/banditd/storage/v1/storage.proto")


def test_generated_code_is_current(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        checked_in = (ROOT / "proto" / name).read_bytes()
        assert fresh == checked_in, f"proto/{name} is stale: run `make proto`"


def test_buf_lint_clean():
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert buf, "buf not installed (it comes with the dev extra: buf-bin)"
    proc = subprocess.run([buf, "lint"], cwd=ROOT / "proto", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_field_and_rpc_is_documented():
    """The proto is the API reference: each field, message, enum value and RPC has a comment."""
    undocumented = []
    for source in SOURCES:
        undocumented += _undocumented((ROOT / source).read_text().splitlines())
    assert not undocumented, "\n".join(undocumented)


def _undocumented(lines: list[str]) -> list[str]:
    undocumented = []
    for i, line in enumerate(lines):
        s = line.strip()
        declares = (s.startswith(("rpc ", "message ", "enum ", "oneof ")) or
                    (s.endswith(";") and "=" in s and not s.startswith(("syntax", "option"))))
        if declares and not lines[i - 1].strip().startswith("//"):
            undocumented.append(f"{i + 1}: {s}")
    return undocumented
