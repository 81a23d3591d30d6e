"""The container, without a container engine: hadolint, and the image's own commands run directly.

The Dockerfile's build-time warm-up (RUN banditd warmup), its ENTRYPOINT + CMD and its
HEALTHCHECK command are read from the Dockerfile and executed here with the image's
environment (host forced to 127.0.0.1, a free port, temporary data and cache dirs).
"""

from __future__ import annotations

import json
import os
import re
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
        BANDITD_METRICS_PORT=str(free_port()),
        BANDITD_DATA_DIR=str(tmp_path / "data"),
        # the suite's own cache (see conftest.py): empty in a fresh clone, where this test
        # runs first on its worker
        NUMBA_CACHE_DIR=os.environ["NUMBA_CACHE_DIR"],
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


_CACHE_USE_SCRIPT = r"""
import json
from banditd.kernels import POLICIES, allocation
from banditd.server.api import wire
from banditd.server.state import checks
from banditd.server.api.warmup import warm_up
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
    assert any(Path(env["NUMBA_CACHE_DIR"]).rglob("*.nbi")), "warm-up wrote no Numba cache"
    # the image's cache holds code for a generic CPU only: it serves on any host CPU model
    assert env["NUMBA_CPU_NAME"] == "generic"
    assert _cache_targets(Path(env["NUMBA_CACHE_DIR"])) == {("generic", "")}

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


def _cache_targets(cache: Path) -> set[tuple[str, str]]:
    """(CPU name, CPU features) of every entry of a Numba cache's index files (the key a
    process must match to load the entry: numba.core.caching's index key holds the code
    generator's magic tuple, (target triple, CPU name, features))."""
    import pickle

    targets = set()
    for index in cache.rglob("*.nbi"):
        with open(index, "rb") as f:
            pickle.load(f)  # numba's version
            _stamp, overloads = pickle.loads(f.read())
        for key in overloads:
            _triple, cpu, features = key[1]
            targets.add((cpu, features))
    return targets


def test_plaintext_on_every_address_is_refused_unless_allowed(tmp_path):
    env = _image_env(tmp_path)
    env["BANDITD_HOST"] = "0.0.0.0"  # the image's own host; refused before anything listens
    proc = subprocess.run(["banditd", "serve"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "BANDITD_ALLOW_INSECURE=true" in proc.stderr


def test_dockerfile_and_makefile_install_the_same_pinned_versions():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    makefile = (ROOT / "Makefile").read_text()
    constraints = re.search(r"^CONSTRAINTS\s*:=\s*(\S+)", makefile, re.M).group(1)
    assert "-c $(CONSTRAINTS) -e '.[dev]'" in makefile
    installs = [rest for word, rest in _instructions() if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1 and f"-c {constraints} ." in installs[0]
    assert any(word == "COPY" and constraints in rest.split() for word, rest in _instructions())
    pinned = {}
    for line in (ROOT / constraints).read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"{line!r} is not pinned exactly"
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in wanted:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, f"{name} is not in {constraints}"


def test_the_image_exposes_the_grpc_and_metrics_ports():
    env = dict(pair.split("=", 1) for word, rest in _instructions() if word == "ENV"
               for pair in shlex.split(rest))
    exposed = next(rest for word, rest in _instructions() if word == "EXPOSE").split()
    assert exposed == [env["BANDITD_PORT"], env["BANDITD_METRICS_PORT"]]
