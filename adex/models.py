"""The AdEx family as modules with BrainPy's signatures and defaults: AdExIF, ExpIF, LIF,
AdExIFRef, ExpIFRef; AdLIF, AdLIFRef (AdExIF without the exponential term); LI (the
non-spiking leaky-integrator readout)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adex.init import Constant
from adex.module import SpikingNeuron
from adex.surrogate import Surrogate
from adex.units import u

_COMMON_DOC = """
    Every physical argument takes a pint quantity (``adex.u``) or a number in the canonical
    unit (mV, ms, mA, ohm, S); scalars, or per-neuron arrays/tensors broadcastable to
    ``in_size``. They are converted and validated once, at construction.

    Common args:
        in_size: neurons per sample (int or shape).
        V_initializer: initial V (``adex.init`` initializer, quantity, number or callable
            ``shape -> tensor`` in mV).
        spk_fun: surrogate spike function (``adex.surrogate``); default ``ReluGrad()``.
        spk_reset: 'soft' (V -= V_th - V_reset) or 'hard' (V = V_reset).
        dt: time step (ms, > 0); BrainPy has no default, adex uses 0.1 ms.
        backend: 'auto' (fused Triton kernels on CUDA, fused CPU kernels on CPU float32/float64),
            'triton', 'cpu', 'reference'.
        name: optional name.
        check_finite: reject NaN/inf inputs and states with a ``ValueError`` (one host sync
            per call; the fused forward checks in the same pass; set False in tight GPU
            loops).
        detach_reset: stop the gradient through the reset spike (default False: BrainPy's
            gradient flows through it).
        learnable: names of parameters to train (e.g. ``('tau', 'a', 'b')``): each becomes
            an ``nn.Parameter`` in canonical units (shape ``()`` if given as a scalar, else
            ``in_size``), float32, in ``state_dict``; its gradient is computed inside the
            fused backward kernel. Constraints (tau, tau_w, delta_T > 0, V_th > V_reset,
            finite) are checked before every call: a step that breaks one raises
            ``ValueError`` instead of producing NaN.
        spike_dtype: dtype of the returned spikes (default: the input's); ``torch.uint8`` or
            ``torch.bool`` write 1 byte per neuron-step, for simulation without gradients.
        checkpoint_every: low-memory BPTT (int K): save the state every K steps instead of
            the per-step V and recompute inside the backward kernel; keeps the input alive.
        batch_first: sequences (input, spikes, ``return_states``) are ``[batch, T, ...]``
            instead of ``[T, batch, ...]`` (as ``torch.nn.RNN``); the outputs are transposed
            views. The fused kernels read a contiguous ``[T, ...]`` input, so they copy a
            batch-first one; the reference reads it through its strides.
        tau_syn: synaptic time constant (ms, > 0; scalar or per-neuron) of an optional
            synaptic current ``I`` (mA): ``tau_syn dI/dt = -I + x``, integrated exactly with
            x held over the step, ``I_t = I_{t-1} + (1 - exp(-dt/tau_syn)) (x_t - I_{t-1})``,
            first in each step; the membrane then reads ``I_t`` where it would read ``x_t``.
            ``I`` is state like ``V`` (0 after ``init_state``, readable, assignable, in
            ``return_states``, differentiable); ``tau_syn`` may be learnable. Default None:
            no synapse (the input drives the membrane directly).

    State API (BrainPy's): ``init_state(batch_size=None)`` / ``reset_state``, ``V`` (mV,
    pre-reset) and ``w`` (mA) readable and assignable, ``update(x)`` for one step,
    ``layer(x_seq)`` for ``[T, *state_shape]`` in one fused scan, ``get_spike(V=None)``.
"""


class AdExIF(SpikingNeuron):
    """Adaptive exponential integrate-and-fire neurons (BrainPy's ``brainpy.state.AdExIF``).

    Per step (exponential Euler): reset from the previous step's spike, ``w += b`` on a
    spike, ``tau dV/dt = -(V - V_rest) + delta_T exp((V - V_T)/delta_T) - R w + R x``, then
    ``tau_w dw/dt = a (V - V_rest) - w`` with the new V; the spike is ``V >= V_th``.

    Args:
        R: membrane resistance (ohm). tau: membrane time constant (ms, > 0).
        tau_w: adaptation time constant (ms, > 0). V_th: spike threshold (mV, > V_reset).
        V_reset: reset potential (mV). V_rest: resting potential (mV).
        V_T: exponential threshold (mV). delta_T: slope factor (mV, > 0).
        a: subthreshold adaptation (S). b: spike-triggered adaptation (mA).
        w_initializer: initial w (like ``V_initializer``, in mA).
    {common}
    Example:
        >>> import torch, adex
        >>> layer = adex.AdExIF(128, tau=20 * adex.u.ms, V_th=-50 * adex.u.mV)
        >>> layer.init_state(batch_size=8)
        >>> spikes = layer(torch.rand(100, 8, 128) * 30)  # [T, batch, neurons] in mA
    """

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 10 * u.ms,
        tau_w: Any = 30 * u.ms,
        V_th: Any = -55 * u.mV,
        V_reset: Any = -68 * u.mV,
        V_rest: Any = -65 * u.mV,
        V_T: Any = -59.9 * u.mV,
        delta_T: Any = 3.48 * u.mV,
        a: Any = 1 * u.siemens,
        b: Any = 1 * u.mA,
        V_initializer: Any = Constant(-65 * u.mV),  # noqa: B008 (immutable)
        w_initializer: Any = Constant(0 * u.mA),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, tau_w=tau_w, V_th=V_th, V_reset=V_reset, V_rest=V_rest,
                      V_T=V_T, delta_T=delta_T, a=a, b=b)  # fmt: skip
        params["tau_syn"] = tau_syn
        super().__init__(in_size, params, V_initializer, w_initializer, spk_fun, spk_reset,
                         dt, backend, name, check_finite, detach_reset,
                         learnable=learnable, spike_dtype=spike_dtype,
                         checkpoint_every=checkpoint_every, batch_first=batch_first)  # fmt: skip


class ExpIF(SpikingNeuron):
    """Exponential integrate-and-fire neurons (BrainPy's ``brainpy.state.ExpIF``): AdExIF
    without w, ``tau dV/dt = -(V - V_rest) + delta_T exp((V - V_T)/delta_T) + R x``.

    BrainPy's default V_th = -30 mV is 8.6 delta_T above V_T: at dt = 0.1 ms its
    exponential-Euler step runs away near threshold (see ``adex.RUNAWAY_CEILING``).

    Args:
        R (ohm), tau (ms, > 0), V_th (mV, > V_reset), V_reset, V_rest, V_T (mV),
        delta_T (mV, > 0): as in :class:`AdExIF`.
    {common}
    """

    has_w = False
    param_names = ("R", "tau", "V_th", "V_reset", "V_rest", "V_T", "delta_T")

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 10 * u.ms,
        V_th: Any = -30 * u.mV,
        V_reset: Any = -68 * u.mV,
        V_rest: Any = -65 * u.mV,
        V_T: Any = -59.9 * u.mV,
        delta_T: Any = 3.48 * u.mV,
        V_initializer: Any = Constant(-65 * u.mV),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, V_th=V_th, V_reset=V_reset, V_rest=V_rest, V_T=V_T,
                      delta_T=delta_T)  # fmt: skip
        params["tau_syn"] = tau_syn
        super().__init__(in_size, params, V_initializer, None, spk_fun, spk_reset, dt,
                         backend, name, check_finite, detach_reset,
                         learnable=learnable, spike_dtype=spike_dtype,
                         checkpoint_every=checkpoint_every, batch_first=batch_first)  # fmt: skip


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire neurons (BrainPy's ``brainpy.state.LIF``):
    ``tau dV/dt = -(V - V_rest) + R x``, integrated exactly (J = -1/tau).

    Args:
        R: resistance (ohm). tau: time constant (ms, > 0). V_th: threshold (mV, > V_reset).
        V_reset: reset potential (mV). V_rest: resting potential (mV).
    {common}
    """

    has_w = False
    has_exp = False
    param_names = ("R", "tau", "V_th", "V_reset", "V_rest")

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 5 * u.ms,
        V_th: Any = 1 * u.mV,
        V_reset: Any = 0 * u.mV,
        V_rest: Any = 0 * u.mV,
        V_initializer: Any = Constant(0 * u.mV),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, V_th=V_th, V_reset=V_reset, V_rest=V_rest)
        params["tau_syn"] = tau_syn
        super().__init__(in_size, params, V_initializer, None, spk_fun, spk_reset, dt,
                         backend, name, check_finite, detach_reset,
                         learnable=learnable, spike_dtype=spike_dtype,
                         checkpoint_every=checkpoint_every, batch_first=batch_first)  # fmt: skip


_REF_DOC = """
    Refractory period: a spike at step k sets ``last_spike_time = t_k``; while
    ``t - last_spike_time < tau_ref`` (tested in floating point on ``t = float(k) * dt``,
    exactly as BrainPy does, so the number of frozen steps can differ by one from
    ``tau_ref / dt``) V and w stay at their post-reset values, the input has no effect and
    its gradient is zero. The module keeps the step counter ``t_step`` and
    ``last_spike_time`` (ms) across calls; ``init_state`` / ``reset_state`` restart them.
    The fused backward reads 1 bit of refractory flag per neuron-step saved by the forward.
"""


class AdExIFRef(AdExIF):
    """AdExIF with a refractory period (BrainPy's ``brainpy.state.AdExIFRef``).

    Args:
        tau_ref: refractory period (ms, >= 0; scalar), default 1.7 ms.
        Others: as in :class:`AdExIF`.
    {ref}"""

    has_ref = True

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 10 * u.ms,
        tau_w: Any = 30 * u.ms,
        tau_ref: Any = 1.7 * u.ms,
        V_th: Any = -55 * u.mV,
        V_reset: Any = -68 * u.mV,
        V_rest: Any = -65 * u.mV,
        V_T: Any = -59.9 * u.mV,
        delta_T: Any = 3.48 * u.mV,
        a: Any = 1 * u.siemens,
        b: Any = 1 * u.mA,
        V_initializer: Any = Constant(-65 * u.mV),  # noqa: B008
        w_initializer: Any = Constant(0 * u.mA),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, tau_w=tau_w, V_th=V_th, V_reset=V_reset, V_rest=V_rest,
                      V_T=V_T, delta_T=delta_T, a=a, b=b)  # fmt: skip
        params["tau_syn"] = tau_syn
        SpikingNeuron.__init__(self, in_size, params, V_initializer, w_initializer, spk_fun,
                               spk_reset, dt, backend, name, check_finite, detach_reset,
                               tau_ref, learnable, spike_dtype, checkpoint_every,
                               batch_first)  # fmt: skip


class ExpIFRef(ExpIF):
    """ExpIF with a refractory period (BrainPy's ``brainpy.state.ExpIFRef``).

    Args:
        tau_ref: refractory period (ms, >= 0; scalar), default 1.7 ms.
        Others: as in :class:`ExpIF`.
    {ref}"""

    has_ref = True

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 10 * u.ms,
        tau_ref: Any = 1.7 * u.ms,
        V_th: Any = -30 * u.mV,
        V_reset: Any = -68 * u.mV,
        V_rest: Any = -65 * u.mV,
        V_T: Any = -59.9 * u.mV,
        delta_T: Any = 3.48 * u.mV,
        V_initializer: Any = Constant(-65 * u.mV),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, V_th=V_th, V_reset=V_reset, V_rest=V_rest, V_T=V_T,
                      delta_T=delta_T)  # fmt: skip
        params["tau_syn"] = tau_syn
        SpikingNeuron.__init__(self, in_size, params, V_initializer, None, spk_fun, spk_reset,
                               dt, backend, name, check_finite, detach_reset,
                               tau_ref, learnable, spike_dtype, checkpoint_every,
                               batch_first)  # fmt: skip


