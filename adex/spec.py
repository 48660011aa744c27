"""``ScanSpec``: the frozen, validated description of one scan, from module to kernel.

Every setting that does not change from call to call (the model flags, the reset, the
surrogate and its hyper-parameters, dt, the refractory period, the memory options, the
backend, the finiteness check, whether the per-step states are returned) is validated once,
when the spec is built (at module construction, or by ``adex_scan`` for functional callers),
and then travels as this one object. It is also the one place that turns the settings into
kernel arguments: :attr:`ScanSpec.model_flags` and :attr:`ScanSpec.kernel_flags`
(constexprs of the forward and backward kernels), :attr:`ScanSpec.kernel_scalars` (runtime
scalars), :attr:`ScanSpec.key` (the string the custom ops carry) and :meth:`ScanSpec.plan`
(which tensors a call writes and saves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adex.params import ALL_PARAMS, PACKED_ROWS, RUNAWAY_CEILING
from adex.surrogate import Surrogate

BACKENDS = ("auto", "triton", "cpu", "reference")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOAT_DTYPES = (*KERNEL_DTYPES, torch.float64)
SPIKE_DTYPES = (*FLOAT_DTYPES, torch.uint8, torch.bool)
RESETS = ("soft", "hard")


class Plan(NamedTuple):
    """What one call of the fused forward writes, fixed by the spec and by whether a
    gradient is needed (see :meth:`ScanSpec.plan`).

    Attributes:
        needs_grad: some input or parameter requires grad (the backward will run).
        param_grad: the packed parameters require grad (learnable parameters).
        store_v: write the per-step V ``[T, *S]`` (saved for backward, or returned).
        store_w: write the per-step w ``[T, *S]`` (returned, or read by parameter gradients).
        read_w: the backward reads the stored w (the tau_w gradient is wanted).
        store_ref: write the refractory flags (1 bit per neuron-step, read by the backward).
        store_i: write the per-step synaptic current I ``[T, *S]`` (returned, or read by the
            tau_syn gradient).
        read_i: the backward reads the stored I and x (the tau_syn gradient is wanted).
        checkpoint_every: K > 0: write the state before every K-th step instead of the
            per-step sequences (low-memory BPTT); 0 otherwise.
    """

    needs_grad: bool
    param_grad: bool
    store_v: bool
    store_w: bool
    read_w: bool
    store_ref: bool
    checkpoint_every: int
    fwd_flags: dict
    """The forward kernel's constexprs for this plan (model flags, what to store)."""
    bwd_args: dict
    """The backward kernel's scalars and constexprs for this plan, except those of the
    incoming gradients (which are present only per call)."""
    store_i: bool = False
    read_i: bool = False
    stores_more: bool = False
    """Anything besides the spikes and the final state is written (a stored sequence, the
    refractory flags or checkpoints)."""
    launch: dict | None = None
    """The launchers' own cache of the kernel arguments that this plan fixes (filled at the
    first launch; see ``adex.kernels.launch.without_defaults``)."""


class ScanOutput(NamedTuple):
    """What a backend's scan returns (the fused and the reference backends alike).

    Attributes:
        spikes: ``[T, *S]`` 0/1 spikes (the spec's spike dtype, default x's), with
            surrogate gradients.
        state: ``[C, *S]`` state after the last step: V (mV, pre-reset), then w (mA) and
            the last-spike time (ms) as far as the model has them.
        v_seq: ``[T, *S]`` per-step V with ``spec.return_states``, else None.
        w_seq: ``[T, *S]`` per-step w with ``spec.return_states`` (models with w), else None.
        i_seq: ``[T, *S]`` per-step synaptic current I (mA) with ``spec.return_states``
            (models with a synapse), else None.
    """

    spikes: Tensor
    state: Tensor
    v_seq: Tensor | None
    w_seq: Tensor | None
    i_seq: Tensor | None = None


