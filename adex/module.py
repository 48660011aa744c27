"""``SpikingNeuron``: the module base of the AdEx family (parameters, state API, dynamics)."""

from __future__ import annotations

import dataclasses
import operator
import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from adex.functional import ExtraCheckError, check_lengths, run_scan, stack_state, state_dtype
from adex.init import Constant, make_state, resolve_initializer
from adex.learnable_param import LearnableParameter
from adex.param_attrs import ParamAttributes
from adex.params import (
    PACKED_ROWS,
    PARAM_KINDS,
    AdExParams,
    LearnableChecks,
    PackedParams,
    grad_rows,
    learnable_rows,
    learnable_violations,
)
from adex.spec import FLOAT_DTYPES, ScanSpec
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


def _warn_coarse_dt(dt: float, params: AdExParams, has_w: bool, stacklevel: int) -> None:
    """Warn when ``dt`` exceeds the shortest time constant (tau, and tau_w for models with
    w): exponential Euler stays stable there, but a step then skips the dynamics the time
    constant describes (V relaxes most of the way to its fixed point in one step)."""
    taus = [("tau", params.tau)] + ([("tau_w", params.tau_w)] if has_w else [])
    for name, tau in taus:
        shortest = float(tau.min()) if isinstance(tau, Tensor) else tau
        if dt > shortest:
            warnings.warn(
                f"dt = {dt:g} ms is longer than {name} = {shortest:g} ms: the exponential-Euler "
                "step stays stable, but one step spans more than the time constant",
                UserWarning,
                stacklevel=stacklevel,
            )
            return


class SynStateSequence(NamedTuple):
    """``layer(x_seq, return_states=True)`` of a model with a synapse (``tau_syn``): the
    fields of :class:`StateSequence`, then ``I``, the per-step synaptic current (mA)."""

    spikes: Tensor
    V: Tensor
    w: Tensor | None
    I: Tensor


_VERSION = operator.attrgetter("_version")  # (eager only: torch.compile does not trace it)


