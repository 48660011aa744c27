"""The two ways into the fused kernels agree bit for bit: the eager path (the launchers
under ``adex.fused.FusedScan``, or the forward launcher alone without a gradient) and the
``adex::scan_fwd`` / ``adex::scan_bwd`` custom ops that ``torch.compile`` traces through
(forced here in eager mode)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

import adex
import adex.fused
from adex.kernels.launch import INTERPRETED

pytestmark = pytest.mark.skipif(
    not (adex.HAS_TRITON and (INTERPRETED or torch.cuda.is_available())),
    reason="needs the fused kernels (a GPU or TRITON_INTERPRET=1)",
)

CASES = [
    pytest.param(adex.AdExIF, {}, id="adex"),
    pytest.param(adex.AdExIFRef, dict(tau_ref=0.4, spk_reset="hard"), id="adexref-hard"),
    pytest.param(
        adex.ExpIF,
        dict(V_th=-45.0, V_initializer=-52.0, learnable=("tau", "V_T")),
        id="expif-learn",
    ),
    pytest.param(adex.AdExIF, dict(learnable=("tau", "b", "V_th")), id="adex-learn"),
    pytest.param(
        adex.AdExIF,
        dict(V_th=torch.linspace(-56, -53, 6), learnable=("a",)),
        id="adex-perneuron-learn",
    ),
    pytest.param(adex.AdExIFRef, dict(tau_ref=0.4, checkpoint_every=3), id="adexref-ckpt"),
    pytest.param(adex.LIF, dict(detach_reset=True), id="lif-detach"),
]


def _run(cls, kwargs, through_ops: bool, monkeypatch, return_states: bool, grad: bool):
    monkeypatch.setattr(adex.fused, "_through_ops", lambda: through_ops)
    gen = torch.Generator().manual_seed(5)
    drive = 6.0 if cls is adex.LIF else 40.0
    x = (torch.randn(11, 3, 6, generator=gen) * drive / 3 + drive).to(DEVICE)
    layer = cls(6, dt=0.2, backend="triton", **kwargs).to(DEVICE)
    layer.init_state(3)
    V0 = (layer.V + torch.rand(3, 6, generator=gen).to(DEVICE) * 4).requires_grad_(grad)
    layer.V = V0
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = layer(x, return_states=return_states)
        spikes = out.spikes if return_states else out
        tensors = {"spikes": spikes, "V": layer.V}
        if return_states:
            tensors.update(V_seq=out.V)
        if not grad:
            return {k: t.detach() for k, t in tensors.items()}
        weights = torch.randn(spikes.shape, generator=gen).to(DEVICE)
        loss = (spikes * weights).sum() + layer.V.sum() * 0.1
        if return_states:
            loss = loss + out.V.sum() * 0.01
        leaves = [x, V0, *layer.parameters()]
        grads = torch.autograd.grad(loss, leaves)
    result = {k: t.detach() for k, t in tensors.items()}
    result.update({f"grad{i}": g for i, g in enumerate(grads)})
    return result


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_eager_path_equals_custom_ops(cls, kwargs, grad, monkeypatch):
    return_states = kwargs.get("checkpoint_every") is None
    eager = _run(cls, kwargs, False, monkeypatch, return_states, grad)
    ops = _run(cls, kwargs, True, monkeypatch, return_states, grad)
    assert eager["spikes"].sum() > 0, "test data: no spikes"
    assert eager.keys() == ops.keys()
    for name in eager:
        assert torch.equal(eager[name], ops[name]), f"{name}: eager path != custom ops"
