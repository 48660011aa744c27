"""The ``adex::scan_fwd`` / ``adex::scan_bwd`` custom ops: ``torch.library.opcheck`` and
``torch.compile(fullgraph=True)`` (inductor) of a model and of ``adex_scan`` itself.

The kernels run through the Triton interpreter on CPU (``tests/conftest.py``), so shapes are
tiny. Inductor compiles the surrounding graph (the Linear layers) with the host C++ compiler;
the ops stay opaque calls.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from torch import nn

import adex
from adex.spec import ScanSpec
from adex.surrogate import Sigmoid

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(T: int, shape: tuple[int, ...], seed: int, requires_grad: bool):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn((T, *shape), generator=gen) * 5 + 15).to(DEVICE)
    V0 = (torch.rand(shape, generator=gen) * 14 - 69).to(DEVICE)
    w0 = (torch.rand(shape, generator=gen) * 2).to(DEVICE)
    for t in (x, V0, w0):
        t.requires_grad_(requires_grad)
    return x, V0, w0


def _fwd_args(store_v: bool, has_w: bool, hard: bool, *, requires_grad: bool, seed: int = 0):
    """scan_fwd's arguments; ``store_v``: the spec returns the per-step states."""
    T, shape = 6, (2, 7)
    x, V0, w0 = _inputs(T, shape, seed, requires_grad)
    params = adex.AdExParams(V_th=torch.linspace(-56.0, -53.0, 7, dtype=torch.float64))
    packed = params.packed(7, x.device)
    spec = ScanSpec(has_w=has_w, spk_reset="hard" if hard else "soft",
                    surrogate=Sigmoid(alpha=3.0), dt=0.1, return_states=store_v)  # fmt: skip
    state0 = torch.stack([V0, w0]) if has_w else V0[None]
    return (x, state0, packed, spec.key, requires_grad, False, 0, None)


FWD_SETS = [
    pytest.param(True, True, False, True, id="store_v-w-soft-grad"),
    pytest.param(True, True, True, True, id="store_v-w-hard-grad"),
    pytest.param(True, True, True, False, id="store_v-w-hard-nograd"),
    pytest.param(False, True, False, False, id="nostore-w-soft-nograd"),
    pytest.param(True, False, False, True, id="store_v-now-soft-grad"),
    pytest.param(False, False, True, False, id="nostore-now-hard-nograd"),
]


@pytest.mark.parametrize(("store_v", "has_w", "hard", "requires_grad"), FWD_SETS)
def test_opcheck_scan_fwd(store_v, has_w, hard, requires_grad):
    args = _fwd_args(store_v, has_w, hard, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.adex.scan_fwd.default, args)


BWD_SETS = [  # which incoming gradients are present: spikes, V_seq, w_seq, final state
    pytest.param((1, 1, 1, 1), True, False, id="all-w-soft"),
    pytest.param((1, 0, 0, 1), True, True, id="spikes+Vlast-w-hard"),
    pytest.param((0, 1, 1, 0), True, False, id="seq-only-w-soft"),
    pytest.param((1, 1, 0, 0), False, True, id="spikes+Vseq-now-hard"),
]


@pytest.mark.parametrize(("present", "has_w", "hard"), BWD_SETS)
def test_opcheck_scan_bwd(present, has_w, hard):
    T, shape = 6, (2, 7)
    x, V0, w0 = _inputs(T, shape, 1, requires_grad=False)
    packed = adex.AdExParams().packed(1, x.device)
    spec = ScanSpec(has_w=has_w, spk_reset="hard" if hard else "soft", dt=0.1,
                    return_states=True)  # fmt: skip
    plan = spec.plan(True, False)
    state0 = torch.stack([V0, w0]) if has_w else V0[None]
    out = adex.kernels.adex_scan_fwd(x, state0, packed, spec, plan)
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(t.shape, generator=gen).to(DEVICE) for t in (x, x, x, state0)]
    grads = [g if p else None for g, p in zip(grads, present, strict=True)]
    if not has_w:
        grads[2] = None
    args = (
        state0, packed, out.v_seq, None, None, None, None, *grads, spec.key, True, False,
        torch.float32, T, 0, True, True,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.adex.scan_bwd.default, args)


# -- torch.compile -----------------------------------------------------------------------------


class SpikingNet(nn.Module):
    """Linear -> AdExIF (fused kernels) -> Linear over a [T, batch, features] sequence."""

    def __init__(self, n_in: int = 6, n_hidden: int = 40, n_out: int = 3):
        super().__init__()
        self.encoder = nn.Linear(n_in, n_hidden)
        self.neurons = adex.AdExIF(n_hidden, spk_reset="hard", backend="triton")
        self.readout = nn.Linear(n_hidden, n_out)

    def forward(self, x: torch.Tensor):
        current = 30.0 + 20.0 * self.encoder(x)  # mA: enough drive to spike
        spikes = self.neurons(current)
        return self.readout(spikes), spikes, self.neurons.V, self.neurons.w


