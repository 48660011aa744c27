"""Forward time scan of a recurrent layer: all T steps in one kernel, the recurrent input
``s_{t-1} @ weight.T`` of each step computed by ``tl.dot`` from the previous step's spikes.

A program holds ``BLOCK_B`` samples of the batch and all N neurons of each (a
``[BLOCK_B, BLOCK_N]`` tile, ``BLOCK_N = next_pow2(N)``; ``kernels/recurrent_tile.py``).
The step itself is the feed-forward kernels' device function
(``adex.kernels.step.integrate_step``) on the tile; parameters are per-neuron rows
``[BLOCK_N]`` that broadcast over the batch rows. The spikes of each step are also written
as fp32 to a ``[B, N]`` buffer, from which the next step's product reads them back in
``BLOCK_K``-wide chunks, against the matching chunk of the weight (4 N^2 bytes, the same
for every step and program: it stays in L1/L2); neither operand is held whole in registers.

Precision: the spikes are exactly 0/1 and the weight fp32; the product uses
``tl.dot(..., input_precision="ieee")``: fp32 products and fp32 accumulation (no tf32), so
the recurrent input equals an fp32 matmul up to the order of the additions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from adex.kernels.device_math import exprel, load_params
from adex.kernels.recurrent_tile import tile_matmul, tile_offsets
from adex.kernels.step import integrate_step, store_flag_bit, synapse_step

# Bytes per neuron-step (fp32 input): read x (4), write the spike (4), write V (4) when a
# gradient is needed, as the feed-forward scan; nothing is saved for the recurrent part.
# On chip per step: the spike buffer written (4 B per neuron) and read back, and the weight
# (4 N^2 B per program-step, from L1/L2).


@triton.jit(do_not_specialize=["T", "k0"])
def _recurrent_fwd_kernel(
    x_ptr,  # [T, B, N] input current (mA), fp32/bf16/fp16
    state0_ptr,  # [C, B, N] fp32 state before x[0]: V (mV), w (mA), last-spike time (ms)
    sbuf_ptr,  # [B, N] fp32 in/out: the spikes of the step before x[0] (0/1), then of
    # each step in turn (the recurrent product reads them back in chunks)
    weight_ptr,  # [N, N] fp32 recurrent weight (mA per spike), weight[i, j]: j -> i
    par_ptr,  # [11, N] fp32 packed parameters
    spk_ptr,  # [T, B, N] out: spikes (float, uint8 or bool)
    state_ptr,  # [C, B, N] out: fp32 state after the last step
    vseq_ptr,  # [T, B, N] out: fp32 V after each step (STORE_V), else None
    wseq_ptr,  # [T, B, N] out: fp32 w after each step (STORE_W), else None
    ref_ptr,  # [cdiv(T, 8), B, N] out: uint8 refractory bits (STORE_REF), else None
    T, B, N,  # steps (runtime: no recompile per T), batch, neurons
    dt, ceiling,  # ms; adex.params.RUNAWAY_CEILING
    k0, tau_ref,  # global step index of x[0]; refractory period, ms (HAS_REF)
    HARD_RESET: tl.constexpr, HAS_W: tl.constexpr, HAS_EXP: tl.constexpr,
    HAS_REF: tl.constexpr,
    STORE_V: tl.constexpr, STORE_W: tl.constexpr, STORE_REF: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    isq_ptr=None,  # [T, B, N] out: fp32 synaptic current after each step (STORE_I), else None
    usq_ptr=None,  # [T, B, N] out: fp32 total input x_t + s_{t-1} @ weight.T (STORE_U)
    HAS_SYN: tl.constexpr = False,  # the synapse filters the total input (state row I)
    STORE_I: tl.constexpr = False, STORE_U: tl.constexpr = False,
):  # fmt: skip
    M = tl.cast(B, tl.int64) * N  # elements per step
    o_m, m, o_b, o_n, m_n = tile_offsets(tl.program_id(0), B, N, BLOCK_B, BLOCK_N)
    dt = tl.cast(dt, tl.float32)
    (b_R, b_tau, b_tau_w, b_vth, b_vreset, b_vrest, b_vT, b_dT, b_a, b_b) = load_params(
        par_ptr, o_n, m_n, N
    )
    b_theta = b_vth - b_vreset
    b_vcap = b_vth + tl.cast(ceiling, tl.float32) * b_theta
    b_cw = dt * exprel(-dt / b_tau_w) / b_tau_w  # = 1 - exp(-dt/tau_w)
    tau_ref = tl.cast(tau_ref, tl.float32)

    b_v = tl.load(state0_ptr + o_m, mask=m, other=0.0)
    b_w = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    if HAS_W:
        b_w = tl.load(state0_ptr + M + o_m, mask=m, other=0.0)
    b_tlast = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    if HAS_REF:
        b_tlast = tl.load(state0_ptr + (1 + HAS_W) * M + o_m, mask=m, other=0.0)
    if HAS_SYN:
        b_i = tl.load(state0_ptr + (1 + HAS_W + HAS_REF) * M + o_m, mask=m, other=0.0)
        b_ts = tl.load(par_ptr + 10 * tl.cast(N, tl.int64) + o_n, mask=m_n, other=1.0)
        b_cs = dt * exprel(-dt / b_ts) / b_ts  # = 1 - exp(-dt/tau_syn), [BLOCK_N]
    if STORE_I:
        p_i = isq_ptr + o_m
    if STORE_U:
        p_u = usq_ptr + o_m
    p_x = x_ptr + o_m
    p_s = spk_ptr + o_m
    if STORE_V:
        p_v = vseq_ptr + o_m
    if STORE_W:
        p_w = wseq_ptr + o_m
    if STORE_REF:
        p_r = ref_ptr + o_m
    b_bits = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.int32)
    for i in tl.range(0, T):
        b_x = tl.load(p_x, mask=m, other=0.0).to(tl.float32)
        # s_{t-1} @ weight.T: weight.T[k, n] = weight[n, k]
        b_x += tile_matmul(sbuf_ptr, weight_ptr, 1, N, o_b, B, N, BLOCK_B, BLOCK_N, BLOCK_K)
        if HAS_SYN:  # the membrane reads I_t, the filtered total input
            if STORE_U:
                tl.store(p_u, b_x, mask=m)
                p_u += M
            b_i = synapse_step(b_i, b_x, b_cs[None, :])
            b_x = b_i
            if STORE_I:
                tl.store(p_i, b_i, mask=m)
                p_i += M
        b_t = tl.cast(k0 + i, tl.float32) * dt
        b_v, b_w, b_tlast, b_ref = integrate_step(
            b_v, b_w, b_tlast, b_x, b_t, b_R, b_tau, b_vth, b_vreset, b_vrest, b_vT, b_dT,
            b_a, b_b, b_theta, b_vcap, b_cw, dt, tau_ref,
            HARD_RESET, HAS_W, HAS_EXP, HAS_REF,
        )  # fmt: skip
        b_s = tl.where(m & ((b_v - b_vth) / b_theta >= 0.0), 1.0, 0.0)  # 0 outside the tile
        tl.store(p_s, b_s.to(spk_ptr.dtype.element_ty), mask=m)
        tl.debug_barrier()  # every thread has read s_{t-1}
        tl.store(sbuf_ptr + o_m, b_s, mask=m)
        tl.debug_barrier()  # s_t visible to the whole program
        if STORE_REF:
            b_bits, p_r = store_flag_bit(p_r, b_bits, b_ref, i, T - 1, M, m)
        if STORE_V:
            tl.store(p_v, b_v, mask=m)
            p_v += M
        if STORE_W:
            tl.store(p_w, b_w, mask=m)
            p_w += M
        p_x += M
        p_s += M
    tl.store(state_ptr + o_m, b_v, mask=m)
    if HAS_W:
        tl.store(state_ptr + M + o_m, b_w, mask=m)
    if HAS_REF:
        tl.store(state_ptr + (1 + HAS_W) * M + o_m, b_tlast, mask=m)
    if HAS_SYN:
        tl.store(state_ptr + (1 + HAS_W + HAS_REF) * M + o_m, b_i, mask=m)


BLOCK_K = 32
"""Width of the chunks in which the recurrent product streams the weight (16 for N <= 16:
``tl.dot`` needs 16 at least)."""


class RecurrentForwardOutputs(NamedTuple):
    """What :func:`recurrent_scan_fwd` wrote (None where the plan wrote nothing).

    Attributes:
        spikes: ``[T, B, N]`` 0/1 spikes in the spec's spike dtype (default: x's).
        state: ``[C, B, N]`` fp32 state after the last step.
        v_seq: ``[T, B, N]`` fp32 stored (pre-reset) V of every step (``plan.store_v``).
        w_seq: ``[T, B, N]`` fp32 w of every step (``plan.store_w``).
        ref_bits: ``[cdiv(T, 8), B, N]`` uint8 refractory flags (``plan.store_ref``).
        i_seq: ``[T, B, N]`` fp32 synaptic current I of every step (``plan.store_i``).
        u_seq: ``[T, B, N]`` fp32 total input ``x_t + s_{t-1} @ weight.T`` of every step,
            which the synapse filters (``plan.read_i``: the tau_syn gradient reads it).
    """

    spikes: torch.Tensor
    state: torch.Tensor
    v_seq: torch.Tensor | None
    w_seq: torch.Tensor | None
    ref_bits: torch.Tensor | None
    i_seq: torch.Tensor | None = None
    u_seq: torch.Tensor | None = None


def recurrent_config(batch: int, n: int, device: torch.device) -> tuple[int, int, int, int]:
    """``(BLOCK_B, BLOCK_N, num_warps, programs)`` of the recurrent kernels for ``batch``
    samples of ``n`` neurons. ``tl.dot`` needs tiles of at least 16 on each side: on a GPU
    16 samples per program (one MMA row block), under the interpreter the whole batch (up
    to 64) in as few programs as possible."""
    block_n = max(16, triton.next_power_of_2(n))
    if device.type == "cuda":
        block_b = 16
    else:
        block_b = min(64, max(16, triton.next_power_of_2(batch)))
    num_warps = max(4, min(16, block_b * block_n // 256))
    return block_b, block_n, num_warps, -(-batch // block_b)


def recurrent_scan_fwd(x: torch.Tensor, state0: torch.Tensor, s0: torch.Tensor,
                       weight: torch.Tensor, packed_params: torch.Tensor, spec, plan,
                       t0_step: int = 0) -> RecurrentForwardOutputs:  # fmt: skip
    """Launch the recurrent forward scan.

    Args:
        x: ``[T, B, N]`` contiguous input current (mA), fp32/bf16/fp16.
        state0: ``[C, B, N]`` contiguous fp32 state before ``x[0]``.
        s0: ``[B, N]`` contiguous fp32 spikes of the step before ``x[0]``.
        weight: ``[N, N]`` contiguous fp32 (mA per spike; ``weight[i, j]``: j -> i).
        packed_params: ``[11, N]`` contiguous fp32.
        spec, plan: the ``adex.spec.ScanSpec`` and its ``Plan`` (checkpointing excluded).
        t0_step: global step index of ``x[0]``.

    Returns:
        :class:`RecurrentForwardOutputs`.
    """
    T, B, N = x.shape
    device = x.device
    spikes = torch.empty_like(x, dtype=x.dtype if spec.spike_dtype is None else spec.spike_dtype)
    state = torch.empty_like(state0)
    v_seq = torch.empty(x.shape, dtype=torch.float32, device=device) if plan.store_v else None
    w_seq = torch.empty(x.shape, dtype=torch.float32, device=device) if plan.store_w else None
    i_seq = torch.empty(x.shape, dtype=torch.float32, device=device) if plan.store_i else None
    u_seq = torch.empty(x.shape, dtype=torch.float32, device=device) if plan.read_i else None
    ref_bits = None
    if plan.store_ref:
        ref_bits = torch.empty(((T + 7) // 8, B, N), dtype=torch.uint8, device=device)
    block_b, block_n, num_warps, programs = recurrent_config(B, N, device)
    scalars = spec.kernel_scalars
    flags = plan.fwd_flags
    _recurrent_fwd_kernel[(programs,)](
        x_ptr=x, state0_ptr=state0, sbuf_ptr=s0.clone(), weight_ptr=weight, par_ptr=packed_params,
        spk_ptr=spikes, state_ptr=state, vseq_ptr=v_seq, wseq_ptr=w_seq, ref_ptr=ref_bits,
        T=T, B=B, N=N, dt=scalars["dt"], ceiling=scalars["ceiling"], k0=t0_step,
        tau_ref=scalars["tau_ref"], HARD_RESET=flags["HARD_RESET"], HAS_W=flags["HAS_W"],
        HAS_EXP=flags["HAS_EXP"], HAS_REF=flags["HAS_REF"], STORE_V=flags["STORE_V"],
        STORE_W=flags["STORE_W"], STORE_REF=flags["STORE_REF"], **_synapse_args(flags, i_seq, u_seq),
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=min(block_n, BLOCK_K), num_warps=num_warps,
    )  # fmt: skip
    return RecurrentForwardOutputs(spikes, state, v_seq, w_seq, ref_bits, i_seq, u_seq)


def _synapse_args(flags: dict, i_seq: torch.Tensor | None, u_seq: torch.Tensor | None) -> dict:
    """The synapse's launch arguments: none without a synapse (the launch is then the
    same as before the synapse existed)."""
    if not flags["HAS_SYN"]:
        return {}
    return dict(isq_ptr=i_seq, usq_ptr=u_seq, HAS_SYN=True, STORE_I=i_seq is not None,
                STORE_U=u_seq is not None)  # fmt: skip
