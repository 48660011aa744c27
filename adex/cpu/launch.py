"""Launchers of the fused CPU scans: torch tensors in, the numba kernels of
:mod:`adex.cpu.scan` on their numpy views, torch tensors out. Everything is in one storage
dtype, float32 or float64 (the caller casts)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from adex.cpu import buffers
from adex.cpu.scan import scan_backward, scan_forward
from adex.params import ALL_PARAMS, grad_rows
from adex.step_rows import per_step_or_row


class CpuForward(NamedTuple):
    """What :func:`cpu_scan_fwd` wrote (absent tensors None), all in the storage dtype
    except ``ref_bits``.

    Attributes:
        spikes: ``[T, *S]`` 0/1 spikes.
        state: ``[C, *S]`` state after the last step.
        v_seq, w_seq: ``[T, *S]`` per-step V (mV, pre-reset) and w (mA), where the plan
            stores them.
        ref_bits: ``[cdiv(T, 8), *S]`` uint8 refractory flags, bit ``t % 8`` of row ``t // 8``.
        checkpoints: ``[cdiv(T, K), C, *S]`` state before steps 0, K, 2K, ...
        i_seq: ``[T, *S]`` per-step synaptic current I (mA), where the plan stores it.
    """

    spikes: Tensor
    state: Tensor
    v_seq: Tensor | None
    w_seq: Tensor | None
    ref_bits: Tensor | None
    checkpoints: Tensor | None
    i_seq: Tensor | None = None


def _np(t: Tensor | None, dtype: np.dtype, dims: int) -> np.ndarray:
    """The numpy view of a contiguous CPU tensor, or an empty array of ``dims`` dims."""
    if t is None:
        return np.empty((0,) * dims, dtype=dtype)
    return t.detach().numpy()


def step_times(T: int, t0_step: int, dt: float, dtype: torch.dtype) -> Tensor:
    """``[T]`` the time of each step, ``float(k) * dt`` rounded to ``dtype`` as the
    reference computes it (its refractory test is in that dtype)."""
    k = torch.arange(t0_step, t0_step + T, dtype=torch.float64).to(dtype)
    return k * torch.tensor(dt, dtype=dtype)


def _scalars(spec, dtype: torch.dtype):
    tau_ref = torch.tensor([spec.tau_ref or 0.0], dtype=dtype).numpy()
    s = spec.kernel_scalars
    return tau_ref, float(s["dt"]), float(s["ceiling"])


def _lengths(lengths: Tensor | None, M: int) -> tuple[np.ndarray, int]:
    """The sample lengths as int32 numpy (empty without) and the elements per sample."""
    if lengths is None:
        return np.empty(0, dtype=np.int32), 1
    return lengths.to(torch.int32).contiguous().numpy(), M // lengths.shape[0]


def cpu_scan_fwd(x: Tensor, state0: Tensor, packed: Tensor, spec, plan, t0_step: int = 0,
                 lengths: Tensor | None = None) -> CpuForward:  # fmt: skip
    """Run the forward kernel.

    Args:
        x: ``[T, *S]`` contiguous input current (mA), float32 or float64.
        state0: ``[C, *S]`` contiguous state before ``x[0]``, x's dtype.
        packed: ``[11, N]`` contiguous parameters, x's dtype, ``N`` dividing ``prod(S)``.
        spec, plan: the ``ScanSpec`` and its ``Plan`` for this call.
        t0_step: global step index of ``x[0]``.
        lengths: ``[S[0]]`` int32 steps each sample runs (1..T), or None (all T): from step
            ``lengths[b]`` on, sample b holds its state and returns zero spikes.

    Returns:
        :class:`CpuForward`.
    """
    T, S, dtype = x.shape[0], x.shape[1:], x.dtype
    M = x.numel() // T
    C = state0.shape[0]
    nd = torch.empty(0, dtype=dtype).numpy().dtype
    spikes = buffers.empty(x.shape, dtype)
    state = torch.empty_like(state0)
    v_seq = buffers.empty(x.shape, dtype) if plan.store_v else None
    w_seq = buffers.empty(x.shape, dtype) if plan.store_w else None
    i_seq = buffers.empty(x.shape, dtype) if plan.store_i else None
    ref_bits = torch.zeros(((T + 7) // 8, *S), dtype=torch.uint8) if plan.store_ref else None
    K = plan.checkpoint_every
    ckpt = buffers.empty((-(-T // K), C, *S), dtype) if K else None
    tau_ref, dt, ceiling = _scalars(spec, dtype)
    flat = (T, M)
    lens, sps = _lengths(lengths, M)
    scan_forward(
        _np(x, nd, 2).reshape(flat), _np(state0, nd, 2).reshape(C, M), _np(packed, nd, 2),
        step_times(T, t0_step, dt, dtype).numpy(), tau_ref, dt, ceiling, spec.hard_reset,
        spec.has_w, spec.has_exp, spec.has_ref, spec.has_syn, lens, sps,
        spikes.numpy().reshape(flat), state.numpy().reshape(C, M),
        _np(v_seq, nd, 2).reshape(flat if plan.store_v else (0, 0)),
        _np(w_seq, nd, 2).reshape(flat if plan.store_w else (0, 0)),
        _np(ref_bits, np.uint8, 2).reshape((-(-T // 8), M) if plan.store_ref else (0, 0)),
        _np(i_seq, nd, 2).reshape(flat if plan.store_i else (0, 0)),
        _np(ckpt, nd, 3).reshape((-(-T // K), C, M) if K else (0, 0, 0)), K,
    )  # fmt: skip
    return CpuForward(spikes, state, v_seq, w_seq, ref_bits, ckpt, i_seq)


def _rows(t: Tensor | None, nd: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A present gradient or saved tensor as contiguous ``shape`` numpy, else empty."""
    if t is None:
        return np.empty((0,) * len(shape), dtype=nd)
    return t.detach().contiguous().numpy().reshape(shape)


