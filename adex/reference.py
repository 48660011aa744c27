"""Pure-PyTorch per-step reference of the AdEx family: the test oracle and the CPU fallback.

It follows BrainPy's ``update`` step by step (``shared/spec/adex-semantics.md`` section 6):
reset at the start of the step from the stored V, ``w += b`` before integration, exponential
Euler for V (with the Jacobian J computed from V itself, so autograd differentiates through
J: the second-order term of section 5), w integrated with the new V, the stored V pre-reset.
Autograd through it gives BrainPy's BPTT gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.utils.checkpoint

from adex.exprel import exprel
from adex.params import RUNAWAY_CEILING, AdExParams
from adex.surrogate import Surrogate


class _Values(NamedTuple):
    """The ten parameters as plain values in the compute dtype (floats or tensors)."""

    R: object
    tau: object
    tau_w: object
    V_th: object
    V_reset: object
    V_rest: object
    V_T: object
    delta_T: object
    a: object
    b: object
    tau_syn: object = None


EXP_CLAMP = 20.0
"""The exponent of the AdEx exponential term is clamped at this value (as BrainPy does)."""


def _exp_euler_V(V_start, w_start, x, p, dt: float, has_exp: bool):
    """One exponential-Euler step of V from ``V_start`` with J computed from V itself.

    Returns ``(V_raw, J)``: the integrated V and the Jacobian dF/dV at ``V_start``."""
    drift = -(V_start - p.V_rest)
    if has_exp:
        z = (V_start - p.V_T) / p.delta_T
        expo = torch.exp(torch.clamp(z, max=EXP_CLAMP))
        # d min(z, 20)/dz as JAX defines it: 1 below, 1/2 at, 0 above the clamp.
        slope = torch.where(z < EXP_CLAMP, 1.0, torch.where(z == EXP_CLAMP, 0.5, 0.0)).to(z.dtype)
        drift = drift + p.delta_T * expo
        jacobian = (-1.0 + expo * slope) / p.tau
    else:
        jacobian = torch.full_like(V_start, -1.0) / p.tau
    if w_start is not None:
        drift = drift - p.R * w_start
    drift = (drift + p.R * x) / p.tau
    return V_start + dt * exprel(dt * jacobian) * drift, jacobian


class _StepConstants(NamedTuple):
    """What a step computes from the parameters alone (built once per scan when no
    parameter requires grad, else once per step, so that autograd sums every parameter's
    gradient in the same order as a single step would)."""

    theta: object  # V_th - V_reset
    ceiling: object  # V_th + RUNAWAY_CEILING * theta
    V_rest: torch.Tensor  # [*S]: the runaway branch's safe start
    V_th: torch.Tensor  # [*S]: the runaway step's stored V
    c_w: torch.Tensor | None  # [*S]: 1 - exp(-dt/tau_w), None without w


def _step_constants(V: torch.Tensor, p, dt: float, has_w: bool) -> _StepConstants:
    theta = p.V_th - p.V_reset
    c_w = None
    if has_w:
        c_w = dt * exprel(torch.full_like(V, -dt) / p.tau_w) / p.tau_w  # 1 - exp(-dt/tau_w)
    return _StepConstants(theta, p.V_th + RUNAWAY_CEILING * theta, torch.zeros_like(V) + p.V_rest,
                          torch.zeros_like(V) + p.V_th, c_w)  # fmt: skip


def adex_step_reference(
    x: torch.Tensor,
    V: torch.Tensor,
    w: torch.Tensor | None,
    params: AdExParams,
    *,
    dt: float,
    surrogate: Surrogate,
    hard_reset: bool = False,
    has_exp: bool = True,
    detach_reset: bool = False,
    refractory: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One BrainPy ``update(x)`` step.

    Args:
        x: input current (mA), broadcastable to V's shape.
        V: stored membrane potential of the previous step (mV, pre-reset).
        w: adaptation current (mA), or None for models without w (ExpIF, LIF).
        params: canonical-unit parameters (an ``AdExParams`` or any object with its fields);
            tensors must already be on V's device and in V's dtype.
        dt: time step (ms).
        surrogate: spike function (forward Heaviside, backward surrogate).
        hard_reset: hard (V -> V_reset) instead of soft (V -> V - (V_th - V_reset)) reset.
        has_exp: include the exponential term (AdEx, ExpIF); False gives LIF.
        detach_reset: stop the gradient through the previous step's spike (the reset path).
        refractory: bool mask (Ref models): where True, V and w stay at their post-reset
            values (BrainPy's ``(t - t_last) < tau_ref``, computed by the caller).

    Returns:
        ``(spike, V_new, w_new)``: spike of the new V (V's dtype, values 0/1), new V (mV,
        pre-reset), new w (mA) or None.
    """
    c = _step_constants(V, params, dt, w is not None)
    return _step(x, V, w, params, c, dt, surrogate, hard_reset, has_exp, detach_reset,
                 refractory)  # fmt: skip


