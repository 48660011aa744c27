"""Backward time scan: the BPTT adjoint recursion of the AdEx family in one kernel."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adex.kernels.device_math import (
    exp_term,
    exprel,
    exprel_derivative,
    load_params,
    reset,
    surrogate_grad,
)
from adex.kernels.launch import block_config, pipeline_stages
from adex.kernels.step import integrate_step, load_flag_bit, store_flag_bit

# Bytes per neuron-step (fp32 I/O): read V (4; the next step's V is carried in registers),
# read grad spikes (4), write grad x (4): 12 B; 8 B with bf16/fp16 spikes and x.
# F_V is recovered from consecutive V as (V_new - V')/(dt*exprel(dt*J)) instead of being
# saved: it changes the x/V0/w0 gradients by <= 7e-7 relative (spec section 14). dL/dR and
# dL/dtau use F directly and lose ~ulp(V)*tau/(dt*R*I) relative (6e-4 at dt = 0.01 ms).


@triton.jit(do_not_specialize=["T", "K", "k0"])
def _adex_scan_bwd_kernel(
    vseq_ptr,  # [T, M] fp32 stored V of every step (forward output); RECOMPUTE: [K, M] scratch
    v0_ptr,  # [M] fp32 initial V
    par_ptr,  # [10, N] fp32 packed parameters
    gspk_ptr,  # [T, M] grad of spikes (HAS_GSPK)
    gvseq_ptr,  # [T, M] grad of the V sequence (HAS_GVSEQ)
    gwseq_ptr,  # [T, M] grad of the w sequence (HAS_GWSEQ)
    gvlast_ptr,  # [M] grad of the final V (HAS_GVLAST)
    gwlast_ptr,  # [M] grad of the final w (HAS_GWLAST)
    ref_ptr,  # [cdiv(T, 8), M] uint8 refractory bits of the forward (HAS_REF); RECOMPUTE:
    # [cdiv(K, 8), M] scratch
    wseq_ptr,  # [T, M] fp32 stored w of every step (PARAM_GRAD and HAS_W); RECOMPUTE: [K, M]
    w0_ptr,  # [M] fp32 initial w (PARAM_GRAD and HAS_W)
    gpar_ptr,  # [10, M] out: fp32 per-element parameter gradients (PARAM_GRAD)
    gx_ptr,  # [T, M] out: grad of x, x's dtype
    gv0_ptr,  # [M] out: fp32 grad of V0
    gw0_ptr,  # [M] out: fp32 grad of w0 (HAS_W)
    x_ptr,  # [T, M] input current (RECOMPUTE)
    ckpt_ptr,  # [cdiv(T, K), CKPT_ROWS, M] fp32 forward checkpoints (RECOMPUTE)
    T,  # number of steps (runtime)
    M,  # flattened state size
    N,  # neurons per sample
    dt,  # ms
    ceiling,  # adex.params.RUNAWAY_CEILING
    sg0,
    sg1,
    sg2,
    sg3,  # surrogate hyper-parameters
    K,  # steps per segment: the checkpoint interval (RECOMPUTE), else T
    k0,  # global step index of step 0 (RECOMPUTE and HAS_REF)
    tau_ref,  # refractory period, ms (RECOMPUTE and HAS_REF)
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    PARAM_GRAD: tl.constexpr,
    HAS_GSPK: tl.constexpr,
    HAS_GVSEQ: tl.constexpr,
    HAS_GWSEQ: tl.constexpr,
    HAS_GVLAST: tl.constexpr,
    HAS_GWLAST: tl.constexpr,
    RECOMPUTE: tl.constexpr,
    CKPT_ROWS: tl.constexpr,  # 1 + HAS_W + HAS_REF
    NUM_STAGES: tl.constexpr,  # loop pipelining depth, or None (kernels/launch.py)
    BLOCK: tl.constexpr,
):
    o_m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_m = o_m < M
    o_n = o_m % N
    dt = tl.cast(dt, tl.float32)
    sg0 = tl.cast(sg0, tl.float32)
    sg1 = tl.cast(sg1, tl.float32)
    sg2 = tl.cast(sg2, tl.float32)
    sg3 = tl.cast(sg3, tl.float32)
    (b_R, b_tau, b_tau_w, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b) = load_params(
        par_ptr, o_n, m_m, N
    )
    b_theta = b_vth - b_vreset
    b_cw = dt * exprel(-dt / b_tau_w) / b_tau_w

    b_lv = tl.zeros([BLOCK], dtype=tl.float32)  # adjoint of the stored V
    b_lw = tl.zeros([BLOCK], dtype=tl.float32)  # adjoint of the stored w
    if HAS_GVLAST:
        b_lv += tl.load(gvlast_ptr + o_m, mask=m_m, other=0.0).to(tl.float32)
    if HAS_GWLAST:
        b_lw += tl.load(gwlast_ptr + o_m, mask=m_m, other=0.0).to(tl.float32)
    if PARAM_GRAD:
        # d loss / d parameter, accumulated over time per element (order: packed rows)
        g_R = tl.zeros([BLOCK], dtype=tl.float32)
        g_tau = tl.zeros([BLOCK], dtype=tl.float32)
        g_tau_w = tl.zeros([BLOCK], dtype=tl.float32)
        g_vth = tl.zeros([BLOCK], dtype=tl.float32)
        g_vreset = tl.zeros([BLOCK], dtype=tl.float32)
        g_vrest = tl.zeros([BLOCK], dtype=tl.float32)
        g_vT = tl.zeros([BLOCK], dtype=tl.float32)
        g_dT = tl.zeros([BLOCK], dtype=tl.float32)
        g_a = tl.zeros([BLOCK], dtype=tl.float32)
        g_b = tl.zeros([BLOCK], dtype=tl.float32)
        b_dcw = -(dt / (b_tau_w * b_tau_w)) * (1.0 - b_cw)  # d c_w / d tau_w
    if RECOMPUTE:
        b_vcap = b_vth + tl.cast(ceiling, tl.float32) * b_theta
        tau_ref = tl.cast(tau_ref, tl.float32)

    n_seg = tl.cdiv(T, K)
    for s in range(0, n_seg):
        seg = n_seg - 1 - s  # segments last first; one segment [0, T) without RECOMPUTE
        t0 = seg * K
        L = tl.minimum(K, T - t0)
        # the state before the segment: V (and w for the tau_w gradient)
        if RECOMPUTE:
            p_c = ckpt_ptr + tl.cast(seg, tl.int64) * CKPT_ROWS * M + o_m
            b_v0 = tl.load(p_c, mask=m_m, other=0.0)
            b_w0 = tl.zeros([BLOCK], dtype=tl.float32)
            if HAS_W:
                b_w0 = tl.load(p_c + M, mask=m_m, other=0.0)
            b_tl = tl.zeros([BLOCK], dtype=tl.float32)
            if HAS_REF:
                b_tl = tl.load(p_c + (1 + HAS_W) * M, mask=m_m, other=0.0)
            # rerun the forward over the segment into the scratch rows 0 .. L-1
            b_v = b_v0
            b_w = b_w0
            p_x = x_ptr + tl.cast(t0, tl.int64) * M + o_m
            q_v = vseq_ptr + o_m
            q_w = wseq_ptr + o_m
            q_r = ref_ptr + o_m
            b_bits = tl.zeros([BLOCK], dtype=tl.int32)
            for j in tl.range(0, L, num_stages=NUM_STAGES):
                b_x = tl.load(p_x, mask=m_m, other=0.0).to(tl.float32)
                b_t = tl.cast(k0 + t0 + j, tl.float32) * dt
                b_v, b_w, b_tl, b_rf = integrate_step(
                    b_v, b_w, b_tl, b_x, b_t, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT,
                    b_dT, b_a, b_b, b_theta, b_vcap, b_cw, dt, tau_ref,
                    HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
                )  # fmt: skip
                tl.store(q_v, b_v, mask=m_m)
                q_v += M
                if PARAM_GRAD and HAS_W:
                    tl.store(q_w, b_w, mask=m_m)
                    q_w += M
                if HAS_REF:
                    b_bits, q_r = store_flag_bit(q_r, b_bits, b_rf, j, L - 1, M, m_m)
                p_x += M
            tl.debug_barrier()  # the scratch rows are read back below
        else:
            b_v0 = tl.load(v0_ptr + o_m, mask=m_m, other=0.0)
            if PARAM_GRAD and HAS_W:
                b_w0 = tl.load(w0_ptr + o_m, mask=m_m, other=0.0)

        last = tl.cast(L - 1, tl.int64) * M  # last row of the segment in vseq/wseq
        g_last = tl.cast(t0 + L - 1, tl.int64) * M  # its row in the [T, M] gradients
        b_vnew = tl.load(vseq_ptr + last + o_m, mask=m_m, other=0.0)
        p_vprev = vseq_ptr + last - M + o_m
        p_gs = gspk_ptr + g_last + o_m
        p_gv = gvseq_ptr + g_last + o_m
        p_gw = gwseq_ptr + g_last + o_m
        p_gx = gx_ptr + g_last + o_m
        if PARAM_GRAD and HAS_W:
            p_wprev = wseq_ptr + last - M + o_m
        for i in tl.range(0, L, num_stages=NUM_STAGES):
            # V before step t (stored V of step t-1, or V0 at t = 0)
            m_prev = m_m & (o_m * 0 + i < L - 1)
            b_vprev = tl.load(p_vprev, mask=m_prev, other=0.0)
            b_vprev = tl.where(m_prev, b_vprev, b_v0)
            # the returned spike of step t and the per-step state outputs
            if HAS_GSPK:
                b_gs = tl.load(p_gs, mask=m_m, other=0.0).to(tl.float32)
                b_u = (b_vnew - b_vth) / b_theta
                b_gsg = b_gs * surrogate_grad(b_u, sg0, sg1, sg2, sg3, SURROGATE) / b_theta
                b_lv += b_gsg
                if PARAM_GRAD:  # u = (V - V_th)/(V_th - V_reset)
                    g_vth -= b_gsg * (1.0 + b_u)
                    g_vreset += b_gsg * b_u
            if HAS_GVSEQ:
                b_lv += tl.load(p_gv, mask=m_m, other=0.0).to(tl.float32)
            if HAS_GWSEQ:
                b_lw += tl.load(p_gw, mask=m_m, other=0.0).to(tl.float32)
            # recompute the reset and the exp-Euler factors of step t from V_{t-1}
            b_vr, b_sprev, b_uprev = reset(b_vprev, b_vth, b_vreset, b_theta, HARD_RESET)
            if HAS_EXP:
                b_z, b_e, b_slope = exp_term(b_vr, b_vT, b_dT)
                b_jac = (-1.0 + b_e * b_slope) / b_tau
                b_djac = b_e * b_slope / (b_tau * b_dT)  # dJ/dV'
            else:
                b_jac = -1.0 / b_tau
                b_djac = 0.0
            b_zj = dt * b_jac
            b_phi = exprel(b_zj)
            b_p = dt * b_phi
            b_f = (b_vnew - b_vr) / b_p  # F_V(V'), recovered from consecutive V
            b_dvdv = 1.0 + b_p * b_jac + dt * dt * exprel_derivative(b_zj, b_phi) * b_djac * b_f
            if HAS_EXP:
                # a runaway step stored the constant V_th (adex.params.RUNAWAY_CEILING): nothing
                # flows through its V; zero the factors too, which may be inf there
                b_run = (b_vnew == b_vth) & (b_z > 0.0)
                b_p = tl.where(b_run, 0.0, b_p)
                b_dvdv = tl.where(b_run, 0.0, b_dvdv)
            # total adjoint of V_new (w_new = w' + c_w (a (V_new - V_rest) - w') also reads it)
            b_big = b_lv
            if HAS_W:
                b_big += b_lw * b_a * b_cw
            b_gx = b_big * b_p * b_R / b_tau
            b_lvr = b_big * b_dvdv  # adjoint of V' (after the reset)
            b_lwr = b_lw - b_lw * b_cw - b_big * b_p * b_R / b_tau  # adjoint of w'
            if HAS_REF:  # a refractory step kept V = V', w = w': identity, no input gradient
                b_ref = load_flag_bit(ref_ptr, L - 1 - i, M, o_m, m_m)
                b_gx = tl.where(b_ref, 0.0, b_gx)
                b_lvr = tl.where(b_ref, b_lv, b_lvr)
                b_lwr = tl.where(b_ref, b_lw, b_lwr)
            tl.store(p_gx, b_gx.to(gx_ptr.dtype.element_ty), mask=m_m)
            if PARAM_GRAD:
                # direct dependence of this step's V_new and w_new on the parameters
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
                b_acc = tl.where(
                    b_on, dt * dt * exprel_derivative(b_zj, b_phi) * b_fi, 0.0
                )  # dV/dJ
                b_inet = b_tau * b_fi + (b_vr - b_vrest)  # R (x - w') = tau F + (V' - V_rest) - ...
                if HAS_EXP:
                    b_inet -= b_dT * b_e
                    b_em = b_e * b_slope
                    g_vT -= b_lam * (b_acc * b_em / (b_dT * b_tau) + b_pi * b_em / b_tau)
                    g_dT += b_lam * (b_pi * (b_e - b_em * b_z) - b_acc * b_em * b_z / b_dT) / b_tau
                g_R += b_lam * b_pi * b_inet / (b_R * b_tau)
                g_tau -= b_lam * (b_acc * b_jac + b_pi * b_fi) / b_tau
                g_vrest += b_lam * b_pi / b_tau
                if HAS_EXP:  # a runaway step stored V_new = V_th
                    g_vth += tl.where(b_run, b_big, 0.0) * b_upd
                if HAS_W:
                    b_wprev = tl.load(p_wprev, mask=m_prev, other=0.0)
                    b_wprev = tl.where(m_prev, b_wprev, b_w0)
                    b_wr = b_wprev + b_b * b_sprev
                    b_lwu = b_lw * b_upd
                    g_a += b_lwu * b_cw * (b_vnew - b_vrest)
                    g_vrest -= b_lwu * b_cw * b_a
                    g_tau_w += b_lwu * b_dcw * (b_a * (b_vnew - b_vrest) - b_wr)
                    p_wprev -= M
                # the reset at the start of this step: V' and w' depend on V_th, V_reset, b
                if DETACH_RESET:
                    b_gpre = 0.0
                else:
                    b_gpre = surrogate_grad(b_uprev, sg0, sg1, sg2, sg3, SURROGATE)
                if HARD_RESET:
                    b_k = (b_vprev - b_vreset) * b_gpre / b_theta
                    g_vth += b_lvr * b_k * (1.0 + b_uprev)
                    g_vreset += b_lvr * (b_sprev - b_k * b_uprev)
                else:
                    g_vth += b_lvr * (b_gpre * (1.0 + b_uprev) - b_sprev)
                    g_vreset += b_lvr * (b_sprev - b_gpre * b_uprev)
                if HAS_W:
                    g_b += b_lwr * b_sprev
                    g_vth -= b_lwr * b_b * b_gpre * (1.0 + b_uprev) / b_theta
                    g_vreset += b_lwr * b_b * b_gpre * b_uprev / b_theta
            # through the reset at the start of step t (spike of V_{t-1}, with its surrogate)
            if DETACH_RESET:
                b_lv = b_lvr
            else:
                b_sig = surrogate_grad(b_uprev, sg0, sg1, sg2, sg3, SURROGATE) / b_theta
                if HARD_RESET:
                    b_lv = b_lvr - b_lvr * (b_vprev - b_vreset) * b_sig
                else:
                    b_lv = b_lvr - b_lvr * b_theta * b_sig
                if HAS_W:
                    b_lv += b_lwr * b_b * b_sig
            if HAS_W:
                b_lw = b_lwr
            b_vnew = b_vprev
            p_vprev -= M
            p_gs -= M
            p_gv -= M
            p_gw -= M
            p_gx -= M
    tl.store(gv0_ptr + o_m, b_lv, mask=m_m)
    if HAS_W:
        tl.store(gw0_ptr + o_m, b_lw, mask=m_m)
    if PARAM_GRAD:
        M = tl.cast(M, tl.int64)  # row offsets k * M pass 2^31 for M >= 2^28 elements
        tl.store(gpar_ptr + 0 * M + o_m, g_R, mask=m_m)
        tl.store(gpar_ptr + 1 * M + o_m, g_tau, mask=m_m)
        tl.store(gpar_ptr + 2 * M + o_m, g_tau_w, mask=m_m)
        tl.store(gpar_ptr + 3 * M + o_m, g_vth, mask=m_m)
        tl.store(gpar_ptr + 4 * M + o_m, g_vreset, mask=m_m)
        tl.store(gpar_ptr + 5 * M + o_m, g_vrest, mask=m_m)
        tl.store(gpar_ptr + 6 * M + o_m, g_vT, mask=m_m)
        tl.store(gpar_ptr + 7 * M + o_m, g_dT, mask=m_m)
        tl.store(gpar_ptr + 8 * M + o_m, g_a, mask=m_m)
        tl.store(gpar_ptr + 9 * M + o_m, g_b, mask=m_m)


def adex_scan_bwd(
    v_seq: torch.Tensor,
    V0: torch.Tensor,
    packed_params: torch.Tensor,
    grad_spikes: torch.Tensor | None,
    grad_v_seq: torch.Tensor | None,
    grad_w_seq: torch.Tensor | None,
    grad_v_last: torch.Tensor | None,
    grad_w_last: torch.Tensor | None,
    x_dtype: torch.dtype,
    dt: float,
    ceiling: float,
    surrogate_kind: int,
    surrogate_params: tuple[float, float, float, float],
    hard_reset: bool,
    has_w: bool,
    has_exp: bool,
    ref_mask: torch.Tensor | None = None,
    detach_reset: bool = False,
    w_seq: torch.Tensor | None = None,
    w0: torch.Tensor | None = None,
    param_grad: bool = False,
    x: torch.Tensor | None = None,
    checkpoint_every: int = 0,
    tau_ref: float | None = None,
    t0_step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward scan.

    Args:
        v_seq: ``[T, *S]`` fp32 stored V (the forward's ``V_seq``). V0: ``[*S]`` fp32.
        packed_params: ``[10, N]`` fp32.
        grad_*: contiguous incoming gradients of the forward outputs, or None where zero.
        x_dtype: dtype of the returned ``grad_x``.
        dt, ceiling, hard_reset, has_w, has_exp: as in the forward.
        surrogate_kind, surrogate_params: ``Surrogate.kind`` and ``Surrogate.params``.
        ref_mask: ``[cdiv(T, 8), *S]`` uint8 refractory bits from the forward (Ref models),
            or None.
        detach_reset: no gradient through the reset spike.
        w_seq, w0: ``[T, *S]`` stored w and ``[*S]`` initial w (fp32), needed for
            ``param_grad`` with w (the tau_w gradient reads w').
        param_grad: also compute the gradients of the ten packed parameters.
        x, checkpoint_every: checkpoint mode: ``v_seq`` is the forward's checkpoint tensor
            ``[cdiv(T, K), C, *S]`` and ``x`` (``[T, *S]``, contiguous) is read again to
            recompute every segment of ``K = checkpoint_every`` steps; ``ref_mask``,
            ``w_seq`` and ``w0`` are then not used.
        tau_ref, t0_step: the refractory period (ms) and the global step of ``x[0]``, read in
            checkpoint mode (the refractory mask is recomputed).

    Returns:
        ``(grad_x [T, *S] x_dtype, grad_V0 [*S] fp32, grad_w0 [*S] fp32 or [0],
        grad_params [10, *S] fp32 per element, or [0])``; summing ``grad_params`` over the
        batch dims gives the gradient of ``packed_params``.
    """
    recompute = checkpoint_every > 0
    if recompute and x is None:
        raise ValueError("checkpoint mode needs the input x to recompute the segments")
    if not recompute and param_grad and has_w and (w_seq is None or w0 is None):
        raise ValueError("param_grad with w needs the stored w sequence and w0")
    T = x.shape[0] if recompute else v_seq.shape[0]
    S = V0.shape
    M = V0.numel()
    N = packed_params.shape[1]
    has_ref = tau_ref is not None if recompute else ref_mask is not None
    device = V0.device
    checkpoints = v_seq
    if recompute:  # scratch rows of one segment, rewritten per segment
        rows = min(checkpoint_every, T)
        v_seq = torch.empty((rows, M), dtype=torch.float32, device=device)
        w_seq = torch.empty((rows if param_grad and has_w else 0, M), dtype=torch.float32,
                            device=device)  # fmt: skip
        ref_rows = (rows + 7) // 8 if has_ref else 0  # 1 bit per step
        ref_mask = torch.empty((ref_rows, M), dtype=torch.uint8, device=device)
    grad_x = torch.empty((T, *S), dtype=x_dtype, device=device)
    grad_v0 = torch.empty(S, dtype=torch.float32, device=device)
    grad_w0 = torch.empty(S if has_w else (0,), dtype=torch.float32, device=device)
    grad_par = torch.empty((10, *S) if param_grad else (0,), dtype=torch.float32,
                           device=device)  # fmt: skip
    dummy = v_seq  # placeholder pointer for absent (constexpr-disabled) inputs
    block, num_warps = block_config(M, device)
    grid = (triton.cdiv(M, block),)
    _adex_scan_bwd_kernel[grid](
        v_seq, V0, packed_params,
        dummy if grad_spikes is None else grad_spikes,
        dummy if grad_v_seq is None else grad_v_seq,
        dummy if grad_w_seq is None else grad_w_seq,
        dummy if grad_v_last is None else grad_v_last,
        dummy if grad_w_last is None else grad_w_last,
        dummy if ref_mask is None else ref_mask,
        dummy if w_seq is None else w_seq,
        dummy if w0 is None else w0,
        grad_par,
        grad_x, grad_v0, grad_w0,
        x if recompute else dummy, checkpoints,
        T, M, N, dt, ceiling, *surrogate_params,
        checkpoint_every if recompute else T, t0_step, tau_ref if has_ref else 0.0,
        SURROGATE=surrogate_kind, HARD_RESET=hard_reset, HAS_W=has_w, HAS_EXP=has_exp,
        HAS_REF=has_ref, DETACH_RESET=detach_reset, PARAM_GRAD=param_grad,
        HAS_GSPK=grad_spikes is not None, HAS_GVSEQ=grad_v_seq is not None,
        HAS_GWSEQ=grad_w_seq is not None, HAS_GVLAST=grad_v_last is not None,
        HAS_GWLAST=grad_w_last is not None, RECOMPUTE=recompute,
        CKPT_ROWS=1 + has_w + has_ref, NUM_STAGES=pipeline_stages(device), BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    return grad_x, grad_v0, grad_w0, grad_par
