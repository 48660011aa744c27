"""``SpikingNeuron``: the module base of the AdEx family (parameters, state API, dynamics)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from adex.functional import BACKENDS, FLOAT_DTYPES, adex_scan, check_memory_options
from adex.init import make_state
from adex.params import PARAM_KINDS, AdExParams
from adex.surrogate import ReluGrad, Surrogate
from adex.units import CANONICAL, to_canonical

NEVER_SPIKED = -1e7
"""Initial ``last_spike_time`` (ms) of the Ref models, BrainPy's value."""


class StateSequence(NamedTuple):
    """``layer(x_seq, return_states=True)``: per-step ``spikes``, ``V`` (mV, pre-reset, as
    BrainPy stores it) and ``w`` (mA; None for models without w), each ``[T, *state_shape]``.
    """

    spikes: Tensor
    V: Tensor
    w: Tensor | None


def _in_size_tuple(in_size: Any) -> tuple[int, ...]:
    try:
        size = (in_size,) if isinstance(in_size, int) else tuple(in_size)
    except TypeError:
        size = ()
    if not size or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                            for n in size):  # fmt: skip
        raise ValueError(f"in_size must be a positive int or a tuple of them, got {in_size!r}")
    return size


class SpikingNeuron(nn.Module):
    """Base of the AdEx family: parameters in canonical units, state, single- and multi-step
    dynamics through :func:`adex.adex_scan`. Subclasses (``adex.AdExIF``, ``adex.ExpIF``,
    ``adex.LIF``) fix the model flags and BrainPy's signature and defaults.

    Attributes:
        has_w: the model has the adaptation current w (AdEx models).
        has_exp: the model has the exponential term (AdEx, ExpIF).
        has_ref: the model has a refractory period ``tau_ref`` (AdExIFRef, ExpIFRef).
        param_names: the parameters the model uses (others are ignored).
    """

    has_w: ClassVar[bool] = True
    has_exp: ClassVar[bool] = True
    has_ref: ClassVar[bool] = False
    param_names: ClassVar[tuple[str, ...]] = tuple(PARAM_KINDS)

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        params: dict[str, Any],
        V_initializer: Any,
        w_initializer: Any,
        spk_fun: Surrogate | None,
        spk_reset: str,
        dt: Any,
        backend: str,
        name: str | None,
        check_finite: bool,
        detach_reset: bool = False,
        tau_ref: Any = None,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
    ):
        super().__init__()
        self.in_size = _in_size_tuple(in_size)
        params = AdExParams.from_values(params, self.in_size)
        self.spk_fun = ReluGrad() if spk_fun is None else spk_fun
        if not isinstance(self.spk_fun, Surrogate):
            raise TypeError(f"spk_fun must be an adex.surrogate.Surrogate, got {spk_fun!r}")
        if spk_reset not in ("soft", "hard"):
            raise ValueError(f"spk_reset must be 'soft' or 'hard', got {spk_reset!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        dt = to_canonical(dt, "time", "dt")
        if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite time > 0 ms, got {dt!r}")
        check_memory_options(spike_dtype, checkpoint_every)
        self.spike_dtype = spike_dtype
        self.checkpoint_every = checkpoint_every
        self.spk_reset = spk_reset
        self.dt = float(dt)
        self.backend = backend
        self.name = name
        self.check_finite = check_finite
        self.detach_reset = bool(detach_reset)
        self.tau_ref: float | None = None
        if self.has_ref:
            tau_ref = to_canonical(tau_ref, "time", "tau_ref")
            if not (isinstance(tau_ref, int | float) and math.isfinite(tau_ref) and tau_ref >= 0):
                raise ValueError(f"tau_ref must be a finite scalar time >= 0 ms, got {tau_ref!r}")
            self.tau_ref = float(tau_ref)
        self.t_step = 0
        self.last_spike_time: Tensor | None = None
        self.V_initializer = V_initializer
        self.w_initializer = w_initializer
        learnable = (learnable,) if isinstance(learnable, str) else tuple(learnable)
        for key in learnable:
            if key not in self.param_names:
                raise ValueError(
                    f"learnable: {key!r} is not a parameter of {type(self).__name__}; "
                    f"choose from {self.param_names} (tau_ref has no gradient)"
                )
        self.learnable = learnable
        # learnable parameters are float32 nn.Parameters (scalar: shape (), or in_size);
        # fixed per-neuron ones float64 buffers (saved in state_dict, follow .to(device),
        # keep float64 under .to(dtype)); fixed scalars stay Python floats
        self._scalar_params: dict[str, float] = {}
        for key, value in params.items():
            if key in learnable:
                tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
                self.register_parameter(key, nn.Parameter(tensor.detach().clone()))
            elif isinstance(value, Tensor):
                self.register_buffer(key, value)
            else:
                self._scalar_params[key] = value
        self.register_buffer("_packed", torch.empty(0), persistent=False)
        self._repack()
        self._V: Tensor | None = None
        self._w: Tensor | None = None

    # -- parameters --------------------------------------------------------------------------

    @property
    def params(self) -> AdExParams:
        """The parameters in canonical units (tensors for per-neuron values)."""
        values = dict(self._scalar_params)
        for key in PARAM_KINDS:
            if key not in values:
                values[key] = getattr(self, key)
        return AdExParams(**values)

    def _repack(self) -> None:
        self._params_cache = self.params
        self._packed_versions = self._buffer_versions()
        if self.learnable:  # packed per call instead, differentiably
            return
        n = math.prod(self.in_size)
        has_tensor = any(isinstance(v, Tensor) for _, v in self._params_cache.items())
        self._packed = self._params_cache.packed(n if has_tensor else 1, self._packed.device)

    def _buffer_versions(self) -> tuple[int, ...]:
        return tuple(self._buffers[k]._version for k in PARAM_KINDS if k in self._buffers)

    def _current_params(self) -> None:
        """Re-pack if a parameter buffer changed in place (load_state_dict, ``fill_``)."""
        if not torch.compiler.is_compiling() and self._buffer_versions() != self._packed_versions:
            self._repack()

    def _apply(self, fn, recurse=True):
        kept = {k: getattr(self, k) for k in PARAM_KINDS if k in self._buffers}
        super()._apply(fn, recurse)
        device = self._packed.device
        for key, value in kept.items():
            setattr(self, key, value.to(device))
        self._repack()
        if self.last_spike_time is not None:
            self.last_spike_time = self.last_spike_time.to(device)
        if self._V is not None:
            self._V = self._V.to(device)
        if self._w is not None:
            self._w = self._w.to(device)
        return self

    # -- state -------------------------------------------------------------------------------

    def _state_shape(self, batch_size: int | None) -> tuple[int, ...]:
        if batch_size is None:
            return self.in_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
        return (batch_size, *self.in_size)

    def init_state(
        self,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Create V (mV) and w (mA) shaped ``(batch_size, *in_size)`` (or ``in_size``) from
        the initializers, on ``device`` (default: the module's device) in ``dtype``.

        Also restarts the clock (``t_step = 0``: the next step runs at t = 0 ms) and, for the
        Ref models, sets ``last_spike_time`` to -1e7 ms as BrainPy does."""
        shape = self._state_shape(batch_size)
        device = self._packed.device if device is None else torch.device(device)
        self._V = make_state(self.V_initializer, shape, "voltage", "V_initializer", dtype, device)
        if self.has_w:
            self._w = make_state(
                self.w_initializer, shape, "current", "w_initializer", dtype, device
            )
        self.t_step = 0
        if self.has_ref:
            self.last_spike_time = torch.full(shape, NEVER_SPIKED, dtype=dtype, device=device)

    def reset_state(
        self,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Refill the states from the initializers (same as :meth:`init_state`)."""
        self.init_state(batch_size, device=device, dtype=dtype)

    def _checked_state(self, value: Any, kind: str, name: str) -> Tensor:
        value = to_canonical(value, kind, name)
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a tensor (or a {kind} quantity of one)")
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        n = len(self.in_size)
        if tuple(value.shape[value.dim() - n :]) != self.in_size or value.dim() > n + 1:
            raise ValueError(
                f"{name} must be shaped in_size {self.in_size} or (batch, *in_size), "
                f"got {tuple(value.shape)}"
            )
        return value

    @property
    def V(self) -> Tensor | None:
        """Membrane potential (mV) after the last step, pre-reset; assignable."""
        return self._V

    @V.setter
    def V(self, value: Any) -> None:
        self._V = self._checked_state(value, "voltage", "V")

    @property
    def w(self) -> Tensor | None:
        """Adaptation current (mA) after the last step; assignable."""
        return self._w

    @w.setter
    def w(self, value: Any) -> None:
        if not self.has_w:
            raise AttributeError(f"{type(self).__name__} has no adaptation current w")
        self._w = self._checked_state(value, "current", "w")

    def _require_state(self) -> tuple[Tensor, Tensor | None]:
        if self._V is None or (self.has_w and self._w is None):
            raise RuntimeError(f"{type(self).__name__}: call init_state(batch_size) first")
        if self.has_w and self._V.shape != self._w.shape:
            raise ValueError(f"V {tuple(self._V.shape)} and w {tuple(self._w.shape)} differ")
        return self._V, self._w

    # -- dynamics ----------------------------------------------------------------------------

    def _input(self, x: Any, state: Tensor, leading: tuple[int, ...]) -> Tensor:
        """``x`` in mA, checked and expanded to ``(*leading, *state.shape)``."""
        state_shape = tuple(state.shape)
        x = to_canonical(x, "current", "x")
        if isinstance(x, int | float | np.ndarray) and not isinstance(x, bool):
            x = torch.as_tensor(x, device=state.device)
            x = x.to(torch.float32) if x.dtype == torch.float64 else x
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor (mA) or a current quantity, got {type(x)}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        target = (*leading, *state_shape)
        if x.shape == target:  # the common case, without the broadcast check's cost
            return x
        body = tuple(x.shape[len(leading) :])
        try:
            ok = torch.broadcast_shapes(body, state_shape) == state_shape
        except RuntimeError:
            ok = False
        if x.dim() < len(leading) or tuple(x.shape[: len(leading)]) != leading or not ok:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected {target} (state shape "
                f"{state_shape}, from init_state) or a shape that broadcasts to it"
            )
        return x.expand(target)

    def _run(self, x: Tensor, V: Tensor, w: Tensor | None, return_states: bool):
        if V.device != x.device:
            raise ValueError(
                f"x is on {x.device} but the state is on {V.device}; call .to() on the "
                "layer or init_state(device=...)"
            )
        self._current_params()
        params = self._params_cache
        if self.learnable:  # re-validated: an optimizer step may have broken a constraint
            try:
                params = self.params
            except ValueError as err:
                raise ValueError(
                    f"{type(self).__name__}: {err}; a learnable parameter left its valid "
                    "range (clamp it after optimizer steps)"
                ) from err
        out = adex_scan(
            x, V, w, params, dt=self.dt, surrogate=self.spk_fun,
            spk_reset=self.spk_reset, has_exp=self.has_exp, return_states=return_states,
            backend=self.backend, check_finite=self.check_finite,
            detach_reset=self.detach_reset, tau_ref=self.tau_ref,
            last_spike_time=self.last_spike_time,
            t0_step=self.t_step if self.has_ref else 0,  # an int guard would recompile
            packed_params=None if self.learnable or self._packed.device != x.device
            else self._packed,
            spike_dtype=self.spike_dtype, checkpoint_every=self.checkpoint_every,
        )  # fmt: skip
        # the step counter; models without tau_ref never read it, and do not touch it while
        # torch.compile traces (an int attribute would be guarded on: a recompile per call)
        if self.has_ref or not torch.compiler.is_compiling():
            self.t_step += x.shape[0]
        if self.has_ref:
            self.last_spike_time = out.last_spike_time
        return out

    def update(self, x: Any = 0.0) -> Tensor:
        """One step (BrainPy's ``update``): returns the spikes of the new V, shaped like the
        state, in ``x``'s dtype (or ``spike_dtype``); advances ``V`` and ``w``. ``x`` (mA)
        broadcasts to the state shape."""
        V, w = self._require_state()
        x = self._input(x, V, ())
        out = self._run(x.unsqueeze(0), V, w, return_states=False)
        self._V, self._w = out.V, out.w
        return out.spikes[0]

    def forward(self, x_seq: Any, return_states: bool = False) -> Tensor | StateSequence:
        """Run ``T`` steps over ``x_seq`` ``[T, *state_shape]`` (mA) in one fused scan.

        Returns the spikes ``[T, *state_shape]`` (``x_seq``'s dtype, or ``spike_dtype``), or with
        ``return_states=True`` a :class:`StateSequence` of per-step spikes, V and w, all
        differentiable. The final state is left in ``V`` and ``w`` (differentiable too:
        consecutive calls give truncated BPTT).
        """
        V, w = self._require_state()
        x_seq = to_canonical(x_seq, "current", "x_seq")
        if isinstance(x_seq, np.ndarray):
            x_seq = torch.as_tensor(x_seq, device=V.device)
        if not isinstance(x_seq, Tensor):
            raise TypeError(
                f"x_seq must be a tensor (or current quantity) shaped [T, *state], got "
                f"{type(x_seq).__name__}"
            )
        if x_seq.dim() != V.dim() + 1:
            raise ValueError(
                f"x_seq must be [T, *state_shape] = [T, {', '.join(map(str, V.shape))}], got "
                f"shape {tuple(x_seq.shape)} (a missing time axis? use update() for one step)"
            )
        x_seq = self._input(x_seq, V, (x_seq.shape[0],))
        out = self._run(x_seq, V, w, return_states)
        if return_states:
            self._V, self._w = out.V[-1], None if out.w is None else out.w[-1]
            return StateSequence(out.spikes, out.V, out.w)
        self._V, self._w = out.V, out.w
        return out.spikes

    def get_spike(self, V: Tensor | None = None) -> Tensor:
        """``H((V - V_th)/(V_th - V_reset))`` with the surrogate gradient (default: the stored
        V)."""
        if V is None:
            V, _ = self._require_state()
        p = self._params_cache.cast(V.dtype, V.device)
        return self.spk_fun((V - p["V_th"]) / (p["V_th"] - p["V_reset"]))

    def extra_repr(self) -> str:
        parts = [f"in_size={self.in_size}"]
        for key, value in self._params_cache.items():
            if key not in self.param_names:
                continue
            unit = CANONICAL[PARAM_KINDS[key]][0]
            if key in self.learnable:
                shown = f"learnable [{unit}]"
            elif isinstance(value, float):
                shown = f"{value:g} {unit}"
            else:
                shown = f"per-neuron [{unit}]"
            parts.append(f"{key}={shown}")
        if self.has_ref:
            parts.append(f"tau_ref={self.tau_ref:g} ms")
        if self.detach_reset:
            parts.append("detach_reset=True")
        if self.spike_dtype is not None:
            parts.append(f"spike_dtype={self.spike_dtype}")
        if self.checkpoint_every is not None:
            parts.append(f"checkpoint_every={self.checkpoint_every}")
        parts += [f"spk_fun={self.spk_fun!r}", f"spk_reset={self.spk_reset!r}",
                  f"dt={self.dt:g} ms", f"backend={self.backend!r}"]  # fmt: skip
        return ", ".join(parts)
