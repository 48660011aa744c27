"""Elementwise device functions shared by the forward and backward kernels (fp32)."""

import triton
import triton.language as tl
from triton import knobs
from triton.language.extra import libdevice

COMPILED = tl.constexpr(not knobs.runtime.interpret)
"""Whether the kernels compile (False under ``TRITON_INTERPRET=1``, read at import as
``triton.jit`` reads it): the interpreter has no libdevice."""


@triton.jit
def approx_div(x, y):
    """``x / y`` (fp32) as libdevice's ``__nv_fast_fdividef``: ``div.approx.ftz.f32``
    (Triton compiles libdevice with flush-to-zero), a reciprocal and a multiply, within
    2 ulp for ``2^-126 <= |y| <= 2^126``, on every Triton (3.6 and 3.9 alike); numpy's
    correctly rounded division in the interpreter. For divisors that stay in that range:
    exprel's ``z`` with ``|z| >= 0.5`` and ``dt * exprel(dt J)``. A denormal quotient or
    numerator flushes to 0 (Triton's ``div.approx.f32`` would rescale it with 3 more
    instructions per division)."""
    if COMPILED:
        q = libdevice.fast_dividef(x, y)
    else:
        q = x / y
    return q


@triton.jit
def to_fp32(x):
    """``x`` widened to fp32: bf16 by its bits (``bits << 16``, exact; 2 SASS instructions
    for a thread's 2 packed values, where ``cvt`` takes 3), other dtypes by ``.to``."""
    if x.dtype == tl.bfloat16:
        y = (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        y = x.to(tl.float32)
    return y


# exprel(z) = (e^z - 1)/z. Inside |z| < 0.5 a Taylor polynomial: the closed form loses
# ~-log10|z| digits in fp32 there, and dt*J is ~1e-2 in typical use (spec section 14).
# fp32 needs no more than degree 7 there: the first dropped term, z^8/9!, is below 1.1e-8
# (0.2 ulp of exprel(-0.5) = 0.79) at |z| = 0.5 (tests/test_device_math.py checks both
# functions against float64). Outside, the closed form (e^z - 1) * (1/z): the reciprocal
# of z is shared with exprel_derivative's closed form (one MUFU.RCP for both).
EXPREL_RADIUS = tl.constexpr(0.5)


@triton.jit
def exprel(z):
    """``(e^z - 1)/z`` (fp32; 1 at z = 0)."""
    small = tl.abs(z) < EXPREL_RADIUS
    p = 1.0 / 40320.0  # 1/8!
    p = p * z + 1.0 / 5040.0
    p = p * z + 1.0 / 720.0
    p = p * z + 1.0 / 120.0
    p = p * z + 1.0 / 24.0
    p = p * z + 1.0 / 6.0
    p = p * z + 0.5
    p = p * z + 1.0
    safe = tl.where(small, 1.0, z)
    closed = approx_div(tl.exp(safe) - 1.0, safe)
    return tl.where(small, p, closed)


@triton.jit
def exprel_derivative(z, value):
    """d exprel/dz = sum_n (n+1)/(n+2)! z^n near 0 (degree 7: the first dropped term is
    below 1e-8 at |z| = 0.5, 0.3 ulp of the smallest value there, exprel'(-0.5) = 0.36),
    ((z-1) exprel(z) + 1)/z elsewhere (``value`` = exprel(z))."""
    small = tl.abs(z) < EXPREL_RADIUS
    p = 8.0 / 362880.0  # (n+1)/(n+2)! for n = 7
    p = p * z + 7.0 / 40320.0
    p = p * z + 6.0 / 5040.0
    p = p * z + 5.0 / 720.0
    p = p * z + 4.0 / 120.0
    p = p * z + 3.0 / 24.0
    p = p * z + 2.0 / 6.0
    p = p * z + 0.5
    safe = tl.where(small, 1.0, z)
    closed = approx_div((safe - 1.0) * value + 1.0, safe)
    return tl.where(small, p, closed)


@triton.jit
def surrogate_grad(u, p0, p1, p2, p3, KIND: tl.constexpr):
    """g(u) of ``adex.surrogate`` kind ``KIND`` with hyper-parameters p0..p3 (same order)."""
    au = tl.abs(u)
    if KIND == 0:  # ReluGrad(alpha, width)
        g = tl.maximum(p0 * p1 - p0 * au, 0.0)
    elif KIND == 1:  # Sigmoid(alpha)
        s = 1.0 / (1.0 + tl.exp(-p0 * u))
        g = p0 * s * (1.0 - s)
    elif KIND == 2:  # Arctan(alpha)
        q = 1.5707963267948966 * p0 * u
        g = (p0 * 0.5) / (1.0 + q * q)
    elif KIND == 3:  # GaussianGrad(sigma, alpha)
        g = p1 * tl.exp(-(u * u) / (2.0 * p0 * p0)) / (2.5066282746310002 * p0)
    elif KIND == 4:  # InvSquareGrad(alpha)
        q = p0 * au + 1.0
        g = 1.0 / (q * q)
    elif KIND == 5:  # PiecewiseQuadratic(alpha)
        g = tl.where(au <= 1.0 / p0, p0 - p0 * p0 * au, 0.0)
    elif KIND == 6:  # PiecewiseExp(alpha)
        g = (p0 * 0.5) * tl.exp(-p0 * au)
    elif KIND == 7:  # SoftSign(alpha)
        q = 1.0 + tl.abs(p0 * u)
        g = (p0 * 0.5) / (q * q)
    elif KIND == 8:  # ERF(alpha)
        g = (p0 / 1.7724538509055159) * tl.exp(-(p0 * p0) * u * u)
    elif KIND == 9:  # SlayerGrad(alpha)
        g = tl.exp(-p0 * au)
    elif KIND == 10:  # NonzeroSignLog(alpha)
        g = 1.0 / (1.0 / p0 + au)
    elif KIND == 11:  # PiecewiseLeakyRelu(c, w)
        g = tl.where(au > p1, p0, 1.0 / (2.0 * p1))
    elif KIND == 12:  # LeakyRelu(alpha, beta)
        g = tl.where(u < 0.0, p0, p1)
    elif KIND == 13:  # LogTailedRelu(alpha)
        g = tl.where(u <= 0.0, p0, 1.0 / tl.maximum(u, 1.0))
    elif KIND == 14:  # QPseudoSpike(alpha): (1 + 2|u|/(alpha+1))^(-alpha)
        g = tl.exp(-p0 * tl.log(1.0 + 2.0 * au / (p0 + 1.0)))
    elif KIND == 15:  # S2NN(alpha, beta, epsilon)
        s = 1.0 / (1.0 + tl.exp(-p0 * u))
        g = tl.where(u < 0.0, p0 * s * (1.0 - s), p1 / (tl.maximum(u, 0.0) + 1.0))
    elif KIND == 16:  # MultiGaussianGrad(h, s, sigma, scale)
        wide = p1 * p2
        n0 = tl.exp(-(u * u) / (2.0 * p2 * p2)) / (2.5066282746310002 * p2)
        up = u - p2
        dn = u + p2
        n1 = tl.exp(-(up * up) / (2.0 * wide * wide)) / (2.5066282746310002 * wide)
        n2 = tl.exp(-(dn * dn) / (2.0 * wide * wide)) / (2.5066282746310002 * wide)
        g = p3 * ((1.0 + p0) * n0 - p0 * n1 - p0 * n2)
    else:  # 17: SquarewaveFourierSeries(n, t_period)
        omega = 6.283185307179586 / p1
        g = tl.zeros_like(u)
        for i in range(0, p0.to(tl.int32)):
            g += tl.cos((2.0 * i + 1.0) * omega * u)
        g = (4.0 / p1) * g
    return g


@triton.jit
def load_params(par_ptr, o_n, m_m, N):
    """The ten packed parameters (``AdExParams`` field order) of a block of neurons. Masked
    lanes get harmless values: no division by zero, no overflow."""
    N = tl.cast(N, tl.int64)  # row offsets k * N pass 2^31 for N >= 2^28 neurons
    R = tl.load(par_ptr + 0 * N + o_n, mask=m_m, other=1.0)
    tau = tl.load(par_ptr + 1 * N + o_n, mask=m_m, other=1.0)
    tau_w = tl.load(par_ptr + 2 * N + o_n, mask=m_m, other=1.0)
    v_th = tl.load(par_ptr + 3 * N + o_n, mask=m_m, other=1.0)
    v_reset = tl.load(par_ptr + 4 * N + o_n, mask=m_m, other=0.0)
    v_rest = tl.load(par_ptr + 5 * N + o_n, mask=m_m, other=0.0)
    v_T = tl.load(par_ptr + 6 * N + o_n, mask=m_m, other=0.0)
    delta_T = tl.load(par_ptr + 7 * N + o_n, mask=m_m, other=1.0)
    a = tl.load(par_ptr + 8 * N + o_n, mask=m_m, other=0.0)
    b = tl.load(par_ptr + 9 * N + o_n, mask=m_m, other=0.0)
    return R, tau, tau_w, v_th, v_reset, v_rest, v_T, delta_T, a, b


@triton.jit
def reset(v, v_th, v_reset, theta, HARD_RESET: tl.constexpr):
    """BrainPy's reset at the start of a step from the stored (pre-reset) V.

    The spike is ``V >= V_th`` (``u >= 0`` for theta > 0, which is validated); ``u`` (for
    the surrogate) multiplies by the reciprocal of theta, which is loop-invariant: the
    compiler computes it once per program. Returns (V', spike s of V, u = (V - V_th)/theta).
    """
    u = (v - v_th) * (1.0 / theta)
    s = spike(v, v_th)
    return reset_spiked(v, s, v_reset, theta, HARD_RESET), s, u


@triton.jit
def spike(v, v_th):
    """The spike of a stored V: 1.0 where ``V >= V_th``, else 0.0 (fp32)."""
    return tl.where(v >= v_th, 1.0, 0.0)


@triton.jit
def reset_spiked(v, s, v_reset, theta, HARD_RESET: tl.constexpr):
    """V' from the stored V and its spike ``s`` (:func:`spike`): soft ``V - theta s``, hard
    ``V - (V - V_reset) s``."""
    if HARD_RESET:
        v_r = v - (v - v_reset) * s
    else:
        v_r = v - theta * s
    return v_r


@triton.jit
def exp_term(v_r, v_T, delta_T):
    """z = (V' - V_T)/delta_T (times the hoisted 1/delta_T), E = exp(min(z, 20)) and JAX's d min(z, 20)/dz (1, 1/2, 0)."""
    z = (v_r - v_T) * (1.0 / delta_T)
    e = tl.exp(tl.minimum(z, 20.0))
    slope = tl.where(z < 20.0, 1.0, tl.where(z == 20.0, 0.5, 0.0))
    return z, e, slope
