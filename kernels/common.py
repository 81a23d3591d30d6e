"""Slate construction shared by every policy: burn-in, exploration floor, ranking, propensity.

Random-number consumption of :func:`_finalize` (the references reproduce it exactly):

1. Floor first: only when ``floor > 0`` one ``uniform()`` is drawn; if it is ``< m*floor`` the
   slate is a partial Fisher–Yates shuffle of all eligible arms (slot ``i`` draws
   ``randint(m - i)``), so every eligible arm keeps probability >= ``floor`` even during
   burn-in.
2. Burn-in (``burn_in > 0``), otherwise: ``U`` = eligible arms with ``selections[arm] <
   burn_in``. If ``U`` is non-empty, the work list is ``U`` (eligible order) followed by the
   other arms (eligible order); slots ``0 .. min(n, |U|)-1`` are a partial Fisher–Yates shuffle
   of ``U`` — slot ``i`` draws ``randint(|U| - i)`` — and any later slots are ranked (step 3).
3. Ranking: for slot ``i`` the candidates are the work list ``perm[i:]``; the maximum score is
   found and, only when several candidates share it exactly, one ``randint(ties)`` picks among
   them (in work-list order). The chosen entry is swapped into ``perm[i]``.

Propensity of ``out[0]`` = ``floor + (1 - m*floor) * own``, where ``own`` is the probability of
that arm under burn-in (``1/|U|`` for arms in ``U``, 0 for the others) while ``U`` is non-empty,
else under the policy (``probs``).

Monte-Carlo propensities (the Thompson family): with ``R`` rounds of posterior draws besides the
decision round (the draws that give the scores), ``probs[j] = (rounds won by j + share of j in
the decision round) / (R + 1)``. A round's winner is its first argmax (exact ties have
probability 0 for continuous draws); the decision round gives ``1/ties`` to each arm sharing its
maximum, matching the uniform tie-break of step 3. So the estimate of P(j is best) is unbiased,
and the arm the policy actually chooses always gets at least ``1/(R+1)`` (``1/(ties·(R+1))``
in an exact tie), never a propensity of 0, which would break inverse-propensity off-policy
evaluation. (Given that arm ``j`` was chosen, its estimate is ``(Bin(R, p) + 1)/(R + 1)``, so the
expected inverse-propensity weight is ``1 - (1-p)^(R+1)`` rather than 1: small for ``R·p``
large, noticeable for rarely chosen arms with small ``R``.)

The helpers are inlined (``inline="always"``) into each policy's ``_select``: a real call that
passes arrays updates their reference counts, which measured 0.1–0.2 µs per decision.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import JIT
from .rng import _randint, _uniform


@njit(inline="always", **JIT)
def _max_and_ties(scores):
    """(maximum score, number of scores equal to it)."""
    m = scores.shape[0]
    best = scores[0]
    for j in range(1, m):
        if scores[j] > best:
            best = scores[j]
    ties = 0
    for j in range(m):
        if scores[j] == best:
            ties += 1
    return best, ties


@njit(inline="always", **JIT)
def _max_tie_probs(scores, probs):
    """probs = 1/ties on the arms sharing the maximum score, 0 elsewhere."""
    m = scores.shape[0]
    best, ties = _max_and_ties(scores)
    for j in range(m):
        probs[j] = 1.0 / ties if scores[j] == best else 0.0


@njit(inline="always", **JIT)
def _add_decision_round(scores, wins, rounds, probs):
    """probs = (wins + decision-round share) / (rounds + 1); ``wins`` may alias ``probs``."""
    m = scores.shape[0]
    best, ties = _max_and_ties(scores)
    share = 1.0 / ties
    inv = 1.0 / (rounds + 1)
    for j in range(m):
        w = wins[j] + share if scores[j] == best else wins[j]
        probs[j] = w * inv


@njit(inline="always", **JIT)
def _round_probs(draws, rows, scores, best, best_j, probs):
    """Propensities from ``R = draws.shape[1]`` Monte-Carlo rounds plus the decision round:
    ``draws[rows[j], r]`` is the value of eligible arm ``j`` in round ``r``, ``scores[j]`` its
    decision-round value. ``best``/``best_j`` are scratch of length R (running maximum of each
    round, arm by arm, so the inner loop is unit-stride and branch-free)."""
    m = rows.shape[0]
    rounds = draws.shape[1]
    first = rows[0]
    for r in range(rounds):
        best[r] = draws[first, r]
        best_j[r] = 0
    for j in range(1, m):
        row = rows[j]
        for r in range(rounds):
            v = draws[row, r]
            if v > best[r]:
                best[r] = v
                best_j[r] = j
    for j in range(m):
        probs[j] = 0.0
    for r in range(rounds):
        probs[best_j[r]] += 1.0
    _add_decision_round(scores, probs, rounds, probs)


@njit(inline="always", **JIT)
def _shuffle(perm, pool_end, n, eligible, rng, out):
    """Partial Fisher–Yates: slots ``0 .. min(n, pool_end)-1`` from ``perm[:pool_end]``."""
    stop = min(n, pool_end)
    for i in range(stop):
        r = i + _randint(rng, pool_end - i)
        tmp = perm[i]
        perm[i] = perm[r]
        perm[r] = tmp
        out[i] = eligible[perm[i]]


@njit(inline="always", **JIT)
def _rank(scores, perm, start, n, eligible, rng, out):
    """Slots ``start .. n-1`` by descending score, uniform random tie-break."""
    m = perm.shape[0]
    for i in range(start, n):
        best = scores[perm[i]]
        best_k = i
        ties = 1
        for k in range(i + 1, m):
            v = scores[perm[k]]
            if v > best:
                best = v
                best_k = k
                ties = 1
            elif v == best:
                ties += 1
        if ties > 1:
            pick = _randint(rng, ties)
            for k in range(i, m):
                if scores[perm[k]] == best:
                    if pick == 0:
                        best_k = k
                        break
                    pick -= 1
        tmp = perm[i]
        perm[i] = perm[best_k]
        perm[best_k] = tmp
        out[i] = eligible[perm[i]]


@njit(inline="always", **JIT)
def _finalize(scores, probs, eligible, selections, floor, burn_in, rng, out):
    m = eligible.shape[0]
    n = out.shape[0]
    perm = np.empty(m, dtype=np.int64)
    nu = 0
    if burn_in > 0:
        for j in range(m):
            if selections[eligible[j]] < burn_in:
                perm[nu] = j
                nu += 1
    if nu > 0:
        w = nu
        for j in range(m):
            if selections[eligible[j]] >= burn_in:
                perm[w] = j
                w += 1
    else:
        for j in range(m):
            perm[j] = j
    keep = 1.0 - m * floor  # probability of the policy's (or burn-in's) own choice
    if floor > 0.0 and _uniform(rng) < m * floor:
        _shuffle(perm, m, n, eligible, rng, out)
        if nu > 0:  # noqa: SIM108 (clearer as a block)
            own = 1.0 / nu if selections[out[0]] < burn_in else 0.0
        else:
            own = probs[perm[0]]
        return floor + keep * own
    if nu > 0:
        _shuffle(perm, nu, n, eligible, rng, out)
        if n > nu:
            _rank(scores, perm, nu, n, eligible, rng, out)
        return floor + keep / nu
    _rank(scores, perm, 0, n, eligible, rng, out)
    return floor + keep * probs[perm[0]]


@njit(inline="always", **JIT)
def _count_selections(selections, slate):
    """Every arm of a decision's slate counts as selected (as the server does between two
    single decisions), so burn-in sees a batch's earlier decisions."""
    for s in range(slate.shape[0]):
        selections[slate[s]] += 1


