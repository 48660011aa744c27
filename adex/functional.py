"""The functional entry points of the multi-step AdEx scan: ``adex_scan`` (validated, for
any caller) and ``run_scan`` (the per-call work shared with the modules: backend choice,
finiteness check, the backend's scan)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from adex.params import AdExParams, PackedParams
from adex.reference_op import reference_backend
from adex.spec import BACKENDS, FLOAT_DTYPES, KERNEL_DTYPES, ScanOutput, ScanSpec, spec_for_call
from adex.surrogate import ReluGrad, Surrogate

try:
    from adex.fused import FiniteCheck, fused_scan
except ImportError:  # no Triton on this platform (resolve_backend says so when asked)
    FiniteCheck = fused_scan = None
try:
    from adex.cpu.autograd import cpu_scan
except ImportError:  # no numba on this platform: 'auto' falls back to the reference
    cpu_scan = None

CPU_DTYPES = (torch.float32, torch.float64)
"""The dtypes that ``backend='auto'`` runs on the fused CPU kernels (CPU tensors)."""

SCAN_BACKENDS = {"triton": fused_scan, "cpu": cpu_scan, "reference": reference_backend}
"""The backends' scans, with one signature ``(x, state0, params, spec, *, t0_step, packed)``
and one result (``adex.fused.ScanOutput``); the reference goes through a custom op while
``torch.compile`` traces (``adex.reference_op``)."""


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


class SynScanResult(NamedTuple):
    """Output of :func:`adex_scan` with a synapse (``I0``): the fields of
    :class:`ScanResult`, then ``I`` (the synaptic current, mA, shaped like ``V``) and
    ``last_spike_time`` (``[*S]`` ms with ``tau_ref``, else None)."""

    spikes: Tensor
    V: Tensor
    w: Tensor | None
    I: Tensor
    last_spike_time: Tensor | None


def resolve_backend(backend: str, x: Tensor) -> str:
    """'triton', 'cpu' or 'reference' for ``backend`` ('auto', 'triton', 'cpu',
    'reference') on ``x``; raises where it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _backend_for(backend, x)


def _backend_for(backend: str, x: Tensor) -> str:
    """:func:`resolve_backend` for a backend name a spec validated already."""
    if backend == "auto":
        if x.is_cuda and x.dtype in KERNEL_DTYPES:
            return "triton"
        # the CPU kernels are opaque to torch.compile: traced calls take the reference
        cpu = x.device.type == "cpu" and x.dtype in CPU_DTYPES and cpu_scan is not None
        return "cpu" if cpu and not torch.compiler.is_compiling() else "reference"
    if backend == "cpu":
        if cpu_scan is None:
            raise RuntimeError("backend='cpu' needs the numba package, which is missing")
        if x.device.type != "cpu":
            raise ValueError(f"backend='cpu' takes CPU tensors, got x on {x.device}")
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "backend='cpu' cannot be traced by torch.compile (numba kernels); use "
                "backend='auto' (the reference while tracing) or 'reference'"
            )
    if backend == "triton":
        if fused_scan is None:
            raise RuntimeError(
                "backend='triton' needs the triton package, which is not installed: "
                "`pip install triton` (torch's CUDA wheels bring it), or use "
                "backend='reference' (or 'auto', which picks it on CPU)"
            )
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"the fused kernels take float32/bfloat16/float16 input, got {x.dtype}; "
                "use backend='reference' for float64"
            )
        if not x.is_cuda and not _interpreted():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs the Triton interpreter: set "
                "TRITON_INTERPRET=1 before importing adex (or use a CUDA device)"
            )
    return backend


def _interpreted() -> bool:
    """Whether the kernels run under the Triton interpreter (CPU tensors)."""
    if not _INTERPRETED:  # imported only where it is asked for
        from adex.kernels.launch import INTERPRETED

        _INTERPRETED.append(INTERPRETED)
    return _INTERPRETED[0]


_INTERPRETED: list[bool] = []


