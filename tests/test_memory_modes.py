"""The memory options of the layer: ``spike_dtype`` (uint8/bool/float spikes) and
``checkpoint_every`` (low-memory BPTT: checkpoints every K steps, recomputed inside the
backward kernel).

Checkpoint mode must give the default mode's spikes and gradients for every model, reset,
dtype, K (including K = 1 and K > T) and with learnable parameters, on both backends; the
bytes it saves for backward are measured with ``torch.autograd.graph.saved_tensors_hooks``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from helpers import ModelCase, Tolerance, compare_backends, family_cases

import adex
from adex.spec import ScanSpec
from adex.surrogate import Sigmoid

CASES = family_cases(tau_ref=0.6)


def _layer(case: ModelCase, backend: str, learnable: tuple[str, ...] = (), **kwargs):
    layer = case.cls(
        (2, 9), **case.kwargs, dt=0.2, backend=backend, spk_fun=Sigmoid(alpha=2.0),
        learnable=learnable, **kwargs,
    )  # fmt: skip
    return layer.to(DEVICE)


def _inputs(case: ModelCase, T: int, batch: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((T, batch, 2, 9), generator=gen) * case.x_std + case.x_mean
    lo, hi = case.V0_range
    V0 = torch.rand((batch, 2, 9), generator=gen) * (hi - lo) + lo
    w0 = torch.rand((batch, 2, 9), generator=gen) * 2.0
    return x.to(DEVICE, dtype), V0.to(DEVICE), w0.to(DEVICE)


def _compare_train_steps(case, backend, x, V0, w0, variants, tol, learnable=(), chunks=1,
                         **kwargs):  # fmt: skip
    """Run the layer under each of ``variants`` (extra layer keywords) and compare with
    ``tol``: spikes, final V and the gradients (x, V0, w0, the learnable parameters) of a
    loss on the spikes and the final state, over ``chunks`` consecutive calls (truncated
    BPTT across calls, state carried)."""
    gen = torch.Generator().manual_seed(11)
    weights = torch.randn(x.shape, generator=gen).to(DEVICE)
    tenth = torch.full(V0.shape, 0.1, device=DEVICE)  # 0.1 * (V.sum() + w.sum())
    return compare_backends(
        lambda **variant: _layer(case, backend, learnable, **kwargs, **variant),
        dict(x=x, V0=V0, w0=w0), dict(spikes=weights, V=tenth, w=tenth), tol=tol,
        variants=variants, return_states=False, chunks=chunks,
    )  # fmt: skip


def _assert_checkpoint_matches_default(case, backend, x, V0, w0, every, rtol=1e-6, **kwargs):
    """checkpoint_every=every gives the default mode's spikes and final V exactly and its
    gradients to ``rtol`` of their largest element."""
    tol = {"spikes": Tolerance(0.0), "V": Tolerance(0.0), "grads": Tolerance(rtol, scaled=True)}
    variants = {"default": {}, "checkpointed": {"checkpoint_every": every}}
    runs = _compare_train_steps(case, backend, x, V0, w0, variants, tol, **kwargs)
    assert runs["default"].out["spikes"].sum() > 0, "test data: no spikes"


@pytest.mark.parametrize("model", list(CASES))
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("every", [1, 4, 13, 40])
def test_checkpoint_matches_default_fused(model, reset, every):
    """K = 1, a K that does not divide T = 13 (last segment short), K = T and K > T."""
    case = CASES[model]
    x, V0, w0 = _inputs(case, 13, 2, torch.float32, seed=every)
    _assert_checkpoint_matches_default(case, "triton", x, V0, w0, every, spk_reset=reset)


@pytest.mark.parametrize("model", ["AdExIF", "AdExIFRef", "LIF"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_checkpoint_matches_default_half(model, dtype):
    """bf16/fp16 input: x is re-read in its own dtype and widened as the forward does."""
    case = CASES[model]
    x, V0, w0 = _inputs(case, 10, 2, dtype, seed=3)
    # grad x is rounded to x's dtype
    _assert_checkpoint_matches_default(case, "triton", x, V0, w0, 3, rtol=1e-2)


@pytest.mark.parametrize("model", ["AdExIF", "AdExIFRef", "ExpIF"])
def test_checkpoint_learnable_and_tbptt(model):
    """Every parameter learnable (the tau_w term reads the recomputed w), two chunks."""
    case = CASES[model]
    learnable = tuple(k for k in case.cls.param_names if k != "R" or case.has_w)
    x, V0, w0 = _inputs(case, 12, 3, torch.float32, seed=5)
    _assert_checkpoint_matches_default(case, "triton", x, V0, w0, 5, rtol=1e-5,
                                       learnable=learnable, chunks=2)  # fmt: skip


@pytest.mark.parametrize("model", ["AdExIF", "AdExIFRef"])
def test_checkpoint_detach_reset(model):
    case = CASES[model]
    x, V0, w0 = _inputs(case, 11, 2, torch.float32, seed=6)
    _assert_checkpoint_matches_default(case, "triton", x, V0, w0, 4, detach_reset=True)


@pytest.mark.parametrize("model", ["AdExIF", "ExpIFRef"])
def test_checkpoint_reference_backend(model):
    """The reference backend checkpoints with torch.utils.checkpoint: same numbers."""
    case = CASES[model]
    x, V0, w0 = _inputs(case, 9, 2, torch.float32, seed=7)
    _assert_checkpoint_matches_default(case, "reference", x, V0, w0, 4, learnable=("tau",))


def test_checkpoint_reference_gradcheck():
    """float64 finite differences through the checkpointed reference (Ref model, a
    parameter tensor). As in tests/test_gradcheck.py the surrogate's support (|u| < 1e-6) is
    far inside the trajectory's distance to threshold, so the spikes are locally constant."""
    gen = torch.Generator().manual_seed(8)
    T, n = 9, 3
    x = (torch.randn((T, n), generator=gen, dtype=torch.float64) * 5 + 40).requires_grad_()
    V0 = (torch.rand(n, generator=gen, dtype=torch.float64) * 6 - 60).requires_grad_()
    w0 = (torch.rand(n, generator=gen, dtype=torch.float64)).requires_grad_()
    tau = torch.tensor([9.0, 11.0, 13.0], dtype=torch.float64, requires_grad=True)
    tiny = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)

    def run(x, V0, w0, tau, every=3):
        return adex.adex_scan(
            x, V0, w0, adex.AdExParams(tau=tau), dt=0.2, surrogate=tiny, backend="reference",
            tau_ref=0.3, last_spike_time=torch.full_like(V0, -1e7), checkpoint_every=every,
        )  # fmt: skip

    with torch.no_grad():
        states = adex.adex_scan(
            x, V0, w0, adex.AdExParams(tau=tau), dt=0.2, surrogate=tiny, backend="reference",
            tau_ref=0.3, last_spike_time=torch.full_like(V0, -1e7), return_states=True,
        )  # fmt: skip
    assert states.spikes.sum() > 0
    theta = -55.0 - -68.0
    assert ((states.V - -55.0) / theta).abs().min() > 1e-4, "trajectory too close to V_th"

    def fn(x, V0, w0, tau):
        out = run(x, V0, w0, tau)
        return out.V, out.w

    assert torch.autograd.gradcheck(fn, (x, V0, w0, tau), atol=1e-6, rtol=1e-4)


