"""pytest-benchmark suite: the fused scans vs the per-step reference at a small size.

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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CUDA and not INTERPRETED,
        reason="needs CUDA, or TRITON_INTERPRET=1 before adex is imported (tiny sizes)",
    ),
]


def make_case(dtype_name: str, backend: str):
    """One setup shared by every mode: inputs, the upstream gradient and the forward."""
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
            x, V0, w0, params, dt=DT, backend=backend, check_finite=False, packed_params=packed
        ).spikes

    return x, g, forward


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("mode", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_scan(benchmark, backend: str, dtype_name: str, mode: str):
    x, g, forward = make_case(dtype_name, backend)
    if mode == "fwd":

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

    neuron_steps = x.numel()
    model = bytes_model.bytes_per_neuron_step(mode, dtype_name)
    benchmark.group = f"{mode} {dtype_name} T,B,N={SHAPE}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter: NOT a timing)",
        neuron_steps=neuron_steps,
        model_bytes_per_neuron_step=model,
    )
    result = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert result.shape == x.shape
    assert result.dtype == x.dtype
    if benchmark.stats is not None:  # None under --benchmark-disable
        median_s = benchmark.stats.stats.median
        benchmark.extra_info["achieved_gbps"] = model * neuron_steps / median_s / 1e9
