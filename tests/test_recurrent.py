"""``adex.Recurrent``: the fused recurrent scan against the literal step loop
``s = neuron.update(x[t] + s @ weight.T)`` over the reference step (spikes exactly,
gradients to x, the weight, learnable parameters and the initial state to float rounding),
float64 finite differences of the reference, carried state, the size fallback and bad input.

Exact spikes need the same input currents: the weights of those tests are multiples of
2^-6 mA, so every partial sum of ``s @ weight.T`` is exact in fp32 whatever the order of
the additions (the kernel's ``tl.dot`` and torch's matmul add in different orders)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_close, family_cases
from torch.autograd import gradcheck

import adex
import adex.recurrent_fused as recurrent_fused
from adex.recurrent_reference import recurrent_step_loop
from adex.spec import ScanSpec

DT = 0.2  # ms
CASES = family_cases(tau_ref=1.0)
GRAD_TOL = 2e-3  # of max |reference gradient|, as the feed-forward fused-vs-reference tests


def quantized(t: torch.Tensor, step: float = 2.0**-6) -> torch.Tensor:
    return torch.round(t / step) * step


def make_layer(model: str, n: int, seed: int = 0, scale: float = 20.0, **kw) -> adex.Recurrent:
    """A fused recurrent layer of ``model`` (a ``family_cases`` key) with a random weight
    (multiples of 2^-6 mA, std ``scale / sqrt(n)`` mA)."""
    case = CASES[model]
    neuron = case.cls(n, dt=DT, backend="triton", **dict(case.kwargs, **kw))
    g = torch.Generator().manual_seed(seed)
    weight = quantized(torch.randn(n, n, generator=g) * scale / n**0.5)
    return adex.Recurrent(neuron, weight=weight)


def make_x(model: str, T: int, batch: int, n: int, seed: int = 1) -> torch.Tensor:
    case = CASES[model]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, batch, n, generator=g) * case.x_std + case.x_mean


def step_loop(layer: adex.Recurrent, x: torch.Tensor) -> torch.Tensor:
    """The literal step loop of the issue on the layer's neuron."""
    s, out = layer.spikes, []
    for t in range(x.shape[0]):
        s = layer.neuron.update(x[t] + s @ layer.weight.T)
        out.append(s)
    return torch.stack(out)


def reference_twin(layer: adex.Recurrent) -> adex.Recurrent:
    twin = copy.deepcopy(layer)
    twin.neuron.backend = "reference"
    return twin


def random_v0(layer: adex.Recurrent, model: str, batch: int, seed: int = 2) -> torch.Tensor:
    lo, hi = CASES[model].V0_range
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *layer.in_size, generator=g) * (hi - lo) + lo


def compare(layer: adex.Recurrent, x: torch.Tensor, batch: int, model: str) -> dict:
    """Run the fused layer and the reference step loop from the same random V0 (requiring
    grad), compare spikes exactly and the gradients of a random cotangent of the spikes and
    of the final V; returns the reference spikes."""
    twin = reference_twin(layer)
    V0 = random_v0(layer, model, batch)
    results = []
    for rec, run in ((layer, lambda r, xx: r(xx)), (twin, step_loop)):
        rec.init_state(batch)
        v0 = V0.clone().requires_grad_()
        rec.neuron.V = v0
        xx = x.clone().requires_grad_()
        spikes = run(rec, xx)
        g = torch.Generator().manual_seed(3)
        cot = torch.randn(spikes.shape, generator=g)
        loss = (spikes * cot).sum() + 0.01 * (rec.neuron.V * cot[-1]).sum()
        leaves = {"x": xx, "V0": v0, **dict(rec.named_parameters())}
        grads = torch.autograd.grad(loss, list(leaves.values()))
        results.append((spikes, dict(zip(leaves, grads, strict=True)), rec))
    (s_f, g_f, fused), (s_r, g_r, ref) = results
    assert torch.equal(s_f, s_r), f"{int((s_f != s_r).sum())} spikes differ"
    for name, ref_grad in g_r.items():
        scale = float(ref_grad.abs().max())
        assert scale > 0, f"{name}: zero reference gradient"
        assert_close(f"grad {name}", ref_grad, g_f[name], atol=GRAD_TOL * scale)
    assert_close("V", ref.neuron.V, fused.neuron.V, atol=1e-3, rtol=1e-5)
    assert torch.equal(fused.spikes, s_r[-1])
    assert fused.neuron.t_step == ref.neuron.t_step == x.shape[0]
    return s_r


