"""Minimal DRAM bytes per neuron-step of the fused AdEx scans (version 1 and 2 kernels).

A *neuron-step* is one element of ``x`` (``[T, *S]``): one neuron of one sample at one time
step. The model counts only the per-neuron-step tensors that a scan must move; the per-neuron
state and parameters (``V0``, ``w0``, ``V_last``, ``w_last``, the ``[10, N]`` packed
parameters, ``last_spike_time``) are read or written once per neuron, not once per step, and
are left out (relative size ``~1/T``).

Let ``s`` be the byte size of the input dtype (fp32: 4, bf16/fp16: 2). ``spikes`` and
``grad_x`` have ``x``'s dtype unless ``spike_dtype`` says otherwise; the saved ``V`` sequence
is always fp32.

Default mode
------------

Forward (``kernels/scan_fwd.py``), one neuron-step:

- read ``x``: ``s``
- write ``spikes``: ``s`` (1 with ``spike_dtype`` uint8/bool, allowed only without grad)
- write ``V`` (fp32, saved for backward) when a gradient is needed: ``4``
- a learnable ``tau_w``: also write ``w`` (fp32, the tau_w gradient reads it): ``4``
- refractory models (``tau_ref``) when a gradient is needed: write the refractory flags,
  1 bit each (8 steps per uint8; version 1 wrote a whole byte): ``1/8``

Backward (``kernels/scan_bwd.py``), one neuron-step:

- read ``V`` (fp32; the next step's V is carried in registers): ``4``
- read ``grad_spikes``: ``s``
- write ``grad_x``: ``s``
- a learnable ``tau_w``: also read ``w``: ``4``
- refractory models: read the flags: ``1/8``

Resulting numbers (plain AdExIF, ``x`` requires grad, no learnable parameters, no refractory
period)::

    dtype  fwd(no grad)  fwd(no grad, 1 B spikes)  fwd  bwd  fwd+bwd
    fp32        8                  5                12   12     24
    bf16        4                  3                 8    8     16
    fp16        4                  3                 8    8     16

A learnable tau_w adds 4 B to the forward and 4 B to the backward (+8 B for fwd+bwd; no
other learnable parameter needs the w sequence);
a refractory model adds 1/8 B to each (+1/4 B for fwd+bwd; 1 B each in version 1).

Checkpoint mode (``checkpoint_every=K``)
----------------------------------------

The forward saves no per-step sequence: it writes the state before steps 0, K, 2K, ...
(``[cdiv(T, K), C, *S]`` fp32, ``C = 1 + has_w + refractory`` rows: V, w, last spike time),
``4C/K`` B per neuron-step (exactly ``4C * cdiv(T, K) / T``), and autograd keeps a reference
to ``x`` (no copy). The backward, per K-step segment (last first), reads the segment's
checkpoint, recomputes the forward from ``x`` into a ``[min(K, T), M]`` fp32 scratch (plus a
bit-packed flag scratch for refractory models and a fp32 w scratch for a learnable tau_w),
then runs the adjoint over the scratch.

- forward: read ``x`` (``s``) + write spikes (``s``) + write checkpoints (``4C/K``)
- backward, DRAM: read ``x`` (``s``) + read ``grad_spikes`` (``s``) + write ``grad_x``
  (``s``) + read checkpoints (``4C/K``)
- backward scratch, written then read back per segment: V ``8`` (+ flags ``2/8`` for refractory
  models, + w ``8`` for a learnable tau_w). It is rewritten at the same addresses
  every segment and a program's share (``K * BLOCK * 4`` B) is small, so it should mostly
  stay in L2; the model is given without it (``scratch=False``: DRAM only) and with it
  (``scratch=True``: every scratch byte counted as DRAM traffic).

Plain AdExIF (C = 2), ``K = 32``: forward ``2s + 0.25``, backward ``3s + 0.25`` (``+ 8`` with
scratch); fwd+bwd fp32 20.5 B (28.5 with scratch) against 24 B by default; bf16/fp16 10.5 B
(18.5) against 16 B. Newly saved for backward: ``0.25`` B against ``4`` B by default.

The model is a lower bound on traffic for *this* algorithm. The prediction for a memory-bound
kernel is ``time = bytes_per_neuron_step * T * prod(S) / copy_bandwidth``.
"""

from __future__ import annotations