class AdLIF(SpikingNeuron):
    """Adaptive leaky integrate-and-fire neurons: :class:`AdExIF` without the exponential
    term, ``tau dV/dt = -(V - V_rest) - R w + R x``, ``tau_w dw/dt = a (V - V_rest) - w``,
    ``w += b`` on a spike.

    The same exponential-Euler step (``J = -1/tau``, so V is integrated exactly for the
    step's w and x), reset order and spike rule as AdExIF, and AdExIF's defaults for the
    shared parameters: it equals an AdExIF whose exponential term vanishes (``V_T`` far
    above any V reached) to float rounding. BrainPy has no such model.

    Args:
        R (ohm), tau (ms, > 0), tau_w (ms, > 0), V_th (mV, > V_reset), V_reset, V_rest (mV),
        a (S), b (mA), w_initializer: as in :class:`AdExIF`.
    {common}
    """

    has_exp = False
    param_names = ("R", "tau", "tau_w", "V_th", "V_reset", "V_rest", "a", "b")

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 10 * u.ms,
        tau_w: Any = 30 * u.ms,
        V_th: Any = -55 * u.mV,
        V_reset: Any = -68 * u.mV,
        V_rest: Any = -65 * u.mV,
        a: Any = 1 * u.siemens,
        b: Any = 1 * u.mA,
        V_initializer: Any = Constant(-65 * u.mV),  # noqa: B008
        w_initializer: Any = Constant(0 * u.mA),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, tau_w=tau_w, V_th=V_th, V_reset=V_reset, V_rest=V_rest,
                      a=a, b=b)  # fmt: skip
        params["tau_syn"] = tau_syn
        super().__init__(in_size, params, V_initializer, w_initializer, spk_fun, spk_reset,
                         dt, backend, name, check_finite, detach_reset,
                         learnable=learnable, spike_dtype=spike_dtype,
                         checkpoint_every=checkpoint_every, batch_first=batch_first)  # fmt: skip


