"""Compile (or load from Numba's on-disk cache) and exercise every public kernel.

The server calls :func:`warm_up` before reporting SERVING so that no request pays JIT time.
Arguments use exactly the server's dtypes: float64 state/params/context, int64 eligible /
selections / out, uint64[4] rng, Python float floor/discount/reward and Python int
t/burn-in/draws/arm; the batch kernels take 2-D C-contiguous contexts ``(rows, d)`` and
outputs ``(rows, slate)``, int64 arms and float64 rewards; states come from
``new_state(k, d, params, draws)`` as on the server.
"""

from __future__ import annotations

import time

import numpy as np

from . import POLICIES
from .allocation import prob_best_beta, prob_best_value
from .rng import seed_state


def warm_up() -> float:
    """Run select (also bound, as the server calls it) + update of every policy on small
    inputs; return the seconds taken."""
    start = time.perf_counter()
    rng = seed_state(0)
    num_arms = 3
    selections = np.zeros(num_arms, dtype=np.int64)
    eligible = np.arange(num_arms, dtype=np.int64)
    for module in POLICIES.values():
        dims = (1, 4) if module.CONTEXTUAL else (0,)
        params = np.ones(len(module.PARAM_NAMES), dtype=np.float64)
        for dim in dims:
            state = module.new_state(num_arms, dim, params, 2)
            context = np.ones(dim, dtype=np.float64)
            for slate in (1, 2):
                out = np.empty(slate, dtype=np.int64)
                for floor, burn_in in ((0.0, 0), (0.1, 0), (0.0, 1)):
                    module.select(
                        state, params, eligible, context, 0, selections, floor, burn_in, 2, rng,
                        out,
                    )
                # the server's per-decision call: the state as one structure (bind_select)
                module.bind_select(state, params, selections, 0.1, 1, 2, rng, eligible, context,
                                   0, out)(eligible, context, 0, out)
            for slate in (1, 2):  # the batch kernels: (rows, slate) outputs, (rows, d) contexts
                for floor, burn_in in ((0.0, 0), (0.1, 1)):
                    module.select_batch(
                        state, params, eligible, np.ones((2, dim)), 0, selections, floor,
                        burn_in, 2, rng, np.empty((2, slate), dtype=np.int64), np.empty(2),
                    )
            module.update_batch(state, params, np.arange(2, dtype=np.int64), np.ones(2),
                                np.ones((2, dim)), 1.0)
            for arm in range(num_arms):
                module.update(state, params, arm, 1.0, context, 1.0)
            module.revalue(state, params, 0, 0.0, 1.0, context)  # a late reward
            if not module.CONTEXTUAL:
                module.update(state, params, 0, 0.0, context, 0.99)
            module.select(
                state, params, eligible[:1], context, 3, selections, 0.0, 0, 2, rng,
                np.empty(1, dtype=np.int64),
            )
    ones = np.ones(num_arms)
    prob_best_beta(ones, ones, 2, rng)
    prob_best_value(ones, ones, ones + 1.0, ones, 2, rng)
    return time.perf_counter() - start
