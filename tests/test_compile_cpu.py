"""torch.compile on CPU with the default backend ('auto' -> the reference): fullgraph, the
state initialised inside ``forward``, learnable parameters with ``dynamic=True`` (both
backends), a T change without a recompile, and a traced graph that does not grow with T
(the reference scan is one opaque op, ``adex.reference_op``). Compiled equals eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing
from conftest import DEVICE
from torch import nn

import adex


class Net(nn.Module):
    """Linear -> adex layer -> Linear -> LIF, the state initialised inside forward."""

    def __init__(self, model=adex.AdExIF, **kw):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        for fc in (self.fc1, self.fc2):  # positive weights: the layers spike
            nn.init.uniform_(fc.weight, 0.0, 1.0)
        nn.init.constant_(self.fc2.bias, 1.5)  # above the LIF's 1 mV threshold
        self.hidden = model(6, dt=1.0, **kw)
        self.out = adex.LIF(3, dt=1.0, backend=kw.get("backend", "auto"))

    def forward(self, x):
        adex.init_state(self, x.shape[1], device=x.device)
        return self.out(self.fc2(self.hidden(self.fc1(x))))


def _run(net, fn, x):
    """Output and gradients (input and every parameter) of a weighted spike sum."""
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    out = fn(x)
    weight = torch.linspace(-1.0, 2.0, out.numel(), device=x.device).view(out.shape)
    (out * weight).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in net.parameters()]


def _x(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, 3, 4, generator=g) * 30).to(DEVICE)


def _assert_equal_runs(eager, compiled, exact):
    assert eager[0].sum() > 0, "no spikes: the comparison would be vacuous"
    assert torch.equal(eager[0], compiled[0])
    for a, b in zip(eager[1:], compiled[1:], strict=True):
        if exact:
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_fullgraph_default_backend_inductor():
    """The default compiler (inductor) with fullgraph on the default adex backend."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Net(model=adex.AdExIFRef, learnable=("b",)).to(DEVICE)
    x = _x(12)
    eager = _run(net, net, x)
    compiled = _run(net, torch.compile(net, fullgraph=True), x)
    _assert_equal_runs(eager, compiled, exact=False)


@pytest.mark.parametrize("model", [adex.AdExIF, adex.ExpIFRef, adex.LIF, adex.AdLIFRef])
def test_fullgraph_reference_matches_eager(model):
    """The reference backend named: eager and compiled run the same reference scan, to
    1e-6 (with 'auto', eager CPU calls take the fused CPU kernels, which agree with the
    reference to float32 rounding only: the inductor test above)."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    net = Net(model=model, backend="reference").to(DEVICE)
    x = _x(15, seed=2)
    eager = _run(net, net, x)
    compiled_fn = torch.compile(net, fullgraph=True, backend="aot_eager")
    _assert_equal_runs(eager, _run(net, compiled_fn, x), exact=True)
    _assert_equal_runs(eager, _run(net, compiled_fn, x), exact=True)  # the cached graph


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_learnable_dynamic_and_t_change_without_recompile(backend):
    torch._dynamo.reset()
    torch.manual_seed(2)
    net = Net(backend=backend, learnable=("tau", "b", "V_th")).to(DEVICE)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled_fn = torch.compile(net, fullgraph=True, dynamic=True, backend=counter)
    for T in (10, 17):
        x = _x(T, seed=T)
        _assert_equal_runs(_run(net, net, x), _run(net, compiled_fn, x), exact=True)
        if T == 10:
            frames = counter.frame_count
    if backend == "reference":  # (the interpreter's lazy flag costs triton one recompile)
        assert counter.frame_count == frames, "a change of T recompiled"


def test_reference_options_under_compile():
    """return_states, checkpoint_every (the op recomputes the whole scan instead) and
    integer spikes without gradients."""
    torch._dynamo.reset()
    layer = adex.AdExIF(5, dt=0.5, checkpoint_every=4, learnable=("a",), backend="reference")
    x = _x(9).repeat(1, 1, 2)[..., :5] * 2

    def fn(x):
        layer.init_state(3)
        return layer(x)

    eager_x = x.clone().requires_grad_(True)
    fn(eager_x).sum().backward()
    grad_e, grad_a = eager_x.grad, layer.a.grad.clone()
    layer.a.grad = None
    comp_x = x.clone().requires_grad_(True)
    torch.compile(fn, fullgraph=True, backend="aot_eager")(comp_x).sum().backward()
    torch.testing.assert_close(comp_x.grad, grad_e)
    torch.testing.assert_close(layer.a.grad, grad_a)

    states = adex.ExpIF(5, dt=0.5, spike_dtype=torch.uint8, backend="reference")

    def sim(x):
        states.init_state(3)
        return states(x, return_states=True)

    with torch.no_grad():
        eager = sim(x)
        compiled = torch.compile(sim, fullgraph=True, backend="aot_eager")(x)
    assert compiled.spikes.dtype == torch.uint8 and compiled.w is None
    assert torch.equal(eager.spikes, compiled.spikes) and torch.equal(eager.V, compiled.V)


def _traced_graph_sizes(T):
    """Nodes of each graph dynamo captures for a training call at sequence length T."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Net(learnable=("tau",)).to(DEVICE)
    sizes = []

    def backend(gm, example_inputs):
        sizes.append(len(gm.graph.nodes))
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    _run(net, torch.compile(net, fullgraph=True, backend=backend), _x(T))
    return sizes


