"""Compile (or load from Numba's on-disk cache) and exercise every public kernel.

The server calls :func:`warm_up` with the policies its state uses before reporting SERVING,
:func:`warm_up_policy` for another policy before its first experiment is created and
:func:`warm_up_allocation` before the first request that needs it, so that no decision pays
JIT time.
Arguments use exactly the server's dtypes: float64 state/params/context, int64 eligible /
selections / out, uint64[4] rng, Python float floor/discount/reward and Python int
t/burn-in/draws/arm; the batch kernels take 2-D C-contiguous contexts ``(rows, d)`` and
outputs ``(rows, slate)``, int64 arms and float64 rewards; states come from
``new_state(num_arms=k, dim=d, params=params, draws=draws)`` as on the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import ModuleType

import numpy as np

from . import POLICIES
from .allocation import prob_best_beta, prob_best_value
from .rng import seed_state


def warm_up(policies: Iterable[str] | None = None, allocation: bool = True) -> float:
    """Run select (also bound, as the server calls it) + update of the policies named (kernel
    names of :data:`POLICIES`; default: all) and, with ``allocation``, the Monte-Carlo
    allocation kernels on small inputs; return the seconds taken."""
    start = time.perf_counter()
    seed_state(0)
    for name in POLICIES if policies is None else policies:
        warm_up_policy(POLICIES[name])
    if allocation:
        warm_up_allocation()
    return time.perf_counter() - start


def warm_up_allocation() -> None:
    """The probability-best kernels (GetArmStats, GetAllocation, THOMPSON AllocateBudget)."""
    rng = seed_state(0)
    ones = np.ones(3)
    prob_best_beta(ones, ones, 2, rng)
    prob_best_value(ones, ones, ones + 1.0, ones, 2, rng)


def warm_up_policy(module: ModuleType) -> None:
    """Compile (or load) and run every kernel of one policy module."""
    rng = seed_state(0)
    num_arms = 3
    selections = np.zeros(num_arms, dtype=np.int64)
    eligible = np.arange(num_arms, dtype=np.int64)
    dims = (1, 4) if module.CONTEXTUAL else (0,)
    params = np.ones(len(module.PARAM_NAMES), dtype=np.float64)
    for dim in dims:
        state = module.new_state(num_arms=num_arms, dim=dim, params=params, draws=2)
        context = np.ones(dim, dtype=np.float64)
        for slate in (1, 2):
            out = np.empty(slate, dtype=np.int64)
            for floor, burn_in in ((0.0, 0), (0.1, 0), (0.0, 1)):
                module.select(
                    state=state, params=params, eligible=eligible, context=context, t=0,
                    selections=selections, floor=floor, burn_in=burn_in, draws=2, rng=rng,
                    out=out,
                )
            # the server's per-decision call: the state as one structure (bind_select)
            module.bind_select(state=state, params=params, selections=selections, floor=0.1,
                               burn_in=1, draws=2, rng=rng, eligible=eligible,
                               context=context, t=0, out=out)(eligible, context, 0, out)
        for slate in (1, 2):  # the batch kernels: (rows, slate) outputs, (rows, d) contexts
            for floor, burn_in in ((0.0, 0), (0.1, 1)):
                module.select_batch(
                    state=state, params=params, eligible=eligible,
                    contexts=np.ones((2, dim)), t=0, selections=selections, floor=floor,
                    burn_in=burn_in, draws=2, rng=rng,
                    out=np.empty((2, slate), dtype=np.int64), propensity=np.empty(2),
                )
        module.update_batch(state=state, params=params, arms=np.arange(2, dtype=np.int64),
                            rewards=np.ones(2), contexts=np.ones((2, dim)), discount=1.0)
        for arm in range(num_arms):
            module.update(state=state, params=params, arm=arm, reward=1.0, context=context,
                          discount=1.0)
        if not module.CONTEXTUAL:
            module.update(state=state, params=params, arm=0, reward=0.0, context=context,
                          discount=0.99)
        # the server's per-reward call (bind_update)
        module.bind_update(state=state, params=params, discount=1.0)(0, 1.0, context)
        module.select(
            state=state, params=params, eligible=eligible[:1], context=context, t=3,
            selections=selections, floor=0.0, burn_in=0, draws=2, rng=rng,
            out=np.empty(1, dtype=np.int64),
        )
