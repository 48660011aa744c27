"""The reference backend as one opaque ``torch.library`` custom op while ``torch.compile``
traces, so that compiling a model on CPU neither unrolls the T-step Python loop (compile
time would grow with T) nor breaks the graph.

``adex::reference_scan`` runs the eager reference (:func:`adex.reference.reference_scan`,
unchanged) and saves only its inputs; its backward, ``adex::reference_scan_bwd``, re-runs the
reference under ``torch.func.vjp`` and returns the input gradients. The reference's own
arithmetic runs in both, so a compiled model gives the eager model's values; the backward
costs one more forward (the op is a whole-scan checkpoint: memory O(input), not O(T*state)
of saved graph). Eager calls do not come here (the reference runs directly).

Parameters cross the op boundary as the tensors that require grad (learnable ones), the
other tensors (per-neuron fixed buffers), their names, and the scalars as floats, so that
the reference sees exactly the values an eager call gives it. A synaptic current travels
in the state block (``spec`` says so) and its ``tau_syn`` with the parameters; its
sequence is a fifth output. ``lengths`` is an optional input (None when absent).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from adex.params import AdExParams
from adex.reference import reference_scan
from adex.spec import ScanOutput, ScanSpec

_OpOut = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def reference_backend(x: Tensor, state0: Tensor, params: AdExParams, spec: ScanSpec, *,
                      t0_step: int = 0, packed=None,
                      lengths: Tensor | None = None) -> ScanOutput:  # fmt: skip
    """The reference backend (``adex.functional.SCAN_BACKENDS['reference']``): the eager
    reference, or while ``torch.compile`` traces the ``adex::reference_scan`` op (which
    carries the synaptic current and ``lengths`` too)."""
    if not torch.compiler.is_compiling():
        extra = {} if lengths is None else {"lengths": lengths}
        return reference_scan(x, state0, params, spec, t0_step=t0_step, packed=packed,
                              **extra)  # fmt: skip
    grad_names, grad_tensors, const_names, const_tensors = [], [], [], []
    scalar_names, scalars = [], []
    for name, value in params.items():
        if not isinstance(value, Tensor):
            scalar_names.append(name)
            scalars.append(float(value))
            continue
        if value.requires_grad:
            grad_names.append(name)
            grad_tensors.append(value)
        else:
            const_names.append(name)
            const_tensors.append(value)
    names = ";".join(",".join(part) for part in (grad_names, const_names, scalar_names))
    spikes, state, v_seq, w_seq, i_seq = torch.ops.adex.reference_scan(
        x, state0, grad_tensors, const_tensors, names, scalars, spec.key, t0_step, lengths
    )  # fmt: skip
    states = spec.return_states
    return ScanOutput(spikes, state, v_seq if states else None,
                      w_seq if states and spec.has_w else None,
                      i_seq if states and spec.has_syn else None)  # fmt: skip


def _params(grad_tensors, const_tensors, names: str, scalars) -> AdExParams:
    grad_names, const_names, scalar_names = (
        part.split(",") if part else [] for part in names.split(";")
    )
    values = dict(zip(scalar_names, scalars, strict=True))
    values.update(zip(grad_names, grad_tensors, strict=True))
    values.update(zip(const_names, const_tensors, strict=True))
    return AdExParams.trusted(values)


def _spec(key: str) -> ScanSpec:
    """The call's spec without the checkpoint interval: the op saves its inputs only and
    recomputes the whole scan in backward (a checkpoint of the full length)."""
    spec = ScanSpec.from_key(key)
    return dataclasses.replace(spec, checkpoint_every=None) if spec.checkpoint_every else spec


def _run(x, state0, grad_tensors, const_tensors, names, scalars, spec, t0_step, lengths):
    params = _params(grad_tensors, const_tensors, names, scalars)
    extra = {} if lengths is None else {"lengths": lengths}
    out = reference_scan(x, state0, params, spec, t0_step=t0_step, **extra)
    seqs = (out.v_seq, out.w_seq, out.i_seq)
    # distinct empty tensors for absent sequences (op outputs may not alias each other)
    return (out.spikes, out.state,
            *(x.new_empty(0, dtype=out.state.dtype) if t is None else t for t in seqs))  # fmt: skip


@torch.library.custom_op("adex::reference_scan", mutates_args=())
def reference_scan_op(x: Tensor, state0: Tensor, grad_tensors: list[Tensor],
                      const_tensors: list[Tensor], names: str, scalars: list[float],
                      spec: str, t0_step: int,
                      lengths: Tensor | None) -> _OpOut:  # fmt: skip
    """The eager reference scan: ``(spikes, state, v_seq, w_seq, i_seq)``, the sequences
    empty unless ``spec`` (a ``ScanSpec.key``) returns states (and has w, a synapse);
    ``lengths``: ``[S[0]]`` integer steps per sample, or None (no default: see
    ``adex::scan_fwd``)."""
    with torch.no_grad():
        return _run(x, state0, grad_tensors, const_tensors, names, scalars, _spec(spec),
                    t0_step, lengths)  # fmt: skip


def _out_shapes(x: Tensor, state0: Tensor, s: ScanSpec):
    compute = torch.float64 if torch.float64 in (x.dtype, state0.dtype) else torch.float32
    spike_dtype = x.dtype if s.spike_dtype is None else s.spike_dtype
    seq = tuple(x.shape) if s.return_states else (0,)
    return compute, spike_dtype, seq, seq if s.has_w else (0,), seq if s.has_syn else (0,)


@reference_scan_op.register_fake
def _(x, state0, grad_tensors, const_tensors, names, scalars, spec, t0_step, lengths):
    compute, spike_dtype, *seqs = _out_shapes(x, state0, ScanSpec.from_key(spec))
    return (torch.empty_like(x, dtype=spike_dtype), state0.new_empty(state0.shape, dtype=compute),
            *(x.new_empty(shape, dtype=compute) for shape in seqs))  # fmt: skip


@torch.library.custom_op("adex::reference_scan_bwd", mutates_args=())
def reference_scan_bwd(x: Tensor, state0: Tensor, grad_tensors: list[Tensor],
                       const_tensors: list[Tensor], names: str, scalars: list[float],
                       spec: str, t0_step: int, grads: list[Tensor],
                       lengths: Tensor | None = None
                       ) -> tuple[Tensor, Tensor, list[Tensor]]:  # fmt: skip
    """The gradients of ``(x, state0, grad_tensors)`` from those of the forward's outputs
    ``grads`` (``(spikes, state, v_seq, w_seq, i_seq)``, zeros where unused), by re-running
    the reference under ``torch.func.vjp`` (with the forward's ``lengths``)."""
    s = _spec(spec)
    float_spikes = s.spike_dtype is None or s.spike_dtype.is_floating_point

    def forward(x_, state0_, *learn):
        out = _run(x_, state0_, list(learn), const_tensors, names, scalars, s, t0_step,
                   lengths)  # fmt: skip
        return out if float_spikes else out[1:]

    with torch.enable_grad():
        _, vjp = torch.func.vjp(forward, x, state0, *grad_tensors)
        cotangents = tuple(grads) if float_spikes else tuple(grads[1:])
        grad_x, grad_state0, *grad_learn = vjp(cotangents)
    return grad_x, grad_state0, [g.contiguous() for g in grad_learn]


@reference_scan_bwd.register_fake
def _(x, state0, grad_tensors, const_tensors, names, scalars, spec, t0_step, grads,
      lengths=None):  # fmt: skip
    return (
        torch.empty_like(x),
        torch.empty_like(state0),
        [torch.empty_like(t) for t in grad_tensors],
    )


def _setup_context(ctx, inputs, output):
    x, state0, grad_tensors, const_tensors, names, scalars, spec, t0_step, lengths = inputs
    ctx.save_for_backward(x, state0, lengths, *grad_tensors, *const_tensors)
    ctx.n_grad = len(grad_tensors)
    ctx.names, ctx.scalars, ctx.spec, ctx.t0_step = names, scalars, spec, t0_step


def _backward(ctx, g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq):
    x, state0, lengths, *tensors = ctx.saved_tensors
    grad_tensors, const_tensors = tensors[: ctx.n_grad], tensors[ctx.n_grad :]
    grad_x, grad_state0, grad_learn = reference_scan_bwd(
        x, state0, grad_tensors, const_tensors, ctx.names, ctx.scalars, ctx.spec, ctx.t0_step,
        [g_spikes, g_state, g_v_seq, g_w_seq, g_i_seq], lengths,
    )  # fmt: skip
    no_grads = [None] * len(const_tensors)
    return grad_x, grad_state0, grad_learn, no_grads, None, None, None, None, None


reference_scan_op.register_autograd(_backward, setup_context=_setup_context)