def run_scan(x: Tensor, state0: Tensor, params: AdExParams | Callable[[], AdExParams],
             spec: ScanSpec, *,
             t0_step: int = 0, packed: Tensor | None = None, check_state: bool = True,
             extra_check: Tensor | None = None,
             lengths: Tensor | None = None) -> ScanOutput:  # fmt: skip
    """One call of a validated scan: choose the backend, check finiteness, run.

    Args:
        x: ``[T, *S]`` input current (mA), shape and dtype already checked.
        state0: ``[C, *S]`` state before ``x[0]`` (rows V, w, last-spike time as far as
            ``spec`` has them).
        params, packed: the parameters (or a zero-argument callable returning them, called
            only when the backend reads them), and their packed ``[11, N]`` form when cached.
        spec: the scan's settings.
        t0_step: global step index of ``x[0]``.
        check_state: with ``spec.check_finite``, check the state's V and w rows too (the
            modules skip it for states that adex produced itself).
        extra_check: a 0-dim float tensor, finite where some other check passed and NaN or
            inf where it failed (e.g. a learnable-parameter constraint), read in the same
            host sync as the finiteness check; :class:`ExtraCheckError` reports its failure,
            which the caller explains.
        lengths: ``[S[0]]`` int32 steps per sample from :func:`check_lengths`, or None.

    The finiteness checks cost one host sync: on the fused backend the forward kernel runs
    them on the values it reads anyway (no extra pass over x) and sets a flag read after
    the launch; the other backends sum each checked tensor first. A failure raises the same
    ``ValueError`` naming the tensor either way, and nothing the call computed is kept.
    """
    backend = _backend_for(spec.backend, x)
    check = None  # the checks the fused forward runs itself (in the same pass over x)
    if not torch.compiler.is_compiling() and (spec.check_finite or extra_check is not None):
        check_state = check_state and spec.check_finite
        if backend == "triton":
            check = finite_check(x.device, spec.check_finite, check_state, extra_check)
        else:
            _check_finite(x, state0, spec, check_state, extra_check)
    if spec.spike_dtype is not None and not spec.spike_dtype.is_floating_point:
        _refuse_gradient(x, state0, params, packed, spec.spike_dtype)
    if callable(params) and (backend == "reference" or packed is None):
        params = params()
    if backend == "triton":
        if state0.dtype != torch.float32:
            state0 = state0.to(torch.float32)
        out = fused_scan(x, state0, params, spec, t0_step=t0_step, packed=packed,
                         lengths=lengths, check=check)  # fmt: skip
        if check is not None and check.flag.item():
            check.flag.zero_()
            _name_non_finite(x, state0, spec, check.state, check.extra)
            # the kernel saw a NaN or inf that the exact tests no longer find: x or the
            # state was written between the launch and the tests (another stream, thread)
            raise ValueError("x or the state contains NaN or inf")
    elif lengths is None:
        return SCAN_BACKENDS[backend](x, state0, params, spec, t0_step=t0_step, packed=packed)
    else:
        out = SCAN_BACKENDS[backend](x, state0, params, spec, t0_step=t0_step, packed=packed,
                                     lengths=lengths)  # fmt: skip
    if lengths is not None and spec.has_ref:
        out = out._replace(state=shift_held_clock(out.state, lengths, x.shape[0], spec))
    return out


def finite_check(device: torch.device, x: bool, state: bool, extra: Tensor | None) -> FiniteCheck:
    """The fused forward's finiteness checks on ``device`` (see ``FiniteCheck``), with this
    thread's flag (:func:`finite_flag`); cached where there is no ``extra`` tensor."""
    if extra is not None:
        if extra.device != device:
            extra = extra.to(device)
        return FiniteCheck.of(finite_flag(device), x, state, extra)
    key = (device, threading.get_ident(), x, state)
    check = _FINITE_CHECKS.get(key)
    if check is None:
        check = _FINITE_CHECKS[key] = FiniteCheck.of(finite_flag(device), x, state, None)
    return check


