"""The AdEx family as modules: AdExIF, AdExIFRef, ExpIF, ExpIFRef and LIF.

* BrainPy fixtures (AdExIFRef, ExpIF, LIF) through the modules on both backends (the fused
  kernels in float32), in one call and split into two consecutive calls, for the Ref model
  with its refractory window straddling the split (``t_step`` and ``last_spike_time``
  carry over).
* Fused kernels against the reference for every model x reset x detach_reset, several
  surrogates: per-step spikes, V, w and the gradients of x, V0, w0.
* Refractory semantics: frozen V and w, zero input gradient, no effect of the input on
  frozen steps, tau_ref not a multiple of dt, ``update`` vs the multi-step call, the
  functional ``t0_step`` / ``last_spike_time`` carry.
* ``detach_reset``: same forward values, different gradients, and the exact LIF gradient.

The interpreter runs about 50 ms per time step (forward + backward), whatever the neuron
count, so the generated cases keep T <= 40 and tiny states.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import (
    EQUAL,
    FIXTURES,
    ModelCase,
    Tolerance,
    assert_close,
    compare_backends,
    family_cases,
    fixture_params,
    fixture_surrogate,
    load_fixture,
    run_variant,
)

import adex

u = adex.u
BACKENDS = ["reference", "triton"]

# -- BrainPy fixtures through the modules -----------------------------------------------------

FAMILY_CASES = ["adexifref_hard_tau2.05", "expif_hard_vth-40", "lif_default"]
FIXTURE_CLASSES = {"AdExIFRef": adex.AdExIFRef, "ExpIF": adex.ExpIF, "LIF": adex.LIF}


@dataclass(frozen=True)
class Tol:
    V: tuple[float, float]  # (atol, rtol)
    w: tuple[float, float]
    grad: tuple[float, float]  # (atol as a fraction of max|g|, rtol)


# tests/data/brainpy/README.md: spikes exact; V 0.1 mV + 2e-3|V|; w 1e-2 mA + 1e-3|w|;
# gradients 2e-3 max|g| + 1e-2 |g|. float64 reaches ~1e-10.
F32 = Tol(V=(0.1, 2e-3), w=(1e-2, 1e-3), grad=(2e-3, 1e-2))
F64 = Tol(V=(1e-9, 1e-10), w=(1e-9, 1e-10), grad=(1e-9, 1e-9))


def fixture_cases() -> list:
    """(case, dtype, backend, split): every dtype on the reference, float32 on Triton; the
    Ref case also split into two calls."""
    out = []
    for case in FAMILY_CASES:
        for dtype, backend in (("f64", "reference"), ("f32", "reference"), ("f32", "triton")):
            splits = [None]
            if case.startswith("adexifref"):  # on Triton the split run alone (interpreter time)
                splits = [150] if backend == "triton" else [None, 150]
            for split in splits:
                tag = "one-call" if split is None else f"split{split}"
                out.append(
                    pytest.param(case, dtype, backend, split, id=f"{case}-{dtype}-{backend}-{tag}")
                )
    return out


def build_fixture_layer(arrays: dict, meta: dict, backend: str):
    """The module of the case's model from its meta, parameters as quantities in BrainPy's
    units (tau_ref included for the Ref model)."""
    cls = FIXTURE_CLASSES[meta["model"]]
    kwargs = {}
    for key, value in meta["params"].items():
        assert f"param_{key}" not in arrays, "these cases have scalar parameters only"
        kwargs[key] = u.Quantity(value, meta["param_units"][key])
    assert ("tau_ref" in kwargs) == meta["has_refractory"]
    return cls(
        tuple(meta["in_size"]),
        **kwargs,
        spk_fun=fixture_surrogate(meta),
        spk_reset=meta["spk_reset"],
        dt=meta["dt"] * u.ms,
        backend=backend,
    )


def refractory_straddles(arrays: dict, meta: dict, split: int) -> bool:
    """True if some neuron spiked so shortly before step ``split`` that step ``split`` is
    refractory (BrainPy's float test on t = float(k) * dt in the fixture's dtype)."""
    t = arrays["t"]
    spiked = arrays["spikes"][:split].reshape(split, -1) > 0
    t_last = np.where(spiked.any(0), t[:split][::-1][np.argmax(spiked[::-1], axis=0)], -1e7)
    return bool(((t[split] - t_last.astype(t.dtype)) < meta["params"]["tau_ref"]).any())


@pytest.mark.parametrize("case, dtype, backend, split", fixture_cases())
def test_module_matches_brainpy_fixture(case, dtype, backend, split):
    arrays, meta = load_fixture(FIXTURES / f"{case}.{dtype}.npz")
    tdtype = {"f32": torch.float32, "f64": torch.float64}[dtype]
    tol = F64 if dtype == "f64" else F32
    T = meta["T"]
    layer = build_fixture_layer(arrays, meta, backend)
    if meta["has_refractory"]:
        assert layer.tau_ref == pytest.approx(2.05)
        assert not meta["tau_ref_multiple_of_dt"]
    layer.init_state(batch_size=meta["batch_size"], dtype=tdtype)
    assert layer.t_step == 0
    x = torch.tensor(arrays["x"]).requires_grad_(True)
    V0 = torch.tensor(arrays["V0"]).requires_grad_(True)
    leaves = [x, V0]
    layer.V = V0
    if meta["has_w"]:
        w0 = torch.tensor(arrays["w0"]).requires_grad_(True)
        layer.w = w0
        leaves.append(w0)
    assert x.dtype == tdtype

    bounds = [0, T] if split is None else [0, split, T]
    parts = []
    for k0, k1 in itertools.pairwise(bounds):
        assert layer.t_step == k0
        parts.append(layer(x[k0:k1], return_states=True))
        assert layer.t_step == k1
    if split is not None:
        assert meta["has_refractory"]
        assert refractory_straddles(arrays, meta, split), "pick a split inside a refractory"
    spikes = torch.cat([p.spikes for p in parts])
    V = torch.cat([p.V for p in parts])

    ref_spikes = torch.tensor(arrays["spikes"])
    assert spikes.dtype == tdtype
    n_bad = int((spikes != ref_spikes).sum())
    assert n_bad == 0, f"{n_bad} spikes differ from BrainPy"
    assert int(ref_spikes.sum()) == meta["n_spikes"] > 0
    assert_close("V", torch.tensor(arrays["V"]), V, *tol.V)
    loss = (spikes * torch.tensor(arrays["G"])).sum()
    if meta["has_w"]:
        w = torch.cat([p.w for p in parts])
        assert_close("w", torch.tensor(arrays["w"]), w, *tol.w)
    else:
        assert all(p.w is None for p in parts) and layer.w is None
    assert_close("loss", torch.tensor(arrays["loss"]), loss, 1e-5 * abs(float(arrays["loss"])))
    grads = torch.autograd.grad(loss, leaves)
    for name, g in zip(("x", "V0", "w0"), grads, strict=False):
        ref = torch.tensor(arrays[f"grad_{name}"])
        scale = float(ref.abs().max())
        assert scale > 0
        assert_close(f"grad_{name}", ref, g, tol.grad[0] * scale, tol.grad[1])

    if meta["has_refractory"]:
        # last_spike_time: the time of each neuron's last spike, -1e7 ms where none
        t = torch.tensor(arrays["t"])
        spiked = ref_spikes.reshape(T, -1) > 0
        last_k = T - 1 - spiked.flip(0).to(torch.int64).argmax(0)
        expected = torch.where(spiked.any(0), t[last_k], torch.tensor(-1e7, dtype=t.dtype))
        assert layer.last_spike_time.dtype == tdtype
        assert torch.equal(layer.last_spike_time.reshape(-1), expected)


# -- fused kernels vs the reference, every model -----------------------------------------------


DT = 0.2
TAU_REF = 0.7  # = 3.5 dt: j = 1, 2, 3 steps after a spike are refractory (0.6 < 0.7 < 0.8)
FROZEN_STEPS = 3

MODELS = family_cases(TAU_REF)
REF_MODELS = [k for k, m in MODELS.items() if m.has_ref]
SURROGATES = [
    adex.surrogate.ReluGrad(),
    adex.surrogate.Sigmoid(),
    adex.surrogate.Arctan(),
    adex.surrogate.PiecewiseQuadratic(),
    adex.surrogate.GaussianGrad(),
]


def grid() -> list:
    """model x reset x detach_reset, the surrogate rotating so that each model meets four."""
    out = []
    i = 0
    for model in MODELS:
        for reset in ("soft", "hard"):
            for detach in (False, True):
                sg = SURROGATES[i % len(SURROGATES)]
                i += 1
                det = "detach" if detach else "attached"
                out.append(
                    pytest.param(
                        model, reset, detach, sg, id=f"{model}-{reset}-{det}-{type(sg).__name__}"
                    )
                )
    return out


@dataclass
class Inputs:
    x: torch.Tensor
    V0: torch.Tensor
    w0: torch.Tensor | None
    G: torch.Tensor  # weights of the spikes in the loss
    GV: torch.Tensor  # weights of the V sequence
    Gw: torch.Tensor  # weights of the w sequence

    def leaves(self) -> list[torch.Tensor]:
        return [t for t in (self.x, self.V0, self.w0) if t is not None]

    def states(self) -> dict[str, torch.Tensor | None]:
        return {"x": self.x, "V0": self.V0, "w0": self.w0}

    def cotangents(self) -> dict[str, torch.Tensor]:
        """The loss sum(G spikes) + sum(GV V) (+ sum(Gw w) for the models with w)."""
        return {"spikes": self.G, "V": self.GV, "w": self.Gw}


def make_inputs(mc: ModelCase, T: int = 24, batch: int = 2, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, batch, n, generator=g) * mc.x_std + mc.x_mean
    lo, hi = mc.V0_range
    V0 = torch.rand(batch, n, generator=g) * (hi - lo) + lo
    w0 = torch.rand(batch, n, generator=g) * 2.0 if mc.has_w else None
    G = torch.randn(T, batch, n, generator=g)
    GV = torch.randn(T, batch, n, generator=g) * 0.05
    Gw = torch.randn(T, batch, n, generator=g) * 0.05
    leaf = [t.requires_grad_(True) for t in (x, V0, w0) if t is not None]
    return Inputs(leaf[0], leaf[1], leaf[2] if mc.has_w else None, G, GV, Gw)


@dataclass
class Result:
    spikes: torch.Tensor
    V: torch.Tensor
    w: torch.Tensor | None
    grads: list[torch.Tensor]
    layer: adex.SpikingNeuron


def layer_factory(model: str, inp: Inputs, **kwargs):
    """backend -> the model's layer over the inputs' neurons (``kwargs`` override)."""
    mc = MODELS[model]
    return lambda backend: mc.cls(inp.x.shape[-1], **{**mc.kwargs, **kwargs}, dt=DT,
                                  backend=backend)  # fmt: skip


def run_layer(model: str, inp: Inputs, backend: str, **kwargs) -> Result:
    run = run_variant(layer_factory(model, inp, **kwargs), {"backend": backend}, inp.states(),
                      inp.cotangents())  # fmt: skip
    grads = [run.grads[k] for k in ("x", "V0", "w0") if k in run.grads]
    return Result(run.out["spikes"], run.out["V"], run.out["w"], grads, run.module)


def assert_spiky(spikes: torch.Tensor, min_spikes: int = 6) -> None:
    """Enough spikes, in several neurons and before the last step (so resets are in the
    graph)."""
    assert spikes.sum() >= min_spikes, f"only {int(spikes.sum())} spikes"
    assert spikes[:-1].sum() > 0
    assert spikes.flatten(1).sum(0).gt(0).sum() >= 3


def assert_grads_close(ref: list, out: list, rel: float) -> None:
    assert len(ref) == len(out)
    for name, r, o in zip(("x", "V0", "w0"), ref, out, strict=False):
        scale = float(r.abs().max())
        assert scale > 0, f"grad {name}: the reference gradient is all zero"
        assert_close(f"grad {name}", r, o, rel * scale, rel)


FUSED_TOL = {  # w and last_spike_time: None on both for the models without them
    "spikes": EQUAL,
    "V": Tolerance(1e-3, 1e-5),
    "w": Tolerance(1e-4, 1e-5),
    "last_spike_time": EQUAL,
    "grads": Tolerance(1e-3, 1e-3, scaled=True),  # x, V0, w0
}


@pytest.mark.parametrize("model, reset, detach, surrogate", grid())
def test_fused_matches_reference(model, reset, detach, surrogate):
    inp = make_inputs(MODELS[model])
    kw = dict(spk_reset=reset, detach_reset=detach, spk_fun=surrogate)
    runs = compare_backends(layer_factory(model, inp, **kw), inp.states(), inp.cotangents(),
                            tol=FUSED_TOL)  # fmt: skip
    ref, fused = runs["reference"], runs["triton"]
    assert_spiky(ref.out["spikes"])
    assert fused.module.t_step == ref.module.t_step == inp.x.shape[0]


# -- refractory semantics ----------------------------------------------------------------------


def refractory_mask(spikes: torch.Tensor, frozen: int = FROZEN_STEPS) -> torch.Tensor:
    """[T, *S] bool: the ``frozen`` steps after each spike (no spike before step 0)."""
    T = spikes.shape[0]
    mask = torch.zeros_like(spikes, dtype=torch.bool)
    for k in range(T):
        for j in range(1, frozen + 1):
            if k - j >= 0:
                mask[k] |= spikes[k - j] > 0
    return mask


def post_reset(V_prev: torch.Tensor, reset: str, V_th: float, V_reset: float) -> torch.Tensor:
    """V' computed as the model does (hard: V - (V - V_reset), which may round)."""
    if reset == "hard":
        return V_prev - (V_prev - V_reset)
    return V_prev - (V_th - V_reset)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("model", REF_MODELS)
