"""Demo: train a small AdExIF spiking network on handwritten digits with surrogate-gradient BPTT.

Run it with ``python -m adex.demo`` (``--task sequence``: the sequence demo,
:mod:`adex.demo_sequence`). The data are scikit-learn's 8x8 handwritten digits
(``sklearn.datasets.load_digits``: 1797 images, 10 classes, shipped inside the scikit-learn
wheel, so nothing is downloaded). Each image is encoded as input currents over time: its 64
pixel intensities (scaled to 0..1) are held for ``T`` steps of 1 ms. The network

    pixels [T, batch, 64] -> Linear -> AdExIF(128) -> Linear -> AdExIF(10) -> spike counts

is trained with cross-entropy on the output layer's spike counts (the class whose neuron
fires most wins), back-propagated through time over all T steps. Each AdExIF layer runs its
whole T-step scan in one call; on CUDA (``backend='auto'``) its forward and its BPTT backward
each run as one fused Triton kernel, on CPU as one fused numba kernel each (``adex.cpu``;
the Triton interpreter would be far too slow here). The hidden layer's membrane time constant
``tau`` and spike-triggered adaptation ``b`` are per-neuron ``learnable`` parameters, whose
gradients come out of the same backward pass.

At the end the demo saves a PNG (matplotlib, Agg; default ``adex_demo.png``): one test
digit, the hidden layer's spike raster, a few hidden membrane-voltage traces and the output
spike raster.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

import adex
from adex.functional import resolve_backend

N_IN = 64
"""Input channels: the 8x8 pixels of a digit."""
HIDDEN = 128
"""AdExIF neurons in the hidden layer."""
CLASSES = 10
"""Output AdExIF neurons, one per digit class."""
T = 30
"""Time steps per sample (dt = 1 ms, so 30 ms)."""
DT_MS = 1.0
"""Simulation time step in ms."""
BATCH = 64
"""Training batch size."""
TEST_SIZE = 360
"""Held-out digits (of 1797) used for the test accuracy; the rest are for training."""
SPLIT_SEED = 0
"""Seed of the train/test split: the same held-out digits for every ``--seed``."""
LR = 0.1
"""Adam step size of the weights."""
TRACES = 4
"""Hidden neurons whose voltage the plot shows."""
TASKS = ("digits", "sequence")
"""The demo's tasks (``--task``): these 8x8 digits (default) or the sequence demo
(:mod:`adex.demo_sequence`)."""


def load_data(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 8x8 digits, split into training and held-out sets.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: pixel intensities in 0..1 ``[n, 64]``
        (float32) and labels ``[n]`` (int64), on ``device``.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = perm[:TEST_SIZE], perm[TEST_SIZE:]
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)


def encode(pixels: Tensor) -> Tensor:
    """Pixels ``[batch, 64]`` -> input currents over time ``[T, batch, 64]`` (held constant)."""
    return pixels.unsqueeze(0).expand(T, -1, -1)


class SpikingClassifier(nn.Module):
    """Linear -> AdExIF -> Linear -> AdExIF; the output spike counts are the logits.

    The Linear layers map spikes (or pixels) to currents in mA. Their biases start near the
    ~7 mA where the default AdExIF fires repetitively and their weights are widely spread, so
    hidden and output neurons fire at diverse, modest rates from the first step of training.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__()
        dt = DT_MS * adex.u.ms
        self.fc1 = nn.Linear(n_in, n_hidden)
        nn.init.normal_(self.fc1.weight, mean=0.0, std=4.0)
        nn.init.constant_(self.fc1.bias, 8.0)
        # per-neuron tau and b, trained with the weights (on CUDA their gradients come out
        # of the fused backward kernel)
        self.hidden = adex.AdExIF(
            n_hidden,
            tau=torch.full((n_hidden,), 10.0) * adex.u.ms,
            b=torch.full((n_hidden,), 1.0) * adex.u.mA,
            dt=dt,
            learnable=("tau", "b"),
        )
        self.fc2 = nn.Linear(n_hidden, n_out)
        nn.init.normal_(self.fc2.weight, mean=0.0, std=4.0)
        nn.init.constant_(self.fc2.bias, 8.0)
        self.out = adex.AdExIF(n_out, tau=10 * adex.u.ms, dt=dt)

    def forward(self, x: Tensor, return_states: bool = False):
        """Run all T steps.

        Args:
            x: input currents ``[T, batch, n_in]``.
            return_states: also return the hidden layer's per-step V.

        Returns:
            ``(logits, hidden, output)``: class scores ``[batch, n_out]``, the hidden and the
            output spikes ``[T, batch, n]``; with ``return_states`` a fourth item, the hidden
            membrane potential ``[T, batch, n_hidden]`` (mV, pre-reset).
        """
        batch = x.shape[1]
        self.hidden.init_state(batch_size=batch, device=x.device)
        self.out.init_state(batch_size=batch, device=x.device)
        states = self.hidden(self.fc1(x), return_states=return_states)  # one scan over T
        hidden = states.spikes if return_states else states
        output = self.out(self.fc2(hidden))
        logits = output.sum(dim=0)  # spike counts
        if return_states:
            return logits, hidden, output, states.V
        return logits, hidden, output

    def clamp_(self) -> None:
        """Keep the learnable neuron parameters in their valid (and sensible) range."""
        with torch.no_grad():
            self.hidden.tau.clamp_(min=2.0, max=50.0)
            self.hidden.b.clamp_(min=0.0)


