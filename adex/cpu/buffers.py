"""Reused memory for the fused CPU kernels' large outputs.

A tensor of ``MIN_BYTES`` or more that the CPU kernels write (spikes, the saved V/w/I
sequences, checkpoints, ``grad_x``, the per-element parameter gradients) would come from a
fresh ``mmap`` on every call (glibc maps every allocation above its 32 MiB ceiling anew and
unmaps it on free), and the kernel's first write to each 4 KiB page then faults and zeroes
it: at T=50, 128 x 4096 neurons that doubled the forward kernel's time, unpredictably from
call to call. :func:`empty` instead hands out a buffer of the same size that a previous
call's tensors no longer use, as torch's CUDA caching allocator does on a GPU.

How a buffer returns: it is wrapped with ``torch.from_numpy`` of a numpy view that the
tensor's storage alone holds; when the storage is freed (the last tensor or view on it,
saved tensors of autograd included, is gone) the view dies and its ``weakref.finalize``
puts the buffer back. A buffer in use is therefore never handed out again. Idle buffers are
kept up to :func:`cache_limit` bytes in all (set by :func:`set_cache_limit` or the
``ADEX_CPU_CACHE_BYTES`` environment variable, default 1 GiB; 0 turns the cache off) and
released by :func:`empty_cache`. Tensors from the cache have a fixed-size storage (they
cannot be ``resize_``-d larger), as any ``torch.from_numpy`` tensor.
"""

from __future__ import annotations

import math
import os
import threading
import weakref

import numpy as np
import torch

MIN_BYTES = 1 << 20
"""Tensors below this size come from ``torch.empty`` (malloc reuses small blocks itself)."""

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.uint8: np.uint8}
_LOCK = threading.RLock()  # re-entrant: a release may run inside (a GC pass)
_IDLE: dict[int, list[np.ndarray]] = {}  # nbytes -> idle uint8 buffers


def _limit_from_env() -> int:
    value = os.environ.get("ADEX_CPU_CACHE_BYTES", str(1 << 30))
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError(f"ADEX_CPU_CACHE_BYTES must be an int >= 0 (bytes), got {value!r}")
    return limit


_STATE = {"idle_bytes": 0, "limit": _limit_from_env()}


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized contiguous CPU tensor of ``shape`` and ``dtype`` (float32, float64
    or uint8), from an idle cached buffer of its size where one exists."""
    np_dtype = _NUMPY_DTYPES.get(dtype)
    nbytes = math.prod(shape) * (0 if np_dtype is None else np.dtype(np_dtype).itemsize)
    if nbytes < MIN_BYTES or _STATE["limit"] <= 0:
        return torch.empty(shape, dtype=dtype)
    base = None
    with _LOCK:
        idle = _IDLE.get(nbytes)
        if idle:
            base = idle.pop()
            _STATE["idle_bytes"] -= nbytes
    if base is None:
        base = np.empty(nbytes, dtype=np.uint8)
    view = base.view(np_dtype).reshape(shape)
    # the view's only owner is the tensor's storage: its end returns the buffer
    weakref.finalize(view, _release, base).atexit = False
    return torch.from_numpy(view)


def _release(base: np.ndarray) -> None:
    """Keep a buffer whose tensors are gone, while the idle total stays within the limit."""
    with _LOCK:
        if _STATE["idle_bytes"] + base.nbytes <= _STATE["limit"]:
            _IDLE.setdefault(base.nbytes, []).append(base)
            _STATE["idle_bytes"] += base.nbytes


def empty_cache() -> None:
    """Release every idle buffer (to the allocator, and so to the system)."""
    with _LOCK:
        _IDLE.clear()
        _STATE["idle_bytes"] = 0


def cache_limit() -> int:
    """The most bytes of idle buffers kept for reuse."""
    return _STATE["limit"]


def set_cache_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of idle buffers (0: no cache; where the idle buffers exceed
    the new limit, all of them are released now)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"the cache limit must be an int >= 0 (bytes), got {nbytes!r}")
    with _LOCK:
        _STATE["limit"] = nbytes
        if _STATE["idle_bytes"] > nbytes:
            _IDLE.clear()
            _STATE["idle_bytes"] = 0


def idle_bytes() -> int:
    """Bytes of idle buffers held now."""
    return _STATE["idle_bytes"]