def _saved_bytes(fn) -> tuple[int, int, int]:
    """(bytes newly held for backward, bytes aliasing x, number of neuron-steps) of ``fn``,
    summed over the tensors autograd packs; each storage counted once."""
    packed: list[torch.Tensor] = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x, out = fn()
    seen, new, alias = set(), 0, 0
    x_ptr = x.untyped_storage().data_ptr()
    for t in packed:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() == 0:
            continue
        seen.add(storage.data_ptr())
        if storage.data_ptr() == x_ptr:
            alias += storage.nbytes()
        else:
            new += storage.nbytes()
    del out
    return new, alias, x.numel()


@pytest.mark.parametrize("model", ["AdExIF", "AdExIFRef", "LIF"])
def test_saved_bytes_per_neuron_step(model):
    """Default: the fp32 V (4 B per neuron-step; + 1 bit of refractory flag for Ref models);
    checkpoint_every=32: <= 0.5 B per neuron-step plus a reference to x (no copy)."""
    case = CASES[model]
    T, batch = 128, 2
    x = _inputs(case, T, batch, torch.float32, seed=9)[0]
    x.requires_grad_(True)
    per_neuron = 8 + 40  # V0 (and w0) fp32, and the [10, N] packed parameters, once each

    def run(**kwargs):
        def fn():
            layer = _layer(case, "triton", **kwargs)
            layer.init_state(batch)
            return x, layer(x)

        new, alias, steps = _saved_bytes(fn)
        return new / steps, alias / steps

    mask = 1 / 8 if case.has_ref else 0
    new, alias = run()
    assert 4 + mask <= new <= 4 + mask + per_neuron / T
    assert alias == 0
    new, alias = run(checkpoint_every=32)
    rows = 1 + case.has_w + case.has_ref
    assert new <= 4 * rows / 32 + per_neuron / T
    assert new <= 0.5
    assert alias == 4  # x itself (fp32), kept by reference


