"""The fused kernels as opaque ``torch.library`` custom ops, for ``torch.compile``.

``adex::scan_fwd`` and ``adex::scan_bwd`` wrap the Triton launchers; both have fake (meta)
implementations so ``torch.compile`` traces through them without a graph break, and
``scan_fwd`` differentiates through ``scan_bwd`` with ``adex.fused.fused_backward``, the
backward the eager path runs too. The scan's settings travel as ``ScanSpec.key`` (a
string); absent outputs are empty at this boundary only (an op returns tensors), None
everywhere else; the optional inputs (``lengths``, the synaptic-current sequence and its
gradient) are None where absent. A synaptic current travels in the state block and the
packed parameters (``spec`` says it is there), its sequence as ``i_seq``; ``lengths`` (the
``[S[0]]`` int32 sample lengths) reaches both kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adex.fused import fused_backward
from adex.kernels.scan_bwd import SavedForBackward, adex_scan_bwd
from adex.kernels.scan_fwd import adex_scan_fwd
from adex.params import grad_rows, per_neuron_grads
from adex.spec import ScanSpec

_FwdOut = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _or_empty(t: Tensor | None, like: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A distinct empty tensor for an absent output (custom ops return no None, and
    outputs may not alias each other)."""
    return like.new_empty(0, dtype=dtype) if t is None else t