def assert_spiky(spikes: torch.Tensor) -> None:
    assert spikes.sum() >= 5, f"too few spikes: {int(spikes.sum())}"
    assert spikes[:-1].sum() > 0


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("model", list(CASES))
def test_fused_matches_step_loop(model, reset):
    n, batch = 7, 3
    layer = make_layer(model, n, spk_reset=reset)
    spikes = compare(layer, make_x(model, 24, batch, n), batch, model)
    assert_spiky(spikes)


@pytest.mark.parametrize(
    "surrogate",
    [adex.surrogate.Sigmoid(), adex.surrogate.Arctan(), adex.surrogate.GaussianGrad()],
    ids=lambda s: type(s).__name__,
)
def test_surrogates_and_detach_reset(surrogate):
    n, batch = 5, 2
    for detach in (False, True):
        layer = make_layer("AdExIF", n, spk_fun=surrogate, detach_reset=detach)
        assert_spiky(compare(layer, make_x("AdExIF", 20, batch, n), batch, "AdExIF"))


@pytest.mark.parametrize(
    "model, learnable",
    [
        ("AdExIF", ("tau", "tau_w", "a", "b", "V_th", "R")),
        ("AdExIFRef", ("V_reset", "V_T", "delta_T", "V_rest")),
        ("LIF", ("tau", "V_th")),
    ],
)
def test_learnable_parameters(model, learnable):
    n, batch = 6, 3
    kw = {}
    if "V_th" in learnable:  # per-neuron: a [N] parameter
        base = CASES[model].kwargs.get("V_th", 1.0 if model == "LIF" else -55.0)
        kw["V_th"] = base + torch.linspace(-0.2, 0.2, n)
    layer = make_layer(model, n, learnable=learnable, **kw)
    if "V_th" in learnable:
        assert layer.neuron.V_th.shape == (n,)
    assert_spiky(compare(layer, make_x(model, 20, batch, n), batch, model))


@pytest.mark.parametrize("n, batch, T", [(1, 2, 30), (16, 17, 30), (33, 1, 30), (100, 2, 8),
                                         (256, 1, 6)])  # fmt: skip
def test_odd_sizes_and_batch_tiles(n, batch, T):
    layer = make_layer("AdExIF", n, scale=10.0)
    assert_spiky(compare(layer, make_x("AdExIF", T, batch, n), batch, "AdExIF"))


def test_batch_split_over_programs():
    """A batch larger than one program's tile (64 under the interpreter, 16 on a GPU)."""
    n, batch = 3, 70
    layer = make_layer("LIF", n, scale=4.0)
    assert_spiky(compare(layer, make_x("LIF", 6, batch, n), batch, "LIF"))


def test_one_step_and_update():
    n, batch = 4, 3
    layer = make_layer("AdExIF", n)
    x = make_x("AdExIF", 6, batch, n)
    twin = reference_twin(layer)
    layer.init_state(batch)
    twin.init_state(batch)
    V0 = random_v0(layer, "AdExIF", batch)
    layer.neuron.V, twin.neuron.V = V0, V0.clone()
    steps = torch.stack([layer.update(x[t]) if t % 2 else layer(x[t : t + 1])[0]
                         for t in range(x.shape[0])])  # fmt: skip
    assert torch.equal(steps, step_loop(twin, x))
    assert_spiky(steps)


