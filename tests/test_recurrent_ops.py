"""``adex.Recurrent`` beyond the plain call: the ``adex::recurrent_fwd`` /
``adex::recurrent_bwd`` custom ops (``torch.library.opcheck``, a fullgraph compile that
traces one op pair for the whole scan), ``return_states`` (the per-step V and w, with
gradients, against the literal step loop) and the checkpoint mode (``checkpoint_every``:
the same values and gradients as the plain call, on both backends).

The kernels run through the Triton interpreter on CPU (``tests/conftest.py``): tiny shapes.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from test_recurrent import (
    GRAD_TOL,
    assert_spiky,
    make_layer,
    make_x,
    random_v0,
    reference_twin,
)
from torch import nn

import adex
from adex.kernels.recurrent_fwd import recurrent_scan_fwd
from adex.spec import ScanSpec
from adex.surrogate import Sigmoid

# -- opcheck ---------------------------------------------------------------------------------


def _op_inputs(n: int, batch: int, T: int, has_w: bool, tau_ref: float | None, seed: int = 0,
               syn: bool = False):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, batch, n, generator=g) * 10 + 40
    s0 = (torch.rand(batch, n, generator=g) > 0.5).float()
    weight = torch.randn(n, n, generator=g) * 8
    rows = [torch.rand(batch, n, generator=g) * 14 - 62]
    if has_w:
        rows.append(torch.rand(batch, n, generator=g) * 2)
    if tau_ref is not None:
        rows.append(torch.full((batch, n), -1e7))
    if syn:
        rows.append(torch.rand(batch, n, generator=g) * 20)
    params = adex.AdExParams(V_th=torch.linspace(-56.0, -53.0, n, dtype=torch.float64),
                             tau_syn=0.8 if syn else None)  # fmt: skip
    packed = params.packed(n, x.device)
    return x, s0, weight, torch.stack(rows), packed


OP_SETS = [  # (has_w, hard reset, tau_ref, needs_grad, param_grad, return_states, synapse)
    pytest.param(True, False, None, True, False, False, False, id="w-soft-grad"),
    pytest.param(True, True, None, True, True, True, False, id="w-hard-params-states"),
    pytest.param(False, False, 0.4, True, False, True, False, id="ref-now-states"),
    pytest.param(True, False, None, False, False, False, False, id="w-nograd"),
    pytest.param(True, False, 0.4, True, True, True, True, id="syn-ref-params-states"),
    pytest.param(False, True, None, True, True, False, True, id="syn-now-params"),
]
OP_ARGS = ("has_w", "hard", "tau_ref", "grad", "param_grad", "states", "syn")


def _spec(has_w, hard, tau_ref, return_states, syn=False):
    return ScanSpec(has_w=has_w, spk_reset="hard" if hard else "soft", tau_ref=tau_ref,
                    surrogate=Sigmoid(alpha=3.0), dt=0.1, return_states=return_states,
                    has_syn=syn)  # fmt: skip


@pytest.mark.parametrize(OP_ARGS, OP_SETS)
def test_opcheck_recurrent_fwd(has_w, hard, tau_ref, grad, param_grad, states, syn):
    x, s0, weight, state0, packed = _op_inputs(7, 3, 5, has_w, tau_ref, syn=syn)
    spec = _spec(has_w, hard, tau_ref, states, syn)
    for t in (x, s0, weight, state0) + ((packed,) if param_grad else ()):
        t.requires_grad_(grad)
    args = (x, s0, weight, state0, packed, spec.key, grad, param_grad, 2)
    torch.library.opcheck(torch.ops.adex.recurrent_fwd.default, args)


@pytest.mark.parametrize(OP_ARGS, [p for p in OP_SETS if p.values[3]])
def test_opcheck_recurrent_bwd(has_w, hard, tau_ref, grad, param_grad, states, syn):
    n, batch, T = 7, 3, 5
    x, s0, weight, state0, packed = _op_inputs(n, batch, T, has_w, tau_ref, seed=1, syn=syn)
    spec = _spec(has_w, hard, tau_ref, states, syn)
    plan = spec.plan(True, param_grad)
    out = recurrent_scan_fwd(x, state0, s0, weight, packed, spec, plan, 0)
    g = torch.Generator().manual_seed(2)
    g_spikes, g_v = (torch.randn(x.shape, generator=g) for _ in range(2))
    g_state = torch.randn(state0.shape, generator=g)
    g_w = torch.randn(x.shape, generator=g) if states and has_w else None
    g_i = torch.randn(x.shape, generator=g) if states and syn else None
    args = (s0, weight, state0, packed, out.v_seq, out.w_seq, out.ref_bits, g_spikes, g_state,
            g_v if states else None, g_w, spec.key, True, param_grad, torch.float32, True,
            True, True, True, out.i_seq, out.u_seq, g_i)  # fmt: skip
    torch.library.opcheck(torch.ops.adex.recurrent_bwd.default, args)


# -- torch.compile -----------------------------------------------------------------------------


class RecurrentNet(nn.Module):
    """Linear -> Recurrent(AdExIF with a learnable tau, fused kernels) -> Linear readout
    over a ``[T, batch, features]`` sequence; returns the readout and the spikes."""

    def __init__(self, n_in: int = 4, n: int = 6, n_out: int = 2):
        super().__init__()
        self.encoder = nn.Linear(n_in, n)
        self.rec = make_layer("AdExIF", n, learnable=("tau",))
        self.readout = nn.Linear(n, n_out)

    def forward(self, x: torch.Tensor):
        spikes = self.rec(40.0 + 20.0 * self.encoder(x))
        return self.readout(spikes), spikes


def _train_step(model: RecurrentNet, fn, x: torch.Tensor, batch: int):
    model.zero_grad()
    model.rec.init_state(batch)
    model.rec.neuron.V = random_v0(model.rec, "AdExIF", batch)
    xx = x.clone().requires_grad_()
    out, spikes = fn(xx)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * cot).sum().backward()
    grads = {"x": xx.grad, **{k: p.grad.clone() for k, p in model.named_parameters()}}
    return spikes.detach(), out.detach(), grads


def test_compile_fullgraph_one_op_pair():
    """A fullgraph compile of a model with a Recurrent traces one ``recurrent_fwd`` for the
    whole scan (no one-step scan ops), and inductor's compiled model equals eager: the
    spikes exactly, the readout and every gradient (x, the Linear layers, the recurrent
    weight, the learnable tau) to float rounding."""
    T, batch = 12, 2
    x = torch.randn(T, batch, 4, generator=torch.Generator().manual_seed(0))
    model = RecurrentNet()
    ops = []

    def recording(gm: torch.fx.GraphModule, example_inputs):
        ops.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    graph_model = RecurrentNet()
    graph_model.load_state_dict(model.state_dict())
    _train_step(graph_model, torch.compile(graph_model, backend=recording, fullgraph=True), x,
                batch)  # fmt: skip
    adex_ops = [op.removesuffix(".default") for op in ops if op.startswith("adex.")]
    assert adex_ops == ["adex.recurrent_fwd"], adex_ops

    eager = _train_step(model, model, x, batch)
    compiled_model = RecurrentNet()
    compiled_model.load_state_dict(model.state_dict())
    compiled = _train_step(compiled_model, torch.compile(compiled_model, fullgraph=True), x,
                           batch)  # fmt: skip
    assert torch.equal(eager[0], compiled[0])
    assert_spiky(eager[0])
    assert_close("readout", eager[1], compiled[1], atol=1e-5)
    for name, ref in eager[2].items():
        scale = float(ref.abs().max())
        assert scale > 0, f"grad {name} is all zero"
        assert_close(f"grad {name}", ref, compiled[2][name], atol=1e-5 * scale)


# -- return_states ----------------------------------------------------------------------------


def _states_loop(layer: adex.Recurrent, x: torch.Tensor):
    """The literal step loop, collecting the neuron's V and w after every step."""
    s, spikes, Vs, ws = layer.spikes, [], [], []
    for t in range(x.shape[0]):
        s = layer.neuron.update(x[t] + s @ layer.weight.T)
        spikes.append(s)
        Vs.append(layer.neuron.V)
        ws.append(layer.neuron.w if layer.neuron.has_w else None)
    w = torch.stack(ws) if layer.neuron.has_w else None
    return adex.StateSequence(torch.stack(spikes), torch.stack(Vs), w)