def _step(x, V, w, p, c: _StepConstants, dt: float, surrogate: Surrogate, hard_reset: bool,
          has_exp: bool, detach_reset: bool, refractory):  # fmt: skip
    """:func:`adex_step_reference` with the parameters' constants ``c`` given."""
    theta = c.theta
    spike_prev = surrogate((V - p.V_th) / theta)
    if detach_reset:
        spike_prev = spike_prev.detach()
    if hard_reset:
        V_reset_step = V - (V.detach() - p.V_reset) * spike_prev
    else:
        V_reset_step = V - theta * spike_prev
    w_reset_step = None if w is None else w + p.b * spike_prev
    V_new, _ = _exp_euler_V(V_reset_step, w_reset_step, x, p, dt, has_exp)
    if has_exp:
        # a runaway step (see adex.params.RUNAWAY_CEILING) stores V_th; it integrates from
        # V_rest only so that the discarded branch stays finite and its zero cotangent cannot
        # turn into NaN (0 * inf) in backward. Without a runaway step (the usual case) that
        # integration is the one above (same operations on the same values), so it reruns
        # only when one occurs (and always while torch.compile traces: no host branch)
        with torch.no_grad():
            runaway = (V_reset_step > p.V_T) & ~(V_new <= c.ceiling)
        if torch.compiler.is_compiling() or bool(runaway.any()):
            safe_start = torch.where(runaway, c.V_rest, V_reset_step)
            V_raw, _ = _exp_euler_V(safe_start, w_reset_step, x, p, dt, has_exp)
            V_new = torch.where(runaway, c.V_th, V_raw)
    w_new = None
    if w is not None:
        w_new = w_reset_step + c.c_w * (p.a * (V_new - p.V_rest) - w_reset_step)
    if refractory is not None:
        V_new = torch.where(refractory, V_reset_step, V_new)
        if w is not None:
            w_new = torch.where(refractory, w_reset_step, w_new)
    spike = surrogate((V_new - p.V_th) / theta)
    return spike, V_new, w_new


