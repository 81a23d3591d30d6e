"""Numba settings shared by every kernel (defined once, imported everywhere).

``error_model="numpy"`` makes a float division by zero give inf/nan instead of raising, so a
``nogil`` kernel never has to build a Python exception on the hot path (the server validates
inputs before calling a kernel).

``JIT`` (strict IEEE arithmetic) is used by everything that draws random numbers, ranks or
computes propensities: the kernels must reproduce the pure-Python :class:`kernels.rng.Xoshiro`
stream and the NumPy references exactly, and with reassociation allowed LLVM rewrote the
inlined gamma/beta samplers of a large kernel enough to change accept/reject decisions (so the
random stream diverged), which strict mode rules out.

``JIT_DOT`` adds :data:`FASTMATH` and is used only by the pure dot-product helpers of the linear
policies (θ̂ᵀx, xᵀA⁻¹x: O(K·d²) multiply-adds): reassociation lets LLVM vectorise the sums with
several accumulators, contraction fuses multiply-adds. It keeps IEEE inf/nan semantics (no
``nnan``/``ninf``, hence not ``fastmath=True``) and exact division (no ``arcp``) and library
functions (no ``afn``). Results differ from NumPy's in the last bits only; the kernel tests
compare propensities to 1e-9 and decisions exactly, which holds because the scores are
continuous (no exact ties other than designed ones such as untried arms at +inf).
"""

from typing import Any

FASTMATH = frozenset({"nsz", "contract", "reassoc"})

JIT: dict[str, Any] = dict(
    cache=True, nogil=True, fastmath=False, boundscheck=False, error_model="numpy"
)

JIT_DOT: dict[str, Any] = dict(JIT, fastmath=set(FASTMATH))

# The per-decision kernels (each policy's ``_select_bound``) keep the GIL: a decision takes
# ~1 µs on the event loop's thread, and releasing and taking back the GIL around it costs
# about 1% of a SelectArm.
JIT_GIL: dict[str, Any] = dict(JIT, nogil=False)