@pytest.mark.parametrize(("model", "backend", "learnable"), [
    ("AdExIF", "triton", ("tau_w", "b")), ("AdExIFRef", "triton", ()),
    ("LIF", "triton", ("tau",)), ("AdExIF", "reference", ("a",)),
])  # fmt: skip
def test_return_states_match_step_loop(model, backend, learnable):
    """The per-step V and w (and the spikes) equal the step loop's, and so do the gradients
    of a loss on all three (x, V0, the weight, learnable parameters)."""
    n, batch, T = 6, 3, 16
    layer = make_layer(model, n, learnable=learnable)
    layer.neuron.backend = backend
    twin = reference_twin(layer)
    x = make_x(model, T, batch, n)
    V0 = random_v0(layer, model, batch)
    g = torch.Generator().manual_seed(7)
    cots = [torch.randn(T, batch, n, generator=g) for _ in range(3)]
    results = []
    for rec, run in ((layer, lambda r, xx: r(xx, return_states=True)), (twin, _states_loop)):
        rec.init_state(batch)
        v0 = V0.clone().requires_grad_()
        rec.neuron.V = v0
        xx = x.clone().requires_grad_()
        seq = run(rec, xx)
        loss = (seq.spikes * cots[0]).sum() + 0.1 * (seq.V * cots[1]).sum()
        if seq.w is not None:
            loss = loss + (seq.w * cots[2]).sum()
        leaves = {"x": xx, "V0": v0, **dict(rec.named_parameters())}
        grads = torch.autograd.grad(loss, list(leaves.values()))
        results.append((seq, dict(zip(leaves, grads, strict=True))))
    (seq_f, g_f), (seq_r, g_r) = results
    assert isinstance(seq_f, adex.StateSequence)
    assert torch.equal(seq_f.spikes, seq_r.spikes)
    assert_spiky(seq_r.spikes)
    assert_close("V", seq_r.V, seq_f.V, atol=1e-3, rtol=1e-5)
    assert (seq_f.w is None) == (not layer.neuron.has_w)
    if seq_f.w is not None:
        assert_close("w", seq_r.w, seq_f.w, atol=1e-4, rtol=1e-5)
    assert torch.equal(layer.neuron.V, seq_f.V[-1])
    for name, ref in g_r.items():
        scale = float(ref.abs().max())
        assert scale > 0, f"{name}: zero reference gradient"
        assert_close(f"grad {name}", ref, g_f[name], atol=GRAD_TOL * scale)


