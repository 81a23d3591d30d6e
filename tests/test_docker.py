"""The container, without a container engine: hadolint, and the image's own commands run directly.

The Dockerfile's build-time warm-up (RUN banditd warmup), its ENTRYPOINT + CMD and its
HEALTHCHECK command are read from the Dockerfile and executed here with the image's
environment (host forced to 127.0.0.1, a free port, temporary data and cache dirs).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, ROOT, free_port, wait_serving

pytestmark = pytest.mark.slow  # the image's build-time warm-up compiles every kernel into an empty cache

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _image_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for word, rest in _instructions():
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    env.update(
        BANDITD_HOST="127.0.0.1",  # tests never listen beyond loopback
        BANDITD_PORT=str(free_port()),
        BANDITD_DATA_DIR=str(tmp_path / "data"),
        NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def test_hadolint_clean():
    proc = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_commands_work_when_run_directly(tmp_path):
    steps = _instructions()
    env = _image_env(tmp_path)
    runs = [rest for word, rest in steps if word == "RUN" and rest.startswith("banditd")]
    assert runs == ["banditd warmup"]
    warm = subprocess.run(shlex.split(runs[0]), env=env, capture_output=True, text=True, timeout=900)
    assert warm.returncode == 0, warm.stderr
    assert any(Path(env["NUMBA_CACHE_DIR"]).rglob("*.nbi")), "warm-up wrote no Numba cache"

    entrypoint = json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in steps if word == "CMD"))
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    health_cmd = json.loads(health.split(" CMD ", 1)[1])
    assert health_cmd == ["banditd", "check-health"]

    (tmp_path / "data").mkdir()
    proc = subprocess.Popen(entrypoint + cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(int(env["BANDITD_PORT"]), proc)
        check = subprocess.run(health_cmd, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = subprocess.run(health_cmd, env=env, capture_output=True, text=True, timeout=30)
    assert after.returncode == 1  # the health command really detects a dead server
