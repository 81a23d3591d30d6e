"""Compile (or load from Numba's on-disk cache) every compiled function the server calls, and
run each once, before health turns SERVING: the kernels' own warm-up plus the serving
package's compiled helpers (request checks, response encoding)."""

from __future__ import annotations

import time

import numpy as np

from banditd.kernels.warmup import warm_up as warm_up_kernels
from banditd.server.api.wire import encode_arm_ids, select_responses, select_responses_bound
from banditd.server.state.checks import first_out_of_range


def warm_up() -> float:
    """Warm every compiled function; the seconds taken."""
    start = time.perf_counter()
    warm_up_kernels()
    first_out_of_range(np.ones(3), 1.0)
    # as BatchSelectArms calls it: a read-only prefix (np.frombuffer of bytes), int counters
    arm_bytes, arm_starts = encode_arm_ids(["a", "b"])
    out = np.empty(select_responses_bound(2, 1, 1), dtype=np.uint8)
    select_responses(np.frombuffer(b"p", dtype=np.uint8), 1, np.zeros(2, dtype=np.int64),
                     arm_bytes, arm_starts, np.ones(2).view(np.uint8), 0, out)
    return time.perf_counter() - start
