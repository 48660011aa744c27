"""Demo: train a small AdExIF spiking network with surrogate-gradient BPTT.

Run it with ``python -m adex.demo``. The task is synthetic and generated here: ``GROUPS``
groups of ``CHANNELS_PER_GROUP`` Poisson input channels fire at a background rate, except
one group (the label) that fires faster. The network

    Poisson spikes [T, batch, 32] -> Linear -> AdExIF(64) -> spike counts -> Linear -> 4 logits

reads the label out of the hidden neurons' spike counts. The whole T-step AdExIF scan is one
call of the layer; on CUDA (``backend='auto'``) its forward and its BPTT backward each run as
one fused Triton kernel, on CPU the pure-PyTorch reference backend runs (the Triton
interpreter would be far too slow here). dt is 1 ms, so the default AdExIF parameters
(about 7 mA for repetitive firing) spike within a few dozen steps.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import adex
from adex.functional import resolve_backend

GROUPS = 4
"""Number of input channel groups, and of classes."""
CHANNELS_PER_GROUP = 8
"""Poisson input channels per group."""
HIDDEN = 64
"""AdExIF neurons in the hidden layer."""
T = 60
"""Time steps per sample (dt = 1 ms, so 60 ms)."""
DT_MS = 1.0
"""Simulation time step in ms."""
P_BACKGROUND = 0.05
"""Spike probability per step of a background channel (50 Hz at dt = 1 ms)."""
P_SIGNAL = 0.09
"""Spike probability per step of a channel in the labelled group (90 Hz)."""
BATCH = 64
"""Training batch size."""
TEST_SIZE = 512
"""Held-out samples used for the final accuracy."""


def make_batch(
    batch_size: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Draw a batch of the synthetic task.

    Args:
        batch_size: number of samples.
        generator: CPU random generator (the data is drawn on the CPU, so a seed gives the
            same data on every device).
        device: where the returned tensors live.

    Returns:
        ``(spikes, labels)``: 0/1 input spikes ``[T, batch, GROUPS * CHANNELS_PER_GROUP]``
        (float32) and the labelled group of each sample ``[batch]`` (int64).
    """
    labels = torch.randint(0, GROUPS, (batch_size,), generator=generator)
    rate = torch.full((batch_size, GROUPS, CHANNELS_PER_GROUP), P_BACKGROUND)
    rate[torch.arange(batch_size), labels] = P_SIGNAL
    rate = rate.reshape(1, batch_size, GROUPS * CHANNELS_PER_GROUP).expand(T, -1, -1)
    spikes = torch.bernoulli(rate, generator=generator)
    return spikes.to(device), labels.to(device)


class SpikingClassifier(nn.Module):
    """Linear -> AdExIF -> spike counts -> Linear readout.

    The input layer maps input spikes to currents in mA. Its bias starts at an 8 mA
    depolarizing offset (just above the ~7 mA where the default AdExIF fires repetitively)
    and its weights are widely spread around a small positive mean, so the hidden neurons
    fire at diverse, modest rates from the first step of training.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__()
        self.inp = nn.Linear(n_in, n_hidden)
        nn.init.normal_(self.inp.weight, mean=2.0, std=8.0)
        nn.init.constant_(self.inp.bias, 8.0)
        self.neurons = adex.AdExIF(n_hidden, tau=10 * adex.u.ms, dt=DT_MS * adex.u.ms)
        self.readout = nn.Linear(n_hidden, n_out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run all T steps.

        Args:
            x: input spikes ``[T, batch, n_in]``.

        Returns:
            ``(logits, spikes)``: class scores ``[batch, n_out]`` and the hidden spikes
            ``[T, batch, n_hidden]``.
        """
        current = self.inp(x)  # mA, [T, batch, n_hidden]
        self.neurons.init_state(batch_size=x.shape[1], device=x.device)
        spikes = self.neurons(current)  # one fused scan over T (forward and backward)
        rate = spikes.mean(dim=0)  # spikes per step, [batch, n_hidden]
        return self.readout(rate * 10.0), spikes


def evaluate(model: SpikingClassifier, x: Tensor, labels: Tensor) -> tuple[float, float]:
    """Accuracy and mean hidden spike probability per step on ``(x, labels)``, no grad."""
    with torch.no_grad():
        logits, spikes = model(x)
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return accuracy, spikes.mean().item()


def pick_device(name: str) -> torch.device:
    """``'auto'``: CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options of ``python -m adex.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m adex.demo",
        description="Train a Linear -> AdExIF -> Linear spiking network with BPTT on a "
        "synthetic Poisson rate-coding task.",
    )
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument(
        "--steps", type=int, default=10, help="optimizer steps per epoch (default 10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda'"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.steps < 1:
        parser.error("--epochs and --steps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train, report loss per epoch, final accuracy, spike rate and time; return 0."""
    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        # The reference backend runs T small [batch, 64] steps: fanning those out to several
        # threads costs far more than it saves (and collapses when the cores are shared).
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    n_in = GROUPS * CHANNELS_PER_GROUP

    model = SpikingClassifier(n_in, HIDDEN, GROUPS).to(device)
    # The input weights are currents (mA, spread ~8 mA): they need a much larger step than the
    # readout to move within a few dozen steps. Their gradient is the BPTT one through the scan.
    optimizer = torch.optim.Adam(
        [
            {"params": model.inp.parameters(), "lr": 0.5},
            {"params": model.readout.parameters(), "lr": 0.02},
        ]
    )
    loss_fn = nn.CrossEntropyLoss()
    x_test, y_test = make_batch(TEST_SIZE, data_gen, device)
    backend = resolve_backend(model.neurons.backend, x_test)
    kernels = "fused Triton kernels" if backend == "triton" else "pure-PyTorch reference"

    print(
        f"adex {adex.__version__} demo: torch {torch.__version__}, device {device}, "
        f"backend {backend} ({kernels})"
    )
    print(
        f"task: {GROUPS} groups x {CHANNELS_PER_GROUP} Poisson channels, T={T} steps of "
        f"{DT_MS:g} ms; network {n_in} -> AdExIF({HIDDEN}) -> {GROUPS}; "
        f"{args.epochs} epochs x {args.steps} steps, batch {BATCH}, seed {args.seed}"
    )
    acc0, rate0 = evaluate(model, x_test, y_test)
    print(
        f"before training: test accuracy {acc0:.3f} (chance {1 / GROUPS:.2f}), "
        f"spike rate {rate0:.3f}/step"
    )

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        total = 0.0
        for _ in range(args.steps):
            x, y = make_batch(BATCH, data_gen, device)
            logits, _ = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # BPTT through the whole scan
            optimizer.step()
            total += loss.item()
        print(f"epoch {epoch:3d}: mean training loss {total / args.steps:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start

    accuracy, rate = evaluate(model, x_test, y_test)
    hz = rate / (DT_MS * 1e-3)
    print(f"test accuracy {accuracy:.3f} on {TEST_SIZE} held-out samples (chance {1 / GROUPS:.2f})")
    print(f"hidden spike rate {rate:.3f} spikes/neuron/step ({hz:.0f} Hz)")
    print(f"training time {elapsed:.1f} s ({args.epochs * args.steps} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