def mc_cache(num_arms: int, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """The Thompson family's cached Monte-Carlo rounds, ``(mc[K, R], mc_valid[K])``, all
    invalid (see :mod:`kernels.thompson`)."""
    if draws < 1:
        raise ValueError(f"draws is {draws}, the Monte-Carlo propensity needs at least 1")
    return np.zeros((num_arms, draws)), np.zeros(num_arms)


def finalize_reference(scores, probs, eligible, selections, floor, burn_in, source, out) -> float:
    """Plain NumPy/Python twin of :func:`_finalize` (same random-number consumption)."""
    m = len(eligible)
    n = len(out)
    scores = np.asarray(scores, dtype=np.float64)

    def shuffle(perm, pool_end):
        for i in range(min(n, pool_end)):
            r = i + source.randint(pool_end - i)
            perm[i], perm[r] = perm[r], perm[i]
            out[i] = eligible[perm[i]]

    def rank(perm, start):
        for i in range(start, n):
            rem = scores[perm[i:]]
            ties = np.flatnonzero(rem == rem.max())
            k = i + int(ties[0] if len(ties) == 1 else ties[source.randint(len(ties))])
            perm[i], perm[k] = perm[k], perm[i]
            out[i] = eligible[perm[i]]

    cold = np.asarray(selections)[eligible] < burn_in if burn_in > 0 else np.zeros(m, bool)
    nu = int(cold.sum())
    perm = np.concatenate([np.flatnonzero(cold), np.flatnonzero(~cold)]) if nu else np.arange(m)
    keep = 1.0 - m * floor
    if floor > 0.0 and source.uniform() < m * floor:
        shuffle(perm, m)
        if nu:  # noqa: SIM108 (mirrors the kernel)
            own = 1.0 / nu if selections[out[0]] < burn_in else 0.0
        else:
            own = float(probs[perm[0]])
        return floor + keep * own
    if nu:
        shuffle(perm, nu)
        if n > nu:
            rank(perm, nu)
        return floor + keep / nu
    rank(perm, 0)
    return floor + keep * float(probs[perm[0]])


def compiled(kernel, *args):
    """``kernel``'s machine code for arguments of exactly ``args``' types: the entry point its
    dispatcher calls once it has typed every argument, found among the compiled
    specialisations, loaded from the cache or compiled. The policies' ``bind_select`` take it
    for a kernel of one structure (the state's arrays and scalars, typed in Python: slow) and
    the per-call arrays. Nothing checks the types on the entry point's calls: only arguments
    of these same types (dtype, dimensions, layout; a C-contiguous 1-D int64 array for an
    int64 array given here) may be passed to it."""
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))  # a known one if any


