"""The fused CPU backend (``backend='cpu'``, ``adex.cpu``) beyond the kernel comparisons of
``tests/test_kernels.py`` (which run every case on it too): float64 finite differences
through its autograd wrapper (states and parameters, both resets, refractory models), its
formulas against the reference's definitions, the memory options, and ``'auto'``."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers import EQUAL, Tolerance, compare_backends
from numba import njit
from test_gradcheck import CASES, PARAMS, TINY, check_trajectory, make_inputs
from torch.autograd import gradcheck

import adex
from adex.cpu import device_math, fastexp
from adex.exprel import exprel
from adex.functional import resolve_backend

F64 = torch.float64


def cpu_states_fn(case, hard: bool = False, params=None, surrogate=TINY, **kw):
    """The V (and w) sequences of ``adex_scan(backend='cpu')`` as a function of x, V0, w0."""

    def f(*inputs):
        x, V0 = inputs[0], inputs[1]
        w0 = inputs[2] if case.has_w else None
        out = adex.adex_scan(
            x, V0, w0, PARAMS[case.params] if params is None else params, dt=case.dt,
            surrogate=surrogate, spk_reset="hard" if hard else "soft", has_exp=case.has_exp,
            return_states=True, backend="cpu", **kw,
        )  # fmt: skip
        return (out.V, out.w) if case.has_w else (out.V,)

    return f


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_gradcheck_soft_reset(name):
    """float64 finite differences of the CPU scan (the surrogate's support away from every
    V, as in ``test_gradcheck``): the backward kernel is the forward kernel's derivative."""
    case = CASES[name]
    inputs = make_inputs(case)
    check_trajectory(case, inputs, hard=False)
    torch.manual_seed(0)
    assert gradcheck(cpu_states_fn(case), inputs, fast_mode=True, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("name", ["adexif-perneuron-dt1", "expif-dt0.1", "lif-perneuron-dt1"])
def test_cpu_gradients_equal_reference_float64(name, hard):
    """float64: forward and every input gradient of the CPU scan equal the reference's to
    ~1e-12 (the hard reset's detached offset included, whose derivative
    ``test_gradcheck.test_gradcheck_hard_reset`` establishes for the reference)."""
    case = CASES[name]
    inputs = make_inputs(case)
    sg = adex.surrogate.Sigmoid(alpha=2.0)  # a wide surrogate: the reset path carries gradient
    cpu = cpu_states_fn(case, hard=hard, surrogate=sg)(*inputs)
    ref_fn = functools.partial(_reference_states, case, hard, sg)
    ref = ref_fn(*inputs)
    g = torch.Generator().manual_seed(5)
    cot = [torch.randn(r.shape, generator=g, dtype=F64) for r in ref]
    for a, b in zip(cpu, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(cpu, inputs, cot), torch.autograd.grad(ref, inputs, cot),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-10 * float(b.abs().max()), rtol=1e-9)


def _reference_states(case, hard, surrogate, *inputs):
    x, V0 = inputs[0], inputs[1]
    w0 = inputs[2] if case.has_w else None
    out = adex.adex_scan(x, V0, w0, PARAMS[case.params], dt=case.dt, surrogate=surrogate,
                         spk_reset="hard" if hard else "soft", has_exp=case.has_exp,
                         return_states=True, backend="reference")  # fmt: skip
    return (out.V, out.w) if case.has_w else (out.V,)


PARAM_NAMES = ("R", "tau", "tau_w", "V_th", "V_reset", "V_rest", "V_T", "delta_T", "a", "b")


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_cpu_gradcheck_parameters(hard):
    """float64 finite differences of the V and w sequences in all ten per-neuron parameters
    (the packed-parameter gradient of the backward kernel), with the inputs fixed."""
    case = CASES["adexif-perneuron-dt0.1"]
    x, V0, w0 = (t.detach() for t in make_inputs(case))
    base = PARAMS[case.params]
    values = tuple(torch.as_tensor(getattr(base, n), dtype=F64).expand(3).clone().requires_grad_()
                   for n in PARAM_NAMES)  # fmt: skip
    if not hard:
        check_trajectory(case, (x, V0, w0), hard=False)

    def f(*vals):
        params = adex.AdExParams(**dict(zip(PARAM_NAMES, vals, strict=True)))
        return cpu_states_fn(case, hard=hard, params=params)(x, V0, w0)

    if hard:  # the detached offset is no derivative: compare with the reference instead
        cot = [torch.randn(o.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
               for o in f(*values)]  # fmt: skip
        got = torch.autograd.grad(f(*values), values, cot)

        def ref(*vals):
            params = adex.AdExParams(**dict(zip(PARAM_NAMES, vals, strict=True)))
            out = adex.adex_scan(x, V0, w0, params, dt=case.dt, surrogate=TINY, spk_reset="hard",
                                 return_states=True, backend="reference")  # fmt: skip
            return out.V, out.w

        want = torch.autograd.grad(ref(*values), values, cot)
        for name, a, b in zip(PARAM_NAMES, got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-9 * float(b.abs().max()) + 1e-12,
                                       rtol=1e-8, msg=name)  # fmt: skip
        return
    torch.manual_seed(0)
    assert gradcheck(f, values, fast_mode=True, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("model", ["AdExIFRef", "ExpIFRef"])
def test_cpu_gradcheck_refractory(model):
    """A refractory model in float64 through a module on the CPU backend: gradcheck of V
    and w in x, V0, w0 (tau_ref = 3.5 dt: frozen steps are identities)."""
    cls = getattr(adex, model)
    kw = dict(V_th=-50.0) if model == "ExpIFRef" else {}
    layer = cls(3, dt=0.1, tau_ref=0.35, spk_fun=TINY, backend="cpu", **kw)
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(40, 2, 3, generator=g, dtype=F64) * 5 + 60).requires_grad_()
    V0 = (torch.rand(2, 3, generator=g, dtype=F64) * 8 - 60).requires_grad_()
    w0 = (torch.rand(2, 3, generator=g, dtype=F64)).requires_grad_()
    inputs = (x, V0, w0) if layer.has_w else (x, V0)

    def f(*inp):
        layer.init_state(2, dtype=F64)
        layer.V = inp[1]
        if layer.has_w:
            layer.w = inp[2]
        out = layer(inp[0], return_states=True)
        return (out.V, out.w) if layer.has_w else (out.V,)

    v_th = -50.0 if model == "ExpIFRef" else adex.AdExParams().V_th
    with torch.no_grad():
        spikes = f(*inputs)[0] >= v_th
    assert spikes.sum() >= 3, "test data: too few spikes"
    torch.manual_seed(0)
    assert gradcheck(f, inputs, fast_mode=True, atol=1e-6, rtol=1e-4)


# -- one definition of the math ----------------------------------------------------------------

SURROGATES = [getattr(adex.surrogate, n)() for n in adex.surrogate.__all__ if n != "Surrogate"]


@pytest.mark.parametrize("sg", SURROGATES, ids=lambda s: type(s).__name__)
def test_cpu_surrogate_grad_is_the_reference_formula(sg):
    """The CPU kernels' g(u) of every surrogate kind equals ``Surrogate.grad`` (the
    reference's definition) on a grid of u, in float64."""
    u = torch.linspace(-3.0, 3.0, 601, dtype=F64)
    want = sg.grad(u)
    got = torch.tensor([device_math.surrogate_grad(float(v), *sg.params, sg.kind) for v in u],
                       dtype=F64)  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-14, rtol=1e-12)


@njit(cache=False)
def _fast_exp_all(z, out):
    for i in range(z.size):
        out[i] = fastexp.exp(z[i])


def test_cpu_fast_exp_is_within_two_ulp_of_libm():
    """The kernels' vectorizable exp is within 2 ulp of numpy's (libm) exp on a dense grid of
    its range and on random points, and gives inf, 0 and NaN outside it."""
    gen = np.random.default_rng(0)
    z = np.concatenate([np.linspace(-708.0, 709.0, 400_001), gen.uniform(-40.0, 25.0, 100_000)])
    got = np.empty_like(z)
    _fast_exp_all(z, got)
    want = np.exp(z)
    assert np.max(np.abs(got - want) / np.spacing(want)) <= 2.0
    edge = np.array([710.0, np.inf, -709.0, -np.inf, np.nan])
    got = np.empty_like(edge)
    _fast_exp_all(edge, got)
    assert got[0] == got[1] == np.inf and got[2] == got[3] == 0.0 and np.isnan(got[4])


def test_cpu_exprel_is_the_reference_formula():
    """exprel and its derivative in the CPU kernels equal ``adex.exprel`` (value and
    autograd derivative) near 0, at the series radius and far from 0."""
    z = torch.tensor([-40.0, -5.0, -0.5001, -0.4999, -1e-3, -1e-9, 0.0, 1e-12, 1e-5, 0.3, 0.5,
                      3.0, 20.0], dtype=F64, requires_grad=True)  # fmt: skip
    value = exprel(z)
    (deriv,) = torch.autograd.grad(value.sum(), z)
    zs = [float(v) for v in z.detach()]
    got_v = torch.tensor([device_math.exprel(v) for v in zs], dtype=F64)
    got_d = torch.tensor([device_math.exprel_derivative(v, device_math.exprel(v)) for v in zs],
                         dtype=F64)  # fmt: skip
    torch.testing.assert_close(got_v, value.detach(), atol=0.0, rtol=1e-15)
    torch.testing.assert_close(got_d, deriv, atol=1e-15, rtol=1e-12)


# -- memory options and dtypes -------------------------------------------------------------------

VARIANTS = {"reference": {"backend": "reference"}, "cpu": {"backend": "cpu"}}


def _layer_factory(cls, n, **kw):
    def build(backend):
        return cls(n, dt=0.2, backend=backend, **kw)

    return build


def _inputs(T=24, batch=2, n=20, dtype=torch.float32, seed=0, mean=60.0, std=15.0,
            V0=(-60.0, -50.0)):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, batch, n, generator=g, dtype=F64) * std + mean).to(dtype)
    V0_ = (torch.rand(batch, n, generator=g, dtype=F64) * (V0[1] - V0[0]) + V0[0]).to(dtype)
    w0 = torch.rand(batch, n, generator=g, dtype=F64).to(dtype)
    cot = {k: torch.randn(T, batch, n, generator=g, dtype=F64).to(dtype) for k in ("spikes", "V")}
    return dict(x=x, V0=V0_, w0=w0), cot


