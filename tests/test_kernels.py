"""Fused scans, the Triton kernels (``backend='triton'``) and the CPU kernels
(``backend='cpu'``), against the per-step PyTorch reference.

The oracle is the reference run in float64 on the very same input values (for 16-bit inputs:
the 16-bit-rounded values, widened exactly). The kernels compute in fp32, so V agrees to
~1e-4 mV and every gradient to ~1e-4 of its largest element; spikes agree exactly as long as
no V lies within rounding of the threshold (or of a jump of the surrogate derivative):
the few neurons whose oracle trajectory comes that close are left out of the comparison.

On CPU the kernels run through the Triton interpreter (``tests/conftest.py``), whose cost grows
with programs x T: shapes stay at T <= 64 and at most two programs of 1024 neurons.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math

import pytest
import torch
from helpers import assert_close, run_variant

import adex
from adex.kernels.launch import INTERPRETED
from adex.kernels.scan_bwd import SavedForBackward
from adex.spec import ScanSpec
from adex.surrogate import ReluGrad, Surrogate

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

V_ATOL = 1e-4  # mV: fp32 scan over <= 64 steps vs float64 (measured ~5e-5 at T=63)
W_ATOL = 1e-4  # mA: w integrates a * V (a <= 1.5 S here), so it inherits V's error
GRAD_RTOL = 1e-4  # of max |grad| (measured <= 3e-6 at T=63)
U_MARGIN = 2e-5  # u = (V - V_th)/theta this close to a jump may flip in fp32 (error ~4e-6)

FUSED = ("triton", "cpu")
"""The fused backends: every comparison below runs on both (CPU kernels on CPU tensors)."""
CPU_FUSED = FUSED if DEVICE == "cpu" else ("triton",)

LIF_PARAMS = adex.AdExParams(R=1.0, tau=5.0, V_th=1.0, V_reset=0.0, V_rest=0.0)


@dataclasses.dataclass(frozen=True)
class Case:
    """One fused-vs-reference comparison."""

    T: int
    shape: tuple[int, ...]  # state shape S = (batch, *in_size) or in_size
    dtype: torch.dtype = torch.float32
    reset: str = "soft"
    model: str = "adex"  # 'adex' (V, w), 'expif' (w0=None), 'lif' (no exp, w0=None), 'adlif'
    surrogate: Surrogate = dataclasses.field(default_factory=ReluGrad)
    param_dims: int = 0  # > 0: per-neuron parameters over the last param_dims state dims
    dt: float = 0.1
    x_mean: float = 15.0  # mA
    x_std: float = 5.0
    layout: str = "contiguous"  # or 'transpose', 'slice' (non-contiguous x and V0)
    seed: int = 0

    @property
    def has_w(self) -> bool:
        return self.model in ("adex", "adlif")

    @property
    def has_exp(self) -> bool:
        return self.model in ("adex", "expif")


def _uniform(gen: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo


def make_params(case: Case, gen: torch.Generator) -> adex.AdExParams:
    """Defaults of the case's model, or random per-neuron values within the valid ranges."""
    if case.model == "lif":
        base = LIF_PARAMS
    else:
        base = adex.AdExParams()
    if not case.param_dims:
        return base
    in_size = case.shape[len(case.shape) - case.param_dims :]
    if case.model == "lif":
        return adex.AdExParams(
            R=_uniform(gen, in_size, 0.7, 1.3),
            tau=_uniform(gen, in_size, 3.0, 8.0),
            V_th=_uniform(gen, in_size, 0.8, 1.2),
            V_reset=_uniform(gen, in_size, -0.2, 0.2),
            V_rest=_uniform(gen, in_size, -0.1, 0.1),
        )
    # V_th - V_T stays below ~3.5 delta_T: the stable regime (spec section 11)
    return adex.AdExParams(
        R=_uniform(gen, in_size, 0.7, 1.3),
        tau=_uniform(gen, in_size, 6.0, 20.0),
        tau_w=_uniform(gen, in_size, 20.0, 100.0),
        V_th=_uniform(gen, in_size, -56.0, -52.0),
        V_reset=_uniform(gen, in_size, -70.0, -62.0),
        V_rest=_uniform(gen, in_size, -67.0, -63.0),
        V_T=_uniform(gen, in_size, -61.0, -58.0),
        delta_T=_uniform(gen, in_size, 2.5, 4.0),
        a=_uniform(gen, in_size, 0.0, 1.5),
        b=_uniform(gen, in_size, 0.2, 2.0),
    )


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64).to(like.device)