class AdLIFRef(AdLIF):
    """AdLIF with a refractory period (as :class:`AdExIFRef` is AdExIF with one).

    Args:
        tau_ref: refractory period (ms, >= 0; scalar), default 1.7 ms.
        Others: as in :class:`AdLIF`.
    {ref}"""

    has_ref = True

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        R: Any = 1 * u.ohm,
        tau: Any = 10 * u.ms,
        tau_w: Any = 30 * u.ms,
        tau_ref: Any = 1.7 * u.ms,
        V_th: Any = -55 * u.mV,
        V_reset: Any = -68 * u.mV,
        V_rest: Any = -65 * u.mV,
        a: Any = 1 * u.siemens,
        b: Any = 1 * u.mA,
        V_initializer: Any = Constant(-65 * u.mV),  # noqa: B008
        w_initializer: Any = Constant(0 * u.mA),  # noqa: B008
        spk_fun: Surrogate | None = None,
        spk_reset: str = "soft",
        dt: Any = 0.1 * u.ms,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        detach_reset: bool = False,
        learnable: tuple[str, ...] = (),
        spike_dtype: torch.dtype | None = None,
        checkpoint_every: int | None = None,
        batch_first: bool = False,
        tau_syn: Any = None,
    ):
        params = dict(R=R, tau=tau, tau_w=tau_w, V_th=V_th, V_reset=V_reset, V_rest=V_rest,
                      a=a, b=b)  # fmt: skip
        params["tau_syn"] = tau_syn
        SpikingNeuron.__init__(self, in_size, params, V_initializer, w_initializer, spk_fun,
                               spk_reset, dt, backend, name, check_finite, detach_reset,
                               tau_ref, learnable, spike_dtype, checkpoint_every,
                               batch_first)  # fmt: skip