import argparse
import math

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes per element of the supported input dtypes."""

MODES = ("fwd_nograd", "fwd", "bwd", "full")
"""``fwd_nograd``: inference forward (no V written); ``fwd``: training forward (V saved);
``bwd``: the backward kernel alone; ``full``: ``fwd`` + ``bwd``."""

F32 = 4
MASK = 1 / 8  # refractory flags: 1 bit per neuron-step, packed 8 to a byte
BYTE_SPIKES = ("uint8", "bool")
"""Spike dtypes written with one byte per neuron-step (no gradient)."""
SCRATCH_V = 2 * F32  # checkpoint backward: fp32 V scratch, written then read
SCRATCH_W = 2 * F32  # fp32 w scratch (a learnable tau_w)
SCRATCH_MASK = 2 * MASK  # refractory flag scratch, written and read
DEFAULT_K = 32
"""Checkpoint interval of the printed table and the roofline rows."""


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


def is_byte_spike(spike_dtype: object) -> bool:
    """True for ``torch.uint8`` / ``torch.bool`` (or their names): 1 B, no gradient."""
    return spike_dtype is not None and str(spike_dtype).replace("torch.", "") in BYTE_SPIKES


def spike_bytes(dtype: object, spike_dtype: object = None) -> int:
    """Bytes per spike written: ``x``'s dtype when ``spike_dtype`` is None, 1 for uint8/bool,
    else the size of the float ``spike_dtype`` (float64: 8)."""
    if spike_dtype is None:
        return DTYPE_BYTES[dtype_name(dtype)]
    if is_byte_spike(spike_dtype):
        return 1
    if str(spike_dtype).replace("torch.", "") in ("float64", "double"):
        return 8
    return DTYPE_BYTES[dtype_name(spike_dtype)]


def forward_bytes(
    dtype: object,
    *,
    needs_grad: bool = True,
    learnable: bool = False,
    refractory: bool = False,
    spike_dtype: object = None,
) -> float:
    """Bytes per neuron-step of the forward scan.

    ``s`` (read x) ``+ s`` (write spikes; 1 for uint8/bool ``spike_dtype``) ``+ 4`` (fp32 V)
    when a gradient is needed ``+ 4`` (fp32 w) for a learnable tau_w ``+ 1`` (uint8
    refractory flags, 1 bit) for refractory models with a gradient. fp32: 12 B (8 B without grad,
    5 B with 1-byte spikes); bf16/fp16: 8 B (4 B, 3 B).
    """
    if needs_grad and is_byte_spike(spike_dtype):
        raise ValueError(f"spike_dtype={spike_dtype} carries no gradient: no-grad forward only")
    total = DTYPE_BYTES[dtype_name(dtype)] + spike_bytes(dtype, spike_dtype)
    if needs_grad:
        total += F32
        if learnable:
            total += F32
        if refractory:
            total += MASK
    return total


def backward_bytes(dtype: object, *, learnable: bool = False, refractory: bool = False) -> float:
    """Bytes per neuron-step of the backward scan.

    ``4`` (read fp32 V) ``+ 2*s`` (read grad spikes, write grad x) ``+ 4`` (read fp32 w) for
    a learnable tau_w ``+ 1/8`` (read the refractory flags). fp32: 12 B; bf16/fp16: 8 B.
    """
    s = DTYPE_BYTES[dtype_name(dtype)]
    total = F32 + 2 * s
    if learnable:
        total += F32
    if refractory:
        total += MASK
    return total


def full_bytes(dtype: object, *, learnable: bool = False, refractory: bool = False) -> float:
    """Bytes per neuron-step of a training step (forward with grad + backward).

    fp32: 24 B; bf16/fp16: 16 B; learnable +8 B; refractory +2 B.
    """
    return forward_bytes(
        dtype, needs_grad=True, learnable=learnable, refractory=refractory
    ) + backward_bytes(dtype, learnable=learnable, refractory=refractory)


def checkpoint_rows(*, has_w: bool = True, refractory: bool = False) -> int:
    """Rows ``C`` of one state checkpoint: V, then w (models with w), then the last spike
    time (refractory models). AdExIF: 2."""
    return 1 + int(has_w) + int(refractory)


def checkpoint_bytes(
    K: int, *, has_w: bool = True, refractory: bool = False, T: int | None = None
) -> float:
    """fp32 checkpoint bytes per neuron-step: ``4C/K``, or exactly ``4C * cdiv(T, K) / T``
    when ``T`` is given. AdExIF, K = 32: 0.25."""
    if not (isinstance(K, int) and K >= 1):
        raise ValueError(f"checkpoint_every must be an int >= 1, got {K!r}")
    per_checkpoint = F32 * checkpoint_rows(has_w=has_w, refractory=refractory)
    if T is None:
        return per_checkpoint / K
    return per_checkpoint * math.ceil(T / K) / T


def scratch_bytes(
    *, has_w: bool = True, learnable: bool = False, refractory: bool = False
) -> float:
    """Scratch bytes per neuron-step of the checkpoint backward (each written once and read
    once): fp32 V ``8`` ``+ 8`` fp32 w for a learnable tau_w ``+ 2/8`` refractory
    flags for refractory models."""
    total = SCRATCH_V
    if learnable and has_w:
        total += SCRATCH_W
    if refractory:
        total += SCRATCH_MASK
    return total


def checkpoint_forward_bytes(
    dtype: object,
    K: int,
    *,
    has_w: bool = True,
    refractory: bool = False,
    T: int | None = None,
) -> float:
    """Forward with ``checkpoint_every=K``: ``2*s`` (read x, write spikes) plus the
    checkpoints (``4C/K``). Learnable parameters add nothing (w is recomputed)."""
    s = DTYPE_BYTES[dtype_name(dtype)]
    return 2 * s + checkpoint_bytes(K, has_w=has_w, refractory=refractory, T=T)


def checkpoint_backward_bytes(
    dtype: object,
    K: int,
    *,
    has_w: bool = True,
    learnable: bool = False,
    refractory: bool = False,
    scratch: bool = False,
    T: int | None = None,
) -> float:
    """Backward with ``checkpoint_every=K``: ``3*s`` (read x and grad spikes, write grad x)
    plus the checkpoints read back (``4C/K``); with ``scratch`` also the recompute scratch
    (:func:`scratch_bytes`) as if none of it stayed in L2."""
    s = DTYPE_BYTES[dtype_name(dtype)]
    total = 3 * s + checkpoint_bytes(K, has_w=has_w, refractory=refractory, T=T)
    if scratch:
        total += scratch_bytes(has_w=has_w, learnable=learnable, refractory=refractory)
    return total


def checkpoint_full_bytes(
    dtype: object,
    K: int,
    *,
    has_w: bool = True,
    learnable: bool = False,
    refractory: bool = False,
    scratch: bool = False,
    T: int | None = None,
) -> float:
    """Training step (forward + backward) with ``checkpoint_every=K``. AdExIF, K = 32: fp32
    20.5 B (28.5 with scratch), bf16/fp16 10.5 B (18.5)."""
    fwd = checkpoint_forward_bytes(dtype, K, has_w=has_w, refractory=refractory, T=T)
    return fwd + checkpoint_backward_bytes(
        dtype, K, has_w=has_w, learnable=learnable, refractory=refractory, scratch=scratch, T=T
    )


def saved_bytes(
    *,
    learnable: bool = False,
    refractory: bool = False,
    checkpoint_every: int | None = None,
    has_w: bool = True,
    T: int | None = None,
) -> float:
    """Bytes per neuron-step newly allocated and kept for backward (``x`` itself is only
    referenced). Default mode: V ``4`` (+ w ``4`` learnable, + flags ``1/8`` refractory);
    checkpoint mode: the checkpoints, :func:`checkpoint_bytes`."""
    if checkpoint_every is not None:
        return checkpoint_bytes(checkpoint_every, has_w=has_w, refractory=refractory, T=T)
    return F32 + F32 * int(learnable) + MASK * int(refractory)


def bytes_per_neuron_step(
    mode: str,
    dtype: object,
    *,
    learnable: bool = False,
    refractory: bool = False,
    spike_dtype: object = None,
    checkpoint_every: int | None = None,
    scratch: bool = False,
    has_w: bool = True,
    T: int | None = None,
) -> float:
    """Bytes per neuron-step for one of :data:`MODES`.

    ``spike_dtype`` applies to ``fwd_nograd`` (uint8/bool need it); ``checkpoint_every``,
    ``scratch``, ``has_w`` and ``T`` to ``fwd``/``bwd``/``full`` in checkpoint mode (without a
    gradient adex_scan ignores ``checkpoint_every``, and so does ``fwd_nograd`` here)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "fwd_nograd":
        return forward_bytes(dtype, needs_grad=False, spike_dtype=spike_dtype)
    if checkpoint_every is not None:
        opts = {"has_w": has_w, "refractory": refractory, "T": T}
        if mode == "fwd":
            return checkpoint_forward_bytes(dtype, checkpoint_every, **opts)
        opts.update(learnable=learnable, scratch=scratch)
        if mode == "bwd":
            return checkpoint_backward_bytes(dtype, checkpoint_every, **opts)
        return checkpoint_full_bytes(dtype, checkpoint_every, **opts)
    if mode == "fwd":
        return forward_bytes(
            dtype, learnable=learnable, refractory=refractory, spike_dtype=spike_dtype
        )
    if mode == "bwd":
        return backward_bytes(dtype, learnable=learnable, refractory=refractory)
    return full_bytes(dtype, learnable=learnable, refractory=refractory)


