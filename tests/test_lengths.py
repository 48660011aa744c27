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


@pytest.mark.parametrize(
    "backend,cls,args",
    [("reference", adex.AdExIFRef, {}), ("triton", adex.AdExIFRef, {}),
     ("reference", adex.AdLIFRef, dict(tau_syn=1.0)), ("triton", adex.AdLIFRef, dict(tau_syn=1.0))],
)  # fmt: skip
def test_refractory_clock_continues_as_per_sample_runs(backend, cls, args):
    """Two consecutive calls with lengths equal each sample run alone on its own lengths,
    call after call: the held steps do not count toward its refractory period (its
    last-spike time moves with the clock), so the second call's spikes, V and time since
    the last spike are the per-sample runs'."""
    T2, lengths2 = 7, (3, 7, 5)
    torch.manual_seed(9)
    x1, x2 = torch.rand(T, B, N) * 90, torch.rand(T2, B, N) * 90
    V0 = torch.rand(B, N) * 3 - 65

    def layer_for(batch):
        layer = cls(N, dt=0.5, tau_ref=2.0, backend=backend, **args)
        layer.init_state(batch)
        return layer

    batch = layer_for(B)
    batch.V = V0
    first = batch(x1, lengths=torch.tensor(LENGTHS))
    second = batch(x2, lengths=torch.tensor(lengths2))
    since_batch = batch.t_step * 0.5 - batch.last_spike_time
    refractory_start = 0
    for b, (L1, L2) in enumerate(zip(LENGTHS, lengths2, strict=True)):
        alone = layer_for(1)
        alone.V = V0[b : b + 1]
        assert_close("first", alone(x1[:L1, b : b + 1])[:, 0], first[:L1, b], 0.0)
        since_first = alone.t_step * 0.5 - alone.last_spike_time[0]
        refractory_start += int((since_first < 2.0).sum())
        out = alone(x2[:L2, b : b + 1])
        assert_close("second", out[:, 0], second[:L2, b], 0.0)
        assert_close("V", alone.V[0], batch.V[b], 1e-5, 1e-6)
        since = alone.t_step * 0.5 - alone.last_spike_time[0]
        assert_close("time since the last spike", since, since_batch[b], 1e-5)
    assert refractory_start > 0, "test data: no sample starts the second call refractory"


@pytest.mark.parametrize("spk_reset", ["soft", "hard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_matches_reference_every_initial_state(dtype, spk_reset):
    """AdLIFRef with a learnable synapse and lengths, fp32 and bf16 input, both resets:
    forward and the gradients of x, of every initial state (V, w, I) and of tau, tau_syn."""

    def run(backend):
        layer = adex.AdLIFRef(
            N, dt=0.5, tau_ref=1.0, spk_reset=spk_reset, backend=backend,
            tau_syn=torch.tensor([1.0, 2.5]), learnable=("tau", "tau_syn"),
        )  # fmt: skip
        layer.init_state(B)
        torch.manual_seed(11)
        x = (torch.rand(T, B, N) * 90).to(dtype).requires_grad_()
        V0 = (layer.V + torch.rand(B, N) * 8).requires_grad_()
        w0 = (torch.rand(B, N) * 2).requires_grad_()
        I0 = (torch.rand(B, N) * 20).requires_grad_()
        layer.V, layer.w, layer.I = V0, w0, I0
        out = layer(x, return_states=True, lengths=torch.tensor(LENGTHS))
        torch.manual_seed(12)
        loss = (out.spikes.float() * torch.rand(T, B, N)).sum() + out.V.mean() + out.I.sin().sum()
        loss = loss + (layer.w * torch.rand(B, N)).sum() + layer.I.pow(2).sum() * 0.1
        grads = torch.autograd.grad(loss, [x, V0, w0, I0, layer.tau, layer.tau_syn])
        return [out.spikes.float(), out.V, out.w, out.I, layer.last_spike_time], grads

    ref, fused = run("reference"), run("triton")
    assert ref[0][0].sum() > 0 and ref[0][0][4:, 1].sum() == 0
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(("spikes", "V", "w", "I", "t_last"), ref[0], fused[0], strict=True):
        assert_close(name, a, b, tol, tol)
    names = ("x", "V0", "w0", "I0", "tau", "tau_syn")
    for name, a, b in zip(names, ref[1], fused[1], strict=True):
        scale = a.abs().max().item()
        assert scale > 0, f"grad {name} is all zero"
        assert_close(f"grad {name}", a.float(), b.float(), tol * scale, tol)


def test_gradcheck_adlif_synapse_lengths_float64():
    """Finite differences (float64, reference) of AdLIF with a synapse and lengths, spiking:
    the gradients of x, V0, w0, I0 and tau_syn."""
    torch.manual_seed(5)
    x = (torch.rand(6, 2, 2, dtype=torch.float64) * 40 + 20).requires_grad_()
    V0 = (torch.rand(2, 2, dtype=torch.float64) * 4 - 64).requires_grad_()
    w0 = torch.rand(2, 2, dtype=torch.float64).requires_grad_()
    I0 = (torch.rand(2, 2, dtype=torch.float64) * 5).requires_grad_()
    tau_syn = (torch.rand(2, dtype=torch.float64) + 1.0).requires_grad_()
    lengths = torch.tensor([6, 3])
    tiny = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)  # no spike path within eps

    def f(x, V0, w0, I0, tau_syn):
        out = adex.adex_scan(x, V0, w0, adex.AdExParams(tau_syn=tau_syn), dt=0.5, I0=I0,
                             has_exp=False, lengths=lengths, return_states=True,
                             backend="reference", surrogate=tiny)  # fmt: skip
        return out.V, out.w, out.I

    spikes = adex.adex_scan(x.detach(), V0.detach(), w0.detach(),
                            adex.AdExParams(tau_syn=tau_syn.detach()), dt=0.5,
                            I0=I0.detach(), has_exp=False, lengths=lengths,
                            backend="reference").spikes  # fmt: skip
    assert spikes.sum() > 0, "test data: no spikes"
    assert torch.autograd.gradcheck(f, (x, V0, w0, I0, tau_syn))
