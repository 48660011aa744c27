"""Backward time scan of a recurrent layer: the BPTT adjoint recursion in one kernel, in
reverse over all T steps, with the recurrent adjoint ``lambda_s(t-1) += lambda_I(t) @ weight``
by ``tl.dot`` each step.

The per-step adjoint is the feed-forward backward's device functions (``step_factors``,
``step_adjoint``, ``step_param_grads``, ``reset_adjoint``) on a ``[BLOCK_B, BLOCK_N]``
tile, with the same loads and stores around the loop (``kernels/bwd_tile.py``); the spike
of step t gets the incoming spike gradient plus ``lambda_I(t+1) @ weight`` (its surrogate
carries both into V_t). The kernel writes ``lambda_I`` ``[T, B, N]`` fp32,
the gradient of the total input current of each step (which is the gradient of x), and
``lambda_s(-1)``, the gradient of the carried spikes before the scan. The weight gradient
``sum_t lambda_I(t)^T s(t-1)`` is one matmul after the kernel (``adex.recurrent_fused``).
The product reads ``lambda_I(t)`` back from its output rows in chunks against the weight
(``kernels/recurrent_tile.py``), fp32 x fp32 with ``input_precision="ieee"`` (no tf32).
"""

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
from adex.kernels.device_math import surrogate_grad
from adex.kernels.recurrent_fwd import BLOCK_K, recurrent_config
from adex.kernels.recurrent_tile import tile_matmul, tile_offsets
from adex.kernels.step import (
    load_flag_bit,
    reset_adjoint,
    step_adjoint,
    step_factors,
    step_param_grads,
    synapse_grads,
)
from adex.params import grad_rows

# Bytes per neuron-step (fp32): read V (4), read the spike gradient (4), write lambda_I (4),
# as the feed-forward backward; on chip, lambda_I(t) read back and the weight (from L1/L2)
# per program-step.