def _run_model(model: SpikingNet, x: torch.Tensor, fn, batch: int):
    model.zero_grad()
    model.neurons.init_state(batch)
    gen = torch.Generator().manual_seed(4)  # start near threshold: spikes within T steps
    model.neurons.V = (torch.rand(model.neurons.V.shape, generator=gen) * 10 - 64).to(DEVICE)
    model.neurons.w = (torch.rand(model.neurons.w.shape, generator=gen) * 2).to(DEVICE)
    x = x.detach().clone().requires_grad_(True)
    out, spikes, V, w = fn(x)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(t.shape, generator=gen).to(DEVICE) for t in (out, V, w)]
    loss = (out * weights[0]).sum() + (V * weights[1]).sum() + (w * weights[2]).sum()
    loss.backward()
    grads = {"x": x.grad, **{n: p.grad.clone() for n, p in model.named_parameters()}}
    return (out.detach(), spikes.detach(), V.detach(), w.detach()), grads


def _compare(eager, compiled):
    (out_e, spikes_e, V_e, w_e), grads_e = eager
    (out_c, spikes_c, V_c, w_c), grads_c = compiled
    assert spikes_e.sum() > 0, "test data: no spikes"
    assert_close("spikes", spikes_e, spikes_c, atol=0.0)
    assert_close("readout", out_e, out_c, atol=1e-5)
    assert_close("V_final", V_e, V_c, atol=1e-4)
    assert_close("w_final", w_e, w_c, atol=1e-5)
    assert grads_e.keys() == grads_c.keys()
    for name, ref in grads_e.items():
        scale = ref.abs().max().item()
        assert scale > 0, f"grad {name} is all zero"
        assert_close(f"grad_{name}", ref, grads_c[name], atol=1e-5 * scale)