def make_inputs(case: Case):
    """(x, V0, w0, params) for the case: x in the case dtype (maybe non-contiguous), fp32 states."""
    gen = torch.Generator().manual_seed(case.seed)
    params = make_params(case, gen)
    T, S = case.T, case.shape
    if case.layout == "transpose":  # x [T, B, ...] as a transposed view of [B, T, ...]
        x = torch.randn((S[0], T, *S[1:]), generator=gen)
        x = (x * case.x_std + case.x_mean).to(case.dtype).transpose(0, 1)
    elif case.layout == "slice":  # every other step of a longer sequence
        x = torch.randn((2 * T, *S), generator=gen)
        x = (x * case.x_std + case.x_mean).to(case.dtype)[::2]
    else:
        x = torch.randn((T, *S), generator=gen)
        x = (x * case.x_std + case.x_mean).to(case.dtype)
    theta = _as_tensor(params.V_th, x) - _as_tensor(params.V_reset, x)
    frac = _uniform(gen, S, -0.2, 1.3)  # some neurons start above threshold: reset at step 0
    V0 = (_as_tensor(params.V_reset, x) + theta * frac).float()
    if case.layout != "contiguous":  # a strided view of V0 as well
        V0 = torch.stack([V0, V0], dim=-1)[..., 1]
    w0 = _uniform(gen, S, 0.0, 2.0).float() if case.has_w else None
    if case.layout != "contiguous":
        assert not x.is_contiguous()
    return x.to(DEVICE), V0.to(DEVICE), None if w0 is None else w0.to(DEVICE), params


