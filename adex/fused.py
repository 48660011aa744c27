"""The fused backend: the Triton launchers under autograd, on the shortest path per call.

* eager, no gradient needed: the forward launcher, nothing else;
* eager, with a gradient: :class:`FusedScan`, an ``autograd.Function`` over the launchers;
* while ``torch.compile`` traces: the ``adex::scan_fwd`` / ``adex::scan_bwd`` custom ops
  (``adex.ops``), which the compiler sees through.

Both autograd paths save the same tensors and run the same :func:`fused_backward`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from adex.kernels.scan_bwd import SavedForBackward, adex_scan_bwd
from adex.kernels.scan_fwd import FiniteCheck, adex_scan_fwd
from adex.params import AdExParams, PackedParams, per_neuron_grads
from adex.spec import Plan, ScanOutput, ScanSpec
from adex.step_rows import per_step_or_row


def fused_scan(
    x: Tensor,
    state0: Tensor,
    params: AdExParams,
    spec: ScanSpec,
    *,
    t0_step: int = 0,
    packed: Tensor | PackedParams | None = None,
    lengths: Tensor | None = None,
    check: FiniteCheck | None = None,
) -> ScanOutput:
    """Run the scan on the fused kernels.

    Args:
        x: ``[T, *S]`` input current (mA), float32/bfloat16/float16.
        state0: ``[C, *S]`` fp32 state before ``x[0]`` (see :class:`ScanOutput`).
        params: the parameters (packed here unless ``packed`` is given).
        spec: the validated scan description.
        t0_step: global step index of ``x[0]`` (read by the Ref models).
        packed: ``params.packed(...)`` on x's device, precomputed (differentiable where
            parameters are), or a layer's :class:`PackedParams`.
        lengths: ``[S[0]]`` int32 steps each sample runs (validated by the caller), or None.
        check: finiteness checks for the forward kernel to run (eager calls only; the
            caller reads the flag), or None.

    Returns:
        :class:`ScanOutput`.
    """
    learnable, layer_packed = (), None
    if packed is None:
        packed = params.packed(params.n_neurons(), x.device)
    elif isinstance(packed, PackedParams):
        layer_packed, learnable, packed = packed, packed.learnable, packed.values
    x = x.contiguous()
    state0 = state0.contiguous()
    through_ops = _through_ops()
    needs_grad = param_grad = False
    if torch.is_grad_enabled():  # (without: the launcher itself, no autograd bookkeeping)
        if learnable:
            # (the C getter where torch.compile does not trace: it cannot trace attrgetter)
            needs = (
                (p.requires_grad for p in learnable)
                if through_ops
                else map(_REQUIRES_GRAD, learnable)
            )
            param_grad = any(needs)
        else:
            param_grad = packed.requires_grad
        needs_grad = param_grad or x.requires_grad or state0.requires_grad
    plan = spec.plan(needs_grad, param_grad)
    if through_ops:
        if check is not None:  # (eager calls routed through the ops: their kernels do not check)
            from adex.functional import _check_finite  # (functional imports this module)

            _check_finite(x, state0, spec, check.state, check.extra)
        values = layer_packed.differentiable() if learnable else packed
        out = torch.ops.adex.scan_fwd(x, state0, values, spec.key, needs_grad, param_grad,
                                      t0_step, lengths)  # fmt: skip
        states = spec.return_states
        return ScanOutput(out[0], out[1], out[2] if states else None,
                          out[3] if states and spec.has_w else None,
                          out[6] if states and spec.has_syn else None)  # fmt: skip
    if needs_grad:
        call = _Call(spec, plan, lengths, t0_step, layer_packed, x.dtype, x.shape[0], check)
        out = eager_apply(FusedScan, x, state0, packed, call, *learnable)
        if not spec.return_states:
            return ScanOutput(out[0], out[1], None, None, None)
        return ScanOutput(*out)
    out = adex_scan_fwd(x, state0, packed, spec, plan, t0_step, lengths=lengths, check=check)
    if not spec.return_states:
        return ScanOutput(out.spikes, out.state, None, None, None)
    return ScanOutput(out.spikes, out.state, out.v_seq, out.w_seq, out.i_seq)


_REQUIRES_GRAD = operator.attrgetter("requires_grad")


def _direct_apply(function: type[torch.autograd.Function]) -> Callable | None:
    """``function``'s C entry of ``apply`` (``torch._C._FunctionBase.apply`` bound to it),
    or None where this torch lacks it."""
    entry = getattr(torch._C, "_FunctionBase", None)
    entry = None if entry is None else entry.__dict__.get("apply")
    return None if entry is None else entry.__get__(None, function)


_DIRECT: dict[type, Callable | bool] = {}


def eager_apply(function: type[torch.autograd.Function], x: Tensor, *args):
    """``function.apply(x, *args)`` for adex's own Functions (no ``setup_context``, ``x``
    the one tensor from outside), less the Python wrapper's per-call work where no functorch
    transform is active: that wrapper binds default arguments (there are none), and unwraps
    tensors left over from a finished ``torch.func`` transform, of which only ``x`` can be
    one (the state and parameters are the layer's): it is unwrapped here. Under a transform
    (or without the C entry), the full ``apply``."""
    direct = _DIRECT.get(function)
    if direct is None:  # (False: this torch has no C entry)
        direct = _DIRECT[function] = _direct_apply(function) or False
    if direct is False or torch._C._are_functorch_transforms_active():
        return function.apply(x, *args)
    return direct(torch._C._functorch.unwrap_if_dead(x), *args)


def _through_ops() -> bool:
    """Whether a call goes through the registered custom ops: while ``torch.compile``
    traces (they are opaque to it); eager calls take the shorter path."""
    return torch.compiler.is_compiling()


class _Call(NamedTuple):
    """What a :class:`FusedScan` call carries besides its tensors (one argument, so that
    autograd's per-argument work is done once)."""

    spec: ScanSpec
    plan: Plan
    lengths: Tensor | None  # [S[0]] int32 sample lengths, or None
    t0_step: int
    layer_packed: PackedParams | None
    x_dtype: torch.dtype
    T: int
    check: FiniteCheck | None  # the forward kernel's finiteness checks


class FusedScan(torch.autograd.Function):
    """The eager autograd node of the fused scan: forward and backward launchers, no
    custom-op dispatch. Inputs ``(x, state0, packed, call, *learnable)`` (``call``: a
    :class:`_Call`): ``packed`` ``[N_PARAMS, N]`` (differentiable for functional callers),
    or a layer's ``PackedParams`` as ``call.layer_packed`` with its learnable tensors after
    ``call``, which receive their gradients directly. Outputs ``(spikes, state)``, and with
    ``spec.return_states`` also ``(v_seq, w_seq or None, i_seq or None)``."""

    @staticmethod
    def forward(ctx, x, state0, packed, call: _Call, *learnable):
        spec, plan = call.spec, call.plan
        out = adex_scan_fwd(x, state0, packed, spec, plan, call.t0_step,
                            lengths=call.lengths, check=call.check)  # fmt: skip
        ctx.set_materialize_grads(False)
        ctx.call = call
        # the learnable tensors too, unread: autograd's version check then refuses a backward
        # after they changed in place (an optimizer step), as for any saved weight, where
        # ``packed`` is the layer's buffer that holds them (see SpikingNeuron._share_learnable)
        ctx.save_for_backward(state0, packed, out.v_seq, out.w_seq, out.ref_bits,
                              out.checkpoints, x if plan.checkpoint_every or plan.read_i else None,
                              out.i_seq, *learnable)  # fmt: skip
        if spec.return_states:
            return out.spikes, out.state, out.v_seq, out.w_seq, out.i_seq
        return out.spikes, out.state

    @staticmethod
    def backward(ctx, g_spikes, g_state, g_v_seq=None, g_w_seq=None, g_i_seq=None):
        state0, packed, v_seq, w_seq, ref_bits, checkpoints, x, i_seq = ctx.saved_tensors[:8]
        saved = SavedForBackward(state0, v_seq, w_seq, ref_bits, checkpoints, x, i_seq)
        needs = ctx.needs_input_grad
        call = ctx.call
        layer_packed = call.layer_packed
        learn_grad = layer_packed is not None and any(needs[4:])
        out_grads = (g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq)
        grad_x, grad_state0, grad_elements = fused_backward(
            call.spec, call.plan, saved, packed, (needs[0], needs[1], needs[2] or learn_grad),
            call.x_dtype, call.T, call.t0_step, out_grads, adex_scan_bwd, call.lengths,
        )  # fmt: skip
        grad_packed = None
        if needs[2]:
            grad_packed = per_neuron_grads(grad_elements, packed.shape[1], call.spec.param_mask)
        grads = (grad_x, grad_state0, grad_packed, None)
        if layer_packed is not None:
            wanted = needs[4:]
            if not learn_grad:
                return grads + (None,) * len(wanted)
            learn = layer_packed.grads(grad_elements)
            if all(wanted):
                return grads + learn
            grads += tuple(g if need else None for g, need in zip(learn, wanted, strict=True))
        return grads


def fused_backward(spec: ScanSpec, plan: Plan, saved: SavedForBackward, packed: Tensor,
                   needs: tuple[bool, ...], x_dtype: torch.dtype, T: int, t0_step: int,
                   grads: tuple, launch,
                   lengths: Tensor | None = None) -> tuple[Tensor | None, ...]:  # fmt: skip
    """The gradients of ``(x, state0)`` and the per-element parameter gradients
    ``[N_PARAMS, *S]`` (None where ``needs`` says no) from those of the forward's outputs
    ``(spikes, state, v_seq, w_seq[, i_seq])`` (None or empty where absent), by ``launch``:
    ``adex.kernels.adex_scan_bwd``, or the ``adex::scan_bwd`` op while compiling (same
    signature and result)."""
    if not plan.needs_grad:
        raise RuntimeError(
            "the fused scan ran without saving V (no input required grad at call time); "
            "cannot backpropagate through it"
        )
    g_state, g_v_seq, g_w_seq = (_present(g) for g in grads[1:4])
    g_spikes = _present(per_step_or_row(grads[0]))  # [1, *S]: the same at every step
    extra = {}
    if spec.has_syn:  # the synaptic-current sequence's gradient
        extra["grad_i_seq"] = _present(grads[4]) if len(grads) > 4 else None
    grad_x, grad_state0, grad_par = launch(saved, packed, spec, plan, g_spikes, g_v_seq,
                                           g_w_seq, g_state, x_dtype, T, t0_step, needs[0],
                                           needs[1], lengths=lengths, **extra)  # fmt: skip
    return (grad_x if needs[0] else None, grad_state0 if needs[1] else None,
            grad_par if needs[2] else None)  # fmt: skip


def _present(grad: Tensor | None) -> Tensor | None:
    """An incoming gradient, contiguous, or None where it is absent or empty."""
    if grad is None or grad.numel() == 0:
        return None
    return grad.contiguous()
