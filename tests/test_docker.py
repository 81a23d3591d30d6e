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


_CACHE_USE_SCRIPT = r"""
import json
from banditd.kernels import POLICIES, allocation
from banditd.server.api import wire
from banditd.server.state import checks
from banditd.server.warmup import warm_up
warm_up()  # what the server runs before SERVING
hits, misses = {}, {}
for name, module in [*POLICIES.items(), ("allocation", allocation), ("wire", wire),
                     ("checks", checks)]:
    for attr, fn in vars(module).items():
        stats = getattr(fn, "stats", None)
        if stats is not None and hasattr(fn, "py_func"):
            if stats.cache_hits:
                hits[f"{name}.{attr}"] = sum(stats.cache_hits.values())
            if stats.cache_misses:
                misses[f"{name}.{attr}"] = sum(stats.cache_misses.values())
print(json.dumps({"hits": hits, "misses": misses}))
"""


def test_hadolint_clean():
    proc = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The build step compiles every kernel into an empty cache: minutes on a busy 2-core
# machine, past the suite's 300 s per test (its own subprocess bound is 900 s).
@pytest.mark.timeout(900)
def test_image_commands_work_when_run_directly(tmp_path):
    steps = _instructions()
    env = _image_env(tmp_path)
    runs = [rest for word, rest in steps if word == "RUN" and rest.startswith("banditd")]
    assert runs == ["banditd warmup"]
    warm = subprocess.run(shlex.split(runs[0]), env=env, capture_output=True, text=True, timeout=900)
    assert warm.returncode == 0, warm.stderr
    # what the build step leaves in the image: a container's start compiles nothing
    loaded = subprocess.run([str(BIN / "python"), "-c", _CACHE_USE_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    use = json.loads(loaded.stdout)
    assert use["misses"] == {}, use
    assert {"thompson._select_bound", "lin_ucb._select_batch", "allocation._prob_best",
            "wire.select_responses", "checks.first_out_of_range"} <= set(use["hits"]), use

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
