"""A vectorizable float64 ``exp`` for the fused CPU kernels.

numba lowers ``math.exp`` to a libm call, which LLVM cannot vectorize (the pip builds of
llvmlite have no SVML), so a step that calls it runs one neuron at a time. :func:`exp` is
plain arithmetic that LLVM vectorizes with the rest of the step: Cody-Waite reduction
``x = n ln2 + r`` (``|r| <= ln2/2``, ln2 split in a high part exact in 32 bits and a low
part), the degree-13 Taylor polynomial of ``e^r`` (truncation below 2e-17 relative on that
interval) in Horner form, and the scale ``2^n`` built from its IEEE exponent bits. Accuracy:
within 1 ulp of libm's ``exp`` measured (the test allows 2) for ``-708 <= x <= 709`` (checked by
``tests/test_cpu_backend.py`` on a dense grid). Outside: ``x > 709`` gives ``inf``, ``x <
-708`` gives 0 (libm flushes through the subnormals, this flushes at ``e^-708``, below any
value the kernels keep), NaN gives NaN.
"""

from __future__ import annotations

import math

from numba import njit, types
from numba.extending import intrinsic

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 bits: n * _LN2_HI is exact for |n| < 2^20
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))  # Horner order
_LO, _HI = -708.0, 709.0


@intrinsic
def _bits_to_float(typingctx, bits):
    """The float64 whose IEEE bits are the int64 ``bits`` (a bitcast, no conversion)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@njit(inline="always", cache=True, fastmath=False, nogil=True, error_model="numpy")
def exp(x: float) -> float:
    """``e^x`` for a float64 ``x``, vectorizable (see the module docstring for accuracy)."""
    xc = min(max(x, _LO), _HI)  # NaN passes min/max unchanged (numba's IEEE min/max)
    n = math.floor(xc * _LOG2E + 0.5)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = 0.0
    for c in _TAYLOR:
        p = p * r + c
    e = p * _bits_to_float((types.int64(n) + 1023) << 52)  # n in [-1022, 1023]
    e = math.inf if x > _HI else e
    return 0.0 if x < _LO else e
