"""One step of the AdEx family on a block of neurons, as device functions: the forward step
(shared by the forward scan and the backward scan's recomputation in low-memory mode: both
must produce the same V), its recomputed factors, its adjoint and its parameter-gradient
terms (the backward scan is a loop over these), and the refractory-flag packing."""

from __future__ import annotations

import triton
import triton.language as tl

from adex.kernels.device_math import (
    approx_div,
    exp_term,
    exprel,
    exprel_derivative,
    reset,
    reset_spiked,
    spike,
    surrogate_grad,
    to_fp32,
)


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
    return integrate_spiked(
        b_v, spike(b_v, b_vth), b_w, b_tlast, b_x, b_t, b_R, b_tau, b_vth, b_vreset, b_vrest,
        b_vT, b_dT, b_a, b_b, b_theta, b_vcap, b_cw, dt, tau_ref,
        HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
    )  # fmt: skip


@triton.jit
def integrate_spiked(
    b_v,  # [BLOCK] fp32 stored (pre-reset) V of the previous step (mV)
    b_sprev,  # [BLOCK] fp32 its spike, spike(b_v, b_vth) (0/1)
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
    """:func:`integrate_step` given the previous step's spike (a scan carries the spike it
    returned instead of testing V again)."""
    # loop-invariant factors (the compiler computes them once per program): dt/tau
    b_dtitau = dt * (1.0 / b_tau)
    b_vr = reset_spiked(b_v, b_sprev, b_vreset, b_theta, HARD_RESET)
    b_drift = -(b_vr - b_vrest)
    if HAS_EXP:
        b_z, b_e, b_slope = exp_term(b_vr, b_vT, b_dT)
        b_drift += b_dT * b_e
        b_zj = (-1.0 + b_e * b_slope) * b_dtitau  # dt J
    else:
        b_zj = -b_dtitau
    b_wr = b_w
    if HAS_W:
        b_wr = b_w + b_b * b_sprev
        b_drift -= b_R * b_wr
    # V' + P F with P = dt exprel(dt J), F = (drift + R x)/tau: the backward recovers F as
    # (V_new - V')/P with the same P (folding dt into F instead broke that recovery on stiff
    # runaway steps: a grad_x 1% off in tests/test_fuzz.py)
    b_raw = b_vr + (dt * exprel(b_zj)) * ((b_drift + b_R * b_x) * (1.0 / b_tau))
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


@triton.jit
def step_factors(
    b_vprev,  # [BLOCK] fp32 stored V before the step (V_{t-1}, or V0)
    b_vnew,  # [BLOCK] fp32 stored V after the step (V_t)
    b_tau, b_vth, b_vreset, b_vT, b_dT, b_theta,
    dt,  # fp32 ms
    HARD_RESET: tl.constexpr,
    HAS_EXP: tl.constexpr,
):  # fmt: skip
    """The forward quantities of one step that its adjoint needs, recomputed from the stored
    V before and after it (F is recovered from consecutive V, not saved).

    Returns ``(V', s_prev, u_prev, z, E, slope, J, zJ, phi, P, F, dV/dV', runaway)``: the
    post-reset V, the previous spike and its scaled variable, the exponential term's
    ``z = (V' - V_T)/delta_T``, ``E = exp(min(z, 20))`` and the clamp's slope (zeros
    without HAS_EXP), the Jacobian ``J`` and ``zJ = dt J``, ``phi = exprel(dt J)``,
    ``P = dt phi`` (zero on a runaway step), ``F = (V_t - V')/P``, the step's derivative
    ``dV_t/dV'`` including the second-order term through ``J(V')`` (zero on a runaway step)
    and the int1 runaway flag (all false without HAS_EXP)."""
    b_itau = 1.0 / b_tau  # loop-invariant reciprocals: computed once per program
    b_vr, b_sprev, b_uprev = reset(b_vprev, b_vth, b_vreset, b_theta, HARD_RESET)
    b_z = tl.zeros_like(b_vr)
    b_e = tl.zeros_like(b_vr)
    b_slope = tl.zeros_like(b_vr)
    if HAS_EXP:
        b_z, b_e, b_slope = exp_term(b_vr, b_vT, b_dT)
        b_jac = (-1.0 + b_e * b_slope) * b_itau
        b_zj = (-1.0 + b_e * b_slope) * (dt * b_itau)  # as integrate_step computes it
        b_djac = b_e * b_slope * (b_itau * (1.0 / b_dT))  # dJ/dV'
    else:
        b_jac = -b_itau
        b_zj = -(dt * b_itau)
        b_djac = 0.0
    b_phi = exprel(b_zj)
    b_p = dt * b_phi
    b_f = approx_div(b_vnew - b_vr, b_p)  # F_V(V'), recovered from consecutive V
    b_dvdv = 1.0 + b_p * b_jac + dt * dt * exprel_derivative(b_zj, b_phi) * b_djac * b_f
    b_run = b_z > 1e30  # all false
    if HAS_EXP:
        # a runaway step stored the constant V_th (adex.params.RUNAWAY_CEILING): nothing
        # flows through its V; zero the factors too, which may be inf there
        b_run = (b_vnew == b_vth) & (b_z > 0.0)
        b_p = tl.where(b_run, 0.0, b_p)
        b_dvdv = tl.where(b_run, 0.0, b_dvdv)
    return b_vr, b_sprev, b_uprev, b_z, b_e, b_slope, b_jac, b_zj, b_phi, b_p, b_f, b_dvdv, b_run


@triton.jit
def step_adjoint(
    b_lv,  # [BLOCK] adjoint of the stored V_t (output gradients of step t included)
    b_lw,  # [BLOCK] adjoint of w_t
    b_ref,  # [BLOCK] int1: step t was refractory (read with HAS_REF)
    b_p, b_dvdv,  # from step_factors
    b_R, b_tau, b_a, b_cw,
    HAS_W: tl.constexpr,
    HAS_REF: tl.constexpr,
):  # fmt: skip
    """The BPTT adjoint of one step's integration, from the adjoints of its outputs (V_t,
    w_t) to those after its reset (V', w'), through the exponential-Euler V, the w update
    and the refractory hold.

    Returns ``(grad_x, lambda_V', lambda_w', lambda_big)``: the gradient of the step's input
    current, the adjoints after the reset and the total adjoint of V_t (w_t reads V_t too).
    """
    b_big = b_lv
    if HAS_W:
        b_big += b_lw * b_a * b_cw
    b_gx = b_big * b_p * (b_R * (1.0 / b_tau))  # R/tau: loop-invariant, hoisted
    b_lvr = b_big * b_dvdv  # adjoint of V' (after the reset)
    b_lwr = b_lw - b_lw * b_cw - b_gx  # adjoint of w'
    if HAS_REF:  # a refractory step kept V = V', w = w': identity, no input gradient
        b_gx = tl.where(b_ref, 0.0, b_gx)
        b_lvr = tl.where(b_ref, b_lv, b_lvr)
        b_lwr = tl.where(b_ref, b_lw, b_lwr)
    return b_gx, b_lvr, b_lwr, b_big


@triton.jit
def reset_adjoint(
    b_lvr, b_lwr,  # adjoints after the reset (step_adjoint)
    b_lw,  # [BLOCK] adjoint of w_t (carried unchanged without HAS_W)
    b_vprev, b_uprev,  # stored V_{t-1} and its (V - V_th)/theta (step_factors)
    b_vreset, b_b, b_theta,
    sg0, sg1, sg2, sg3,  # surrogate hyper-parameters
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    HAS_W: tl.constexpr,
    DETACH_RESET: tl.constexpr,
):  # fmt: skip
    """The adjoint through the reset at the start of a step (the spike of V_{t-1}, with
    its surrogate, unless DETACH_RESET): returns ``(lambda_V_{t-1}, lambda_w_{t-1})``."""
    if DETACH_RESET:
        b_lv_prev = b_lvr
    else:
        b_sig = surrogate_grad(b_uprev, sg0, sg1, sg2, sg3, SURROGATE) * (1.0 / b_theta)
        if HARD_RESET:
            b_lv_prev = b_lvr - b_lvr * (b_vprev - b_vreset) * b_sig
        else:
            b_lv_prev = b_lvr - b_lvr * b_theta * b_sig
        if HAS_W:
            b_lv_prev += b_lwr * b_b * b_sig
    b_lw_prev = b_lw
    if HAS_W:
        b_lw_prev = b_lwr
    return b_lv_prev, b_lw_prev


@triton.jit
def step_param_grads(
    g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b,  # accumulators
    b_gsg,  # [BLOCK] surrogate-weighted spike gradient of step t (0 without spike grads)
    b_u,  # [BLOCK] (V_t - V_th)/theta
    b_lw,  # [BLOCK] adjoint of w_t (before step_adjoint)
    b_big, b_lvr, b_lwr, b_ref,  # from step_adjoint (b_ref read with HAS_REF)
    b_vprev, b_vnew, b_wprev,  # stored V_{t-1}, V_t and w_{t-1} (HAS_W)
    b_vr, b_sprev, b_uprev, b_z, b_e, b_slope, b_jac, b_zj, b_phi, b_p, b_f, b_run,
    b_R, b_tau, b_vreset, b_vrest, b_dT, b_a, b_b, b_theta, b_cw,
    b_dcw,  # d c_w / d tau_w
    dt,
    sg0, sg1, sg2, sg3,
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    HAS_GSPK: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Add one step's direct dependence on the ten parameters (packed-row order) to their
    accumulators: the returned spike, the exponential-Euler V, the w update and the reset.
    Returns the ten accumulators."""
    if HAS_GSPK:  # u = (V - V_th)/(V_th - V_reset)
        g_vth -= b_gsg * (1.0 + b_u)
        g_vreset += b_gsg * b_u
    b_upd = tl.full([BLOCK], 1.0, tl.float32)  # 1 where w was updated (not refractory)
    if HAS_REF:
        b_upd = tl.where(b_ref, 0.0, b_upd)
    b_int = b_upd  # 1 where V was integrated (not refractory, not runaway)
    if HAS_EXP:
        b_int = tl.where(b_run, 0.0, b_int)
    # the factors below are selected, not multiplied by 0: on a refractory or runaway
    # step exprel(dt J) may be inf, and 0 * inf would be NaN
    b_on = b_int > 0.0
    b_lam = tl.where(b_on, b_big, 0.0)  # adjoint of V_new where it was integrated
    b_pi = tl.where(b_on, b_p, 0.0)
    b_fi = tl.where(b_on, b_f, 0.0)
    b_acc = tl.where(b_on, dt * dt * exprel_derivative(b_zj, b_phi) * b_fi, 0.0)  # dV/dJ
    b_itau = 1.0 / b_tau  # loop-invariant reciprocals: computed once per program
    b_itheta = 1.0 / b_theta
    b_inet = b_tau * b_fi + (b_vr - b_vrest)  # R (x - w') = tau F + (V' - V_rest) - ...
    if HAS_EXP:
        b_inet -= b_dT * b_e
        b_em = b_e * b_slope
        b_idT = 1.0 / b_dT
        g_vT -= b_lam * b_em * (b_acc * b_idT + b_pi) * b_itau
        g_dT += b_lam * (b_pi * (b_e - b_em * b_z) - b_acc * b_em * b_z * b_idT) * b_itau
    g_R += b_lam * b_pi * b_inet * ((1.0 / b_R) * b_itau)
    g_tau -= b_lam * (b_acc * b_jac + b_pi * b_fi) * b_itau
    g_vrest += b_lam * b_pi * b_itau
    if HAS_EXP:  # a runaway step stored V_new = V_th
        g_vth += tl.where(b_run, b_big, 0.0) * b_upd
    if HAS_W:
        b_wr = b_wprev + b_b * b_sprev
        b_lwu = b_lw * b_upd
        g_a += b_lwu * b_cw * (b_vnew - b_vrest)
        g_vrest -= b_lwu * b_cw * b_a
        g_tau_w += b_lwu * b_dcw * (b_a * (b_vnew - b_vrest) - b_wr)
    # the reset at the start of this step: V' and w' depend on V_th, V_reset, b
    if DETACH_RESET:
        b_gpre = 0.0
    else:
        b_gpre = surrogate_grad(b_uprev, sg0, sg1, sg2, sg3, SURROGATE)
    if HARD_RESET:
        b_k = (b_vprev - b_vreset) * b_gpre * b_itheta
        g_vth += b_lvr * b_k * (1.0 + b_uprev)
        g_vreset += b_lvr * (b_sprev - b_k * b_uprev)
    else:
        g_vth += b_lvr * (b_gpre * (1.0 + b_uprev) - b_sprev)
        g_vreset += b_lvr * (b_sprev - b_gpre * b_uprev)
    if HAS_W:
        g_b += b_lwr * b_sprev
        b_bg = b_lwr * b_b * b_gpre * b_itheta
        g_vth -= b_bg * (1.0 + b_uprev)
        g_vreset += b_bg * b_uprev
    return g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b


@triton.jit
def synapse_step(
    b_i,  # [BLOCK] fp32 synaptic current of the previous step I_{t-1} (mA)
    b_x,  # [BLOCK] fp32 input of this step x_t (mA)
    b_cs,  # 1 - exp(-dt / tau_syn)
):  # fmt: skip
    """The synaptic current's step, ``tau_syn dI/dt = -I + x`` integrated exactly with x
    held over the step: ``I_t = I_{t-1} + c_s (x_t - I_{t-1})``. The membrane step then
    reads ``I_t`` where it would read ``x_t``. Returns ``I_t``."""
    return b_i + b_cs * (b_x - b_i)


@triton.jit
def synapse_adjoint(
    b_li,  # [BLOCK] adjoint of I_t carried from step t+1 (and the I outputs of step t)
    b_gm,  # [BLOCK] gradient of the membrane step's input current I_t (step_adjoint's)
    b_cs,  # 1 - exp(-dt / tau_syn)
):  # fmt: skip
    """The adjoint of :func:`synapse_step`. Returns ``(grad_x_t, lambda_I_{t-1},
    lambda_I_t)``: the input's gradient, the adjoint carried to the previous step (written
    ``l - l c_s``, not ``l (1 - c_s)``: ``1 - c_s`` rounds for ``dt << tau_syn``) and the
    total adjoint of ``I_t`` (for the tau_syn gradient)."""
    b_lt = b_li + b_gm
    return b_lt * b_cs, b_lt - b_lt * b_cs, b_lt


@triton.jit
def synapse_grads(
    b_li,  # [BLOCK] adjoint of I_t carried from step t+1
    b_gm,  # [BLOCK] gradient of the membrane step's input current I_t (step_adjoint's)
    g_ts,  # [BLOCK] accumulator of d loss / d tau_syn (READ_I)
    p_gi,  # this step's row of the incoming gradient of the I sequence (HAS_GISEQ), or None
    p_iprev,  # the stored I_{t-1} (READ_I), or None
    p_in,  # this step's stored input of the synapse, x_t or the total input (READ_I), or None
    b_i0,  # [BLOCK] fp32 I before the scan or segment: I_{t-1} where m_prev is false
    m_prev,  # [BLOCK] int1: I_{t-1} is stored (the lanes of m, not at the first step)
    m,  # [BLOCK] int1 in-range lanes
    b_on,  # [BLOCK] int1: step t is before the sample's length (HAS_LEN)
    b_cs, b_dcs,  # 1 - exp(-dt / tau_syn) and its derivative in tau_syn (1/ms)
    HAS_GISEQ: tl.constexpr,
    READ_I: tl.constexpr,
    HAS_LEN: tl.constexpr,
):  # fmt: skip
    """One step of the synapse's backward: the incoming gradient of I_t added to its
    adjoint, :func:`synapse_adjoint` (a held step past the sample's length, HAS_LEN, keeps
    the carried adjoint and passes none) and, with READ_I, the step's ``d loss / d tau_syn``
    term. Returns ``(grad_input_t, lambda_I_{t-1}, g_ts)``. The caller moves the pointers to
    the previous row."""
    if HAS_GISEQ:
        b_li += tl.load(p_gi, mask=m, other=0.0).to(tl.float32)
    if HAS_LEN:
        b_lih = b_li
        b_li = tl.where(b_on, b_li, 0.0)
    b_gx, b_li, b_lt = synapse_adjoint(b_li, b_gm, b_cs)
    if HAS_LEN:
        b_li = tl.where(b_on, b_li, b_lih)
    if READ_I:
        b_iprev = tl.load(p_iprev, mask=m_prev, other=0.0)
        b_iprev = tl.where(m_prev, b_iprev, b_i0)
        b_in = to_fp32(tl.load(p_in, mask=m, other=0.0))
        g_ts += b_lt * b_dcs * (b_in - b_iprev)
    return b_gx, b_li, g_ts