def _or_none(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 else t


@torch.library.custom_op("adex::scan_fwd", mutates_args=())
def scan_fwd(x: Tensor, state0: Tensor, packed: Tensor, spec: str, needs_grad: bool,
             param_grad: bool, t0_step: int, lengths: Tensor | None) -> _FwdOut:  # fmt: skip
    """Fused forward scan (``adex.kernels.adex_scan_fwd``) under the plan of ``spec`` (a
    ``ScanSpec.key``) for ``needs_grad``/``param_grad``; ``lengths``: ``[S[0]]`` int32
    steps per sample (1..T, validated by the caller) or None (an argument without a
    default: the dispatcher drops arguments equal to their default, and the backward's
    gradients must match the inputs actually passed). Returns ``(spikes, state,
    v_seq, w_seq, ref_bits, checkpoints, i_seq)``, empty where the plan writes none."""
    s = ScanSpec.from_key(spec)
    out = adex_scan_fwd(x, state0, packed, s, s.plan(needs_grad, param_grad), t0_step,
                        lengths=lengths)  # fmt: skip
    return (out.spikes, out.state, _or_empty(out.v_seq, x), _or_empty(out.w_seq, x),
            _or_empty(out.ref_bits, x, torch.uint8), _or_empty(out.checkpoints, x),
            _or_empty(out.i_seq, x))  # fmt: skip


@scan_fwd.register_fake
def _(x, state0, packed, spec, needs_grad, param_grad, t0_step, lengths):
    s = ScanSpec.from_key(spec)
    plan = s.plan(needs_grad, param_grad)
    T, S = x.shape[0], x.shape[1:]

    def f32(shape, present):
        return x.new_empty(shape if present else (0,), dtype=torch.float32)

    K = plan.checkpoint_every
    return (
        torch.empty_like(x, dtype=x.dtype if s.spike_dtype is None else s.spike_dtype),
        f32(state0.shape, True),
        f32(x.shape, plan.store_v),
        f32(x.shape, plan.store_w),
        x.new_empty(((T + 7) // 8, *S) if plan.store_ref else (0,), dtype=torch.uint8),
        f32((-(-T // K) if K else 0, s.n_state, *S), bool(K)),
        f32(x.shape, plan.store_i),
    )


@torch.library.custom_op("adex::scan_bwd", mutates_args=())
def scan_bwd(
    state0: Tensor,
    packed: Tensor,
    v_seq: Tensor | None,
    w_seq: Tensor | None,
    ref_bits: Tensor | None,
    checkpoints: Tensor | None,
    x: Tensor | None,
    grad_spikes: Tensor | None,
    grad_v_seq: Tensor | None,
    grad_w_seq: Tensor | None,
    grad_state: Tensor | None,
    spec: str,
    needs_grad: bool,
    param_grad: bool,
    x_dtype: torch.dtype,
    T: int,
    t0_step: int,
    want_x: bool,
    want_state0: bool,
    i_seq: Tensor | None = None,
    grad_i_seq: Tensor | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused backward scan (``adex.kernels.adex_scan_bwd``); ``lengths`` as the forward's.
    Returns ``(grad_x, grad_state0, grad_params)``, each empty where not wanted
    (``grad_params`` without ``param_grad``)."""
    s = ScanSpec.from_key(spec)
    saved = SavedForBackward(state0, v_seq, w_seq, ref_bits, checkpoints, x, i_seq)
    out = adex_scan_bwd(saved, packed, s, s.plan(needs_grad, param_grad), grad_spikes,
                        grad_v_seq, grad_w_seq, grad_state, x_dtype, T, t0_step, want_x,
                        want_state0, grad_i_seq, lengths=lengths)  # fmt: skip
    return (_or_empty(out.grad_x, state0, x_dtype), _or_empty(out.grad_state0, state0),
            _or_empty(out.grad_params, state0))  # fmt: skip


@scan_bwd.register_fake
def _(state0, packed, v_seq, w_seq, ref_bits, checkpoints, x, grad_spikes, grad_v_seq,
      grad_w_seq, grad_state, spec, needs_grad, param_grad, x_dtype, T, t0_step, want_x,
      want_state0, i_seq=None, grad_i_seq=None, lengths=None):  # fmt: skip
    S = state0.shape[1:]
    rows = len(grad_rows(ScanSpec.from_key(spec).param_mask))  # compact: the mask's rows
    grad_par = state0.new_empty((rows, *S) if param_grad else (0,), dtype=torch.float32)
    grad_x = state0.new_empty((T, *S) if want_x else (0,), dtype=x_dtype)
    grad_state0 = state0.new_empty(state0.shape if want_state0 else (0,), dtype=torch.float32)
    return grad_x, grad_state0, grad_par


def _setup_context(ctx, inputs, output):
    x, state0, packed, spec, needs_grad, param_grad, t0_step, lengths = inputs
    _, _, v_seq, w_seq, ref_bits, checkpoints, i_seq = output
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(ref_bits, checkpoints)
    ctx.spec, ctx.t0_step = spec, t0_step
    ctx.plan = ScanSpec.from_key(spec).plan(needs_grad, param_grad)
    ctx.x_dtype, ctx.T = x.dtype, x.shape[0]
    keep_x = ctx.plan.checkpoint_every or ctx.plan.read_i
    ctx.save_for_backward(state0, packed, v_seq, w_seq, ref_bits, checkpoints,
                          x if keep_x else None, i_seq, lengths)  # fmt: skip


def _launch_op(saved, packed, spec, plan, g_spikes, g_v_seq, g_w_seq, g_state, x_dtype, T,
               t0_step, want_x, want_state0, grad_i_seq=None, lengths=None):  # fmt: skip
    """``adex_scan_bwd``'s signature over the ``adex::scan_bwd`` op."""
    grad_x, grad_state0, grad_par = scan_bwd(
        saved.state0, packed, saved.v_seq, saved.w_seq, saved.ref_bits, saved.checkpoints,
        saved.x, g_spikes, g_v_seq, g_w_seq, g_state, spec.key, plan.needs_grad,
        plan.param_grad, x_dtype, T, t0_step, want_x, want_state0, saved.i_seq, grad_i_seq,
        lengths,
    )  # fmt: skip
    return (grad_x if want_x else None, grad_state0 if want_state0 else None,
            grad_par if plan.param_grad else None)  # fmt: skip


def _backward(ctx, g_spikes, g_state, g_v_seq, g_w_seq, _g_ref, _g_ckpt, g_i_seq):
    state0, packed, v_seq, w_seq, ref_bits, checkpoints, x, i_seq, lengths = ctx.saved_tensors
    saved = SavedForBackward(state0, _or_none(v_seq), _or_none(w_seq), _or_none(ref_bits),
                             _or_none(checkpoints), x, _or_none(i_seq))  # fmt: skip
    spec = ScanSpec.from_key(ctx.spec)
    grad_x, grad_state0, grad_elements = fused_backward(
        spec, ctx.plan, saved, packed, ctx.needs_input_grad[:3],
        ctx.x_dtype, ctx.T, ctx.t0_step, (g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq),
        _launch_op, lengths,
    )  # fmt: skip
    grad_packed = None
    if grad_elements is not None:
        grad_packed = per_neuron_grads(grad_elements, packed.shape[1], spec.param_mask)
    return grad_x, grad_state0, grad_packed, None, None, None, None, None


scan_fwd.register_autograd(_backward, setup_context=_setup_context)
