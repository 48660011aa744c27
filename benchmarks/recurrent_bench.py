"""Time forward + backward of ``adex.Recurrent`` (the fused recurrent kernels) against the
step loop ``s = neuron.update(x[t] + s @ weight.T)`` eager and under ``torch.compile``.

Usage (CUDA)::

    python benchmarks/recurrent_bench.py                  # T=500, batch 64, N=256, fp32
    python benchmarks/recurrent_bench.py --T 100 --n 128 --json rec.json
    python benchmarks/recurrent_bench.py --smoke          # tiny shapes on CPU (interpreter):
                                                          # checks the script, no speed

Each variant runs ``init_state``, the forward over ``x [T, batch, N]`` and the backward of
a fixed random cotangent of the spikes (weight and x gradients), timed by
``harness.Bench`` (CUDA events / ``do_bench``). The issue's target is >= 20x over the
eager step loop; only figures measured on a card are speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled loop")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes")
    parser.add_argument("--json", type=Path, metavar="PATH")
    opts = parser.parse_args(argv)
    if opts.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        opts.T, opts.batch, opts.n, opts.no_compile = 4, 2, 16, True
    import torch
    from harness import Bench

    import adex

    if not opts.smoke and not torch.cuda.is_available():
        print("recurrent_bench.py needs a CUDA GPU (use --smoke to check it on CPU)")
        return 2
    device = "cpu" if opts.smoke else "cuda"
    T, B, N = opts.T, opts.batch, opts.n
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(T, B, N, device=device, generator=gen) * 15 + 40
    cot = torch.randn(T, B, N, device=device, generator=gen)
    fused = adex.Recurrent(adex.AdExIF(N, backend="triton"), init_scale=20.0).to(device)
    looped = copy.deepcopy(fused)

    def step_loop(layer, xx):
        s, out = layer.spikes, []
        for t in range(xx.shape[0]):
            s = layer.neuron.update(xx[t] + s @ layer.weight.T)
            out.append(s)
        return torch.stack(out)

    def fwd_bwd(layer, run):
        def fn():
            layer.init_state(B, device=device)
            xx = x.detach().requires_grad_()
            (run(layer, xx) * cot).sum().backward()

        return fn

    check = agreement(torch, fused, looped, step_loop, x, cot, B, device)
    print(
        "check, fused vs eager step loop (same weight, unquantized: the product's order of "
        f"additions differs): {check}"
    )
    variants = {
        "fused": fwd_bwd(fused, lambda layer, xx: layer(xx)),
        "step loop, eager": fwd_bwd(looped, step_loop),
    }
    if not opts.no_compile:
        compiled_loop = torch.compile(step_loop)
        variants["step loop, torch.compile"] = fwd_bwd(copy.deepcopy(fused), compiled_loop)
        compiled_layer = copy.deepcopy(fused)
        compiled_fused = torch.compile(compiled_layer, fullgraph=True)  # the op pair
        variants["fused, torch.compile"] = fwd_bwd(
            compiled_layer, lambda layer, xx: compiled_fused(xx)
        )
    bench = Bench(torch, smoke=opts.smoke, quick=False, deadline=time.monotonic() + 540)
    rows = {name: bench(fn) for name, fn in variants.items()}
    card = "CPU smoke (not speed)" if opts.smoke else torch.cuda.get_device_name()
    print(f"fwd+bwd, T={T}, batch={B}, N={N}, fp32, {card}")
    base = rows["step loop, eager"].get("median_ms")
    for name, row in rows.items():
        ms = row.get("median_ms")
        ratio = f"{base / ms:.1f}x" if ms and base else "-"
        shown = f"{ms:.3f} ms" if ms else row.get("note", row["status"])
        print(f"  {name:28s} {shown:>14s}   vs eager loop: {ratio}")
    if opts.json:
        opts.json.write_text(json.dumps(dict(T=T, batch=B, n=N, card=card, rows=rows,
                                             check=check), indent=2))  # fmt: skip
    return 0


def agreement(torch, fused, looped, step_loop, x, cot, batch: int, device) -> dict:
    """One fwd+bwd of the fused layer and of the eager step loop from the same state:
    the fraction of differing spikes and the gradients' largest differences relative to the
    step loop's largest gradient (x and the weight)."""
    runs = []
    for layer, run in ((fused, lambda layer, xx: layer(xx)), (looped, step_loop)):
        layer.init_state(batch, device=device)
        layer.weight.grad = None
        xx = x.detach().requires_grad_()
        spikes = run(layer, xx)
        (spikes * cot).sum().backward()
        runs.append((spikes.detach(), xx.grad, layer.weight.grad))
    (s_f, gx_f, gw_f), (s_l, gx_l, gw_l) = runs

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    return dict(spikes=float(s_l.sum()), spikes_differ=float((s_f != s_l).float().mean()),
                grad_x_rel=rel(gx_f, gx_l), grad_weight_rel=rel(gw_f, gw_l))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
