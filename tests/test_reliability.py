"""Reliability of the fused kernels and of the module state.

* Determinism: the fused forward and backward (input, state and parameter gradients, with
  and without the refractory mask) are bitwise reproducible over two runs.
* Finite results: no NaN/inf from finite inputs and valid parameters in stress regimes
  (dt = 1 ms, inputs up to 500 mA, fp16 inputs near the fp16 maximum, ExpIF's default
  V_th = -30 mV with a soft reset, which runs away in BrainPy, bursting parameters), on both
  backends. The one exception is a gradient that is larger than fp16 can hold: grad_x is
  returned in x's dtype, so it may overflow exactly where the float64 gradient exceeds
  65504 (and only there).
* 64-bit index arithmetic: the launchers run on tensors of more than 2^31 elements (or
  T*M > 2^31) that cost no memory: anonymous MAP_NORESERVE pages are only committed when
  touched, and the Triton interpreter is made to run only the first and the last program
  of the grid. Runs in a subprocess (a wrong offset may crash it). Includes the two int32
  overflows of the parameter row offsets (k * N, k * M) this test found.
* A long sequence (T = 3000, marked slow).
* Module state safety: a batch that does not match the state raises and leaves the state
  untouched, ``.to()`` moves the states (also with per-neuron and learnable parameters),
  ``init_state`` after a batch change works.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import Tolerance, compare_backends

import adex
from adex.params import RUNAWAY_CEILING, AdExParams
from adex.surrogate import ReluGrad, Sigmoid

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "triton"]
KERNELS = Path(importlib.util.find_spec("adex.kernels").origin).parent  # without importing
ALL_PARAMS = tuple(k for k in AdExParams.__dataclass_fields__ if k != "tau_syn")  # no synapse
F16_MAX = torch.finfo(torch.float16).max

needs_triton = pytest.mark.skipif(not adex.HAS_TRITON, reason="needs triton")


def bitwise_equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Same dtype, shape and bytes (tells -0.0 from 0.0 and compares NaN payloads)."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.detach().contiguous().reshape(-1).view(torch.uint8),
        b.detach().contiguous().reshape(-1).view(torch.uint8),
    )


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# -- determinism ---------------------------------------------------------------------------------

DET_CASES = [
    pytest.param(
        dict(has_w=True, has_exp=True, reset="hard", tau_ref=0.25, per_neuron=True,
             learn=ALL_PARAMS, dtype=torch.float32, surrogate=ReluGrad(), x_mean=25.0),
        id="adexref-hard-perneuron-all-learnable-fp32",
    ),
    pytest.param(
        dict(has_w=False, has_exp=True, reset="soft", tau_ref=0.35, per_neuron=False,
             learn=("tau", "V_th", "V_reset", "V_T", "delta_T"), dtype=torch.bfloat16,
             surrogate=Sigmoid(), x_mean=40.0, V_th=-45.0),
        id="expifref-soft-scalar-learnable-bf16",
    ),
    pytest.param(
        dict(has_w=True, has_exp=False, reset="soft", tau_ref=None, per_neuron=True,
             learn=("R", "tau", "tau_w", "a", "b"), dtype=torch.float16,
             surrogate=ReluGrad(), x_mean=25.0),
        id="adaptive-lif-soft-perneuron-fp16",
    ),
    pytest.param(  # a runaway step (stored V_th) in the middle of the sequence
        dict(has_w=True, has_exp=True, reset="soft", tau_ref=None, per_neuron=False,
             learn=("V_th", "V_T", "delta_T", "b"), dtype=torch.float32,
             surrogate=ReluGrad(), x_mean=60.0, V_th=-30.0),
        id="adex-runaway-soft-fp32",
    ),
]  # fmt: skip


def _det_inputs(cfg: dict, T: int = 24, shape=(3, 37), seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn((T, *shape), generator=gen) * 8 + cfg["x_mean"]).to(cfg["dtype"])
    V0 = torch.rand(shape, generator=gen) * 16 - 68
    w0 = torch.rand(shape, generator=gen) * 2 if cfg["has_w"] else None
    values: dict[str, object] = {k: float(v) for k, v in AdExParams().items()}
    if "V_th" in cfg:
        values["V_th"] = cfg["V_th"]
    if cfg["per_neuron"]:
        for k in ("R", "tau", "tau_w", "a", "b", "delta_T"):
            values[k] = values[k] * (0.9 + 0.2 * torch.rand(shape[-1], generator=gen))
    t_last = None
    if cfg["tau_ref"] is not None:  # some neurons spiked just before x[0]
        t_last = torch.where(torch.rand(shape, generator=gen) < 0.3, -0.1, -1e7)
    G = torch.randn((T, *shape), generator=gen).to(cfg["dtype"]).float()
    GV = torch.randn((T, *shape), generator=gen) * 0.05
    GW = torch.randn((T, *shape), generator=gen) * 0.05
    return x, V0, w0, values, t_last, G, GV, GW


def _det_run(cfg: dict) -> dict[str, torch.Tensor]:
    x, V0, w0, values, t_last, G, GV, GW = (
        t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in _det_inputs(cfg)
    )
    x, V0 = _leaf(x), _leaf(V0)
    w0 = _leaf(w0) if w0 is not None else None
    leaves = {}
    for k in cfg["learn"]:
        leaves[k] = torch.as_tensor(values[k], dtype=torch.float32, device=DEVICE)
        leaves[k] = leaves[k].clone().requires_grad_(True)
    params = AdExParams(**{**values, **leaves})
    extra = {}
    if cfg["tau_ref"] is not None:
        extra = dict(tau_ref=cfg["tau_ref"], last_spike_time=t_last, t0_step=3)
    out = adex.adex_scan(
        x, V0, w0, params, dt=0.1, surrogate=cfg["surrogate"], spk_reset=cfg["reset"],
        has_exp=cfg["has_exp"], return_states=True, backend="triton", **extra,
    )  # fmt: skip
    loss = (out.spikes.float() * G).sum() + (out.V * GV).sum()
    if w0 is not None:
        loss = loss + (out.w * GW).sum()
    targets = {"x": x, "V0": V0, **({"w0": w0} if w0 is not None else {}), **leaves}
    grads = torch.autograd.grad(loss, list(targets.values()))
    res = {"spikes": out.spikes, "V": out.V, "w": out.w}
    if cfg["tau_ref"] is not None:
        res["last_spike_time"] = out.last_spike_time
    res.update({f"grad_{k}": g for k, g in zip(targets, grads, strict=True)})
    return {k: v.detach().cpu() for k, v in res.items() if v is not None}


@needs_triton
@pytest.mark.parametrize("cfg", DET_CASES)
def test_fused_forward_backward_bitwise_reproducible(cfg):
    """Two identical runs of the fused forward + backward give the same bits everywhere:
    spikes, V and w sequences, last_spike_time and every gradient (parameters included)."""
    first, second = _det_run(cfg), _det_run(cfg)
    assert first.keys() == second.keys()
    assert first["spikes"][:-1].sum() > 0, "test data: no spikes (nothing reset/refractory)"
    for name in cfg["learn"]:
        assert first[f"grad_{name}"].abs().sum() > 0, f"test data: d loss / d {name} is zero"
    if cfg.get("V_th") == -30.0:
        assert (first["V"] == -30.0).any(), "test data: no runaway step"
    for name, a in first.items():
        assert torch.isfinite(a.float()).all(), f"{name}: not finite"
        assert bitwise_equal(a, second[name]), f"{name} differs between two identical runs"


@needs_triton
def test_refractory_mask_path_is_exercised_in_determinism_case():
    """The refractory case above really goes through the saved refractory mask: with
    tau_ref = 0 (no frozen step) the gradients differ."""
    cfg = dict(DET_CASES[0].values[0])
    with_ref = _det_run(cfg)
    without = _det_run({**cfg, "tau_ref": 0.0})
    assert not torch.equal(with_ref["grad_x"], without["grad_x"])
    assert (with_ref["grad_x"] == 0).sum() > (without["grad_x"] == 0).sum()  # frozen steps


@needs_triton
def test_module_learnable_ref_bitwise_reproducible():
    """Through the module (packed per call from nn.Parameters): AdExIFRef with every
    parameter learnable, two runs on fresh layers give identical bits."""

    def once():
        torch.manual_seed(0)
        layer = adex.AdExIFRef(
            (2, 9), tau_ref=0.25, spk_reset="hard", backend="triton", learnable=ALL_PARAMS
        ).to(DEVICE)
        layer.init_state(3)
        gen = torch.Generator().manual_seed(1)
        x = _leaf((torch.randn(30, 3, 2, 9, generator=gen) * 10 + 60).to(DEVICE))
        out = layer(x, return_states=True)
        loss = out.spikes.sum() + 0.01 * out.V.sum() + 0.01 * out.w.sum()
        params = dict(layer.named_parameters())
        grads = torch.autograd.grad(loss, [x, *params.values()])
        return [out.spikes, out.V, out.w, layer.last_spike_time, *grads]

    a, b = once(), once()
    assert a[0].sum() > 0
    for i, (ta, tb) in enumerate(zip(a, b, strict=True)):
        assert bitwise_equal(ta.cpu(), tb.cpu()), f"output {i} differs between two runs"


# -- finite results in stress regimes ------------------------------------------------------------

_T, _S = 32, (2, 16)
AD = {k: float(v) for k, v in AdExParams().items()}
BURSTING = {**AD, "V_rest": -58.0, "V_T": -50.0, "delta_T": 2.0, "V_th": -44.0,
            "V_reset": -47.0, "tau_w": 120.0, "a": 2.0, "b": 10.0}  # fmt: skip
LIF = {**AD, "tau": 5.0, "V_th": 1.0, "V_reset": 0.0, "V_rest": 0.0}


def _uniform(gen, lo, hi, shape=(_T, *_S)) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


STRESS = {  # name: (model, params, x (seeded), dt, reset, tau_ref, learnable)
    "adex-dt1-500mA-soft": ("adex", AD, lambda g: _uniform(g, 0, 500), 1.0, "soft", None,
                            ("tau", "a", "b", "V_T", "delta_T", "R")),
    "adex-dt1-500mA-hard": ("adex", AD, lambda g: _uniform(g, 0, 500), 1.0, "hard", None,
                            ("tau", "tau_w", "V_th", "V_reset")),
    "adexref-dt1-500mA-soft": ("adex", AD, lambda g: _uniform(g, 0, 500), 1.0, "soft", 1.5,
                               ("tau", "a", "b", "V_th")),
    "expif-default-Vth-30-soft-dt0.1": ("expif", {**AD, "V_th": -30.0},
                                        lambda g: _uniform(g, 20, 80), 0.1, "soft", None,
                                        ("tau", "V_T", "delta_T", "V_th")),
    "expif-default-Vth-30-soft-dt1": ("expif", {**AD, "V_th": -30.0},
                                      lambda g: _uniform(g, 20, 80), 1.0, "soft", None,
                                      ("tau", "V_T", "delta_T")),
    "expifref-default-Vth-30-hard-dt1": ("expif", {**AD, "V_th": -30.0},
                                         lambda g: _uniform(g, 20, 500), 1.0, "hard", 1.5,
                                         ("tau", "V_reset")),
    "adex-fp16-near-max-dt0.1-soft": ("adex", AD,
                                      lambda g: _uniform(g, F16_MAX - 2000, F16_MAX).half(),
                                      0.1, "soft", None, ()),
    "adex-fp16-near-max-dt1-hard": ("adex", AD,
                                    lambda g: _uniform(g, F16_MAX - 2000, F16_MAX).half(),
                                    1.0, "hard", None, ()),
    "lif-fp16-near-max-dt1": ("lif", LIF, lambda g: _uniform(g, -F16_MAX, F16_MAX).half(),
                              1.0, "soft", None, ("tau",)),
    "bursting-dt1-200mA-hard": ("adex", BURSTING, lambda g: _uniform(g, 0, 200), 1.0, "hard",
                                None, ("b", "V_reset", "a")),
}  # fmt: skip


def _stress_run(name: str, backend: str, compute=None):
    model, values, make_x, dt, reset, tau_ref, learn = STRESS[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    x = make_x(gen)
    V0 = _uniform(gen, -70, -50, _S) if model != "lif" else _uniform(gen, -0.5, 1.5, _S)
    w0 = _uniform(gen, 0, 5, _S) if model == "adex" else None
    G = torch.randn(x.shape, generator=gen)
    if compute is not None:  # the float64 oracle on the same values
        x, V0 = x.to(compute), V0.to(compute)
        w0 = None if w0 is None else w0.to(compute)
    x, V0 = _leaf(x.to(DEVICE)), _leaf(V0.to(DEVICE))
    w0 = None if w0 is None else _leaf(w0.to(DEVICE))
    leaves = {k: torch.tensor(values[k], device=DEVICE, requires_grad=True) for k in learn}
    extra = {}
    if tau_ref is not None:
        extra = dict(tau_ref=tau_ref, last_spike_time=torch.full_like(V0, -1e7))
    out = adex.adex_scan(
        x, V0, w0, AdExParams(**{**values, **leaves}), dt=dt, spk_reset=reset,
        has_exp=model != "lif", return_states=True, backend=backend, **extra,
    )  # fmt: skip
    G = G.to(DEVICE, out.V.dtype)
    loss = (out.spikes.to(out.V.dtype) * G).sum() + 0.01 * (out.V * G).sum()
    if w0 is not None:
        loss = loss + 0.01 * (out.w * G).sum()
    targets = {"x": x, "V0": V0, **({"w0": w0} if w0 is not None else {}), **leaves}
    grads = torch.autograd.grad(loss, list(targets.values()))
    return out, dict(zip(targets, grads, strict=True)), values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(STRESS))
def test_finite_in_stress_regimes(name, backend):
    """Finite inputs and valid parameters: finite spikes (0/1), V, w, last_spike_time and
    gradients; V stays below the runaway ceiling where BrainPy's ExpIF runs away; grad_x in
    fp16 overflows only where the float64 gradient itself exceeds fp16's range."""
    if backend == "triton" and not adex.HAS_TRITON:
        pytest.skip("needs triton")
    out, grads, values = _stress_run(name, backend)
    for field in ("spikes", "V", "w", "last_spike_time"):
        t = getattr(out, field, None)
        if t is not None:
            bad = int((~torch.isfinite(t.float())).sum())
            assert bad == 0, f"{field}: {bad} of {t.numel()} elements not finite"
    assert ((out.spikes == 0) | (out.spikes == 1)).all()
    assert out.spikes.sum() > 0, "test data: no spikes"
    if values["V_th"] == -30.0 and "expif" in name:  # BrainPy runs away to 1e7..inf here
        cap = values["V_th"] + RUNAWAY_CEILING * (values["V_th"] - values["V_reset"])
        assert out.V.max().item() <= cap, f"V reached {out.V.max().item():g} > {cap:g}"
        assert (out.V == values["V_th"]).any(), "test data: no runaway step"
    for key, g in grads.items():
        finite = torch.isfinite(g.float())
        if key == "x" and g.dtype == torch.float16 and not finite.all():
            _, exact, _ = _stress_run(name, "reference", compute=torch.float64)
            huge = exact["x"].abs() >= F16_MAX
            assert huge[~finite].all(), (
                f"grad_x: {int((~finite & ~huge).sum())} non-finite elements where the "
                "float64 gradient fits in fp16"
            )
            continue
        bad = int((~finite).sum())
        assert bad == 0, f"grad {key}: {bad} of {g.numel()} elements not finite"


