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


@pytest.mark.parametrize(("cls", "kwargs"), CASES[:4])
def test_direct_apply_equals_the_full_apply(cls, kwargs, monkeypatch):
    """The eager Function call without ``apply``'s Python wrapper (``eager_apply``) gives
    bitwise the outputs and gradients of the full ``FusedScan.apply``."""
    assert adex.fused._direct_apply(adex.fused.FusedScan) is not None  # this torch has it
    direct = _run(cls, kwargs, False, monkeypatch, True, True)
    monkeypatch.setattr(adex.fused, "_DIRECT", {adex.fused.FusedScan: False})
    full = _run(cls, kwargs, False, monkeypatch, True, True)
    assert direct.keys() == full.keys()
    for name in direct:
        assert torch.equal(direct[name], full[name]), f"{name}: direct apply != apply"


def test_a_tensor_left_by_a_finished_torch_func_transform_is_accepted():
    """A tensor that escaped a ``torch.func`` transform (a dead functorch wrapper) is
    unwrapped, as ``Function.apply`` does: the same spikes and gradients as its plain
    values."""
    escaped = []

    def keep(x):
        escaped.append(x * 1.0)
        return x.sum()

    gen = torch.Generator().manual_seed(3)
    values = (torch.rand(40, 3, 6, generator=gen) * 40 + 20).to(DEVICE)
    torch.func.grad(keep)(values)
    assert torch._C._functorch.is_functorch_wrapped_tensor(escaped[0])
    results = []
    for x in (escaped[0], values.clone()):
        layer = adex.AdExIF(6, dt=0.5, backend="triton", learnable=("tau",)).to(DEVICE)
        layer.init_state(3)
        spikes = layer(x)
        spikes.sum().backward()
        results.append((spikes.detach(), layer.tau.grad))
    assert results[0][0].sum() > 0, "test data: no spikes"
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
