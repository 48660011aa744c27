"""The fused backend: the Triton launchers under autograd, on the shortest path per call.

* eager, no gradient needed: the forward launcher, nothing else;
* eager, with a gradient: :class:`FusedScan`, an ``autograd.Function`` over the launchers;
* while ``torch.compile`` traces: the ``adex::scan_fwd`` / ``adex::scan_bwd`` custom ops
  (``adex.ops``), which the compiler sees through.

Both autograd paths save the same tensors and run the same :func:`fused_backward`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adex.kernels.scan_bwd import SavedForBackward, adex_scan_bwd
from adex.kernels.scan_fwd import adex_scan_fwd
from adex.params import AdExParams
from adex.spec import Plan, ScanOutput, ScanSpec


def fused_scan(x: Tensor, state0: Tensor, params: AdExParams, spec: ScanSpec, *,
               t0_step: int = 0, packed: Tensor | None = None) -> ScanOutput:  # fmt: skip
    """Run the scan on the fused kernels.

    Args:
        x: ``[T, *S]`` input current (mA), float32/bfloat16/float16.
        state0: ``[C, *S]`` fp32 state before ``x[0]`` (see :class:`ScanOutput`).
        params: the parameters (packed here unless ``packed`` is given).
        spec: the validated scan description.
        t0_step: global step index of ``x[0]`` (read by the Ref models).
        packed: ``params.packed(...)`` on x's device, precomputed (modules cache it).

    Returns:
        :class:`ScanOutput`.
    """
    if packed is None:
        packed = params.packed(params.n_neurons(), x.device)
    x = x.contiguous()
    state0 = state0.contiguous()
    grad_on = torch.is_grad_enabled()
    param_grad = grad_on and packed.requires_grad
    needs_grad = param_grad or (grad_on and (x.requires_grad or state0.requires_grad))
    plan = spec.plan(needs_grad, param_grad)
    if torch.compiler.is_compiling():
        out = torch.ops.adex.scan_fwd(x, state0, packed, spec.key, needs_grad, param_grad,
                                      t0_step)  # fmt: skip
        return ScanOutput(out[0], out[1], out[2] if spec.return_states else None,
                          out[3] if spec.return_states and spec.has_w else None)  # fmt: skip
    if needs_grad:
        spikes, state, v_seq, w_seq = FusedScan.apply(x, state0, packed, spec, plan, t0_step)
    else:  # the launcher itself: autograd's bookkeeping costs more than a short scan
        spikes, state, v_seq, w_seq = adex_scan_fwd(x, state0, packed, spec, plan, t0_step)[:4]
    if not spec.return_states:
        v_seq = w_seq = None
    return ScanOutput(spikes, state, v_seq, w_seq)


class FusedScan(torch.autograd.Function):
    """The eager autograd node of the fused scan: forward and backward launchers, no
    custom-op dispatch. Inputs ``(x, state0, packed, spec, plan, t0_step)``; outputs
    ``(spikes, state, v_seq or None, w_seq or None)``."""

    @staticmethod
    def forward(ctx, x, state0, packed, spec: ScanSpec, plan: Plan, t0_step: int):
        out = adex_scan_fwd(x, state0, packed, spec, plan, t0_step)
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.plan, ctx.t0_step = spec, plan, t0_step
        ctx.x_dtype, ctx.T = x.dtype, x.shape[0]
        ctx.save_for_backward(state0, packed, out.v_seq, out.w_seq, out.ref_bits,
                              out.checkpoints, x if plan.checkpoint_every else None)  # fmt: skip
        return out.spikes, out.state, out.v_seq, out.w_seq

    @staticmethod
    def backward(ctx, g_spikes, g_state, g_v_seq, g_w_seq):
        state0, packed, v_seq, w_seq, ref_bits, checkpoints, x = ctx.saved_tensors
        saved = SavedForBackward(state0, v_seq, w_seq, ref_bits, checkpoints, x)
        out_grads = (g_spikes, g_state, g_v_seq, g_w_seq)
        grads = fused_backward(ctx.spec, ctx.plan, saved, packed, ctx.needs_input_grad[:3],
                               ctx.x_dtype, ctx.T, ctx.t0_step, out_grads, adex_scan_bwd)  # fmt: skip
        return (*grads, None, None, None)


def fused_backward(spec: ScanSpec, plan: Plan, saved: SavedForBackward, packed: Tensor,
                   needs: tuple[bool, ...], x_dtype: torch.dtype, T: int, t0_step: int,
                   grads: tuple, launch) -> tuple[Tensor | None, ...]:  # fmt: skip
    """The gradients of ``(x, state0, packed)`` (None where ``needs`` says no) from those of
    the forward's outputs ``(spikes, state, v_seq, w_seq)`` (None or empty where absent),
    by ``launch``: ``adex.kernels.adex_scan_bwd``, or the ``adex::scan_bwd`` op while
    compiling (same signature and result)."""
    if not plan.needs_grad:
        raise RuntimeError(
            "the fused scan ran without saving V (no input required grad at call time); "
            "cannot backpropagate through it"
        )
    g_spikes, g_state, g_v_seq, g_w_seq = (_present(g) for g in grads)
    grad_x, grad_state0, grad_par = launch(saved, packed, spec, plan, g_spikes, g_v_seq,
                                           g_w_seq, g_state, x_dtype, T, t0_step)  # fmt: skip
    grad_packed = None
    if needs[2]:  # per-element [10, *S] -> per-neuron [10, N], summed over the batch
        grad_packed = grad_par.reshape(10, -1, packed.shape[1]).sum(1)
    return (grad_x if needs[0] else None, grad_state0 if needs[1] else None, grad_packed)


def _present(grad: Tensor | None) -> Tensor | None:
    """An incoming gradient, contiguous, or None where it is absent or empty."""
    if grad is None or grad.numel() == 0:
        return None
    return grad.contiguous()
