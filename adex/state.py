"""Model-wide state helpers: ``init_state``, ``reset_state`` and ``detach_state`` over every
adex layer inside any ``nn.Module`` (an ``nn.Sequential`` of ``nn.Linear`` and adex layers,
a custom network), so a training loop needs one line per batch."""

from __future__ import annotations

import torch
from torch import nn

from adex.module import SpikingNeuron


def spiking_layers(module: nn.Module) -> list[SpikingNeuron]:
    """The adex layers inside ``module`` (itself included), in ``module.modules()`` order."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    return [m for m in module.modules() if isinstance(m, SpikingNeuron)]


def init_state(
    module: nn.Module,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Call ``init_state(batch_size, device, dtype)`` on every adex layer in ``module``:
    each state becomes ``(batch_size, *in_size)`` (or ``in_size``) from its initializers,
    on ``device`` (default: each layer's own device), and each clock restarts at step 0.

    Raises ``ValueError`` when ``module`` holds no adex layer (a misplaced call)."""
    layers = spiking_layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no adex layer")
    for layer in layers:
        layer.init_state(batch_size, device=device, dtype=dtype)


def reset_state(
    module: nn.Module,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Same as :func:`init_state` (BrainPy's name for refilling the states)."""
    init_state(module, batch_size, device=device, dtype=dtype)


def detach_state(module: nn.Module) -> None:
    """Call ``detach_state()`` on every adex layer in ``module``: the states keep their
    values and leave the autograd graph, so the next chunk of a truncated-BPTT loop can
    call ``backward()`` again. Layers without a state are left alone."""
    layers = spiking_layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no adex layer")
    for layer in layers:
        layer.detach_state()
