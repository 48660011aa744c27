"""``lengths=`` (variable-length batches): fused vs reference on every model, the identity
with per-sample runs (forward, final state, gradients), float64 gradcheck, bad input."""

from __future__ import annotations

import pytest
import torch

import adex
from tests.helpers import assert_close

T, B, N = 9, 3, 2
LENGTHS = (9, 4, 6)
CASES = {  # model, its arguments, input scale (mA) that makes it spike
    "adexif": (adex.AdExIF, dict(learnable=("tau", "b")), 40.0),
    "adexif_syn": (adex.AdExIF, dict(tau_syn=1.5, learnable=("tau_syn",)), 60.0),
    "adexif_hard": (adex.AdExIF, dict(spk_reset="hard", learnable=("V_reset",)), 40.0),
    "adexifref": (adex.AdExIFRef, {}, 40.0),
    "expif": (adex.ExpIF, {}, 60.0),
    "lif": (adex.LIF, dict(learnable=("tau",)), 8.0),
    "adlifref_syn": (adex.AdLIFRef, dict(tau_syn=1.0), 90.0),
    "li": (adex.LI, dict(tau_syn=2.0, learnable=("tau",)), 8.0),
}


def _run(case, backend, batch=B, lengths=LENGTHS, x=None, V0=None, **kw):
    cls, args, scale = CASES[case]
    layer = cls(N, dt=0.5, backend=backend, **args, **kw)
    layer.init_state(batch)
    if x is None:
        torch.manual_seed(4)
        x = torch.rand(T, batch, N) * scale
        V0 = layer.V + torch.rand(batch, N) * 3
    x, V0 = x.clone().requires_grad_(), V0.clone().requires_grad_()
    layer.V = V0
    lengths = None if lengths is None else torch.tensor(lengths)
    states = kw.get("checkpoint_every") is None and cls is not adex.LI  # LI: V out
    out = layer(x, return_states=states, lengths=lengths)
    spikes = out if cls is adex.LI or not states else out.spikes
    torch.manual_seed(6)
    loss = (spikes * torch.rand(spikes.shape)).sum() + layer.V.sum() * 0.1
    if states:
        loss = loss + out.V.sum() * 0.01
    tensors = [x, V0] + [getattr(layer, k) for k in layer.learnable]
    grads = torch.autograd.grad(loss, tensors)
    return spikes.detach(), layer.V.detach(), grads


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_reference(case, backend):
    ref = _run(case, "reference")
    out = _run(case, backend)
    assert_close("out", ref[0], out[0], 1e-4, 1e-5)
    assert_close("V", ref[1], out[1], 1e-4, 1e-5)
    for a, b in zip(ref[2], out[2], strict=True):
        assert_close("grad", a, b, 1e-5 * a.abs().max().item() + 1e-7, 1e-4)
    if CASES[case][0] is not adex.LI:
        assert ref[0].sum() > 0
        assert ref[0][4:, 1].sum() == 0 and ref[0][6:, 2].sum() == 0  # no spikes past
    gx = out[2][0]
    assert gx[4:, 1].abs().max() == 0 and gx[6:, 2].abs().max() == 0  # no gradient past
    assert gx[:4, 1].abs().max() > 0


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("case", ["adexif_syn", "adexifref"])
def test_fused_matches_reference_checkpointed(case, backend):
    ref = _run(case, "reference", checkpoint_every=4)
    out = _run(case, backend, checkpoint_every=4)
    for a, b in zip(ref[:2] + tuple(ref[2]), out[:2] + tuple(out[2]), strict=True):
        assert_close("ckpt", a, b, 1e-5 * a.abs().max().item() + 1e-6, 1e-4)


