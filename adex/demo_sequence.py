"""Sequence demo: classify variable-length speech frames with AdLIF neurons, a synaptic
current, a leaky-integrator readout and ``lengths=``.

Run it with ``adex demo --task sequence`` (or ``python -m adex.demo --task sequence``). The
data are the UCI / UEA *Japanese Vowels* recordings: nine male speakers each uttering the
vowel pair /ae/, every utterance a sequence of 12 LPC cepstrum coefficients per analysis
frame, 7 to 29 frames long; the task is to name the speaker (9 classes), 270 utterances for
training and 370 held out (the archive's own split). The files ship inside the ``sktime``
wheel (``sktime/datasets/data/JapaneseVowels``), read by ``sktime.datasets`` (nothing is
downloaded); install them with ``pip install -e ".[sequence]"`` (or ``pip install sktime``).

Each frame is one step of dt = 1 ms (the simulated time is the demo's own clock, not the
recording's). A batch is padded to its longest utterance and run with ``lengths=``, so every
sample's scan stops at its own last frame (its state is held after it, no gradient flows
from the padding). The network

    frames [T, batch, 12] -> Linear -> AdLIF(64, tau_syn) -> Linear -> LI(9, tau_syn)

reads the class scores as the readout's membrane potential at each utterance's last frame
(``V[-1]``: the held value is each sample's own last V). The hidden layer's ``tau`` and
``tau_syn`` are per-neuron ``learnable`` parameters. On CUDA (``backend='auto'``) every scan
runs as one fused Triton kernel each way; on CPU as the fused numba CPU kernels (or the
pure-PyTorch reference when numba is missing).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

import adex
from adex.demo import add_training_options, parse_training_options, pick_device
from adex.functional import resolve_backend

N_IN = 12
"""Input channels: LPC cepstrum coefficients per frame."""
HIDDEN = 64
"""AdLIF neurons in the hidden layer."""
CLASSES = 9
"""Speakers, one readout neuron each."""
DT_MS = 1.0
"""Simulation time step in ms (one frame per step)."""
BATCH = 30
"""Training batch size (270 training utterances: 9 steps per epoch)."""
LR = 0.02
"""Adam step size."""
INSTALL_HINT = 'pip install -e ".[sequence]"  (or: pip install sktime)'
"""What to install when the data package is missing."""


def load_data(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The Japanese Vowels train and test splits as padded, standardised tensors.

    Returns:
        ``(x_train, len_train, y_train, x_test, len_test, y_test)``: frames ``[T_max, n, 12]``
        (float32, zero past each sample's length, each channel standardised with the training
        set's mean and standard deviation), lengths ``[n]`` (int64, 7..29) and labels ``[n]``
        (int64, 0..8), on ``device``.

    Raises:
        ModuleNotFoundError: ``sktime`` (which ships the data) is not installed.
    """
    try:
        from sktime.datasets import load_japanese_vowels  # data inside the wheel: no download
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "adex demo --task sequence reads the Japanese Vowels data shipped inside the "
            f"sktime package, which is not installed: {INSTALL_HINT}"
        ) from err

    splits = []
    for split in ("train", "test"):
        frame, labels = load_japanese_vowels(split=split, return_X_y=True)
        # a nested frame: one row per utterance, one column per channel, each cell a series
        seqs = [
            torch.as_tensor(np.stack([cell.to_numpy() for cell in row]).T, dtype=torch.float32)
            for row in frame.itertuples(index=False)
        ]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        x = nn.utils.rnn.pad_sequence(seqs)  # [T_max, n, 12], zero-padded
        y = torch.as_tensor(labels.astype(int), dtype=torch.int64) - 1
        splits.append((x, lengths, y))
    (x_tr, l_tr, y_tr), (x_te, l_te, y_te) = splits
    valid = torch.arange(x_tr.shape[0])[:, None] < l_tr[None, :]  # [T_max, n]
    frames = x_tr[valid]  # every real training frame, [frames, 12]
    mean, std = frames.mean(0), frames.std(0)
    out = []
    for x, lengths, y in ((x_tr, l_tr, y_tr), (x_te, l_te, y_te)):
        mask = (torch.arange(x.shape[0])[:, None] < lengths[None, :]).unsqueeze(-1)
        x = torch.where(mask, (x - mean) / std, 0.0)
        out += [x.to(device), lengths.to(device), y.to(device)]
    return tuple(out)  # type: ignore[return-value]