LI_THRESHOLD = 1e30
"""The threshold (mV) of the LIF scan that :class:`LI` runs: no V that float32 holds
below it is reached, so the reset never fires."""


class LI(SpikingNeuron):
    """Non-spiking leaky integrators, the usual readout of a spiking network:
    ``tau dV/dt = -(V - V_rest) + R x``, the same exponential-Euler step as :class:`LIF`
    (exact for the step's input), no threshold, no reset. The output is the V sequence
    ``[T, *state_shape]`` (mV); readouts take its max or mean over time, or V at the last
    step. With ``tau_syn`` the membrane reads the synaptic current I instead of x.

    How it runs: as a LIF that never reaches its threshold, on the same scans (fused
    kernels or reference), because that is what an LI is: ``V_th`` is
    :data:`LI_THRESHOLD` (1e30 mV) above 0 and ``V_reset`` 0 mV (constants, not
    parameters), the reset is detached (no surrogate gradient through a reset that never
    happens) and the spikes, all zero, are dropped (their gradient is None). The V
    sequence and its gradients are therefore exactly those of the LIF path; the price of
    the reuse is the forward's spike store (one x-dtype write per neuron-step, discarded)
    and the reset's arithmetic, which a dedicated kernel flag would save; in exchange the
    kernels carry no LI-only branch. There is no low-memory mode (the output is the V
    sequence that mode avoids storing).

    Args:
        in_size: neurons per sample (int or shape).
        tau: time constant (ms, > 0). R: resistance (ohm). V_rest: resting potential (mV).
        V_initializer: initial V (mV), as in :class:`LIF`.
        dt: time step (ms, > 0). tau_syn: optional synaptic time constant (ms, > 0), as in
            :class:`LIF`. learnable: any of ``('tau', 'R', 'V_rest', 'tau_syn')``.
        backend, name, check_finite, batch_first: as in :class:`LIF`.

    Example:
        >>> import torch, adex
        >>> readout = adex.LI(10, tau=20 * adex.u.ms)
        >>> readout.init_state(batch_size=8)
        >>> V = readout(torch.rand(100, 8, 10))  # [100, 8, 10] mV
        >>> logits = V.max(0).values
    """

    has_w = False
    has_exp = False
    param_names = ("R", "tau", "V_rest")

    def __init__(
        self,
        in_size: int | tuple[int, ...],
        tau: Any = 5 * u.ms,
        R: Any = 1 * u.ohm,
        V_rest: Any = 0 * u.mV,
        V_initializer: Any = Constant(0 * u.mV),  # noqa: B008
        dt: Any = 0.1 * u.ms,
        tau_syn: Any = None,
        backend: str = "auto",
        name: str | None = None,
        check_finite: bool = True,
        learnable: tuple[str, ...] = (),
        batch_first: bool = False,
    ):
        params = dict(R=R, tau=tau, V_rest=V_rest, V_th=LI_THRESHOLD, V_reset=0.0,
                      tau_syn=tau_syn)  # fmt: skip
        super().__init__(in_size, params, V_initializer, None, None, "soft", dt, backend, name,
                         check_finite, detach_reset=True, learnable=learnable,
                         batch_first=batch_first)  # fmt: skip

    def forward(self, x_seq: Any, return_states: bool = False,
                lengths: Tensor | None = None) -> Tensor:  # fmt: skip
        """Run ``T`` steps over ``x_seq`` ``[T, *state_shape]`` (mA); returns the V sequence
        ``[T, *state_shape]`` (mV, float32), differentiable. With ``return_states=True``
        the whole (Syn)StateSequence (its spikes are all zero). ``lengths``: as in
        :meth:`adex.SpikingNeuron.forward` (past its length a sample's V is held)."""
        out = super().forward(x_seq, return_states=True, lengths=lengths)
        return out if return_states else out.V

    def update(self, x: Any = 0.0) -> Tensor:
        """One step; returns the new V (mV), shaped like the state."""
        super().update(x)
        return self.V


for _cls in (AdExIF, ExpIF, LIF, AdExIFRef, ExpIFRef, AdLIF, AdLIFRef):
    _cls.__doc__ = _cls.__doc__.replace("{common}", _COMMON_DOC).replace("{ref}", _REF_DOC)