# -- 64-bit offsets --------------------------------------------------------------------------------


def test_kernel_source_uses_int64_offsets():
    """The index arithmetic the offset tests below exercise: 64-bit program offsets, 64-bit
    starts of the backward segments and checkpoint rows, per-step pointer increments (no
    t*M product)."""
    fwd = (KERNELS / "scan_fwd.py").read_text()
    bwd = (KERNELS / "scan_bwd.py").read_text()
    for name, src in (("scan_fwd", fwd), ("scan_bwd", bwd)):
        assert "tl.program_id(0).to(tl.int64) * BLOCK" in src, name
        assert not re.search(r"\bi \* M\b|\bt \* M\b", src), f"{name}: a step * M product"
    # segment starts (the whole scan without checkpoints) and checkpoint rows in 64 bits
    assert "tl.cast(L - 1, tl.int64) * M" in bwd and "tl.cast(t0 + L - 1, tl.int64) * M" in bwd
    assert "tl.cast(t0, tl.int64) * M" in bwd and "tl.cast(seg, tl.int64) * C * M" in bwd
    assert "tl.cast(i // K, tl.int64) * C * M" in fwd
    assert re.search(r"p_x \+= M", fwd) and re.search(r"p_vprev -= M", bwd)


_OFFSETS_SCRIPT = r'''
import importlib, json, math, mmap, os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
import triton
import triton.runtime.interpreter as interp
import adex
from adex.kernels.scan_bwd import SavedForBackward
from adex.spec import ScanSpec
from adex.surrogate import ReluGrad

M, T = int(sys.argv[1]), int(sys.argv[2])
PER_NEURON, PARAM_GRAD = sys.argv[3] == "per-neuron", sys.argv[4] == "param-grad"
CHECKPOINT = sys.argv[5] == "checkpoint"  # backward recomputes from 1-step checkpoints
N = M if PER_NEURON else 1
BLOCK = 1024
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # the Linux value
_maps = []


def sparse_empty(shape, dtype):
    """A tensor on anonymous MAP_NORESERVE memory: a page costs RAM once it is touched."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = math.prod(shape)
    if numel < 1 << 16:
        return torch.empty(shape, dtype=dtype)
    size = torch.empty(0, dtype=dtype).element_size()
    try:
        mm = mmap.mmap(-1, numel * size,
                       flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    except OSError as err:
        print(f"cannot map {numel * size} bytes: {err}")
        sys.exit(77)
    _maps.append(mm)
    return torch.frombuffer(mm, dtype=dtype, count=numel).view(shape)


class SparseTorch:  # ``torch`` inside the launchers: outputs on sparse memory
    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, shape, dtype=torch.float32, device=None):
        return sparse_empty(shape, dtype)

    def empty_like(self, t, dtype=None):
        return sparse_empty(t.shape, t.dtype if dtype is None else dtype)


n_prog = triton.cdiv(M, BLOCK)
PROGRAMS = [0, n_prog - 1]  # the interpreter runs the first and the last program only


def two_programs(n_elements, device):  # ``block_config`` inside the launchers: a short grid
    return BLOCK, 4, len(PROGRAMS)


builder = interp.interpreter_builder
_set_grid_idx = builder.set_grid_idx


def set_grid_idx(x, y, z):  # program x of the short grid is PROGRAMS[x] of the real one
    builder.grid_dim = (n_prog, 1, 1)
    _set_grid_idx(PROGRAMS[x], y, z)


builder.set_grid_idx = set_grid_idx
for name in ("scan_fwd", "scan_bwd"):
    module = importlib.import_module(f"adex.kernels.{name}")
    module.torch, module.block_config = SparseTorch(), two_programs

lanes = torch.cat([torch.arange(0, BLOCK), torch.arange((n_prog - 1) * BLOCK, M)])
L = lanes.numel()
gen = torch.Generator().manual_seed(0)


def fill(shape, values):
    t = sparse_empty(shape, values.dtype)
    t[..., lanes] = values
    return t


x = fill((T, M), torch.randn(T, L, generator=gen) * 5 + 25)
V0 = fill((M,), torch.rand(L, generator=gen) * 12 - 67)
w0 = fill((M,), torch.rand(L, generator=gen) * 2)
t_last = fill((M,), torch.where(torch.rand(L, generator=gen) < 0.5, -0.1, -1e7))
DT, TAU_REF = 0.1, 0.25
base = adex.AdExParams()
values = {k: float(v) for k, v in base.items()}
if PER_NEURON:  # a value per neuron: row k of the packed [N_PARAMS, N] starts at k * N
    for k in ("R", "tau", "tau_w", "a", "b"):
        values[k] = values[k] * (1 + 0.1 * torch.rand(L, generator=gen, dtype=torch.float64))
    packed = sparse_empty((adex.params.N_PARAMS, N), torch.float32)
    packed[:, lanes] = adex.AdExParams(**values).packed(L, "cpu")
else:
    packed = base.packed(1, "cpu")
G = fill((T, M), torch.randn(T, L, generator=gen))
GV = fill((T, M), torch.randn(T, L, generator=gen) * 0.05)
GVL = fill((M,), torch.randn(L, generator=gen) * 0.05)
GWL = fill((M,), torch.randn(L, generator=gen) * 0.05)

sg = ReluGrad()
state0 = sparse_empty((3, M), torch.float32)  # the state block: V, w, last-spike time
for row, t in enumerate((V0, w0, t_last)):
    state0[row, lanes] = t[lanes]
g_state = sparse_empty((3, M), torch.float32)  # the final state's gradient (V, w rows)
g_state[0, lanes], g_state[1, lanes] = GVL[lanes], GWL[lanes]
spec = ScanSpec(tau_ref=TAU_REF, spk_reset="hard", dt=DT, surrogate=sg, return_states=True)
plan = spec.plan(True, PARAM_GRAD)  # V, w and the refractory flags of every step
fwd = adex.kernels.adex_scan_fwd(x, state0, packed, spec, plan)
spikes, v_seq, w_seq, ref_mask = fwd.spikes, fwd.v_seq, fwd.w_seq, fwd.ref_bits
v_last, w_last, t_out = fwd.state[0], fwd.state[1], fwd.state[2]
print("forward done", flush=True)
if CHECKPOINT:  # checkpoint rows at seg * 3 * M, x re-read at t * M: both past 2^31
    GV = None
    spec_c = ScanSpec(tau_ref=TAU_REF, spk_reset="hard", dt=DT, surrogate=sg, checkpoint_every=1)
    plan_c = spec_c.plan(True, PARAM_GRAD)
    fwd_c = adex.kernels.adex_scan_fwd(x, state0, packed, spec_c, plan_c)
    assert torch.equal(fwd_c.spikes[:, lanes], spikes[:, lanes])
    saved = SavedForBackward(state0, None, None, None, fwd_c.checkpoints, x)
    gx, gstate0, gpar = adex.kernels.adex_scan_bwd(saved, packed, spec_c, plan_c, G, None,
                                                   None, g_state, x.dtype, T)
else:
    saved = SavedForBackward(state0, v_seq, w_seq, ref_mask, None, None)
    gx, gstate0, gpar = adex.kernels.adex_scan_bwd(saved, packed, spec, plan, G, GV, None,
                                                   g_state, x.dtype, T)
gv0, gw0 = gstate0[0], gstate0[1]
print("backward done", flush=True)

# the float64 reference on the same neurons
leaves = {k: torch.as_tensor(v, dtype=torch.float64).clone().requires_grad_(True)
          for k, v in values.items()}
xs = x[:, lanes].double().requires_grad_(True)
V0s = V0[lanes].double().requires_grad_(True)
w0s = w0[lanes].double().requires_grad_(True)
s, V, W, tl_ref = adex.adex_scan_reference(
    xs, V0s, w0s, adex.AdExParams(**leaves), dt=DT, surrogate=sg, hard_reset=True,
    tau_ref=TAU_REF, last_spike_time=t_last[lanes].double())
loss = (s * G[:, lanes]).sum() + (0.0 if GV is None else (V * GV[:, lanes]).sum())
loss = loss + (V[-1] * GVL[lanes]).sum() + (W[-1] * GWL[lanes]).sum()
grads = torch.autograd.grad(loss, [xs, V0s, w0s, *leaves.values()])
u = (torch.cat([V0s.detach()[None], V.detach()]) - base.V_th) / (base.V_th - base.V_reset)
if not (u.abs() > 2e-5).all():
    print("test data: a V within rounding of V_th")
    sys.exit(3)


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


flags = ref_mask[:, lanes].int()  # 8 steps per byte
report = {
    "n_spikes": int(s.sum()), "n_refractory": int(sum(((flags >> b) & 1).sum() for b in range(8))),
    "spikes": err(s, spikes[:, lanes]), "V": err(V, v_seq[:, lanes]),
    "w": err(W, w_seq[:, lanes]), "V_last": err(V[-1], v_last[lanes]),
    "w_last": err(W[-1], w_last[lanes]), "t_last": err(tl_ref, t_out[lanes]),
}
pairs = {"x": (grads[0], gx[:, lanes]), "V0": (grads[1], gv0[lanes]),
         "w0": (grads[2], gw0[lanes])}
for k, name in enumerate(leaves if PARAM_GRAD else []):
    ref_g = grads[3 + k]
    pairs[name] = (ref_g, gpar[k, lanes] if ref_g.dim() else gpar[k, lanes].sum())
for name, (ref_g, got) in pairs.items():
    report["grad_" + name] = err(ref_g, got) / max(ref_g.abs().max().item(), 1e-30)
print("REPORT " + json.dumps(report))
'''