def _same(a: tuple, b: tuple) -> bool:
    """Whether two tuples hold the same objects (identity: ``==`` on tensors compares
    values)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _in_size_tuple(in_size: Any) -> tuple[int, ...]:
    try:
        size = (in_size,) if isinstance(in_size, int) else tuple(in_size)
    except TypeError:
        size = ()
    if not size or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                            for n in size):  # fmt: skip
        raise ValueError(f"in_size must be a positive int or a tuple of them, got {in_size!r}")
    return size


class _RunState:
    """What a call of a layer changes: the state block ``[C, *S]`` (or rows assigned one at
    a time, restacked at the next call), the version counters of the state as adex produced
    it (finite by construction: not checked again unless something wrote to it since), and
    the step counter."""

    __slots__ = ("checked", "checks", "init_values", "learn_in_order", "learn_rows",
                 "learn_slots", "loose", "packed", "packed_device", "pending", "shared",
                 "state", "t_step", "trusted")  # fmt: skip

    def __init__(self) -> None:
        self.init_values: dict = {}  # constant initial states [C, *S], expanded, per key
        self.packed: Tensor | None = None  # the packed-parameter buffer, without __getattr__
        self.packed_device: torch.device | None = None
        self.checks = None  # the learnable parameters' constraints (LearnableChecks)
        self.learn_rows: Tensor | None = None  # their packed rows, [k] int64
        self.learn_slots: tuple[int, ...] = ()  # their rows in the compact gradients
        self.learn_in_order = True  # the slots are 0, 1, ... (the names in packed order)
        # the learnable parameters that are views of their packed rows, and those rows'
        # addresses (None: not shared, packed per call); see SpikingNeuron._share_learnable
        self.shared: tuple[tuple[Tensor, ...], tuple[int, ...]] | None = None
        # the learnable parameters (and their versions and addresses) whose constraints were
        # last checked and held, and those of the check under way
        self.checked: tuple | None = None
        self.pending: tuple | None = None
        self.state: Tensor | None = None
        self.loose: list[Tensor | None] | None = None
        self.trusted: tuple[int, ...] | None = None
        self.t_step = 0


def _spec_setting(name: str, doc: str, convert=None) -> property:
    """A module attribute that reads the spec's field ``name`` and, when assigned, rebuilds
    (and so validates) the spec."""

    def get(self):
        return getattr(self._spec, name)

    def set_(self, value):
        self._set_spec(**{name: convert(value) if convert else value})

    return property(get, set_, doc=doc)


def _to_ms(name: str):
    def convert(value):
        return None if value is None else to_canonical(value, "time", name)

    return convert


def batch_first_view(
    out: Tensor | StateSequence | SynStateSequence,
) -> Tensor | StateSequence | SynStateSequence:
    """A call's spikes or state sequences ``[T, batch, ...]`` as ``[batch, T, ...]``
    (transposed views; an absent sequence stays None)."""
    if isinstance(out, Tensor):
        return out.transpose(0, 1)
    return type(out)(*(None if t is None else t.transpose(0, 1) for t in out))


class SpikingNeuron(ParamAttributes):
    """Base of the AdEx family: parameters in canonical units, state, single- and multi-step
    dynamics through the validated :class:`adex.spec.ScanSpec` built at construction.
    Subclasses (``adex.AdExIF``, ``adex.ExpIF``, ``adex.LIF``, the Ref models) fix the model
    flags and BrainPy's signature and defaults.

    The state is one block ``[C, *state_shape]``: V (mV), then w (mA, AdEx models), then the
    last-spike time (ms, Ref models); ``V``, ``w`` and ``last_spike_time`` are views of it,
    assignable. Each parameter is an attribute (``layer.tau``: a tensor in its canonical
    unit; assigning one converts, validates and re-packs it, see
    :class:`adex.param_attrs.ParamAttributes`).

    Attributes:
        has_w: the model has the adaptation current w (AdEx models).
        has_exp: the model has the exponential term (AdEx, ExpIF).
        has_ref: the model has a refractory period ``tau_ref`` (AdExIFRef, ExpIFRef).
        param_names: the parameters the model uses (others are ignored).
    """

    has_w: ClassVar[bool] = True
    has_exp: ClassVar[bool] = True
    has_ref: ClassVar[bool] = False
    param_names: ClassVar[tuple[str, ...]] = tuple(k for k in PARAM_KINDS if k != "tau_syn")

    spk_fun = _spec_setting("surrogate", "Surrogate spike function (``adex.surrogate``).")
    spk_reset = _spec_setting("spk_reset", "'soft' or 'hard' reset.")
    backend = _spec_setting("backend", "'auto', 'triton', 'cpu' or 'reference'.")
    check_finite = _spec_setting("check_finite", "Reject NaN/inf inputs and states.")
    detach_reset = _spec_setting("detach_reset", "No gradient through the reset spike.")
    spike_dtype = _spec_setting("spike_dtype", "dtype of the returned spikes (None: x's).")
    checkpoint_every = _spec_setting("checkpoint_every", "Low-memory BPTT interval K.")
    tau_ref = _spec_setting("tau_ref", "Refractory period (ms) or None.", _to_ms("tau_ref"))

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
        batch_first: bool = False,
    ):
        super().__init__()
        self._rt = _RunState()  # per-call state: plain attributes, no nn.Module __setattr__
        self.in_size = _in_size_tuple(in_size)
        params = AdExParams.from_values(params, self.in_size)
        self.has_syn = params.tau_syn is not None
        if self.has_ref:
            tau_ref = to_canonical(tau_ref, "time", "tau_ref")
            if not isinstance(tau_ref, int | float) or isinstance(tau_ref, bool):
                raise ValueError(f"tau_ref must be a finite scalar time >= 0 ms, got {tau_ref!r}")
        self._spec = ScanSpec(
            has_w=self.has_w, has_exp=self.has_exp, tau_ref=tau_ref if self.has_ref else None,
            spk_reset=spk_reset, surrogate=ReluGrad() if spk_fun is None else spk_fun,
            dt=to_canonical(dt, "time", "dt"), detach_reset=detach_reset,
            spike_dtype=spike_dtype, checkpoint_every=checkpoint_every, backend=backend,
            check_finite=check_finite, has_syn=self.has_syn,
        )  # fmt: skip
        self._spec_states = (
            self._spec.with_return_states(True) if checkpoint_every is None else None
        )
        self.name = name
        self.batch_first = batch_first
        self._inits: list = [None] * (1 + self.has_w)
        self.V_initializer = V_initializer
        self.w_initializer = w_initializer
        self._init_learnable(params, learnable)
        _warn_coarse_dt(self._spec.dt, params, self.has_w, stacklevel=4)  # the user's line

    def _init_learnable(self, params: AdExParams, learnable: Any) -> None:
        learnable = (learnable,) if isinstance(learnable, str) else tuple(learnable)
        names = self.param_names + (("tau_syn",) if self.has_syn else ())
        for key in learnable:
            if key not in names:
                raise ValueError(
                    f"learnable: {key!r} is not a parameter of {type(self).__name__}; "
                    f"choose from {names} (tau_ref has no gradient; tau_syn needs a synapse, "
                    "tau_syn=...)"
                )
        self.learnable = learnable
        # learnable parameters are float32 nn.Parameters (scalar: shape (), or in_size);
        # fixed per-neuron ones float64 buffers (saved in state_dict, follow .to(device),
        # keep float64 under .to(dtype)); fixed scalars stay Python floats
        self._scalar_params: dict[str, float] = {}
        for key, value in params.items():
            if key in learnable:
                tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
                self.register_parameter(key, LearnableParameter(tensor.detach().clone()))
            elif isinstance(value, Tensor):
                self.register_buffer(key, value)
            else:
                self._scalar_params[key] = value
        self._param_buffers = [k for k in PARAM_KINDS if k in self._buffers]
        row_ids = [PACKED_ROWS[k] for k in learnable]
        if learnable:  # the backward computes the learnable parameters' gradients only
            self._set_spec(param_mask=sum(1 << r for r in set(row_ids)))
        rows = torch.tensor(row_ids, dtype=torch.int64)
        self.register_buffer("_learn_rows", rows, persistent=False)
        self.register_buffer("_packed", torch.empty(0), persistent=False)
        self._repack(share=True)

    # -- settings ----------------------------------------------------------------------------

    def _set_spec(self, **changes: Any) -> None:
        """Rebuild the spec with ``changes`` (validated by ``ScanSpec``)."""
        if "tau_ref" in changes and not self.has_ref:
            raise AttributeError(f"{type(self).__name__} has no refractory period")
        self._spec = dataclasses.replace(self._spec, **changes)
        states = self._spec.checkpoint_every is None
        self._spec_states = self._spec.with_return_states(True) if states else None

    @property
    def dt(self) -> float:
        """Time step (ms); assignable as a quantity. A step longer than the shortest time
        constant warns (see :func:`_warn_coarse_dt`)."""
        return self._spec.dt

    @dt.setter
    def dt(self, value: Any) -> None:
        self._set_spec(dt=to_canonical(value, "time", "dt"))
        _warn_coarse_dt(self._spec.dt, self._params_cache, self.has_w, stacklevel=5)

    @property
    def batch_first(self) -> bool:
        """Sequences (the input, spikes and ``return_states``) are ``[batch, T, ...]``
        instead of ``[T, batch, ...]``, as ``torch.nn.RNN``'s option; an unbatched state
        (``init_state()`` without a batch size) takes ``[T, *in_size]`` either way."""
        return self._batch_first

    @batch_first.setter
    def batch_first(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"batch_first must be True or False, got {value!r}")
        self._batch_first = value

    # -- parameters --------------------------------------------------------------------------

    @property
    def params(self) -> AdExParams:
        """The parameters in canonical units (tensors for per-neuron values), validated."""
        return AdExParams(**self._param_values())

    def _live_params(self) -> AdExParams:
        """The current parameters (learnable ones included) without re-validation: the
        per-call constraint check runs on the packed tensor."""
        return AdExParams.trusted(self._param_values())

    def _param_values(self) -> dict[str, Any]:
        values = dict(self._scalar_params)
        for key in PARAM_KINDS:  # without a synapse tau_syn stays None (AdExParams')
            if key not in values and (key != "tau_syn" or self.has_syn):
                values[key] = self._parameters.get(key, self._buffers.get(key))
        return values

    def _repack(self, share: bool = False) -> None:
        """Pack the parameters (fixed values and the current learnable ones) once, as the
        ``[11, N]`` fp32 base that every call starts from; with ``share``, make the learnable
        parameters views of their rows (:meth:`_share_learnable`)."""
        self._params_cache = self.params
        self._packed_versions = self._buffer_versions()
        n = self._params_cache.n_neurons()  # 1 when every value is a scalar
        with torch.no_grad():
            self._packed = self._params_cache.packed(n, self._packed.device).detach()
        self._rt.packed, self._rt.packed_device = self._packed, self._packed.device
        self._rt.learn_rows = self._learn_rows
        compact = grad_rows(self._spec.param_mask)
        self._rt.learn_slots = tuple(compact.index(PACKED_ROWS[k]) for k in self.learnable)
        self._rt.learn_in_order = self._rt.learn_slots == tuple(range(len(self.learnable)))
        self._rt.checks = LearnableChecks.of(self.learnable, self._packed.device)
        self._rt.checked = None
        shared = self._rt.shared
        if not share and shared is not None:  # still the parameters shared before: again
            share = _same(tuple(self._parameters[k] for k in self.learnable), shared[0])
        self._rt.shared = self._share_learnable() if share else None

    def _share_learnable(self) -> tuple[tuple[Tensor, ...], tuple[int, ...]] | None:
        """Store each learnable parameter in its packed row (``param.data`` becomes a view
        of it), so that the packed buffer always holds the current values and a call packs
        nothing: an optimizer step, ``load_state_dict`` or a write through ``.data`` lands
        there directly. Possible when every learnable parameter is fp32 on the buffer's
        device and holds a whole row (per-neuron, or scalar with every parameter scalar);
        otherwise (None) the rows are written into a copy of the buffer per call. Done at
        construction, after ``.to()``, on an assignment through the parameter's attribute
        and on a repack of the parameters shared before; a tensor swapped in otherwise
        (``torch.func.functional_call``) is never rebound, it is packed per call."""
        if not self.learnable:
            return None
        n = self._packed.shape[1]
        params = tuple(self._parameters[k] for k in self.learnable)
        for p in params:
            if p.dtype != torch.float32 or p.device != self._packed.device:
                return None
            if p.numel() != n:  # a scalar among per-neuron rows: one value, not a row
                return None
        with torch.no_grad():
            for k, p in zip(self.learnable, params, strict=True):
                p.data = self._packed[PACKED_ROWS[k]].view(p.shape)
        return params, tuple(p.data_ptr() for p in params)

    def _buffer_versions(self) -> tuple[int, ...]:
        return tuple(self._buffers[k]._version for k in self._param_buffers)

    def _packed_for_call(self, check_finite: bool) -> tuple[Tensor | PackedParams, Tensor | None]:
        """The packed parameters of this call and, with learnable parameters, their
        constraint check (see :func:`adex.params.learnable_violations`), or None: while
        compiling, without learnable parameters, or when the learnable parameters are the
        ones last checked, at the same versions and addresses (no optimizer step, in-place
        op or assignment since) and, with ``check_finite``, LearnableParameters without a
        ``.data`` use since (a plain ``nn.Parameter`` is checked on every call then); views
        of the base are then the last call's ``PackedParams``. Without learnable parameters
        the cached ``[11, N]`` base; with them a :class:`PackedParams` whose values hold the
        current learnable rows (the base itself where they are views of it), not
        differentiably: the fused backward hands each its gradient. A caller whose check
        passed calls :meth:`_params_checked`."""
        if self._param_buffers and not torch.compiler.is_compiling():
            if self._buffer_versions() != self._packed_versions:
                self._repack()  # a parameter buffer changed in place (load_state_dict, fill_)
        rt = self._rt
        base = rt.packed
        if not self.learnable:
            return base, None
        learnable = tuple([self._parameters[k] for k in self.learnable])
        if torch.compiler.is_compiling():
            # traced, the buffers themselves: torch.compile keeps module buffers' shapes
            # static (plain tensor attributes get symbolic sizes, equated with any equal
            # input size)
            with torch.no_grad():
                rows = learnable_rows(learnable, self._packed.shape[1])
                values = self._packed.index_copy(0, self._learn_rows, rows)
            return PackedParams(values, self._learn_rows, learnable, rt.learn_slots), None
        # the parameters' addresses and versions: what an assignment or in-place op moves
        key = (*map(Tensor.data_ptr, learnable), *map(_VERSION, learnable))
        # (parameters, key, PackedParams or None, LearnableParameter.data_uses or None) of
        # the parameters last checked and held
        checked = rt.checked
        uses = LearnableParameter.data_uses
        fresh = checked is not None and key == checked[1] and _same(learnable, checked[0])
        if fresh and checked[2] is not None:  # views of the base, unchanged: the same call
            violations = None
            if check_finite and checked[3] != uses:  # .data was used: a write moves no version
                violations = learnable_violations(base, rt.checks)
                rt.pending = (*checked[:3], None if checked[3] is None else uses)
            return checked[2], violations
        shared, k = rt.shared, len(learnable)
        if shared is not None and key[:k] == shared[1] and _same(learnable, shared[0]):
            values = base  # the learnable parameters are views of it: current
        else:
            with torch.no_grad():
                values = base.index_copy(0, rt.learn_rows, learnable_rows(learnable, base.shape[1]))
        direct = rt.learn_in_order and all(p.dim() == 0 and p.dtype == torch.float32
                                           for p in learnable)  # fmt: skip
        packed = PackedParams(values, rt.learn_rows, learnable, rt.learn_slots, direct)
        violations = None
        if check_finite or not fresh:  # (values records no graph: the base, or under no_grad)
            violations = learnable_violations(values, rt.checks)
            # a copy is made again per call; the .data uses count for LearnableParameters only
            ours = all(type(p) is LearnableParameter for p in learnable)
            rt.pending = (learnable, key, packed if values is base else None,
                          uses if ours else None)  # fmt: skip
        return packed, violations

    def _params_checked(self) -> None:
        """Record that the constraint check of the last :meth:`_packed_for_call` passed."""
        if self._rt.pending is not None:
            self._rt.checked, self._rt.pending = self._rt.pending, None

    def _apply(self, fn, recurse=True):
        kept = {k: getattr(self, k) for k in PARAM_KINDS if k in self._buffers}
        super()._apply(fn, recurse)
        device = self._packed.device
        for key, value in kept.items():
            self._buffers[key] = value.to(device)
        self._repack(share=True)
        if self._rt.state is not None:
            self._rt.state = self._rt.state.to(device)
        if self._rt.loose is not None:
            self._rt.loose = [None if r is None else r.to(device) for r in self._rt.loose]
        return self

    # -- state -------------------------------------------------------------------------------

    @property
    def V_initializer(self) -> Any:
        """Initial V (mV) of :meth:`init_state`: an ``adex.init`` initializer, quantity,
        number, tensor or callable ``shape -> tensor``; units are resolved when assigned."""
        return self._init_given[0]

    @V_initializer.setter
    def V_initializer(self, init: Any) -> None:
        self._set_initializer(0, init, "voltage", "V_initializer")

    @property
    def w_initializer(self) -> Any:
        """Initial w (mA) of :meth:`init_state` (AdEx models), like ``V_initializer``."""
        return self._init_given[1]

    @w_initializer.setter
    def w_initializer(self, init: Any) -> None:
        self._set_initializer(1, init, "current", "w_initializer")

    def _set_initializer(self, row: int, init: Any, kind: str, name: str) -> None:
        given = list(getattr(self, "_init_given", (None, None)))
        given[row] = init
        self._init_given = tuple(given)
        if row < len(self._inits):
            self._inits[row] = resolve_initializer(init, kind, name)
            self._rt.init_values = {}
            if all(i is not None for i in self._inits):
                self._initial_rows()

    def _initial_rows(self) -> None:
        """The initial state's constant rows (V, w, last-spike time), or None when an
        initializer is not a constant; whether the initializers give a finite state."""
        constants = [i.value if isinstance(i, Constant) else None for i, _ in self._inits]
        if self.has_ref:
            constants.append(NEVER_SPIKED)
        if self.has_syn:  # the synaptic current starts at 0 mA
            constants.append(0.0)
        self._init_constants = None if None in constants else tuple(constants)
        self._init_trusted = all(trusted for _, trusted in self._inits)

    @property
    def t_step(self) -> int:
        """Global index of the next step (step k runs at ``t = float(k) * dt``); read by the
        Ref models' refractory test, restarted by :meth:`init_state`."""
        return self._rt.t_step

    @t_step.setter
    def t_step(self, value: int) -> None:
        self._rt.t_step = value

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
        """Create the state shaped ``(batch_size, *in_size)`` (or ``in_size``) from the
        initializers: V (mV), w (mA), on ``device`` (default: the module's) in ``dtype``.

        Also restarts the clock (``t_step = 0``: the next step runs at t = 0 ms), for the
        Ref models sets ``last_spike_time`` to -1e7 ms as BrainPy does, and with
        ``tau_syn`` sets the synaptic current ``I`` to 0 mA."""
        shape = self._state_shape(batch_size)
        device = self._rt.packed_device if device is None else torch.device(device)
        constants = self._init_constants
        if constants is not None:  # one small copy, no initializer calls
            # the rows, expanded (a view: no memory), are cached per (dtype, device, shape),
            # not while torch.compile traces (a cache filled by the trace fails its guard at
            # the next call: a recompile)
            compiling = torch.compiler.is_compiling()
            key = (dtype, device, shape)
            cache = self._rt.init_values
            expanded = None if compiling else cache.get(key)
            if expanded is None:
                values = torch.tensor(constants, dtype=dtype, device=device)
                expanded = values.view(-1, *([1] * len(shape))).expand(len(constants), *shape)
                if not compiling:
                    if len(cache) >= 8:  # a few batch sizes at a time
                        cache.clear()
                    cache[key] = expanded
            self._rt.state = expanded.contiguous()
        else:
            rows = [make_state(init, shape, kind, name, dtype, device) for (init, _), kind, name
                    in zip(self._inits, ("voltage", "current"), ("V_initializer", "w_initializer"),
                           strict=False)]  # fmt: skip
            if self.has_ref:
                rows.append(torch.full(shape, NEVER_SPIKED, dtype=dtype, device=device))
            if self.has_syn:
                rows.append(torch.zeros(shape, dtype=dtype, device=device))
            self._rt.state = torch.stack(rows)
        self._rt.loose = None
        # (version counters cannot be read while torch.compile traces: checked eagerly)
        trusted = self._init_trusted and not torch.compiler.is_compiling()
        self._rt.trusted = self._state_versions() if trusted else None
        self._rt.t_step = 0

    def reset_state(
        self,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Refill the states from the initializers (same as :meth:`init_state`)."""
        self.init_state(batch_size, device=device, dtype=dtype)

    def detach_state(self) -> None:
        """Cut the state (V, w, last-spike time) out of the autograd graph, keeping its
        values and the clock: truncated BPTT calls it between chunks, so that the next
        chunk's ``backward()`` stops at the chunk boundary. A layer without a state is left
        as it is."""
        rt = self._rt
        if rt.state is not None:
            rt.state = rt.state.detach()  # same storage and version counter: still trusted
        if rt.loose is not None:
            rt.loose = [None if r is None else r.detach() for r in rt.loose]

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

    def _row(self, i: int | None) -> Tensor | None:
        if i is None:
            return None
        if self._rt.state is not None:
            return self._rt.state[i]
        return None if self._rt.loose is None else self._rt.loose[i]

    def _set_row(self, i: int, value: Tensor) -> None:
        """Replace one row; the block is restacked at the next call (rows may change shape
        one at a time, as separate V and w assignments do)."""
        if self._rt.loose is None:
            state = self._rt.state
            rows = [None] * self._spec.n_state if state is None else list(state.unbind(0))
        else:
            rows = self._rt.loose
        rows[i] = value
        self._rt.loose, self._rt.state, self._rt.trusted = rows, None, None

    @property
    def V(self) -> Tensor | None:
        """Membrane potential (mV) after the last step, pre-reset; assignable."""
        return self._row(0)

    @V.setter
    def V(self, value: Any) -> None:
        self._set_row(0, self._checked_state(value, "voltage", "V"))

    @property
    def w(self) -> Tensor | None:
        """Adaptation current (mA) after the last step; assignable."""
        return self._row(self._spec.w_row)

    @w.setter
    def w(self, value: Any) -> None:
        if not self.has_w:
            raise AttributeError(f"{type(self).__name__} has no adaptation current w")
        self._set_row(self._spec.w_row, self._checked_state(value, "current", "w"))

    @property
    def last_spike_time(self) -> Tensor | None:
        """Ref models: time of each neuron's last spike (ms; -1e7 after ``init_state``),
        not differentiable; assignable. None for models without a refractory period."""
        row = self._row(self._spec.t_row)
        return None if row is None else row.detach()

    @last_spike_time.setter
    def last_spike_time(self, value: Any) -> None:
        if not self.has_ref:
            raise AttributeError(f"{type(self).__name__} has no refractory period")
        self._set_row(self._spec.t_row, self._checked_state(value, "time", "last_spike_time"))

    @property
    def I(self) -> Tensor | None:  # noqa: E743 (the synaptic current's name)
        """Synaptic current (mA) after the last step (models with ``tau_syn``; else None);
        assignable, differentiable like ``V``."""
        return self._row(self._spec.i_row)

    @I.setter
    def I(self, value: Any) -> None:  # noqa: E743
        if not self.has_syn:
            raise AttributeError(f"{type(self).__name__} has no synaptic current (tau_syn=None)")
        self._set_row(self._spec.i_row, self._checked_state(value, "current", "I"))

    def _state_versions(self) -> tuple[int, ...] | None:
        """The version counters of the state's tensors: an in-place write (even through a
        view such as ``layer.V``) changes them. None where they cannot tell (no state yet,
        or inference tensors, which have no version counter: checked on every call)."""
        state = self._rt.state
        if state is not None:
            return None if state.is_inference() else (state._version,)
        rows = self._rt.loose
        if rows is None or any(r is None or r.is_inference() for r in rows):
            return None
        return tuple(r._version for r in rows)

    def _state_trusted(self) -> bool:
        """The state is as adex produced it (from finite inputs, or the built-in
        initializers): finite, not checked again."""
        if torch.compiler.is_compiling():  # the finiteness check does not run while tracing
            return True
        versions = self._rt.trusted
        return versions is not None and versions == self._state_versions()

    def _state_for_call(self, x_dtype: torch.dtype) -> tuple[Tensor, bool]:
        """The state block of a call and whether it is trusted (:meth:`_state_trusted`,
        read before :meth:`_require_state` stacks assigned rows)."""
        trusted = self._state_trusted()
        return self._require_state(x_dtype), trusted

    def _require_state(self, x_dtype: torch.dtype) -> Tensor:
        """The state block, stacked from assigned rows where needed."""
        if self._rt.state is not None:
            return self._rt.state
        rows = self._rt.loose
        if rows is None or any(r is None for r in rows):
            raise RuntimeError(f"{type(self).__name__}: call init_state(batch_size) first")
        shape, device = rows[0].shape, rows[0].device
        for i, r in enumerate(rows):
            if r.shape != shape:
                names = (
                    ["V"] + (["w"] if self.has_w else [])
                    + (["last_spike_time"] if self.has_ref else [])
                    + (["I"] if self.has_syn else [])
                )  # fmt: skip
                raise ValueError(f"V {tuple(shape)} and {names[i]} {tuple(r.shape)} differ")
            if r.device != device:
                raise ValueError("V, w (and last_spike_time, I) are on different devices")
        t_last = rows[self._spec.t_row] if self.has_ref else None
        w = rows[1] if self.has_w else None
        I = rows[self._spec.i_row] if self.has_syn else None
        return stack_state(rows[0], w, t_last, state_dtype(x_dtype, rows[0].dtype), I)

    # -- dynamics ----------------------------------------------------------------------------

    def _input(self, x: Any, state_shape: tuple[int, ...], device: torch.device,
               leading: tuple[int, ...]) -> Tensor:  # fmt: skip
        """``x`` in mA, checked and expanded to ``(*leading, *state_shape)``."""
        if not isinstance(x, Tensor):
            x = to_canonical(x, "current", "x")
            if isinstance(x, int | float | np.ndarray) and not isinstance(x, bool):
                x = torch.as_tensor(x, device=device)  # numbers and arrays: float32 (float64
                if x.dtype == torch.float64 or not x.is_floating_point():  # only as a tensor)
                    x = x.to(torch.float32)
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"x must be a torch.Tensor (mA) or a current quantity, got {type(x)}"
                )
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
                + self._layout_hint(x, state_shape, leading)
            )
        return x.expand(target)

    def _layout_hint(self, x: Tensor, state_shape: tuple[int, ...],
                     leading: tuple[int, ...]) -> str:  # fmt: skip
        """A hint for a sequence given in the other layout (batch and time swapped)."""
        if not leading or len(state_shape) == len(self.in_size) or x.dim() < 2:
            return ""
        if self.batch_first:  # x was transposed to [T, batch, ...] here
            return "; batch_first=True: the input is [batch, T, ...]"
        if x.shape[0] == state_shape[0]:
            return "; the input is [T, batch, ...]: for batch-first data use batch_first=True"
        return ""

    def _run(self, x: Tensor, state: Tensor, return_states: bool, trusted: bool,
             lengths: Tensor | None = None):  # fmt: skip
        device = x.device
        if state.device != device:
            raise ValueError(
                f"x is on {device} but the state is on {state.device}; call .to() on the "
                "layer or init_state(device=...)"
            )
        compiling = torch.compiler.is_compiling()
        spec = self._spec if not return_states else self._spec_states
        if spec is None:
            spec = self._spec.with_return_states(True)  # raises: checkpoint mode
        rt = self._rt
        # learnable parameters: an optimizer step may have broken a constraint (violations)
        packed, violations = self._packed_for_call(spec.check_finite)
        params = self._live_params if self.learnable else self._params_cache
        if rt.packed_device != device:  # state and layer on different devices: packed
            packed = None  # from the parameters per call
        try:
            out = run_scan(x, state, params, spec, t0_step=rt.t_step if self.has_ref else 0,
                           packed=packed,
                           check_state=not trusted, extra_check=violations,
                           lengths=lengths)  # fmt: skip
        except ExtraCheckError:
            self._raise_invalid_params()
        if violations is not None:
            self._params_checked()
        if return_states:  # V and w are the sequences' last rows (their gradient flows there)
            rows = [out.v_seq[-1]] + ([out.w_seq[-1]] if self.has_w else [])
            rows += [out.state[r] for r in (self._spec.t_row, self._spec.i_row) if r is not None]
            rt.state, rt.loose = None, rows
            rt.trusted = None if compiling else self._state_versions()
        else:
            state = rt.state = out.state
            rt.loose = None
            # (the versions of the new block, as _state_versions reads them)
            rt.trusted = None if compiling or state.is_inference() else (state._version,)
        # the step counter; models without tau_ref never read it, and do not touch it while
        # torch.compile traces (an int attribute would be guarded on: a recompile per call)
        if self.has_ref or not compiling:
            rt.t_step += x.shape[0]
        return out

    def _raise_invalid_params(self) -> None:
        try:
            self.params  # noqa: B018 (validates, naming the parameter)
        except ValueError as err:
            raise ValueError(
                f"{type(self).__name__}: {err}; a learnable parameter left its valid "
                "range (clamp it after optimizer steps)"
            ) from err
        raise ValueError(f"{type(self).__name__}: a learnable parameter is out of range")

    def update(self, x: Any = 0.0) -> Tensor:
        """One step (BrainPy's ``update``): returns the spikes of the new V, shaped like the
        state, in ``x``'s dtype (or ``spike_dtype``); advances ``V`` and ``w``. ``x`` (mA)
        broadcasts to the state shape."""
        x_dtype = x.dtype if isinstance(x, Tensor) else torch.float32
        state, trusted = self._state_for_call(x_dtype)
        x = self._input(x, tuple(state.shape[1:]), state.device, ())
        return self._run(x.unsqueeze(0), state, False, trusted).spikes[0]

    def forward(self, x_seq: Any, return_states: bool = False,
                lengths: Tensor | None = None) -> Tensor | StateSequence:  # fmt: skip
        """Run ``T`` steps over ``x_seq`` ``[T, *state_shape]`` (mA; ``[batch, T, *in_size]``
        with ``batch_first=True``) in one fused scan.

        ``lengths`` (variable-length batches): a ``[batch]`` integer tensor, each in 1..T,
        on x's device. For sample b, steps ``t >= lengths[b]`` leave its state unchanged,
        write zero spikes, and pass no gradient (to x, the state or the parameters); the
        per-step V, w and I of ``return_states`` hold the sample's last values there, so
        ``V[-1]`` is every sample's V after its own last step, as is the state left in the
        layer: the call equals running each sample alone on its own length. The clock
        (``t_step``, read by the Ref models) advances by T for every sample; to keep the
        next call equal to per-sample runs as well, a Ref model's ``last_spike_time``
        after the call is moved forward by ``(T - lengths[b]) * dt`` ms for sample b (the
        time since its last spike is then that of a run alone on its own length).

        Returns the spikes ``[T, *state_shape]`` (``x_seq``'s dtype, or ``spike_dtype``;
        batch-first: ``[batch, T, *in_size]``, a transposed view), or with
        ``return_states=True`` a :class:`StateSequence` with the per-step V and w, all
        differentiable. The final state is left in ``V`` and ``w`` (differentiable too:
        a next call continues the graph; :meth:`detach_state` between chunks cuts it, for
        truncated BPTT).
        """
        x_dtype = x_seq.dtype if isinstance(x_seq, Tensor) else torch.float32
        state, trusted = self._state_for_call(x_dtype)
        state_shape = tuple(state.shape[1:])
        if not isinstance(x_seq, Tensor):
            x_seq = to_canonical(x_seq, "current", "x_seq")
            if isinstance(x_seq, np.ndarray):
                x_seq = torch.as_tensor(x_seq, device=state.device)
            if not isinstance(x_seq, Tensor):
                raise TypeError(
                    f"x_seq must be a tensor (or current quantity) shaped [T, *state], got "
                    f"{type(x_seq).__name__}"
                )
        # batch-first: a [T, batch, ...] view; the outputs are transposed back as views
        batch_first = self._batch_first and len(state_shape) > len(self.in_size)
        if x_seq.dim() != len(state_shape) + 1 or x_seq.shape[int(batch_first)] == 0:
            layout = "[batch, T, *in_size]" if batch_first else "[T, *state_shape]"
            raise ValueError(
                f"x_seq must be {layout} for the state shape {state_shape} with T >= 1, got "
                f"shape {tuple(x_seq.shape)} (a missing time axis? use update() for one step)"
            )
        if batch_first:
            x_seq = x_seq.transpose(0, 1)
        x_seq = self._input(x_seq, state_shape, state.device, (x_seq.shape[0],))
        if lengths is not None:
            lengths = check_lengths(lengths, x_seq.shape[0], state_shape, x_seq.device)
        out = self._run(x_seq, state, return_states, trusted, lengths)
        if return_states:
            seqs = (out.spikes, out.v_seq, out.w_seq) + ((out.i_seq,) if self.has_syn else ())
            out = SynStateSequence(*seqs) if self.has_syn else StateSequence(*seqs)
        else:
            out = out.spikes
        return batch_first_view(out) if batch_first else out

    def get_spike(self, V: Tensor | None = None) -> Tensor:
        """``H((V - V_th)/(V_th - V_reset))`` with the surrogate gradient (default: the stored
        V)."""
        if V is None:
            V = self._require_state(torch.float32)[0]
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
        if self.has_syn:
            tau_syn = self._params_cache.tau_syn
            learn = "tau_syn" in self.learnable
            shown = "learnable" if learn else "per-neuron" if isinstance(tau_syn, Tensor) else None
            parts.append(f"tau_syn={shown} [ms]" if shown else f"tau_syn={tau_syn:g} ms")
        if self.detach_reset:
            parts.append("detach_reset=True")
        if self.spike_dtype is not None:
            parts.append(f"spike_dtype={self.spike_dtype}")
        if self.checkpoint_every is not None:
            parts.append(f"checkpoint_every={self.checkpoint_every}")
        parts += [f"spk_fun={self.spk_fun!r}", f"spk_reset={self.spk_reset!r}",
                  f"dt={self.dt:g} ms", f"backend={self.backend!r}"]  # fmt: skip
        return ", ".join(parts)