def evaluate(model: SpikingClassifier, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Accuracy and mean hidden spike probability per step on ``(x, y)``, no grad."""
    with torch.no_grad():
        logits, hidden, _ = model(encode(x))
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return accuracy, hidden.mean().item()


def plot_sample(model: SpikingClassifier, pixels: Tensor, label: int, path: Path) -> None:
    """Save a PNG: the digit, the hidden spike raster, hidden voltage traces, output raster."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    with torch.no_grad():
        logits, hidden, output, V = model(encode(pixels.unsqueeze(0)), return_states=True)
    hidden, output, V = hidden[:, 0].cpu(), output[:, 0].cpu(), V[:, 0].cpu()
    predicted = int(logits.argmax(dim=1).item())
    t = torch.arange(1, T + 1) * DT_MS  # step k ends at k ms
    counts = hidden.sum(dim=0)
    # voltage traces of a few neurons that fire at different rates (and one that is silent)
    order = torch.argsort(counts, descending=True, stable=True)
    picks = order[torch.linspace(0, len(order) - 1, TRACES).round().long()].tolist()

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=(1, 3.2), height_ratios=(2.2, 1.6, 1))
    ax_img = fig.add_subplot(grid[0, 0])
    ax_img.imshow(pixels.cpu().reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax_img.set_title(f"test digit: label {label}, predicted {predicted}", fontsize=10)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    ax_count = fig.add_subplot(grid[1:, 0])
    ax_count.barh(range(CLASSES), output.sum(dim=0).numpy(), color="C1")
    ax_count.set_yticks(range(CLASSES))
    ax_count.invert_yaxis()
    ax_count.set_xlabel("output spike count")
    ax_count.set_ylabel("class")

    ax_raster = fig.add_subplot(grid[0, 1])
    steps, neurons = torch.nonzero(hidden, as_tuple=True)
    ax_raster.scatter(t[steps].numpy(), neurons.numpy(), s=14, marker="|", color="k", lw=1)
    ax_raster.set_ylim(-1, hidden.shape[1])
    ax_raster.set_ylabel("hidden neuron")
    ax_raster.set_title(
        f"hidden AdExIF layer: {int(counts.sum())} spikes from {HIDDEN} neurons", fontsize=10
    )
    ax_V = fig.add_subplot(grid[1, 1], sharex=ax_raster)
    params = model.hidden.params
    t0 = torch.cat([torch.zeros(1), t]).numpy()  # from the initial V_rest at t = 0
    for i, n in enumerate(picks):
        trace = torch.cat([torch.full((1,), params.V_rest), V[:, n]]).numpy()
        ax_V.plot(t0, trace, lw=1, color=f"C{i}", label=f"#{n}: {int(counts[n])} spikes")
    V_th = params.V_th
    ax_V.axhline(float(V_th), color="gray", lw=0.8, ls="--", label="V_th")
    ax_V.set_ylabel("hidden V (mV)")
    # the legend sits above the axes, where it hides no trace
    ax_V.legend(loc="lower left", bbox_to_anchor=(0, 1), fontsize=8, ncols=TRACES + 1)
    ax_out = fig.add_subplot(grid[2, 1], sharex=ax_raster)
    steps, neurons = torch.nonzero(output, as_tuple=True)
    ax_out.scatter(t[steps].numpy(), neurons.numpy(), s=30, marker="|", color="C1", lw=1.5)
    ax_out.set_ylim(CLASSES - 0.5, -0.5)
    ax_out.set_yticks(range(CLASSES))
    ax_out.tick_params(axis="y", labelsize=7)
    ax_out.set_ylabel("output neuron")
    ax_out.set_xlabel("t (ms)")
    ax_out.set_xlim(0, T * DT_MS + 1)
    fig.suptitle(f"adex {adex.__version__} demo: AdExIF network on one held-out 8x8 digit")
    fig.savefig(path, dpi=100)


def pick_device(name: str) -> torch.device:
    """``'auto'``: CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_training_options(parser: argparse.ArgumentParser, epochs: int) -> None:
    """The options every demo task takes: ``--epochs`` (default ``epochs``), ``--steps``,
    ``--seed`` and ``--device``."""
    parser.add_argument(
        "--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per epoch (default: one pass over the training set)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda'"
    )


def parse_training_options(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the training options of
    :func:`add_training_options` checked (``--epochs`` and ``--steps`` >= 1)."""
    args = parser.parse_args(argv)
    if args.epochs < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--epochs and --steps must be >= 1")
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options of ``python -m adex.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m adex.demo",
        description="Train a Linear -> AdExIF -> Linear -> AdExIF spiking network with BPTT "
        "on scikit-learn's 8x8 handwritten digits.",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="digits",
        help="'digits' (this demo, default) or 'sequence' (adex.demo_sequence: variable-length "
        "Japanese Vowels, needs the sequence extra; see its --help)",
    )
    add_training_options(parser, epochs=4)
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("adex_demo.png"),
        metavar="PATH",
        help="where to save the raster/voltage plot (default adex_demo.png)",
    )
    args = parse_training_options(parser, argv)
    if not args.plot.parent.is_dir():  # fail now, not after training
        parser.error(f"--plot: no such directory: {args.plot.parent}")
    return args