def test_refractory_steps_are_frozen(model, reset, backend):
    """tau_ref = 3.5 dt: exactly 3 steps after each spike are frozen at the post-reset V
    (and w at w + b), and their input gradient is exactly 0; other steps have one."""
    mc = MODELS[model]
    inp = make_inputs(mc, T=30, seed=3)
    res = run_layer(model, inp, backend, spk_reset=reset)
    spikes, V = res.spikes, res.V
    assert_spiky(spikes)
    V_th = mc.kwargs.get("V_th", -55.0)
    V_reset = -68.0
    mask = refractory_mask(spikes)
    # spikes never occur on frozen steps here (V' < V_th)
    assert not (spikes.bool() & mask).any()
    assert mask.sum() >= 10
    V_prev = torch.cat([inp.V0.detach()[None], V[:-1]])
    first = mask & (torch.cat([torch.zeros_like(spikes[:1]), spikes[:-1]]) > 0)
    # first frozen step: the post-reset value of the spiking V
    expect = post_reset(V_prev, reset, V_th, V_reset)
    assert torch.equal(V[first], expect[first])
    # later frozen steps: unchanged
    later = mask & ~first
    assert later.any()
    assert torch.equal(V[later], V_prev[later])
    if mc.has_w:
        w_prev = torch.cat([inp.w0.detach()[None], res.w[:-1]])
        b = 1.0
        assert torch.equal(res.w[first], (w_prev + b)[first])
        assert torch.equal(res.w[later], w_prev[later])
    # outside the windows V moves
    assert (V[~mask] != V_prev[~mask]).all()
    gx = res.grads[0]
    assert torch.all(gx[mask] == 0)
    assert (gx[~mask] != 0).float().mean() > 0.9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", REF_MODELS)
