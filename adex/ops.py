"""The fused kernels as opaque ``torch.library`` custom ops, with autograd on top.

``adex::scan_fwd`` and ``adex::scan_bwd`` wrap the Triton launchers; both have fake
(meta) implementations so ``torch.compile`` traces through them without a graph break, and
``scan_fwd`` differentiates through ``scan_bwd``. Only ``ctx`` bookkeeping lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adex.kernels import adex_scan_bwd, adex_scan_fwd

_FwdOut = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("adex::scan_fwd", mutates_args=())
def scan_fwd(
    x: Tensor,
    V0: Tensor,
    w0: Tensor,
    packed_params: Tensor,
    dt: float,
    ceiling: float,
    surrogate_kind: int,
    surrogate_params: list[float],
    hard_reset: bool,
    has_w: bool,
    has_exp: bool,
    store_v: bool,
    store_w: bool,
    last_spike_time: Tensor | None = None,
    tau_ref: float = -1.0,
    t0_step: int = 0,
    detach_reset: bool = False,
    spike_dtype: torch.dtype | None = None,
    checkpoint_every: int = 0,
) -> _FwdOut:
    """Fused forward scan; see ``adex.kernels.adex_scan_fwd``. ``surrogate_*`` and
    ``detach_reset`` are only read by the backward; ``tau_ref < 0`` means no refractory
    period (``last_spike_time`` is then ignored). With ``checkpoint_every`` > 0 the second
    output holds the state checkpoints and the backward keeps ``x`` to recompute."""
    has_ref = tau_ref >= 0
    return adex_scan_fwd(
        x, V0, w0, packed_params, dt, ceiling, hard_reset, has_w, has_exp, store_v, store_w,
        tau_ref if has_ref else None, last_spike_time if has_ref else None, t0_step,
        spike_dtype, checkpoint_every,
    )  # fmt: skip


@scan_fwd.register_fake
def _(x, V0, w0, packed_params, dt, ceiling, surrogate_kind, surrogate_params, hard_reset,
      has_w, has_exp, store_v, store_w, last_spike_time=None, tau_ref=-1.0, t0_step=0,
      detach_reset=False, spike_dtype=None, checkpoint_every=0):  # fmt: skip
    has_ref = tau_ref >= 0

    def f32(shape, present=True):
        return x.new_empty(shape if present else (0,), dtype=torch.float32)

    if checkpoint_every > 0:
        n_seg = -(-x.shape[0] // checkpoint_every)
        v_out = f32((n_seg, 1 + has_w + has_ref, *x.shape[1:]))
    else:
        v_out = f32(x.shape, store_v)
    return (
        torch.empty_like(x, dtype=x.dtype if spike_dtype is None else spike_dtype),
        v_out,
        f32(x.shape, store_w),
        f32(x.shape[1:]),
        f32(x.shape[1:], has_w),
        x.new_empty(
            ((x.shape[0] + 7) // 8, *x.shape[1:]) if has_ref and store_v else (0,),
            dtype=torch.uint8,
        ),
        f32(x.shape[1:], has_ref),
    )


@torch.library.custom_op("adex::scan_bwd", mutates_args=())
def scan_bwd(
    v_seq: Tensor,
    V0: Tensor,
    packed_params: Tensor,
    grad_spikes: Tensor | None,
    grad_v_seq: Tensor | None,
    grad_w_seq: Tensor | None,
    grad_v_last: Tensor | None,
    grad_w_last: Tensor | None,
    x_dtype: torch.dtype,
    dt: float,
    ceiling: float,
    surrogate_kind: int,
    surrogate_params: list[float],
    hard_reset: bool,
    has_w: bool,
    has_exp: bool,
    ref_mask: Tensor | None = None,
    detach_reset: bool = False,
    w_seq: Tensor | None = None,
    w0: Tensor | None = None,
    param_grad: bool = False,
    x: Tensor | None = None,
    checkpoint_every: int = 0,
    tau_ref: float = -1.0,
    t0_step: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward scan; see ``adex.kernels.adex_scan_bwd`` (``tau_ref < 0``: none)."""
    return adex_scan_bwd(
        v_seq, V0, packed_params,
        grad_spikes, grad_v_seq, grad_w_seq, grad_v_last, grad_w_last,
        x_dtype, dt, ceiling, surrogate_kind, tuple(surrogate_params),
        hard_reset, has_w, has_exp, ref_mask, detach_reset, w_seq, w0, param_grad,
        x, checkpoint_every, tau_ref if tau_ref >= 0 else None, t0_step,
    )  # fmt: skip


