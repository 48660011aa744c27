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
) -> _FwdOut:
    """Fused forward scan; see ``adex.kernels.adex_scan_fwd``. ``surrogate_*`` and
    ``detach_reset`` are only read by the backward; ``tau_ref < 0`` means no refractory
    period (``last_spike_time`` is then ignored)."""
    has_ref = tau_ref >= 0
    return adex_scan_fwd(
        x, V0, w0, packed_params, dt, ceiling, hard_reset, has_w, has_exp, store_v, store_w,
        tau_ref if has_ref else None, last_spike_time if has_ref else None, t0_step,
    )  # fmt: skip


@scan_fwd.register_fake
def _(x, V0, w0, packed_params, dt, ceiling, surrogate_kind, surrogate_params, hard_reset,
      has_w, has_exp, store_v, store_w, last_spike_time=None, tau_ref=-1.0, t0_step=0,
      detach_reset=False):  # fmt: skip
    has_ref = tau_ref >= 0

    def f32(shape, present=True):
        return x.new_empty(shape if present else (0,), dtype=torch.float32)

    return (
        torch.empty_like(x),
        f32(x.shape, store_v),
        f32(x.shape, store_w),
        f32(x.shape[1:]),
        f32(x.shape[1:], has_w),
        x.new_empty(x.shape if has_ref and store_v else (0,), dtype=torch.uint8),
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward scan; see ``adex.kernels.adex_scan_bwd``."""
    return adex_scan_bwd(
        v_seq, V0, packed_params,
        grad_spikes, grad_v_seq, grad_w_seq, grad_v_last, grad_w_last,
        x_dtype, dt, ceiling, surrogate_kind, tuple(surrogate_params),
        hard_reset, has_w, has_exp, ref_mask, detach_reset, w_seq, w0, param_grad,
    )  # fmt: skip


@scan_bwd.register_fake
def _(v_seq, V0, packed_params, grad_spikes, grad_v_seq, grad_w_seq, grad_v_last,
      grad_w_last, x_dtype, dt, ceiling, surrogate_kind, surrogate_params, hard_reset,
      has_w, has_exp, ref_mask=None, detach_reset=False, w_seq=None, w0=None,
      param_grad=False):  # fmt: skip
    state = V0.new_empty(V0.shape, dtype=torch.float32)
    w_grad = V0.new_empty(V0.shape if has_w else (0,), dtype=torch.float32)
    par_grad = V0.new_empty((10, *V0.shape) if param_grad else (0,), dtype=torch.float32)
    return v_seq.new_empty(v_seq.shape, dtype=x_dtype), state, w_grad, par_grad


def _setup_context(ctx, inputs, output):
    (x, V0, w0, packed, dt, ceiling, kind, sg_params, hard, has_w, has_exp, store_v, _,
     _t_last, tau_ref, _t0, detach_reset) = _with_defaults(inputs)  # fmt: skip
    ctx.set_materialize_grads(False)
    # parameter gradients with w read w' (the tau_w term): the caller then stores w_seq
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
    defaults = (None, -1.0, 0, False)
    missing = 17 - len(inputs)
    return tuple(inputs) + defaults[len(defaults) - missing :] if missing else tuple(inputs)


def _present(grad: Tensor | None) -> Tensor | None:
    """An incoming gradient, contiguous, or None where it is absent or empty."""
    if grad is None or grad.numel() == 0:
        return None
    return grad.contiguous()


def _backward(ctx, g_spikes, g_v_seq, g_w_seq, g_v_last, g_w_last, _g_ref, _g_t_last):
    if not ctx.store_v:
        raise RuntimeError(
            "adex::scan_fwd ran without saving V (no input required grad at call time); "
            "cannot backpropagate through it"
        )
    v_seq, V0, packed, ref_mask, w_seq, w0 = ctx.saved_tensors
    need = ctx.needs_input_grad
    has_w = ctx.config["has_w"]
    param_grad = need[3]
    if param_grad and has_w and w_seq.numel() == 0:
        raise RuntimeError("parameter gradients with w need scan_fwd(store_w=True)")
    grad_x, grad_v0, grad_w0, grad_par = scan_bwd(
        v_seq, V0, packed,
        _present(g_spikes), _present(g_v_seq), _present(g_w_seq),
        _present(g_v_last), _present(g_w_last),
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
    ) + (None,) * 13


scan_fwd.register_autograd(_backward, setup_context=_setup_context)