def adex_scan_reference(
    x: torch.Tensor,
    V0: torch.Tensor,
    w0: torch.Tensor | None,
    params: AdExParams,
    *,
    dt: float,
    surrogate: Surrogate,
    hard_reset: bool = False,
    has_exp: bool = True,
    detach_reset: bool = False,
    tau_ref: float | None = None,
    last_spike_time: torch.Tensor | None = None,
    t0_step: int = 0,
    lengths: torch.Tensor | None = None,
):
    """Run :func:`adex_step_reference` over ``x[0..T-1]``.

    Args:
        x: ``[T, *S]`` input currents (mA); any float dtype (computed in float32, or float64
            when ``x`` or ``V0`` is float64).
        V0, w0: ``[*S]`` initial states (mV, mA); ``w0`` None for models without w.
        params, dt, surrogate, hard_reset, has_exp, detach_reset: as in
            :func:`adex_step_reference`.
        tau_ref: refractory period (ms) for the Ref models, else None.
        last_spike_time: ``[*S]`` time of the last spike before ``x[0]`` (ms; BrainPy starts
            it at -1e7 ms); required with ``tau_ref``.
        t0_step: global index k of ``x[0]``; step k runs at ``t = float(k) * dt`` in the
            compute dtype, as BrainPy's tests set it.
        lengths: ``[S[0]]`` integer steps per sample (counted from ``x[0]``), or None: from
            step ``lengths[b]`` on, sample b holds its state (V, w, last-spike time; the
            per-step V and w repeat its last values) and its spikes are 0.

    Returns:
        ``(spikes [T, *S] in x's dtype, V [T, *S], w [T, *S] or None)``, the per-step V
        pre-reset, in the compute dtype; with ``tau_ref`` a 4th element, the final
        ``last_spike_time`` ``[*S]``.
    """
    compute = torch.float64 if torch.float64 in (x.dtype, V0.dtype) else torch.float32
    p = _Values(**params.cast(compute, x.device))
    V = V0.to(compute)
    w = None if w0 is None else w0.to(compute)
    spikes, Vs, ws = [], [], []
    T = x.shape[0]
    times = [None] * T
    if tau_ref is not None:
        t_last = last_spike_time.to(compute)
        k = torch.arange(t0_step, t0_step + T, dtype=torch.float64).to(compute)
        times = (k * torch.tensor(dt, dtype=compute)).to(x.device).unbind(0)  # float(k) * dt
    # the parameters' constants once, unless a gradient must reach a parameter through them
    shared = None
    if not any(isinstance(v, torch.Tensor) and v.requires_grad for v in p):
        shared = _step_constants(V, p, dt, w is not None)
    # unbind, not x[t]: each x[t]'s backward would write a zero gradient of all of x
    for t, (x_t, t_now) in enumerate(zip(x.to(compute).unbind(0), times, strict=True)):
        refractory = None if tau_ref is None else (t_now - t_last) < tau_ref
        c = shared if shared is not None else _step_constants(V, p, dt, w is not None)
        s, V, w = _step(x_t, V, w, p, c, dt, surrogate, hard_reset, has_exp, detach_reset,
                        refractory)  # fmt: skip
        if lengths is not None:  # a sample past its length holds its state, spikes 0
            on = _active(lengths, t, V)
            s, V = torch.where(on, s, 0.0), torch.where(on, V, Vs[-1] if Vs else V0.to(compute))
            if w is not None:
                w = torch.where(on, w, ws[-1] if ws else w0.to(compute))
        if tau_ref is not None:
            t_new = torch.where(V.detach() >= p.V_th, t_now, t_last)
            t_last = t_new if lengths is None else torch.where(on, t_new, t_last)
        spikes.append(s.to(x.dtype))
        Vs.append(V)
        ws.append(w)
    w_seq = None if w0 is None else torch.stack(ws)
    if tau_ref is not None:
        return torch.stack(spikes), torch.stack(Vs), w_seq, t_last
    return torch.stack(spikes), torch.stack(Vs), w_seq