MODELS = {
    "AdExIF": (adex.AdExIF, {}),
    "AdExIFRef": (adex.AdExIFRef, dict(tau_ref=0.5)),
    "ExpIF": (adex.ExpIF, dict(V_th=-45.0)),
    "ExpIFRef": (adex.ExpIFRef, dict(V_th=-45.0, tau_ref=0.5)),
    "LIF": (adex.LIF, {}),
}


def _model_inputs(model, dtype=torch.float32, **kw):
    if model == "LIF":
        return _inputs(dtype=dtype, mean=8.0, std=3.0, V0=(-0.5, 1.3), **kw)
    if model.startswith("ExpIF"):  # tests/helpers.family_cases: a stable exponential step
        return _inputs(dtype=dtype, mean=40.0, std=10.0, V0=(-64.0, -44.0), **kw)
    return _inputs(dtype=dtype, **kw)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


@pytest.mark.parametrize("options", [
    dict(checkpoint_every=5), dict(detach_reset=True), dict(spike_dtype=torch.bfloat16),
    dict(learnable=("tau", "b", "V_th"), checkpoint_every=7),
], ids=["ckpt5", "detach", "bf16-spikes", "learnable-ckpt7"])  # fmt: skip
@pytest.mark.parametrize("model", list(MODELS))
def test_cpu_memory_options_match_reference(model, options):
    """Every model with the memory options (checkpointed recomputation, detached reset,
    16-bit spikes, learnable parameters), float32: spikes equal to the float64 reference's,
    V and every gradient within twice the float32 reference's own distance to it (plus
    1e-4 of the largest value): ExpIF's steep upswing amplifies float32 rounding."""
    cls, kw = MODELS[model]
    options = dict(options)
    if "learnable" in options and not cls.has_w:
        options["learnable"] = ("tau", "V_th")
    inputs, cot = _model_inputs(model)
    return_states = "checkpoint_every" not in options
    if not return_states:
        cot = {"spikes": cot["spikes"]}
    variants = {"reference": VARIANTS["reference"], "reference32": VARIANTS["reference"],
                "cpu": VARIANTS["cpu"]}  # fmt: skip
    runs = compare_backends(_layer_factory(cls, 20, **kw, **options), inputs, cot,
                            variants=variants, return_states=return_states,
                            dtypes={"reference": F64})  # fmt: skip
    ref, ref32, cpu = runs["reference"], runs["reference32"], runs["cpu"]
    assert ref.out["spikes"].sum() > 0, "test data: no spikes"
    assert torch.equal(ref.out["spikes"].double(), cpu.out["spikes"].double())
    assert cpu.out["spikes"].dtype == options.get("spike_dtype", torch.float32)
    pairs = [
        (k, ref.out[k], ref32.out[k], cpu.out[k]) for k in ("V", "w") if ref.out[k] is not None
    ]
    pairs += [(f"grad_{k}", g, ref32.grads[k], cpu.grads[k]) for k, g in ref.grads.items()]
    for name, exact, fp32, got in pairs:
        bound = 2.0 * _max_err(fp32, exact) + 1e-4 * exact.abs().max().item()
        assert _max_err(got, exact) <= bound, f"{name}: {_max_err(got, exact):.3g} > {bound:.3g}"