def test_return_states_under_compile():
    n, batch, T = 5, 2, 10
    layer = make_layer("AdExIF", n)
    compiled = torch.compile(lambda xx: layer(xx, return_states=True), fullgraph=True)
    x = make_x("AdExIF", T, batch, n)
    outs = []
    for fn in (lambda xx: layer(xx, return_states=True), compiled):
        layer.init_state(batch)
        layer.weight.grad = None
        xx = x.clone().requires_grad_()
        seq = fn(xx)
        (seq.V.sum() + seq.w.sum() + seq.spikes.sum()).backward()
        outs.append((seq.spikes.detach(), seq.V.detach(), xx.grad, layer.weight.grad))
    assert torch.equal(outs[0][0], outs[1][0])
    assert_spiky(outs[0][0])
    for name, ref, got in zip(("V", "grad x", "grad weight"), outs[0][1:], outs[1][1:],
                              strict=True):  # fmt: skip
        assert_close(name, ref, got, atol=1e-5 * float(ref.abs().max()))


# -- checkpoint mode ------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "backend"), [("AdExIF", "triton"), ("AdExIFRef", "triton"),
                                                ("LIF", "reference")])  # fmt: skip
def test_checkpoint_mode_equals_plain_call(model, backend):
    """``checkpoint_every = K`` (K not dividing T): the spikes, final state and gradients
    (x, V0, the weight, a learnable parameter) of the plain call."""
    n, batch, T = 5, 2, 17
    x = make_x(model, T, batch, n)
    V0 = random_v0(make_layer(model, n), model, batch)
    runs = []
    for ckpt in (None, 5):
        layer = make_layer(model, n, learnable=("tau",), checkpoint_every=ckpt)
        layer.neuron.backend = backend
        layer.init_state(batch)
        v0 = V0.clone().requires_grad_()
        layer.neuron.V = v0
        xx = x.clone().requires_grad_()
        spikes = layer(xx)
        cot = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(3))
        loss = (spikes * cot).sum() + 0.01 * layer.neuron.V.sum()
        grads = torch.autograd.grad(loss, [xx, v0, layer.weight, layer.neuron.tau])
        runs.append((spikes, layer.neuron.V, layer.spikes, grads, layer.neuron.t_step))
    (s_a, V_a, c_a, g_a, t_a), (s_b, V_b, c_b, g_b, t_b) = runs
    assert torch.equal(s_a, s_b) and torch.equal(V_a, V_b) and torch.equal(c_a, c_b)
    assert t_a == t_b == T
    assert_spiky(s_a)
    for name, ref, got in zip(("x", "V0", "weight", "tau"), g_a, g_b, strict=True):
        scale = float(ref.abs().max())
        assert scale > 0, f"{name}: zero gradient"
        assert_close(f"grad {name}", ref, got, atol=1e-5 * scale)