def test_consecutive_calls_continue_exactly():
    """Two calls equal one: the carried spikes and state; the gradient of the second call's
    loss reaches the first call's input through them."""
    n, batch, T = 6, 2, 20
    x = make_x("AdExIF", T, batch, n)
    whole, split = make_layer("AdExIF", n), make_layer("AdExIF", n)
    for layer in (whole, split):
        layer.init_state(batch)
        layer.neuron.V = random_v0(layer, "AdExIF", batch)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_whole = whole(xa)
    s_split = torch.cat([split(xb[:7]), split(xb[7:])])
    assert torch.equal(s_whole, s_split)
    assert torch.equal(whole.neuron.V, split.neuron.V)
    assert_spiky(s_whole)
    cot = torch.randn(T, batch, n, generator=torch.Generator().manual_seed(4))
    ga = torch.autograd.grad((s_whole * cot)[7:].sum(), [xa, whole.weight])
    gb = torch.autograd.grad((s_split * cot)[7:].sum(), [xb, split.weight])
    assert ga[0][:7].abs().max() > 0  # through the carried spikes and state
    for name, ref, out in zip(("x", "weight"), ga, gb, strict=True):
        assert_close(name, ref, out, atol=1e-5 * float(ref.abs().max()))


def test_detach_state_cuts_the_graph():
    n, batch = 5, 2
    layer = make_layer("AdExIF", n)
    layer.init_state(batch)
    layer.neuron.V = random_v0(layer, "AdExIF", batch)
    x = make_x("AdExIF", 16, batch, n).requires_grad_()
    first = layer(x[:8])
    V, s = layer.neuron.V.clone(), layer.spikes.clone()
    layer.detach_state()
    assert not layer.neuron.V.requires_grad and not layer.spikes.requires_grad
    assert torch.equal(layer.neuron.V, V) and torch.equal(layer.spikes, s)
    second = layer(x[8:])
    (gx,) = torch.autograd.grad((second * torch.rand_like(second)).sum(), [x])
    assert gx[:8].abs().max() == 0 and gx[8:].abs().max() > 0
    assert_spiky(torch.cat([first, second]))


def test_fallback_above_the_size_limit(monkeypatch):
    """Above FUSED_MAX_NEURONS the per-step loop of the fused one-step scan runs: the same
    spikes and gradients."""
    n, batch = 9, 2
    monkeypatch.setattr(recurrent_fused, "FUSED_MAX_NEURONS", 8)
    calls = []
    loop = recurrent_fused.recurrent_step_loop
    monkeypatch.setattr(recurrent_fused, "recurrent_step_loop",
                        lambda *a, **k: calls.append(1) or loop(*a, **k))  # fmt: skip
    layer = make_layer("AdExIF", n, learnable=("b",))
    assert_spiky(compare(layer, make_x("AdExIF", 12, batch, n), batch, "AdExIF"))
    assert calls, "the fallback did not run"


@pytest.mark.parametrize("model", ["AdExIF", "ExpIFRef", "LIF"])
def test_fp32_fused_against_float64_reference(model):
    """An unquantized fp32 weight: the fused layer against the float64 reference loop."""
    n, batch, T = 8, 2, 20
    layer = make_layer(model, n)
    with torch.no_grad():
        layer.weight.add_(torch.rand(n, n) * 1e-3)  # no longer multiples of 2^-6
    twin = reference_twin(layer).double()
    x = make_x(model, T, batch, n)
    layer.init_state(batch)
    twin.init_state(batch, dtype=torch.float64)
    s32 = layer(x)
    s64 = twin(x.double())
    assert torch.equal(s32, s64.float())
    assert_spiky(s32)
    tol = 1e-3 * max(1.0, float(twin.neuron.V.abs().max()) / 60.0)
    assert_close("V", twin.neuron.V, layer.neuron.V, atol=tol)


def test_bf16_input():
    n, batch = 6, 2
    layer = make_layer("AdExIF", n)
    twin = reference_twin(layer)
    x = make_x("AdExIF", 12, batch, n).to(torch.bfloat16)
    layer.init_state(batch)
    twin.init_state(batch)
    spikes = layer(x)
    assert spikes.dtype == torch.bfloat16
    assert torch.equal(spikes.float(), twin(x.float()).float())