def finite_flag(device: torch.device) -> Tensor:
    """The ``[1]`` int32 flag of the fused forward's finiteness check on ``device`` for this
    thread: 0 between calls (a failed check clears it before raising)."""
    key = (device, threading.get_ident())
    flag = _FINITE_FLAGS.get(key)
    if flag is None:
        with torch.inference_mode(False):  # (cleared in place by any later call)
            flag = _FINITE_FLAGS[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return flag


_FINITE_FLAGS: dict[tuple[torch.device, int], Tensor] = {}
_FINITE_CHECKS: dict[tuple[torch.device, int, bool, bool], FiniteCheck] = {}


def shift_held_clock(state: Tensor, lengths: Tensor, T: int, spec: ScanSpec) -> Tensor:
    """The state after a call with ``lengths``, its last-spike-time row (ms) moved forward
    by ``(T - lengths[b]) * dt`` for sample b, for every backend alike.

    The caller's clock advances by T steps for every sample (the next call starts at step
    ``t0_step + T``), while sample b ran only ``lengths[b]`` of them; shifting its last
    spike by the steps it held keeps the time since that spike what it would be had the
    sample run alone on its own length and continued from there, so a next call equals
    per-sample runs too (to the rounding of the shift, one float addition in the state's
    dtype; exact where dt and the times are binary fractions).

    Args:
        state: ``[C, *S]`` state after the call (row ``spec.t_row`` the last-spike time).
        lengths: ``[S[0]]`` int32 steps each sample ran.
        T: steps of the call. spec: the scan's settings (a Ref model's).

    Returns:
        ``[C, *S]``, the other rows unchanged (and still differentiable).
    """
    t = spec.t_row
    held = (T - lengths).to(state.dtype) * spec.dt  # [S[0]] ms
    t_last = state[t] + held.view(-1, *([1] * (state.dim() - 2)))
    return torch.cat([state[:t], t_last.unsqueeze(0), state[t + 1 :]])


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_lengths(lengths: object, T: int, state_shape: tuple[int, ...],
                  device: torch.device) -> Tensor:  # fmt: skip
    """``lengths`` of a multi-step call, validated: an integer tensor ``[batch]``
    (``batch = state_shape[0]``) on ``device`` with every value in ``1..T``. Returns it as
    contiguous int32. Raises ``TypeError`` (not an integer tensor) or ``ValueError`` (shape,
    device, range; the range check is one host sync, skipped while compiling)."""
    if not isinstance(lengths, Tensor):
        raise TypeError(f"lengths must be an integer torch.Tensor, got {type(lengths).__name__}")
    if lengths.dtype not in _INT_DTYPES:
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if len(state_shape) < 2:
        raise ValueError(
            f"lengths needs a batch: the state shape {state_shape} has no batch dimension "
            "(init_state(batch_size))"
        )
    if tuple(lengths.shape) != (state_shape[0],):
        raise ValueError(
            f"lengths must have shape ({state_shape[0]},) (one per sample), got "
            f"{tuple(lengths.shape)}"
        )
    if lengths.device != device:
        raise ValueError(f"lengths is on device {lengths.device} but x is on {device}")
    if not torch.compiler.is_compiling():
        lo, hi = (int(v) for v in torch.aminmax(lengths.to(torch.int64)))
        if lo < 1 or hi > T:
            raise ValueError(f"lengths must be in 1..T = 1..{T}, got values in {lo}..{hi}")
    return lengths.to(torch.int32).contiguous()


def _refuse_gradient(x: Tensor, state0: Tensor, params, packed: Tensor | None,
                     spike_dtype: torch.dtype) -> None:  # fmt: skip
    """Integer spikes carry no gradient: raise when one is required."""
    if not torch.is_grad_enabled():
        return
    if isinstance(packed, PackedParams):
        params_grad = any(p.requires_grad for p in packed.learnable)
    elif packed is not None:
        params_grad = packed.requires_grad
    else:
        params = params() if callable(params) else params
        params_grad = any(isinstance(v, Tensor) and v.requires_grad for _, v in params.items())
    if x.requires_grad or state0.requires_grad or params_grad:
        raise ValueError(
            f"spike_dtype={spike_dtype} carries no gradient, but one is required (an input "
            "or parameter requires grad): use a floating spike dtype for training, or "
            "torch.no_grad() for simulation"
        )


class ExtraCheckError(ValueError):
    """Raised by :func:`run_scan` when its ``extra_check`` failed (is not finite)."""


def _check_finite(x: Tensor, state0: Tensor, spec: ScanSpec, check_state: bool,
                  extra: Tensor | None) -> None:  # fmt: skip
    """One reduction per tensor and one host sync for every check: a sum is finite exactly
    when every element is (or it overflowed: the exact test then runs and names the
    failing tensor, or finds none and passes)."""
    total = None
    if spec.check_finite:  # (detached only where a graph would be recorded: detach costs)
        total = (x.detach() if x.requires_grad else x).sum(dtype=torch.float32)
        if check_state:
            state0 = state0.detach() if state0.requires_grad else state0
            total = total + state0.sum(dtype=torch.float32)
    if extra is not None:  # finite, or NaN or inf where the extra check failed
        total = extra if total is None else total + extra
    if not math.isfinite(total.item()):
        _name_non_finite(x, state0, spec, check_state, extra)


def _name_non_finite(x: Tensor, state0: Tensor, spec: ScanSpec, check_state: bool,
                     extra: Tensor | None) -> None:  # fmt: skip
    """After a failed quick check: the exact test of each checked tensor, raising
    ``ValueError`` that names the first one with a NaN or inf (:class:`ExtraCheckError`
    where only ``extra`` failed); returns where none has (a sum that overflowed)."""
    if spec.check_finite:
        names = [("x", x)]
        if check_state:
            names += [("V0", state0[0])] + ([("w0", state0[spec.w_row])] if spec.has_w else [])
            if spec.has_ref:
                names.append(("last_spike_time", state0[spec.t_row]))
            if spec.has_syn:
                names.append(("I0", state0[spec.i_row]))
        for name, t in names:
            if not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{name} contains NaN or inf")
    if extra is not None and not math.isfinite(extra.item()):
        raise ExtraCheckError("extra check failed")


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


def stack_state(V: Tensor, w: Tensor | None, last_spike_time: Tensor | None,
                dtype: torch.dtype, I: Tensor | None = None) -> Tensor:  # fmt: skip
    """The state block ``[C, *S]`` in ``dtype``: V, then w, the last-spike time (not
    differentiable) and the synaptic current I where given."""
    rows = [V, w, None if last_spike_time is None else last_spike_time.detach(), I]
    # (a row already in dtype is stacked as it is: ``.to`` costs the host even as a no-op)
    return torch.stack([r if r.dtype == dtype else r.to(dtype) for r in rows if r is not None])


def state_dtype(x_dtype: torch.dtype, V_dtype: torch.dtype) -> torch.dtype:
    """The state block's dtype: float64 when x or V is (the float64 reference), else
    float32 (the kernels' and the reference's compute dtype for every other input)."""
    return torch.float64 if torch.float64 in (x_dtype, V_dtype) else torch.float32


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
    I0: Tensor | None = None,
    lengths: Tensor | None = None,
) -> ScanResult | RefScanResult | SynScanResult:
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
        backend: 'auto' (fused Triton kernels on CUDA, fused CPU kernels on CPU float32/
            float64, reference otherwise), 'triton', 'cpu' or 'reference'.
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
        I0: ``[*S]`` synaptic current before ``x[0]`` (mA): the model then has a synapse,
            ``tau_syn dI/dt = -I + x`` integrated exactly before each step, and the membrane
            reads I where it would read x; ``params.tau_syn`` (ms, > 0) is required with it.
            None: no synapse.
        lengths: ``[S[0]]`` integer steps per sample (1..T), or None (every sample runs T
            steps): from step ``lengths[b]`` on sample b holds its state (the per-step V, w,
            I repeat its last values), writes zero spikes and passes no gradient through
            those steps; the final state is each sample's state after its own last step,
            except that with ``tau_ref`` the returned ``last_spike_time`` is moved forward
            by ``(T - lengths[b]) * dt``: continued at ``t0_step + T``, sample b then sees
            the time since its last spike of a run alone on its own length
            (:func:`shift_held_clock`).

    Returns:
        :class:`ScanResult` ``(spikes, V, w)``, or with ``tau_ref`` a
        :class:`RefScanResult` that adds ``last_spike_time``, or with ``I0`` a
        :class:`SynScanResult` ``(spikes, V, w, I, last_spike_time)``.

    Example:
        >>> import torch, adex
        >>> x = torch.full((100, 4), 20.0)  # 100 steps of 20 mA into 4 neurons
        >>> out = adex.adex_scan(x, torch.full((4,), -65.0), torch.zeros(4))
        >>> out.spikes.shape, out.V.shape
        (torch.Size([100, 4]), torch.Size([4]))
    """
    params = AdExParams() if params is None else params
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be [T, *state_shape] with T >= 1, got shape {tuple(x.shape)}")
    if not isinstance(params, AdExParams):
        raise TypeError(f"params must be an AdExParams, got {type(params).__name__}")
    spec = spec_for_call(
        has_w=w0 is not None, has_exp=has_exp, tau_ref=tau_ref, spk_reset=spk_reset,
        surrogate=ReluGrad() if surrogate is None else surrogate, dt=dt,
        detach_reset=detach_reset, spike_dtype=spike_dtype, checkpoint_every=checkpoint_every,
        backend=backend, check_finite=check_finite, return_states=return_states,
        has_syn=I0 is not None,
    )  # fmt: skip
    state_shape = tuple(x.shape[1:])
    if (I0 is None) != (params.tau_syn is None):
        raise ValueError("I0 (the synaptic current, mA) and params.tau_syn go together")
    if I0 is not None:
        I0 = _check_tensor("I0", I0, state_shape, x.device)
    V0 = _check_tensor("V0", V0, state_shape, x.device)
    if w0 is not None:
        w0 = _check_tensor("w0", w0, state_shape, x.device)
    in_size = params.neuron_shape()
    if in_size is not None and state_shape[len(state_shape) - len(in_size) :] != in_size:
        raise ValueError(
            f"per-neuron parameters have shape {in_size}, which must be the trailing "
            f"dims of the state shape {state_shape}"
        )
    if tau_ref is not None:
        if last_spike_time is None:
            raise ValueError("last_spike_time ([*S], ms) is required with tau_ref")
        last_spike_time = _check_tensor("last_spike_time", last_spike_time, state_shape, x.device)
    compiling = torch.compiler.is_compiling()  # scalars may be symbolic while tracing
    if not compiling and (isinstance(t0_step, bool) or not isinstance(t0_step, int) or t0_step < 0):
        raise ValueError(f"t0_step must be an int >= 0, got {t0_step!r}")
    state0 = stack_state(V0, w0, last_spike_time if spec.has_ref else None,
                         state_dtype(x.dtype, V0.dtype), I0)  # fmt: skip
    if lengths is not None:
        lengths = check_lengths(lengths, x.shape[0], state_shape, x.device)
    out = run_scan(x, state0, params, spec, t0_step=t0_step, packed=packed_params,
                   lengths=lengths)  # fmt: skip
    if return_states:
        V, w, I = out.v_seq, out.w_seq, out.i_seq
    else:
        V, w = out.state[0], out.state[spec.w_row] if spec.has_w else None
        I = out.state[spec.i_row] if spec.has_syn else None
    t_last = out.state[spec.t_row].detach() if spec.has_ref else None
    if spec.has_syn:
        return SynScanResult(out.spikes, V, w, I, t_last)
    if spec.has_ref:
        return RefScanResult(out.spikes, V, w, t_last)
    return ScanResult(out.spikes, V, w)
