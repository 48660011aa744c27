"""What a backward-scan program (feed-forward or recurrent) loads before its reverse time
loop and stores after it, for its tile of elements: the parameters and their loop-invariant
factors, the incoming adjoints of the final state, the gradient of the initial state and
the per-element parameter gradients. Works on any tile shape: ``[BLOCK]`` elements of the
feed-forward scan, ``[BLOCK_B, BLOCK_N]`` of the recurrent one (parameters per neuron,
broadcast over the tile)."""

from __future__ import annotations

import triton
import triton.language as tl

from adex.kernels.device_math import exprel, load_params


@triton.jit
def fp32_scalars(dt, sg0, sg1, sg2, sg3):
    """The backward kernels' float arguments cast to fp32: ``(dt, sg0, sg1, sg2, sg3)``, the
    time step (ms) and the surrogate's hyper-parameters."""
    dt = tl.cast(dt, tl.float32)
    sg0 = tl.cast(sg0, tl.float32)
    sg1 = tl.cast(sg1, tl.float32)
    sg2 = tl.cast(sg2, tl.float32)
    sg3 = tl.cast(sg3, tl.float32)
    return dt, sg0, sg1, sg2, sg3


@triton.jit
def load_bwd_params(par_ptr, o_n, m_n, N, dt):
    """The packed parameters of neurons ``o_n`` (masked by ``m_n``) and the factors the
    adjoint derives from them, with ``dt`` fp32 ms. Returns ``(R, tau, V_th, V_reset, V_rest,
    V_T, delta_T, a, b, theta, c_w, dc_w/dtau_w)``: theta = V_th - V_reset (mV), c_w = 1 -
    exp(-dt/tau_w) and its derivative in tau_w (1/ms; tau_w enters only through these)."""
    (b_R, b_tau, b_tau_w, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b) = load_params(
        par_ptr, o_n, m_n, N
    )
    b_theta = b_vth - b_vreset
    b_cw = dt * exprel(-dt / b_tau_w) / b_tau_w
    b_dcw = -(dt / (b_tau_w * b_tau_w)) * (1.0 - b_cw)  # d c_w / d tau_w
    return b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_cw, b_dcw


@triton.jit
def synapse_factors(par_ptr, o_n, m_n, N, dt):
    """The synapse's factors from packed row 10 (tau_syn, ms) of neurons ``o_n``: returns
    ``(c_s, dc_s/dtau_syn)``, c_s = 1 - exp(-dt/tau_syn) (1/ms for the derivative)."""
    b_ts = tl.load(par_ptr + 10 * tl.cast(N, tl.int64) + o_n, mask=m_n, other=1.0)
    b_cs = dt * exprel(-dt / b_ts) / b_ts  # = 1 - exp(-dt/tau_syn)
    b_dcs = -(dt / (b_ts * b_ts)) * (1.0 - b_cs)  # d c_s / d tau_syn
    return b_cs, b_dcs


