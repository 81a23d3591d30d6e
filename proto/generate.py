"""Regenerate the checked-in Python code of every .proto under proto/ (``make proto``).

protoc names Python modules after the proto's path (``decision/v1/decision.proto`` ->
``decision.v1.decision_pb2``), but banditd installs everything under one ``banditd``
namespace (``banditd.decision.v1``). Python's generator has no option for a package prefix,
so the generated imports of ``decision.v1`` are rewritten here; the internal protos already
live in ``banditd.*``. The drift test runs this same function and compares byte for byte.

Usage: ``python proto/generate.py [OUT_DIR]`` (default: proto/ itself).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO = Path(__file__).resolve().parent
SOURCES = ("decision/v1/decision.proto", "banditd/storage/v1/storage.proto")
# proto packages whose Python modules are not under banditd by their path
_REWRITE = re.compile(r"^(from|import) decision\.v1\b", re.M)


def generate(out: Path) -> list[Path]:
    """Write the ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` files into ``out`` (same
    relative paths as under proto/); returns them."""
    from importlib import resources

    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = ["grpc_tools.protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *(str(PROTO / s) for s in SOURCES)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = []
    for source in SOURCES:
        stem = source.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = out / f"{stem}{suffix}"
            path.write_text(_REWRITE.sub(r"\1 banditd.decision.v1", path.read_text()))
            written.append(path)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO):
        print(path)
