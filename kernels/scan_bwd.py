"""Backward time scan: the BPTT adjoint recursion of the AdEx family in one kernel."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from adex.kernels.bwd_tile import (
    fp32_scalars,
    load_bwd_params,
    load_state_adjoints,
    store_param_grads,
    store_state_grads,
    synapse_factors,
)
from adex.kernels.device_math import surrogate_grad, to_fp32
from adex.kernels.launch import (
    FP_FUSION,
    block_config,
    launch_settings,
    pipeline_stages,
    remember,
    without_defaults,
)
from adex.kernels.step import (
    integrate_step,
    load_flag_bit,
    reset_adjoint,
    step_adjoint,
    step_factors,
    step_param_grads,
    store_flag_bit,
    synapse_grads,
    synapse_step,
)
from adex.params import grad_rows

# Bytes per neuron-step (fp32 I/O): read V (4; the next step's V is carried in registers),
# read grad spikes (4), write grad x (4): 12 B; 8 B with bf16/fp16 spikes and x.
# F_V is recovered from consecutive V as (V_new - V')/(dt*exprel(dt*J)) instead of being
# saved: it changes the x/V0/w0 gradients by <= 7e-7 relative (spec section 14). dL/dR and
# dL/dtau use F directly and lose ~ulp(V)*tau/(dt*R*I) relative (6e-4 at dt = 0.01 ms).


@triton.jit
def _recompute_segment(
    x_ptr, ckpt_ptr, vseq_ptr, wseq_ptr, ref_ptr, seg, t0, L, M, k0, o_m, m_m,
    b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_vcap, b_cw,
    dt, tau_ref,
    HARD_RESET: tl.constexpr, HAS_W: tl.constexpr, HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr, READ_W: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK: tl.constexpr,
    isq_ptr=None, b_cs=1.0,  # synaptic current scratch rows (READ_I); 1 - exp(-dt/tau_syn)
    HAS_SYN: tl.constexpr = False, READ_I: tl.constexpr = False,
    b_len=0, HAS_LEN: tl.constexpr = False,  # the sample's length (the forward's hold)
):  # fmt: skip
    """Rerun the forward over steps ``t0 .. t0 + L - 1`` from checkpoint ``seg`` into the
    scratch rows ``0 .. L-1`` (V; w with READ_W; the refractory bits with HAS_REF; the
    synaptic current with READ_I). Returns ``(V, w)`` before the segment (w zeros without
    HAS_W)."""
    C = 1 + HAS_W + HAS_REF + HAS_SYN  # rows of the state block
    p_c = ckpt_ptr + tl.cast(seg, tl.int64) * C * M + o_m
    b_v0 = tl.load(p_c, mask=m_m, other=0.0)
    b_w0 = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_W:
        b_w0 = tl.load(p_c + M, mask=m_m, other=0.0)
    b_tl = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_REF:
        b_tl = tl.load(p_c + (1 + HAS_W) * M, mask=m_m, other=0.0)
    if HAS_SYN:
        b_i = tl.load(p_c + (1 + HAS_W + HAS_REF) * M, mask=m_m, other=0.0)
    if READ_I:
        q_i = isq_ptr + o_m
    b_v = b_v0
    b_w = b_w0
    p_x = x_ptr + tl.cast(t0, tl.int64) * M + o_m
    q_v = vseq_ptr + o_m
    if READ_W:
        q_w = wseq_ptr + o_m
    if HAS_REF:
        q_r = ref_ptr + o_m
    b_bits = tl.zeros([BLOCK], dtype=tl.int32)
    for j in tl.range(0, L, num_stages=NUM_STAGES):
        b_x = to_fp32(tl.load(p_x, mask=m_m, other=0.0))
        if HAS_SYN:
            b_ih = b_i
            b_i = synapse_step(b_i, b_x, b_cs)
            b_x = b_i
            if HAS_LEN:
                b_i = tl.where(b_len > t0 + j, b_i, b_ih)
        if READ_I:
            tl.store(q_i, b_i, mask=m_m)
            q_i += M
        if HAS_LEN:
            b_vh, b_wh, b_th = b_v, b_w, b_tl
        b_t = tl.cast(k0 + t0 + j, tl.float32) * dt
        b_v, b_w, b_tl, b_rf = integrate_step(
            b_v, b_w, b_tl, b_x, b_t, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT,
            b_dT, b_a, b_b, b_theta, b_vcap, b_cw, dt, tau_ref,
            HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
        )  # fmt: skip
        if HAS_LEN:
            b_on = b_len > t0 + j
            b_v = tl.where(b_on, b_v, b_vh)
            b_w = tl.where(b_on, b_w, b_wh)
            b_tl = tl.where(b_on, b_tl, b_th)
        tl.store(q_v, b_v, mask=m_m)
        q_v += M
        if READ_W:
            tl.store(q_w, b_w, mask=m_m)
            q_w += M
        if HAS_REF:
            b_bits, q_r = store_flag_bit(q_r, b_bits, b_rf, j, L - 1, M, m_m)
        p_x += M
    tl.debug_barrier()  # the scratch rows are read back by the adjoint loop
    return b_v0, b_w0


@triton.jit
def _segment_start(
    state0_ptr, x_ptr, ckpt_ptr, vseq_ptr, wseq_ptr, ref_ptr, isq_ptr, seg, t0, L, M, k0, o_m,
    m_m, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_vcap, b_cw,
    dt, tau_ref, b_cs, b_len,
    HARD_RESET: tl.constexpr, HAS_W: tl.constexpr, HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr, HAS_SYN: tl.constexpr, HAS_LEN: tl.constexpr,
    RECOMPUTE: tl.constexpr, READ_W: tl.constexpr, READ_I: tl.constexpr,
    NUM_STAGES: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """The state before segment ``seg`` (steps ``t0 .. t0 + L - 1``): ``(V, w, I)`` fp32
    ``[BLOCK]`` (w read with READ_W, I with READ_I; zeros where not read). In RECOMPUTE
    mode from the segment's checkpoint, after rerunning its forward into the scratch rows
    (:func:`_recompute_segment`); else the initial state (one segment)."""
    I_ROW = 1 + HAS_W + HAS_REF  # row of I in the state block (HAS_SYN)
    b_w0 = tl.zeros([BLOCK], dtype=tl.float32)
    b_i0 = tl.zeros([BLOCK], dtype=tl.float32)
    if RECOMPUTE:
        b_v0, b_w0 = _recompute_segment(
            x_ptr, ckpt_ptr, vseq_ptr, wseq_ptr, ref_ptr, seg, t0, L, M, k0, o_m, m_m,
            b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_vcap,
            b_cw, dt, tau_ref, HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
            READ_W, NUM_STAGES, BLOCK, isq_ptr, b_cs, HAS_SYN, READ_I, b_len, HAS_LEN,
        )  # fmt: skip
        if READ_I:  # I before the segment, from its checkpoint
            p_c = ckpt_ptr + (tl.cast(seg, tl.int64) * (I_ROW + 1) + I_ROW) * M + o_m
            b_i0 = tl.load(p_c, mask=m_m, other=0.0)
    else:
        b_v0 = tl.load(state0_ptr + o_m, mask=m_m, other=0.0)
        if READ_W:
            b_w0 = tl.load(state0_ptr + M + o_m, mask=m_m, other=0.0)
        if READ_I:
            b_i0 = tl.load(state0_ptr + I_ROW * M + o_m, mask=m_m, other=0.0)
    return b_v0, b_w0, b_i0


@triton.jit
def _adjoint_segment(
    vseq_ptr, gspk_ptr, gvseq_ptr, gwseq_ptr, ref_ptr, wseq_ptr, gx_ptr, x_ptr, isq_ptr,
    gisq_ptr, t0, L, M, o_m, m_m, b_len, b_v0, b_w0, b_i0,
    b_lv, b_lw, b_li,  # the adjoints of the state after the segment (V, w, I)
    g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b, g_ts,  # accumulators
    b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_itheta, b_cw,
    b_dcw, b_cs, b_dcs, dt, sg0, sg1, sg2, sg3,
    SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr, HAS_REF: tl.constexpr, DETACH_RESET: tl.constexpr,
    PARAM_GRAD: tl.constexpr, READ_W: tl.constexpr, HAS_GSPK: tl.constexpr,
    HAS_GVSEQ: tl.constexpr, HAS_GWSEQ: tl.constexpr, WRITE_GX: tl.constexpr,
    HAS_SYN: tl.constexpr, READ_I: tl.constexpr, HAS_GISEQ: tl.constexpr,
    HAS_LEN: tl.constexpr, GSPK_ROW: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The adjoint recursion over one segment, its steps last first: writes the segment's
    rows of grad x and returns the adjoints of the state before it and the parameter-gradient
    accumulators, ``(lambda_V, lambda_w, lambda_I, g_R, ..., g_b, g_tau_syn)``. The state
    before each step is the stored V (and w, I) of the step before, ``b_v0`` (``b_w0``,
    ``b_i0``) at the segment's first step."""
    last = tl.cast(L - 1, tl.int64) * M  # last row of the segment in vseq/wseq
    g_last = tl.cast(t0 + L - 1, tl.int64) * M  # its row in the [T, M] gradients
    b_vnew = tl.load(vseq_ptr + last + o_m, mask=m_m, other=0.0)
    p_vprev = vseq_ptr + last - M + o_m
    if WRITE_GX:
        p_gx = gx_ptr + g_last + o_m
    if HAS_GSPK:
        if GSPK_ROW:  # one row, the same at every step: read again (from the cache)
            p_gs = gspk_ptr + o_m
        else:
            p_gs = gspk_ptr + g_last + o_m
    if HAS_GVSEQ:
        p_gv = gvseq_ptr + g_last + o_m
    if HAS_GWSEQ:
        p_gw = gwseq_ptr + g_last + o_m
    if READ_W:
        p_wprev = wseq_ptr + last - M + o_m
    # u = (V_t - V_th)/theta and ds/dV = g(u)/theta for the returned spike of step t:
    # carried from the reset of step t + 1, which computes them from the same V
    b_u = tl.zeros([BLOCK], dtype=tl.float32)
    b_sig = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_GSPK:
        b_u = (b_vnew - b_vth) * b_itheta
        b_sig = surrogate_grad(b_u, sg0, sg1, sg2, sg3, SURROGATE) * b_itheta
    p_gi, p_iprev, p_xt = gisq_ptr, isq_ptr, x_ptr  # the synapse's rows, where read
    if HAS_GISEQ:
        p_gi = gisq_ptr + g_last + o_m
    if READ_I:
        p_iprev = isq_ptr + last - M + o_m
        p_xt = x_ptr + g_last + o_m
    b_wprev = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(0, L, num_stages=NUM_STAGES):
        # V before step t (stored V of step t-1, or V0 at t = 0)
        m_prev = m_m & (o_m * 0 + i < L - 1)
        b_vprev = tl.load(p_vprev, mask=m_prev, other=b_v0)  # V0 at t = 0
        # the returned spike of step t and the per-step state outputs
        b_gsg = tl.zeros([BLOCK], dtype=tl.float32)
        b_on = m_m
        if HAS_LEN:  # a step at or past the sample's length held the state: identity
            b_on = b_len > t0 + L - 1 - i
        if HAS_GSPK:
            b_gs = tl.load(p_gs, mask=m_m, other=0.0).to(tl.float32)
            if not GSPK_ROW:
                p_gs -= M
            if PARAM_GRAD:  # recomputed: two more carried values spill there (sm_90)
                b_u = (b_vnew - b_vth) * b_itheta
                b_sig = surrogate_grad(b_u, sg0, sg1, sg2, sg3, SURROGATE) * b_itheta
            b_gsg = b_gs * b_sig
            if HAS_LEN:  # its spike was the constant 0
                b_gsg = tl.where(b_on, b_gsg, 0.0)
            b_lv += b_gsg
        if HAS_GVSEQ:
            b_lv += tl.load(p_gv, mask=m_m, other=0.0).to(tl.float32)
            p_gv -= M
        if HAS_GWSEQ:
            b_lw += tl.load(p_gw, mask=m_m, other=0.0).to(tl.float32)
            p_gw -= M
        (b_vr, b_sprev, b_uprev, b_z, b_e, b_slope, b_jac, b_zj, b_phi, b_p, b_f, b_dvdv,
         b_run) = step_factors(
            b_vprev, b_vnew, b_tau, b_vth, b_vreset, b_vT, b_dT, b_theta, dt,
            HARD_RESET, HAS_EXP,
        )  # fmt: skip
        if HAS_LEN:  # the step's terms get zero adjoints; the carried ones are restored
            b_lvh, b_lwh = b_lv, b_lw
            b_lv = tl.where(b_on, b_lv, 0.0)
            b_lw = tl.where(b_on, b_lw, 0.0)
        b_ref = tl.zeros([BLOCK], dtype=tl.int1)  # all false without HAS_REF
        if HAS_REF:
            b_ref = load_flag_bit(ref_ptr, L - 1 - i, M, o_m, m_m)
        b_gx, b_lvr, b_lwr, b_big = step_adjoint(
            b_lv, b_lw, b_ref, b_p, b_dvdv, b_R, b_tau, b_a, b_cw, HAS_W, HAS_REF
        )
        if HAS_SYN:  # the membrane read I_t: through the synapse to x_t and I_{t-1}
            b_gx, b_li, g_ts = synapse_grads(b_li, b_gx, g_ts, p_gi, p_iprev, p_xt, b_i0, m_prev,
                                             m_m, b_on, b_cs, b_dcs, HAS_GISEQ, READ_I,
                                             HAS_LEN)  # fmt: skip
            if HAS_GISEQ:
                p_gi -= M
            if READ_I:
                p_iprev -= M
                p_xt -= M
        if WRITE_GX:
            tl.store(p_gx, b_gx.to(gx_ptr.dtype.element_ty), mask=m_m)
            p_gx -= M
        if PARAM_GRAD:
            if READ_W:
                b_wprev = tl.load(p_wprev, mask=m_prev, other=b_w0)
                p_wprev -= M
            (g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a,
             g_b) = step_param_grads(
                g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b,
                b_gsg, b_u, b_lw, b_big, b_lvr, b_lwr, b_ref, b_vprev, b_vnew, b_wprev,
                b_vr, b_sprev, b_uprev, b_z, b_e, b_slope, b_jac, b_zj, b_phi, b_p, b_f,
                b_run, b_R, b_tau, b_vreset, b_vrest, b_dT, b_a, b_b, b_theta, b_cw,
                b_dcw, dt, sg0, sg1, sg2, sg3,
                SURROGATE, HARD_RESET, HAS_W, HAS_EXP, HAS_REF, DETACH_RESET, HAS_GSPK,
                BLOCK,
            )  # fmt: skip
        b_lv, b_lw = reset_adjoint(
            b_lvr, b_lwr, b_lw, b_vprev, b_uprev, b_vreset, b_b, b_theta, sg0, sg1, sg2,
            sg3, SURROGATE, HARD_RESET, HAS_W, DETACH_RESET,
        )  # fmt: skip
        if HAS_GSPK and not PARAM_GRAD:  # the reset's own expressions: computed once
            b_u = b_uprev
            b_sig = surrogate_grad(b_uprev, sg0, sg1, sg2, sg3, SURROGATE) * (1.0 / b_theta)
        if HAS_LEN:
            b_lv = tl.where(b_on, b_lv, b_lvh)
            b_lw = tl.where(b_on, b_lw, b_lwh)
        b_vnew = b_vprev
        p_vprev -= M
    return (b_lv, b_lw, b_li, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b,
            g_ts)  # fmt: skip


