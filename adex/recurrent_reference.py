"""The recurrent scan as a literal step loop: each step's input is ``x_t + s_{t-1} @ weight.T``,
then one step of the wrapped model's scan. With the reference scan it is the oracle and the
CPU path of :class:`adex.Recurrent`; with the fused scan of one step, the fallback above
the fused kernels' size limit (autograd differentiates both). :func:`recurrent_checkpointed`
is the checkpoint mode of either backend."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from adex.reference import reference_scan
from adex.spec import ScanOutput, ScanSpec


def recurrent_compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any of ``tensors`` is, else float32: the dtype of the recurrent input."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def recurrent_step_loop(x: Tensor, s0: Tensor, weight: Tensor, state0: Tensor, params,
                        spec: ScanSpec, *, t0_step: int = 0, packed=None,
                        scan: Callable = reference_scan) -> ScanOutput:  # fmt: skip
    """Run ``s_t = step(x_t + s_{t-1} @ weight.T)`` for ``t = 0 .. T-1``.

    Args:
        x: ``[T, *S]`` input current (mA), ``S = (B, N)`` or ``(N,)``.
        s0: ``[*S]`` spikes of the step before ``x[0]`` (0/1; differentiable).
        weight: ``[N, N]`` recurrent weight (mA per spike); ``weight[i, j]`` is the current
            into neuron i from a spike of neuron j one step earlier.
        state0: ``[C, *S]`` state block before ``x[0]`` (V, w, last-spike time, I).
        params, packed: the wrapped model's parameters (as its scan takes them).
        spec: the wrapped model's ``ScanSpec`` (checkpointing off; ``return_states``: the
            per-step V and w are returned too).
        t0_step: global step index of ``x[0]``.
        scan: one backend's scan (``adex.reference.reference_scan`` or
            ``adex.fused.fused_scan``), run on one step at a time.

    Returns:
        ``adex.spec.ScanOutput`` ``(spikes [T, *S], state [C, *S], v_seq, w_seq, i_seq)``:
        spikes in x's dtype (or the spec's spike dtype), the state after the last step, and
        with ``spec.return_states`` the state's V, w and I rows after every step ``[T, *S]``
        (as far as the model has them; else None). With a synapse (``spec.has_syn``) the
        one-step scan filters the whole input current, ``x_t + s_{t-1} @ weight.T``. The
        recurrent input is computed in float64 when x, the weight or the state is float64,
        else float32.
    """
    compute = recurrent_compute_dtype(x, weight, state0)
    weight_t = weight.to(compute).t()
    step_spec = spec.with_return_states(False)
    s, state = s0, state0
    spikes, states = [], []
    for t in range(x.shape[0]):
        current = x[t].to(compute) + s.to(compute) @ weight_t
        out = scan(current.unsqueeze(0), state, params, step_spec, t0_step=t0_step + t,
                   packed=packed)  # fmt: skip
        s, state = out.spikes[0], out.state
        spikes.append(s)
        if spec.return_states:
            states.append(state)
    out_dtype = x.dtype if spec.spike_dtype is None else spec.spike_dtype
    v_seq = w_seq = i_seq = None
    if spec.return_states:
        seq = torch.stack(states, dim=1)  # [C, T, *S]
        v_seq, w_seq = seq[0], seq[spec.w_row] if spec.has_w else None
        i_seq = seq[spec.i_row] if spec.has_syn else None
    return ScanOutput(torch.stack(spikes).to(out_dtype), state, v_seq, w_seq, i_seq)


def recurrent_checkpointed(run: Callable, x: Tensor, s0: Tensor, state0: Tensor, K: int,
                           t0_step: int = 0) -> ScanOutput:  # fmt: skip
    """Low-memory BPTT of a recurrent scan: ``run(x_seg, s, state, t0)`` (one backend's
    recurrent scan, returning a ``ScanOutput``) over segments of ``K`` steps, each under
    ``torch.utils.checkpoint`` (non-reentrant): the forward keeps only each segment's input
    spikes and state, and the backward reruns a segment before its adjoint. The same values
    and gradients as one call of ``run`` over all of ``x``.

    Returns ``ScanOutput(spikes [T, *S], state [C, *S], None, None)``."""
    s, state, spikes = s0, state0, []
    for a in range(0, x.shape[0], K):
        seg_spikes, state = checkpoint(_segment, run, x[a : a + K], s, state, t0_step + a,
                                       use_reentrant=False)  # fmt: skip
        spikes.append(seg_spikes)
        s = seg_spikes[-1]
    return ScanOutput(torch.cat(spikes), state, None, None)


def _segment(run: Callable, x: Tensor, s: Tensor, state: Tensor, t0: int):
    out = run(x, s, state, t0)
    return out.spikes, out.state