def test_traced_graph_does_not_grow_with_T():
    """An unrolled T-step loop would trace T steps' ops; the op is one node at every T (so
    the compile time does not grow with T either)."""
    at_10, at_50 = _traced_graph_sizes(10), _traced_graph_sizes(50)
    assert len(at_10) == 1, at_10
    assert at_10 == at_50, f"graph nodes at T=10: {at_10}, at T=50: {at_50}"


class SeqNet(nn.Module):
    """Linear -> AdLIFRef with a learnable synapse -> Linear -> LI with a synapse, each run
    with ``lengths``, the state initialised inside forward (the reference backend)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        nn.init.uniform_(self.fc1.weight, 0.0, 1.0)
        nn.init.constant_(self.fc1.bias, 12.0)  # above the AdLIF's 10 mV to threshold
        self.hidden = adex.AdLIFRef(6, dt=1.0, tau_ref=2.0, tau_syn=torch.linspace(1.0, 3.0, 6),
                                    learnable=("tau_syn", "b"), backend="reference")  # fmt: skip
        self.out = adex.LI(3, dt=1.0, tau_syn=2.0, backend="reference")

    def forward(self, x, lengths):
        adex.init_state(self, x.shape[1], device=x.device)
        spikes = self.hidden(self.fc1(x), lengths=lengths)
        return self.out(self.fc2(spikes), lengths=lengths)


def test_fullgraph_reference_op_carries_synapse_and_lengths():
    """A synaptic current and lengths= go through the opaque ``adex::reference_scan`` op
    (the T-step loop is not traced): compiled equals eager, forward and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(3)
    net = SeqNet().to(DEVICE)
    x = _x(11, seed=4)
    lengths = torch.tensor([11, 4, 7], device=DEVICE)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    def run(fn):
        net.zero_grad()
        xg = x.clone().requires_grad_(True)
        V = fn(xg, lengths)
        (V * torch.linspace(-1.0, 2.0, V.numel()).view(V.shape)).sum().backward()
        return [V.detach(), xg.grad] + [p.grad.clone() for p in net.parameters()]

    eager = run(net)
    assert net.hidden.tau_syn.grad.abs().sum() > 0 and net.hidden.b.grad.abs().sum() > 0
    compiled = run(torch.compile(net, fullgraph=True, backend=backend))
    ops = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("reference_scan" in op for op in ops) == 2, ops  # one op per layer
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