@pytest.mark.parametrize("model", list(MODELS))
def test_cpu_float64_matches_reference(model):
    """float64 modules: the CPU kernels and the reference agree to ~1e-10 (spikes exact),
    forward, input and learnable-parameter gradients, over two consecutive calls."""
    cls, kw = MODELS[model]
    inputs, cot = _model_inputs(model, dtype=F64, seed=3)
    learn = ("tau", "b") if cls.has_w else ("tau",)
    tol = {"spikes": EQUAL, "V": Tolerance(1e-10, 1e-12), "last_spike_time": EQUAL,
           "grads": Tolerance(1e-10, 1e-9, scaled=True)}  # fmt: skip
    runs = compare_backends(_layer_factory(cls, 20, learnable=learn, **kw), inputs, cot,
                            tol=tol, variants=VARIANTS, chunks=2)  # fmt: skip
    assert runs["cpu"].out["V"].dtype == F64


def test_auto_uses_cpu_kernels_for_cpu_float_tensors():
    """'auto' on CPU: the fused CPU kernels for float32 and float64, the reference for
    16-bit inputs; 'cpu' refuses nothing on CPU and explains a missing device otherwise."""
    for dtype in (torch.float32, torch.float64):
        assert resolve_backend("auto", torch.empty(1, dtype=dtype)) == "cpu"
    assert resolve_backend("auto", torch.empty(1, dtype=torch.bfloat16)) == "reference"
    assert resolve_backend("cpu", torch.empty(1, dtype=torch.float16)) == "cpu"
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU tensors"):
            resolve_backend("cpu", torch.empty(1, device="cuda"))