def test_input_on_refractory_steps_has_no_effect(model, backend):
    mc = MODELS[model]
    inp = make_inputs(mc, T=24, seed=4)
    base = run_layer(model, inp, backend)
    mask = refractory_mask(base.spikes)
    assert mask.sum() >= 6
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(inp.x.shape, generator=g) * 30.0

    def with_x(x):
        return Inputs(x.requires_grad_(True), inp.V0, inp.w0, inp.G, inp.GV, inp.Gw)

    pert = run_layer(model, with_x(torch.where(mask, inp.x.detach() + noise, inp.x.detach())),
                     backend)  # fmt: skip
    assert torch.equal(pert.spikes, base.spikes)
    assert torch.equal(pert.V, base.V)
    if mc.has_w:
        assert torch.equal(pert.w, base.w)
    # ... while the same noise on the other steps changes the trajectory
    moved = run_layer(model, with_x(torch.where(mask, inp.x.detach(), inp.x.detach() + noise)),
                      backend)  # fmt: skip
    assert not torch.equal(moved.V, base.V)


@pytest.mark.parametrize("model", REF_MODELS)
def test_tau_ref_changes_dynamics_and_zero_is_the_plain_model(model):
    """tau_ref = 0 gives the plain model exactly; 0.7 ms freezes steps and changes V."""
    plain = model.removesuffix("Ref")
    inp = make_inputs(MODELS[model], T=24, seed=5)
    a = run_layer(plain, inp, "reference")
    b = run_layer(model, inp, "reference", tau_ref=0.0)
    c = run_layer(model, inp, "reference")
    assert_spiky(a.spikes)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.V, b.V)
    for ga, gb in zip(a.grads, b.grads, strict=True):
        assert torch.equal(ga, gb)
    assert not torch.equal(a.V, c.V)