def test_gradcheck_reference_float64():
    """Finite differences of the reference step loop in float64 (x, weight, V0, w0): a
    surrogate of support 1e-6 and a trajectory that stays away from the threshold keep the
    spikes locally constant, so the weight's gradient through the carried spikes is exact."""
    n, batch, T = 3, 2, 40
    tiny = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)
    spec = ScanSpec(surrogate=tiny, dt=0.1, backend="reference")
    params = adex.AdExParams()
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    x = (torch.randn(T, batch, n, generator=g, dtype=f64) * 5 + 60).requires_grad_()
    weight = (torch.randn(n, n, generator=g, dtype=f64) * 8).requires_grad_()
    V0 = (torch.rand(batch, n, generator=g, dtype=f64) * 10 - 60).requires_grad_()
    w0 = (torch.rand(batch, n, generator=g, dtype=f64) * 2).requires_grad_()
    s0 = torch.zeros(batch, n, dtype=f64)

    def f(x, weight, V0, w0):
        out = recurrent_step_loop(x, s0, weight, torch.stack([V0, w0]), params, spec)
        spikes, state = out.spikes, out.state
        return state, spikes

    with torch.no_grad():
        spikes, v_seq = _spikes_and_v(x, weight, V0, w0, s0, params, spec)
        u = (torch.cat([V0[None], v_seq]) - params.V_th) / (params.V_th - params.V_reset)
    assert spikes[:-1].sum() >= 3 and u.abs().min() > 1e-4, float(u.abs().min())
    assert gradcheck(lambda *a: f(*a)[0], (x, weight, V0, w0), fast_mode=True, atol=1e-6,
                     rtol=1e-4)  # fmt: skip


def test_gradcheck_reference_float64_synapse():
    """Finite differences of the reference step loop with a synapse on the whole input
    (x, weight, V0, I0, tau_syn), spikes locally constant as above."""
    n, batch, T = 3, 2, 30
    tiny = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)
    spec = ScanSpec(has_w=False, has_exp=False, surrogate=tiny, dt=0.1, backend="reference",
                    has_syn=True)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    f64 = torch.float64
    x = (torch.randn(T, batch, n, generator=g, dtype=f64) * 5 + 120).requires_grad_()
    weight = (torch.randn(n, n, generator=g, dtype=f64) * 8).requires_grad_()
    V0 = (torch.rand(batch, n, generator=g, dtype=f64) * 10 - 60).requires_grad_()
    I0 = (torch.rand(batch, n, generator=g, dtype=f64) * 20).requires_grad_()
    tau_syn = torch.tensor(2.0, dtype=f64, requires_grad=True)
    s0 = torch.zeros(batch, n, dtype=f64)

    def run(x, weight, V0, I0, tau_syn):
        params = adex.AdExParams(tau_syn=tau_syn)
        return recurrent_step_loop(x, s0, weight, torch.stack([V0, I0]), params, spec)

    with torch.no_grad():
        spikes = run(x, weight, V0, I0, tau_syn).spikes
    assert spikes[:-1].sum() >= 3
    assert gradcheck(lambda *a: run(*a).state, (x, weight, V0, I0, tau_syn), fast_mode=True,
                     atol=1e-6, rtol=1e-4)  # fmt: skip


def _spikes_and_v(x, weight, V0, w0, s0, params, spec):
    """The per-step spikes and V of the reference loop (for the trajectory's margin)."""
    state, s, vs, ss = torch.stack([V0, w0]), s0, [], []
    for t in range(x.shape[0]):
        out = recurrent_step_loop(x[t : t + 1], s, weight, state, params, spec)
        s, state = out.spikes, out.state
        s = s[0]
        ss.append(s)
        vs.append(state[0])
    return torch.stack(ss), torch.stack(vs)


def test_reference_backend_on_cpu_float64():
    n, batch = 4, 2
    layer = make_layer("ExpIF", n)
    layer.neuron.backend = "reference"
    layer = layer.double()
    layer.init_state(batch, dtype=torch.float64)
    out = layer(make_x("ExpIF", 40, batch, n).double())
    assert out.dtype == torch.float64
    assert_spiky(out)