def batches(n: int, generator: torch.Generator):
    """Endless index batches of size ``BATCH``: a fresh permutation of ``range(n)`` per pass."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - BATCH + 1, BATCH):
            yield perm[start : start + BATCH]


def main(argv: Sequence[str] | None = None) -> int:
    """Train, report loss, accuracy and time per epoch, save the plot; return 0.

    ``--task sequence`` runs the variable-length sequence demo instead
    (:mod:`adex.demo_sequence`, its own options); ``--task digits`` (the default) this one.
    """
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=TASKS, default="digits")
    known, rest = task.parse_known_args(argv)
    if known.task == "sequence":
        from adex import demo_sequence

        return demo_sequence.main(rest)
    args = parse_args(rest)
    device = pick_device(args.device)
    if device.type == "cpu":
        # torch's own ops here are small [batch, 128] matmuls: fanning those out to several
        # threads costs more than it saves (the CPU scan kernels use numba's threads).
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(device)
    steps = args.steps or len(y_train) // BATCH

    model = SpikingClassifier(N_IN, HIDDEN, CLASSES).to(device)
    optimizer = torch.optim.Adam(
        [
            # the weights are currents (mA, spread ~4 mA): they need a large step
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": LR},
            {"params": [model.hidden.tau, model.hidden.b], "lr": 0.05},
        ]
    )
    loss_fn = nn.CrossEntropyLoss()
    backend = resolve_backend(model.hidden.backend, x_test)
    kernels = {"triton": "fused Triton kernels", "cpu": "fused CPU kernels"}.get(
        backend, "pure-PyTorch reference"
    )

    print(
        f"adex {adex.__version__} demo: torch {torch.__version__}, device {device}, "
        f"backend {backend} ({kernels})"
    )
    print(
        f"data: scikit-learn 8x8 digits ({len(y_train)} train / {len(y_test)} test), pixels "
        f"held as input currents for T={T} x {DT_MS:g} ms"
    )
    print(
        f"network: {N_IN} -> AdExIF({HIDDEN}, learnable tau, b) -> AdExIF({CLASSES}) "
        f"spike counts; {args.epochs} epochs x {steps} steps, batch {BATCH}, seed {args.seed}"
    )
    acc0, _ = evaluate(model, x_test, y_test)
    print(f"before training: test accuracy {acc0:.3f} (chance {1 / CLASSES:.2f})")

    stream = batches(len(y_train), data_gen)
    total_time = 0.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        total = 0.0
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch}/{args.epochs}",
            unit="step",
            leave=False,  # replaced by the epoch's summary line
        )
        for i in bar:
            idx = next(stream)
            logits, _, _ = model(encode(x_train[idx]))
            loss = loss_fn(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # BPTT through both scans
            optimizer.step()
            model.clamp_()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (i + 1):.3f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        total_time += elapsed
        accuracy, rate = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch:3d}: mean training loss {total / steps:.4f}, test accuracy "
            f"{accuracy:.3f}, {elapsed:.1f} s"
        )

    hz = rate / (DT_MS * 1e-3)
    tau = model.hidden.tau.detach()
    print(
        f"test accuracy {accuracy:.3f} on {len(y_test)} held-out digits (chance {1 / CLASSES:.2f})"
    )
    print(f"hidden spike rate {rate:.3f} spikes/neuron/step ({hz:.0f} Hz)")
    print(
        f"learned hidden tau {tau.min():.1f}..{tau.max():.1f} ms (mean {tau.mean():.1f}), "
        f"b mean {model.hidden.b.detach().mean():.2f} mA"
    )
    per_epoch = total_time / args.epochs
    print(f"training time {total_time:.1f} s ({per_epoch:.1f} s per epoch)")
    plot_sample(model, x_test[0], int(y_test[0]), args.plot)
    print(f"saved the spike raster and voltage plot of one test digit to {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