@triton.jit
def _reverse_adjoint(
    vseq_ptr, weight_ptr, gspk_ptr, gvseq_ptr, gwseq_ptr, ref_ptr, wseq_ptr,
    gcur_ptr, isq_ptr, usq_ptr, gisq_ptr, T, B, N, M, o_m, m, o_b,
    b_v0, b_w0, b_i0,  # the state before the scan (w read with READ_W, I with READ_I)
    b_lv, b_lw, b_li,  # the adjoints of the final state (V, w, I)
    g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b, g_ts,  # accumulators
    b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_cw, b_dcw, b_cs,
    b_dcs, dt, sg0, sg1, sg2, sg3,
    SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr, HAS_REF: tl.constexpr, DETACH_RESET: tl.constexpr,
    PARAM_GRAD: tl.constexpr, READ_W: tl.constexpr, HAS_GSPK: tl.constexpr,
    HAS_GVSEQ: tl.constexpr, HAS_GWSEQ: tl.constexpr, HAS_SYN: tl.constexpr,
    READ_I: tl.constexpr, HAS_GISEQ: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The adjoint recursion over all T steps, last first, on the program's tile: writes
    ``lambda_I(t)`` (the rows of ``gcur_ptr``) and returns the adjoints of the state before
    the scan, the parameter-gradient accumulators and, without PARAM_GRAD, ``lambda_I(0) @
    weight`` (zeros with it): ``(lambda_V, lambda_w, lambda_I, g_R, ..., g_b, g_tau_syn,
    rec)``."""
    z = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    b_wprev = z
    b_rec = z  # without PARAM_GRAD: lambda_I(t+1) @ weight, carried from step t+1
    last = tl.cast(T - 1, tl.int64) * M
    b_vnew = tl.load(vseq_ptr + last + o_m, mask=m, other=0.0)
    p_vprev = vseq_ptr + last - M + o_m
    p_gc = gcur_ptr + last + o_m
    if HAS_GSPK:
        p_gs = gspk_ptr + last + o_m
    if HAS_GVSEQ:
        p_gv = gvseq_ptr + last + o_m
    if HAS_GWSEQ:
        p_gw = gwseq_ptr + last + o_m
    if READ_W:
        p_wprev = wseq_ptr + last - M + o_m
    p_gi, p_iprev, p_u = gisq_ptr, isq_ptr, usq_ptr  # the synapse's rows, where read
    if HAS_GISEQ:
        p_gi = gisq_ptr + last + o_m
    if READ_I:
        p_iprev = isq_ptr + last - M + o_m
        p_u = usq_ptr + last + o_m
    for i in tl.range(0, T):
        t = T - 1 - i
        m_prev = m & (o_m * 0 + t > 0)
        b_vprev = tl.where(m_prev, tl.load(p_vprev, mask=m_prev, other=0.0), b_v0)
        # the spike of step t: the incoming gradient plus the recurrent one, lambda_I(t+1) @
        # weight; with PARAM_GRAD computed here, not at the end of step t+1, so that it is
        # not live across that step's parameter gradients (fewer spills there on sm_90;
        # without them the other order spills less: benchmarks/NOTES.md)
        if PARAM_GRAD:
            b_gs = z
            if i > 0:
                b_gs = tile_matmul(gcur_ptr + tl.cast(t + 1, tl.int64) * M, weight_ptr, N, 1,
                                   o_b, B, N, BLOCK_B, BLOCK_N, BLOCK_K)  # fmt: skip
        else:
            b_gs = b_rec
        if HAS_GSPK:
            b_gs += tl.load(p_gs, mask=m, other=0.0).to(tl.float32)
            p_gs -= M
        b_u = (b_vnew - b_vth) / b_theta
        b_gsg = b_gs * surrogate_grad(b_u, sg0, sg1, sg2, sg3, SURROGATE) / b_theta
        b_lv += b_gsg
        if HAS_GVSEQ:  # the returned V_t and w_t (return_states)
            b_lv += tl.load(p_gv, mask=m, other=0.0).to(tl.float32)
            p_gv -= M
        if HAS_GWSEQ:
            b_lw += tl.load(p_gw, mask=m, other=0.0).to(tl.float32)
            p_gw -= M
        (b_vr, b_sprev, b_uprev, b_z, b_e, b_slope, b_jac, b_zj, b_phi, b_p, b_f, b_dvdv,
         b_run) = step_factors(
            b_vprev, b_vnew, b_tau, b_vth, b_vreset, b_vT, b_dT, b_theta, dt,
            HARD_RESET, HAS_EXP,
        )  # fmt: skip
        b_ref = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.int1)
        if HAS_REF:
            b_ref = load_flag_bit(ref_ptr, t, M, o_m, m)
        b_gx, b_lvr, b_lwr, b_big = step_adjoint(
            b_lv, b_lw, b_ref, b_p, b_dvdv, b_R, b_tau, b_a, b_cw, HAS_W, HAS_REF
        )
        if HAS_SYN:  # the membrane read I_t: through the synapse to the total input
            b_gx, b_li, g_ts = synapse_grads(b_li, b_gx, g_ts, p_gi, p_iprev, p_u, b_i0, m_prev, m,
                                             m, b_cs, b_dcs, HAS_GISEQ, READ_I, False)  # fmt: skip
            if HAS_GISEQ:
                p_gi -= M
            if READ_I:
                p_iprev -= M
                p_u -= M
        tl.store(p_gc, b_gx, mask=m)
        tl.debug_barrier()  # lambda_I(t) visible to the whole program
        if not PARAM_GRAD:  # lambda_I(t) @ weight, the spike adjoint of step t-1
            b_rec = tile_matmul(gcur_ptr + tl.cast(t, tl.int64) * M, weight_ptr, N, 1, o_b, B,
                                N, BLOCK_B, BLOCK_N, BLOCK_K)  # fmt: skip
        p_gc -= M
        if PARAM_GRAD:
            if READ_W:
                b_wprev = tl.where(m_prev, tl.load(p_wprev, mask=m_prev, other=0.0), b_w0)
                p_wprev -= M
            (g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a,
             g_b) = step_param_grads(
                g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b,
                b_gsg, b_u, b_lw, b_big, b_lvr, b_lwr, b_ref, b_vprev, b_vnew, b_wprev,
                b_vr, b_sprev, b_uprev, b_z, b_e, b_slope, b_jac, b_zj, b_phi, b_p, b_f,
                b_run, b_R, b_tau, b_vreset, b_vrest, b_dT, b_a, b_b, b_theta, b_cw,
                b_dcw, dt, sg0, sg1, sg2, sg3,
                SURROGATE, HARD_RESET, HAS_W, HAS_EXP, HAS_REF, DETACH_RESET, True,
                BLOCK_N,
            )  # fmt: skip
        b_lv, b_lw = reset_adjoint(
            b_lvr, b_lwr, b_lw, b_vprev, b_uprev, b_vreset, b_b, b_theta, sg0, sg1, sg2,
            sg3, SURROGATE, HARD_RESET, HAS_W, DETACH_RESET,
        )  # fmt: skip
        b_vnew = b_vprev
        p_vprev -= M
    return (b_lv, b_lw, b_li, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b,
            g_ts, b_rec)  # fmt: skip


@triton.jit(do_not_specialize=["T"])
def _recurrent_bwd_kernel(
    vseq_ptr,  # [T, B, N] fp32 stored V of every step
    state0_ptr,  # [C, B, N] fp32 state before the scan (V0; w0 for the tau_w gradient)
    weight_ptr,  # [N, N] fp32 recurrent weight
    par_ptr,  # [11, N] fp32 packed parameters
    gspk_ptr,  # [T, B, N] grad of the spikes, or None
    gstate_ptr,  # [C, B, N] grad of the final state (rows V, w), or None
    gvseq_ptr,  # [T, B, N] grad of the returned V sequence (HAS_GVSEQ), or None
    gwseq_ptr,  # [T, B, N] grad of the returned w sequence (HAS_GWSEQ), or None
    ref_ptr,  # [cdiv(T, 8), B, N] uint8 refractory bits (HAS_REF)
    wseq_ptr,  # [T, B, N] fp32 stored w (READ_W), else None
    gpar_ptr,  # [popcount(PARAM_MASK), B, N] out: fp32 per-element parameter gradients
    gcur_ptr,  # [T, B, N] out: fp32 gradient of each step's total input current
    gstate0_ptr,  # [C, B, N] out: fp32 grad of the initial state (WRITE_GSTATE0), or None
    gs0_ptr,  # [B, N] out: fp32 grad of the spikes before the scan (WRITE_GS0), or None
    T, B, N,
    dt, ceiling, tau_ref,  # ms (ceiling and tau_ref: unused, part of the plan's arguments)
    sg0, sg1, sg2, sg3,  # surrogate hyper-parameters
    SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr, HAS_REF: tl.constexpr, DETACH_RESET: tl.constexpr,
    PARAM_GRAD: tl.constexpr, PARAM_MASK: tl.constexpr, READ_W: tl.constexpr,
    RECOMPUTE: tl.constexpr,  # always False here (no checkpoint mode)
    HAS_GSPK: tl.constexpr, HAS_GSTATE: tl.constexpr,
    HAS_GVSEQ: tl.constexpr, HAS_GWSEQ: tl.constexpr,
    WRITE_GSTATE0: tl.constexpr, WRITE_GS0: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    isq_ptr=None,  # [T, B, N] fp32 stored synaptic current (READ_I), else None
    usq_ptr=None,  # [T, B, N] fp32 stored total input the synapse filtered (READ_I)
    gisq_ptr=None,  # [T, B, N] grad of the returned I sequence (HAS_GISEQ), or None
    HAS_SYN: tl.constexpr = False,  # the synapse filters the total input (state row I)
    READ_I: tl.constexpr = False,  # the tau_syn gradient: read the stored I and total input
    HAS_GISEQ: tl.constexpr = False,
):  # fmt: skip
    M = tl.cast(B, tl.int64) * N
    o_m, m, o_b, o_n, m_n = tile_offsets(tl.program_id(0), B, N, BLOCK_B, BLOCK_N)
    dt, sg0, sg1, sg2, sg3 = fp32_scalars(dt, sg0, sg1, sg2, sg3)
    (b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_cw,
     b_dcw) = load_bwd_params(par_ptr, o_n, m_n, N, dt)  # fmt: skip
    z = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    b_lv, b_lw, b_li = load_state_adjoints(gstate_ptr, o_m, m, M, z, HAS_GSTATE, HAS_W,
                                           HAS_REF, HAS_SYN)  # fmt: skip
    g_R, g_tau, g_tau_w, g_vth, g_vreset = z, z, z, z, z
    g_vrest, g_vT, g_dT, g_a, g_b, g_ts = z, z, z, z, z, z
    b_v0 = tl.load(state0_ptr + o_m, mask=m, other=0.0)
    b_w0 = z
    if READ_W:
        b_w0 = tl.load(state0_ptr + M + o_m, mask=m, other=0.0)
    b_cs, b_dcs, b_i0 = 1.0, 0.0, z
    if HAS_SYN:
        b_cs, b_dcs = synapse_factors(par_ptr, o_n, m_n, N, dt)
    if READ_I:
        b_i0 = tl.load(state0_ptr + (1 + HAS_W + HAS_REF) * M + o_m, mask=m, other=0.0)
    (b_lv, b_lw, b_li, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b, g_ts,
     b_rec) = _reverse_adjoint(
        vseq_ptr, weight_ptr, gspk_ptr, gvseq_ptr, gwseq_ptr, ref_ptr, wseq_ptr, gcur_ptr,
        isq_ptr, usq_ptr, gisq_ptr, T, B, N, M, o_m, m, o_b, b_v0, b_w0, b_i0, b_lv, b_lw, b_li,
        g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest, g_vT, g_dT, g_a, g_b, g_ts,
        b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b, b_theta, b_cw, b_dcw,
        b_cs, b_dcs, dt, sg0, sg1, sg2, sg3,
        SURROGATE, HARD_RESET, HAS_W, HAS_EXP, HAS_REF, DETACH_RESET, PARAM_GRAD, READ_W,
        HAS_GSPK, HAS_GVSEQ, HAS_GWSEQ, HAS_SYN, READ_I, HAS_GISEQ, BLOCK_B, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    if WRITE_GS0:  # lambda_I(0) @ weight
        if PARAM_GRAD:
            b_rec = tile_matmul(gcur_ptr, weight_ptr, N, 1, o_b, B, N, BLOCK_B, BLOCK_N,
                                BLOCK_K)  # fmt: skip
        tl.store(gs0_ptr + o_m, b_rec, mask=m)
    if WRITE_GSTATE0:
        store_state_grads(gstate0_ptr, o_m, m, M, b_lv, b_lw, b_li, HAS_W, HAS_REF, HAS_SYN)
    if PARAM_GRAD:  # (the tau_syn row is zero without a synapse)
        store_param_grads(gpar_ptr, M, o_m, m, g_R, g_tau, g_tau_w, g_vth, g_vreset, g_vrest,
                          g_vT, g_dT, g_a, g_b, g_ts, PARAM_MASK)  # fmt: skip


class RecurrentBackwardOutputs(NamedTuple):
    """What :func:`recurrent_scan_bwd` wrote.

    Attributes:
        grad_current: ``[T, B, N]`` fp32 gradient of each step's total input current
            ``x_t + s_{t-1} @ weight.T`` (the gradient of x, before the cast to x's dtype).
        grad_state0: ``[C, B, N]`` fp32 gradient of the initial state, or None.
        grad_s0: ``[B, N]`` fp32 gradient of the spikes before the scan, or None.
        grad_params: ``[len(grad_rows(spec.param_mask)), B, N]`` fp32 per-element gradients
            of the parameters in the spec's ``param_mask`` (packed-row order), or None.
    """

    grad_current: torch.Tensor
    grad_state0: torch.Tensor | None
    grad_s0: torch.Tensor | None
    grad_params: torch.Tensor | None


def recurrent_scan_bwd(v_seq: torch.Tensor, w_seq: torch.Tensor | None,
                       ref_bits: torch.Tensor | None, state0: torch.Tensor,
                       weight: torch.Tensor, packed_params: torch.Tensor, spec, plan,
                       grad_spikes: torch.Tensor | None, grad_state: torch.Tensor | None,
                       want_state0: bool, want_s0: bool, grad_v_seq: torch.Tensor | None = None,
                       grad_w_seq: torch.Tensor | None = None, i_seq: torch.Tensor | None = None,
                       u_seq: torch.Tensor | None = None,
                       grad_i_seq: torch.Tensor | None = None,
                       ) -> RecurrentBackwardOutputs:  # fmt: skip
    """Launch the recurrent backward scan.

    Args:
        v_seq, w_seq, ref_bits: the forward's stored V ``[T, B, N]``, w (``plan.read_w``)
            and refractory flags (Ref models), or None.
        state0: ``[C, B, N]`` fp32 initial state. weight: ``[N, N]`` fp32.
        packed_params: ``[11, N]`` fp32.
        spec, plan: the ``ScanSpec`` and the ``Plan`` the forward ran with.
        grad_spikes: contiguous ``[T, B, N]`` gradient of the spikes, or None where zero.
        grad_state: contiguous ``[C, B, N]`` gradient of the final state, or None.
        want_state0, want_s0: write the gradients of the initial state / spikes.
        grad_v_seq, grad_w_seq: contiguous ``[T, B, N]`` gradients of the returned V and w
            sequences (``return_states``), or None where zero.
        i_seq, u_seq: the forward's stored synaptic current and total input
            (``plan.read_i``: the tau_syn gradient), or None.
        grad_i_seq: contiguous ``[T, B, N]`` gradient of the returned I sequence, or None.

    Returns:
        :class:`RecurrentBackwardOutputs`.
    """
    T, B, N = v_seq.shape
    device = v_seq.device
    grad_current = torch.empty((T, B, N), dtype=torch.float32, device=device)
    grad_state0 = torch.empty_like(state0) if want_state0 else None
    grad_s0 = torch.empty((B, N), dtype=torch.float32, device=device) if want_s0 else None
    grad_par = None
    if plan.param_grad:
        # one row per parameter of the spec's param_mask (adex.params.grad_rows), each written
        rows = len(grad_rows(spec.param_mask))
        grad_par = torch.empty((rows, B, N), dtype=torch.float32, device=device)
    block_b, block_n, num_warps, programs = recurrent_config(B, N, device)
    _recurrent_bwd_kernel[(programs,)](
        vseq_ptr=v_seq, state0_ptr=state0, weight_ptr=weight, par_ptr=packed_params,
        gspk_ptr=grad_spikes, gstate_ptr=grad_state, gvseq_ptr=grad_v_seq,
        gwseq_ptr=grad_w_seq, ref_ptr=ref_bits,
        wseq_ptr=w_seq if plan.read_w else None, gpar_ptr=grad_par, gcur_ptr=grad_current,
        gstate0_ptr=grad_state0, gs0_ptr=grad_s0, T=T, B=B, N=N, **plan.bwd_args,
        HAS_GSPK=grad_spikes is not None, HAS_GSTATE=grad_state is not None,
        HAS_GVSEQ=grad_v_seq is not None, HAS_GWSEQ=grad_w_seq is not None,
        WRITE_GSTATE0=want_state0, WRITE_GS0=want_s0,
        **_synapse_args(plan, i_seq, u_seq, grad_i_seq),
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=min(block_n, BLOCK_K), num_warps=num_warps,
    )  # fmt: skip
    return RecurrentBackwardOutputs(grad_current, grad_state0, grad_s0, grad_par)


def _synapse_args(plan, i_seq: torch.Tensor | None, u_seq: torch.Tensor | None,
                  grad_i_seq: torch.Tensor | None) -> dict:  # fmt: skip
    """The synapse's tensor arguments (its flags HAS_SYN and READ_I are the plan's
    ``bwd_args``): none without a synapse."""
    if not plan.bwd_args["HAS_SYN"]:
        return {}
    return dict(isq_ptr=i_seq if plan.read_i else None, usq_ptr=u_seq if plan.read_i else None,
                gisq_ptr=grad_i_seq, HAS_GISEQ=grad_i_seq is not None)  # fmt: skip