@pytest.mark.parametrize(
    "tau_ref, frozen",
    [(0.1, 0), (0.3, 1), (0.5, 2), (0.9, 4), (1.5, 7)],
    ids=lambda v: str(v),
)
def test_frozen_step_count_follows_tau_ref(tau_ref, frozen):
    """With dt = 0.2 ms and tau_ref = (j + 1/2) dt, j steps are frozen (the test is
    t - t_last < tau_ref; tau_ref = 0.1 < dt freezes none)."""
    mc = MODELS["AdExIFRef"]
    inp = make_inputs(mc, T=30, seed=6)
    res = run_layer("AdExIFRef", inp, "reference", tau_ref=tau_ref)
    assert_spiky(res.spikes, 4)
    mask = refractory_mask(res.spikes, frozen)
    assert not (res.spikes.bool() & mask).any()
    gx = res.grads[0]
    assert torch.equal(gx == 0, mask), "zero input gradient exactly on the frozen steps"


@pytest.mark.parametrize("backend", BACKENDS)
def test_refractory_at_float_rounding_of_t(backend):
    """tau_ref = 0.3 ms with dt = 0.1 ms: whether 3 steps after a spike is still frozen
    depends on the float32 rounding of t = k * dt (BrainPy's test). The fused kernel and
    the reference agree with a float32 re-computation of the mask."""
    T = 40
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(T, 1, 8, generator=g) * 20 + 120.0).requires_grad_(True)
    V0 = torch.rand(1, 8, generator=g) * 10 - 62.0
    layer = adex.AdExIFRef(8, tau_ref=0.3, dt=0.1, backend=backend)
    layer.init_state(1)
    layer.V = V0
    out = layer(x, return_states=True)
    (gx,) = torch.autograd.grad((out.spikes * torch.randn(x.shape, generator=g)).sum(), x)
    spikes = out.spikes.detach()
    assert spikes.sum() >= 10
    t = torch.arange(T, dtype=torch.float32) * torch.tensor(0.1, dtype=torch.float32)
    t_last = torch.full((1, 8), -1e7)
    mask = torch.zeros_like(spikes, dtype=torch.bool)
    for k in range(T):
        mask[k] = (t[k] - t_last) < 0.3
        t_last = torch.where(out.V[k].detach() >= -55.0, t[k], t_last)
    assert torch.equal(gx == 0, mask), "zero input gradient exactly on the frozen steps"
    # the frozen run after each spike: 2 or 3 steps, as the float32 rounding of t decides
    runs = set()
    for k, n in torch.nonzero(spikes[:, 0] > 0).tolist():
        if k + 4 < T and not spikes[k + 1 : k + 4, 0, n].any():
            runs.add(int(mask[k + 1 : k + 5, 0, n].sum()))
    assert runs == {2, 3}, f"frozen run lengths {runs}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ref_update_steps_equal_multistep(backend):
    """``update`` one step at a time equals one multi-step call: spikes, V, w, t_step,
    last_spike_time (advancing step by step), and the gradients of x, V0, w0."""
    mc = MODELS["AdExIFRef"]
    inp = make_inputs(mc, T=16, seed=7)
    multi = run_layer("AdExIFRef", inp, backend)
    assert_spiky(multi.spikes, 4)

    layer = adex.AdExIFRef(inp.x.shape[-1], tau_ref=TAU_REF, dt=DT, backend=backend)
    layer.init_state(inp.x.shape[1])
    layer.V, layer.w = inp.V0, inp.w0
    spikes, Vs, ws, t_lasts = [], [], [], []
    for k in range(inp.x.shape[0]):
        assert layer.t_step == k
        spikes.append(layer.update(inp.x[k]))
        Vs.append(layer.V)
        ws.append(layer.w)
        t_lasts.append(layer.last_spike_time.clone())
    assert layer.t_step == inp.x.shape[0]
    spikes, V, w = torch.stack(spikes), torch.stack(Vs), torch.stack(ws)
    loss = (spikes * inp.G).sum() + (V * inp.GV).sum() + (w * inp.Gw).sum()
    grads = torch.autograd.grad(loss, inp.leaves())
    assert torch.equal(spikes, multi.spikes)
    assert_close(f"{backend} V", multi.V, V, 1e-5, 1e-6)
    assert_close(f"{backend} w", multi.w, w, 1e-5, 1e-6)
    assert torch.equal(layer.last_spike_time, multi.layer.last_spike_time)
    assert_grads_close(multi.grads, list(grads), 1e-5 if backend == "reference" else 1e-4)
    # last_spike_time advances: t_k where step k spiked, else unchanged
    prev = torch.full_like(t_lasts[0], -1e7)
    for k, tl in enumerate(t_lasts):
        t_k = torch.tensor(float(k), dtype=torch.float32) * torch.tensor(DT)
        expect = torch.where(spikes[k].detach() > 0, t_k, prev)
        assert torch.equal(tl, expect), f"{backend}: last_spike_time after step {k}"
        prev = tl
    assert (t_lasts[-1] > -1e7).sum() >= 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_ref_init_state_restarts_clock(backend):
    mc = MODELS["ExpIFRef"]
    inp = make_inputs(mc, T=12, seed=8)
    x = inp.x.detach() + 20.0  # fires often: some neuron spikes in the last 3 steps
    layer = mc.cls(5, **mc.kwargs, dt=DT, backend=backend)
    layer.init_state(2)
    assert layer.t_step == 0
    assert torch.equal(layer.last_spike_time, torch.full((2, 5), -1e7))
    with torch.no_grad():
        layer.V = inp.V0
        first = layer(x, return_states=True)
        assert layer.t_step == 12
        t_end = torch.tensor(12.0) * torch.tensor(DT)
        assert ((t_end - layer.last_spike_time) < TAU_REF).any(), "no refractory carry-over"
        # the clock and the spike times carry: a second run from the same V0 differs ...
        layer.V = inp.V0
        carried = layer(x, return_states=True)
        assert layer.t_step == 24
        assert not torch.equal(carried.V, first.V)
        # ... init_state / reset_state restart the clock and forget the spikes
        for restart in (layer.init_state, layer.reset_state):
            layer.t_step = 5
            restart(2)
            assert layer.t_step == 0
            assert torch.equal(layer.last_spike_time, torch.full((2, 5), -1e7))
            layer.V = inp.V0
            again = layer(x, return_states=True)
            assert torch.equal(again.V, first.V) and torch.equal(again.spikes, first.spikes)
        layer.init_state(None, dtype=torch.float64)
        assert layer.last_spike_time.shape == (5,)
        assert layer.last_spike_time.dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", REF_MODELS)
