"""Forward time scan: one kernel runs all T steps of the AdEx family for a block of neurons."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from adex.kernels.device_math import exprel, load_params, spike, to_fp32
from adex.kernels.launch import (
    FP_FUSION,
    block_config,
    launch_settings,
    pipeline_stages,
    remember,
    without_defaults,
)
from adex.kernels.step import integrate_spiked, store_flag_bit, synapse_step

# Bytes per neuron-step (fp32 input): read x (4), write spike (4), write V (4) when a
# gradient is needed: 12 B; 8 B with bf16/fp16 I/O, 1 B less per byte-wide spike dtype.
# V is the only per-step tensor saved for backward: every quantity of the adjoint recursion
# follows from consecutive V (spec 10, 14). In checkpoint mode nothing per step is saved:
# the state (V, w, t_last) before every K-th step, 4-12 B per K neuron-steps. Refractory
# models also save 1 bit per neuron-step (the refractory flags, packed 8 steps per byte).
# The state block [C, M] holds V, then w (HAS_W), then the last-spike time (HAS_REF), then
# the synaptic current I (HAS_SYN; packed parameter row 10 holds tau_syn).


@triton.jit(do_not_specialize=["T", "k0", "K"])
def _adex_scan_fwd_kernel(
    x_ptr,  # [T, M] input current (mA), fp32/bf16/fp16
    state0_ptr,  # [C, M] fp32 state before x[0]: V (mV), w (mA), last-spike time (ms)
    par_ptr,  # [11, N] fp32 packed parameters (adex.params.AdExParams.packed)
    spk_ptr,  # [T, M] out: spikes (float, uint8 or bool)
    state_ptr,  # [C, M] out: fp32 state after the last step
    T,  # number of steps (runtime: no recompile per T)
    M,  # neurons x batch (flattened state size)
    N,  # neurons per sample (parameter row length)
    dt,  # ms
    ceiling,  # adex.params.RUNAWAY_CEILING
    BLOCK: tl.constexpr,
    # optional from here on: the launcher passes only what differs from these defaults
    vseq_ptr=None,  # [T, M] out: fp32 V after each step (STORE_V)
    wseq_ptr=None,  # [T, M] out: fp32 w after each step (STORE_W)
    ref_ptr=None,  # [cdiv(T, 8), M] out: uint8, bit i % 8 of row i // 8 set where step i
    # was refractory (STORE_REF)
    ckpt_ptr=None,  # [cdiv(T, K), C, M] out: fp32 state before steps 0, K, 2K, ... (CHECKPOINT)
    k0=0,  # global step index of x[0]: step k runs at t = float(k) * dt (HAS_REF)
    tau_ref=0.0,  # refractory period, ms (HAS_REF)
    K=1,  # checkpoint interval in steps (CHECKPOINT)
    HARD_RESET: tl.constexpr = False,
    HAS_W: tl.constexpr = False,
    HAS_EXP: tl.constexpr = False,
    HAS_REF: tl.constexpr = False,
    STORE_V: tl.constexpr = False,
    STORE_W: tl.constexpr = False,
    STORE_REF: tl.constexpr = False,
    CHECKPOINT: tl.constexpr = False,
    NUM_STAGES: tl.constexpr = None,  # loop pipelining depth (kernels/launch.py)
    isq_ptr=None,  # [T, M] out: fp32 synaptic current after each step (STORE_I)
    HAS_SYN: tl.constexpr = False,  # the synaptic current I (filters x before each step)
    STORE_I: tl.constexpr = False,
    len_ptr=None,  # [batch] int32 steps each sample runs (HAS_LEN); later steps hold its state
    SPS=1,  # elements per sample, M // batch (HAS_LEN)
    HAS_LEN: tl.constexpr = False,
    flag_ptr=None,  # [1] int32: set to 1 where a checked value is NaN or inf (never cleared)
    extra_ptr=None,  # [] fp32 verdict of another check, finite where it passed (HAS_EXTRA)
    CHECK_X: tl.constexpr = False,  # check every x read
    CHECK_STATE: tl.constexpr = False,  # check the state block read
    HAS_EXTRA: tl.constexpr = False,
):
    C = 1 + HAS_W + HAS_REF + HAS_SYN  # rows of the state block
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

    b_v = tl.load(state0_ptr + o_m, mask=m_m, other=0.0)
    b_w = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_W:
        b_w = tl.load(state0_ptr + M + o_m, mask=m_m, other=0.0)
    b_tlast = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_REF:
        b_tlast = tl.load(state0_ptr + (1 + HAS_W) * M + o_m, mask=m_m, other=0.0)
    if HAS_SYN:
        b_i = tl.load(state0_ptr + (1 + HAS_W + HAS_REF) * M + o_m, mask=m_m, other=0.0)
        b_ts = tl.load(par_ptr + 10 * tl.cast(N, tl.int64) + o_n, mask=m_m, other=1.0)
        b_cs = dt * exprel(-dt / b_ts) / b_ts  # = 1 - exp(-dt/tau_syn)
    if STORE_I:
        p_i = isq_ptr + o_m
    if HAS_LEN:  # this element's sample's length
        b_len = tl.load(len_ptr + o_m // SPS, mask=m_m, other=0)
    # the finiteness checks: v * 0 is 0 for a finite v and NaN for NaN or inf, so b_chk
    # stays 0 exactly while every checked value is finite (one FMA per checked value)
    b_chk = tl.zeros([BLOCK], dtype=tl.float32)
    if CHECK_STATE:
        b_chk += b_v * 0.0 + b_w * 0.0 + b_tlast * 0.0
        if HAS_SYN:
            b_chk += b_i * 0.0
    if HAS_EXTRA:
        b_chk += tl.load(extra_ptr) * 0.0
    p_x = x_ptr + o_m
    p_s = spk_ptr + o_m
    if STORE_V:
        p_v = vseq_ptr + o_m
    if STORE_W:
        p_w = wseq_ptr + o_m
    if STORE_REF:
        p_r = ref_ptr + o_m
    b_bits = tl.zeros([BLOCK], dtype=tl.int32)  # refractory flags of the current 8 steps
    b_spike = spike(b_v, b_vth)  # carried: the spike a step returns resets the next one
    for i in tl.range(0, T, num_stages=NUM_STAGES):
        if CHECKPOINT:
            if i % K == 0:  # rows of one checkpoint: the state block's
                p_c = ckpt_ptr + tl.cast(i // K, tl.int64) * C * M + o_m
                tl.store(p_c, b_v, mask=m_m)
                if HAS_W:
                    tl.store(p_c + M, b_w, mask=m_m)
                if HAS_REF:
                    tl.store(p_c + (1 + HAS_W) * M, b_tlast, mask=m_m)
                if HAS_SYN:
                    tl.store(p_c + (1 + HAS_W + HAS_REF) * M, b_i, mask=m_m)
        b_x = to_fp32(tl.load(p_x, mask=m_m, other=0.0))
        if CHECK_X:
            b_chk += b_x * 0.0
        if HAS_SYN:  # the membrane reads the filtered current I_t
            b_ih = b_i
            b_i = synapse_step(b_i, b_x, b_cs)
            b_x = b_i
            if HAS_LEN:
                b_i = tl.where(b_len > i, b_i, b_ih)
        if HAS_LEN:
            b_vh, b_wh, b_th = b_v, b_w, b_tlast
        if STORE_I:
            tl.store(p_i, b_i, mask=m_m)
            p_i += M
        b_t = tl.cast(k0 + i, tl.float32) * dt
        b_v, b_w, b_tlast, b_ref = integrate_spiked(
            b_v, b_spike, b_w, b_tlast, b_x, b_t, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT,
            b_dT, b_a, b_b, b_theta, b_vcap, b_cw, dt, tau_ref,
            HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
        )  # fmt: skip
        if HAS_LEN:  # past its length a sample holds its state and writes no spike
            b_on = b_len > i
            b_v = tl.where(b_on, b_v, b_vh)
            b_w = tl.where(b_on, b_w, b_wh)
            b_tlast = tl.where(b_on, b_tlast, b_th)
        b_spike = spike(b_v, b_vth)  # u >= 0 with theta > 0 (validated)
        b_out = b_spike  # a held step's own spike is 0; its carried one no step reads
        if HAS_LEN:
            b_out = tl.where(b_on, b_spike, 0.0)
        tl.store(p_s, b_out.to(spk_ptr.dtype.element_ty), mask=m_m)
        if STORE_REF:
            b_bits, p_r = store_flag_bit(p_r, b_bits, b_ref, i, T - 1, M, m_m)
        if STORE_V:
            tl.store(p_v, b_v, mask=m_m)
            p_v += M
        if STORE_W:
            tl.store(p_w, b_w, mask=m_m)
            p_w += M
        p_x += M
        p_s += M
    tl.store(state_ptr + o_m, b_v, mask=m_m)
    if HAS_W:
        tl.store(state_ptr + M + o_m, b_w, mask=m_m)
    if HAS_REF:
        tl.store(state_ptr + (1 + HAS_W) * M + o_m, b_tlast, mask=m_m)
    if HAS_SYN:
        tl.store(state_ptr + (1 + HAS_W + HAS_REF) * M + o_m, b_i, mask=m_m)
    if CHECK_X or CHECK_STATE or HAS_EXTRA:  # every failing lane writes the same 1
        tl.store(flag_ptr + tl.zeros([BLOCK], dtype=tl.int32), 1, mask=m_m & (b_chk != b_chk))


class ForwardOutputs(NamedTuple):
    """What :func:`adex_scan_fwd` wrote. Absent tensors are None.

    Attributes:
        spikes: ``[T, *S]`` 0/1 spikes in the spec's spike dtype (default: x's).
        state: ``[C, *S]`` fp32 state after the last step (V, w, last-spike time).
        v_seq: ``[T, *S]`` fp32 stored (pre-reset) V of every step (``plan.store_v``).
        w_seq: ``[T, *S]`` fp32 w of every step (``plan.store_w``).
        ref_bits: ``[cdiv(T, 8), *S]`` uint8 refractory flags, bit ``t % 8`` of row
            ``t // 8`` (``plan.store_ref``).
        checkpoints: ``[cdiv(T, K), C, *S]`` fp32 state before steps 0, K, 2K, ...
            (``plan.checkpoint_every = K``).
        i_seq: ``[T, *S]`` fp32 synaptic current I of every step (``plan.store_i``).
    """

    spikes: torch.Tensor
    state: torch.Tensor
    v_seq: torch.Tensor | None
    w_seq: torch.Tensor | None
    ref_bits: torch.Tensor | None
    checkpoints: torch.Tensor | None
    i_seq: torch.Tensor | None = None


CHECK_FLAGS = ("CHECK_X", "CHECK_STATE", "HAS_EXTRA")
"""The forward kernel's constexprs of the finiteness checks, in ``FiniteCheck.flags`` order."""