def test_cpu_no_grad_saves_nothing_and_matches():
    """Under no_grad the forward kernel alone runs (no autograd node) and gives the same
    spikes and final state as with a gradient."""
    inputs, _ = _inputs()
    x, V0, w0 = inputs["x"], inputs["V0"], inputs["w0"]
    with torch.no_grad():
        a = adex.adex_scan(x, V0, w0, backend="cpu")
    b = adex.adex_scan(x.requires_grad_(), V0, w0, backend="cpu")
    assert a.spikes.grad_fn is None and b.spikes.grad_fn is not None
    assert torch.equal(a.spikes, b.spikes.detach()) and torch.equal(a.V, b.V.detach())


# -- synaptic current and lengths ----------------------------------------------------------------

SYN_MODELS = {
    "AdExIF": (adex.AdExIF, {}, 60.0, ("tau", "tau_syn", "V_th", "b")),
    "AdExIFRef": (adex.AdExIFRef, dict(tau_ref=0.5), 60.0, ("tau_syn", "a", "tau_w")),
    "LIF": (adex.LIF, {}, 8.0, ("tau", "tau_syn", "V_reset")),
}
SYN_LENGTHS = (10, 4, 7)


def _syn_run(model, backend, dtype, spk_reset):
    """One step of training a model with a per-neuron learnable ``tau_syn`` on a batch with
    ``lengths``: outputs (spikes, V/w/I sequences, final state) and the gradients of x, the
    initial V, w, I and the learnable parameters."""
    cls, kw, scale, learn = SYN_MODELS[model]
    g = torch.Generator().manual_seed(2)
    tau_syn = torch.rand(5, generator=g, dtype=F64) * 2 + 0.5
    layer = cls(5, dt=0.5, tau_syn=tau_syn, learnable=learn, backend=backend,
                spk_reset=spk_reset, **kw).to(dtype)  # fmt: skip
    layer.init_state(3)
    x = (torch.rand(10, 3, 5, generator=g, dtype=F64) * scale).to(dtype).requires_grad_()
    V0 = layer.V.to(dtype) + torch.rand(3, 5, generator=g, dtype=F64).to(dtype) * 3
    I0 = torch.rand(3, 5, generator=g, dtype=F64).to(dtype)
    leaves = {"x": x, "V0": V0.requires_grad_(), "I0": I0.requires_grad_()}
    layer.V, layer.I = leaves["V0"], leaves["I0"]
    if layer.has_w:
        leaves["w0"] = layer.w = (torch.rand(3, 5, generator=g, dtype=F64) * 2).to(dtype)
        leaves["w0"].requires_grad_()
    out = layer(x, return_states=True, lengths=torch.tensor(SYN_LENGTHS))
    cot = torch.rand(out.spikes.shape, generator=g, dtype=F64).to(dtype)
    loss = (out.spikes * cot).sum() + out.V.sum() * 0.01 + out.I.sin().sum()
    loss = loss + layer.V.sum() * 0.1 + layer.I.pow(2).sum() * 0.1
    if layer.has_w:
        loss = loss + out.w.cos().sum()
    tensors = list(leaves.values()) + [getattr(layer, k) for k in learn]
    grads = torch.autograd.grad(loss, tensors)
    assert backend != "auto" or type(out.spikes.grad_fn).__name__ == "CpuScanBackward"
    outs = {"spikes": out.spikes, "V": out.V, "I": out.I, "V_final": layer.V,
            "I_final": layer.I}  # fmt: skip
    if layer.has_w:
        outs["w"] = out.w
    names = [f"grad_{k}" for k in list(leaves) + list(learn)]
    return outs, dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("spk_reset", ["soft", "hard"])