@dataclass(frozen=True)
class ScanSpec:
    """Everything about a scan except its tensors; validated at construction, hashable.

    Attributes:
        has_w: the model has the adaptation current w (AdEx models).
        has_exp: the model has the exponential term (AdEx, ExpIF).
        tau_ref: refractory period (ms, >= 0) of the Ref models; None: no refractory period.
        has_syn: the model has a synaptic current I (``tau_syn dI/dt = -I + x``, integrated
            exactly before each step; the membrane reads I where it read x).
        spk_reset: 'soft' (V -= V_th - V_reset) or 'hard' (V = V_reset).
        surrogate: the spike function (forward Heaviside, backward surrogate gradient).
        dt: time step (ms, finite, > 0).
        detach_reset: no gradient through the reset spike.
        spike_dtype: dtype of the returned spikes (None: the input's).
        checkpoint_every: low-memory BPTT interval K (None: store the per-step V).
        backend: 'auto', 'triton', 'cpu' or 'reference'.
        check_finite: reject NaN/inf inputs before running.
        return_states: return the per-step V and w sequences.
        param_mask: the parameters whose gradients are wanted when the packed parameters
            require grad (bit k: packed row k, ``adex.params.PARAM_KINDS`` order): a layer's
            learnable ones; all ten for functional callers. The backward computes only these
            (and the forward stores w only for the tau_w gradient).
    """

    has_w: bool = True
    has_exp: bool = True
    tau_ref: float | None = None
    spk_reset: str = "soft"
    surrogate: Surrogate = field(default_factory=lambda: _default_surrogate())
    dt: float = 0.1
    detach_reset: bool = False
    spike_dtype: torch.dtype | None = None
    checkpoint_every: int | None = None
    backend: str = "auto"
    check_finite: bool = True
    return_states: bool = False
    param_mask: int = ALL_PARAMS
    has_syn: bool = False
    # derived once in __post_init__, not part of the identity
    model_flags: dict = field(init=False, repr=False, compare=False, hash=False)
    kernel_flags: dict = field(init=False, repr=False, compare=False, hash=False)
    kernel_scalars: dict = field(init=False, repr=False, compare=False, hash=False)
    key: str = field(init=False, repr=False, compare=False, hash=False)
    _plans: tuple = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        self._validate()
        sg = self.surrogate
        model = dict(HARD_RESET=self.hard_reset, HAS_W=self.has_w, HAS_EXP=self.has_exp,
                     HAS_REF=self.has_ref, HAS_SYN=self.has_syn)  # fmt: skip
        flags = dict(model, SURROGATE=sg.kind, DETACH_RESET=self.detach_reset)
        sg0, sg1, sg2, sg3 = sg.params
        scalars = dict(dt=self.dt, ceiling=RUNAWAY_CEILING, sg0=sg0, sg1=sg1, sg2=sg2, sg3=sg3,
                       tau_ref=0.0 if self.tau_ref is None else self.tau_ref)  # fmt: skip
        object.__setattr__(self, "model_flags", model)
        object.__setattr__(self, "kernel_flags", flags)
        object.__setattr__(self, "kernel_scalars", scalars)
        object.__setattr__(self, "key", self._encode())
        plans = tuple(
            self._make_plan(g, p) for g, p in ((False, False), (True, False), (True, True))
        )
        object.__setattr__(self, "_plans", plans)

    # -- derived facts ---------------------------------------------------------------------

    @property
    def has_ref(self) -> bool:
        """The model has a refractory period (and so a last-spike-time state row)."""
        return self.tau_ref is not None

    @property
    def hard_reset(self) -> bool:
        """The reset is hard (V = V_reset)."""
        return self.spk_reset == "hard"

    @property
    def n_state(self) -> int:
        """Rows of the state block ``[C, *S]``: V, then w (has_w), then the last-spike time
        (has_ref), then the synaptic current I (has_syn)."""
        return 1 + self.has_w + self.has_ref + self.has_syn

    @property
    def w_row(self) -> int | None:
        """Row of w in the state block, or None."""
        return 1 if self.has_w else None

    @property
    def t_row(self) -> int | None:
        """Row of the last-spike time in the state block, or None."""
        return 1 + self.has_w if self.has_ref else None

    @property
    def i_row(self) -> int | None:
        """Row of the synaptic current I in the state block, or None."""
        return 1 + self.has_w + self.has_ref if self.has_syn else None

    def plan(self, needs_grad: bool, param_grad: bool) -> Plan:
        """Which tensors a call writes, for this spec and whether gradients are needed
        (``param_grad`` implies ``needs_grad``)."""
        return self._plans[needs_grad + (needs_grad and param_grad)]

    def with_return_states(self, return_states: bool) -> ScanSpec:
        """This spec with ``return_states`` set (itself when it already is)."""
        if return_states == self.return_states:
            return self
        return replace(self, return_states=return_states)

    @staticmethod
    def from_key(key: str) -> ScanSpec:
        """The spec whose :attr:`key` is ``key`` (the custom ops carry specs as strings)."""
        return _decode(key)

    # -- construction ------------------------------------------------------------------------

    def _make_plan(self, needs_grad: bool, param_grad: bool) -> Plan:
        ckpt = self.checkpoint_every if needs_grad and self.checkpoint_every else 0
        store_v = (needs_grad and not ckpt) or self.return_states
        # w' enters only the tau_w gradient: w is stored for it (or recomputed) only if wanted
        read_w = self.has_w and param_grad and bool(self.param_mask >> PACKED_ROWS["tau_w"] & 1)
        store_w = self.has_w and (self.return_states or (read_w and not ckpt))
        store_ref = self.has_ref and needs_grad and not ckpt
        # I_{t-1} and x_t enter only the tau_syn gradient: I is stored for it only if wanted
        read_i = self.has_syn and param_grad and bool(self.param_mask >> PACKED_ROWS["tau_syn"] & 1)
        store_i = self.has_syn and (self.return_states or (read_i and not ckpt))
        fwd_flags = dict(self.model_flags, STORE_V=store_v, STORE_W=store_w,
                         STORE_REF=store_ref, CHECKPOINT=ckpt > 0)  # fmt: skip
        bwd_args = dict(self.kernel_scalars, **self.kernel_flags, PARAM_GRAD=param_grad,
                        PARAM_MASK=self.param_mask, READ_W=read_w, RECOMPUTE=ckpt > 0)  # fmt: skip
        fwd_flags["STORE_I"] = store_i
        bwd_args["READ_I"] = read_i
        stores_more = store_v or store_w or store_ref or store_i or ckpt > 0
        return Plan(needs_grad, param_grad, store_v, store_w, read_w, store_ref, ckpt,
                    fwd_flags, bwd_args, store_i, read_i, stores_more, {})  # fmt: skip

    def _validate(self) -> None:
        if self.spk_reset not in RESETS:
            raise ValueError(f"spk_reset must be 'soft' or 'hard', got {self.spk_reset!r}")
        if not isinstance(self.surrogate, Surrogate):
            raise TypeError(
                f"surrogate (spk_fun) must be an adex.surrogate.Surrogate, got {self.surrogate!r}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        compiling = torch.compiler.is_compiling()  # dt may be symbolic while tracing
        dt = self.dt
        if compiling:
            dt = float(dt)
        if isinstance(dt, bool) or not (
            isinstance(dt, int | float) and math.isfinite(dt) and dt > 0
        ):
            raise ValueError(f"dt must be a finite number of ms > 0, got {dt!r}")
        object.__setattr__(self, "dt", float(dt))
        if self.tau_ref is not None:
            t = float(self.tau_ref) if compiling else self.tau_ref
            if isinstance(t, bool) or not (
                isinstance(t, int | float) and math.isfinite(t) and t >= 0
            ):
                raise ValueError(f"tau_ref must be a finite number of ms >= 0, got {t!r}")
            object.__setattr__(self, "tau_ref", float(t))
        if self.spike_dtype is not None and self.spike_dtype not in SPIKE_DTYPES:
            raise TypeError(
                f"spike_dtype must be None or one of {SPIKE_DTYPES}, got {self.spike_dtype!r}"
            )
        k = self.checkpoint_every
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"checkpoint_every must be None or an int >= 1, got {k!r}")
        if k is not None and self.return_states:
            raise ValueError(
                "checkpoint_every cannot be combined with return_states=True: the per-step V "
                "and w it would return are what the low-memory mode avoids storing"
            )
        m = self.param_mask
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= ALL_PARAMS:
            raise ValueError(f"param_mask must be an int in [0, {ALL_PARAMS}], got {m!r}")
        for name in ("has_w", "has_exp", "detach_reset", "check_finite", "return_states",
                     "has_syn"):  # fmt: skip
            object.__setattr__(self, name, bool(getattr(self, name)))

    def _encode(self) -> str:
        # plain string formatting (no json): torch.compile traces functional callers' specs
        sg = self.surrogate
        spike = None if self.spike_dtype is None else str(self.spike_dtype)[len("torch.") :]
        fields_ = (self.has_w, self.has_exp, self.tau_ref, self.spk_reset, type(sg).__name__,
                   *sg.params, self.dt, self.detach_reset, spike, self.checkpoint_every,
                   self.backend, self.check_finite, self.return_states,
                   self.param_mask, self.has_syn)  # fmt: skip
        return "|".join([str(f) for f in fields_])


