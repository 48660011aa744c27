"""The CPU kernels' reused output memory (``adex.cpu.buffers``): a buffer is handed out
again only after every tensor on it is gone (views and autograd's saved tensors included),
the idle total keeps its limit, and results are bitwise those of fresh memory."""

from __future__ import annotations

import gc

import pytest
import torch

import adex
from adex.cpu import buffers

# [T, batch, neurons] with T * batch * neurons * 4 bytes = 2 MiB: every sequence is cached
T, B, N = 8, 32, 2048


@pytest.fixture
def fresh_cache():
    """An empty cache with the default limit, restored afterwards."""
    limit = buffers.cache_limit()
    buffers.empty_cache()
    buffers.set_cache_limit(1 << 30)
    yield
    buffers.set_cache_limit(limit)
    buffers.empty_cache()


def _input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((T, B, N), generator=g) * 35.0 + 5.0


def test_a_buffer_returns_only_when_its_last_view_is_gone(fresh_cache):
    shape = (T, B, N)
    t = buffers.empty(shape, torch.float32)
    ptr = t.data_ptr()
    u = buffers.empty(shape, torch.float32)
    assert u.data_ptr() != ptr  # t holds its buffer
    del u  # idle now
    view = t[1:].transpose(0, 1)
    del t
    gc.collect()
    a = buffers.empty(shape, torch.float32)  # u's buffer: the view holds t's
    b = buffers.empty(shape, torch.float32)  # none idle: new memory
    assert ptr not in (a.data_ptr(), b.data_ptr())
    del view
    assert buffers.empty(shape, torch.float32).data_ptr() == ptr


def test_reuse_is_by_size_and_small_tensors_bypass_the_cache(fresh_cache):
    big = buffers.empty((T, B, N), torch.float32)
    ptr = big.data_ptr()
    del big
    assert buffers.idle_bytes() == T * B * N * 4
    # the same bytes in another dtype and shape: the same buffer
    as_f64 = buffers.empty((T, B, N // 2), torch.float64)
    assert as_f64.data_ptr() == ptr and as_f64.dtype == torch.float64
    assert as_f64.shape == (T, B, N // 2) and as_f64.is_contiguous()
    del as_f64
    small = buffers.empty((4, 4), torch.float32)
    assert small.shape == (4, 4) and buffers.idle_bytes() == T * B * N * 4


def test_the_limit_bounds_the_idle_bytes(fresh_cache):
    nbytes = T * B * N * 4
    buffers.set_cache_limit(nbytes)
    a = buffers.empty((T, B, N), torch.float32)
    b = buffers.empty((T, B, N), torch.float32)
    del a, b
    assert buffers.idle_bytes() == nbytes  # one kept, one released
    buffers.set_cache_limit(0)
    assert buffers.idle_bytes() == 0
    c = buffers.empty((T, B, N), torch.float32)
    del c
    assert buffers.idle_bytes() == 0
    buffers.set_cache_limit(1 << 30)
    d = buffers.empty((T, B, N), torch.float32)
    del d
    assert buffers.idle_bytes() == nbytes
    buffers.empty_cache()
    assert buffers.idle_bytes() == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_a_bad_limit_is_refused(bad):
    with pytest.raises(ValueError, match="cache limit"):
        buffers.set_cache_limit(bad)


def test_a_bad_environment_limit_is_refused(monkeypatch):
    monkeypatch.setenv("ADEX_CPU_CACHE_BYTES", "lots")
    with pytest.raises(ValueError, match="ADEX_CPU_CACHE_BYTES"):
        buffers._limit_from_env()
    monkeypatch.setenv("ADEX_CPU_CACHE_BYTES", "123")
    assert buffers._limit_from_env() == 123


def _train(layer, x, seed_grad: int):
    """Spikes and the gradients of x and the learnable parameters for a random output
    gradient."""
    xg = x.clone().requires_grad_(True)
    layer.init_state(B)
    spikes = layer(xg)
    g = torch.rand(spikes.shape, generator=torch.Generator().manual_seed(seed_grad))
    spikes.backward(g)
    grads = [xg.grad] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    return spikes.detach().clone(), grads


def test_training_calls_equal_with_and_without_the_cache(fresh_cache):
    x = _input()
    layer = adex.AdExIF(N, backend="cpu", learnable=("tau", "b"))
    buffers.set_cache_limit(0)
    expected = [_train(layer, x, s) for s in range(3)]
    buffers.set_cache_limit(1 << 30)
    got = [_train(layer, x, s) for s in range(3)]  # the later calls reuse memory
    assert buffers.idle_bytes() > 0
    for (s0, g0), (s1, g1) in zip(expected, got, strict=True):
        assert torch.equal(s0, s1)
        for a, b in zip(g0, g1, strict=True):
            assert torch.equal(a, b)


def test_saved_tensors_are_never_reused_under_retain_graph(fresh_cache):
    """A graph kept for a second backward keeps its saved sequences: calls in between
    allocate elsewhere, and the second backward equals the first."""
    layer = adex.AdExIF(N, backend="cpu")
    xg = _input().requires_grad_(True)
    layer.init_state(B)
    spikes = layer(xg)
    g = torch.rand(spikes.shape, generator=torch.Generator().manual_seed(1))
    (first,) = torch.autograd.grad(spikes, xg, g, retain_graph=True)
    for seed in range(2, 5):  # other calls of the same size, their memory freed each time
        _train(adex.AdExIF(N, backend="cpu"), _input(seed), seed)
    (second,) = torch.autograd.grad(spikes, xg, g)
    assert torch.equal(first, second)