def test_batch_first_neuron():
    """A batch_first neuron: [batch, T, N] in and out, equal to the time-first layer on the
    transposed input (spikes, per-step states and gradients)."""
    T, batch, n = 24, 3, 7
    layer = make_layer("AdExIF", n)
    twin = copy.deepcopy(layer)
    twin.neuron.batch_first = True
    x = make_x("AdExIF", T, batch, n)
    x_tf, x_bf = x.clone().requires_grad_(), x.transpose(0, 1).clone().requires_grad_()
    layer.init_state(batch)
    twin.init_state(batch)
    out_tf = layer(x_tf, return_states=True)
    out_bf = twin(x_bf, return_states=True)
    assert out_bf.spikes.shape == (batch, T, n)
    assert out_tf.spikes.sum() > 0
    for a, b in zip(out_tf, out_bf, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b.transpose(0, 1), a, rtol=0, atol=0)
    g = torch.randn(T, batch, n, generator=torch.Generator().manual_seed(5))
    (out_tf.V * g).sum().backward()
    (out_bf.V * g.transpose(0, 1)).sum().backward()
    torch.testing.assert_close(x_bf.grad.transpose(0, 1), x_tf.grad, rtol=0, atol=0)
    torch.testing.assert_close(twin.weight.grad, layer.weight.grad, rtol=0, atol=0)
    assert twin.update(x[0]).shape == (batch, n)  # one step: [batch, N], no time axis
    with pytest.raises(ValueError, match=r"\[batch, T, N\]"):
        twin(x[0])


def test_default_init_scale():
    n = 64
    layer = adex.Recurrent(adex.LIF(n), init_scale=2.0 * adex.u.mA)
    assert layer.weight.shape == (n, n) and layer.weight.dtype == torch.float32
    std = float(layer.weight.std())
    assert 0.8 * 2.0 / n**0.5 < std < 1.2 * 2.0 / n**0.5
    assert layer.init_scale == 2.0


def test_bad_input():
    with pytest.raises(ValueError, match="1-D in_size"):
        adex.Recurrent(adex.AdExIF((2, 3)))
    with pytest.raises(TypeError, match="adex model"):
        adex.Recurrent(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"\[N, N\] = \[3, 3\]"):
        adex.Recurrent(adex.AdExIF(3), weight=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="init_scale"):
        adex.Recurrent(adex.AdExIF(3), init_scale=float("nan"))
    layer = make_layer("AdExIF", 3)
    with pytest.raises(RuntimeError, match="init_state"):
        layer(torch.zeros(2, 1, 3))
    layer.init_state(2)
    with pytest.raises(ValueError, match="x_seq must be"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x has shape"):
        layer(torch.zeros(2, 2, 4))
    layer.weight = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="weight must be"):
        layer(torch.zeros(2, 2, 3))
    layer.weight = torch.nn.Parameter(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="weight contains NaN"):
        layer(torch.zeros(2, 2, 3))
    layer = make_layer("AdExIF", 3, checkpoint_every=4)
    layer.init_state(2)
    with pytest.raises(ValueError, match="checkpoint_every cannot be combined"):
        layer(torch.zeros(2, 2, 3), return_states=True)


def test_torch_compile_fullgraph():
    """While torch.compile traces, the layer runs the step loop of the fused one-step custom
    ops (no graph break): the same spikes and gradients as the eager fused kernels."""
    n, batch = 5, 2
    eager, compiled = make_layer("AdExIF", n), make_layer("AdExIF", n)
    x = make_x("AdExIF", 16, batch, n)
    runs = []
    for layer, call in ((eager, eager), (compiled, torch.compile(compiled, fullgraph=True))):
        layer.init_state(batch)
        xx = x.clone().requires_grad_()
        spikes = call(xx)
        (spikes * torch.linspace(0.5, 1.5, n)).sum().backward()
        runs.append((spikes.detach(), xx.grad, layer.weight.grad))
    assert torch.equal(runs[0][0], runs[1][0])
    assert_spiky(runs[0][0])
    for name, ref, out in zip(("x", "weight"), runs[0][1:], runs[1][1:], strict=True):
        assert_close(name, ref, out, atol=1e-5 * float(ref.abs().max()))