def _default_surrogate() -> Surrogate:
    from adex.surrogate import ReluGrad

    return ReluGrad()


@lru_cache(maxsize=1024)
def _decode(key: str) -> ScanSpec:
    import adex.surrogate as surrogates

    (has_w, has_exp, tau_ref, spk_reset, sg_name, p0, p1, p2, p3, dt, detach_reset, spike,
     ckpt, backend, check_finite, return_states, param_mask, has_syn) = key.split("|")  # fmt: skip
    sg_cls = getattr(surrogates, sg_name)
    params = (float(p0), float(p1), float(p2), float(p3))
    sg = sg_cls(**dict(zip(sg_cls.param_names, params, strict=False)))
    return ScanSpec(
        has_w=has_w == "True", has_exp=has_exp == "True",
        tau_ref=None if tau_ref == "None" else float(tau_ref), spk_reset=spk_reset,
        surrogate=sg, dt=float(dt), detach_reset=detach_reset == "True",
        spike_dtype=None if spike == "None" else getattr(torch, spike),
        checkpoint_every=None if ckpt == "None" else int(ckpt), backend=backend,
        check_finite=check_finite == "True", return_states=return_states == "True",
        param_mask=int(param_mask), has_syn=has_syn == "True",
    )  # fmt: skip


def spec_for_call(**settings: Any) -> ScanSpec:
    """A spec for a functional call, cached on its (hashable) settings so that repeated
    calls with the same settings validate once."""
    if torch.compiler.is_compiling():  # traced: no cache (dynamo does not sort the keys)
        return ScanSpec(**settings)
    try:
        return _cached_spec(tuple(sorted(settings.items())))
    except TypeError:  # an unhashable setting: built (and validated) without the cache
        return ScanSpec(**settings)


@lru_cache(maxsize=256)
def _cached_spec(items: tuple) -> ScanSpec:
    return ScanSpec(**dict(items))
