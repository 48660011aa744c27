"""The backward launchers write one compact row of per-element parameter gradients per
parameter of the spec's ``param_mask`` (``adex.params.grad_rows``): no memory, and no zero
fill, for the parameters without a gradient. These tests pin the layout against the
all-parameter backward on the same inputs, for the Triton and the CPU kernels."""

from __future__ import annotations

import pytest
import torch

import adex
from adex.params import ALL_PARAMS, N_PARAMS, PACKED_ROWS, full_param_grads, grad_rows
from adex.spec import ScanSpec
from adex.surrogate import Sigmoid

T, B, N = 6, 3, 8
TAU_B = (1 << PACKED_ROWS["tau"]) | (1 << PACKED_ROWS["b"])
MASKS = [TAU_B, 1 << PACKED_ROWS["V_th"], (1 << PACKED_ROWS["R"]) | (1 << PACKED_ROWS["a"])]


def test_grad_rows_and_full_param_grads():
    assert grad_rows(ALL_PARAMS) == tuple(range(N_PARAMS))
    assert grad_rows(TAU_B) == (PACKED_ROWS["tau"], PACKED_ROWS["b"])
    assert grad_rows(0) == ()
    compact = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    full = full_param_grads(compact, TAU_B)
    assert full.shape == (N_PARAMS, 2)
    assert torch.equal(full[PACKED_ROWS["tau"]], compact[0])
    assert torch.equal(full[PACKED_ROWS["b"]], compact[1])
    others = [k for k in range(N_PARAMS) if k not in grad_rows(TAU_B)]
    assert torch.equal(full[others], torch.zeros(len(others), 2))
    assert full_param_grads(compact, ALL_PARAMS) is compact


def _inputs():
    gen = torch.Generator().manual_seed(7)
    x = 20.0 + 30.0 * torch.rand(T, B, N, generator=gen)
    V0 = -70.0 + 20.0 * torch.rand(B, N, generator=gen)
    w0 = 0.5 * torch.rand(B, N, generator=gen)
    state0 = torch.stack([V0, w0]).contiguous()
    g_spikes = torch.randn(T, B, N, generator=gen)
    g_state = torch.randn(2, B, N, generator=gen)
    params = adex.AdExParams(tau=5.0, a=0.3, b=1.5)
    return x, state0, params.packed(1, "cpu"), g_spikes, g_state


def _per_element_grads(backend: str, mask: int) -> torch.Tensor:
    x, state0, packed, g_spikes, g_state = _inputs()
    spec = ScanSpec(dt=0.1, surrogate=Sigmoid(), param_mask=mask)
    plan = spec.plan(True, True)
    if backend == "triton":
        from adex.kernels import adex_scan_bwd, adex_scan_fwd
        from adex.kernels.scan_bwd import SavedForBackward

        out = adex_scan_fwd(x, state0, packed, spec, plan)
        assert out.spikes.sum() > 0  # the reset terms take part
        saved = SavedForBackward(state0, out.v_seq, out.w_seq, out.ref_bits, None, None)
        return adex_scan_bwd(saved, packed, spec, plan, g_spikes, None, None, g_state,
                             x.dtype, T).grad_params  # fmt: skip
    from adex.cpu.launch import cpu_scan_bwd, cpu_scan_fwd

    out = cpu_scan_fwd(x, state0, packed, spec, plan)
    assert out.spikes.sum() > 0
    return cpu_scan_bwd(out, state0, x, packed, spec, plan,
                        (g_spikes, g_state, None, None, None), T, 0, (True, True))[2]  # fmt: skip


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("mask", MASKS)
def test_compact_rows_are_the_full_backward_rows(backend, mask):
    if backend == "triton":
        pytest.importorskip("triton")
    else:
        pytest.importorskip("numba")
    full = _per_element_grads(backend, ALL_PARAMS)
    compact = _per_element_grads(backend, mask)
    rows = grad_rows(mask)
    assert full.shape == (N_PARAMS, B, N)
    assert compact.shape == (len(rows), B, N)
    assert torch.isfinite(compact).all() and compact.abs().sum() > 0
    torch.testing.assert_close(compact, full[list(rows)], rtol=0, atol=0)
