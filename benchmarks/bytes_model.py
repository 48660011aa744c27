"""Minimal DRAM bytes per neuron-step of the fused AdEx scans (version 1 kernels).

A *neuron-step* is one element of ``x`` (``[T, *S]``): one neuron of one sample at one time
step. The model counts only the per-neuron-step tensors that a scan must move; the per-neuron
state and parameters (``V0``, ``w0``, ``V_last``, ``w_last``, the ``[10, N]`` packed
parameters, ``last_spike_time``) are read or written once per neuron, not once per step, and
are left out (relative size ``~1/T``).

Let ``s`` be the byte size of the input dtype (fp32: 4, bf16/fp16: 2). ``spikes`` and
``grad_x`` have ``x``'s dtype; the saved ``V`` sequence is always fp32.

Forward (``kernels/scan_fwd.py``), one neuron-step:

- read ``x``: ``s``
- write ``spikes``: ``s``
- write ``V`` (fp32, saved for backward) when a gradient is needed: ``4``
- learnable parameters (models with w): also write ``w`` (fp32, the tau_w gradient reads it): ``4``
- refractory models (``tau_ref``) when a gradient is needed: write the uint8 mask: ``1``

Backward (``kernels/scan_bwd.py``), one neuron-step:

- read ``V`` (fp32; the next step's V is carried in registers): ``4``
- read ``grad_spikes``: ``s``
- write ``grad_x``: ``s``
- learnable parameters (models with w): also read ``w``: ``4``
- refractory models: read the mask: ``1``

Resulting numbers (plain AdExIF, ``x`` requires grad, no learnable parameters, no refractory
period)::

    dtype  fwd(no grad)  fwd  bwd  fwd+bwd
    fp32        8         12   12     24
    bf16        4          8    8     16
    fp16        4          8    8     16

Learnable parameters add 4 B to the forward and 4 B to the backward (+8 B for fwd+bwd);
a refractory model adds 1 B to each (+2 B for fwd+bwd).

The model is a lower bound on traffic for *this* algorithm (recompute everything else from V
in the backward). The prediction for a memory-bound kernel is
``time = bytes_per_neuron_step * T * prod(S) / copy_bandwidth``.
"""

from __future__ import annotations

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes per element of the supported input dtypes."""

MODES = ("fwd_nograd", "fwd", "bwd", "full")
"""``fwd_nograd``: inference forward (no V written); ``fwd``: training forward (V saved);
``bwd``: the backward kernel alone; ``full``: ``fwd`` + ``bwd``."""

F32 = 4
MASK = 1


def dtype_name(dtype: object) -> str:
    """'fp32' / 'bf16' / 'fp16' for a torch dtype or one of those names."""
    text = str(dtype).replace("torch.", "")
    aliases = {
        "float32": "fp32",
        "float": "fp32",
        "fp32": "fp32",
        "bfloat16": "bf16",
        "bf16": "bf16",
        "float16": "fp16",
        "half": "fp16",
        "fp16": "fp16",
    }
    if text not in aliases:
        raise ValueError(f"the fused kernels take fp32/bf16/fp16 input, got {dtype!r}")
    return aliases[text]


def forward_bytes(
    dtype: object, *, needs_grad: bool = True, learnable: bool = False, refractory: bool = False
) -> int:
    """Bytes per neuron-step of the forward scan.

    ``2*s`` (read x, write spikes) ``+ 4`` (fp32 V) when a gradient is needed ``+ 4`` (fp32 w)
    for learnable parameters ``+ 1`` (uint8 refractory mask) for refractory models with a
    gradient. fp32: 12 B (8 B without grad); bf16/fp16: 8 B (4 B without grad).
    """
    s = DTYPE_BYTES[dtype_name(dtype)]
    total = 2 * s
    if needs_grad:
        total += F32
        if learnable:
            total += F32
        if refractory:
            total += MASK
    return total


def backward_bytes(dtype: object, *, learnable: bool = False, refractory: bool = False) -> int:
    """Bytes per neuron-step of the backward scan.

    ``4`` (read fp32 V) ``+ 2*s`` (read grad spikes, write grad x) ``+ 4`` (read fp32 w) for
    learnable parameters ``+ 1`` (read the refractory mask). fp32: 12 B; bf16/fp16: 8 B.
    """
    s = DTYPE_BYTES[dtype_name(dtype)]
    total = F32 + 2 * s
    if learnable:
        total += F32
    if refractory:
        total += MASK
    return total


def full_bytes(dtype: object, *, learnable: bool = False, refractory: bool = False) -> int:
    """Bytes per neuron-step of a training step (forward with grad + backward).

    fp32: 24 B; bf16/fp16: 16 B; learnable +8 B; refractory +2 B.
    """
    return forward_bytes(
        dtype, needs_grad=True, learnable=learnable, refractory=refractory
    ) + backward_bytes(dtype, learnable=learnable, refractory=refractory)


def bytes_per_neuron_step(
    mode: str, dtype: object, *, learnable: bool = False, refractory: bool = False
) -> int:
    """Bytes per neuron-step for one of :data:`MODES`."""
    if mode == "fwd_nograd":
        return forward_bytes(dtype, needs_grad=False)
    if mode == "fwd":
        return forward_bytes(dtype, learnable=learnable, refractory=refractory)
    if mode == "bwd":
        return backward_bytes(dtype, learnable=learnable, refractory=refractory)
    if mode == "full":
        return full_bytes(dtype, learnable=learnable, refractory=refractory)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def total_bytes(mode: str, dtype: object, neuron_steps: int, **options: bool) -> int:
    """Minimal bytes moved by one call over ``neuron_steps = T * prod(S)`` neuron-steps."""
    return bytes_per_neuron_step(mode, dtype, **options) * neuron_steps


def predicted_ms(mode: str, dtype: object, neuron_steps: int, copy_gbps: float, **options) -> float:
    """Memory-bound prediction: ``bytes / copy bandwidth`` in milliseconds."""
    return total_bytes(mode, dtype, neuron_steps, **options) / (copy_gbps * 1e9) * 1e3


def table() -> list[dict[str, object]]:
    """The model as rows (dtype, options, bytes per mode), for NOTES.md and the reports."""
    rows = []
    for dtype in DTYPE_BYTES:
        for learnable in (False, True):
            for refractory in (False, True):
                opts = {"learnable": learnable, "refractory": refractory}
                row: dict[str, object] = {"dtype": dtype, **opts}
                for mode in MODES:
                    row[mode] = bytes_per_neuron_step(mode, dtype, **opts)
                rows.append(row)
    return rows


if __name__ == "__main__":
    print("dtype learnable refractory " + " ".join(f"{m:>10}" for m in MODES))
    for r in table():
        cells = " ".join(f"{r[m]:>10}" for m in MODES)
        print(f"{r['dtype']:5} {r['learnable']!s:9} {r['refractory']!s:10} {cells}")
