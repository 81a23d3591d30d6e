"""Every runnable example in clients/examples runs against a real server and asserts its outcome."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT

EXAMPLES = sorted((ROOT / "clients" / "examples").glob("*.py"))


def test_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {
        "offer_selection_cpa", "ab_allocation_daily", "bid_strategy_selection",
        "personalised_targeting", "budget_split",
    }


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_and_succeeds(server, script):
    proc = subprocess.run([sys.executable, str(script), "--target", f"127.0.0.1:{server.port}"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL" not in proc.stderr
