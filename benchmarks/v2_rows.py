"""The version 2 rows of the roofline benchmark (``roofline.py``) per workload (checkpoint
mode, 1-byte spikes, the GPU_BLOCK / GPU_STAGES sweep) and its once-per-run checks (T=1
launch overhead, Triton recompiles). ``ctx`` is the run's namespace, built by
``harness.v2_phase``.
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

try:
    from benchmarks.report import SMOKE_LABEL, error_note, fmt_num
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    from report import SMOKE_LABEL, error_note, fmt_num

RECOMPILE_MIN_LEFT_S = 30.0  # the recompile check (it may compile a few variants) needs this
UPDATE_CALLS = 100  # T=1 launch-overhead loop: layer.update(x) calls per timed loop
UPDATE_SHAPE = (1024, 64)  # neurons, batch of the T=1 loop
SMOKE_UPDATE = (10, 64, 2)  # calls, neurons, batch under --interpret-smoke
RECOMPILE_SHAPES = [(64, 4), (1, 4), (37, 4), (64, 3), (64, 16)]  # (T, batch): T, then batch
SMOKE_RECOMPILE_SHAPES = [(8, 4), (1, 4), (5, 4), (8, 3)]
RECOMPILE_NEURONS = 1000  # not a multiple of 16: batch changes change M's divisibility
SMOKE_RECOMPILE_NEURONS = 10

SKIPPED = {"status": "skipped", "note": "skipped: time budget"}


def compiled_variants(kernel) -> tuple[int | None, str]:
    """(number of compiled variants, where they were found) of a Triton kernel.

    Triton >= 3.2: ``JITFunction.device_caches`` maps a device to a tuple whose first item is
    the dict of compiled kernels (3.6: 4 items, 3.9: 5 items); older versions:
    ``JITFunction.cache`` maps a device to that dict. ``(None, 'n/a')`` otherwise (e.g. the
    interpreter's ``InterpretedFunction``)."""
    caches = getattr(kernel, "device_caches", None)
    if isinstance(caches, dict):
        found = [e[0] for e in caches.values() if isinstance(e, tuple) and e]
        if all(isinstance(c, dict) for c in found):
            return sum(len(c) for c in found), "device_caches"
    cache = getattr(kernel, "cache", None)
    if isinstance(cache, dict) and all(isinstance(c, dict) for c in cache.values()):
        return sum(len(c) for c in cache.values()), "cache"
    return None, "n/a"


def v2_workload_rows(ctx, wl: tuple, x, V0, w0, g) -> None:
    """The version 2 rows of one workload: checkpoint mode, 1-byte spikes, (W3) block sweep."""
    checkpoint_rows(ctx, wl, x, V0, w0, g)
    byte_spike_row(ctx, wl, x, V0, w0)
    configs = []
    if wl[0] == "W3":
        configs += [(block, None) for block in ctx.blocks]
    if wl[0] in ("W1", "W3"):
        configs += [(256, stages) for stages in ctx.stages]
    if configs:
        launch_sweep(ctx, wl, x, V0, w0, g, configs)


def checkpoint_rows(ctx, wl: tuple, x, V0, w0, g) -> None:
    """``fused_ckpt<K>`` in modes fwd/bwd/full, with its memory pass (saved bytes split)."""
    method, modes = f"fused_ckpt{ctx.K}", ("fwd", "bwd", "full")
    model = {"checkpoint_every": ctx.K, "T": wl[1]}
    if ctx.bench.left_s() <= 0:
        for mode in modes:
            ctx.add_row(wl, method, mode, dict(SKIPPED), model=model)
        return
    ref = ctx.fused_spikes.get(wl[0])
    ref = None if ref is None else ref.to(ctx.device)
    fn = partial(ctx.fused, checkpoint_every=ctx.K)
    ctx.run_method(
        wl, method, fn, modes, x, V0, w0, g, ref_spikes=ref,
        note=f"checkpoint_every={ctx.K}", model=model,
    )  # fmt: skip


def spike_mismatch(spikes, ref) -> float | None:
    """Fraction of neuron-steps where two spike tensors (any dtypes) differ."""
    if ref is None:
        return None
    ref = ref.to(spikes.device)
    return float((spikes.to(ref.dtype) != ref).float().mean())


def byte_spike_row(ctx, wl: tuple, x, V0, w0) -> None:
    """``fused_spikes_u8``: the no-grad forward writing ``torch.uint8`` spikes."""
    torch = ctx.torch
    method, model = "fused_spikes_u8", {"spike_dtype": "uint8"}
    if ctx.bench.left_s() <= 0:
        ctx.add_row(wl, method, "fwd_nograd", dict(SKIPPED), model=model)
        return

    def call():
        with torch.no_grad():
            return ctx.fused(x, V0, w0, spike_dtype=torch.uint8)

    extra = {}
    try:
        extra["spike_mismatch_vs_fused"] = spike_mismatch(call(), ctx.fused_spikes.get(wl[0]))
        ctx.free()
        r = ctx.bench(call, warm=True)
    except Exception as err:
        r = {"status": "error", "note": error_note(err)}
    if r.get("status") == "ok":
        r["note"] = "spike_dtype=torch.uint8, no grad"
    ctx.add_row(wl, method, "fwd_nograd", r, extra=extra, model=model)
    ctx.free()


def launch_sweep(ctx, wl: tuple, x, V0, w0, g, configs: list) -> None:
    """The default fused ``full`` at ``launch.GPU_BLOCK = B`` and ``launch.GPU_STAGES = S`` for
    each ``(B, S)`` of ``configs`` (rows ``fused_block<B>``, ``fused_block<B>_stages<S>``;
    ``GPU_MIN_PROGRAMS_PER_SM = 0``: the block is B whatever M); the original settings are
    restored afterwards, also on errors."""
    torch = ctx.torch
    xr = x.detach().requires_grad_(True)
    original = ctx.launch.GPU_BLOCK, ctx.launch.GPU_STAGES, ctx.launch.GPU_MIN_PROGRAMS_PER_SM
    ctx.launch.GPU_MIN_PROGRAMS_PER_SM = 0
    ignored = " (ignored on CPU: the interpreter's blocks are up to 1024 wide)" if ctx.smoke else ""
    try:
        for block, stages in configs:
            ctx.launch.GPU_BLOCK, ctx.launch.GPU_STAGES = block, stages
            method = f"fused_block{block}" + ("" if stages is None else f"_stages{stages}")
            if ctx.bench.left_s() <= 0:
                ctx.add_row(wl, method, "full", dict(SKIPPED), extra={"gpu_block": block})
                continue
            try:
                r = ctx.bench(lambda: torch.autograd.grad(ctx.fused(xr, V0, w0), xr, g))
            except Exception as err:
                r = {"status": "error", "note": error_note(err)}
            if r.get("status") == "ok":
                r["note"] = f"GPU_BLOCK={block}, GPU_STAGES={stages}{ignored}"
            ctx.add_row(wl, method, "full", r, extra={"gpu_block": block, "gpu_stages": stages})
            ctx.free()
    finally:
        (ctx.launch.GPU_BLOCK, ctx.launch.GPU_STAGES,
         ctx.launch.GPU_MIN_PROGRAMS_PER_SM) = original  # fmt: skip


def update_loop(torch, layer, x, calls: int):
    """``calls`` T=1 ``layer.update(x)`` calls in a Python loop, without grad."""

    def run():
        with torch.no_grad():
            for _ in range(calls):
                layer.update(x)

    return run


def reference_step_loop(torch, layer, x, calls: int):
    """The same loop of ``adex.reference.adex_step_reference`` (the eager per-step reference
    of the same model; state carried between calls as the layer carries its own)."""
    from adex.reference import adex_step_reference

    p = SimpleNamespace(**layer.params.cast(torch.float32, x.device))
    state = [layer.V.clone(), layer.w.clone()]

    def run():
        with torch.no_grad():
            V, w = state
            for _ in range(calls):
                _, V, w = adex_step_reference(x, V, w, p, dt=layer.dt, surrogate=layer.spk_fun)
            state[:] = [V, w]

    return run


def euler_chain_loop(torch, layer, x, calls: int):
    """The same loop of a hand-written AdEx step (reset, exponential drive, Euler update of V
    and w) as a chain of 22 eager elementwise ops on tensors V and w, scalar parameters."""
    p = SimpleNamespace(**layer.params.cast(torch.float32, x.device))
    theta, dt = p.V_th - p.V_reset, layer.dt
    c_v, c_w = dt / p.tau, 1.0 - math.exp(-dt / p.tau_w)
    state = [layer.V.clone(), layer.w.clone()]

    def run():
        with torch.no_grad():
            V, w = state
            for _ in range(calls):
                s = (V >= p.V_th).to(V.dtype)  # 2 ops
                V = V - theta * s  # 2
                w = w + p.b * s  # 2
                e = torch.exp((V - p.V_T) / p.delta_T)  # 3
                V = V + c_v * ((p.V_rest - V) + p.delta_T * e + p.R * (x - w))  # 8
                w = w + c_w * (p.a * (V - p.V_rest) - w)  # 5
            state[:] = [V, w]

    return run


def launch_overhead(ctx) -> dict:
    """The T=1 launch-overhead row: a Python loop of ``layer.update(x)`` on
    ``AdExIF(backend='triton', check_finite=False)`` against the same loop of eager steps."""
    torch, adex = ctx.torch, ctx.adex
    calls, n, batch = SMOKE_UPDATE if ctx.smoke else (UPDATE_CALLS, *UPDATE_SHAPE)
    out = {"calls_per_loop": calls, "neurons": n, "batch": batch, "status": "ok",
           "label": SMOKE_LABEL if ctx.smoke else "timing"}  # fmt: skip
    if ctx.bench.left_s() <= 0:
        return {**out, **SKIPPED}
    try:
        layer = adex.AdExIF(n, backend="triton", check_finite=False).to(ctx.device)
        layer.init_state(batch, device=ctx.device)
        x = torch.full((batch, n), 12.0, device=ctx.device)
        loops = {
            "update_triton": update_loop(torch, layer, x, calls),
            "eager_reference_step": reference_step_loop(torch, layer, x, calls),
            "eager_euler_chain": euler_chain_loop(torch, layer, x, calls),
        }
        for name, fn in loops.items():
            r = ctx.bench(fn)
            if r.get("median_ms") is not None:
                r["us_per_call"] = r["median_ms"] * 1e3 / calls
            out[name] = r
    except Exception as err:
        return {**out, "status": "error", "note": error_note(err)}
    fused_ms = out["update_triton"].get("median_ms")
    for name in ("eager_reference_step", "eager_euler_chain"):
        other = out[name].get("median_ms")
        out[f"ratio_vs_{name}"] = fused_ms / other if fused_ms and other else None
    shown = fmt_num(out.get("ratio_vs_eager_euler_chain"), ".2f")
    print(f"[launch overhead] update loop / eager Euler chain loop: {shown} ({out['label']})")
    return out


def recompile_check(ctx) -> dict:
    """Compiled variants of the two scan kernels after fused fwd+bwd calls (default and
    checkpoint mode) at each (T, batch) of the check; variants added after the first shape are
    recompilations caused by T or batch."""
    import triton

    torch = ctx.torch
    from adex.kernels import scan_bwd, scan_fwd

    kernels = {"fwd": scan_fwd._adex_scan_fwd_kernel, "bwd": scan_bwd._adex_scan_bwd_kernel}
    shapes = SMOKE_RECOMPILE_SHAPES if ctx.smoke else RECOMPILE_SHAPES
    n = SMOKE_RECOMPILE_NEURONS if ctx.smoke else RECOMPILE_NEURONS
    out = {"triton": triton.__version__, "neurons": n, "checkpoint_every": ctx.K,
           "cache_attribute": compiled_variants(kernels["fwd"])[1], "steps": [],
           "status": "ok", "note": ""}  # fmt: skip
    if ctx.bench.left_s() < (0.0 if ctx.smoke else RECOMPILE_MIN_LEFT_S):
        return {**out, **SKIPPED}
    try:
        for T, B in shapes:
            if ctx.bench.left_s() <= 0:
                out["note"] = "cut by the time budget"
                break
            x = (torch.randn((T, B, n), device=ctx.device) * 8.0 + 12.0).requires_grad_(True)
            V0 = torch.full((B, n), -65.0, device=ctx.device)
            w0 = torch.zeros((B, n), device=ctx.device)
            for options in ({}, {"checkpoint_every": ctx.K}):
                spikes = ctx.fused(x, V0, w0, **options)
                torch.autograd.grad(spikes, x, torch.ones_like(spikes))
            ctx.bench.sync()
            step = {"T": T, "batch": B}
            for key, kernel in kernels.items():
                step[f"{key}_variants"] = compiled_variants(kernel)[0]
            out["steps"].append(step)
    except Exception as err:
        out.update(status="error", note=error_note(err))
    if out["steps"]:
        first, last = out["steps"][0], out["steps"][-1]
        for key in kernels:
            a, b = first[f"{key}_variants"], last[f"{key}_variants"]
            out[f"{key}_new_after_first_shape"] = None if a is None else b - a
    new = {k: out.get(f"{k}_new_after_first_shape") for k in kernels}
    shown = ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in new.items())
    print(f"[recompile check] variants added after the first shape: {shown}")
    return out