class SequenceClassifier(nn.Module):
    """Linear -> AdLIF with a synaptic current -> Linear -> LI with a synaptic current; the
    readout's V at each sample's last step are the logits.

    The first Linear maps standardised frames to currents in mA; its bias starts near the
    10 mA that brings the AdLIF from V_rest = -65 mV to V_th = -55 mV, so the hidden layer
    fires from the first step of training.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__()
        dt = DT_MS * adex.u.ms
        self.fc1 = nn.Linear(n_in, n_hidden)
        nn.init.normal_(self.fc1.weight, mean=0.0, std=3.0)
        nn.init.constant_(self.fc1.bias, 11.0)
        self.hidden = adex.AdLIF(
            n_hidden,
            tau=torch.full((n_hidden,), 5.0) * adex.u.ms,
            tau_syn=torch.full((n_hidden,), 2.0) * adex.u.ms,
            a=0.5 * adex.u.siemens,
            b=0.5 * adex.u.mA,
            dt=dt,
            learnable=("tau", "tau_syn"),
        )
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.readout = adex.LI(n_out, tau=10 * adex.u.ms, tau_syn=5 * adex.u.ms, dt=dt)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Run the padded batch ``x`` ``[T, batch, n_in]`` with per-sample ``lengths``
        ``[batch]``.

        Returns:
            ``(logits, hidden)``: the readout's V (mV) after each sample's last step
            ``[batch, n_out]`` and the hidden spikes ``[T, batch, n_hidden]`` (zero past each
            sample's length).
        """
        batch = x.shape[1]
        self.hidden.init_state(batch_size=batch, device=x.device)
        self.readout.init_state(batch_size=batch, device=x.device)
        hidden = self.hidden(self.fc1(x), lengths=lengths)
        V = self.readout(self.fc2(hidden), lengths=lengths)  # [T, batch, n_out] mV, held
        return V[-1], hidden

    def clamp_(self) -> None:
        """Keep the learnable time constants in a valid, sensible range (ms)."""
        with torch.no_grad():
            self.hidden.tau.clamp_(min=1.0, max=50.0)
            self.hidden.tau_syn.clamp_(min=0.5, max=50.0)


def evaluate(
    model: SequenceClassifier, x: Tensor, lengths: Tensor, y: Tensor
) -> tuple[float, float]:
    """Accuracy and mean hidden spike probability per real (unpadded) step, no grad."""
    with torch.no_grad():
        logits, hidden = model(x, lengths)
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    rate = hidden.sum().item() / (lengths.sum().item() * hidden.shape[-1])
    return accuracy, rate


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options of ``python -m adex.demo --task sequence``."""
    parser = argparse.ArgumentParser(
        prog="python -m adex.demo --task sequence",
        description="Train Linear -> AdLIF(tau_syn) -> Linear -> LI(tau_syn) with BPTT and "
        "lengths= on the variable-length Japanese Vowels sequences (shipped in sktime).",
    )
    add_training_options(parser, epochs=30)
    return parse_training_options(parser, argv)


def train_batch(model, optimizer, x: Tensor, lengths: Tensor, y: Tensor) -> float:
    """One optimizer step on a padded batch trimmed to its longest sample; the loss."""
    T = int(lengths.max())
    logits, _ = model(x[:T], lengths)
    loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # BPTT through both scans, each sample over its own length
    optimizer.step()
    model.clamp_()
    return loss.item()


def main(argv: Sequence[str] | None = None) -> int:
    """Train, report loss, accuracy and time per epoch; return 0."""
    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # small [batch, 64] ops: threads cost more than they save
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, len_train, y_train, x_test, len_test, y_test = load_data(device)
    n_train = len(y_train)
    steps = args.steps or n_train // BATCH

    model = SequenceClassifier(N_IN, HIDDEN, CLASSES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    backend = resolve_backend(model.hidden.backend, x_test)
    print(f"adex {adex.__version__} sequence demo: torch {torch.__version__}, device {device}, "
          f"backend {backend}")  # fmt: skip
    print(
        f"data: Japanese Vowels ({n_train} train / {len(y_test)} test utterances, 12 channels, "
        f"{int(len_train.min())}..{int(max(len_train.max(), len_test.max()))} frames), one "
        f"frame per {DT_MS:g} ms step, padded batches with lengths="
    )
    print(
        f"network: {N_IN} -> AdLIF({HIDDEN}, tau_syn, learnable tau, tau_syn) -> "
        f"LI({CLASSES}, tau_syn), V at the last frame; {args.epochs} epochs x {steps} steps, "
        f"batch {BATCH}, seed {args.seed}"
    )
    acc0, _ = evaluate(model, x_test, len_test, y_test)
    print(f"before training: test accuracy {acc0:.3f} (chance {1 / CLASSES:.2f})")

    perm, pos, total_time = torch.randperm(n_train, generator=gen), 0, 0.0
    for epoch in range(1, args.epochs + 1):
        start, total = time.perf_counter(), 0.0
        for _ in range(steps):
            if pos + BATCH > n_train:
                perm, pos = torch.randperm(n_train, generator=gen), 0
            idx = perm[pos : pos + BATCH].to(device)
            pos += BATCH
            total += train_batch(model, optimizer, x_train[:, idx], len_train[idx], y_train[idx])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        total_time += elapsed
        accuracy, rate = evaluate(model, x_test, len_test, y_test)
        print(
            f"epoch {epoch:3d}: mean training loss {total / steps:.4f}, test accuracy "
            f"{accuracy:.3f}, {elapsed:.2f} s"
        )

    tau, tau_syn = model.hidden.tau.detach(), model.hidden.tau_syn.detach()
    print(f"test accuracy {accuracy:.3f} on {len(y_test)} held-out utterances "
          f"(chance {1 / CLASSES:.2f})")  # fmt: skip
    print(f"hidden spike rate {rate:.3f} spikes/neuron/step")
    print(
        f"learned hidden tau {tau.min():.1f}..{tau.max():.1f} ms, tau_syn "
        f"{tau_syn.min():.1f}..{tau_syn.max():.1f} ms"
    )
    per_epoch = total_time / args.epochs
    print(f"training time {total_time:.1f} s ({per_epoch:.2f} s per epoch)")
    return 0