@pytest.mark.parametrize("model", list(CASES))
@pytest.mark.parametrize("spike_dtype", [torch.uint8, torch.bool, torch.float16])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_spike_dtype(model, spike_dtype, backend):
    """The same spikes in the requested dtype; the states are unchanged."""
    case = CASES[model]
    x, V0, _ = _inputs(case, 9, 2, torch.float32, seed=10)
    runs = []
    for dtype in (None, spike_dtype):
        layer = _layer(case, backend, spike_dtype=dtype)
        layer.init_state(2)
        layer.V = V0
        with torch.no_grad():
            spikes = layer(x)
            last = layer.update(x[0])
        runs.append((spikes, last, layer.V))
    (s_ref, l_ref, V_ref), (s, last, V) = runs
    assert s.dtype == spike_dtype and last.dtype == spike_dtype
    assert s_ref.sum() > 0
    assert torch.equal(s.to(torch.float32), s_ref) and torch.equal(last.to(torch.float32), l_ref)
    assert torch.equal(V, V_ref)


def test_float_spike_dtype_trains():
    """A floating spike dtype other than x's keeps the surrogate gradient."""
    case = CASES["AdExIF"]
    x, V0, w0 = _inputs(case, 8, 2, torch.float32, seed=12)
    _compare_train_steps(
        case, "triton", x, V0, w0, {"default": {}, "bf16": {"spike_dtype": torch.bfloat16}},
        {"spikes": Tolerance(0.0), "grad_x": Tolerance(1e-2, scaled=True)},
    )  # fmt: skip


def test_integer_spikes_refuse_gradients():
    layer = _layer(CASES["AdExIF"], "triton", spike_dtype=torch.uint8)
    layer.init_state(1)
    x = torch.full((3, 1, 2, 9), 30.0, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="carries no gradient"):
        layer(x)
    with pytest.raises(ValueError, match="carries no gradient"):
        adex.adex_scan(x, torch.full((1, 2, 9), -60.0, device=DEVICE), None,
                       spike_dtype=torch.bool, has_exp=False)  # fmt: skip


