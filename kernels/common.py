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
passes arrays updates their reference counts (0.1–0.2 µs per decision).

The policy API, written once
----------------------------
A policy module declares ``State`` (a NamedTuple of its arrays, first axis = arm), two jitted
kernels ``_select`` and ``_update``, and their references; :func:`policy_api` writes the rest
for it: ``select``, ``update``, ``select_batch``, ``update_batch``, ``bind_select``,
``bind_update``, the batch references, and the jitted ``_select_bound``, ``_select_batch`` and
``_update_batch``.

A kernel's parameter names say what it is given: the name of a ``State`` field is that array;
any other name is one of :data:`SELECT_ARGS` / :data:`UPDATE_ARGS`, the public functions'
argument of that name (in the batch forms ``context``, ``out``, ``arm`` and ``reward`` are row
``i`` of ``contexts``, ``out``, ``arms``, ``rewards``). The generated functions pass exactly
those, positionally: a Python call to a dispatcher types every argument, ~30–150 ns each, and a
NamedTuple goes through Numba's slow path (~0.8 µs), so the fields are passed, never the
``State``, and a kernel takes no argument it does not read. For Thompson sampling::

    def select(*, state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
        return _select(state[0], state[1], state[2], state[3], params, eligible, selections,
                       floor, burn_in, rng, out)

    def _select_bound(bound, eligible, out):   # @njit: the server's per-decision kernel
        state = bound.state
        return _select(state[0], state[1], state[2], state[3], bound.params, eligible,
                       bound.selections, bound.floor, bound.burn_in, bound.rng, out)

(all of it is in :data:`GENERATED`). A public function's keyword arguments and the
NamedTuple's indexing cost ~0.1 µs per Python call (CPython specialises neither); the server's
per-request calls go through ``bind_select`` / ``bind_update``, whose calls pay neither.

Why source text rather than closures over the kernel:
Numba's on-disk cache keys a closure on its pickled cells, and a dispatcher pickles
differently in every process, so a jitted closure is compiled again at every start (a new
cache entry per run). Generated source is cached like hand-written code: it is compiled
with the kernel's file as its file name and the kernel's first line as its line (Numba names a
cache entry after module, function and line, and drops it when that file changes), in a
namespace named after the kernel's module (which Numba imports to load it). As for every
kernel, editing this module (or :mod:`kernels.rng`) needs the cache cleared (``make clean``).
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numba import njit, types
from numba.experimental import structref

from .config import JIT, JIT_GIL
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


def max_tie_probs_reference(scores: np.ndarray) -> np.ndarray:
    is_max = scores == scores.max()
    return is_max / is_max.sum()


def round_probs_reference(rounds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Twin of the Monte-Carlo estimate: ``rounds`` is (R, m), ``scores`` the decision round."""
    m = len(scores)
    wins = np.bincount(np.argmax(rounds, axis=1), minlength=m)
    return (wins + max_tie_probs_reference(scores)) / (len(rounds) + 1)


# ------------------------------------------------------------------------------ the policy API

SELECT_ARGS = ("params", "eligible", "context", "t", "selections", "floor", "burn_in", "draws",
               "rng", "out")
UPDATE_ARGS = ("params", "arm", "reward", "context", "discount")
# select's arguments that change from one decision to the next: bind_select's ``call`` passes
# them to the bound kernel, the other arguments are bound with the state
_PER_CALL = ("eligible", "context", "t", "out")
# the batch forms' arrays (one row per decision or reward) and the row a kernel gets from each
_BATCH_NAMES = {"context": "contexts", "arm": "arms", "reward": "rewards"}
_ROWS = {"context": "contexts[i]", "out": "out[i]", "arm": "arms[i]", "reward": "rewards[i]"}

# names of the generated functions' arguments and locals: no State field may take one
_RESERVED = {*SELECT_ARGS, *UPDATE_ARGS, *_BATCH_NAMES.values(), "propensity", "state", "bound",
             "kernel", "call", "i"}

GENERATED: dict[str, str] = {}  # "module.function" -> the source policy_api generated for it


@structref.register
class BoundSelectType(types.StructRef):
    """Numba type of :class:`BoundSelect`."""


class BoundSelect(structref.StructRefProxy):
    """``bind_select``'s state arrays and scalars as one kernel argument: ``state`` (a tuple of
    the arrays the policy's ``_select`` reads, in its parameter order), ``params``,
    ``selections``, ``floor``, ``burn_in``, ``draws`` and ``rng``."""

    def __new__(cls, state, params, selections, floor, burn_in, draws, rng):
        return _new_bound(state, params, selections, floor, burn_in, draws, rng)


structref.define_proxy(BoundSelect, BoundSelectType,
                       ["state", "params", "selections", "floor", "burn_in", "draws", "rng"])


@njit(**JIT)
def _new_bound(state, params, selections, floor, burn_in, draws, rng):
    return BoundSelect(state, params, selections, floor, burn_in, draws, rng)


def compiled(kernel, *args):
    """``kernel``'s machine code for arguments of exactly ``args``' types: the entry point its
    dispatcher calls once it has typed every argument, found among the compiled
    specialisations, loaded from the cache or compiled. ``bind_select`` takes it for the
    bound kernel (a :class:`BoundSelect`, typed in Python: slow) and the per-call arrays.
    Nothing checks the types on the entry point's calls: only arguments of these same types
    (dtype, dimensions, layout; a C-contiguous 1-D int64 array for an int64 array given here)
    may be passed to it."""
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))  # a known one if any


class PolicyAPI(NamedTuple):
    """What :func:`policy_api` writes for a policy (its module binds each to the same name,
    the three jitted kernels with a leading underscore)."""

    select: Callable[..., float]
    update: Callable[..., None]
    select_batch: Callable[..., None]
    update_batch: Callable[..., None]
    bind_select: Callable[..., Callable[..., float]]
    bind_update: Callable[..., Callable[..., None]]
    select_batch_reference: Callable[..., None]
    update_batch_reference: Callable[..., None]
    select_bound_kernel: Any
    select_batch_kernel: Any
    update_batch_kernel: Any


def policy_api(state_type: type, select_kernel: Any, update_kernel: Any,
               select_reference: Callable[..., float],
               update_reference: Callable[..., None]) -> PolicyAPI:
    """The API of the policy whose state is ``state_type`` (a NamedTuple of arrays) and whose
    jitted kernels are ``select_kernel`` and ``update_kernel`` (see the module docstring:
    their parameter names say what each is given)."""
    fields = state_type._fields  # type: ignore[attr-defined]
    clash = set(fields) & _RESERVED
    if clash:
        raise TypeError(f"{state_type.__qualname__} fields {sorted(clash)} are names the "
                        "generated functions use")
    select_names = _parameters(select_kernel, fields, SELECT_ARGS,
                               ("eligible", "selections", "out"))
    update_names = _parameters(update_kernel, fields, UPDATE_ARGS, ("arm",))
    select_bound, select_batch_kernel = _select_kernels(select_kernel, select_names, fields)
    update_batch_kernel = _update_kernels(update_kernel, update_names)
    module = select_kernel.py_func.__module__

    def state_arg(name: str) -> str:  # the Python functions take the whole State
        return f"state[{fields.index(name)}]" if name in fields else name

    bound_state = [state_arg(n) for n in select_names if n in fields]
    bound_tuple = ", ".join(bound_state) + ("," if len(bound_state) == 1 else "")
    per_call = ", ".join(n for n in select_names if n in _PER_CALL)
    batch_select = [_BATCH_NAMES.get(n, n) for n in select_names] + ["propensity"]
    batch_update = [_BATCH_NAMES.get(n, n) for n in update_names]
    update_fields = [n for n in update_names if n in fields]
    sources = {
        "select": (select_kernel, f"""\
def select(*, state, params, eligible, context, t, selections, floor, burn_in, draws, rng, out):
    return _select({_call(select_names, state_arg)})
"""),
        "update": (update_kernel, f"""\
def update(*, state, params, arm, reward, context, discount):
    _update({_call(update_names, state_arg)})
"""),
        "select_batch": (select_kernel, f"""\
def select_batch(*, state, params, eligible, contexts, t, selections, floor, burn_in, draws, rng,
                 out, propensity):
    _select_batch({_call(batch_select, state_arg)})
"""),
        "update_batch": (update_kernel, f"""\
def update_batch(*, state, params, arms, rewards, contexts, discount):
    _update_batch({_call(batch_update, state_arg)})
"""),
        "bind_update": (update_kernel, f"""\
def bind_update(*, state, params, discount):
{"".join(f"    {n} = {state_arg(n)}{chr(10)}" for n in update_fields)}
    def call(arm, reward, context):
        _update({_call(update_names, lambda n: n)})

    return call
"""),
        "bind_select": (select_kernel, f"""\
def bind_select(*, state, params, selections, floor, burn_in, draws, rng, eligible, context, t,
                out):
    bound = BoundSelect(({bound_tuple}), params, selections, floor, burn_in, draws, rng)
    kernel = compiled(_select_bound, bound, {per_call})

    def call(eligible, context, t, out):
        return kernel(bound, {per_call})

    return call
"""),
    }
    namespace = {"_select": select_kernel, "_update": update_kernel, "_select_bound": select_bound,
                 "_select_batch": select_batch_kernel, "_update_batch": update_batch_kernel,
                 "BoundSelect": BoundSelect, "compiled": compiled}
    functions = {}
    for name, (kernel, source) in sources.items():
        fn = _define(name, source, kernel, namespace, module)
        fn.__doc__ = _DOCS[name]
        functions[name] = fn
    select_batch_reference, update_batch_reference = _batch_references(
        select_reference, update_reference, module)
    return PolicyAPI(functions["select"], functions["update"], functions["select_batch"],
                     functions["update_batch"], functions["bind_select"],
                     functions["bind_update"], select_batch_reference, update_batch_reference,
                     select_bound, select_batch_kernel, update_batch_kernel)


def _parameters(kernel: Any, fields: tuple[str, ...], allowed: tuple[str, ...],
                required: tuple[str, ...]) -> tuple[str, ...]:
    """``kernel``'s parameter names, checked: each a state field or one of ``allowed``."""
    names = tuple(inspect.signature(kernel.py_func).parameters)
    unknown = [n for n in names if n not in fields and n not in allowed]
    missing = [n for n in required if n not in names]
    if unknown or missing:
        raise TypeError(
            f"{kernel.py_func.__module__}.{kernel.py_func.__qualname__}: parameters {unknown} are "
            f"neither state fields {fields} nor among {allowed}; missing {missing}")
    return names


def _call(names, arg: Callable[[str], str]) -> str:
    return ", ".join(arg(n) for n in names)


# the jitted functions generated for a select / update kernel (policies sharing a kernel share them)
_SELECT_KERNELS: dict[Any, tuple[Any, Any]] = {}
_UPDATE_KERNELS: dict[Any, Any] = {}


def _select_kernels(kernel: Any, names: tuple[str, ...], fields: tuple[str, ...]) -> tuple:
    """The jitted ``_select_bound`` and ``_select_batch`` of a select kernel (once per kernel:
    their source depends only on its parameter names)."""
    if kernel not in _SELECT_KERNELS:
        bound_fields = [n for n in names if n in fields]

        def bound_arg(name: str) -> str:
            if name in fields:
                return f"state[{bound_fields.index(name)}]"
            return name if name in _PER_CALL else f"bound.{name}"

        per_call = ", ".join(n for n in names if n in _PER_CALL)
        batch = ", ".join([_BATCH_NAMES.get(n, n) for n in names] + ["propensity"])
        bound = f"""\
def _select_bound(bound, {per_call}):
    state = bound.state
    return _select({_call(names, bound_arg)})
"""
        loop = f"""\
def _select_batch({batch}):
    for i in range(out.shape[0]):
        propensity[i] = _select({_call(names, lambda n: _ROWS.get(n, n))})
        _count_selections(selections, out[i])
"""
        module = kernel.py_func.__module__
        namespace = {"_select": kernel, "_count_selections": _count_selections}
        _SELECT_KERNELS[kernel] = (
            njit(**JIT_GIL)(_define("_select_bound", bound, kernel, namespace, module)),
            njit(**JIT)(_define("_select_batch", loop, kernel, namespace, module)))
    return _SELECT_KERNELS[kernel]


def _update_kernels(kernel: Any, names: tuple[str, ...]) -> Any:
    """The jitted ``_update_batch`` of an update kernel (once per kernel)."""
    if kernel not in _UPDATE_KERNELS:
        batch = ", ".join(_BATCH_NAMES.get(n, n) for n in names)
        loop = f"""\
def _update_batch({batch}):
    for i in range(arms.shape[0]):
        _update({_call(names, lambda n: _ROWS.get(n, n))})
"""
        module = kernel.py_func.__module__
        namespace = {"_update": kernel}
        _UPDATE_KERNELS[kernel] = njit(**JIT)(_define("_update_batch", loop, kernel, namespace,
                                                      module))
    return _UPDATE_KERNELS[kernel]


def _define(name: str, source: str, kernel: Any, namespace: dict, module: str) -> Any:
    """Compile ``source`` (defining ``name``) as if written at ``kernel``'s first line, in its
    file, in a namespace named ``module`` (see the module docstring: what Numba's cache needs)."""
    code = kernel.py_func.__code__
    tree = ast.parse(source)
    ast.increment_lineno(tree, code.co_firstlineno - 1)
    scope = {"__name__": module, **namespace}
    exec(compile(tree, code.co_filename, "exec"), scope)
    GENERATED[f"{module}.{name}"] = source
    return scope[name]


def _batch_references(select_reference: Callable[..., float],
                      update_reference: Callable[..., None], module: str) -> tuple:
    """The batch references: ``select_reference`` / ``update_reference`` row by row."""

    def select_batch_reference(*, state, params, eligible, contexts, t, selections, floor,
                               burn_in, draws, source, out, propensity) -> None:
        for i in range(out.shape[0]):
            propensity[i] = select_reference(
                state=state, params=params, eligible=eligible, context=contexts[i], t=t,
                selections=selections, floor=floor, burn_in=burn_in, draws=draws, source=source,
                out=out[i])
            np.add.at(selections, out[i], 1)

    def update_batch_reference(*, state, params, arms, rewards, contexts, discount) -> None:
        for i in range(arms.shape[0]):
            update_reference(state=state, params=params, arm=int(arms[i]),
                             reward=float(rewards[i]), context=contexts[i], discount=discount)

    for fn in (select_batch_reference, update_batch_reference):
        fn.__module__ = module
        fn.__qualname__ = fn.__name__
        fn.__doc__ = _DOCS[fn.__name__]
    return select_batch_reference, update_batch_reference


_DOCS = {
    "select": """Fill ``out`` (arm positions, best first) and return the propensity of ``out[0]``.

    ``state`` is the policy's ``State``, ``params`` float64 in ``PARAM_NAMES`` order,
    ``eligible`` int64 arm positions, ``context`` float64[d] (empty when not contextual), ``t``
    the updates so far, ``selections`` int64 decisions per arm (burn-in), ``floor`` the
    exploration floor (a probability per eligible arm), ``burn_in`` the decisions each arm
    gets first, ``draws`` the Monte-Carlo rounds of an estimated propensity, ``rng`` the
    uint64[4] random state (advanced in place). Scalars are passed through as given (the
    server's types: ``floor`` float, ``t``, ``burn_in`` and ``draws`` int); other types compile
    another specialisation. Only what the policy's ``_select`` names is passed to it.""",
    "update": """Learn one ``reward`` of arm position ``arm`` (with ``context`` when
    contextual); ``discount`` < 1 first shrinks every arm's statistics (non-contextual
    policies only).""",
    "select_batch": """Decide ``out.shape[0]`` times in one call: row ``i`` of ``out`` (arm
    positions, best first) and ``propensity[i]`` for ``contexts[i]`` (``(rows, d)`` float64),
    each slate counted in ``selections`` before the next decision: the same decisions, draw
    for draw, as :func:`select` row by row with the slate counted in between.""",
    "update_batch": """Apply :func:`update` for each row (``arms[i]``, ``rewards[i]``,
    ``contexts[i]``) in order, in one call.""",
    "bind_select": """:func:`select` for this state, these scalars and per-call arguments of
    the types of the ``eligible``, ``context``, ``t`` and ``out`` given: ``call(eligible,
    context, t, out)`` returns what ``select`` would, the state's arrays and scalars passed
    as one :class:`kernels.common.BoundSelect` to a kernel typed once
    (:func:`kernels.common.compiled`; the server's per-decision call). The arrays are bound,
    not copied: updates in place are seen; a replaced array needs a new binding.""",
    "bind_update": """:func:`update` for this state, ``params`` and ``discount``:
    ``call(arm, reward, context)`` does what ``update`` would, with the state's arrays taken
    once here (the server's per-reward call: positional, no argument matching). The arrays
    are bound, not copied: a replaced array needs a new binding.""",
    "select_batch_reference": """Twin of ``select_batch``: row ``i`` of ``out`` /
    ``propensity`` is what ``select_reference`` gives for ``contexts[i]`` after the decisions
    of rows ``< i`` were counted in ``selections``.""",
    "update_batch_reference": """Twin of ``update_batch``: ``update_reference`` row by
    row.""",
}