def synapse_reference(x: torch.Tensor, I0: torch.Tensor, tau_syn, dt: float,
                      lengths: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The synaptic current of every step, ``tau_syn dI/dt = -I + x`` integrated exactly
    with x held over each step: ``I_t = I_{t-1} + (1 - exp(-dt/tau_syn)) (x_t - I_{t-1})``.

    Args:
        x: ``[T, *S]`` input current (mA), any float dtype.
        I0: ``[*S]`` synaptic current before ``x[0]`` (mA).
        tau_syn: synaptic time constant (ms, > 0): a float or a tensor broadcastable to S.
        dt: time step (ms).
        lengths: ``[S[0]]`` integer steps per sample, or None: from step ``lengths[b]`` on,
            sample b's I is held.

    Returns:
        ``[T, *S]`` I (mA) in the compute dtype (float64 when x or I0 is, else float32),
        differentiable in x, I0 and a tensor tau_syn. The membrane step reads ``I_t`` where
        it would read ``x_t``; I does not depend on V, so filtering the whole sequence first
        is the same as filtering at the start of each step."""
    compute = torch.float64 if torch.float64 in (x.dtype, I0.dtype) else torch.float32
    if isinstance(tau_syn, torch.Tensor):
        c = -torch.expm1(-dt / tau_syn.to(device=x.device, dtype=compute))
    else:
        c = -math.expm1(-dt / tau_syn)
    current = I0.to(compute)
    out = []
    for t in range(x.shape[0]):
        new = current + c * (x[t].to(compute) - current)
        current = new if lengths is None else torch.where(_active(lengths, t, new), new, current)
        out.append(current)
    return torch.stack(out)


def _active(lengths: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
    """``t < lengths[b]`` as a bool tensor that broadcasts over ``like`` ``[S[0], ...]``."""
    return (lengths > t).view(-1, *([1] * (like.dim() - 1)))


def reference_scan(x: torch.Tensor, state0: torch.Tensor, params: AdExParams, spec, *,
                   t0_step: int = 0, packed: torch.Tensor | None = None,
                   lengths: torch.Tensor | None = None):  # fmt: skip
    """The reference backend with the fused backend's signature and result
    (``adex.fused.fused_scan``): the state as one block ``[C, *S]`` (V, then w and the
    last-spike time as far as the model has them), settings from the ``ScanSpec``.
    ``packed`` is accepted for the common signature and not read (the reference computes
    with ``params`` in its own dtype, float64 included). With ``spec.checkpoint_every``
    (and a gradient needed) each K-step segment runs under ``torch.utils.checkpoint``.
    ``lengths``: ``[S[0]]`` integer steps per sample, or None (see
    :func:`adex_scan_reference`).

    Returns an ``adex.fused.ScanOutput``."""
    from adex.spec import ScanOutput

    x_dtype, i_seq = x.dtype, None
    if spec.has_syn:  # the membrane reads the synaptic current
        x = i_seq = synapse_reference(x, state0[spec.i_row], params.tau_syn, spec.dt, lengths)
    V0 = state0[0]
    w0 = state0[spec.w_row] if spec.has_w else None
    t_last = state0[spec.t_row].detach() if spec.has_ref else None
    kwargs = dict(params=params, dt=spec.dt, surrogate=spec.surrogate,
                  hard_reset=spec.hard_reset, has_exp=spec.has_exp,
                  detach_reset=spec.detach_reset, tau_ref=spec.tau_ref)  # fmt: skip
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or state0.requires_grad
        or any(isinstance(v, torch.Tensor) and v.requires_grad for _, v in params.items())
    )  # fmt: skip
    if spec.checkpoint_every and needs_grad:
        spikes, V, w, t_last = _checkpointed(x, V0, w0, t_last, t0_step, spec.checkpoint_every,
                                             kwargs, lengths)  # fmt: skip
        v_seq = w_seq = None
    else:
        out = adex_scan_reference(x, V0, w0, last_spike_time=t_last, t0_step=t0_step,
                                  lengths=lengths, **kwargs)  # fmt: skip
        spikes, v_seq, w_seq = out[:3]
        V, w = v_seq[-1], None if w_seq is None else w_seq[-1]
        t_last = out[3] if spec.has_ref else None
        if not spec.return_states:
            v_seq = w_seq = None
    spikes = spikes.to(x_dtype if spec.spike_dtype is None else spec.spike_dtype)
    rows = [V] + ([w] if spec.has_w else []) + ([t_last.to(V.dtype)] if spec.has_ref else [])
    if spec.has_syn:
        rows.append(i_seq[-1].to(V.dtype))
        i_seq = i_seq if spec.return_states else None
    return ScanOutput(spikes, torch.stack(rows), v_seq, w_seq, i_seq)


def _checkpointed(x, V0, w0, last_spike_time, t0_step: int, every: int, kwargs: dict,
                  lengths: torch.Tensor | None = None):  # fmt: skip
    """The reference scan in segments of ``every`` steps under ``torch.utils.checkpoint``:
    only the state between segments (and ``x``) is kept for backward.

    Returns ``(spikes [T, *S], V_last, w_last or None, last_spike_time or None)``."""

    def segment(x_seg, V, w, t_last, k0):
        seg_len = None if lengths is None else lengths - (k0 - t0_step)  # from x_seg[0]
        out = adex_scan_reference(x_seg, V, w, last_spike_time=t_last, t0_step=k0,
                                  lengths=seg_len, **kwargs)  # fmt: skip
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