@pytest.mark.parametrize("bad", [torch.int32, torch.complex64, "uint8", 8])
def test_bad_spike_dtype(bad):
    with pytest.raises(TypeError, match="spike_dtype"):
        adex.AdExIF(3, spike_dtype=bad)
    with pytest.raises(TypeError, match="spike_dtype"):
        adex.adex_scan(torch.zeros(2, 3), torch.zeros(3), torch.zeros(3), spike_dtype=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_bad_checkpoint_every(bad):
    with pytest.raises(ValueError, match="checkpoint_every"):
        adex.LIF(3, checkpoint_every=bad)
    with pytest.raises(ValueError, match="checkpoint_every"):
        adex.adex_scan(torch.zeros(2, 3), torch.zeros(3), None, checkpoint_every=bad)


def test_checkpoint_with_return_states_is_refused():
    layer = _layer(CASES["AdExIF"], "triton", checkpoint_every=4)
    layer.init_state(1)
    x = torch.full((5, 1, 2, 9), 30.0, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="return_states"):
        layer(x, return_states=True)


def test_checkpoint_without_grad_saves_nothing():
    """No gradient needed: neither V nor checkpoints are written, output unchanged."""
    case = CASES["AdExIF"]
    x, V0, _ = _inputs(case, 9, 2, torch.float32, seed=13)
    outs = []
    for every in (None, 4):
        layer = _layer(case, "triton", checkpoint_every=every)
        layer.init_state(2)
        layer.V = V0
        with torch.no_grad():
            outs.append((layer(x), layer.V))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def _ckpt_fwd_args(has_w: bool, has_ref: bool, spike_dtype, requires_grad: bool):
    gen = torch.Generator().manual_seed(14)
    T, shape = 7, (2, 5)
    x = (torch.randn((T, *shape), generator=gen) * 5 + 40).to(DEVICE)
    V0 = (torch.rand(shape, generator=gen) * 6 - 60).to(DEVICE)
    w0 = torch.rand(shape, generator=gen).to(DEVICE)
    for t in (x, V0, w0):
        t.requires_grad_(requires_grad)
    packed = adex.AdExParams().packed(1, x.device)
    t_last = torch.full(shape, -1e7, device=DEVICE)
    spec = ScanSpec(has_w=has_w, tau_ref=0.5 if has_ref else None, surrogate=Sigmoid(),
                    dt=0.2, spike_dtype=spike_dtype, checkpoint_every=3)  # fmt: skip
    rows = [V0] + ([w0] if has_w else []) + ([t_last] if has_ref else [])
    return (x, torch.stack(rows), packed, spec.key, requires_grad, False, 3, None)


@pytest.mark.parametrize(
    ("has_w", "has_ref", "spike_dtype", "requires_grad"),
    [
        (True, False, None, True),
        (True, True, None, True),
        (False, True, None, True),
        (True, False, torch.uint8, False),
        (False, False, torch.bool, False),
    ],
)
def test_opcheck_memory_options(has_w, has_ref, spike_dtype, requires_grad):
    """The custom op's fake implementation and autograd agree with the kernels."""
    args = _ckpt_fwd_args(has_w, has_ref, spike_dtype, requires_grad)
    torch.library.opcheck(torch.ops.adex.scan_fwd.default, args)


def test_compile_checkpoint_mode_matches_eager():
    """fullgraph torch.compile of a checkpointed layer: bitwise the eager result."""
    torch._dynamo.reset()
    case = CASES["AdExIF"]
    x, V0, w0 = _inputs(case, 10, 2, torch.float32, seed=15)

    def run(compiled: bool):
        layer = _layer(case, "triton", learnable=("b",), checkpoint_every=4)
        layer.init_state(2)
        layer.V, layer.w = V0, w0
        step = torch.compile(layer, fullgraph=True) if compiled else layer
        xi = x.detach().clone().requires_grad_(True)
        spikes = step(xi)
        (spikes.sum() + layer.V.sum()).backward()
        return spikes.detach(), xi.grad, layer.b.grad

    eager, compiled = run(False), run(True)
    assert eager[0].sum() > 0
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_integer_spikes_refuse_learnable_gradients(backend):
    """Learnable parameters need a gradient too: integer spikes are refused for them, and
    work without one (torch.no_grad)."""
    layer = adex.AdExIF(4, backend=backend, spike_dtype=torch.uint8, learnable=("tau",))
    layer.init_state(2)
    x = torch.full((3, 2, 4), 30.0, device=DEVICE)
    layer.to(DEVICE)
    layer.init_state(2)
    with pytest.raises(ValueError, match="carries no gradient"):
        layer(x)
    with torch.no_grad():
        assert layer(x).dtype == torch.uint8


@pytest.mark.skipif(not adex.HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize(("learnable", "w_saved"), [(("tau", "b"), False), (("tau_w", "a"), True)])
def test_w_sequence_saved_only_for_tau_w(learnable, w_saved):
    """Only the tau_w gradient reads the stored w: other learnable parameters save no w
    sequence (4 B per neuron-step less written and read)."""
    T, B, n = 6, 2, 5
    layer = adex.AdExIF(n, backend="triton", learnable=learnable).to(DEVICE)
    layer.init_state(B)
    x = torch.full((T, B, n), 30.0, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        spikes = layer(x)
    per_step = [t for t in saved if t.shape == (T, B, n) and t.dtype == torch.float32]
    assert len(per_step) == (2 if w_saved else 1)  # V (and w)
    spikes.sum().backward()
    for name in learnable:
        assert getattr(layer, name).grad is not None