def _step_rows(g: Tensor | None, nd: np.dtype, flat: tuple[int, int]) -> np.ndarray:
    """An incoming ``[T, *S]`` gradient as ``(T, M)`` numpy, or as one ``(1, M)`` row
    where it is the same at every step (:func:`adex.step_rows.per_step_or_row`), which
    the kernel reads for every step; empty where absent."""
    g = per_step_or_row(g)
    return _rows(g, nd, flat if g is None else (g.shape[0], flat[1]))


def cpu_scan_bwd(saved: CpuForward, state0: Tensor, x: Tensor | None, packed: Tensor, spec,
                 plan, grads: tuple[Tensor | None, ...], T: int, t0_step: int,
                 wants: tuple[bool, bool],
                 lengths: Tensor | None = None) -> tuple[Tensor | None, ...]:  # fmt: skip
    """Run the backward kernel.

    Args:
        saved: the forward's outputs (its ``v_seq``, ``w_seq``, ``ref_bits``, ``i_seq`` and
            ``checkpoints`` are read; ``spikes`` and ``state`` are not).
        state0: ``[C, *S]`` the initial state. x: ``[T, *S]`` the input (checkpoint mode,
            and the tau_syn gradient).
        packed: ``[11, N]`` parameters. spec, plan: as for the forward.
        grads: the incoming gradients of ``(spikes, state, v_seq, w_seq, i_seq)``, None
            where zero.
        T: number of steps. t0_step: global step of ``x[0]`` (checkpoint mode recomputes
            the refractory test).
        wants: whether the gradients of x and of state0 are wanted.
        lengths: the forward's ``[S[0]]`` sample lengths, or None.

    Returns:
        ``(grad_x [T, *S], grad_state0 [C, *S], grad_params [11, *S] per element)``, None
        where not wanted (the parameter gradient: where the plan has none).
    """
    dtype = state0.dtype
    nd = torch.empty(0, dtype=dtype).numpy().dtype
    C, S = state0.shape[0], state0.shape[1:]
    M = state0.numel() // C
    g_spikes, g_state, g_vseq, g_wseq, g_iseq = grads
    K = plan.checkpoint_every
    want_x, want_s0 = wants
    grad_x = buffers.empty((T, *S), dtype) if want_x else None
    grad_s0 = torch.empty_like(state0) if want_s0 else None
    P = len(grad_rows(spec.param_mask))  # compact rows: one per parameter of the mask
    grad_par = buffers.empty((P, *S), dtype) if plan.param_grad else None
    rows = min(K, T) if K else 0
    tau_ref, dt, ceiling = _scalars(spec, dtype)
    sg = np.array(spec.surrogate.params, dtype=np.float64)
    flags = (spec.hard_reset, spec.has_w, spec.has_exp, spec.has_ref, spec.detach_reset,
             plan.param_grad, plan.read_w, g_spikes is not None, g_vseq is not None,
             g_wseq is not None, want_x, g_state is not None, want_s0, K > 0, spec.has_syn,
             plan.read_i, g_iseq is not None)  # fmt: skip
    flat = (T, M)
    lens, sps = _lengths(lengths, M)
    scan_backward(
        _rows(saved.v_seq, nd, flat), _rows(saved.w_seq, nd, flat),
        _rows(saved.ref_bits, np.uint8, (-(-T // 8), M)),
        _rows(saved.i_seq if plan.read_i and not K else None, nd, flat),
        _rows(state0, nd, (C, M)), _rows(packed, nd, tuple(packed.shape)),
        _step_rows(g_spikes, nd, flat), _step_rows(g_vseq, nd, flat),
        _step_rows(g_wseq, nd, flat), _step_rows(g_iseq, nd, flat), _rows(g_state, nd, (C, M)),
        _rows(x if K or plan.read_i else None, nd, flat),
        _rows(saved.checkpoints, nd, (-(-T // max(K, 1)), C, M)),
        step_times(T, t0_step, dt, dtype).numpy(), tau_ref, dt, ceiling, sg,
        spec.surrogate.kind, flags, lens, sps,
        spec.param_mask if plan.param_grad else ALL_PARAMS, max(K, 1), T,
        _rows(grad_x, nd, flat), _rows(grad_s0, nd, (C, M)), _rows(grad_par, nd, (P, M)),
        np.empty((C, M) if K else (0, 0), dtype=nd), np.empty((rows, M), dtype=nd),
        np.empty((rows if K and plan.read_w else 0, M), dtype=nd),
        np.zeros(((rows + 7) // 8 if K and spec.has_ref else 0, M), dtype=np.uint8),
        np.empty((rows if K and plan.read_i else 0, M), dtype=nd),
        np.empty((0, 0), dtype=nd),
    )  # fmt: skip
    return grad_x, grad_s0, grad_par
