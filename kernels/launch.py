"""Launch configuration shared by the forward and backward scans.

The launchers call ``kernel.run(grid=grid, warmup=False, **kwargs)``, which is what
``kernel[grid](**kwargs)`` does: ``KernelInterface.__getitem__`` returns a lambda that calls
it (Triton's protocol in 3.6 and 3.9, the interpreter's too); calling ``run`` saves the
lambda and its copy of the keyword arguments. The arguments that a plan and the launch's
geometry fix are computed once per plan and geometry (:func:`remember`), less those equal
to the kernel's defaults (:func:`without_defaults`)."""

from __future__ import annotations

import functools
import inspect
import os

import torch
import triton

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernels were decorated under ``TRITON_INTERPRET=1`` (they then run on CPU
tensors through Triton's interpreter). Triton reads the variable at decoration time, so it
must be set before ``adex`` is imported."""


GPU_BLOCK = 256
"""Neurons per program on a GPU. A module-level setting so that benchmarks can sweep it
(``benchmarks/roofline.py --blocks``); each value compiles its own kernel."""


GPU_MIN_PROGRAMS_PER_SM = 4
"""For a small M the block narrows (GPU_BLOCK, then halves down to 64 neurons, always 2 per
thread) until the grid has at least this many programs per SM, so that every SM holds a
few programs' worth of warps to hide the per-step latency. 0 keeps GPU_BLOCK for every M
(``benchmarks/v2_rows.py`` sets it so for its GPU_BLOCK sweep)."""


FP_FUSION = True
"""``enable_fp_fusion`` of every launch: a multiply feeding an add compiles to one FMA.
Pinned, not Triton's default (which Triton 3.10 turns off: the time loops then grow about
20%); Triton 3.6 and 3.9 both take it as a launch option, the interpreter ignores it."""


GPU_STAGES: int | None = None
"""Software-pipelining depth of the per-step loops on a GPU (``tl.range(num_stages=...)``:
the loads of the next ``GPU_STAGES - 1`` steps are issued before the current step is
computed). None leaves the loops unannotated, as Triton compiles a loop without a dot by
default. A module-level setting so that benchmarks can sweep it (``roofline.py``)."""


def launch_settings() -> tuple[int, int, int | None]:
    """``(GPU_BLOCK, GPU_MIN_PROGRAMS_PER_SM, GPU_STAGES)`` as they are now: part of the key
    of every cached launch geometry, so that a benchmark's sweep takes effect at once."""
    return GPU_BLOCK, GPU_MIN_PROGRAMS_PER_SM, GPU_STAGES


def remember(cache: dict, key: object, value: object) -> None:
    """``cache[key] = value``, the cache emptied first once it holds ``CACHED_LAUNCHES``
    entries (a plan's launches over many geometries: each is computed again when it
    returns)."""
    if len(cache) >= CACHED_LAUNCHES:
        cache.clear()
    cache[key] = value


CACHED_LAUNCHES = 64
"""The launch arguments one plan keeps (``Plan.launch``), over geometries and checks."""


def pipeline_stages(device: torch.device) -> int | None:
    """``num_stages`` for the per-step loops on ``device`` (None under the interpreter)."""
    return GPU_STAGES if _on_gpu(device) else None


def _on_gpu(device: torch.device) -> bool:
    """``device.type == "cuda"``, cached per device (reading ``type`` builds a string)."""
    gpu = _GPU_DEVICES.get(device)
    if gpu is None:
        gpu = _GPU_DEVICES[device] = device.type == "cuda"
    return gpu


_GPU_DEVICES: dict[torch.device, bool] = {}


def block_config(n_elements: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK, num_warps, programs) for a 1-D scan over ``n_elements`` independent neurons.

    On a GPU each program carries ``GPU_BLOCK`` (256) neurons, 2 per thread (4 warps at 256),
    narrowed for a small ``n_elements`` to keep ``GPU_MIN_PROGRAMS_PER_SM`` programs per SM
    (down to 64 neurons, 1 warp). Under the interpreter every program costs a Python loop
    over T, so blocks are as wide as possible (up to 1024).
    """
    if _on_gpu(device):
        sms = _multiprocessors(device.index) if GPU_MIN_PROGRAMS_PER_SM else 0
        return _gpu_config(n_elements, GPU_BLOCK, GPU_MIN_PROGRAMS_PER_SM * sms)
    return _interpreter_config(n_elements)


@functools.lru_cache(maxsize=16)
def _multiprocessors(index: int | None) -> int:
    return torch.cuda.get_device_properties(index or 0).multi_processor_count


@functools.lru_cache(maxsize=256)
def _gpu_config(n_elements: int, block: int, min_programs: int) -> tuple[int, int, int]:
    """``(block, num_warps, programs)``: ``block`` halved (down to 64) while the grid would
    have fewer than ``min_programs`` programs; ``block // 64`` warps (2 neurons per thread)."""
    while block > 64 and -(-n_elements // block) < min_programs:
        block //= 2
    return block, max(1, min(8, block // 64)), -(-n_elements // block)


@functools.lru_cache(maxsize=256)
def _interpreter_config(n_elements: int) -> tuple[int, int, int]:
    block = min(1024, triton.next_power_of_2(max(n_elements, 16)))
    return block, 4, -(-n_elements // block)


def without_defaults(kernel, kwargs: dict) -> dict:
    """``kwargs`` less the entries that equal the kernel's own defaults (the launch binds
    those itself, to the same values: the compiled kernel is the same); for the arguments
    that a spec, plan and geometry fix, computed once per plan and geometry
    (``Plan.launch``, :func:`remember`)."""
    defaults = _DEFAULTS.get(id(kernel))
    if defaults is None:  # the kernels are module-level objects: their ids stay theirs
        params = inspect.signature(kernel.fn).parameters.values()
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        _DEFAULTS[id(kernel)] = defaults
    return {
        k: v for k, v in kwargs.items()
        if k not in defaults or type(v) is not type(defaults[k]) or v != defaults[k]
    }  # fmt: skip


_DEFAULTS: dict[int, dict] = {}