def batch_select_reference(select_reference, state, params, eligible, contexts, t, selections,
                           floor, burn_in, draws, source, out, propensity) -> None:
    """Twin of every policy's ``select_batch``: row ``i`` of ``out`` / ``propensity`` is what
    ``select_reference`` gives for ``contexts[i]`` after the decisions of rows ``< i`` were
    counted in ``selections`` (so a batch equals the same decisions made one by one)."""
    for i in range(out.shape[0]):
        propensity[i] = select_reference(state, params, eligible, contexts[i], t, selections,
                                         floor, burn_in, draws, source, out[i])
        np.add.at(selections, out[i], 1)


def batch_update_reference(update_reference, state, params, arms, rewards, contexts,
                           discount) -> None:
    """Twin of every policy's ``update_batch``: the updates applied in row order."""
    for i in range(arms.shape[0]):
        update_reference(state, params, int(arms[i]), float(rewards[i]), contexts[i], discount)


def max_tie_probs_reference(scores: np.ndarray) -> np.ndarray:
    is_max = scores == scores.max()
    return is_max / is_max.sum()


def round_probs_reference(rounds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Twin of the Monte-Carlo estimate: ``rounds`` is (R, m), ``scores`` the decision round."""
    m = len(scores)
    wins = np.bincount(np.argmax(rounds, axis=1), minlength=m)
    return (wins + max_tie_probs_reference(scores)) / (len(rounds) + 1)