def total_bytes(mode: str, dtype: object, neuron_steps: int, **options) -> float:
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


def spike_table() -> list[dict[str, object]]:
    """No-grad forward bytes with float spikes (x's dtype) and with 1-byte spikes."""
    rows = []
    for dtype in DTYPE_BYTES:
        same = forward_bytes(dtype, needs_grad=False)
        one = forward_bytes(dtype, needs_grad=False, spike_dtype="uint8")
        rows.append({"dtype": dtype, "float_spikes": same, "byte_spikes": one, "ratio": one / same})
    return rows


def checkpoint_table(K: int = DEFAULT_K) -> list[dict[str, object]]:
    """Checkpoint-mode bytes (models with w) next to the default mode, per dtype and option."""
    rows = []
    for dtype in DTYPE_BYTES:
        for learnable in (False, True):
            for refractory in (False, True):
                opts = {"learnable": learnable, "refractory": refractory}
                ck = {"checkpoint_every": K, **opts}
                default_full = bytes_per_neuron_step("full", dtype, **opts)
                full = bytes_per_neuron_step("full", dtype, **ck)
                full_scr = bytes_per_neuron_step("full", dtype, scratch=True, **ck)
                rows.append({
                    "dtype": dtype, **opts, "K": K,
                    "fwd": bytes_per_neuron_step("fwd", dtype, **ck),
                    "bwd": bytes_per_neuron_step("bwd", dtype, **ck),
                    "bwd_scratch": bytes_per_neuron_step("bwd", dtype, scratch=True, **ck),
                    "full": full, "full_scratch": full_scr, "default_full": default_full,
                    "full_vs_default": full / default_full,
                    "full_scratch_vs_default": full_scr / default_full,
                    "saved": saved_bytes(checkpoint_every=K, **opts),
                    "default_saved": saved_bytes(**opts),
                })  # fmt: skip
    return rows