def test_checkpoint_mode_keeps_less():
    """The checkpointed call's autograd graph holds no per-step V of the whole scan: beyond
    views of x (which the caller keeps anyway), the tensors saved for backward are the
    segments' carried spikes and states, not ``[T, B, N]`` sequences."""
    n, batch, T = 4, 2, 24
    saved = {}
    for ckpt in (None, 6):
        layer = make_layer("AdExIF", n, checkpoint_every=ckpt)
        layer.init_state(batch)
        xx = make_x("AdExIF", T, batch, n).requires_grad_()
        sizes, x_storage = [], xx.untyped_storage().data_ptr()

        def pack(t, sizes=sizes, x_storage=x_storage):
            if t.untyped_storage().data_ptr() != x_storage:
                sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(xx)
        saved[ckpt] = sizes
    largest_seq = T * batch * n * 4
    assert any(s >= largest_seq for s in saved[None])  # the plain call keeps the V sequence
    assert max(saved[6]) < largest_seq
    assert sum(saved[6]) < sum(saved[None])


# -- a neuron with a synapse (tau_syn) ---------------------------------------------------------


@pytest.mark.parametrize(("model", "learnable", "states"), [
    ("AdExIF", ("tau_syn",), False), ("AdExIFRef", ("tau_syn", "b"), True),
    ("LIF", (), True), ("AdLIF", ("tau_syn",), True),
])  # fmt: skip
def test_synapse_matches_step_loop(model, learnable, states):
    """The synapse filters the whole input ``x_t + s_{t-1} @ weight.T``: the fused layer
    equals the literal step loop of the neuron with the synapse (spikes exactly; V, w, I;
    gradients to x, V0, the initial I, the weight and a learnable tau_syn)."""
    n, batch, T = 6, 3, 20
    layer = make_layer(model, n, tau_syn=torch.linspace(0.5, 2.0, n), learnable=learnable)
    twin = reference_twin(layer)
    x = make_x(model, T, batch, n) * 1.5
    V0 = random_v0(layer, model, batch)
    I0 = torch.rand(batch, n, generator=torch.Generator().manual_seed(8)) * 10
    g = torch.Generator().manual_seed(9)
    cots = [torch.randn(T, batch, n, generator=g) for _ in range(4)]
    results = []
    for rec, run in ((layer, lambda r, xx: r(xx, return_states=states)), (twin, _syn_loop)):
        rec.init_state(batch)
        v0, i0 = V0.clone().requires_grad_(), I0.clone().requires_grad_()
        rec.neuron.V, rec.neuron.I = v0, i0
        xx = x.clone().requires_grad_()
        out = run(rec, xx)
        spikes = out.spikes if states or rec is twin else out
        loss = (spikes * cots[0]).sum() + 0.1 * (rec.neuron.I * cots[1][0]).sum()
        if states:
            loss = loss + 0.01 * (out.I * cots[2]).sum() + 0.01 * (out.V * cots[3]).sum()
        leaves = {"x": xx, "V0": v0, "I0": i0, **dict(rec.named_parameters())}
        grads = torch.autograd.grad(loss, list(leaves.values()))
        results.append((out, spikes, rec, dict(zip(leaves, grads, strict=True))))
    (out_f, s_f, fused, g_f), (out_r, s_r, ref, g_r) = results
    assert torch.equal(s_f, s_r), f"{int((s_f != s_r).sum())} spikes differ"
    assert_spiky(s_r)
    if states:
        assert isinstance(out_f, adex.SynStateSequence)
        assert_close("I", out_r.I, out_f.I, atol=1e-4, rtol=1e-5)
        assert_close("V", out_r.V, out_f.V, atol=1e-3, rtol=1e-5)
    assert_close("final I", ref.neuron.I, fused.neuron.I, atol=1e-4, rtol=1e-5)
    for name, ref_grad in g_r.items():
        scale = float(ref_grad.abs().max())
        assert scale > 0, f"{name}: zero reference gradient"
        assert_close(f"grad {name}", ref_grad, g_f[name], atol=GRAD_TOL * scale)