class FiniteCheck(NamedTuple):
    """The finiteness checks a forward launch runs on the values it reads (build with
    :meth:`of`).

    Attributes:
        flag: ``[1]`` int32 on x's device, 0 before the launch; the kernel sets it to 1
            where a checked value is NaN or inf (the caller reads it, and clears it after
            a failure).
        x: check every element of x.
        state: check the state block.
        extra: a 0-dim fp32 tensor, finite where some other check passed (e.g. a
            learnable parameter's constraint), checked too; or None.
        flags: the kernel's constexprs for these checks, ``(CHECK_X, CHECK_STATE,
            HAS_EXTRA)`` (part of the launch's cache key).
    """

    flag: torch.Tensor
    x: bool
    state: bool
    extra: torch.Tensor | None
    flags: tuple[bool, bool, bool]

    @staticmethod
    def of(flag: torch.Tensor, x: bool, state: bool, extra: torch.Tensor | None) -> FiniteCheck:
        """The checks, with their constexprs."""
        return FiniteCheck(flag, x, state, extra, (x, state, extra is not None))


def adex_scan_fwd(x: torch.Tensor, state0: torch.Tensor, packed_params: torch.Tensor, spec,
                  plan, t0_step: int = 0, lengths: torch.Tensor | None = None,
                  check: FiniteCheck | None = None) -> ForwardOutputs:  # fmt: skip
    """Launch the forward scan.

    Args:
        x: ``[T, *S]`` contiguous input current (mA), fp32/bf16/fp16.
        state0: ``[C, *S]`` contiguous fp32 state before ``x[0]`` (rows: V in mV, w in mA
            if ``spec.has_w``, last-spike time in ms if ``spec.has_ref``, synaptic current
            in mA if ``spec.has_syn``).
        packed_params: ``[N_PARAMS, N]`` fp32 with ``N`` dividing ``prod(S)``.
        spec: the ``adex.spec.ScanSpec`` (model flags, dt, tau_ref, spike dtype).
        plan: its ``Plan`` for this call (which sequences to write).
        t0_step: global step index of ``x[0]`` (step k runs at ``t = float(k) * dt``).
        lengths: ``[S[0]]`` int32 steps each sample runs (1..T), or None (all T): from step
            ``lengths[b]`` on, sample b holds its state (V, w, I and the sequences repeat its
            last values) and writes zero spikes.
        check: the finiteness checks to run in the same pass, or None.

    Returns:
        :class:`ForwardOutputs`.
    """
    T = x.shape[0]
    M = x.numel() // T if T else 0
    grid, fixed = _fixed_args(spec, plan, M, packed_params.shape[1], x.device,
                              None if check is None else check.flags)  # fmt: skip
    spike_dtype = spec.spike_dtype  # (None: x's; empty_like without a dtype costs less)
    spikes = torch.empty_like(x) if spike_dtype is None else torch.empty_like(x, dtype=spike_dtype)
    state = torch.empty_like(state0)  # fp32 [C, *S], contiguous
    args = dict(fixed, x_ptr=x, state0_ptr=state0, par_ptr=packed_params, spk_ptr=spikes,
                state_ptr=state, T=T)  # fmt: skip
    v_seq = w_seq = i_seq = ref_bits = checkpoints = None
    if plan.stores_more:  # the optional outputs; an absent one is the kernel's default (None)
        v_seq, w_seq, i_seq, ref_bits, checkpoints = _optional_outputs(x, state0.shape[0], plan,
                                                                       args)  # fmt: skip
    if t0_step:
        args["k0"] = t0_step
    if lengths is not None:
        args.update(len_ptr=lengths, SPS=M // lengths.shape[0], HAS_LEN=True)
    if check is not None:
        args["flag_ptr"] = check.flag
        if check.extra is not None:
            args["extra_ptr"] = check.extra
    # kernel[grid](...) without its proxy lambda (see adex.kernels.launch)
    _adex_scan_fwd_kernel.run(grid=grid, warmup=False, **args)
    return ForwardOutputs(spikes, state, v_seq, w_seq, ref_bits, checkpoints, i_seq)


def _optional_outputs(x: torch.Tensor, C: int, plan, args: dict) -> tuple:
    """The per-step V, w and I, the refractory flags and the checkpoints that ``plan``
    writes (None where it writes none), each also entered in ``args``."""
    T, S = x.shape[0], x.shape[1:]
    # fp32 [T, *S] sequences, contiguous like x (empty_like costs the host less than empty)
    seq_dtype = None if x.dtype == torch.float32 else torch.float32
    v_seq = w_seq = i_seq = ref_bits = checkpoints = None
    if plan.store_v:
        v_seq = args["vseq_ptr"] = torch.empty_like(x, dtype=seq_dtype)
    if plan.store_w:
        w_seq = args["wseq_ptr"] = torch.empty_like(x, dtype=seq_dtype)
    if plan.store_i:
        i_seq = args["isq_ptr"] = torch.empty_like(x, dtype=seq_dtype)
    if plan.store_ref:  # 1 bit per neuron-step
        ref_bits = args["ref_ptr"] = torch.empty(((T + 7) // 8, *S), dtype=torch.uint8,
                                                 device=x.device)  # fmt: skip
    K = plan.checkpoint_every
    if K:
        checkpoints = args["ckpt_ptr"] = torch.empty((-(-T // K), C, *S), dtype=torch.float32,
                                                     device=x.device)  # fmt: skip
    return v_seq, w_seq, i_seq, ref_bits, checkpoints


def _fixed_args(spec, plan, M: int, N: int, device: torch.device,
                check_flags: tuple[bool, bool, bool] | None) -> tuple[tuple[int], dict]:  # fmt: skip
    """The grid of a launch over ``M`` neurons x batch with ``N``-wide parameter rows, and
    its keyword arguments that the spec, plan, geometry and checks fix (scalars, constexpr
    flags, launch options), less the kernel's defaults; computed once per plan and key
    (again for a plan that comes with another spec than its own)."""
    key = ("scan_fwd", M, N, device, check_flags, *launch_settings())
    cache = plan.launch
    cached = None if cache is None else cache.get(key)
    if cached is not None and cached[0] is spec:
        return cached[1], cached[2]
    block, num_warps, programs = block_config(M, device)
    scalars = spec.kernel_scalars
    check = {} if check_flags is None else dict(zip(CHECK_FLAGS, check_flags, strict=True))
    args = without_defaults(_adex_scan_fwd_kernel, dict(
        M=M, N=N, BLOCK=block, num_warps=num_warps, NUM_STAGES=pipeline_stages(device),
        dt=scalars["dt"], ceiling=scalars["ceiling"], tau_ref=scalars["tau_ref"],
        K=max(plan.checkpoint_every, 1), **plan.fwd_flags, **check, enable_fp_fusion=FP_FUSION,
    ))  # fmt: skip
    if cache is not None:  # (K follows the flags: CHECKPOINT is one of them)
        remember(cache, key, (spec, (programs,), args))
    return (programs,), args