OFFSET_CASES = [
    # M > 2^31: 64-bit program offsets; with T = 2 also (T - 1) * M > 2^31
    pytest.param(2**31 + 5, 2, "scalar", "param-grad", "default", id="M-2^31+5-T2-param-grad"),
    # T * M > 2^31 with M < 2^31 (int32 M): the backward's start (T - 1) * M
    pytest.param(2**28 + 3, 9, "scalar", "no-param-grad", "default", id="M-2^28+3-T9"),
    # regression: load_params reads row k at par_ptr + k * N + o_n; with an int32 N, rows 8
    # (a) and 9 (b) wrapped once 8 * N >= 2^31 (N >= 2^28 per-neuron parameters)
    pytest.param(2**28 + 3, 2, "per-neuron", "no-param-grad", "default",
                 id="perneuron-N-2^28+3"),
    # regression: the backward stores parameter row k at gpar_ptr + k * M + o_m; with an
    # int32 M, 9 * M wrapped for M >= 238,609,295 elements (an out-of-bounds store)
    pytest.param(2**28 + 3, 2, "scalar", "param-grad", "default", id="param-grad-M-2^28+3"),
    # checkpoint mode: checkpoint rows seg * 3 * M and segment starts t0 * M past 2^31
    pytest.param(2**28 + 3, 9, "scalar", "param-grad", "checkpoint", id="checkpoint-M-2^28+3-T9"),
]  # fmt: skip


