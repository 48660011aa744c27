"""The eight Naud et al. (2008) firing patterns (:mod:`adex.presets`) simulated as one AdExIF
layer: their spike statistics, a plot of their voltage traces and a table of both (what
``adex patterns`` prints and saves).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import adex
from adex.presets import NaudPattern, stacked_module_kwargs

__all__ = ["PatternStats", "adaptation_index", "format_table", "plot_patterns", "simulate_patterns"]


@dataclass
class PatternStats:
    """Spike statistics of one simulated pattern (times in ms)."""

    name: str
    spike_times: list[float]

    @property
    def count(self) -> int:
        """Number of spikes."""
        return len(self.spike_times)

    @property
    def latency(self) -> float:
        """Time of the first spike (ms), NaN without a spike."""
        return self.spike_times[0] if self.spike_times else math.nan

    @property
    def adaptation_index(self) -> float:
        """Naud et al.'s adaptation index: the mean over consecutive inter-spike intervals of
        ``(ISI[k+1] - ISI[k]) / (ISI[k+1] + ISI[k])`` (> 0: slowing down, < 0: speeding up,
        ~ 0: regular). NaN with fewer than three spikes."""
        return adaptation_index(self.spike_times)


def adaptation_index(spike_times: Sequence[float]) -> float:
    """Mean of ``(ISI[k+1] - ISI[k]) / (ISI[k+1] + ISI[k])`` over all consecutive ISI pairs
    (Naud et al. 2008, with no initial ISI discarded); NaN with fewer than 3 spikes."""
    isi = [b - a for a, b in itertools.pairwise(spike_times)]
    terms = [(b - a) / (b + a) for a, b in itertools.pairwise(isi)]
    return sum(terms) / len(terms) if terms else math.nan


def simulate_patterns(
    patterns: Sequence[NaudPattern],
    duration_ms: float = 500.0,
    dt_ms: float = 0.1,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[PatternStats]]:
    """Simulate each pattern as one neuron of a single AdExIF layer (hard reset, V_th at the
    0 mV peak), from rest (V = E_L, w = 0) under its step current switched on at t = 0.

    Returns:
        ``(t, V, stats)``: step end times ``[T]`` (ms), the stored V ``[T, n]`` (mV,
        pre-reset: a spiking step stores V >= 0 mV) on the CPU, and per-pattern
        :class:`PatternStats`. A spike at step k is timed at the end of that step,
        ``(k + 1) * dt``.

    Raises:
        ValueError: ``duration_ms`` is shorter than one step.
    """
    steps = round(duration_ms / dt_ms)
    if steps < 1:
        raise ValueError(
            f"duration_ms = {duration_ms:g} ms is shorter than one step of {dt_ms:g} ms"
        )
    device = torch.device(device)
    kwargs, current = stacked_module_kwargs(list(patterns))
    layer = adex.AdExIF(len(patterns), dt=dt_ms, backend=backend, **kwargs).to(device)
    layer.init_state(device=device)
    current = current.to(device)
    chunk = max(1, round(50.0 / dt_ms))  # 50 ms per call: the module carries the state on
    spikes, V = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="simulating", unit="step", leave=False, disable=None)
    with torch.inference_mode():
        done = 0
        while done < steps:
            n = min(chunk, steps - done)
            out = layer(current.expand(n, -1), return_states=True)
            spikes.append(out.spikes.cpu())
            V.append(out.V.cpu())
            done += n
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    spikes_t = torch.cat(spikes)
    V_t = torch.cat(V).double()
    t = (torch.arange(steps, dtype=torch.float64) + 1) * dt_ms
    stats = []
    for i, p in enumerate(patterns):
        idx = torch.nonzero(spikes_t[:, i]).flatten()
        stats.append(PatternStats(p.name, [float(t[k]) for k in idx]))
    return t, V_t, stats


def plot_patterns(
    t: torch.Tensor,
    V: torch.Tensor,
    patterns: Sequence[NaudPattern],
    stats: Sequence[PatternStats],
    out: Path,
) -> None:
    """One PNG with the voltage trace of every pattern (V clipped at the 0 mV peak).

    Raises:
        ImportError: matplotlib is not installed.
        OSError: ``out`` cannot be written.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError as err:
        raise ImportError("matplotlib is needed for the plot: pip install matplotlib") from err
    ncols = 2
    nrows = math.ceil(len(patterns) / ncols)
    fig = Figure(figsize=(12, 2.3 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    t_np = torch.cat([torch.zeros(1, dtype=t.dtype), t]).numpy()  # from rest at t = 0
    for i, (p, s) in enumerate(zip(patterns, stats, strict=True)):
        ax = axes[i // ncols][i % ncols]
        peak = p.peak.to("mV").magnitude
        trace = torch.cat([V.new_full((1,), p.EL.to("mV").magnitude), V[:, i]])
        ax.plot(t_np, trace.clamp(max=peak).numpy(), lw=0.8, color="C0")
        title = p.name.replace("_", " ") + (" (adapted values)" if p.adapted else "")
        spikes = f"{s.count} spike{'' if s.count == 1 else 's'}"
        ax.set_title(f"{title}: {spikes}, I = {p.current.to('pA').magnitude:g} pA", fontsize=10)
        ax.set_ylabel("V (mV)")
        ax.set_ylim(-80, 5)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("t (ms)")
    for j in range(len(patterns), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle(
        "AdExIF firing patterns of Naud et al. (2008), step current from t = 0 "
        f"(adex {adex.__version__})"
    )
    fig.savefig(out, dpi=100)


def format_table(stats: Sequence[PatternStats]) -> str:
    """The pattern table as aligned plain text (NaN shown as ``-``)."""

    def num(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    header = ("pattern", "spikes", "first spike (ms)", "adaptation index")
    rows = [
        (s.name, str(s.count), num(s.latency, ".1f"), num(s.adaptation_index, "+.3f"))
        for s in stats
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    lines = []
    for r in (header, *rows):
        cells = [r[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
