"""``adex_scan``: the validated functional entry point of the multi-step AdEx scan."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import Tensor

from adex.params import RUNAWAY_CEILING, AdExParams
from adex.reference import adex_scan_reference
from adex.surrogate import ReluGrad, Surrogate

BACKENDS = ("auto", "triton", "reference")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FLOAT_DTYPES = (*KERNEL_DTYPES, torch.float64)
SPIKE_DTYPES = (*FLOAT_DTYPES, torch.uint8, torch.bool)


class ScanResult(NamedTuple):
    """Output of :func:`adex_scan`.

    Attributes:
        spikes: ``[T, *S]`` 0/1 spikes in ``x``'s dtype, with surrogate gradients.
        V: ``[T, *S]`` per-step V (mV, pre-reset) with ``return_states=True``, else the
            final V ``[*S]``. float32 (float64 on the float64 reference path).
        w: like ``V`` for the adaptation current (mA); None for models without w.
    """

    spikes: Tensor
    V: Tensor
    w: Tensor | None


class RefScanResult(NamedTuple):
    """Output of :func:`adex_scan` with a refractory period (``tau_ref``): the fields of
    :class:`ScanResult` plus ``last_spike_time`` ``[*S]`` (ms) after the scan."""

    spikes: Tensor
    V: Tensor
    w: Tensor | None
    last_spike_time: Tensor


def check_memory_options(spike_dtype: object, checkpoint_every: object) -> None:
    """Raise on a ``spike_dtype`` outside :data:`SPIKE_DTYPES` (TypeError) or a
    ``checkpoint_every`` that is not None or an int >= 1 (ValueError)."""
    if spike_dtype is not None and spike_dtype not in SPIKE_DTYPES:
        raise TypeError(f"spike_dtype must be None or one of {SPIKE_DTYPES}, got {spike_dtype!r}")
    if checkpoint_every is not None and (
        isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
        or checkpoint_every < 1
    ):  # fmt: skip
        raise ValueError(f"checkpoint_every must be None or an int >= 1, got {checkpoint_every!r}")


def resolve_backend(backend: str, x: Tensor) -> str:
    """'triton' or 'reference' for ``backend`` on ``x``; raises where it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda and x.dtype in KERNEL_DTYPES else "reference"
    if backend == "triton":
        import adex

        if not adex.HAS_TRITON:
            raise RuntimeError("backend='triton' needs the triton package, which is missing")
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"the fused kernels take float32/bfloat16/float16 input, got {x.dtype}; "
                "use backend='reference' for float64"
            )
        if not x.is_cuda:
            from adex.kernels.launch import INTERPRETED

            if not INTERPRETED:
                raise RuntimeError(
                    "backend='triton' on CPU tensors needs the Triton interpreter: set "
                    "TRITON_INTERPRET=1 before importing adex (or use a CUDA device)"
                )
    return backend


def _check_tensor(name: str, t: object, shape: tuple[int, ...], device: torch.device) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (x.shape[1:]), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}")
    return t


def _in_size(params: AdExParams) -> tuple[int, ...] | None:
    shapes = {tuple(v.shape) for _, v in params.items() if isinstance(v, Tensor) and v.dim() > 0}
    if len(shapes) > 1:
        raise ValueError(f"per-neuron parameters disagree in shape: {sorted(shapes)}")
    return shapes.pop() if shapes else None


