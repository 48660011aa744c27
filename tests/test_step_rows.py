"""Incoming gradients that are the same at every step (stride 0 over T: ``sum()``,
``mean()``, a readout of ``spikes.sum(0)``) reach the backward kernels as one row, which
they read for every step: the gradients are bitwise those of the same values given
materialized, on the fused Triton kernels (interpreter or GPU) and the CPU kernels."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

import adex
import adex.fused
from adex.cpu import launch as cpu_launch
from adex.kernels.launch import INTERPRETED
from adex.step_rows import per_step_or_row

T, B, N = 9, 3, 8
TRITON = pytest.mark.skipif(
    not (adex.HAS_TRITON and (INTERPRETED or torch.cuda.is_available())),
    reason="needs the fused kernels (a GPU or TRITON_INTERPRET=1)",
)
BACKENDS = [pytest.param("triton", marks=TRITON), "cpu"]
MODELS = [
    pytest.param(adex.AdExIF, dict(learnable=("tau", "a", "b")), id="adex-learn"),
    pytest.param(adex.AdExIFRef, dict(tau_ref=1.0, spk_reset="hard"), id="adexref-hard"),
    pytest.param(adex.AdExIF, dict(checkpoint_every=4, learnable=("V_th",)), id="adex-ckpt"),
    pytest.param(adex.LIF, dict(tau_syn=2.0), id="lif-syn"),
]


def test_per_step_or_row():
    g = torch.rand(B, N)
    assert per_step_or_row(None) is None
    full = torch.rand(T, B, N)
    assert per_step_or_row(full) is full
    row = per_step_or_row(g.expand(T, B, N))
    assert row.shape == (1, B, N) and torch.equal(row[0], g)
    one = torch.ones(()).expand(T, B, N)
    assert per_step_or_row(one).shape == (1, B, N)
    single = g.expand(1, B, N)
    assert per_step_or_row(single) is single  # T = 1: already one row


def _spy(backend: str, monkeypatch) -> list[int]:
    """The leading size of the spike gradient each backward kernel launch gets."""
    rows: list[int] = []
    if backend == "cpu":
        kernel = cpu_launch.scan_backward

        def spy(*args):
            rows.append(args[6].shape[0])
            return kernel(*args)

        monkeypatch.setattr(cpu_launch, "scan_backward", spy)
    else:
        launcher = adex.fused.adex_scan_bwd

        def spy(saved, packed, spec, plan, g_spikes, *args, **kwargs):
            rows.append(-1 if g_spikes is None else g_spikes.shape[0])
            return launcher(saved, packed, spec, plan, g_spikes, *args, **kwargs)

        monkeypatch.setattr(adex.fused, "adex_scan_bwd", spy)
    return rows


@pytest.mark.parametrize("loss", ["sum", "mean", "readout"])
@pytest.mark.parametrize(("cls", "kwargs"), MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_gradient_equals_it_materialized(backend, cls, kwargs, loss, monkeypatch):
    gen = torch.Generator().manual_seed(11)
    drive = 8.0 if cls is adex.LIF else 40.0
    x = (torch.rand(T, B, N, generator=gen) * drive + drive).to(DEVICE)
    readout = torch.randn(B, N, generator=gen).to(DEVICE)
    device = DEVICE if backend == "triton" else "cpu"
    lengths = torch.tensor([T, T - 3, 2], dtype=torch.int32, device=device)

    def grads(materialize: bool, with_lengths: bool):
        layer = cls(N, dt=0.5, backend=backend, **kwargs).to(device)
        xg = x.to(device).clone().requires_grad_(True)
        layer.init_state(B)
        spikes = layer(xg, lengths=lengths if with_lengths else None)
        if loss == "sum":
            g = torch.ones((), device=device).expand(spikes.shape)
        elif loss == "mean":
            g = torch.full((), 1.0 / spikes.numel(), device=device).expand(spikes.shape)
        else:
            g = readout.to(device).expand(spikes.shape)
        spikes.backward(g.contiguous() if materialize else g)
        assert spikes.sum() > 0, "test data: no spikes"
        return [xg.grad] + [p.grad for p in layer.parameters()]

    rows = _spy(backend, monkeypatch)
    for with_lengths in (False, True):
        if with_lengths and "checkpoint_every" in kwargs:
            continue
        as_row = grads(materialize=False, with_lengths=with_lengths)
        full = grads(materialize=True, with_lengths=with_lengths)
        for a, b in zip(as_row, full, strict=True):
            assert torch.equal(a, b)
    assert rows[0] == 1 and rows[1] == T  # one row, then every step's


@pytest.mark.parametrize("sequence", ["V", "w"])
def test_cpu_constant_state_sequence_gradient_equals_it_materialized(sequence, monkeypatch):
    """The CPU kernels read the V and w sequences' incoming gradients as one row too."""
    gen = torch.Generator().manual_seed(12)
    x = torch.rand(T, B, N, generator=gen) * 40 + 40
    readout = torch.randn(B, N, generator=gen)
    rows: list[int] = []
    kernel = cpu_launch.scan_backward

    def spy(*args):
        rows.append(args[7 if sequence == "V" else 8].shape[0])
        return kernel(*args)

    monkeypatch.setattr(cpu_launch, "scan_backward", spy)

    def grads(materialize: bool):
        layer = adex.AdExIF(N, dt=0.5, backend="cpu", learnable=("tau_w",))
        xg = x.clone().requires_grad_(True)
        layer.init_state(B)
        seq = getattr(layer(xg, return_states=True), sequence)
        g = readout.expand(seq.shape)
        seq.backward(g.contiguous() if materialize else g)
        return [xg.grad, layer.tau_w.grad]

    for a, b in zip(grads(False), grads(True), strict=True):
        assert torch.equal(a, b)
    assert rows == [1, T]