def _overcommit_strict() -> bool:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "2"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MAP_NORESERVE: Linux only")
@pytest.mark.skipif(_overcommit_strict(), reason="vm.overcommit_memory=2 ignores MAP_NORESERVE")
@needs_triton
@pytest.mark.parametrize(("M", "T", "params", "param_grad", "mode"), OFFSET_CASES)
def test_launchers_index_beyond_int32(M, T, params, param_grad, mode):
    """adex_scan_fwd + adex_scan_bwd (refractory mask, hard reset, w, every incoming gradient)
    on [T, M] tensors with M or T*M beyond 2^31, under the interpreter, running the first and
    the last program: their lanes match the float64 reference (spikes exactly, states to
    1e-4, gradients to 1e-3 of their largest element). The tensors live on MAP_NORESERVE
    memory, so only the touched pages (a few MiB) are committed."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", _OFFSETS_SCRIPT, str(M), str(T), params, param_grad, mode],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode == 77:
        pytest.skip(f"cannot reserve the sparse address space: {tail}")
    assert proc.returncode == 0, f"subprocess failed (rc {proc.returncode}):\n{tail}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))
    report = json.loads(line[len("REPORT ") :])
    assert report["n_spikes"] > 0 and report["n_refractory"] > 0, report
    assert report["spikes"] == 0.0, report
    for key in ("V", "w", "V_last", "w_last"):
        assert report[key] <= 1e-4, (key, report)
    assert report["t_last"] <= 1e-5, report
    grads = {k: v for k, v in report.items() if k.startswith("grad_")}
    assert len(grads) == (13 if param_grad == "param-grad" else 3), grads
    for key, rel in grads.items():
        assert rel <= 1e-3, (key, report)


# -- a long sequence -------------------------------------------------------------------------------


@pytest.mark.slow
@needs_triton
def test_long_sequence_T3000():
    """T = 3000 steps of 3 AdExIFRef neurons (hard reset, tau_ref = 0.25 ms, t up to 300 ms
    in fp32): fused forward and backward against the float64 reference."""
    T, n = 3000, 3
    gen = torch.Generator().manual_seed(12)  # min |u| = 2e-4 over the float64 trajectory
    x = (torch.randn(T, n, generator=gen) * 6 + 22).to(DEVICE)
    V0 = torch.tensor([-66.0, -60.0, -57.0], device=DEVICE)
    w0 = torch.tensor([0.0, 0.5, 1.0], device=DEVICE)
    G = torch.randn(T, n, generator=gen).to(DEVICE)
    GV = (torch.randn(T, n, generator=gen) * 0.01).to(DEVICE)

    def scan(backend):
        return lambda x, V0, w0: adex.adex_scan(
            x, V0, w0, AdExParams(), spk_reset="hard", return_states=True, backend=backend,
            tau_ref=0.25, last_spike_time=torch.full_like(V0, -1e7),
        )  # fmt: skip

    tol = {"spikes": Tolerance(0.0), "V": Tolerance(1e-3), "w": Tolerance(1e-3),
           "last_spike_time": Tolerance(1e-4), "grads": Tolerance(1e-3, scaled=True)}  # fmt: skip
    runs = compare_backends(scan, dict(x=x, V0=V0, w0=w0), dict(spikes=G, V=GV),
                            dtypes={"reference": torch.float64}, tol=tol)  # fmt: skip
    ref = runs["reference"].out
    u = (ref["V"] - (-55.0)) / 13.0
    assert (u.abs() > 1e-4).all(), "test data: a V within rounding of V_th; reseed"
    assert ref["spikes"].sum() > 100


# -- module state safety ---------------------------------------------------------------------------


def _snapshot(layer) -> list:
    state = [layer.V, getattr(layer, "w", None), layer.last_spike_time, layer.t_step]
    return [s.clone() if isinstance(s, torch.Tensor) else s for s in state]


def _same_state(a: list, b: list) -> bool:
    return all(
        bitwise_equal(x, y) if isinstance(x, torch.Tensor) or x is None else x == y
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [adex.AdExIF, adex.AdExIFRef, adex.LIF])
def test_batch_mismatch_raises_and_keeps_state(cls, backend):
    """State of batch 4: an input of batch 3 (forward or update), or one without the batch
    axis, raises ValueError and leaves V, w, last_spike_time and the clock untouched. A batch
    of 1 broadcasts (BrainPy's broadcasting of x), as documented by ``_input``."""
    if backend == "triton" and not adex.HAS_TRITON:
        pytest.skip("needs triton")
    layer = cls(5, backend=backend).to(DEVICE)
    layer.init_state(4)
    gen = torch.Generator().manual_seed(0)
    layer(torch.randn(3, 4, 5, generator=gen).to(DEVICE) * 5 + 30)  # advance the clock
    before = _snapshot(layer)
    bad_inputs = [
        lambda: layer(torch.randn(6, 3, 5, generator=gen).to(DEVICE) + 20),
        lambda: layer(torch.randn(6, 5, generator=gen).to(DEVICE) + 20),
        lambda: layer(torch.randn(6, 4, 6, generator=gen).to(DEVICE) + 20),
        lambda: layer.update(torch.randn(3, 5, generator=gen).to(DEVICE) + 20),
        lambda: layer.update(torch.randn(2, 4, 5, generator=gen).to(DEVICE) + 20),
    ]
    for i, call in enumerate(bad_inputs):
        with pytest.raises(ValueError):
            call()
        assert _same_state(before, _snapshot(layer)), f"bad input {i} changed the state"
    spikes = layer(torch.full((6, 1, 5), 25.0, device=DEVICE))  # batch 1 broadcasts
    assert spikes.shape == (6, 4, 5)
    assert layer.V.shape == (4, 5)


@pytest.mark.parametrize("cls", [adex.AdExIF, adex.AdExIFRef])
def test_state_shapes_that_disagree_raise(cls):
    """V of batch 3 next to w (or last_spike_time) of batch 4: the next call raises."""
    layer = cls(5, backend="reference")
    layer.init_state(4)
    layer.V = torch.full((3, 5), -65.0)
    with pytest.raises(ValueError):
        layer(torch.full((2, 3, 5), 20.0))
    with pytest.raises(ValueError):  # a state not shaped (batch, *in_size)
        layer.V = torch.full((4, 6), -65.0)


def test_states_follow_module_to_meta():
    """``layer.to('meta')`` moves V, w, last_spike_time and the packed parameter cache
    (states keep their shape and dtype). Moving back from 'meta' is impossible for any
    PyTorch module (no data): init_state gives a fresh state on a real device."""
    layer = adex.AdExIFRef((2, 3), V_th=-54.0, backend="reference")
    layer.init_state(4)
    layer.to("meta")
    tensors = {"V": layer.V, "w": layer.w, "last_spike_time": layer.last_spike_time,
               "_packed": layer._packed}  # fmt: skip
    for name, t in tensors.items():
        assert t.device.type == "meta", f"{name} stayed on {t.device}"
    assert layer.V.shape == (4, 2, 3) and layer.V.dtype == torch.float32
    layer.init_state(2, device="cpu")  # a fresh state where the data is
    assert layer.V.device.type == "cpu" and layer.V.shape == (2, 2, 3)


@pytest.mark.parametrize(
    "kwargs",
    [pytest.param(dict(V_th=torch.full((2, 3), -54.0)), id="per-neuron-V_th"),
     pytest.param(dict(learnable=("tau",)), id="learnable-tau")],
)  # fmt: skip
def test_states_follow_module_to_meta_tensor_params(kwargs):
    """The same with a per-neuron (buffer) or a learnable (nn.Parameter) parameter."""
    layer = adex.AdExIFRef((2, 3), backend="reference", **kwargs)
    layer.init_state(4)
    layer.to("meta")
    for t in (layer.V, layer.w, layer.last_spike_time, *layer.parameters(), *layer.buffers()):
        assert t.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_states_follow_module_between_devices():
    layer = adex.AdExIFRef(5, V_th=torch.full((5,), -54.0))
    layer.init_state(2)
    layer.to("cuda")
    for t in (layer.V, layer.w, layer.last_spike_time, layer.V_th, layer._packed):
        assert t.is_cuda
    layer(torch.full((3, 2, 5), 20.0, device="cuda"))
    layer.to("cpu")
    for t in (layer.V, layer.w, layer.last_spike_time, layer.V_th, layer._packed):
        assert t.device.type == "cpu"
    layer(torch.full((3, 2, 5), 20.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [adex.AdExIF, adex.ExpIFRef])
def test_init_state_after_batch_change(cls, backend):
    """Run with batch 2, then init_state(5): the new state is batch 5, the clock restarts,
    and the run equals a fresh layer's run of batch 5 bit for bit."""
    if backend == "triton" and not adex.HAS_TRITON:
        pytest.skip("needs triton")
    kw = dict(V_th=-45.0) if cls is adex.ExpIFRef else {}
    gen = torch.Generator().manual_seed(3)
    x5 = (torch.randn(24, 5, 7, generator=gen) * 10 + 120).to(DEVICE)
    layer = cls(7, backend=backend, **kw).to(DEVICE)
    layer.init_state(2)
    layer((torch.randn(24, 2, 7, generator=gen) * 10 + 120).to(DEVICE))
    layer.init_state(5)
    assert layer.V.shape == (5, 7) and layer.t_step == 0
    if layer.has_ref:
        assert layer.last_spike_time.shape == (5, 7)
    spikes = layer(x5)
    fresh = cls(7, backend=backend, **kw).to(DEVICE)
    fresh.init_state(5)
    expected = fresh(x5)
    assert spikes.sum() > 0
    assert bitwise_equal(spikes, expected) and bitwise_equal(layer.V, fresh.V)