def adex_scan(
    x: Tensor,
    V0: Tensor,
    w0: Tensor | None,
    params: AdExParams | None = None,
    *,
    dt: float = 0.1,
    surrogate: Surrogate | None = None,
    spk_reset: str = "soft",
    has_exp: bool = True,
    return_states: bool = False,
    backend: str = "auto",
    check_finite: bool = True,
    detach_reset: bool = False,
    tau_ref: float | None = None,
    last_spike_time: Tensor | None = None,
    t0_step: int = 0,
    packed_params: Tensor | None = None,
    spike_dtype: torch.dtype | None = None,
    checkpoint_every: int | None = None,
) -> ScanResult | RefScanResult:
    """Simulate T steps of AdExIF (or ExpIF / LIF) neurons with BrainPy's semantics.

    The whole forward scan runs as one fused Triton kernel (``backend='triton'``) and so does
    its surrogate-gradient BPTT backward; ``backend='reference'`` runs the per-step PyTorch
    reference, which autograd differentiates.

    Args:
        x: ``[T, *S]`` input current (mA), float32/bfloat16/float16 (float64 on the
            reference). ``S`` is ``(batch, *in_size)`` or ``in_size``.
        V0: ``[*S]`` membrane potential before the first step (mV, pre-reset as BrainPy
            stores it: a neuron with ``V0 >= V_th`` is reset by the first step).
        w0: ``[*S]`` adaptation current (mA), or None for models without w (ExpIF, LIF).
        params: canonical-unit parameters (default: BrainPy's AdExIF defaults). Per-neuron
            tensors are shaped like the trailing dims of ``S``.
        dt: time step (ms), > 0.
        surrogate: spike function (default ``ReluGrad()``).
        spk_reset: 'soft' (V -= V_th - V_reset) or 'hard' (V = V_reset).
        has_exp: False drops the exponential term (LIF).
        return_states: return per-step V and w sequences instead of the final states.
        backend: 'auto' (fused kernels on CUDA, reference otherwise), 'triton' or 'reference'.
        check_finite: raise ``ValueError`` if ``x``, ``V0`` or ``w0`` holds NaN/inf (one
            reduction and a host sync; skipped while ``torch.compile`` traces).
        detach_reset: stop the gradient through the reset (the previous step's spike).
        tau_ref: refractory period (ms, >= 0) of the Ref models: while
            ``t - last_spike_time < tau_ref`` (in floating point, as BrainPy tests it) V and
            w stay at their post-reset values and the input has no effect. None: no period.
        last_spike_time: ``[*S]`` time of the last spike before ``x[0]`` (ms); required
            with ``tau_ref`` (BrainPy starts it at -1e7 ms). Not differentiable.
        t0_step: global step index k of ``x[0]``; step k runs at ``t = float(k) * dt``.
        packed_params: ``params.packed(...)`` precomputed on ``x``'s device (modules cache it).
        spike_dtype: dtype of the returned spikes: None (``x``'s dtype), another float dtype,
            or ``torch.uint8`` / ``torch.bool`` (1 byte per neuron-step written instead of
            2-4; integer spikes carry no gradient, so they are refused while one is needed).
        checkpoint_every: low-memory BPTT: instead of the per-step V (4 B per neuron-step),
            save the state every K steps (4-12 B per K neuron-steps) plus a reference to
            ``x``, and recompute each K-step segment inside the backward kernel (on the
            reference backend: ``torch.utils.checkpoint`` per segment). Pays off when ``x``
            is kept alive anyway; cannot be combined with ``return_states``.

    Returns:
        :class:`ScanResult` ``(spikes, V, w)``, or with ``tau_ref`` a
        :class:`RefScanResult` that adds ``last_spike_time``.

    Example:
        >>> import torch, adex
        >>> x = torch.full((100, 4), 20.0)  # 100 steps of 20 mA into 4 neurons
        >>> out = adex.adex_scan(x, torch.full((4,), -65.0), torch.zeros(4))
        >>> out.spikes.shape, out.V.shape
        (torch.Size([100, 4]), torch.Size([4]))
    """
    params = AdExParams() if params is None else params
    surrogate = ReluGrad() if surrogate is None else surrogate
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be [T, *state_shape] with T >= 1, got shape {tuple(x.shape)}")
    if not isinstance(params, AdExParams):
        raise TypeError(f"params must be an AdExParams, got {type(params).__name__}")
    if not isinstance(surrogate, Surrogate):
        raise TypeError(f"surrogate must be an adex.surrogate.Surrogate, got {surrogate!r}")
    if spk_reset not in ("soft", "hard"):
        raise ValueError(f"spk_reset must be 'soft' or 'hard', got {spk_reset!r}")
    compiling = torch.compiler.is_compiling()  # scalars may be symbolic while tracing
    if not compiling and not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number of ms > 0, got {dt!r}")
    state_shape = tuple(x.shape[1:])
    V0 = _check_tensor("V0", V0, state_shape, x.device)
    if w0 is not None:
        w0 = _check_tensor("w0", w0, state_shape, x.device)
    in_size = _in_size(params)
    if in_size is not None and state_shape[len(state_shape) - len(in_size) :] != in_size:
        raise ValueError(
            f"per-neuron parameters have shape {in_size}, which must be the trailing "
            f"dims of the state shape {state_shape}"
        )
    if tau_ref is not None:
        finite = compiling or (isinstance(tau_ref, int | float) and math.isfinite(tau_ref))
        if not (finite and tau_ref >= 0):
            raise ValueError(f"tau_ref must be a finite number of ms >= 0, got {tau_ref!r}")
        if last_spike_time is None:
            raise ValueError("last_spike_time ([*S], ms) is required with tau_ref")
        last_spike_time = _check_tensor("last_spike_time", last_spike_time, state_shape, x.device)
    if not compiling and (isinstance(t0_step, bool) or not isinstance(t0_step, int) or t0_step < 0):
        raise ValueError(f"t0_step must be an int >= 0, got {t0_step!r}")
    check_memory_options(spike_dtype, checkpoint_every)
    if checkpoint_every is not None and return_states:
        raise ValueError(
            "checkpoint_every cannot be combined with return_states=True: the per-step V "
            "and w it would return are what the low-memory mode avoids storing"
        )
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or V0.requires_grad or (w0 is not None and w0.requires_grad)
        or (packed_params is not None and packed_params.requires_grad)
        or any(isinstance(v, Tensor) and v.requires_grad for _, v in params.items())
    )  # fmt: skip
    if needs_grad and spike_dtype is not None and not spike_dtype.is_floating_point:
        raise ValueError(
            f"spike_dtype={spike_dtype} carries no gradient, but one is required (an input "
            "or parameter requires grad): use a floating spike dtype for training, or "
            "torch.no_grad() for simulation"
        )
    checkpoint_every = checkpoint_every if needs_grad else None
    if check_finite and not compiling:
        for name, t in (("x", x), ("V0", V0), ("w0", w0)):
            if t is not None and not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{name} contains NaN or inf")

    hard = spk_reset == "hard"
    if resolve_backend(backend, x) == "reference":
        kwargs = dict(params=params, dt=float(dt), surrogate=surrogate, hard_reset=hard,
                      has_exp=has_exp, detach_reset=detach_reset, tau_ref=tau_ref)  # fmt: skip
        if checkpoint_every is None:
            out = adex_scan_reference(x, V0, w0, last_spike_time=last_spike_time,
                                      t0_step=t0_step, **kwargs)  # fmt: skip
            spikes, V, w = out[:3]
            t_last = out[3] if tau_ref is not None else None
            if not return_states:
                V, w = V[-1], None if w is None else w[-1]
        else:
            spikes, V, w, t_last = _checkpointed_reference(
                x, V0, w0, last_spike_time, t0_step, checkpoint_every, kwargs
            )
        if spike_dtype is not None:
            spikes = spikes.to(spike_dtype)
        if tau_ref is not None:
            return RefScanResult(spikes, V, w, t_last)
        return ScanResult(spikes, V, w)

    has_w = w0 is not None
    n_neurons = math.prod(in_size) if in_size is not None else 1
    if packed_params is None:
        packed_params = params.packed(n_neurons, x.device)
    V0f = V0.to(torch.float32).contiguous()
    w0f = w0.to(torch.float32).contiguous() if has_w else V0f
    param_grad = torch.is_grad_enabled() and packed_params.requires_grad  # implies needs_grad
    checkpointing = checkpoint_every is not None
    store_v = (needs_grad and not checkpointing) or return_states
    store_w = (return_states or (param_grad and not checkpointing)) and has_w
    has_ref = tau_ref is not None
    x = x.contiguous()
    t_last0 = last_spike_time.detach().to(torch.float32).contiguous() if has_ref else None
    if needs_grad or compiling:  # the custom op: autograd and torch.compile see through it
        spikes, v_seq, w_seq, v_last, w_last, _, t_last = torch.ops.adex.scan_fwd(
            x, V0f, w0f, packed_params, float(dt), RUNAWAY_CEILING,
            surrogate.kind, list(surrogate.params), hard, has_w, has_exp, store_v, store_w,
            t_last0, float(tau_ref) if has_ref else -1.0, t0_step, detach_reset, spike_dtype,
            checkpoint_every or 0,
        )  # fmt: skip
    else:  # eager, no gradient: the launcher itself (the op's dispatch costs more than a step)
        from adex.kernels import adex_scan_fwd

        spikes, v_seq, w_seq, v_last, w_last, _, t_last = adex_scan_fwd(
            x, V0f, w0f, packed_params, float(dt), RUNAWAY_CEILING, hard, has_w, has_exp,
            store_v, store_w, float(tau_ref) if has_ref else None, t_last0, t0_step, spike_dtype,
        )  # fmt: skip
    # w_seq is also written (4 B per neuron-step more) for parameter gradients
    V, w = (v_seq, w_seq) if return_states else (v_last, w_last)
    w = w if has_w else None
    if has_ref:
        return RefScanResult(spikes, V, w, t_last)
    return ScanResult(spikes, V, w)


def _checkpointed_reference(
    x: Tensor,
    V0: Tensor,
    w0: Tensor | None,
    last_spike_time: Tensor | None,
    t0_step: int,
    every: int,
    kwargs: dict,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The reference scan in segments of ``every`` steps under ``torch.utils.checkpoint``:
    only the state between segments (and ``x``) is kept for backward.

    Returns ``(spikes [T, *S], V_last, w_last or None, last_spike_time or None)``."""

    def segment(x_seg, V, w, t_last, k0):
        out = adex_scan_reference(x_seg, V, w, last_spike_time=t_last, t0_step=k0, **kwargs)
        return (out[0], out[1][-1], None if w is None else out[2][-1],
                out[3] if t_last is not None else None)  # fmt: skip

    spikes = []
    V, w, t_last = V0, w0, last_spike_time
    for start in range(0, x.shape[0], every):
        s, V, w, t_last = torch.utils.checkpoint.checkpoint(
            segment, x[start : start + every], V, w, t_last, t0_step + start,
            use_reentrant=False,
        )  # fmt: skip
        spikes.append(s)
    return torch.cat(spikes), V, w, t_last
