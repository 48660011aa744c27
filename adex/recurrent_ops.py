"""The fused recurrent scan as opaque ``torch.library`` custom ops, for ``torch.compile``.

``adex::recurrent_fwd`` wraps the recurrent forward launcher and ``adex::recurrent_bwd`` the
whole recurrent backward (the kernel and the weight-gradient matmul,
:func:`adex.recurrent_fused.recurrent_backward`, which the eager path runs too); both have
fake implementations, and ``recurrent_fwd`` differentiates through ``recurrent_bwd``. So a
``fullgraph`` compile of a model with an ``adex.Recurrent`` traces one op pair for the whole
scan, not a loop of T one-step ops. The scan's settings travel as ``ScanSpec.key`` (as the
feed-forward ops carry them, ``adex.ops``); absent outputs are empty at this boundary only
(an op returns tensors), absent inputs are None.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adex.kernels.recurrent_fwd import recurrent_scan_fwd
from adex.ops import _or_empty, _or_none
from adex.params import grad_rows, per_neuron_grads
from adex.recurrent_fused import recurrent_backward
from adex.spec import ScanSpec

_FwdOut = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_BwdOut = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("adex::recurrent_fwd", mutates_args=())
def recurrent_fwd(x: Tensor, s0: Tensor, weight: Tensor, state0: Tensor, packed: Tensor,
                  spec: str, needs_grad: bool, param_grad: bool,
                  t0_step: int) -> _FwdOut:  # fmt: skip
    """Fused recurrent forward scan (``adex.kernels.recurrent_fwd.recurrent_scan_fwd``) of
    ``x [T, B, N]`` from the carried spikes ``s0 [B, N]`` and the state ``state0 [C, B, N]``
    with ``weight [N, N]`` and ``packed [N_PARAMS, N]`` (all fp32 but x, contiguous), under
    the plan of ``spec`` (a ``ScanSpec.key``) for ``needs_grad``/``param_grad``. Returns
    ``(spikes, state, v_seq, w_seq, ref_bits, i_seq, u_seq)``, empty where the plan writes
    none (``u_seq``: the total input the synapse filtered, for the tau_syn gradient)."""
    s = ScanSpec.from_key(spec)
    out = recurrent_scan_fwd(x, state0, s0, weight, packed, s, s.plan(needs_grad, param_grad),
                             t0_step)  # fmt: skip
    return (out.spikes, out.state, _or_empty(out.v_seq, x), _or_empty(out.w_seq, x),
            _or_empty(out.ref_bits, x, torch.uint8), _or_empty(out.i_seq, x),
            _or_empty(out.u_seq, x))  # fmt: skip


@recurrent_fwd.register_fake
def _(x, s0, weight, state0, packed, spec, needs_grad, param_grad, t0_step):
    s = ScanSpec.from_key(spec)
    plan = s.plan(needs_grad, param_grad)
    T, S = x.shape[0], x.shape[1:]

    def f32(shape, present):
        return x.new_empty(shape if present else (0,), dtype=torch.float32)

    return (
        torch.empty_like(x, dtype=x.dtype if s.spike_dtype is None else s.spike_dtype),
        f32(state0.shape, True),
        f32(x.shape, plan.store_v),
        f32(x.shape, plan.store_w),
        x.new_empty(((T + 7) // 8, *S) if plan.store_ref else (0,), dtype=torch.uint8),
        f32(x.shape, plan.store_i),
        f32(x.shape, plan.read_i),
    )


@torch.library.custom_op("adex::recurrent_bwd", mutates_args=())
def recurrent_bwd(
    s0: Tensor,
    weight: Tensor,
    state0: Tensor,
    packed: Tensor,
    v_seq: Tensor,
    w_seq: Tensor | None,
    ref_bits: Tensor | None,
    grad_spikes: Tensor | None,
    grad_state: Tensor | None,
    grad_v_seq: Tensor | None,
    grad_w_seq: Tensor | None,
    spec: str,
    needs_grad: bool,
    param_grad: bool,
    x_dtype: torch.dtype,
    want_x: bool,
    want_s0: bool,
    want_weight: bool,
    want_state0: bool,
    i_seq: Tensor | None = None,
    u_seq: Tensor | None = None,
    grad_i_seq: Tensor | None = None,
) -> _BwdOut:
    """The fused recurrent backward (:func:`adex.recurrent_fused.recurrent_backward`) from
    the forward's saved tensors and the incoming gradients (None where absent). Returns
    ``(grad_x, grad_s0, grad_weight, grad_state0, grad_params)``, each empty where not
    wanted (``grad_params`` ``[k, B, N]`` per element, the rows of the spec's ``param_mask``,
    without ``param_grad``)."""
    s = ScanSpec.from_key(spec)
    saved = (s0, weight, state0, packed, v_seq, w_seq, ref_bits, i_seq, u_seq)
    out = recurrent_backward(s, s.plan(needs_grad, param_grad), saved,
                             (grad_spikes, grad_state, grad_v_seq, grad_w_seq, grad_i_seq),
                             (want_x, want_s0, want_weight, want_state0), x_dtype)  # fmt: skip
    return (_or_empty(out.x, state0, x_dtype), _or_empty(out.s0, state0),
            _or_empty(out.weight, state0), _or_empty(out.state0, state0),
            _or_empty(out.params, state0))  # fmt: skip


@recurrent_bwd.register_fake
def _(s0, weight, state0, packed, v_seq, w_seq, ref_bits, grad_spikes, grad_state, grad_v_seq,
      grad_w_seq, spec, needs_grad, param_grad, x_dtype, want_x, want_s0, want_weight,
      want_state0, i_seq=None, u_seq=None, grad_i_seq=None):  # fmt: skip
    def f32(shape, present, dtype=torch.float32):
        return state0.new_empty(shape if present else (0,), dtype=dtype)

    return (
        f32(v_seq.shape, want_x, x_dtype),
        f32(s0.shape, want_s0),
        f32(weight.shape, want_weight),
        f32(state0.shape, want_state0),
        f32((len(grad_rows(ScanSpec.from_key(spec).param_mask)), *s0.shape), param_grad),
    )


def _setup_context(ctx, inputs, output):
    x, s0, weight, state0, packed, spec, needs_grad, param_grad, _ = inputs
    _, _, v_seq, w_seq, ref_bits, i_seq, u_seq = output
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(ref_bits, u_seq)
    ctx.spec, ctx.needs_grad, ctx.param_grad, ctx.x_dtype = spec, needs_grad, param_grad, x.dtype
    ctx.save_for_backward(s0, weight, state0, packed, v_seq, w_seq, ref_bits, i_seq, u_seq)


def _backward(ctx, g_spikes, g_state, g_v_seq, g_w_seq, _g_ref, g_i_seq, _g_u):
    s0, weight, state0, packed, v_seq, w_seq, ref_bits, i_seq, u_seq = ctx.saved_tensors
    want_x, want_s0, want_weight, want_state0, want_packed = ctx.needs_input_grad[:5]
    grad_x, grad_s0, grad_weight, grad_state0, grad_elements = recurrent_bwd(
        s0, weight, state0, packed, v_seq, _or_none(w_seq), _or_none(ref_bits), g_spikes,
        g_state, g_v_seq, g_w_seq, ctx.spec, ctx.needs_grad, ctx.param_grad, ctx.x_dtype,
        want_x, want_s0, want_weight, want_state0, _or_none(i_seq), _or_none(u_seq), g_i_seq,
    )  # fmt: skip
    grad_packed = None
    if want_packed and ctx.param_grad:
        grad_packed = per_neuron_grads(grad_elements, packed.shape[1],
                                       ScanSpec.from_key(ctx.spec).param_mask)  # fmt: skip
    return (grad_x if want_x else None, grad_s0 if want_s0 else None,
            grad_weight if want_weight else None, grad_state0 if want_state0 else None,
            grad_packed, None, None, None, None)  # fmt: skip


recurrent_fwd.register_autograd(_backward, setup_context=_setup_context)