@triton.jit
def load_state_adjoints(gstate_ptr, o_m, m, M, z, HAS_GSTATE: tl.constexpr,
                        HAS_W: tl.constexpr, HAS_REF: tl.constexpr, HAS_SYN: tl.constexpr):  # fmt: skip
    """The adjoints of the final state that start the reverse loop: ``(lambda_V, lambda_w,
    lambda_I)`` of the tile's elements ``o_m`` (offsets in a ``[C, M]`` block, ``m`` their
    mask), fp32, from the incoming gradient ``gstate_ptr`` (HAS_GSTATE; rows V, w, I as the
    model has them) added to ``z`` (the tile's fp32 zeros: zero without it)."""
    b_lv = z  # adjoint of the stored V
    b_lw = z  # adjoint of the stored w
    b_li = z  # adjoint of the synaptic current
    if HAS_GSTATE:
        b_lv += tl.load(gstate_ptr + o_m, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            b_lw += tl.load(gstate_ptr + M + o_m, mask=m, other=0.0).to(tl.float32)
        if HAS_SYN:
            p_i = gstate_ptr + (1 + HAS_W + HAS_REF) * M + o_m
            b_li += tl.load(p_i, mask=m, other=0.0).to(tl.float32)
    return b_lv, b_lw, b_li


@triton.jit
def store_state_grads(gstate0_ptr, o_m, m, M, b_lv, b_lw, b_li, HAS_W: tl.constexpr,
                      HAS_REF: tl.constexpr, HAS_SYN: tl.constexpr):  # fmt: skip
    """Write the gradient of the initial state, the adjoints the reverse loop ends with, into
    the ``[C, M]`` block ``gstate0_ptr`` (rows V, w, last-spike time, I as the model has
    them; the last-spike time carries no gradient: zero)."""
    tl.store(gstate0_ptr + o_m, b_lv, mask=m)
    if HAS_W:
        tl.store(gstate0_ptr + M + o_m, b_lw, mask=m)
    if HAS_REF:  # the last-spike time carries no gradient
        tl.store(gstate0_ptr + (1 + HAS_W) * M + o_m, b_lv * 0.0, mask=m)
    if HAS_SYN:
        tl.store(gstate0_ptr + (1 + HAS_W + HAS_REF) * M + o_m, b_li, mask=m)


@triton.jit
def store_param_grads(gpar_ptr, M, o_m, m, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT,
                      g_dT, g_a, g_b, g_ts, PARAM_MASK: tl.constexpr):  # fmt: skip
    """The per-element gradients of the parameters whose bit k is set in PARAM_MASK (packed
    row k; bit 10: tau_syn, ``g_ts``), one compact row each in packed-row order: the
    ``[popcount(PARAM_MASK), M]`` output holds no row for a parameter without a gradient (the
    compiler drops its terms from the time loop)."""
    M = tl.cast(M, tl.int64)  # row offsets k * M pass 2^31 for M >= 2^28 elements
    # R_k: the output row of packed row k, the number of mask bits below bit k
    R1: tl.constexpr = PARAM_MASK & 1
    R2: tl.constexpr = R1 + ((PARAM_MASK >> 1) & 1)
    R3: tl.constexpr = R2 + ((PARAM_MASK >> 2) & 1)
    R4: tl.constexpr = R3 + ((PARAM_MASK >> 3) & 1)
    R5: tl.constexpr = R4 + ((PARAM_MASK >> 4) & 1)
    R6: tl.constexpr = R5 + ((PARAM_MASK >> 5) & 1)
    R7: tl.constexpr = R6 + ((PARAM_MASK >> 6) & 1)
    R8: tl.constexpr = R7 + ((PARAM_MASK >> 7) & 1)
    R9: tl.constexpr = R8 + ((PARAM_MASK >> 8) & 1)
    R10: tl.constexpr = R9 + ((PARAM_MASK >> 9) & 1)
    if PARAM_MASK & 1:
        tl.store(gpar_ptr + o_m, g_R, mask=m)
    if PARAM_MASK & 2:
        tl.store(gpar_ptr + R1 * M + o_m, g_tau, mask=m)
    if PARAM_MASK & 4:
        tl.store(gpar_ptr + R2 * M + o_m, g_tau_w, mask=m)
    if PARAM_MASK & 8:
        tl.store(gpar_ptr + R3 * M + o_m, g_vth, mask=m)
    if PARAM_MASK & 16:
        tl.store(gpar_ptr + R4 * M + o_m, g_vreset, mask=m)
    if PARAM_MASK & 32:
        tl.store(gpar_ptr + R5 * M + o_m, g_vrest, mask=m)
    if PARAM_MASK & 64:
        tl.store(gpar_ptr + R6 * M + o_m, g_vT, mask=m)
    if PARAM_MASK & 128:
        tl.store(gpar_ptr + R7 * M + o_m, g_dT, mask=m)
    if PARAM_MASK & 256:
        tl.store(gpar_ptr + R8 * M + o_m, g_a, mask=m)
    if PARAM_MASK & 512:
        tl.store(gpar_ptr + R9 * M + o_m, g_b, mask=m)
    if PARAM_MASK & 1024:  # zero without a synapse
        tl.store(gpar_ptr + R10 * M + o_m, g_ts, mask=m)
