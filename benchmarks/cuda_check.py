"""Compiled-kernel correctness on CUDA: the fused kernels against the reference.

Runs every model (AdExIF, AdExIFRef, ExpIF, ExpIFRef, LIF) x both resets x fp32/bf16 x
(plain, learnable parameters) at a few sizes, compiled by Triton for the GPU (not
interpreted), and compares spikes, per-step V and w, and every gradient (x, V0, w0 and the
parameters) with the PyTorch reference run in float64 on the same input values. Prints one
line per case and exits non-zero on any mismatch. Needs a CUDA device.

    python benchmarks/cuda_check.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

MODELS = {  # name -> (has_w, has_exp, tau_ref, parameter overrides)
    "AdExIF": (True, True, None, {}),
    "AdExIFRef": (True, True, 0.55, {}),
    "ExpIF": (False, True, None, {"V_th": -45.0}),
    "ExpIFRef": (False, True, 0.55, {"V_th": -45.0}),
    "LIF": (False, False, None, {"tau": 5.0, "V_th": 1.0, "V_reset": 0.0, "V_rest": 0.0}),
}
LEARNABLE = ("R", "tau", "tau_w", "V_th", "V_reset", "V_rest", "V_T", "delta_T", "a", "b")


def run_case(model, spk_reset, dtype, learn, T, batch, n, seed, device):
    """Returns (ok, message) for one case."""
    import adex
    from adex.surrogate import Sigmoid

    has_w, has_exp, tau_ref, overrides = MODELS[model]
    gen = torch.Generator().manual_seed(seed)
    base = adex.AdExParams(**overrides)
    values = {}
    for name, value in base.items():
        jitter = 1 + 0.02 * torch.rand(n, generator=gen, dtype=torch.float64)
        values[name] = (value * jitter) if learn else value
    lif = model == "LIF"
    drive = (1.5, 1.0) if lif else (15.0, 5.0)
    x = (torch.randn(T, batch, n, generator=gen) * drive[1] + drive[0]).to(dtype)
    V0 = torch.rand(batch, n, generator=gen) * (1.0 if lif else 10.0) + (0.0 if lif else -65.0)
    w0 = torch.randn(batch, n, generator=gen) if has_w else None
    G = torch.randn(T, batch, n, generator=gen)
    results = {}
    for backend, dev, cdt in (("triton", device, None), ("reference", "cpu", torch.float64)):
        params = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.to(dev, torch.float64 if cdt else torch.float32)
                value.requires_grad_(learn)
            params[name] = value
        p = adex.AdExParams(**params)
        xi = x.to(dev, cdt or x.dtype).requires_grad_()
        Vi = V0.to(dev, cdt or torch.float32).requires_grad_()
        wi = None if w0 is None else w0.to(dev, cdt or torch.float32).requires_grad_()
        kw = dict(dt=0.1, surrogate=Sigmoid(), spk_reset=spk_reset, has_exp=has_exp,
                  return_states=True, backend=backend, check_finite=False)  # fmt: skip
        if tau_ref is not None:
            kw.update(tau_ref=tau_ref, last_spike_time=torch.full((batch, n), -1e7, device=dev))
        out = adex.adex_scan(xi, Vi, wi, p, **kw)
        loss = (out.spikes.to(G.dtype if dev == "cpu" else torch.float32) * G.to(dev)).sum()
        loss = loss + 0.01 * out.V.sum() + (0 if out.w is None else 0.01 * out.w.sum())
        wrt = [xi, Vi] + ([wi] if wi is not None else [])
        names = ["x", "V0"] + (["w0"] if wi is not None else [])
        for name, value in params.items():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                wrt.append(value)
                names.append(name)
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        results[backend] = (out, dict(zip(names, grads, strict=True)))
    fused, ref = results["triton"], results["reference"]
    spikes_f, spikes_r = fused[0].spikes.float().cpu(), ref[0].spikes.float()
    near = (ref[0].V - values["V_th"]).abs() < 1e-3  # within rounding of the threshold
    mismatch = ((spikes_f != spikes_r) & ~near).sum().item()
    v_err = (fused[0].V.cpu().double() - ref[0].V).abs().max().item()
    worst = 0.0
    for name, g_ref in ref[1].items():
        g_f = fused[1][name]
        if g_ref is None or g_f is None:
            continue
        scale = g_ref.abs().max().item() + 1e-12
        worst = max(worst, (g_f.cpu().double() - g_ref).abs().max().item() / scale)
    grad_tol = 2e-2 if dtype != torch.float32 else 1e-3
    ok = mismatch == 0 and v_err < (0.05 if dtype != torch.float32 else 1e-2) and worst < grad_tol
    msg = (f"spikes {int(spikes_r.sum())} mismatched {mismatch}, max|dV| {v_err:.2e} mV, "
           f"worst grad err {worst:.2e} of max|g|")  # fmt: skip
    return ok, msg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_check: needs a CUDA GPU (the CPU path is covered by the test suite)")
        return 0
    sizes = [(64, 4, 1000)] if args.quick else [(64, 4, 1000), (257, 3, 4099)]
    failures = 0
    start = time.time()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for T, batch, n in sizes:
        for model in MODELS:
            for spk_reset in ("soft", "hard"):
                for dtype in (torch.float32, torch.bfloat16):
                    for learn in (False, True):
                        ok, msg = run_case(model, spk_reset, dtype, learn, T, batch, n,
                                           seed=T + n, device="cuda")  # fmt: skip
                        failures += not ok
                        tag = f"T{T}-B{batch}-N{n} {model} {spk_reset} {str(dtype)[6:]}"
                        print(f"{'ok  ' if ok else 'FAIL'} {tag}{' learn' if learn else ''}: {msg}")
    print(f"{failures} failed, {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
