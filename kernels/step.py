"""One forward step of the AdEx family on a block of neurons, shared by the forward scan and
the backward scan's recomputation (low-memory mode): both must produce the same V."""

from __future__ import annotations

import triton
import triton.language as tl

from adex.kernels.device_math import exp_term, exprel, reset


@triton.jit
def integrate_step(
    b_v,  # [BLOCK] fp32 stored (pre-reset) V of the previous step (mV)
    b_w,  # [BLOCK] fp32 w of the previous step (mA); ignored without HAS_W
    b_tlast,  # [BLOCK] fp32 time of the last spike (ms); ignored without HAS_REF
    b_x,  # [BLOCK] fp32 input current of this step (mA)
    b_t,  # fp32 time of this step, float(k) * dt (ms); read with HAS_REF
    b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b,
    b_theta,  # V_th - V_reset
    b_vcap,  # runaway ceiling V_th + RUNAWAY_CEILING * theta
    b_cw,  # 1 - exp(-dt / tau_w)
    dt,  # fp32 ms
    tau_ref,  # fp32 ms (HAS_REF)
    HARD_RESET: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr,
):  # fmt: skip
    """Reset from the previous spike, exponential-Euler V, exact-exponential w, refractory
    hold. Returns ``(V, w, t_last, refractory)``: the new stored V and w, the updated
    last-spike time and the int1 refractory flag of this step (all-false without HAS_REF).
    """
    b_vr, b_sprev, _ = reset(b_v, b_vth, b_vreset, b_theta, HARD_RESET)
    b_drift = -(b_vr - b_vrest)
    if HAS_EXP:
        b_z, b_e, b_slope = exp_term(b_vr, b_vT, b_dT)
        b_drift += b_dT * b_e
        b_jac = (-1.0 + b_e * b_slope) / b_tau
    else:
        b_jac = -1.0 / b_tau
    b_wr = b_w
    if HAS_W:
        b_wr = b_w + b_b * b_sprev
        b_drift -= b_R * b_wr
    b_drift = (b_drift + b_R * b_x) / b_tau
    b_raw = b_vr + dt * exprel(dt * b_jac) * b_drift
    if HAS_EXP:  # runaway (adex.params.RUNAWAY_CEILING) or NaN: store the peak V_th
        b_vn = tl.where((b_raw <= b_vcap) | (b_z <= 0.0), b_raw, b_vth)
    else:
        b_vn = b_raw
    b_wn = b_w
    if HAS_W:
        b_wn = b_wr + b_cw * (b_a * (b_vn - b_vrest) - b_wr)
    b_ref = tl.zeros_like(b_vn) > 1.0  # all false without HAS_REF
    if HAS_REF:  # BrainPy's float test on t = float(k) * dt, not a step count
        b_ref = (b_t - b_tlast) < tau_ref
        b_vn = tl.where(b_ref, b_vr, b_vn)
        if HAS_W:
            b_wn = tl.where(b_ref, b_wr, b_wn)
        b_tlast = tl.where(b_vn >= b_vth, b_t, b_tlast)
    return b_vn, b_wn, b_tlast, b_ref


@triton.jit
def store_flag_bit(p_r, b_bits, b_flag, i, last, M, m_m):
    """Pack one int1 flag per neuron-step into bytes: bit ``i % 8`` of row ``i // 8`` of a
    ``[cdiv(T, 8), M]`` uint8 tensor. Accumulates into ``b_bits`` (int32) and stores the byte
    at ``p_r`` after the 8th step of a row or at step ``last``. Returns ``(b_bits, p_r)``."""
    b_bits = b_bits | (b_flag.to(tl.int32) << (i % 8))
    if (i % 8 == 7) | (i == last):
        tl.store(p_r, b_bits.to(tl.uint8), mask=m_m)
        p_r += M
        b_bits = b_bits & 0
    return b_bits, p_r


@triton.jit
def load_flag_bit(ref_ptr, row, M, o_m, m_m):
    """The flag of step ``row`` stored by :func:`store_flag_bit`, as int1 ``[BLOCK]``."""
    b_byte = tl.load(ref_ptr + tl.cast(row // 8, tl.int64) * M + o_m, mask=m_m, other=0)
    return ((b_byte.to(tl.int32) >> (row % 8)) & 1) != 0