def test_functional_t0_step_and_last_spike_time_carry(model, backend):
    """Two ``adex_scan`` calls (t0_step, last_spike_time carried) equal one; the returned
    RefScanResult's last_spike_time is the time of each neuron's last spike."""
    mc = MODELS[model]
    inp = make_inputs(mc, T=20, seed=10)
    params = adex.AdExParams(**{k: v for k, v in mc.kwargs.items() if k != "tau_ref"})
    kw = dict(dt=DT, has_exp=True, return_states=True, backend=backend, tau_ref=TAU_REF)
    t_last0 = torch.full_like(inp.V0, -1e7)
    full = adex.adex_scan(inp.x, inp.V0, inp.w0, params, last_spike_time=t_last0, **kw)
    assert isinstance(full, adex.RefScanResult)
    assert_spiky(full.spikes, 4)
    # split where some neuron is refractory across the boundary
    mask = refractory_mask(full.spikes.detach())
    k = int(torch.nonzero(mask.flatten(1).any(1)).flatten()[len(mask) // 4])
    assert 0 < k < 20 and mask[k].any()
    a = adex.adex_scan(inp.x[:k], inp.V0, inp.w0, params, last_spike_time=t_last0, **kw)
    w_mid = None if inp.w0 is None else a.w[-1]
    b = adex.adex_scan(inp.x[k:], a.V[-1], w_mid, params, last_spike_time=a.last_spike_time,
                       t0_step=k, **kw)  # fmt: skip
    assert torch.equal(torch.cat([a.spikes, b.spikes]), full.spikes)
    assert_close("V", full.V, torch.cat([a.V, b.V]), 1e-5, 1e-6)
    assert torch.equal(b.last_spike_time, full.last_spike_time)
    # without the carried last_spike_time the split differs (the straddling window is lost)
    c = adex.adex_scan(inp.x[k:], a.V[-1], w_mid, params, last_spike_time=t_last0,
                       t0_step=k, **kw)  # fmt: skip
    assert not torch.equal(c.V, b.V)
    # last spike times
    spiked = full.spikes.detach().flatten(1) > 0
    last_k = 19 - spiked.flip(0).to(torch.int64).argmax(0)
    t_k = last_k.to(torch.float32) * torch.tensor(DT)
    expect = torch.where(spiked.any(0), t_k, torch.tensor(-1e7)).reshape(inp.V0.shape)
    assert torch.equal(full.last_spike_time, expect)

    # the reference functional returns a 4-tuple with the same content
    ref = adex.adex_scan_reference(
        inp.x, inp.V0, inp.w0, params, dt=DT, surrogate=adex.surrogate.ReluGrad(),
        tau_ref=TAU_REF, last_spike_time=t_last0,
    )  # fmt: skip
    assert isinstance(ref, tuple) and len(ref) == 4
    assert torch.equal(ref[0], full.spikes) and torch.equal(ref[3], full.last_spike_time)


def test_ref_units_and_validation():
    """tau_ref takes time quantities (and only those); negative or non-finite raise."""
    a = adex.AdExIFRef(3, tau_ref=2.05 * u.ms)
    b = adex.AdExIFRef(3, tau_ref=2050 * u.us)
    c = adex.AdExIFRef(3, tau_ref=2.05)
    assert a.tau_ref == pytest.approx(2.05) and b.tau_ref == pytest.approx(2.05)
    assert c.tau_ref == 2.05
    assert adex.AdExIFRef(3).tau_ref == pytest.approx(1.7)
    assert adex.ExpIFRef(3).tau_ref == pytest.approx(1.7)
    assert adex.ExpIFRef(3).w is None and not adex.ExpIFRef(3).has_w
    for bad in (-0.1, float("nan"), float("inf"), 2 * u.mV):
        with pytest.raises(ValueError, match="tau_ref"):
            adex.AdExIFRef(3, tau_ref=bad)
    assert "tau_ref=2.05 ms" in repr(a)
    assert adex.AdExIF(3).tau_ref is None


# -- detach_reset ------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("model", list(MODELS))
def test_detach_reset_changes_gradients_not_values(model, reset):
    inp = make_inputs(MODELS[model], seed=12)
    att = run_layer(model, inp, "reference", spk_reset=reset)
    det = run_layer(model, inp, "reference", spk_reset=reset, detach_reset=True)
    assert_spiky(att.spikes)
    assert torch.equal(att.spikes, det.spikes)
    assert torch.equal(att.V, det.V)
    if MODELS[model].has_w:
        assert torch.equal(att.w, det.w)
    gx_a, gx_d = att.grads[0], det.grads[0]
    rel = float((gx_a - gx_d).abs().max() / gx_a.abs().max())
    assert rel > 1e-2, f"detach_reset barely changes dL/dx ({rel:.2g})"
    assert "detach_reset=True" in repr(det.layer)
    assert "detach_reset" not in repr(att.layer)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_detach_reset_lif_gradient_is_exact_decay(backend, reset):
    """LIF with detach_reset: V' = V - (const) on a spike, so dV_T/dV0 = e^{-T dt/tau}
    and dV_T/dx_k = R (1 - e^{-dt/tau}) e^{-(T-1-k) dt/tau}, whatever the spikes.
    (Hard reset passes 1 through sg(V) as BrainPy does.)"""
    T, tau, R = 24, 5.0, 1.0
    g = torch.Generator().manual_seed(13)
    x = (torch.randn(T, 2, 4, generator=g) * 3 + 8.0).requires_grad_(True)
    V0 = (torch.rand(2, 4, generator=g) * 1.5 - 0.2).requires_grad_(True)
    for detach in (True, False):
        layer = adex.LIF(4, tau=tau, R=R, dt=DT, spk_reset=reset, backend=backend,
                         detach_reset=detach)  # fmt: skip
        layer.init_state(2)
        layer.V = V0
        spikes = layer(x)
        assert spikes.sum() >= 20
        gx, gV0 = torch.autograd.grad(layer.V.sum(), [x, V0])
        decay = torch.exp(torch.tensor(-DT / tau, dtype=torch.float64))
        expect_V0 = torch.full((2, 4), float(decay**T), dtype=torch.float64)
        k = torch.arange(T, dtype=torch.float64)
        expect_x = (R * (1 - decay) * decay ** (T - 1 - k))[:, None, None].expand(T, 2, 4)
        if detach:
            assert_close("dV_T/dV0", expect_V0, gV0, 1e-6, 1e-5)
            assert_close("dV_T/dx", expect_x, gx, 1e-7, 1e-5)
        else:  # the surrogate of the reset spike is in the gradient
            assert (gV0.double() - expect_V0).abs().max() > 1e-2


# -- the family through the common API -----------------------------------------------------------


@pytest.mark.parametrize("model", list(MODELS))
def test_family_common_api(model):
    """Every model: BrainPy defaults, units, no-batch state, default surrogate, reset and
    backend validation, w only on the AdEx models."""
    mc = MODELS[model]
    layer = mc.cls((2, 3))
    assert isinstance(layer, adex.SpikingNeuron)
    assert layer.spk_reset == "soft" and layer.dt == pytest.approx(0.1)
    assert isinstance(layer.spk_fun, adex.surrogate.ReluGrad)
    layer.init_state()
    assert layer.V.shape == (2, 3)
    assert (layer.w is None) == (not mc.has_w)
    with pytest.raises(ValueError, match="spk_reset"):
        mc.cls(3, spk_reset="none")
    with pytest.raises(ValueError, match="backend"):
        mc.cls(3, backend="cuda")
    if not mc.has_w:
        with pytest.raises(AttributeError):
            layer.w = torch.zeros(2, 3)
        with pytest.raises(TypeError):
            mc.cls(3, b=1.0)
    # units: mV quantities and their canonical numbers give the same layer
    q = (
        mc.cls(3, V_reset=-0.068 * u.V, tau=0.01 * u.s)
        if model != "LIF"
        else mc.cls(3, V_reset=-0.5 * u.mV, tau=5000 * u.us)
    )
    p = q.params
    assert p.V_reset == pytest.approx(-68.0 if model != "LIF" else -0.5)
    assert p.tau == pytest.approx(10.0 if model != "LIF" else 5.0)
    with pytest.raises(ValueError, match="tau"):
        mc.cls(3, tau=5 * u.mV)


@pytest.mark.parametrize("model, defaults", [
    ("ExpIF", dict(R=1.0, tau=10.0, V_th=-30.0, V_reset=-68.0, V_rest=-65.0, V_T=-59.9,
                   delta_T=3.48)),
    ("LIF", dict(R=1.0, tau=5.0, V_th=1.0, V_reset=0.0, V_rest=0.0)),
    ("AdExIFRef", dict(R=1.0, tau=10.0, tau_w=30.0, V_th=-55.0, V_reset=-68.0, V_rest=-65.0,
                       V_T=-59.9, delta_T=3.48, a=1.0, b=1.0)),
])  # fmt: skip
def test_brainpy_defaults_of_the_family(model, defaults):
    cls = getattr(adex, model)
    layer = cls(4)
    p = layer.params
    for key, value in defaults.items():
        assert getattr(p, key) == pytest.approx(value), key
    layer.init_state(2)
    init_V = {"ExpIF": -65.0, "LIF": 0.0, "AdExIFRef": -65.0}[model]
    assert torch.equal(layer.V, torch.full((2, 4), init_V))
    assert set(cls.param_names) == set(defaults)


def test_fixture_helpers_agree_with_module_parameters():
    """The module built from the Ref fixture's meta has the fixture's parameters."""
    arrays, meta = load_fixture(FIXTURES / "adexifref_hard_tau2.05.f64.npz")
    layer = build_fixture_layer(arrays, meta, "reference")
    fp = fixture_params(arrays, meta)
    for key in adex.AdExIFRef.param_names:
        assert getattr(layer.params, key) == pytest.approx(getattr(fp, key)), key


# -- AdLIF: AdExIF without the exponential term --------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_adlif_is_adexif_with_a_vanishing_exponential_term(backend, reset):
    """With V_T far above any V reached, delta_T exp((V - V_T) / delta_T) underflows to 0
    (float32 and float64), so AdExIF's trajectory and gradients are AdLIF's to rounding."""
    inp = make_inputs(MODELS["AdLIF"], T=24, seed=21)
    shared = dict(tau=8.0, tau_w=25.0, a=0.5, b=2.0, spk_reset=reset, dt=DT)
    n = inp.x.shape[-1]
    builds = {
        "adlif": lambda backend: adex.AdLIF(n, **shared, backend=backend),
        "adexif": lambda backend: adex.AdExIF(n, V_T=500.0, delta_T=1.0, **shared, backend=backend),
    }
    runs = {name: run_variant(build, {"backend": backend}, inp.states(), inp.cotangents())
            for name, build in builds.items()}  # fmt: skip
    a, e = runs["adlif"], runs["adexif"]
    assert_spiky(a.out["spikes"])
    assert torch.equal(a.out["spikes"], e.out["spikes"])
    for key in ("V", "w"):
        assert_close(key, e.out[key], a.out[key], 1e-5, 1e-6)
    for key, g in a.grads.items():
        assert_close(f"grad {key}", e.grads[key], g, 1e-5 * float(g.abs().max()), 1e-5)


def test_adlif_parameters_and_defaults():
    """AdLIF has AdExIF's parameters less V_T and delta_T, with AdExIF's defaults."""
    lif, ex = adex.AdLIF(4), adex.AdExIF(4)
    assert lif.param_names == tuple(k for k in ex.param_names if k not in ("V_T", "delta_T"))
    for key in lif.param_names:
        assert getattr(lif.params, key) == getattr(ex.params, key)
    assert lif.has_w and not lif.has_exp and not lif.has_ref
    assert adex.AdLIFRef(4).has_ref and adex.AdLIFRef(4).tau_ref == pytest.approx(1.7)
    with pytest.raises(ValueError, match="not a parameter"):
        adex.AdLIF(4, learnable=("V_T",))