@pytest.mark.parametrize(
    "backend,case",
    [("reference", "adexif_syn"), ("reference", "lif"), ("reference", "li"),
     ("triton", "adexif_syn"), ("cpu", "adexif_syn"), ("cpu", "li")],
)  # fmt: skip
def test_equals_per_sample_runs(backend, case):
    """The batch with lengths equals each sample run alone on its own length: outputs up to
    its length (held / zero after), final state, gradients of x and of the initial V."""
    torch.manual_seed(8)
    scale = CASES[case][2]
    x = torch.rand(T, B, N) * scale
    V0 = torch.rand(B, N) * 3 + (-65.0 if CASES[case][0] is adex.AdExIF else 0.0)
    batch = _run(case, backend, x=x, V0=V0)
    is_li = CASES[case][0] is adex.LI
    for b, L in enumerate(LENGTHS):
        alone = _run(case, backend, batch=1, lengths=None, x=x[:L, b : b + 1],
                     V0=V0[b : b + 1])  # fmt: skip
        assert_close("out", alone[0][:, 0], batch[0][:L, b], 1e-5, 1e-6)
        held = alone[0][-1:, 0].expand(T - L, N) if is_li else torch.zeros(T - L, N)
        assert_close("out past", held, batch[0][L:, b], 1e-5)
        assert_close("final V", alone[1][0], batch[1][b], 1e-5, 1e-6)
    # the loss weights of _run are drawn per shape: the gradients through a common loss
    _same_gradients(case, backend, x, V0)


def _same_gradients(case, backend, x, V0):
    cls, args, _ = CASES[case]
    torch.manual_seed(1)
    w = torch.rand(T, B, N)
    grads_batch = _loss_grads(cls, args, backend, x, V0, w, torch.tensor(LENGTHS))
    for b, L in enumerate(LENGTHS):
        g = _loss_grads(cls, args, backend, x[:L, b : b + 1], V0[b : b + 1], w[:L, b : b + 1])
        assert_close("grad x", g[0][:, 0], grads_batch[0][:L, b], 1e-6, 1e-5)
        assert_close("grad V0", g[1][0], grads_batch[1][b], 1e-6, 1e-5)


def _loss_grads(cls, args, backend, x, V0, w, lengths=None):
    layer = cls(N, dt=0.5, backend=backend, **{k: v for k, v in args.items() if k != "learnable"})
    layer.init_state(x.shape[1])
    x, V0 = x.clone().requires_grad_(), V0.clone().requires_grad_()
    layer.V = V0
    out = layer(x, return_states=cls is not adex.LI, lengths=lengths)
    main = out if cls is adex.LI else out.spikes
    if lengths is not None:  # the padded rows of a held V sequence carry no loss weight
        mask = (torch.arange(x.shape[0])[:, None] < lengths[None, :]).float()[..., None]
        w = w * mask
    loss = (main * w[: x.shape[0]]).sum() + layer.V.pow(2).sum() * 0.01
    return torch.autograd.grad(loss, [x, V0])


def test_gradcheck_reference_float64():
    torch.manual_seed(3)
    x = (torch.rand(5, 2, 2, dtype=torch.float64) * 3).requires_grad_()
    V0 = (torch.rand(2, 2, dtype=torch.float64) - 65).requires_grad_()
    I0 = torch.rand(2, 2, dtype=torch.float64).requires_grad_()
    lengths = torch.tensor([5, 2])
    tiny = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)

    def f(x, V0, I0):
        p = adex.AdExParams(tau_syn=2.0)
        out = adex.adex_scan(x, V0, torch.zeros_like(V0), p, dt=0.5, I0=I0, lengths=lengths,
                             return_states=True, backend="reference", surrogate=tiny)  # fmt: skip
        assert out.spikes.sum() == 0
        return out.V, out.w, out.I

    assert torch.autograd.gradcheck(f, (x, V0, I0))


def test_bad_lengths():
    layer = adex.LIF(N, backend="reference")
    layer.init_state(B)
    x = torch.rand(T, B, N)
    with pytest.raises(ValueError, match=r"1\.\.T"):
        layer(x, lengths=torch.tensor([9, 0, 3]))
    with pytest.raises(ValueError, match=r"1\.\.T"):
        layer(x, lengths=torch.tensor([10, 1, 3]))
    with pytest.raises(ValueError, match="shape"):
        layer(x, lengths=torch.tensor([9, 3]))
    with pytest.raises(TypeError, match="integer"):
        layer(x, lengths=torch.tensor([9.0, 3.0, 2.0]))
    with pytest.raises(TypeError, match="integer"):
        layer(x, lengths=[9, 3, 2])
    with pytest.raises(ValueError, match="device"):
        layer(x, lengths=torch.tensor([9, 3, 2], device="meta"))
    single = adex.LIF(N, backend="reference")
    single.init_state()  # no batch dimension
    with pytest.raises(ValueError, match="batch"):
        single(torch.rand(T, N), lengths=torch.tensor([3]))
