"""Forward time scan: one kernel runs all T steps of the AdEx family for a block of neurons."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from adex.kernels.device_math import exprel, load_params
from adex.kernels.launch import block_config, pipeline_stages
from adex.kernels.step import integrate_step, store_flag_bit

# Bytes per neuron-step (fp32 input): read x (4), write spike (4), write V (4) when a
# gradient is needed: 12 B; 8 B with bf16/fp16 I/O, 1 B less per byte-wide spike dtype.
# V is the only per-step tensor saved for backward: every quantity of the adjoint recursion
# follows from consecutive V (spec 10, 14). In checkpoint mode nothing per step is saved:
# the state (V, w, t_last) before every K-th step, 4-12 B per K neuron-steps. Refractory
# models also save 1 bit per neuron-step (the refractory flags, packed 8 steps per byte).


@triton.jit(do_not_specialize=["T", "k0", "K"])
def _adex_scan_fwd_kernel(
    x_ptr,  # [T, M] input current (mA), fp32/bf16/fp16
    v0_ptr,  # [M] fp32 initial V (mV)
    w0_ptr,  # [M] fp32 initial w (mA); unused without HAS_W
    par_ptr,  # [10, N] fp32 packed parameters (adex.params.AdExParams.packed)
    spk_ptr,  # [T, M] out: spikes (float, uint8 or bool)
    vseq_ptr,  # [T, M] out: fp32 V after each step (STORE_V)
    wseq_ptr,  # [T, M] out: fp32 w after each step (STORE_W)
    vlast_ptr,  # [M] out: fp32 final V
    wlast_ptr,  # [M] out: fp32 final w (HAS_W)
    tlast_ptr,  # [M] fp32 time of the last spike before x[0] (ms; HAS_REF)
    tlast_out_ptr,  # [M] out: fp32 time of the last spike after the scan (HAS_REF)
    ref_ptr,  # [cdiv(T, 8), M] out: uint8, bit i % 8 of row i // 8 set where step i was
    # refractory (HAS_REF and STORE_V)
    ckpt_ptr,  # [cdiv(T, K), C, M] out: fp32 state before steps 0, K, 2K, ... (CHECKPOINT)
    T,  # number of steps (runtime: no recompile per T)
    M,  # neurons x batch (flattened state size)
    N,  # neurons per sample (parameter row length)
    dt,  # ms
    ceiling,  # adex.params.RUNAWAY_CEILING
    k0,  # global step index of x[0]: step k runs at t = float(k) * dt (HAS_REF)
    tau_ref,  # refractory period, ms (HAS_REF)
    K,  # checkpoint interval in steps (CHECKPOINT)
    HARD_RESET: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr,
    STORE_V: tl.constexpr,
    STORE_W: tl.constexpr,
    CHECKPOINT: tl.constexpr,
    CKPT_ROWS: tl.constexpr,  # 1 + HAS_W + HAS_REF
    NUM_STAGES: tl.constexpr,  # loop pipelining depth, or None (kernels/launch.py)
    BLOCK: tl.constexpr,
):
    o_m = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_m = o_m < M
    o_n = o_m % N
    dt = tl.cast(dt, tl.float32)
    (b_R, b_tau, b_tau_w, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b) = load_params(
        par_ptr, o_n, m_m, N
    )
    b_theta = b_vth - b_vreset
    b_vcap = b_vth + tl.cast(ceiling, tl.float32) * b_theta
    b_cw = dt * exprel(-dt / b_tau_w) / b_tau_w  # = 1 - exp(-dt/tau_w)
    tau_ref = tl.cast(tau_ref, tl.float32)

    b_v = tl.load(v0_ptr + o_m, mask=m_m, other=0.0)
    b_w = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_W:
        b_w = tl.load(w0_ptr + o_m, mask=m_m, other=0.0)
    b_tlast = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_REF:
        b_tlast = tl.load(tlast_ptr + o_m, mask=m_m, other=0.0)
    p_x = x_ptr + o_m
    p_s = spk_ptr + o_m
    p_v = vseq_ptr + o_m
    p_w = wseq_ptr + o_m
    p_r = ref_ptr + o_m
    b_bits = tl.zeros([BLOCK], dtype=tl.int32)  # refractory flags of the current 8 steps
    for i in tl.range(0, T, num_stages=NUM_STAGES):
        if CHECKPOINT:
            if i % K == 0:  # rows of one checkpoint: V, then w (HAS_W), then t_last (HAS_REF)
                p_c = ckpt_ptr + tl.cast(i // K, tl.int64) * CKPT_ROWS * M + o_m
                tl.store(p_c, b_v, mask=m_m)
                if HAS_W:
                    tl.store(p_c + M, b_w, mask=m_m)
                if HAS_REF:
                    tl.store(p_c + (1 + HAS_W) * M, b_tlast, mask=m_m)
        b_x = tl.load(p_x, mask=m_m, other=0.0).to(tl.float32)
        b_t = tl.cast(k0 + i, tl.float32) * dt
        b_v, b_w, b_tlast, b_ref = integrate_step(
            b_v, b_w, b_tlast, b_x, b_t, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT,
            b_a, b_b, b_theta, b_vcap, b_cw, dt, tau_ref,
            HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
        )  # fmt: skip
        b_spike = tl.where((b_v - b_vth) / b_theta >= 0.0, 1.0, 0.0)
        tl.store(p_s, b_spike.to(spk_ptr.dtype.element_ty), mask=m_m)
        if HAS_REF and STORE_V:
            b_bits, p_r = store_flag_bit(p_r, b_bits, b_ref, i, T - 1, M, m_m)
        if STORE_V:
            tl.store(p_v, b_v, mask=m_m)
            p_v += M
        if STORE_W:
            tl.store(p_w, b_w, mask=m_m)
            p_w += M
        p_x += M
        p_s += M
    tl.store(vlast_ptr + o_m, b_v, mask=m_m)
    if HAS_W:
        tl.store(wlast_ptr + o_m, b_w, mask=m_m)
    if HAS_REF:
        tl.store(tlast_out_ptr + o_m, b_tlast, mask=m_m)


def adex_scan_fwd(
    x: torch.Tensor,
    V0: torch.Tensor,
    w0: torch.Tensor,
    packed_params: torch.Tensor,
    dt: float,
    ceiling: float,
    hard_reset: bool,
    has_w: bool,
    has_exp: bool,
    store_v: bool,
    store_w: bool,
    tau_ref: float | None = None,
    last_spike_time: torch.Tensor | None = None,
    t0_step: int = 0,
    spike_dtype: torch.dtype | None = None,
    checkpoint_every: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Launch the forward scan.

    Args:
        x: ``[T, *S]`` contiguous input current (mA), fp32/bf16/fp16.
        V0, w0: ``[*S]`` contiguous fp32 initial states (w0 ignored unless ``has_w``).
        packed_params: ``[10, N]`` fp32 with ``N`` dividing ``prod(S)``.
        dt: time step (ms). ceiling: the runaway ceiling in units of ``V_th - V_reset``.
        hard_reset, has_w, has_exp: model flags. store_v, store_w: write the per-step sequences.
        tau_ref: refractory period (ms) for the Ref models, else None.
        last_spike_time: ``[*S]`` contiguous fp32 (ms), required with ``tau_ref``.
        t0_step: global step index of ``x[0]`` (t = float(k) * dt).
        spike_dtype: dtype of the spikes (default ``x.dtype``; uint8 and bool cut the
            bytes written).
        checkpoint_every: K > 0 saves no per-step sequence (``store_v``, ``store_w`` must be
            False): ``V_seq`` is then the checkpoint tensor ``[cdiv(T, K), C, *S]`` fp32 of the
            state before steps 0, K, 2K, ... (rows V, w if ``has_w``, last-spike time if
            ``tau_ref``), from which the backward recomputes each K-step segment.

    Returns:
        ``(spikes [T, *S] spike_dtype, V_seq [T, *S] fp32 (the checkpoints in checkpoint
        mode) or [0], w_seq [T, *S] fp32 or [0],
        V_last [*S] fp32, w_last [*S] fp32 or [0], refractory [cdiv(T, 8), *S] uint8 or [0],
        last_spike_time [*S] fp32 or [0])``; the refractory mask (bit ``t % 8`` of row
        ``t // 8`` set where step t was refractory) is written when ``tau_ref`` and
        ``store_v`` are set (the backward reads it: 1 bit per neuron-step).
    """
    if checkpoint_every and (store_v or store_w):
        raise ValueError("checkpoint_every replaces the stored sequences: store_v/w must be off")
    T = x.shape[0]
    S = x.shape[1:]
    M = V0.numel()
    N = packed_params.shape[1]

    def empty() -> torch.Tensor:  # a distinct placeholder per absent output (no aliasing)
        return x.new_empty(0, dtype=torch.float32)

    spikes = torch.empty_like(x, dtype=x.dtype if spike_dtype is None else spike_dtype)
    has_ref = tau_ref is not None
    ckpt_rows = 1 + has_w + has_ref
    if checkpoint_every:  # V_seq holds the checkpoints: cdiv(T, K) states of ckpt_rows rows
        v_shape = (-(-T // checkpoint_every), ckpt_rows, *S)
        v_seq = torch.empty(v_shape, dtype=torch.float32, device=x.device)
    else:
        v_seq = torch.empty(x.shape, dtype=torch.float32, device=x.device) if store_v else empty()
    w_seq = torch.empty(x.shape, dtype=torch.float32, device=x.device) if store_w else empty()
    v_last = torch.empty(S, dtype=torch.float32, device=x.device)
    w_last = torch.empty(S, dtype=torch.float32, device=x.device) if has_w else empty()
    store_ref = has_ref and store_v
    ref_shape = ((T + 7) // 8, *S) if store_ref else (0,)  # 1 bit per neuron-step
    ref_mask = torch.empty(ref_shape, dtype=torch.uint8, device=x.device)
    t_last = torch.empty(S, dtype=torch.float32, device=x.device) if has_ref else empty()
    block, num_warps = block_config(M, x.device)
    grid = (triton.cdiv(M, block),)
    _adex_scan_fwd_kernel[grid](
        x, V0, w0, packed_params, spikes, v_seq, w_seq, v_last, w_last,
        last_spike_time if has_ref else V0, t_last, ref_mask, v_seq,
        T, M, N, dt, ceiling, t0_step, tau_ref if has_ref else 0.0, max(checkpoint_every, 1),
        HARD_RESET=hard_reset, HAS_W=has_w, HAS_EXP=has_exp, HAS_REF=has_ref,
        STORE_V=store_v, STORE_W=store_w, CHECKPOINT=checkpoint_every > 0,
        CKPT_ROWS=ckpt_rows, NUM_STAGES=pipeline_stages(x.device), BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    return spikes, v_seq, w_seq, v_last, w_last, ref_mask, t_last
