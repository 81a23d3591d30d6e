"""UCB1 (kernels/ucb1.py): what is specific to it; the kernel-vs-reference and batch tests of
every policy are in test_kernels_policies.py, its learning test in test_convergence.py."""

from __future__ import annotations

import numpy as np

from banditd.kernels import ucb1 as mod
from banditd.kernels.rng import seed_state


def test_state_fields_in_snapshot_order():
    """Snapshots store the state's arrays in this order: it must not change."""
    assert mod.State._fields == ("counts", "reward_sum")
    assert mod.CACHE_FIELDS == ()


def test_untried_arms_first_then_the_upper_bound():
    """Untried arms score +inf: each is chosen (uniformly among them, exact propensity) before
    any tried arm; once all are tried, the arm with the largest mean + c·sqrt(ln N / n)."""
    params = np.array([1.0])
    state = mod.State(np.array([5.0, 0.0, 3.0, 0.0]), np.array([4.0, 0.0, 1.0, 0.0]))
    eligible = np.arange(4, dtype=np.int64)
    out = np.empty(1, dtype=np.int64)

    def select(rng):
        return mod.select(state=state, params=params, eligible=eligible, context=np.empty(0),
                          t=0, selections=np.zeros(4, np.int64), floor=0.0, burn_in=0, draws=1,
                          rng=rng, out=out)

    chosen = set()
    for seed in range(20):
        assert select(seed_state(seed)) == 0.5
        chosen.add(int(out[0]))
    assert chosen == {1, 3}
    state.counts[[1, 3]] = 8.0
    state.reward_sum[[1, 3]] = 0.0
    score = mod.summary(state=state, params=params, binary=False)["score"]
    assert select(seed_state(0)) == 1.0 and out[0] == int(np.argmax(score))