@pytest.mark.parametrize("model", list(SYN_MODELS))
def test_cpu_synapse_and_lengths_match_reference(model, spk_reset, dtype):
    """A synaptic current with a learnable per-neuron tau_syn on a batch with ``lengths``:
    the CPU kernels against the reference, forward (spikes, V/w/I sequences holding past a
    sample's length, final state) and every gradient (x, V0, w0, I0, learnable
    parameters). float64: to ~1e-9 of each quantity's largest value; float32: spikes equal
    to the float32 reference's, the rest within twice the float32 reference's distance to
    the float64 reference (plus 1e-4 of the largest value). Past its length a sample
    spikes never and its x gets no gradient."""
    ref_out, ref_g = _syn_run(model, "reference", F64, spk_reset)
    cpu_out, cpu_g = _syn_run(model, "cpu", dtype, spk_reset)
    auto_out, _ = _syn_run(model, "auto", dtype, spk_reset)  # asserts the CPU kernels ran
    assert ref_out["spikes"].sum() > 0, "test data: no spikes"
    assert torch.equal(auto_out["V"], cpu_out["V"])
    for b, L in enumerate(SYN_LENGTHS):
        assert cpu_out["spikes"][L:, b].abs().sum() == 0
        assert cpu_g["grad_x"][L:, b].abs().sum() == 0
        assert cpu_g["grad_x"][:L, b].abs().sum() > 0
        torch.testing.assert_close(cpu_out["V"][L:, b], cpu_out["V"][L - 1 : L, b].expand(
            10 - L, 5), atol=0, rtol=0)  # fmt: skip
    pairs = [(k, ref_out[k], cpu_out[k]) for k in ref_out] + [
        (k, ref_g[k], cpu_g[k]) for k in ref_g
    ]
    if dtype == F64:
        for name, exact, got in pairs:
            bound = 1e-9 * exact.abs().max().item() + 1e-12
            assert _max_err(got, exact) <= bound, f"{name}: {_max_err(got, exact):.3g}"
        return
    ref32_out, ref32_g = _syn_run(model, "reference", torch.float32, spk_reset)
    assert torch.equal(ref32_out["spikes"], cpu_out["spikes"])
    ref32 = {**ref32_out, **ref32_g}
    for name, exact, got in pairs:
        bound = 2.0 * _max_err(ref32[name], exact) + 1e-4 * exact.abs().max().item()
        assert _max_err(got, exact) <= bound, f"{name}: {_max_err(got, exact):.3g} > {bound:.3g}"


