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
    "banditd/replication/v1/replication_pb2.py",
    "banditd/replication/v1/replication_pb2.pyi",
    "banditd/replication/v1/replication_pb2_grpc.py",
)
SOURCES = ("proto/decision/v1/decision.proto", "proto/banditd/storage/v1/storage.proto",
           "proto/banditd/replication/v1/replication.proto")


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


def _plugins(template: str) -> list[dict[str, str]]:
    """The ``plugins`` of a buf.gen.yaml (block style: ``- key: value`` then ``key: value``)."""
    plugins: list[dict[str, str]] = []
    inside = False
    for line in template.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            inside = line.startswith("plugins:")
            continue
        if inside:
            item = line.strip()
            if item.startswith("- "):
                plugins.append({})
                item = item[2:]
            key, _, value = item.partition(":")
            plugins[-1][key.strip()] = value.strip()
    return plugins


def test_buf_generates_stubs_for_other_languages_with_their_package_options(tmp_path):
    """buf.gen.yaml's protoc built-in generators (Java, C#, C++) run through `buf generate`
    with the protoc of the dev extra; the contract's options name the packages."""
    import json

    from banditd.decision.v1 import decision_pb2 as pb

    bin_dir = Path(sys.executable).parent
    plugins = _plugins((ROOT / "proto" / "buf.gen.yaml").read_text())
    assert {p.get("local") for p in plugins} >= {"protoc-gen-go", "protoc-gen-go-grpc"}
    builtin = [p for p in plugins if "protoc_builtin" in p]
    assert {p["protoc_builtin"] for p in builtin} == {"java", "csharp", "cpp"}
    template = {"version": "v2",
                "inputs": [{"directory": ".", "paths": ["decision/v1/decision.proto"]}],
                "plugins": [{"protoc_builtin": p["protoc_builtin"],
                             "protoc_path": str(bin_dir / "protoc"),
                             "out": str(tmp_path / p["out"])} for p in builtin]}
    proc = subprocess.run([str(bin_dir / "buf"), "generate", "--template", json.dumps(template)],
                          cwd=ROOT / "proto", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    java = tmp_path / "gen/java/io/banditd/decision/v1"
    assert (java / "SelectArmRequest.java").is_file()  # java_multiple_files
    assert (java / "DecisionProto.java").is_file()
    assert "package io.banditd.decision.v1;" in (java / "SelectArmRequest.java").read_text()
    csharp = (tmp_path / "gen/csharp/Decision.cs").read_text()
    assert "namespace Banditd.Decision.V1 {" in csharp
    header = (tmp_path / "gen/cpp/decision/v1/decision.pb.h").read_text()
    assert "namespace decision {" in header and "class SelectArmRequest" in header
    assert (tmp_path / "gen/cpp/decision/v1/decision.pb.cc").is_file()
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package == "banditd/gen/go/decision/v1;decisionv1"
    assert options.java_package == "io.banditd.decision.v1" and options.java_multiple_files
    assert options.csharp_namespace == "Banditd.Decision.V1"