def _syn_loop(layer: adex.Recurrent, x: torch.Tensor):
    """The literal step loop with the per-step V and I of a neuron with a synapse."""
    s, spikes, Vs, Is = layer.spikes, [], [], []
    for t in range(x.shape[0]):
        s = layer.neuron.update(x[t] + s @ layer.weight.T)
        spikes.append(s)
        Vs.append(layer.neuron.V)
        Is.append(layer.neuron.I)
    return adex.SynStateSequence(torch.stack(spikes), torch.stack(Vs), None, torch.stack(Is))


def test_synapse_under_compile_and_checkpoint():
    """A synapse neuron in a fullgraph compile (the op pair), in checkpoint mode, and in
    checkpoint mode under a fullgraph compile (the segments' ``torch.utils.checkpoint``
    traced): the eager fused call's spikes and gradients (x, weight, tau_syn)."""
    n, batch, T = 5, 2, 14
    x = make_x("AdExIF", T, batch, n) * 1.5
    runs = []
    for mode in ("eager", "compiled", "checkpoint", "compiled checkpoint"):
        layer = make_layer("AdExIF", n, tau_syn=1.0, learnable=("tau_syn",),
                           checkpoint_every=4 if "checkpoint" in mode else None)  # fmt: skip
        fn = torch.compile(layer, fullgraph=True) if "compiled" in mode else layer
        layer.init_state(batch)
        xx = x.clone().requires_grad_()
        spikes = fn(xx)
        cot = torch.randn(spikes.shape, generator=torch.Generator().manual_seed(3))
        grads = torch.autograd.grad((spikes * cot).sum() + layer.neuron.I.sum(),
                                    [xx, layer.weight, layer.neuron.tau_syn])  # fmt: skip
        runs.append((spikes.detach(), grads))
    assert_spiky(runs[0][0])
    for spikes, grads in runs[1:]:
        assert torch.equal(runs[0][0], spikes)
        for name, ref, got in zip(("x", "weight", "tau_syn"), runs[0][1], grads, strict=True):
            scale = float(ref.abs().max())
            assert scale > 0, f"{name}: zero gradient"
            assert_close(f"grad {name}", ref, got, atol=1e-5 * scale)


# -- the benchmark script ------------------------------------------------------------------


def test_recurrent_bench_smoke(tmp_path):
    """``benchmarks/recurrent_bench.py --smoke`` runs (tiny shapes, interpreter): its
    fused-vs-loop check agrees and every variant has a row (no speed is read here)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recurrent_bench

    out = tmp_path / "rec.json"
    assert recurrent_bench.main(["--smoke", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["rows"]) == {"fused", "step loop, eager"}
    assert report["check"]["spikes_differ"] == 0.0
    assert report["check"]["grad_x_rel"] < 1e-5