def cotangents(shape, dtype: torch.dtype, seed: int, n: int = 3) -> list[torch.Tensor]:
    """Random loss weights, exactly representable in ``dtype`` (spikes are in x's dtype)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(shape, generator=gen).to(dtype).float().to(DEVICE) for _ in range(n)]


def run(case: Case, backend: str, x, V0, w0, params, return_states: bool, weights, ref_dtype=None):
    """Forward + backward of one loss over every output; returns (outputs, grads).

    The reference runs on the same values widened to ``ref_dtype`` (float64 by default); the
    fused scan on the inputs as they are (their layout included)."""
    G, GV, GW = weights
    if not return_states:  # the loss on the final states
        GV, GW = GV[-1], GW[-1]

    def scan(backend):
        return functools.partial(
            adex.adex_scan, params=params, dt=case.dt, surrogate=case.surrogate,
            spk_reset=case.reset, has_exp=case.has_exp, return_states=return_states,
            backend=backend,
        )  # fmt: skip

    dtype = (torch.float64 if ref_dtype is None else ref_dtype) if backend == "reference" else None
    res = run_variant(scan, {"backend": backend}, dict(x=x, V0=V0, w0=w0),
                      dict(spikes=G, V=GV, w=GW), dtype=dtype)  # fmt: skip
    grads = {"x": res.grads["x"], "V0": res.grads["V0"], "w0": res.grads.get("w0")}
    return adex.ScanResult(**res.out), grads


def grad_x_rounding(dtype: torch.dtype) -> float:
    """Relative error of storing the fp32 grad_x in ``dtype``: half an ulp when rounding to
    nearest; a whole ulp for bf16 under the Triton interpreter, whose fp32 -> bf16 cast
    truncates (``_convert_float`` without a rounding mode; compiled Triton rounds RTNE)."""
    if dtype == torch.float32:
        return 0.0
    eps = torch.finfo(dtype).eps
    return eps if dtype == torch.bfloat16 and INTERPRETED else eps / 2


def breakpoints(surrogate: Surrogate) -> tuple[float, ...]:
    """Values of u where the forward or the surrogate derivative jumps."""
    if isinstance(surrogate, adex.surrogate.PiecewiseLeakyRelu):
        return (-surrogate.w, 0.0, surrogate.w)
    return (0.0,)


def ambiguous(surrogate: Surrogate, params, V0: torch.Tensor, V_seq: torch.Tensor):
    """``[*S]`` mask of the neurons whose oracle V comes within U_MARGIN (in u) of a jump:
    fp32 rounding may flip a spike or a surrogate branch there and the trajectories part.
    Neurons are independent, so the comparisons skip those (at most 1%)."""
    V_th = _as_tensor(params.V_th, V_seq)
    theta = V_th - _as_tensor(params.V_reset, V_seq)
    u = (torch.cat([V0.detach().double()[None], V_seq.detach().double()]) - V_th) / theta
    near = torch.stack([(u - k).abs() < U_MARGIN for k in breakpoints(surrogate)]).any(0).any(0)
    assert near.float().mean() <= 0.01, f"test data: {int(near.sum())} neurons near a jump"
    return near


def compare(case: Case, return_states: bool = True, backend: str = "triton"):
    x, V0, w0, params = make_inputs(case)
    weights = cotangents((case.T, *case.shape), case.dtype, case.seed)
    out, grads = run(case, backend, x, V0, w0, params, return_states, weights)
    if not return_states:  # the same loss on the oracle's sequences: weight the last step only
        G, GV, GW = weights
        last = torch.zeros_like(GV)
        last[-1] = 1.0
        weights = [G, GV * last, GW * last]
    ref, ref_grads = run(case, "reference", x, V0, w0, params, True, weights)
    keep = ~ambiguous(case.surrogate, params, V0, ref.V)

    def seq(t):  # [T, *S] -> the kept neurons
        return t.detach()[:, keep]

    def state(t):  # [*S] -> the kept neurons
        return t.detach()[keep]

    assert out.spikes.dtype == x.dtype, f"spikes dtype {out.spikes.dtype} != x {x.dtype}"
    assert out.V.dtype == torch.float32
    assert out.spikes.shape == x.shape
    assert int(seq(out.spikes).sum()) > 0, "test data: no spikes"
    assert_close("spikes", seq(ref.spikes), seq(out.spikes), atol=0.0)
    if return_states:
        assert out.V.shape == x.shape
        assert_close("V_seq", seq(ref.V), seq(out.V), atol=V_ATOL)
        if case.has_w:
            assert_close("w_seq", seq(ref.w), seq(out.w), atol=W_ATOL)
    else:
        assert out.V.shape == V0.shape
        assert_close("V_final", state(ref.V[-1]), state(out.V), atol=V_ATOL)
        if case.has_w:
            assert_close("w_final", state(ref.w[-1]), state(out.w), atol=W_ATOL)
    if not case.has_w:
        assert out.w is None

    assert grads["x"].dtype == x.dtype, f"grad_x dtype {grads['x'].dtype} != x {x.dtype}"
    x_rtol = grad_x_rounding(case.dtype)
    for name, ref_g in ref_grads.items():
        if ref_g is None:
            assert grads[name] is None
            continue
        pick = seq if name == "x" else state
        ref_g, got = pick(ref_g), pick(grads[name])
        scale = ref_g.abs().max().item()
        assert scale > 0, f"grad {name} of the oracle is all zero"
        rtol = x_rtol if name == "x" else 0.0
        assert_close(f"grad_{name}", ref_g, got, atol=GRAD_RTOL * scale, rtol=rtol)


def _case(id_: str, marks=(), **kw) -> pytest.param:
    return pytest.param(Case(**kw), id=id_, marks=marks)


B16, F16 = torch.bfloat16, torch.float16
LIF = dict(model="lif", x_mean=1.5, x_std=1.0)  # LIF defaults: V_th = 1 mV, inputs ~ N(1.5, 1)
DRIVE100 = dict(x_mean=100.0, x_std=30.0)  # ~10 mV per step at dt = 0.1 ms
CASES = [
    _case("T1-B3-N50-fp32-soft", T=1, shape=(3, 50)),
    _case("T63-B3-N500-fp32-soft", T=63, shape=(3, 500)),  # 2 programs, the 2nd masked
    _case("T63-B3-N500-fp32-hard", T=63, shape=(3, 500), reset="hard", seed=1),
    _case("T32-B2-4x25-fp32-soft", T=32, shape=(2, 4, 25), seed=2),
    _case("T32-N300-nobatch-fp32-hard", T=32, shape=(300,), reset="hard", seed=3),
    _case("T32-B2-N100-perneuron-soft", T=32, shape=(2, 100), param_dims=1, seed=4),
    _case("T32-B2-N100-perneuron-hard", T=32, shape=(2, 100), param_dims=1, reset="hard", seed=5),
    _case("T32-B2-4x25-perneuron2d-soft", T=32, shape=(2, 4, 25), param_dims=2, seed=6),
    _case("T32-N300-perneuron-nobatch-hard", T=32, shape=(300,), param_dims=1, reset="hard"),
    _case("T32-B2-N150-expif-soft", T=32, shape=(2, 150), model="expif", seed=7),
    _case("T32-B2-N150-expif-hard", T=32, shape=(2, 150), model="expif", reset="hard"),
    _case("T32-B2-N150-lif-soft", T=32, shape=(2, 150), seed=8, **LIF),
    _case("T32-B2-N150-lif-hard", T=32, shape=(2, 150), reset="hard", seed=9, **LIF),
    _case(
        "T32-B2-N100-lif-perneuron-soft",
        T=32,
        shape=(2, 100),
        param_dims=1,
        seed=10,
        **LIF,
    ),
    _case("T32-B2-N150-adaptive-lif-soft", T=32, shape=(2, 150), model="adlif", seed=11),
    _case("T32-B2-N300-bf16-soft", T=32, shape=(2, 300), dtype=B16, seed=12),
    _case("T32-B2-N300-bf16-hard", T=32, shape=(2, 300), dtype=B16, reset="hard", seed=13),
    _case("T32-B2-N300-fp16-soft", T=32, shape=(2, 300), dtype=F16, seed=14),
    _case("T32-B2-N300-fp16-hard", T=32, shape=(2, 300), dtype=F16, reset="hard", seed=15),
    _case("T32-B2-N100-transpose-fp32-soft", T=32, shape=(2, 100), layout="transpose", seed=16),
    _case("T32-B2-N100-slice-fp32-hard", T=32, shape=(2, 100), layout="slice", reset="hard"),
    _case(
        "T32-B2-N100-transpose-bf16-soft",
        T=32,
        shape=(2, 100),
        dtype=B16,
        layout="transpose",
        seed=17,
    ),
    _case("T32-B2-N200-dt1-soft", T=32, shape=(2, 200), dt=1.0, seed=18),
    _case("T32-B2-N200-dt1-hard", T=32, shape=(2, 200), dt=1.0, reset="hard", seed=19),
    _case("T32-B2-N200-drive100-soft", T=32, shape=(2, 200), seed=20, **DRIVE100),
    _case("T32-B2-N200-drive100-hard", T=32, shape=(2, 200), reset="hard", seed=21, **DRIVE100),
]


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_reference(case: Case, backend: str):
    """Spikes exact; V, w sequences and grad x, V0, w0 of one loss over all of them close."""
    compare(case, return_states=True, backend=backend)


FINAL_CASES = [
    _case("T63-B3-N500-fp32-soft", T=63, shape=(3, 500), seed=30),
    _case("T32-B2-N100-perneuron-hard", T=32, shape=(2, 100), param_dims=1, reset="hard"),
    _case("T32-B2-N150-expif-soft", T=32, shape=(2, 150), model="expif", seed=31),
    _case("T32-B2-N150-lif-hard", T=32, shape=(2, 150), reset="hard", seed=32, **LIF),
    _case("T32-B2-N300-bf16-soft", T=32, shape=(2, 300), dtype=B16, seed=33),
    _case(
        "T2-N200-drive100-fp16-hard",
        T=2,
        shape=(200,),
        dtype=F16,
        reset="hard",
        seed=34,
        **DRIVE100,
    ),
]


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("case", FINAL_CASES)
def test_fused_matches_reference_final_state(case: Case, backend: str):
    """return_states=False: spikes and the final V, w, and the gradients of a loss on them."""
    compare(case, return_states=False, backend=backend)


SURROGATES = [getattr(adex.surrogate, n) for n in adex.surrogate.__all__ if n != "Surrogate"]
SURROGATE_VARIANTS = [  # non-default hyper-parameters: the kernel reads them in order
    adex.surrogate.ReluGrad(alpha=0.5, width=1.5),
    adex.surrogate.GaussianGrad(sigma=0.3, alpha=0.8),
    adex.surrogate.PiecewiseLeakyRelu(c=0.05, w=0.5),
    adex.surrogate.LeakyRelu(alpha=0.2, beta=0.7),
    adex.surrogate.LogTailedRelu(alpha=0.1),
    adex.surrogate.S2NN(alpha=3.0, beta=0.5),
    adex.surrogate.MultiGaussianGrad(h=0.2, s=4.0, sigma=0.4, scale=0.7),
    adex.surrogate.SquarewaveFourierSeries(n=3, t_period=6.0),
]
SURROGATE_CASES = [
    _case(
        f"T16-B2-N64-{cls.__name__}-{reset}",
        T=16,
        shape=(2, 64),
        surrogate=cls(),
        reset=reset,
        seed=40 + i,
    )
    for i, cls in enumerate(SURROGATES)
    for reset in ("soft", "hard")
] + [
    _case(
        f"T16-B2-N64-{sg!r}-hard".replace(" ", ""),
        T=16,
        shape=(2, 64),
        surrogate=sg,
        reset="hard",
        seed=80 + i,
    )
    for i, sg in enumerate(SURROGATE_VARIANTS)
]


def test_every_surrogate_is_covered():
    """One class per kernel ``KIND`` 0..n-1: the parametrization reaches every branch."""
    kinds = sorted(cls().kind for cls in SURROGATES)
    assert len(SURROGATES) >= 18
    assert kinds == list(range(len(SURROGATES))), kinds


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("case", SURROGATE_CASES)
def test_fused_matches_reference_surrogate(case: Case, backend: str):
    compare(case, return_states=True, backend=backend)


# -- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_FUSED)
def test_deterministic_forward_and_backward(backend: str):
    """Two runs on the same input are bitwise equal, forward and backward."""
    case = Case(T=24, shape=(3, 500), reset="hard", param_dims=1, seed=50)
    x, V0, w0, params = make_inputs(case)
    weights = cotangents((case.T, *case.shape), case.dtype, case.seed)
    first, g1 = run(case, backend, x, V0, w0, params, True, weights)
    second, g2 = run(case, backend, x, V0, w0, params, True, weights)
    assert first.spikes.sum() > 0
    for name, a, b in zip(("spikes", "V", "w"), first, second, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
    for name in g1:
        assert torch.equal(g1[name], g2[name]), f"grad {name} differs between two identical runs"


# -- NaN-poisoned outputs: the launchers called directly -----------------------------------------

FWD_MODULE = importlib.import_module("adex.kernels.scan_fwd")
BWD_MODULE = importlib.import_module("adex.kernels.scan_bwd")


class _NaNTorch:
    """Stands in for ``torch`` inside a launcher module: ``empty``/``empty_like`` return
    NaN-filled tensors, so an output element the kernel forgets to write stays NaN."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        return getattr(torch, name)

    def _poison(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return t.fill_(math.nan) if t.is_floating_point() else t

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


def _no_nan(name: str, t: torch.Tensor):
    assert not torch.isnan(t).any(), f"{name}: {int(torch.isnan(t).sum())} elements never written"


LAUNCH_CASES = [  # M = prod(S) not a multiple of the block (1024 or the next power of two)
    pytest.param((3, 500), "adex", "soft", id="M1500-adex-soft"),
    pytest.param((37,), "adex", "hard", id="M37-adex-hard"),
    pytest.param((3, 500), "expif", "hard", id="M1500-expif-hard"),
    pytest.param((5, 7), "lif", "soft", id="M35-lif-soft"),
]


@pytest.mark.parametrize("store", ["seq", "noseq"])
@pytest.mark.parametrize(("shape", "model", "reset"), LAUNCH_CASES)
def test_launchers_write_every_output(monkeypatch, shape, model, reset, store):
    """adex_scan_fwd / adex_scan_bwd on NaN-poisoned outputs: nothing left unwritten, and the
    values match the float64 reference (forward and BPTT gradients)."""
    T = 8
    drive = LIF if model == "lif" else {"model": model}
    case = Case(T=T, shape=shape, reset=reset, seed=60, **drive)
    x, V0, w0, params = make_inputs(case)
    hard, has_w = reset == "hard", case.has_w
    packed = params.packed(1, x.device)
    fwd_torch, bwd_torch = _NaNTorch(), _NaNTorch()
    monkeypatch.setattr(FWD_MODULE, "torch", fwd_torch)
    monkeypatch.setattr(BWD_MODULE, "torch", bwd_torch)

    store_seq = store == "seq"
    spec = ScanSpec(has_w=has_w, has_exp=case.has_exp, spk_reset=reset, dt=case.dt)
    # the per-step sequences are written when returned (and V when a gradient is needed)
    plan = spec.with_return_states(True).plan(True, False) if store_seq else spec.plan(False, False)
    state0 = torch.stack([V0, w0]) if has_w else V0[None]
    fwd_out = adex.kernels.adex_scan_fwd(x, state0, packed, spec, plan)
    spikes, v_seq, w_seq = fwd_out.spikes, fwd_out.v_seq, fwd_out.w_seq
    v_last, w_last = fwd_out.state[0], fwd_out.state[1] if has_w else None
    assert fwd_torch.calls >= 2, "the poisoning did not reach the forward launcher"
    ref = adex.adex_scan_reference(
        x.double(), V0.double(), None if w0 is None else w0.double(), params, dt=case.dt,
        surrogate=ReluGrad(), hard_reset=hard, has_exp=case.has_exp,
    )  # fmt: skip
    assert not ambiguous(ReluGrad(), params, V0, ref[1]).any(), "test data: reseed"
    outputs = {"spikes": spikes, "V_last": v_last}
    if store_seq:
        outputs["V_seq"] = v_seq
    if has_w:
        outputs["w_last"] = w_last
        if store_seq:
            outputs["w_seq"] = w_seq
    for name, t in outputs.items():
        _no_nan(name, t)
    assert spikes.sum() > 0
    assert_close("spikes", ref[0], spikes, atol=0.0)
    assert_close("V_last", ref[1][-1], v_last, atol=V_ATOL)
    if store_seq:
        assert_close("V_seq", ref[1], v_seq, atol=V_ATOL)
    if has_w:
        assert_close("w_last", ref[2][-1], w_last, atol=W_ATOL)
        if store_seq:
            assert_close("w_seq", ref[2], w_seq, atol=W_ATOL)
    if not store_seq:
        assert v_seq is None and w_seq is None
        return

    # backward: all incoming gradients present except grad_w_seq (and those of w without w)
    G, GV, GVL = cotangents((T, *shape), torch.float32, 61)
    GW = cotangents((T, *shape), torch.float32, 62, n=1)[0]
    GVL, GWL = GVL[-1].contiguous(), GW[-1].contiguous()
    sg = ReluGrad()
    g_state = torch.stack([GVL, GWL]) if has_w else GVL[None]
    saved = SavedForBackward(state0, v_seq, None, None, None, None)
    bwd_out = adex.kernels.adex_scan_bwd(saved, packed, spec, plan, G, GV, None, g_state,
                                         x.dtype, T)  # fmt: skip
    grad_x, grad_state0 = bwd_out.grad_x, bwd_out.grad_state0
    grad_v0, grad_w0 = grad_state0[0], grad_state0[1] if has_w else None
    assert bwd_out.grad_params is None
    assert bwd_torch.calls >= 2, "the poisoning did not reach the backward launcher"
    _no_nan("grad_x", grad_x)
    _no_nan("grad_V0", grad_v0)
    if has_w:
        _no_nan("grad_w0", grad_w0)
    else:
        assert grad_state0.shape[0] == 1

    xr = x.double().requires_grad_(True)
    V0r = V0.double().requires_grad_(True)
    w0r = None if w0 is None else w0.double().requires_grad_(True)
    s, V, W = adex.adex_scan_reference(
        xr, V0r, w0r, params, dt=case.dt, surrogate=sg, hard_reset=hard, has_exp=case.has_exp
    )
    loss = (s * G.double()).sum() + (V * GV.double()).sum() + (V[-1] * GVL.double()).sum()
    if has_w:
        loss = loss + (W[-1] * GWL.double()).sum()
    loss.backward()
    for name, ref_g, got in (("x", xr.grad, grad_x), ("V0", V0r.grad, grad_v0)) + (
        (("w0", w0r.grad, grad_w0),) if has_w else ()
    ):
        scale = ref_g.abs().max().item()
        assert_close(f"grad_{name}", ref_g, got, atol=GRAD_RTOL * scale)


# -- the runaway ceiling -----------------------------------------------------------------------

NAUD_TONIC = adex.AdExParams(  # Naud et al. 2008 tonic row, spike detected at the 0 mV peak
    R=1e8,  # 1 / (10 nS), ohm
    tau=20.0,  # 200 pF / 10 nS, ms
    tau_w=30.0,
    V_th=0.0,
    V_reset=-58.0,
    V_rest=-70.0,
    V_T=-50.0,
    delta_T=2.0,
    a=2e-9,  # 2 nS in S
    b=0.0,
)

EXPIF_UNSTABLE = adex.AdExParams(V_th=-30.0)  # ExpIF's defaults: V_th = -30 mV


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


RUNAWAY_CASES = [  # model, params, x mean and std (mA), V0 range (mV), w0 upper bound (mA)
    # ExpIF defaults: BrainPy's step jumps to ~1e15 mV and a hard reset then gives inf/NaN
    pytest.param("expif", EXPIF_UNSTABLE, 60.0, 10.0, (-65.0, -35.0), 0.0, id="expif-Vth-30-60mA"),
    pytest.param("adex", EXPIF_UNSTABLE, 60.0, 10.0, (-65.0, -35.0), 2.0, id="adex-Vth-30-60mA"),
    # Naud tonic at the paper's 0 mV peak: exp-Euler overflows once V passes ~-30 mV (spec 13)
    pytest.param("adex", NAUD_TONIC, 5e-7, 5e-8, (-70.0, -45.0), 1e-8, id="naud-tonic-Vth0"),
]


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize(
    ("model", "params", "x_mean", "x_std", "v0_range", "w0_max"), RUNAWAY_CASES
)
def test_runaway_ceiling(model, params, x_mean, x_std, v0_range, w0_max, backend):
    """Hard reset, dt = 0.1 ms, where BrainPy's arithmetic overflows: everything finite, V at
    or below V_th + RUNAWAY_CEILING * (V_th - V_reset), spikes occur, fused and reference agree.

    A stiff exponential upswing amplifies rounding ~1e3-fold, so the fp32 kernel's distance
    to the float64 reference is bounded by twice the fp32 reference's own (plus a small atol)
    instead of by a fixed tolerance; the runaway steps themselves must coincide exactly."""
    T, shape = 64, (2, 100)
    gen = torch.Generator().manual_seed(70)
    x = (torch.randn((T, *shape), generator=gen) * x_std + x_mean).to(DEVICE)
    V0 = _uniform(gen, shape, *v0_range).float().to(DEVICE)
    w0 = _uniform(gen, shape, 0.0, w0_max).float().to(DEVICE) if model == "adex" else None
    case = Case(T=T, shape=shape, reset="hard", model=model, dt=0.1, seed=71)
    weights = cotangents((T, *shape), torch.float32, 71)
    out, grads = run(case, backend, x, V0, w0, params, True, weights)
    ref, ref_grads = run(case, "reference", x, V0, w0, params, True, weights)
    ref32, ref32_grads = run(case, "reference", x, V0, w0, params, True, weights, torch.float32)

    for name, t in (("spikes", out.spikes), ("V", out.V), ("w", out.w), *grads.items()):
        if t is not None:
            n_bad = int((~torch.isfinite(t)).sum())
            assert n_bad == 0, f"{name}: {n_bad} of {t.numel()} elements not finite"
    cap = params.V_th + adex.RUNAWAY_CEILING * (params.V_th - params.V_reset)
    assert out.V.max().item() <= cap, f"V reached {out.V.max().item():g} > ceiling {cap:g}"
    runaway, ref_runaway = out.V == params.V_th, ref.V == params.V_th  # stored peak V_th
    assert runaway.any(), "test data: no step reached the runaway ceiling"
    assert out.spikes.sum() > 0
    assert_close("spikes", ref.spikes, out.spikes, atol=0.0)
    assert torch.equal(runaway, ref_runaway), (
        f"runaway steps differ: {int((runaway != ref_runaway).sum())} positions"
    )

    # the yardstick: the fp32 reference follows the float64 one (same spikes), and the kernel
    # stays within twice its error
    assert torch.equal(ref32.spikes.double(), ref.spikes.double()), "fp32 reference diverged"
    pairs = [("V_seq", ref.V, ref32.V, out.V, 1e-4)]
    if w0 is not None:
        pairs.append(("w_seq", ref.w, ref32.w, out.w, 1e-4 * max(w0_max, 1e-12)))
    for name, ref_g in ref_grads.items():
        if ref_g is not None:
            assert torch.isfinite(ref_g).all(), f"reference grad {name} not finite"
            atol = 1e-4 * ref_g.abs().max().item()
            pairs.append((f"grad_{name}", ref_g, ref32_grads[name], grads[name], atol))
    for name, exact, fp32, got, atol in pairs:
        bound = 2.0 * _max_err(fp32, exact) + atol
        err = _max_err(got, exact)
        assert err <= bound, (
            f"{name}: max error {err:.3g} vs float64 > {bound:.3g} (twice the fp32 "
            f"reference's {_max_err(fp32, exact):.3g} + atol {atol:.3g})"
        )
