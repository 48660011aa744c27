"""pytest-benchmark suite: the fused scans vs the per-step reference at a small size, in the
default mode, in checkpoint mode (``checkpoint_every``) and with 1-byte spikes (no grad).

Not part of the default run (``testpaths = ["tests"]`` and every test here is ``slow``)::

    python -m pytest benchmarks/test_bench.py -m slow                     # CUDA
    TRITON_INTERPRET=1 python -m pytest benchmarks/test_bench.py -m slow  # CPU, tiny, NOT timings

Without CUDA every test is skipped unless the kernels run under the Triton interpreter
(``TRITON_INTERPRET=1`` set before ``adex`` is imported); the interpreter's numbers only show
that the suite works. Each benchmark records the bytes model (``bytes_model.py``) and the
achieved GB/s at its median in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch

import adex
from adex.kernels.launch import INTERPRETED

try:
    from benchmarks import bytes_model
except ImportError:  # collected with benchmarks/ on sys.path (pytest's rootdir-less import)
    import bytes_model

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SHAPE = (64, 16, 4096) if CUDA else (8, 2, 64)  # T, batch, neurons
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16} if CUDA else {"fp32": torch.float32}
ROUNDS = 20 if CUDA else 2
DT = 0.1
CHECKPOINT_EVERY = 32 if CUDA else 4  # several segments at both sizes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CUDA and not INTERPRETED,
        reason="needs CUDA, or TRITON_INTERPRET=1 before adex is imported (tiny sizes)",
    ),
]


def make_case(dtype_name: str, backend: str, **options):
    """One setup shared by every mode: inputs, the upstream gradient and the forward;
    ``options``: more ``adex_scan`` arguments (``checkpoint_every``, ``spike_dtype``)."""
    T, B, N = SHAPE
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    dtype = DTYPES[dtype_name]
    x = torch.randn((T, B, N), generator=gen, device=DEVICE).mul_(8.0).add_(12.0).to(dtype)
    x.requires_grad_(True)
    V0 = torch.rand((B, N), generator=gen, device=DEVICE) * 10.0 - 70.0
    w0 = torch.zeros((B, N), device=DEVICE)
    g = torch.randn((T, B, N), generator=gen, device=DEVICE).to(dtype)
    params = adex.AdExParams()
    packed = params.packed(1, DEVICE) if backend == "triton" else None

    def forward():
        return adex.adex_scan(
            x, V0, w0, params, dt=DT, backend=backend, check_finite=False,
            packed_params=packed, **options,
        ).spikes  # fmt: skip

    return x, g, forward


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(mode: str, x, g, forward):
    """The callable timed for ``mode``: ``fwd_nograd``, ``fwd``, ``bwd`` (backward alone,
    replayed with ``retain_graph``) or ``full``."""
    if mode == "fwd_nograd":

        def fn():
            with torch.no_grad():
                out = forward()
            sync()
            return out

    elif mode == "fwd":

        def fn():
            out = forward()
            sync()
            return out

    elif mode == "bwd":
        out = forward()

        def fn():
            (gx,) = torch.autograd.grad(out, x, g, retain_graph=True)
            sync()
            return gx

    else:

        def fn():
            (gx,) = torch.autograd.grad(forward(), x, g)
            sync()
            return gx

    return fn


def run_benchmark(benchmark, backend: str, dtype_name: str, mode: str, label: str, **options):
    """Time one case; record the bytes model and the achieved GB/s in ``extra_info``."""
    x, g, forward = make_case(dtype_name, backend, **options)
    model_options = {k: v for k, v in options.items() if v is not None}
    if "checkpoint_every" in model_options:
        model_options["T"] = SHAPE[0]
    neuron_steps = x.numel()
    model = bytes_model.bytes_per_neuron_step(mode, dtype_name, **model_options)
    benchmark.group = f"{mode} {dtype_name}{label} T,B,N={SHAPE}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter: NOT a timing)",
        neuron_steps=neuron_steps,
        model_bytes_per_neuron_step=model,
        options={k: str(v) for k, v in options.items()},
    )
    if "checkpoint_every" in model_options and mode != "fwd":
        benchmark.extra_info["model_bytes_with_scratch"] = bytes_model.bytes_per_neuron_step(
            mode, dtype_name, scratch=True, **model_options
        )
    result = benchmark.pedantic(
        timed(mode, x, g, forward), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        median_s = benchmark.stats.stats.median
        benchmark.extra_info["achieved_gbps"] = model * neuron_steps / median_s / 1e9
    return x, result


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_scan(benchmark, backend: str, dtype_name: str, mode: str):
    x, result = run_benchmark(benchmark, backend, dtype_name, mode, "")
    assert result.shape == x.shape
    assert result.dtype == x.dtype


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_scan_checkpoint(benchmark, backend: str, dtype_name: str, mode: str):
    """Low-memory BPTT: ``checkpoint_every=K`` (recomputed segments in the backward)."""
    label = f" checkpoint_every={CHECKPOINT_EVERY}"
    x, result = run_benchmark(
        benchmark, backend, dtype_name, mode, label, checkpoint_every=CHECKPOINT_EVERY
    )
    assert result.shape == x.shape
    assert result.dtype == x.dtype


@pytest.mark.parametrize("spike_dtype", [torch.uint8, torch.bool], ids=["uint8", "bool"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_forward_byte_spikes(benchmark, backend: str, dtype_name: str, spike_dtype):
    """The no-grad forward writing 1-byte spikes (``spike_dtype`` uint8/bool)."""
    label = f" spike_dtype={str(spike_dtype).replace('torch.', '')}"
    x, result = run_benchmark(
        benchmark, backend, dtype_name, "fwd_nograd", label, spike_dtype=spike_dtype
    )
    assert result.shape == x.shape
    assert result.dtype == spike_dtype