def test_compile_fullgraph_model_matches_eager():
    """Inductor, fullgraph: Linear -> AdExIF(backend='triton') -> Linear, forward and grads."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    T, batch = 12, 2
    model = SpikingNet().to(DEVICE)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((T, batch, 6), generator=gen).to(DEVICE)
    eager = _run_model(model, x, model, batch)
    compiled_model = torch.compile(model, fullgraph=True)
    compiled = _run_model(model, x, compiled_model, batch)
    _compare(eager, compiled)
    again = _run_model(model, x, compiled_model, batch)  # a second call reuses the graph
    _compare(eager, again)


def _scan_fn(x, V0, w0):
    params = adex.AdExParams(tau=12.0, b=0.5)
    out = adex.adex_scan(
        x, V0, w0, params, dt=0.1, surrogate=Sigmoid(), spk_reset="soft",
        return_states=True, backend="triton",
    )  # fmt: skip
    return out.spikes, out.V, out.w


def _run_scan(fn, x, V0, w0):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, V0, w0)]
    spikes, V, w = fn(*leaves)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=gen).to(DEVICE) for t in (spikes, V, w)]
    loss = sum((t * g).sum() for t, g in zip((spikes, V, w), weights, strict=True))
    loss.backward()
    return (spikes.detach(), V.detach(), w.detach()), [t.grad for t in leaves]


def test_compile_fullgraph_adex_scan_matches_eager():
    """adex_scan called directly inside a fullgraph-compiled function (inductor)."""
    torch._dynamo.reset()
    x, V0, w0 = _inputs(16, (3, 30), 9, requires_grad=False)
    (s_e, V_e, w_e), g_e = _run_scan(_scan_fn, x, V0, w0)
    compiled_fn = torch.compile(_scan_fn, fullgraph=True)
    (s_c, V_c, w_c), g_c = _run_scan(compiled_fn, x, V0, w0)
    assert s_e.sum() > 0
    # the same kernels on the same inputs: bitwise equal
    assert torch.equal(s_e, s_c) and torch.equal(V_e, V_c) and torch.equal(w_e, w_c)
    for name, a, b in zip(("x", "V0", "w0"), g_e, g_c, strict=True):
        assert a is not None and b is not None, f"grad {name} missing"
        assert torch.equal(a, b), f"grad {name}: compiled differs from eager"


# -- lengths and the synaptic current through the ops -----------------------------------------

LENGTHS = (6, 3)
"""Sample lengths of the ``(2, 7)`` batch of T = 6 steps: one full, one stopping early."""


def _syn_len_fwd_args(has_syn: bool, requires_grad: bool, seed: int = 10):
    """scan_fwd's arguments with a synaptic current (state row I, packed tau_syn) and
    lengths, for a spec returning the per-step states."""
    T, shape = 6, (2, 7)
    x, V0, w0 = _inputs(T, shape, seed, requires_grad)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = [V0, w0]
    if has_syn:
        rows.append(
            (torch.rand(shape, generator=gen) * 10).to(DEVICE).requires_grad_(requires_grad)
        )
    tau_syn = torch.linspace(1.0, 3.0, 7, dtype=torch.float64) if has_syn else None
    packed = adex.AdExParams(tau_syn=tau_syn).packed(7, x.device)
    spec = ScanSpec(has_w=True, has_syn=has_syn, dt=0.1, return_states=True)
    lengths = torch.tensor(LENGTHS, dtype=torch.int32, device=DEVICE)
    return (x, torch.stack(rows), packed, spec.key, requires_grad, False, 0, lengths)


@pytest.mark.parametrize("has_syn", [False, True], ids=["nosyn", "syn"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_opcheck_scan_fwd_lengths_synapse(has_syn, requires_grad):
    args = _syn_len_fwd_args(has_syn, requires_grad)
    torch.library.opcheck(torch.ops.adex.scan_fwd.default, args)


def test_opcheck_scan_bwd_lengths_synapse():
    x, state0, packed, key, _, _, _, lengths = _syn_len_fwd_args(True, False)
    spec = ScanSpec.from_key(key)
    out = adex.kernels.adex_scan_fwd(x, state0, packed, spec, spec.plan(True, False),
                                     lengths=lengths)  # fmt: skip
    gen = torch.Generator().manual_seed(12)
    g_spikes, g_v, g_w, g_i = (torch.randn(x.shape, generator=gen).to(DEVICE) for _ in range(4))
    g_state = torch.randn(state0.shape, generator=gen).to(DEVICE)
    args = (
        state0, packed, out.v_seq, out.w_seq, None, None, None, g_spikes, g_v, g_w, g_state,
        key, True, False, torch.float32, x.shape[0], 0, True, True, out.i_seq, g_i, lengths,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.adex.scan_bwd.default, args)


class SeqNet(nn.Module):
    """Linear -> AdLIF(tau_syn, learnable tau_syn) -> Linear -> LI(tau_syn), fused kernels,
    with ``lengths``; the LI's V at each sample's last step is the output."""

    def __init__(self, n_in: int = 4, n_hidden: int = 9, n_out: int = 3):
        super().__init__()
        self.encoder = nn.Linear(n_in, n_hidden)
        self.hidden = adex.AdLIF(
            n_hidden, tau_syn=torch.linspace(0.5, 2.0, n_hidden), dt=0.5,
            learnable=("tau", "tau_syn"), backend="triton",
        )  # fmt: skip
        self.fc = nn.Linear(n_hidden, n_out)
        self.readout = adex.LI(n_out, tau_syn=1.0, dt=0.5, backend="triton")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        spikes = self.hidden(25.0 + 15.0 * self.encoder(x), lengths=lengths)
        V = self.readout(self.fc(spikes), lengths=lengths)
        return V[-1], spikes, self.hidden.V, self.hidden.I


def _run_seq(model: SeqNet, fn, x, lengths):
    model.zero_grad()
    batch = x.shape[1]
    model.hidden.init_state(batch)
    model.readout.init_state(batch)
    gen = torch.Generator().manual_seed(14)
    model.hidden.V = (torch.rand(model.hidden.V.shape, generator=gen) * 10 - 62).to(DEVICE)
    x = x.detach().clone().requires_grad_(True)
    outs = fn(x, lengths)
    gen = torch.Generator().manual_seed(15)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(DEVICE)).sum() for t in outs)
    loss.backward()
    grads = {"x": x.grad, **{n: p.grad.clone() for n, p in model.named_parameters()}}
    return [t.detach() for t in outs], grads


def test_compile_fullgraph_lengths_synapse_matches_eager():
    """Inductor, fullgraph: AdLIF with a learnable synapse and an LI readout, lengths= through
    the custom ops, forward and every gradient equal to eager's."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    T, lengths = 8, torch.tensor([8, 3, 5], device=DEVICE)
    model = SeqNet().to(DEVICE)
    x = torch.randn((T, 3, 4), generator=torch.Generator().manual_seed(13)).to(DEVICE)
    eager_out, eager_grads = _run_seq(model, model, x, lengths)
    assert eager_out[1].sum() > 0, "test data: no spikes"
    assert torch.all(eager_out[1][3:, 1] == 0)  # past its length a sample writes no spikes
    compiled = torch.compile(model, fullgraph=True)
    comp_out, comp_grads = _run_seq(model, compiled, x, lengths)
    for name, a, b in zip(("V_readout", "spikes", "V", "I"), eager_out, comp_out, strict=True):
        assert_close(name, a, b, atol=1e-5)
    assert eager_grads.keys() == comp_grads.keys()
    for name, ref in eager_grads.items():
        scale = ref.abs().max().item()
        assert scale > 0, f"grad {name} is all zero"
        assert_close(f"grad_{name}", ref, comp_grads[name], atol=1e-5 * scale)
