"""``adex.Recurrent``: a recurrent layer of any family model, the recurrent weights inside
the fused time scan."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from adex.functional import ExtraCheckError, _backend_for, _check_finite, _refuse_gradient
from adex.module import SpikingNeuron, StateSequence, SynStateSequence, batch_first_view
from adex.recurrent_reference import recurrent_checkpointed, recurrent_step_loop
from adex.spec import ScanOutput, ScanSpec
from adex.units import to_canonical

try:
    from adex.recurrent_fused import fused_recurrent_scan
    from adex.recurrent_ops import recurrent_fwd as _recurrent_fwd  # noqa: F401 (registers)
except ImportError:  # no Triton: the reference backend still works
    fused_recurrent_scan = None


class Recurrent(nn.Module):
    """A recurrent layer: ``neuron`` (any family module with a 1-D ``in_size`` N: AdExIF,
    AdExIFRef, ExpIF, ExpIFRef, LIF, AdLIF, AdLIFRef) whose spikes feed back through
    ``weight`` one step later.

    Over ``x`` ``[T, batch, N]`` (mA) the input current of step t is
    ``x_t + s_{t-1} @ weight.T``, where ``s_{-1}`` is the carried spike state (zeros after
    :meth:`init_state`, the last step's spikes after a call, so consecutive calls continue
    exactly; :meth:`detach_state` cuts the graph). The call equals the step loop
    ``s = neuron.update(x[t] + s @ weight.T)``: the same spikes, and gradients to x, the
    weight, the learnable parameters and the initial state (the surrogate gradient flows
    through ``s_{t-1}`` into the recurrent input). Everything else is the wrapped model's:
    parameters, state (``neuron.V``, ``neuron.w``, ...), units, surrogate, reset, backend.
    A neuron with a synapse (``tau_syn``) filters the whole input current: ``I_t = I_{t-1}
    + (1 - exp(-dt / tau_syn)) (x_t + s_{t-1} @ weight.T - I_{t-1})``, and the membrane
    reads ``I_t``.

    With ``backend='triton'`` (or ``'auto'`` on CUDA) the whole forward scan is one kernel
    (the recurrent input by ``tl.dot`` on the previous step's spikes, the weight streamed
    from L1/L2 in chunks, fp32 products and accumulation) and so is the backward, plus one
    matmul for the weight gradient; while ``torch.compile`` traces, the same kernels as the
    ``adex::recurrent_fwd`` / ``adex::recurrent_bwd`` custom ops (one op pair per call, no
    graph break). Above ``adex.recurrent_fused.FUSED_MAX_NEURONS`` neurons a per-step loop
    of the fused one-step scan and a matmul runs instead, with the same results.
    ``backend='reference'`` is the literal step loop over the reference step (the CPU path,
    float64 included). ``return_states`` returns the per-step V and w too, and the neuron's
    ``checkpoint_every`` runs the scan in checkpointed segments on either backend
    (:meth:`forward`). The input is time-first ``[T, batch, N]``, or ``[batch, T, N]``
    when the neuron has ``batch_first=True`` (the outputs then batch-first too).

    Args:
        neuron: the wrapped model (its ``in_size`` must be one int N).
        weight: initial ``[N, N]`` weight (mA per spike; ``weight[i, j]`` is the current into
            neuron i from a spike of neuron j one step earlier), or None:
            :meth:`reset_parameters` with ``init_scale``.
        init_scale: scale of the default initialization (mA, or a current quantity):
            ``weight ~ Normal(0, (init_scale / sqrt(N))^2)``, so that k simultaneous spikes
            of random neurons give a recurrent current of about ``init_scale * sqrt(k / N)``
            mA. Default 1 mA.

    Attributes:
        weight: ``nn.Parameter`` ``[N, N]`` float32 (mA per spike).
    """

    def __init__(self, neuron: SpikingNeuron, weight: Tensor | None = None,
                 init_scale: Any = 1.0):  # fmt: skip
        super().__init__()
        if not isinstance(neuron, SpikingNeuron):
            raise TypeError(
                f"neuron must be an adex model (AdExIF, ExpIF, LIF, ...), got {type(neuron)}"
            )
        if len(neuron.in_size) != 1:
            raise ValueError(
                f"Recurrent needs a neuron with a 1-D in_size N, got in_size {neuron.in_size}"
            )
        self.neuron = neuron
        n = neuron.in_size[0]
        scale = to_canonical(init_scale, "current", "init_scale")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
        ):
            raise ValueError(f"init_scale must be a finite current (mA), got {init_scale!r}")
        self.init_scale = float(scale)
        if weight is None:
            self.weight = nn.Parameter(torch.empty(n, n))
            self.reset_parameters()
        else:
            weight = torch.as_tensor(to_canonical(weight, "current", "weight"))
            self._check_weight(weight)
            self.weight = nn.Parameter(weight.detach().to(torch.float32).clone())
        self._spikes: Tensor | None = None

    @property
    def in_size(self) -> tuple[int]:
        """``(N,)``: the wrapped neuron's ``in_size``."""
        return self.neuron.in_size

    def reset_parameters(self) -> None:
        """Draw ``weight ~ Normal(0, (init_scale / sqrt(N))^2)`` (mA per spike)."""
        n = self.neuron.in_size[0]
        with torch.no_grad():
            self.weight.normal_(0.0, self.init_scale / math.sqrt(n))

    def _check_weight(self, weight: Tensor, device: torch.device | None = None) -> None:
        n = self.neuron.in_size[0]
        if not isinstance(weight, Tensor) or not weight.dtype.is_floating_point:
            raise TypeError(f"weight must be a floating-point tensor, got {weight!r}")
        if tuple(weight.shape) != (n, n):
            raise ValueError(f"weight must be [N, N] = [{n}, {n}], got {tuple(weight.shape)}")
        if device is not None and weight.device != device:
            raise ValueError(f"weight is on {weight.device} but x is on {device}")

    # -- state -------------------------------------------------------------------------------

    @property
    def spikes(self) -> Tensor | None:
        """The carried spikes ``s_{-1}`` of the next call (``[*state_shape]``, 0/1)."""
        return self._spikes

    def init_state(self, batch_size: int | None = None, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        """The wrapped neuron's :meth:`~adex.SpikingNeuron.init_state` and zero carried
        spikes, shaped ``(batch_size, N)`` (or ``(N,)``)."""
        self.neuron.init_state(batch_size, device=device, dtype=dtype)
        state = self.neuron._require_state(dtype)
        self._spikes = torch.zeros(state.shape[1:], dtype=torch.float32, device=state.device)

    def reset_state(self, batch_size: int | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        """Same as :meth:`init_state`."""
        self.init_state(batch_size, device=device, dtype=dtype)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._spikes is not None:  # the carried spikes follow the device, keep 0/1 dtype
            self._spikes = self._spikes.to(self.weight.device)
        return self

    def detach_state(self) -> None:
        """Cut the autograd graph of the carried state (the neuron's V, w and the carried
        spikes) from the calls before: truncated BPTT. The values are kept."""
        rt = self.neuron._rt
        if rt.state is not None:
            rt.state = rt.state.detach()
        elif rt.loose is not None:
            rt.loose = [None if r is None else r.detach() for r in rt.loose]
        if self._spikes is not None:
            self._spikes = self._spikes.detach()

    # -- dynamics ----------------------------------------------------------------------------

    def update(self, x: Any = 0.0) -> Tensor:
        """One step: the spikes ``[*state_shape]`` of ``neuron.update(x + s @ weight.T)``."""
        nrn = self.neuron
        state = nrn._require_state(x.dtype if isinstance(x, Tensor) else torch.float32)
        x = nrn._input(x, tuple(state.shape[1:]), state.device, ())
        return self._scan(x.unsqueeze(0), False)[0]

    def forward(
        self, x_seq: Any, return_states: bool = False
    ) -> Tensor | StateSequence | SynStateSequence:
        """Run T steps over ``x_seq`` ``[T, *state_shape]`` (mA); returns the spikes
        ``[T, *state_shape]`` (x's dtype, or the neuron's ``spike_dtype``), or with
        ``return_states=True`` an :class:`adex.StateSequence` ``(spikes, V, w)`` with the
        per-step V (mV, pre-reset) and w (mA; None without w), each ``[T, *state_shape]``
        and differentiable, as the feed-forward models return them (a neuron with a synapse:
        an :class:`adex.SynStateSequence` that adds the per-step I). The final state stays
        in the neuron (``neuron.V``, ``neuron.w``) and in :attr:`spikes`.

        With the neuron's ``checkpoint_every = K`` (and a gradient enabled) the scan runs in
        segments of K steps under ``torch.utils.checkpoint``: the forward keeps each
        segment's carried spikes and state only, the backward reruns a segment (one fused
        forward on the fused backend) before its adjoint; not with ``return_states``.

        With a ``batch_first`` neuron (and a batch) ``x_seq`` is ``[batch, T, N]`` and every
        returned sequence ``[batch, T, N]`` (transposed views)."""
        carried = self._spikes  # the module's rule: batch-first when the state has a batch axis
        batch_first = self.neuron._batch_first and carried is not None and carried.dim() > 1
        if not batch_first:
            return self._scan(x_seq, return_states)
        if not isinstance(x_seq, Tensor):
            x_seq = torch.as_tensor(to_canonical(x_seq, "current", "x_seq"),
                                    device=carried.device)  # fmt: skip
        if x_seq.dim() != 3:
            raise ValueError(
                f"x_seq must be [batch, T, N] for a batch_first neuron, got shape "
                f"{tuple(x_seq.shape)}"
            )
        return batch_first_view(self._scan(x_seq.transpose(0, 1), return_states))

    def _scan(self, x_seq: Any, return_states: bool) -> Tensor | StateSequence | SynStateSequence:
        """:meth:`forward` on time-first ``x_seq`` ``[T, *state_shape]``."""
        nrn = self.neuron
        spec = nrn._spec
        if return_states:  # the neuron's cached spec (None in checkpoint mode: raises)
            spec = nrn._spec_states or spec.with_return_states(True)
        state, trusted = nrn._state_for_call(x_seq.dtype if isinstance(x_seq, Tensor)
                                             else torch.float32)  # fmt: skip
        shape = tuple(state.shape[1:])
        if not isinstance(x_seq, Tensor):
            x_seq = torch.as_tensor(to_canonical(x_seq, "current", "x_seq"), device=state.device)
        if x_seq.dim() != len(shape) + 1 or x_seq.shape[0] == 0:
            raise ValueError(
                f"x_seq must be [T, *state_shape] = [T, {', '.join(map(str, shape))}] with "
                f"T >= 1, got shape {tuple(x_seq.shape)}"
            )
        x = nrn._input(x_seq, shape, state.device, (x_seq.shape[0],))
        if self._spikes is None or tuple(self._spikes.shape) != shape:
            raise RuntimeError("Recurrent: call init_state(batch_size) first")
        self._check_weight(self.weight, x.device)
        packed, violations = nrn._packed_for_call(spec.check_finite)
        backend = _backend_for(spec.backend, x)
        self._check_call(x, state, spec, trusted, violations, packed)
        if violations is not None:
            nrn._params_checked()
        params = nrn._live_params() if nrn.learnable else nrn._params_cache
        if nrn._rt.packed_device != x.device:
            packed = None
        t0 = nrn._rt.t_step if nrn.has_ref else 0
        step_spec = _without_checkpoint(spec)
        if backend == "triton":
            state = state.to(torch.float32)

        def run(xs: Tensor, s: Tensor, st: Tensor, t0_step: int) -> ScanOutput:
            if backend == "triton":
                return fused_recurrent_scan(xs, s, self.weight, st, params, step_spec,
                                            t0_step=t0_step, packed=packed)  # fmt: skip
            return recurrent_step_loop(xs, s, self.weight, st, params, step_spec,
                                       t0_step=t0_step)  # fmt: skip

        if spec.checkpoint_every is not None and torch.is_grad_enabled():
            out = recurrent_checkpointed(run, x, self._spikes, state, spec.checkpoint_every, t0)
        else:
            out = run(x, self._spikes, state, t0)
        self._commit(out.state, out.spikes)
        if return_states and nrn.has_syn:
            return SynStateSequence(out.spikes, out.v_seq, out.w_seq, out.i_seq)
        if return_states:
            return StateSequence(out.spikes, out.v_seq, out.w_seq)
        return out.spikes

    def _check_call(self, x: Tensor, state: Tensor, spec, trusted: bool,
                    violations: Tensor | None, packed) -> None:  # fmt: skip
        """Finiteness of x, the state and the weight, the learnable parameters'
        constraints, and no gradient through integer spikes (one host sync)."""
        compiling = torch.compiler.is_compiling()
        if not compiling and (spec.check_finite or violations is not None):
            extra = violations
            if spec.check_finite:  # NaN where the weight is not finite
                w_check = self.weight.detach().sum(dtype=torch.float32) * 0.0
                extra = w_check if extra is None else extra + w_check
            try:
                _check_finite(x, state, spec, not trusted and spec.check_finite, extra)
            except ExtraCheckError:
                if not bool(torch.isfinite(self.weight.detach()).all()):
                    raise ValueError("Recurrent: weight contains NaN or inf") from None
                if violations is not None:
                    self.neuron._raise_invalid_params()
        if spec.spike_dtype is not None and not spec.spike_dtype.is_floating_point:
            _refuse_gradient(x, state, self.neuron._live_params, packed, spec.spike_dtype)
            if torch.is_grad_enabled() and self.weight.requires_grad:
                raise ValueError(
                    f"spike_dtype={spec.spike_dtype} carries no gradient, but the recurrent "
                    "weight requires grad: use a floating spike dtype for training, or "
                    "torch.no_grad() for simulation"
                )

    def _commit(self, state: Tensor, spikes: Tensor) -> None:
        """Leave the state after a call in the neuron and the last spikes here."""
        rt = self.neuron._rt
        compiling = torch.compiler.is_compiling()
        rt.state, rt.loose = state, None
        rt.trusted = None if compiling else self.neuron._state_versions()
        if self.neuron.has_ref or not compiling:
            rt.t_step += spikes.shape[0]
        self._spikes = spikes[-1]

    def extra_repr(self) -> str:
        return f"N={self.neuron.in_size[0]}, init_scale={self.init_scale:g} mA"


def _without_checkpoint(spec: ScanSpec) -> ScanSpec:
    """``spec`` without ``checkpoint_every``: the spec of one segment's scan (the recurrent
    layer checkpoints whole segments itself, :func:`recurrent_checkpointed`)."""
    if spec.checkpoint_every is None:
        return spec
    if torch.compiler.is_compiling():
        return dataclasses.replace(spec, checkpoint_every=None)
    return _cached_without_checkpoint(spec)


@functools.lru_cache(maxsize=64)
def _cached_without_checkpoint(spec: ScanSpec) -> ScanSpec:
    return dataclasses.replace(spec, checkpoint_every=None)