@pytest.mark.parametrize("ckpt", [None, 3], ids=["stored", "ckpt3"])
def test_cpu_gradcheck_synapse_and_lengths(ckpt):
    """float64 finite differences through the CPU autograd wrapper with a synaptic current
    and ``lengths``: V, w, I sequences and the final state in x, V0, w0, I0 and the
    per-neuron tau_syn and tau (below threshold, a surrogate of tiny support: no spike
    path), stored sequences and checkpointed recomputation."""
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(6, 2, 3, generator=g, dtype=F64) * 3).requires_grad_()
    V0 = (torch.rand(2, 3, generator=g, dtype=F64) - 65).requires_grad_()
    w0 = torch.rand(2, 3, generator=g, dtype=F64).requires_grad_()
    I0 = torch.rand(2, 3, generator=g, dtype=F64).requires_grad_()
    tau_syn = (torch.rand(3, generator=g, dtype=F64) + 1.0).requires_grad_()
    tau = (torch.rand(3, generator=g, dtype=F64) * 5 + 8.0).requires_grad_()
    lengths = torch.tensor([6, 3])

    def f(x, V0, w0, I0, tau_syn, tau):
        p = adex.AdExParams(tau_syn=tau_syn, tau=tau)
        kw = dict(return_states=True) if ckpt is None else dict(checkpoint_every=ckpt)
        out = adex.adex_scan(x, V0, w0, p, dt=0.5, I0=I0, lengths=lengths, surrogate=TINY,
                             backend="cpu", **kw)  # fmt: skip
        assert out.spikes.sum() == 0 and bool((out.V < p.V_th - 0.5).all())
        return out.V, out.w, out.I

    assert gradcheck(f, (x, V0, w0, I0, tau_syn, tau), atol=1e-7, rtol=1e-5)
