"""Compiled-kernel correctness on CUDA: the fused kernels against the reference.

Runs every model (AdExIF, AdExIFRef, ExpIF, ExpIFRef, LIF) x both resets x fp32/bf16 x
(plain, learnable parameters) at a few sizes, compiled by Triton for the GPU (not
interpreted), and compares spikes, per-step V and w, and every gradient (x, V0, w0 and the
parameters) with the PyTorch reference run in float64 on the same input values. Prints one
line per case and exits non-zero on any mismatch. Then, per model, the memory options and
loop pipelining against the default fused run on the same GPU: ``checkpoint_every``
(recomputed backward), ``spike_dtype`` uint8 and bool, and ``adex.kernels.launch.GPU_STAGES``
(alone and with checkpoints). Last, the forward's own finiteness check (NaN/inf in x and
V0 rejected and named; a finite x equal to an unchecked run). Needs a CUDA device.

    python benchmarks/cuda_check.py [--quick] [--stages 3]
"""

from __future__ import annotations

import argparse
import math
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


def run_mode_case(model, spk_reset, stages, T, batch, n, seed, device):
    """Returns (ok, message): checkpoint mode, uint8 spikes and ``GPU_STAGES = stages`` (with
    and without checkpoints) against the default fused run, all on ``device``, with every
    parameter learnable."""
    import adex
    from adex.kernels import launch
    from adex.surrogate import Sigmoid

    has_w, has_exp, tau_ref, overrides = MODELS[model]
    gen = torch.Generator().manual_seed(seed)
    lif = model == "LIF"
    drive = (1.5, 1.0) if lif else (60.0, 15.0) if has_w else (40.0, 10.0)  # spikes in T
    x = (torch.randn(T, batch, n, generator=gen) * drive[1] + drive[0]).to(device)
    V0 = torch.rand(batch, n, generator=gen) * (1.0 if lif else 10.0) - (0.0 if lif else 65.0)
    V0 = V0.to(device)
    w0 = torch.randn(batch, n, generator=gen).to(device) if has_w else None
    G = torch.randn(T, batch, n, generator=gen).to(device)

    def run(checkpoint_every=None, spike_dtype=None):
        params = {k: torch.tensor(v, device=device, requires_grad=True)
                  for k, v in adex.AdExParams(**overrides).items()}  # fmt: skip
        leaves = [t.detach().clone().requires_grad_() for t in (x, V0, w0) if t is not None]
        kw = dict(
            dt=0.1,
            surrogate=Sigmoid(),
            spk_reset=spk_reset,
            has_exp=has_exp,
            backend="triton",
            check_finite=False,
            checkpoint_every=checkpoint_every,
        )
        if tau_ref is not None:
            kw.update(tau_ref=tau_ref, last_spike_time=torch.full((batch, n), -1e7, device=device))
        args = (*leaves, *([None] * (not has_w)), adex.AdExParams(**params))
        if spike_dtype is not None:
            with torch.no_grad():
                return adex.adex_scan(*args, spike_dtype=spike_dtype, **kw).spikes, []
        out = adex.adex_scan(*args, **kw)
        loss = (out.spikes * G).sum() + 0.01 * out.V.sum()
        grads = torch.autograd.grad(loss, leaves + list(params.values()), allow_unused=True)
        return out.spikes, [g for g in grads if g is not None]

    def worst(a, b):
        return max(((p - q).abs().max() / (p.abs().max() + 1e-12)).item()
                   for p, q in zip(a, b, strict=True))  # fmt: skip

    spikes, grads = run()
    errors = {}
    s_c, g_c = run(checkpoint_every=7)
    errors["ckpt"] = (torch.equal(spikes, s_c), worst(grads, g_c))
    errors["u8"] = (torch.equal(spikes, run(spike_dtype=torch.uint8)[0].float()), 0.0)
    errors["bool"] = (torch.equal(spikes, run(spike_dtype=torch.bool)[0].float()), 0.0)
    original = launch.GPU_STAGES
    try:
        launch.GPU_STAGES = stages
        s_p, g_p = run()
        s_pc, g_pc = run(checkpoint_every=7)
    finally:
        launch.GPU_STAGES = original
    errors[f"stages{stages}"] = (torch.equal(spikes, s_p), worst(grads, g_p))
    errors[f"stages{stages}+ckpt"] = (torch.equal(spikes, s_pc), worst(grads, g_pc))
    ok = spikes.sum() > 0 and all(same and err < 1e-5 for same, err in errors.values())
    msg = ", ".join(f"{k}: spikes {'=' if same else '!='} grad err {err:.1e}"
                    for k, (same, err) in errors.items())  # fmt: skip
    return bool(ok), f"{int(spikes.sum())} spikes; {msg}"


def run_finite_case(dtype, T, batch, n, device):
    """Returns (ok, message): the compiled forward's own finiteness check (``check_finite``)
    rejects a NaN, an inf and a -inf in x (first, middle and last element), a NaN in V0,
    each naming the tensor, and then passes a finite x with outputs equal to an unchecked
    run."""
    import adex

    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(T, batch, n, generator=gen) * 15 + 60).to(device, dtype)
    V0 = (torch.rand(batch, n, generator=gen) * 10 - 65).to(device)
    w0 = torch.zeros(batch, n, device=device)
    places = {"first": (0, 0, 0), "middle": (T // 2, batch // 2, n // 2),
              "last": (T - 1, batch - 1, n - 1)}  # fmt: skip
    for label, where in places.items():
        for value in (math.nan, math.inf, -math.inf):
            bad = x.clone()
            bad[where] = value
            try:
                adex.adex_scan(bad, V0, w0, backend="triton")
            except ValueError as err:
                if "x contains NaN or inf" not in str(err):
                    return False, f"{value} at the {label} element: {err}"
            else:
                return False, f"{value} at the {label} element of x passed"
    bad_v = V0.clone()
    bad_v[batch - 1, n - 1] = math.nan
    try:
        adex.adex_scan(x, bad_v, w0, backend="triton")
        return False, "a NaN in V0 passed"
    except ValueError as err:
        if "V0 contains NaN or inf" not in str(err):
            return False, f"NaN in V0: {err}"
    checked = adex.adex_scan(x, V0, w0, backend="triton")
    plain = adex.adex_scan(x, V0, w0, backend="triton", check_finite=False)
    if not (torch.equal(checked.spikes, plain.spikes) and torch.equal(checked.V, plain.V)):
        return False, "the checked run differs from the unchecked one"
    return True, "10 rejections named, then equal to the unchecked run"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--stages", type=int, default=3, help="GPU_STAGES of the mode checks")
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
    print(f"memory options and GPU_STAGES={args.stages} vs the default fused run (learnable):")
    for model in MODELS:
        spk_reset = "hard" if model.endswith("Ref") else "soft"
        ok, msg = run_mode_case(model, spk_reset, args.stages, 40, 3, 1000, seed=5,
                                device="cuda")  # fmt: skip
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} T40-B3-N1000 {model} {spk_reset} modes: {msg}")
    print("the forward's own finiteness check (check_finite=True):")
    for dtype in (torch.float32, torch.bfloat16):
        ok, msg = run_finite_case(dtype, 33, 3, 2000, device="cuda")
        failures += not ok
        tag = f"T33-B3-N2000 AdExIF {str(dtype)[6:]}"
        print(f"{'ok  ' if ok else 'FAIL'} {tag} finite check: {msg}")
    print(f"{failures} failed, {time.time() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
