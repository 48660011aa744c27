"""The fused CPU backend's entry point :func:`cpu_scan` (``backend='cpu'``) and its
``autograd.Function``: the numba forward kernel, and the numba backward kernel as its
backward. Inputs are cast to the storage dtype (float64 when x or the state is, else
float32) before the Function, so autograd casts their gradients back."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from adex.cpu.launch import CpuForward, cpu_scan_bwd, cpu_scan_fwd
from adex.params import AdExParams, PackedParams, per_neuron_grads
from adex.spec import Plan, ScanOutput, ScanSpec


def cpu_scan(x: Tensor, state0: Tensor, params: AdExParams | Callable[[], AdExParams],
             spec: ScanSpec, *, t0_step: int = 0,
             packed: Tensor | PackedParams | None = None,
             lengths: Tensor | None = None) -> ScanOutput:  # fmt: skip
    """Run the scan on the fused CPU kernels.

    Args:
        x: ``[T, *S]`` input current (mA) on the CPU, any float dtype (computed with
            float32 storage, or float64 when x or ``state0`` is float64).
        state0: ``[C, *S]`` state before ``x[0]`` (see :class:`adex.spec.ScanOutput`; the
            synaptic current I is its last row with ``spec.has_syn``).
        params: the parameters, or a zero-argument callable returning them (called only when
            ``packed`` cannot be used: float64, or none given).
        spec: the validated scan description.
        t0_step: global step index of ``x[0]``.
        packed: ``params.packed(...)`` (float32, differentiable where parameters are), or a
            layer's :class:`PackedParams`; used for float32 storage only.
        lengths: ``[S[0]]`` int32 steps each sample runs (validated by the caller), or None:
            from step ``lengths[b]`` on, sample b holds its state, returns zero spikes and
            passes no gradient.

    Returns:
        :class:`ScanOutput`: spikes in the spec's spike dtype (default x's), the state and
        the sequences (V, w, I) in the storage dtype.
    """
    if x.device.type != "cpu" or state0.device.type != "cpu":
        raise ValueError(f"backend='cpu' takes CPU tensors, got x on {x.device}")
    dtype = torch.float64 if torch.float64 in (x.dtype, state0.dtype) else torch.float32
    values = _packed_values(params, packed, dtype, x.numel() // x.shape[0])
    grad_on = torch.is_grad_enabled()
    param_grad = grad_on and values.requires_grad
    needs_grad = param_grad or (grad_on and (x.requires_grad or state0.requires_grad))
    plan = spec.plan(needs_grad, param_grad)
    xs = x.to(dtype).contiguous()
    s0 = state0.to(dtype).contiguous()
    if needs_grad:
        spikes, state, v_seq, w_seq, i_seq = CpuScan.apply(xs, s0, values, spec, plan,
                                                           t0_step, lengths)  # fmt: skip
    else:
        out = cpu_scan_fwd(xs, s0, values, spec, plan, t0_step, lengths)
        spikes, state, v_seq, w_seq, i_seq = (*out[:4], out.i_seq)
    out_dtype = x.dtype if spec.spike_dtype is None else spec.spike_dtype
    if spikes.dtype != out_dtype:
        spikes = spikes.to(out_dtype)
    if not spec.return_states:
        v_seq = w_seq = i_seq = None
    return ScanOutput(spikes, state, v_seq, w_seq, i_seq)


def _packed_values(params, packed, dtype: torch.dtype, M: int) -> Tensor:
    """The ``[11, N]`` parameters in ``dtype``, differentiable in the learnable ones."""
    if dtype == torch.float32 and packed is not None:
        if isinstance(packed, PackedParams):
            return packed.differentiable() if packed.learnable else packed.values
        return packed.contiguous()
    params = params() if callable(params) else params
    n = params.n_neurons()
    if M % n:
        raise ValueError(f"{n} neurons per sample do not divide the state size {M}")
    return params.packed(n, torch.device("cpu"), dtype=dtype)


class CpuScan(torch.autograd.Function):
    """The autograd node of the fused CPU scan. Inputs ``(x, state0, packed, spec, plan,
    t0_step, lengths)``, all float tensors contiguous in one storage dtype (``lengths``:
    int32 or None); outputs ``(spikes, state, v_seq or None, w_seq or None, i_seq or
    None)`` in that dtype."""

    @staticmethod
    def forward(ctx, x, state0, packed, spec: ScanSpec, plan: Plan, t0_step: int,
                lengths: Tensor | None):  # fmt: skip
        out = cpu_scan_fwd(x, state0, packed, spec, plan, t0_step, lengths)
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.plan, ctx.t0_step, ctx.T = spec, plan, t0_step, x.shape[0]
        keep_x = plan.checkpoint_every or plan.read_i
        ctx.save_for_backward(state0, packed, out.v_seq, out.w_seq, out.ref_bits,
                              out.checkpoints, x if keep_x else None, out.i_seq,
                              lengths)  # fmt: skip
        return out.spikes, out.state, out.v_seq, out.w_seq, out.i_seq

    @staticmethod
    def backward(ctx, g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq):
        state0, packed, v_seq, w_seq, ref_bits, ckpt, x, i_seq, lengths = ctx.saved_tensors
        saved = CpuForward(None, None, v_seq, w_seq, ref_bits, ckpt, i_seq)
        needs = ctx.needs_input_grad
        grads = tuple(None if g is None or g.numel() == 0 else g
                      for g in (g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq))  # fmt: skip
        grad_x, grad_s0, grad_par = cpu_scan_bwd(saved, state0, x, packed, ctx.spec, ctx.plan,
                                                 grads, ctx.T, ctx.t0_step,
                                                 (needs[0], needs[1]), lengths)  # fmt: skip
        grad_packed = None
        if needs[2] and grad_par is not None:
            grad_packed = per_neuron_grads(grad_par, packed.shape[1], ctx.spec.param_mask)
        return grad_x, grad_s0, grad_packed, None, None, None, None
