"""Shared fixtures: a real banditd server on 127.0.0.1 port 0 shared by the whole test run,
talked to via generated stubs. Helpers (servers, stubs, experiment builders) live in helpers.py.

Tiers: ``make test`` runs everything; ``make test-fast`` (``-m "not slow"``) leaves out the
tests marked ``slow`` (subprocess servers, kill -9 trials, benchmark smoke runs, convergence
simulations, the container's commands, mypy).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Numba, before anything imports it: the whole suite compiles for a generic x86-64 CPU into
# one cache directory, as the container image does. test_docker.py runs the image's build
# step (every kernel compiled into that directory) first, so a fresh clone compiles each
# kernel about once, and later tests and servers load it.
os.environ["NUMBA_CPU_NAME"] = os.environ.get("NUMBA_CPU_NAME", "generic")
os.environ["NUMBA_CACHE_DIR"] = os.environ.get(
    "NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / "build" / "numba-cache"))

import grpc
import pytest
from hypothesis import settings

from banditd.decision.v1 import decision_pb2_grpc as pb_grpc
from helpers import RunningServer, running_server

# Property tests draw the same examples on every run (seeded from each test's own code),
# and no example database makes one machine's run differ from another's.
settings.register_profile("banditd", derandomize=True, database=None, print_blob=True)
settings.load_profile("banditd")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("banditd"), max_batch_size=1000) as s:
        yield s


@pytest.fixture(scope="session")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> pb_grpc.DecisionServiceStub:
    return pb_grpc.DecisionServiceStub(channel)


_ids = itertools.count()


@pytest.fixture
def new_id(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Unique experiment ids per test (the one server is shared by every test)."""

    def make(prefix: str = "") -> str:
        name = request.node.name.replace("[", "-").replace("]", "").replace(" ", "")[:60]
        return f"{prefix or name}-{next(_ids)}"

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image's build-step test first: it fills the Numba cache every other test loads."""
    first = [i for i in items if i.nodeid.endswith("test_image_commands_work_when_run_directly")]
    items[:] = first + [i for i in items if i not in first]
