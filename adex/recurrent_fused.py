"""The fused backend of the recurrent scan: the recurrent launchers under an eager
``autograd.Function``, and the fallbacks where the fused kernels do not apply.

* N <= :data:`FUSED_MAX_NEURONS`, eager: one forward kernel over all T steps, and one
  backward kernel plus one matmul for the weight gradient (:class:`RecurrentScan`);
* the same while ``torch.compile`` traces, through the ``adex::recurrent_fwd`` /
  ``adex::recurrent_bwd`` custom ops (``adex.recurrent_ops``): one op pair per call;
* N above the limit: the step loop (``adex.recurrent_reference.recurrent_step_loop``) over
  the fused one-step scan and a matmul per step, with the same results (autograd
  differentiates it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from adex.fused import _present, eager_apply, fused_scan
from adex.kernels.recurrent_bwd import recurrent_scan_bwd
from adex.kernels.recurrent_fwd import recurrent_scan_fwd
from adex.params import PACKED_ROWS, AdExParams, PackedParams, per_neuron_grads
from adex.recurrent_reference import recurrent_step_loop
from adex.spec import Plan, ScanOutput, ScanSpec

FUSED_MAX_NEURONS = 256
"""Largest N that the fused recurrent kernels take. A program holds a tile of 16 samples by
``next_pow2(N)`` neurons in registers (the weight is streamed from L1/L2 in chunks, so the
limit does not depend on its size or dtype): at N = 256 that is 8 elements per thread at
16 warps, the most a 64K-register SM holds for the backward's state; the sm_90 static
figures are in ``benchmarks/NOTES.md``. Larger layers run the per-step fallback loop."""


def fused_recurrent_scan(x: Tensor, s0: Tensor, weight: Tensor, state0: Tensor,
                         params: AdExParams, spec: ScanSpec, *, t0_step: int = 0,
                         packed: Tensor | PackedParams | None = None) -> ScanOutput:  # fmt: skip
    """The recurrent scan on the fused kernels (or their fallback, see the module doc).

    Args:
        x: ``[T, *S]`` input current (mA), float32/bfloat16/float16, ``S = (B, N)`` or
            ``(N,)``.
        s0: ``[*S]`` spikes of the step before ``x[0]`` (0/1, any float dtype).
        weight: ``[N, N]`` recurrent weight (mA per spike).
        state0: ``[C, *S]`` fp32 state block before ``x[0]``.
        params, packed: the wrapped model's parameters and their packed form (a layer's
            :class:`~adex.params.PackedParams`, a ``[N_PARAMS, N]`` tensor, or None: packed
            here).
        spec: the wrapped model's ``ScanSpec`` (no checkpointing; ``return_states``: the
            per-step V and w are returned too).
        t0_step: global step index of ``x[0]``.

    Returns:
        ``adex.spec.ScanOutput`` ``(spikes [T, *S], state [C, *S], v_seq, w_seq, i_seq)``
        (the sequences ``[T, *S]`` with ``spec.return_states``, as far as the model has
        them, else None).
    """
    N = weight.shape[0]
    if N > FUSED_MAX_NEURONS:
        return recurrent_step_loop(x, s0, weight, state0, params, spec, t0_step=t0_step,
                                   packed=packed, scan=fused_scan)  # fmt: skip
    learnable, layer_packed = (), None
    if packed is None:
        packed = params.packed(params.n_neurons(), x.device)
    elif isinstance(packed, PackedParams):
        layer_packed, learnable, packed = packed, packed.learnable, packed.values
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
        param_grad = grad_on and packed.requires_grad
    needs_grad = param_grad or (grad_on and any(t.requires_grad for t in (x3, s3, weight, state3)))
    plan = spec.plan(needs_grad, param_grad)
    if torch.compiler.is_compiling():  # the custom ops: opaque to the compiler
        values = layer_packed.differentiable() if learnable else packed
        values = values.expand(values.shape[0], N).contiguous()
        out = torch.ops.adex.recurrent_fwd(x3, s3, weight, state3, values, spec.key,
                                           needs_grad, param_grad, t0_step)  # fmt: skip
        spikes, state, v_seq, w_seq, i_seq = (*out[:4], out[5])
    else:
        values = packed.expand(packed.shape[0], N).contiguous()  # scalars: a column per neuron
        if needs_grad:
            spikes, state, v_seq, w_seq, i_seq = eager_apply(
                RecurrentScan, x3, s3, weight, state3, values, spec, plan, t0_step,
                layer_packed, *learnable,
            )  # fmt: skip
        else:
            out = recurrent_scan_fwd(x3, state3, s3, weight, values, spec, plan, t0_step)
            spikes, state, v_seq, w_seq, i_seq = (*out[:4], out.i_seq)
    v_out = w_out = i_out = None
    if spec.return_states:
        v_out = v_seq.reshape(T, *S)
        w_out = w_seq.reshape(T, *S) if spec.has_w else None
        i_out = i_seq.reshape(T, *S) if spec.has_syn else None
    return ScanOutput(spikes.reshape(T, *S), state.reshape(state0.shape), v_out, w_out, i_out)


def spikes_from_v(v_seq: Tensor, packed: Tensor) -> Tensor:
    """The 0/1 fp32 spikes ``H((V - V_th) / (V_th - V_reset))`` of stored V ``[..., N]``
    (``packed`` ``[N_PARAMS, N]``), the forward kernel's test (theta > 0: the sign of
    V - V_th)."""
    v_th = packed[PACKED_ROWS["V_th"]]
    theta = v_th - packed[PACKED_ROWS["V_reset"]]
    return ((v_seq - v_th) / theta >= 0.0).to(torch.float32)


class RecurrentGrads(NamedTuple):
    """The gradients of :func:`recurrent_backward` (None where not wanted).

    Attributes:
        x: ``[T, B, N]`` gradient of the input current, in x's dtype.
        s0: ``[B, N]`` fp32 gradient of the carried spikes before the scan.
        weight: ``[N, N]`` fp32 gradient of the recurrent weight.
        state0: ``[C, B, N]`` fp32 gradient of the initial state.
        params: ``[N_PARAMS, B, N]`` fp32 per-element parameter gradients (``plan.param_grad``).
    """

    x: Tensor | None
    s0: Tensor | None
    weight: Tensor | None
    state0: Tensor | None
    params: Tensor | None


def recurrent_backward(spec: ScanSpec, plan: Plan, saved: tuple, grads: tuple,
                       wants: tuple[bool, bool, bool, bool], x_dtype: torch.dtype,
                       ) -> RecurrentGrads:  # fmt: skip
    """The backward of the fused recurrent scan: one kernel and one matmul.

    Args:
        spec, plan: the forward's ``ScanSpec`` and ``Plan``.
        saved: ``(s0 [B, N], weight [N, N], state0 [C, B, N], packed [N_PARAMS, N],
            v_seq [T, B, N], w_seq, ref_bits, i_seq, u_seq)`` from the forward (None where
            the plan stored none).
        grads: the incoming ``(g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq)``, each None
            (or empty) where absent.
        wants: which of ``(x, s0, weight, state0)`` need a gradient.
        x_dtype: dtype of the returned x gradient.

    Returns:
        :class:`RecurrentGrads`.
    """
    if not plan.needs_grad:
        raise RuntimeError(
            "the fused recurrent scan ran without saving V (nothing required grad at call "
            "time); cannot backpropagate through it"
        )
    s0, weight, state0, packed, v_seq, w_seq, ref_bits, i_seq, u_seq = saved
    g_spikes, g_state, g_v, g_w, g_i = (_present(g) for g in grads)
    want_x, want_s0, want_weight, want_state0 = wants
    out = recurrent_scan_bwd(v_seq, w_seq, ref_bits, state0, weight, packed, spec, plan,
                             g_spikes, g_state, want_state0, want_s0, grad_v_seq=g_v,
                             grad_w_seq=g_w if spec.has_w else None, i_seq=i_seq,
                             u_seq=u_seq, grad_i_seq=g_i if spec.has_syn else None)  # fmt: skip
    grad_x = out.grad_current.to(x_dtype) if want_x else None
    grad_weight = None
    if want_weight:  # sum_t lambda_I(t)^T s(t-1): one matmul over [T * B, N]
        N = weight.shape[0]
        s_prev = torch.cat([s0.unsqueeze(0), spikes_from_v(v_seq[:-1], packed)])
        grad_weight = out.grad_current.reshape(-1, N).t() @ s_prev.reshape(-1, N)
    return RecurrentGrads(grad_x, out.grad_s0, grad_weight, out.grad_state0, out.grad_params)


class RecurrentScan(torch.autograd.Function):
    """The eager autograd node of the fused recurrent scan. Inputs ``(x [T, B, N],
    s0 [B, N], weight [N, N], state0 [C, B, N], packed [N_PARAMS, N], spec, plan, t0_step,
    layer_packed, *learnable)`` (all fp32 but x, contiguous); outputs ``(spikes, state,
    v_seq, w_seq, i_seq)`` (the sequences None where the plan stores none). ``layer_packed`` is a
    layer's ``PackedParams`` whose learnable tensors (after it) receive their gradients
    directly, or None (then ``packed`` itself may require grad)."""

    @staticmethod
    def forward(ctx, x, s0, weight, state0, packed, spec: ScanSpec, plan: Plan, t0_step: int,
                layer_packed: PackedParams | None, *learnable):  # fmt: skip
        out = recurrent_scan_fwd(x, state0, s0, weight, packed, spec, plan, t0_step)
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.plan, ctx.x_dtype, ctx.layer_packed = spec, plan, x.dtype, layer_packed
        # the learnable tensors too, unread: autograd's version check (see FusedScan)
        ctx.save_for_backward(s0, weight, state0, packed, out.v_seq, out.w_seq, out.ref_bits,
                              out.i_seq, out.u_seq, *learnable)  # fmt: skip
        return out.spikes, out.state, out.v_seq, out.w_seq, out.i_seq

    @staticmethod
    def backward(ctx, g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq):
        needs = ctx.needs_input_grad
        layer_packed = ctx.layer_packed
        learn_grad = layer_packed is not None and any(needs[9:])
        saved = ctx.saved_tensors[:9]
        out = recurrent_backward(ctx.spec, ctx.plan, saved,
                                 (g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq),
                                 (needs[0], needs[1], needs[2], needs[3]), ctx.x_dtype)  # fmt: skip
        grad_packed = None
        if needs[4]:
            grad_packed = per_neuron_grads(out.params, saved[3].shape[1], ctx.spec.param_mask)
        grads = (out.x, out.s0, out.weight, out.state0, grad_packed, None, None, None, None)
        if layer_packed is not None:
            n_learn = len(needs[9:])
            learn = layer_packed.grads(out.params) if learn_grad else (None,) * n_learn
            grads += tuple(g if need else None for g, need in zip(learn, needs[9:], strict=True))
        return grads