def print_tables(K: int = DEFAULT_K) -> None:
    """The three tables on stdout."""
    print("default mode, B per neuron-step")
    print("dtype learnable refractory " + " ".join(f"{m:>10}" for m in MODES))
    for r in table():
        cells = " ".join(f"{r[m]:>10}" for m in MODES)
        print(f"{r['dtype']:5} {r['learnable']!s:9} {r['refractory']!s:10} {cells}")
    print("\nno-grad forward, B per neuron-step: spikes in x's dtype vs uint8/bool")
    print("dtype float_spikes byte_spikes ratio")
    for r in spike_table():
        print(f"{r['dtype']:5} {r['float_spikes']:>12} {r['byte_spikes']:>11} {r['ratio']:>5.3f}")
    print(f"\ncheckpoint mode K={K} (models with w), B per neuron-step; '+scr': recompute "
          "scratch counted as DRAM; saved: newly allocated for backward")  # fmt: skip
    cols = ("fwd", "bwd", "bwd_scratch", "full", "full_scratch", "default_full",
            "full_vs_default", "full_scratch_vs_default", "saved", "default_saved")  # fmt: skip
    heads = ("fwd", "bwd", "bwd+scr", "full", "full+scr", "dflt_full", "full/dflt",
             "+scr/dflt", "saved", "dflt_saved")  # fmt: skip
    print("dtype learnable refractory " + " ".join(f"{h:>10}" for h in heads))
    for r in checkpoint_table(K):
        cells = " ".join(f"{r[c]:>10.3f}" if "vs" in c else f"{r[c]:>10g}" for c in cols)
        print(f"{r['dtype']:5} {r['learnable']!s:9} {r['refractory']!s:10} {cells}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print the bytes model as tables.")
    ap.add_argument(
        "--checkpoint-every", type=int, default=DEFAULT_K, help="K of the checkpoint table"
    )
    print_tables(ap.parse_args(argv).checkpoint_every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