@triton.jit(do_not_specialize=["T", "K", "k0"])
def _adex_scan_bwd_kernel(
    vseq_ptr,  # [T, M] fp32 stored V of every step (forward output); RECOMPUTE: [K, M] scratch
    state0_ptr,  # [C, M] fp32 state before the scan (V0; w0 read for parameter gradients)
    par_ptr,  # [N_PARAMS, N] fp32 packed parameters
    T, M, N,  # steps (runtime), flattened state size, neurons per sample
    dt, ceiling,  # ms; adex.params.RUNAWAY_CEILING
    K,  # steps per segment: the checkpoint interval (RECOMPUTE), else T
    SURROGATE: tl.constexpr,
    BLOCK: tl.constexpr,
    # optional from here on: the launcher passes only what differs from these defaults
    gspk_ptr=None,  # [T, M] grad of spikes ([M] with GSPK_ROW)
    gvseq_ptr=None,  # [T, M] grad of the V sequence
    gwseq_ptr=None,  # [T, M] grad of the w sequence
    gstate_ptr=None,  # [C, M] grad of the final state (rows V, w)
    ref_ptr=None,  # [cdiv(T, 8), M] uint8 refractory bits of the forward (HAS_REF);
    # RECOMPUTE: [cdiv(K, 8), M] scratch
    wseq_ptr=None,  # [T, M] fp32 stored w of every step (READ_W); RECOMPUTE: [K, M]
    gpar_ptr=None,  # [popcount(PARAM_MASK), M] out: fp32 per-element parameter gradients
    gx_ptr=None,  # [T, M] out: grad of x, x's dtype (WRITE_GX)
    gstate0_ptr=None,  # [C, M] out: fp32 grad of the initial state (zero last-spike-time
    # row; WRITE_GSTATE0)
    x_ptr=None,  # [T, M] input current (RECOMPUTE, READ_I)
    ckpt_ptr=None,  # [cdiv(T, K), C, M] fp32 forward checkpoints (RECOMPUTE)
    sg0=0.0, sg1=0.0, sg2=0.0, sg3=0.0,  # surrogate hyper-parameters
    k0=0, tau_ref=0.0,  # global step index of step 0; refractory period, ms (RECOMPUTE, HAS_REF)
    HARD_RESET: tl.constexpr = False, HAS_W: tl.constexpr = False,  # the model
    HAS_EXP: tl.constexpr = False, HAS_REF: tl.constexpr = False,
    DETACH_RESET: tl.constexpr = False,
    PARAM_GRAD: tl.constexpr = False, RECOMPUTE: tl.constexpr = False,  # the plan
    PARAM_MASK: tl.constexpr = 0,  # bit k: write the gradient of packed parameter row k
    READ_W: tl.constexpr = False,  # read the stored w (the tau_w gradient)
    HAS_GSPK: tl.constexpr = False, HAS_GVSEQ: tl.constexpr = False,  # incoming gradients
    HAS_GWSEQ: tl.constexpr = False, HAS_GSTATE: tl.constexpr = False,  # present
    WRITE_GX: tl.constexpr = False, WRITE_GSTATE0: tl.constexpr = False,  # outgoing wanted
    NUM_STAGES: tl.constexpr = None,  # loop pipelining depth (kernels/launch.py)
    isq_ptr=None,  # [T, M] fp32 stored synaptic current (READ_I); RECOMPUTE: [K, M] scratch
    gisq_ptr=None,  # [T, M] grad of the synaptic-current sequence
    HAS_SYN: tl.constexpr = False,  # the synaptic current I (state row 1 + HAS_W + HAS_REF)
    READ_I: tl.constexpr = False,  # read the stored I and x (the tau_syn gradient)
    HAS_GISEQ: tl.constexpr = False,
    len_ptr=None,  # [batch] int32 steps each sample ran (HAS_LEN): later steps pass no gradient
    SPS=1,  # elements per sample, M // batch (HAS_LEN)
    HAS_LEN: tl.constexpr = False,
    GSPK_ROW: tl.constexpr = False,  # gspk_ptr is one [M] row, the same at every step
):  # fmt: skip
    o_m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_m = o_m < M
    o_n = o_m % N
    dt, sg0, sg1, sg2, sg3 = fp32_scalars(dt, sg0, sg1, sg2, sg3)
    (b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_cw,
     b_dcw) = load_bwd_params(par_ptr, o_n, m_m, N, dt)  # fmt: skip
    b_itheta = 1.0 / b_theta  # the step functions' reset computes u with the same reciprocal
    b_vcap = b_vth + tl.cast(ceiling, tl.float32) * b_theta
    tau_ref = tl.cast(tau_ref, tl.float32)
    z = tl.zeros([BLOCK], dtype=tl.float32)
    b_lv, b_lw, b_li = load_state_adjoints(gstate_ptr, o_m, m_m, M, z, HAS_GSTATE, HAS_W,
                                           HAS_REF, HAS_SYN)  # fmt: skip
    # d loss / d parameter, accumulated over time per element (order: packed rows)
    g_R, g_tau, g_tau_w, g_vth, g_vreset = z, z, z, z, z
    g_vrest, g_vT, g_dT, g_a, g_b, g_ts = z, z, z, z, z, z
    b_cs, b_dcs = 1.0, 0.0
    if HAS_SYN:
        b_cs, b_dcs = synapse_factors(par_ptr, o_n, m_m, N, dt)
    b_len = 0
    if HAS_LEN:
        b_len = tl.load(len_ptr + o_m // SPS, mask=m_m, other=0)

    n_seg = tl.cdiv(T, K)
    for s in range(0, n_seg):
        seg = n_seg - 1 - s  # segments last first; one segment [0, T) without RECOMPUTE
        t0 = seg * K
        L = tl.minimum(K, T - t0)
        b_v0, b_w0, b_i0 = _segment_start(
            state0_ptr, x_ptr, ckpt_ptr, vseq_ptr, wseq_ptr, ref_ptr, isq_ptr, seg, t0, L, M,
            k0, o_m, m_m, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta,
            b_vcap, b_cw, dt, tau_ref, b_cs, b_len, HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
            HAS_SYN, HAS_LEN, RECOMPUTE, READ_W, READ_I, NUM_STAGES, BLOCK,
        )  # fmt: skip
        (b_lv, b_lw, b_li, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b,
         g_ts) = _adjoint_segment(
            vseq_ptr, gspk_ptr, gvseq_ptr, gwseq_ptr, ref_ptr, wseq_ptr, gx_ptr, x_ptr,
            isq_ptr, gisq_ptr, t0, L, M, o_m, m_m, b_len, b_v0, b_w0, b_i0, b_lv, b_lw, b_li,
            g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b, g_ts,
            b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_itheta,
            b_cw, b_dcw, b_cs, b_dcs, dt, sg0, sg1, sg2, sg3,
            SURROGATE, HARD_RESET, HAS_W, HAS_EXP, HAS_REF, DETACH_RESET, PARAM_GRAD, READ_W,
            HAS_GSPK, HAS_GVSEQ, HAS_GWSEQ, WRITE_GX, HAS_SYN, READ_I, HAS_GISEQ, HAS_LEN,
            GSPK_ROW, NUM_STAGES, BLOCK,
        )  # fmt: skip
    if WRITE_GSTATE0:
        store_state_grads(gstate0_ptr, o_m, m_m, M, b_lv, b_lw, b_li, HAS_W, HAS_REF, HAS_SYN)
    if PARAM_GRAD:
        store_param_grads(gpar_ptr, M, o_m, m_m, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest,
                          g_vT, g_dT, g_a, g_b, g_ts, PARAM_MASK)  # fmt: skip


class BackwardOutputs(NamedTuple):
    """What :func:`adex_scan_bwd` wrote.

    Attributes:
        grad_x: ``[T, *S]`` gradient of the input current, in the input's dtype (None when
            not wanted).
        grad_state0: ``[C, *S]`` fp32 gradient of the initial state (the last-spike-time
            row is zero: it carries no gradient; None when not wanted).
        grad_params: ``[len(grad_rows(spec.param_mask)), *S]`` fp32 per-element gradients
            of the parameters in the spec's ``param_mask``, one row each in packed-row order
            (all ``N_PARAMS`` rows for every parameter; summing over the batch dims gives
            the gradient of those packed rows; ``adex.params.full_param_grads`` spreads them
            over the packed layout), or None.
    """

    grad_x: torch.Tensor | None
    grad_state0: torch.Tensor | None
    grad_params: torch.Tensor | None


class SavedForBackward(NamedTuple):
    """The forward's tensors the backward reads (None where the plan wrote none).

    Attributes:
        state0: ``[C, *S]`` fp32 initial state.
        v_seq: ``[T, *S]`` fp32 stored V (default mode).
        w_seq: ``[T, *S]`` fp32 stored w (parameter gradients with w, default mode).
        ref_bits: ``[cdiv(T, 8), *S]`` uint8 refractory flags (Ref models, default mode).
        checkpoints: ``[cdiv(T, K), C, *S]`` fp32 state checkpoints (checkpoint mode).
        x: ``[T, *S]`` contiguous input, read again in checkpoint mode and for the tau_syn
            gradient.
        i_seq: ``[T, *S]`` fp32 stored synaptic current (tau_syn gradient, default mode).
    """

    state0: torch.Tensor
    v_seq: torch.Tensor | None
    w_seq: torch.Tensor | None
    ref_bits: torch.Tensor | None
    checkpoints: torch.Tensor | None
    x: torch.Tensor | None
    i_seq: torch.Tensor | None = None


def adex_scan_bwd(
    saved: SavedForBackward,
    packed_params: torch.Tensor,
    spec,
    plan,
    grad_spikes: torch.Tensor | None,
    grad_v_seq: torch.Tensor | None,
    grad_w_seq: torch.Tensor | None,
    grad_state: torch.Tensor | None,
    x_dtype: torch.dtype,
    T: int,
    t0_step: int = 0,
    want_x: bool = True,
    want_state0: bool = True,
    grad_i_seq: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> BackwardOutputs:
    """Launch the backward scan.

    Args:
        saved: the forward's :class:`SavedForBackward`.
        packed_params: ``[N_PARAMS, N]`` fp32.
        spec, plan: the ``adex.spec.ScanSpec`` and the ``Plan`` the forward ran with.
        grad_spikes, grad_v_seq, grad_w_seq: contiguous ``[T, *S]`` incoming gradients of
            the forward's outputs, or None where zero; ``grad_spikes`` may be one
            ``[1, *S]`` row, the same at every step.
        grad_state: contiguous ``[C, *S]`` incoming gradient of the final state, or None.
        x_dtype: dtype of the returned ``grad_x``.
        T: number of steps. t0_step: global step of ``x[0]`` (checkpoint mode recomputes
            the refractory test).
        want_x, want_state0: write ``grad_x`` / ``grad_state0`` (the gradient of an input
            that does not require grad is neither written nor allocated).
        grad_i_seq: contiguous ``[T, *S]`` incoming gradient of the synaptic-current
            sequence, or None.
        lengths: the forward's ``[S[0]]`` int32 sample lengths, or None.


    Returns:
        :class:`BackwardOutputs`.
    """
    state0 = saved.state0
    S = state0.shape[1:]
    M = state0.numel() // state0.shape[0]
    device = state0.device
    K = plan.checkpoint_every
    v_seq, w_seq, ref_bits, i_seq = saved.v_seq, saved.w_seq, saved.ref_bits, saved.i_seq
    if K:  # scratch rows of one segment, rewritten per segment
        rows = min(K, T)
        v_seq = torch.empty((rows, M), dtype=torch.float32, device=device)
        w_seq = None
        if plan.read_w:
            w_seq = torch.empty((rows, M), dtype=torch.float32, device=device)
        ref_bits = None
        if spec.has_ref:  # 1 bit per step
            ref_bits = torch.empty(((rows + 7) // 8, M), dtype=torch.uint8, device=device)
        i_seq = None
        if plan.read_i:
            i_seq = torch.empty((rows, M), dtype=torch.float32, device=device)
    grad_x = None
    if want_x:  # (empty_like of a stored [T, *S] sequence costs the host less than empty)
        seq = saved.v_seq
        if seq is None:
            grad_x = torch.empty((T, *S), dtype=x_dtype, device=device)
        else:
            grad_x = torch.empty_like(seq, dtype=None if x_dtype == torch.float32 else x_dtype)
    grad_state0 = torch.empty_like(state0) if want_state0 else None  # fp32, contiguous
    grad_par = None
    if plan.param_grad:  # one row per parameter of the spec's param_mask, each written
        rows = len(grad_rows(spec.param_mask))
        grad_par = torch.empty((rows, *S), dtype=torch.float32, device=device)
    grid, fixed = _fixed_args(plan, M, packed_params.shape[1], device)
    args = dict(fixed, vseq_ptr=v_seq, state0_ptr=state0, par_ptr=packed_params, T=T,
                K=K if K else T)  # fmt: skip
    # the optional tensors and flags of this call, where not the kernel's defaults (None,
    # False; k0 = 0)
    if grad_spikes is not None:
        args.update(gspk_ptr=grad_spikes, HAS_GSPK=True)
        if grad_spikes.shape[0] != T:  # one row for every step
            args["GSPK_ROW"] = True
    if grad_v_seq is not None:
        args.update(gvseq_ptr=grad_v_seq, HAS_GVSEQ=True)
    if grad_w_seq is not None:
        args.update(gwseq_ptr=grad_w_seq, HAS_GWSEQ=True)
    if grad_state is not None:
        args.update(gstate_ptr=grad_state, HAS_GSTATE=True)
    if grad_i_seq is not None:
        args.update(gisq_ptr=grad_i_seq, HAS_GISEQ=True)
    for name, tensor in (("ref_ptr", ref_bits), ("wseq_ptr", w_seq), ("isq_ptr", i_seq)):
        if tensor is not None:
            args[name] = tensor
    if grad_x is not None:
        args.update(gx_ptr=grad_x, WRITE_GX=True)
    if grad_state0 is not None:
        args.update(gstate0_ptr=grad_state0, WRITE_GSTATE0=True)
    if grad_par is not None:
        args["gpar_ptr"] = grad_par
    if K or plan.read_i:
        args["x_ptr"] = saved.x
    if K:
        args["ckpt_ptr"] = saved.checkpoints
    if t0_step:
        args["k0"] = t0_step
    if lengths is not None:
        args.update(len_ptr=lengths, SPS=M // lengths.shape[0], HAS_LEN=True)
    # kernel[grid](...) without its proxy lambda (see adex.kernels.launch)
    _adex_scan_bwd_kernel.run(grid=grid, warmup=False, **args)
    return BackwardOutputs(grad_x, grad_state0, grad_par)


def _fixed_args(plan, M: int, N: int, device: torch.device) -> tuple[tuple[int], dict]:
    """The grid of a backward launch over ``M`` neurons x batch with ``N``-wide parameter
    rows, and its keyword arguments that the plan and geometry fix (scalars, constexpr
    flags, launch options), less the kernel's defaults; computed once per plan and key."""
    key = ("scan_bwd", M, N, device, *launch_settings())
    cache = plan.launch
    cached = None if cache is None else cache.get(key)
    if cached is not None:
        return cached
    block, num_warps, programs = block_config(M, device)
    args = without_defaults(_adex_scan_bwd_kernel, dict(
        plan.bwd_args, M=M, N=N, BLOCK=block, num_warps=num_warps,
        NUM_STAGES=pipeline_stages(device), enable_fp_fusion=FP_FUSION,
    ))  # fmt: skip
    if cache is not None:
        remember(cache, key, ((programs,), args))
    return (programs,), args
