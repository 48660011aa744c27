"""The recurrent scan as a literal step loop: each step's input is ``x_t + s_{t-1} @ weight.T``,
then one step of the wrapped model's scan. With the reference scan it is the oracle and the
CPU path of :class:`adex.Recurrent`; with the fused scan of one step, the fallback above
the fused kernels' size limit (autograd differentiates both)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from adex.reference import reference_scan
from adex.spec import ScanSpec


def recurrent_compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any of ``tensors`` is, else float32: the dtype of the recurrent input."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def recurrent_step_loop(x: Tensor, s0: Tensor, weight: Tensor, state0: Tensor, params,
                        spec: ScanSpec, *, t0_step: int = 0, packed=None,
                        scan: Callable = reference_scan) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Run ``s_t = step(x_t + s_{t-1} @ weight.T)`` for ``t = 0 .. T-1``.

    Args:
        x: ``[T, *S]`` input current (mA), ``S = (B, N)`` or ``(N,)``.
        s0: ``[*S]`` spikes of the step before ``x[0]`` (0/1; differentiable).
        weight: ``[N, N]`` recurrent weight (mA per spike); ``weight[i, j]`` is the current
            into neuron i from a spike of neuron j one step earlier.
        state0: ``[C, *S]`` state block before ``x[0]`` (V, w, last-spike time).
        params, packed: the wrapped model's parameters (as its scan takes them).
        spec: the wrapped model's ``ScanSpec`` (``return_states`` and checkpointing off).
        t0_step: global step index of ``x[0]``.
        scan: one backend's scan (``adex.reference.reference_scan`` or
            ``adex.fused.fused_scan``), run on one step at a time.

    Returns:
        ``(spikes [T, *S], state [C, *S])``: spikes in x's dtype (or the spec's spike dtype)
        and the state after the last step. The recurrent input is computed in float64 when
        x, the weight or the state is float64, else float32.
    """
    compute = recurrent_compute_dtype(x, weight, state0)
    weight_t = weight.to(compute).t()
    s, state = s0, state0
    spikes = []
    for t in range(x.shape[0]):
        current = x[t].to(compute) + s.to(compute) @ weight_t
        out = scan(current.unsqueeze(0), state, params, spec, t0_step=t0_step + t,
                   packed=packed)  # fmt: skip
        s, state = out.spikes[0], out.state
        spikes.append(s)
    out_dtype = x.dtype if spec.spike_dtype is None else spec.spike_dtype
    return torch.stack(spikes).to(out_dtype), state