@scan_bwd.register_fake
def _(v_seq, V0, packed_params, grad_spikes, grad_v_seq, grad_w_seq, grad_v_last,
      grad_w_last, x_dtype, dt, ceiling, surrogate_kind, surrogate_params, hard_reset,
      has_w, has_exp, ref_mask=None, detach_reset=False, w_seq=None, w0=None,
      param_grad=False, x=None, checkpoint_every=0, tau_ref=-1.0, t0_step=0):  # fmt: skip
    state = V0.new_empty(V0.shape, dtype=torch.float32)
    w_grad = V0.new_empty(V0.shape if has_w else (0,), dtype=torch.float32)
    par_grad = V0.new_empty((10, *V0.shape) if param_grad else (0,), dtype=torch.float32)
    seq_shape = x.shape if checkpoint_every > 0 else v_seq.shape
    return V0.new_empty(seq_shape, dtype=x_dtype), state, w_grad, par_grad


def _setup_context(ctx, inputs, output):
    (x, V0, w0, packed, dt, ceiling, kind, sg_params, hard, has_w, has_exp, store_v, _,
     _t_last, tau_ref, t0_step, detach_reset, _, checkpoint_every) = _with_defaults(
        inputs)  # fmt: skip
    ctx.set_materialize_grads(False)
    ctx.checkpoint_every = checkpoint_every
    ctx.tau_ref = tau_ref
    ctx.t0_step = t0_step
    if checkpoint_every > 0:  # the checkpoints, and x to recompute from them
        ctx.mark_non_differentiable(output[1])  # internal state, not a per-step output
        ctx.save_for_backward(output[1], V0, packed, x)
    else:  # parameter gradients with w read w' (the tau_w term): the caller stores w_seq
        ctx.save_for_backward(output[1], V0, packed, output[5], output[2], w0)
    ctx.store_v = store_v
    ctx.has_ref = tau_ref >= 0
    ctx.config = dict(
        x_dtype=x.dtype, dt=dt, ceiling=ceiling, surrogate_kind=kind,
        surrogate_params=list(sg_params), hard_reset=hard, has_w=has_w, has_exp=has_exp,
        detach_reset=detach_reset,
    )  # fmt: skip


def _with_defaults(inputs: tuple) -> tuple:
    """``scan_fwd``'s inputs with its trailing defaults filled in."""
    defaults = (None, -1.0, 0, False, None, 0)
    missing = 19 - len(inputs)
    return tuple(inputs) + defaults[len(defaults) - missing :] if missing else tuple(inputs)


def _present(grad: Tensor | None) -> Tensor | None:
    """An incoming gradient, contiguous, or None where it is absent or empty."""
    if grad is None or grad.numel() == 0:
        return None
    return grad.contiguous()


def _backward(ctx, g_spikes, g_v_seq, g_w_seq, g_v_last, g_w_last, _g_ref, _g_t_last):
    recompute = ctx.checkpoint_every > 0
    if not (ctx.store_v or recompute):
        raise RuntimeError(
            "adex::scan_fwd ran without saving V (no input required grad at call time); "
            "cannot backpropagate through it"
        )
    need = ctx.needs_input_grad
    has_w = ctx.config["has_w"]
    param_grad = need[3]
    grads = (_present(g_spikes), _present(g_v_seq), _present(g_w_seq), _present(g_v_last),
             _present(g_w_last))  # fmt: skip
    if recompute:  # no per-step V/w outputs: their gradient slots hold the checkpoints'
        checkpoints, V0, packed, x = ctx.saved_tensors
        grads = (grads[0], None, None, grads[3], grads[4])
        grad_x, grad_v0, grad_w0, grad_par = scan_bwd(
            checkpoints, V0, packed, *grads, param_grad=param_grad, x=x,
            checkpoint_every=ctx.checkpoint_every, tau_ref=ctx.tau_ref, t0_step=ctx.t0_step,
            **ctx.config,
        )  # fmt: skip
    else:
        v_seq, V0, packed, ref_mask, w_seq, w0 = ctx.saved_tensors
        if param_grad and has_w and w_seq.numel() == 0:
            raise RuntimeError("parameter gradients with w need scan_fwd(store_w=True)")
        grad_x, grad_v0, grad_w0, grad_par = scan_bwd(
            v_seq, V0, packed, *grads,
            ref_mask=ref_mask if ctx.has_ref else None,
            w_seq=w_seq if param_grad and has_w else None,
            w0=w0 if param_grad and has_w else None,
            param_grad=param_grad,
            **ctx.config,
        )  # fmt: skip
    grad_packed = None
    if param_grad:  # per-element [10, *S] -> per-neuron [10, N], summed over the batch
        grad_packed = grad_par.reshape(10, -1, packed.shape[1]).sum(1)
    return (
        grad_x if need[0] else None,
        grad_v0 if need[1] else None,
        grad_w0 if need[2] and has_w else None,
        grad_packed,
    ) + (None,) * 15


scan_fwd.register_autograd(_backward, setup_context=_setup_context)
