"""The fused backend of the recurrent scan: the recurrent launchers under an eager
``autograd.Function``, and the fallbacks where the fused kernels do not apply.

* N <= :data:`FUSED_MAX_NEURONS`, eager: one forward kernel over all T steps, and one
  backward kernel plus one matmul for the weight gradient (:class:`RecurrentScan`);
* N above it, or while ``torch.compile`` traces: the step loop
  (``adex.recurrent_reference.recurrent_step_loop``) over the fused one-step scan and a
  matmul per step, with the same results (autograd differentiates it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adex.fused import _present, fused_scan, per_neuron
from adex.kernels.recurrent_bwd import recurrent_scan_bwd
from adex.kernels.recurrent_fwd import recurrent_scan_fwd
from adex.params import PACKED_ROWS, AdExParams, PackedParams
from adex.recurrent_reference import recurrent_step_loop
from adex.spec import Plan, ScanSpec

FUSED_MAX_NEURONS = 256
"""Largest N that the fused recurrent kernels take. A program holds a tile of 16 samples by
``next_pow2(N)`` neurons in registers (the weight is streamed from L1/L2 in chunks, so the
limit does not depend on its size or dtype): at N = 256 that is 8 elements per thread at
16 warps, the most a 64K-register SM holds for the backward's state; the sm_90 static
figures are in ``benchmarks/NOTES.md``. Larger layers run the per-step fallback loop."""


def fused_recurrent_scan(x: Tensor, s0: Tensor, weight: Tensor, state0: Tensor,
                         params: AdExParams, spec: ScanSpec, *, t0_step: int = 0,
                         packed: Tensor | PackedParams | None = None,
                         ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The recurrent scan on the fused kernels (or their fallback, see the module doc).

    Args:
        x: ``[T, *S]`` input current (mA), float32/bfloat16/float16, ``S = (B, N)`` or
            ``(N,)``.
        s0: ``[*S]`` spikes of the step before ``x[0]`` (0/1, any float dtype).
        weight: ``[N, N]`` recurrent weight (mA per spike).
        state0: ``[C, *S]`` fp32 state block before ``x[0]``.
        params, packed: the wrapped model's parameters and their packed form (a layer's
            :class:`~adex.params.PackedParams`, a ``[10, N]`` tensor, or None: packed here).
        spec: the wrapped model's ``ScanSpec`` (no checkpointing, no ``return_states``).
        t0_step: global step index of ``x[0]``.

    Returns:
        ``(spikes [T, *S], state [C, *S])``.
    """
    N = weight.shape[0]
    if N > FUSED_MAX_NEURONS or torch.compiler.is_compiling():
        return recurrent_step_loop(x, s0, weight, state0, params, spec, t0_step=t0_step,
                                   packed=packed, scan=fused_scan)  # fmt: skip
    learnable, layer_packed = (), None
    if packed is None:
        packed = params.packed(params.n_neurons(), x.device)
    elif isinstance(packed, PackedParams):
        layer_packed, learnable, packed = packed, packed.learnable, packed.values
    values = packed.expand(packed.shape[0], N).contiguous()  # scalars: one column per neuron
    S = x.shape[1:]
    T, B = x.shape[0], x[0].numel() // N
    x3 = x.reshape(T, B, N).contiguous()
    s3 = s0.reshape(B, N).to(torch.float32).contiguous()
    state3 = state0.reshape(state0.shape[0], B, N).contiguous()
    weight = weight.to(torch.float32).contiguous()
    grad_on = torch.is_grad_enabled()
    if learnable:
        param_grad = grad_on and any(p.requires_grad for p in learnable)
    else:
        param_grad = grad_on and values.requires_grad
    needs_grad = param_grad or (grad_on and any(t.requires_grad for t in (x3, s3, weight, state3)))
    plan = spec.plan(needs_grad, param_grad)
    if needs_grad:
        spikes, state = RecurrentScan.apply(x3, s3, weight, state3, values, spec, plan,
                                            t0_step, layer_packed, *learnable)  # fmt: skip
    else:
        spikes, state = recurrent_scan_fwd(x3, state3, s3, weight, values, spec, plan,
                                           t0_step)[:2]  # fmt: skip
    return spikes.reshape(T, *S), state.reshape(state0.shape)


def spikes_from_v(v_seq: Tensor, packed: Tensor) -> Tensor:
    """The 0/1 fp32 spikes ``H((V - V_th) / (V_th - V_reset))`` of stored V ``[..., N]``
    (``packed`` ``[10, N]``), the forward kernel's test (theta > 0: the sign of V - V_th)."""
    v_th = packed[PACKED_ROWS["V_th"]]
    theta = v_th - packed[PACKED_ROWS["V_reset"]]
    return ((v_seq - v_th) / theta >= 0.0).to(torch.float32)


class RecurrentScan(torch.autograd.Function):
    """The eager autograd node of the fused recurrent scan. Inputs ``(x [T, B, N],
    s0 [B, N], weight [N, N], state0 [C, B, N], packed [10, N], spec, plan, t0_step,
    layer_packed, *learnable)`` (all fp32 but x, contiguous); outputs ``(spikes, state)``.
    ``layer_packed`` is a layer's ``PackedParams`` whose learnable tensors (after it)
    receive their gradients directly, or None (then ``packed`` itself may require grad)."""

    @staticmethod
    def forward(ctx, x, s0, weight, state0, packed, spec: ScanSpec, plan: Plan, t0_step: int,
                layer_packed: PackedParams | None, *learnable):  # fmt: skip
        out = recurrent_scan_fwd(x, state0, s0, weight, packed, spec, plan, t0_step)
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.plan, ctx.x_dtype, ctx.layer_packed = spec, plan, x.dtype, layer_packed
        ctx.save_for_backward(s0, weight, state0, packed, out.v_seq, out.w_seq, out.ref_bits)
        return out.spikes, out.state

    @staticmethod
    def backward(ctx, g_spikes, g_state):
        s0, weight, state0, packed, v_seq, w_seq, ref_bits = ctx.saved_tensors
        needs = ctx.needs_input_grad
        layer_packed = ctx.layer_packed
        learn_grad = layer_packed is not None and any(needs[9:])
        out = recurrent_scan_bwd(v_seq, w_seq, ref_bits, state0, weight, packed, ctx.spec,
                                 ctx.plan, _present(g_spikes), _present(g_state), needs[3],
                                 needs[1])  # fmt: skip
        grad_x = out.grad_current.to(ctx.x_dtype) if needs[0] else None
        grad_weight = None
        if needs[2]:  # sum_t lambda_I(t)^T s(t-1): one matmul over [T * B, N]
            N = weight.shape[0]
            s_prev = torch.cat([s0.unsqueeze(0), spikes_from_v(v_seq[:-1], packed)])
            grad_weight = out.grad_current.reshape(-1, N).t() @ s_prev.reshape(-1, N)
        grad_packed = None
        if needs[4]:
            grad_packed = per_neuron(out.grad_params, packed.shape[1])
        grads = (grad_x, out.grad_s0, grad_weight, out.grad_state0, grad_packed,
                 None, None, None, None)  # fmt: skip
        if layer_packed is not None:
            n_learn = len(needs[9:])
            learn = layer_packed.grads(out.grad_params) if learn_grad else (None,) * n_learn
            grads += tuple(g if need else None for g, need in zip(learn, needs[9:], strict=True))
        return grads
