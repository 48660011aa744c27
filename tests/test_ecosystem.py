"""adex layers inside the PyTorch ecosystem: torch.compile with dynamic shapes, autocast,
state_dict / torch.save / deepcopy / .to(), and DistributedDataParallel (gloo, 2 processes).

The fused kernels run through the Triton interpreter on CPU (``tests/conftest.py``), so every
size here is tiny.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import EQUAL, Tolerance, assert_close, compare_backends
from torch import nn
from torch._dynamo.utils import counters

import adex
from adex import u

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# -- (a) torch.compile(fullgraph=True, dynamic=True) --------------------------------------------


class SpikingNet(nn.Module):
    """Linear -> AdExIF(backend='triton') -> Linear over ``[T, batch, features]``."""

    def __init__(self, n_in: int = 4, n_hidden: int = 6, n_out: int = 2):
        super().__init__()
        self.encoder = nn.Linear(n_in, n_hidden)
        self.neurons = adex.AdExIF(n_hidden, spk_reset="hard", backend="triton")
        self.readout = nn.Linear(n_hidden, n_out)

    def forward(self, x: torch.Tensor):
        spikes = self.neurons(30.0 + 20.0 * self.encoder(x))  # mA: enough drive to spike
        return self.readout(spikes), spikes, self.neurons.V, self.neurons.w


SHAPES = [(5, 2), (8, 3), (6, 2)]  # (T, batch): two+ different T and two batch sizes


def _step(model: SpikingNet, fn, T: int, batch: int):
    """One forward + backward from a fixed state; returns outputs and gradients."""
    gen = torch.Generator().manual_seed(100 * T + batch)
    x = torch.randn((T, batch, 4), generator=gen).to(DEVICE).requires_grad_(True)
    model.zero_grad()
    model.neurons.init_state(batch)  # also resets t_step to 0 (see the t_step test below)
    model.neurons.V = (torch.rand((batch, 6), generator=gen) * 10 - 64).to(DEVICE)
    model.neurons.w = (torch.rand((batch, 6), generator=gen) * 2).to(DEVICE)
    out, spikes, V, w = fn(x)
    weights = [torch.randn(t.shape, generator=gen).to(DEVICE) for t in (out, V, w)]
    loss = sum((t * g).sum() for t, g in zip((out, V, w), weights, strict=True))
    loss.backward()
    grads = {"x": x.grad, **{n: p.grad.clone() for n, p in model.named_parameters()}}
    return [t.detach() for t in (out, spikes, V, w)], grads


def _compile_dynamic_matches_eager_without_recompiling():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = SpikingNet().to(DEVICE)
    eager = [_step(model, model, T, b) for T, b in SHAPES]
    compiled_model = torch.compile(model, fullgraph=True, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
        compiled = [_step(model, compiled_model, T, b) for T, b in SHAPES]
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    for (T, b), (out_e, grads_e), (out_c, grads_c) in zip(SHAPES, eager, compiled, strict=True):
        tag = f"T={T} batch={b}"
        assert out_e[1].sum() > 0, f"{tag}: test data gives no spikes"
        assert torch.equal(out_e[1], out_c[1]), f"{tag}: spikes differ"
        for i, name in ((0, "readout"), (2, "V"), (3, "w")):
            assert_close(f"{tag} {name}", out_e[i], out_c[i], atol=1e-4)
        for name, ref in grads_e.items():
            scale = ref.abs().max().item()
            assert scale > 0, f"{tag}: grad {name} is all zero"
            assert_close(f"{tag} grad_{name}", ref, grads_c[name], atol=1e-5 * scale)


def test_compile_dynamic_fullgraph_default_config():
    _compile_dynamic_matches_eager_without_recompiling()


def test_compile_dynamic_fullgraph_specialized_floats():
    """The same with Python floats specialized (the only blocker above): one graph for every
    T and batch size, no recompilation, identical spikes and gradients to eager."""
    with torch._dynamo.config.patch(specialize_float=True):
        _compile_dynamic_matches_eager_without_recompiling()


def test_compile_consecutive_calls_do_not_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SpikingNet().to(DEVICE)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    model.neurons.init_state(2)
    with (
        torch._dynamo.config.patch(specialize_float=True, error_on_recompile=True),
        torch.no_grad(),
    ):
        try:
            for _ in range(3):
                compiled(torch.randn(5, 2, 4, device=DEVICE))
        except torch._dynamo.exc.RecompileError as err:
            assert "t_step" in str(err), f"recompiled for another reason: {err}"
            raise


# -- (b) autocast -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_autocast_bf16(backend):
    """Under ``torch.autocast('cpu', bfloat16)`` the Linear emits bf16 currents; the layer
    takes them, returns bf16 spikes (the input dtype), keeps its states V, w (and the
    per-step sequences) in float32, and the backward reaches the Linear in float32."""
    torch.manual_seed(0)
    encoder = nn.Linear(4, 6)
    neurons = adex.AdExIF(6, backend=backend)
    readout = nn.Linear(6, 2)
    neurons.init_state(3)
    x = torch.randn(30, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        current = 30.0 + 20.0 * encoder(x)
        assert current.dtype == torch.bfloat16
        out = neurons(current, return_states=True)
        y = readout(out.spikes)
    assert out.spikes.dtype == torch.bfloat16
    assert out.V.dtype == out.w.dtype == torch.float32
    assert neurons.V.dtype == neurons.w.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    assert 0 < out.spikes.sum() < out.spikes.numel()
    y.float().sum().backward()
    assert encoder.weight.grad.dtype == torch.float32
    assert torch.isfinite(encoder.weight.grad).all() and encoder.weight.grad.abs().sum() > 0
    # the same bf16 current without autocast gives the same result: autocast changes nothing
    # inside the layer (its arithmetic is float32 on both backends)
    neurons.init_state(3)
    again = neurons(current.detach(), return_states=True)
    assert torch.equal(again.spikes, out.spikes.detach())
    assert torch.equal(again.V, out.V.detach())


def test_autocast_backends_agree():
    torch.manual_seed(1)
    encoder = nn.Linear(4, 6)
    x = torch.randn(40, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        current = 30.0 + 20.0 * encoder(x)
        runs = compare_backends(lambda backend: adex.AdExIF(6, backend=backend), dict(x=current),
                                tol={"spikes": EQUAL, "V": Tolerance(1e-3, 1e-5)})  # fmt: skip
    assert runs["reference"].out["spikes"].sum() > 0


# -- (c) state_dict, torch.save, deepcopy, .to() -------------------------------------------------


def _layer(**overrides) -> adex.AdExIF:
    kwargs = dict(
        tau=12 * u.ms,
        b=torch.linspace(0.5, 1.0, 5),
        V_th=torch.tensor([-55.0, -54.5, -54.0, -53.5, -53.0]),
        learnable=("tau", "b"),
        backend="reference",
        dt=0.5,
    )
    kwargs.update(overrides)
    return adex.AdExIF(5, **kwargs)


def _run(layer: adex.AdExIF, dtype=torch.float32) -> torch.Tensor:
    layer.init_state(2, dtype=dtype)
    x = torch.linspace(10.0, 40.0, 2 * 5, dtype=dtype).reshape(1, 2, 5).expand(60, -1, -1)
    return layer(x, return_states=True).V


def test_state_dict_round_trip():
    src = _layer()
    state = src.state_dict()
    assert set(state) == {"tau", "b", "V_th"}  # learnable params + per-neuron buffers
    assert state["tau"].dtype == state["b"].dtype == torch.float32
    assert state["tau"].shape == () and state["b"].shape == (5,)
    assert state["V_th"].dtype == torch.float64  # fixed per-neuron values: float64 buffers
    with torch.no_grad():
        src.tau.fill_(14.0)
        src.b.mul_(2.0)
    dst = _layer(tau=10 * u.ms, b=torch.zeros(5), V_th=torch.full((5,), -50.0))
    dst.load_state_dict(src.state_dict())
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    assert torch.equal(_run(src), _run(dst))


def test_torch_save_load_module_and_state_dict(tmp_path):
    src = _layer()
    ref = _run(src)
    whole, sd = tmp_path / "layer.pt", tmp_path / "layer_state.pt"
    torch.save(src, whole)
    torch.save(src.state_dict(), sd)
    loaded = torch.load(whole, weights_only=False)
    assert type(loaded) is adex.AdExIF and loaded.learnable == ("tau", "b")
    assert isinstance(loaded.tau, nn.Parameter)
    assert torch.equal(_run(loaded), ref)
    state = torch.load(sd)  # plain tensors: loads with weights_only=True (the default)
    fresh = _layer(tau=9 * u.ms, b=torch.ones(5))
    fresh.load_state_dict(state)
    assert torch.equal(_run(fresh), ref)


def test_deepcopy_is_independent():
    src = _layer()
    src.init_state(2)
    twin = copy.deepcopy(src)
    assert twin.tau is not src.tau and torch.equal(twin.tau, src.tau)
    assert twin.V is not None and torch.equal(twin.V, src.V)
    with torch.no_grad():
        twin.tau.fill_(20.0)
    assert src.tau.item() == pytest.approx(12.0)
    assert not torch.equal(_run(twin), _run(src))


def test_to_float64_keeps_buffers_float64():
    """``.to(torch.float64)``: the per-neuron buffers stay float64 (they are float64 for any
    ``.to(dtype)``), learnable parameters follow the dtype as any nn.Parameter does, existing
    states keep their dtype (``init_state(dtype=...)`` chooses it); float64 input then runs
    the reference in float64."""
    layer = _layer().to(torch.float64)
    assert layer.V_th.dtype == torch.float64
    assert layer.tau.dtype == layer.b.dtype == torch.float64
    half = _layer().to(torch.float16)
    assert half.V_th.dtype == torch.float64
    V = _run(layer, dtype=torch.float64)
    assert V.dtype == torch.float64 and layer.V.dtype == torch.float64
    assert_close("float64 vs float32", V, _run(_layer()), atol=1e-3)


@pytest.mark.skipif(DEVICE != "cuda", reason="moving states across devices needs a GPU")
def test_to_device_moves_params_and_states():
    layer = _layer()
    layer.init_state(2)
    layer.to(DEVICE)
    assert layer.V.device.type == layer.w.device.type == layer.V_th.device.type == "cuda"
    assert layer.tau.device.type == "cuda"


def test_extra_repr_shows_units():
    text = repr(_layer(tau_w=45 * u.ms, a=2 * u.nS))
    for part in (
        "tau=learnable [ms]",
        "b=learnable [mA]",
        "V_th=per-neuron [mV]",
        "tau_w=45 ms",
        "a=2e-09 S",
        "V_reset=-68 mV",
        "R=1 ohm",
        "dt=0.5 ms",
    ):
        assert part in text, (part, text)


def test_load_state_dict_reaches_the_fused_kernels():
    kwargs = dict(backend="triton", dt=0.5)
    src = adex.AdExIF(4, V_th=torch.tensor([-55.0, -54.0, -53.0, -52.0]), **kwargs)
    dst = adex.AdExIF(4, V_th=torch.full((4,), -40.0), **kwargs)
    dst.load_state_dict(src.state_dict())
    x = torch.full((40, 2, 4), 40.0)
    outs = []
    for layer in (src, dst):
        layer.init_state(2)
        outs.append(layer(x))
    assert outs[0].sum() > 0
    assert torch.equal(outs[0], outs[1])


# -- (d) DistributedDataParallel (gloo, 2 CPU processes) -----------------------------------------

DDP_COMMON = textwrap.dedent(
    """
    import torch
    from torch import nn

    import adex


    class DDPNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 6)
            self.neurons = adex.AdExIF(6, learnable=("tau", "b"), backend="reference", dt=0.5)
            self.readout = nn.Linear(6, 2)

        def forward(self, x):
            self.neurons.init_state(x.shape[1], device=x.device)
            spikes = self.neurons(20.0 + 10.0 * self.encoder(x))
            return self.readout(spikes.mean(0) * 10.0)


    def ddp_model():
        # the same initial weights in every process
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return DDPNet()


    def ddp_batches(steps=3, T=30, batch=8):
        # the global batches, identical in every process
        gen = torch.Generator().manual_seed(1)
        return [(torch.rand(T, batch, 4, generator=gen), torch.randn(batch, 2, generator=gen))
                for _ in range(steps)]


    def ddp_train(model, batches):
        # SGD on a mean loss: DDP's gradient average over equal shards is then the gradient
        # of the mean over the global batch
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for x, y in batches:
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    """
)
"""Model, data and training loop shared by the DDP ranks and the single-process run (the
ranks run it as a script: importing this test module would cost them seconds)."""

DDP_RANK = textwrap.dedent(
    """
    import os
    import sys

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")  # torchrun's environment
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DDP(ddp_model())
    local = []
    for x, y in ddp_batches():
        n = x.shape[1] // world  # this rank's share of the global batch
        local.append((x[:, rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]))
    ddp_train(model, local)
    torch.save({k: v.detach() for k, v in model.module.state_dict().items()},
               os.path.join(os.environ["ADEX_OUT"], f"rank{rank}.pt"))
    # both ranks reach here before either tears gloo down: a rank that closes its
    # connections while the other is still inside a collective aborts that one
    dist.barrier()
    dist.destroy_process_group()
    # the result is on disk; skip the interpreter's teardown, where gloo's worker threads
    # can abort the process (torch's shutdown, not adex: a loaded 2-core CI machine hit it)
    sys.stdout.flush()
    os._exit(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    world = 2
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "ADEX_OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_COMMON + DDP_RANK],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("DDP processes did not finish within 120 s")
        logs.append(out)
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-3000:]}"

    # single process on the whole global batch
    ns: dict = {}
    exec(DDP_COMMON, ns)
    model = ns["ddp_model"]()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ns["ddp_train"](model, ns["ddp_batches"]())
    single = model.state_dict()
    assert not torch.equal(single["neurons.tau"], initial["neurons.tau"]), "tau did not train"
    assert not torch.equal(single["neurons.b"], initial["neurons.b"]), "b did not train"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key}: ranks disagree"
        assert_close(f"DDP vs single process: {key}", value, ranks[0][key], atol=1e-5, rtol=1e-5)
