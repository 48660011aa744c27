"""The roofline benchmark's run (``roofline.py`` parses the options and calls
:func:`run_benchmark`): the copy bandwidth, then per workload the fused rows, the version 2
rows (``v2_rows.py``) and the baselines, saving the report (``report.py``) after each.

torch, triton and adex are imported by :func:`import_modules` only, after the options are
known: ``--interpret-smoke`` sets ``TRITON_INTERPRET=1`` before adex is imported.
"""

from __future__ import annotations

import datetime
import gc
import inspect
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

try:
    from benchmarks import bytes_model
    from benchmarks.report import (
        SMOKE_LABEL,
        add_speedups,
        error_note,
        fmt_ms,
        markdown,
        v2_summary,
    )
    from benchmarks.v2_rows import launch_overhead, recompile_check, v2_workload_rows
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import bytes_model
    from report import SMOKE_LABEL, add_speedups, error_note, fmt_ms, markdown, v2_summary
    from v2_rows import launch_overhead, recompile_check, v2_workload_rows

if TYPE_CHECKING:
    import torch

WORKLOADS = [
    # name, T, batch, neurons, dtype
    ("W1", 256, 64, 16384, "fp32"),
    ("W2", 32, 64, 65536, "fp16"),
    ("W3", 4096, 16, 1024, "fp32"),
    ("W4", 256, 64, 16384, "bf16"),
]
SMOKE_WORKLOADS = [
    ("W1", 8, 2, 64, "fp32"),
    ("W2", 4, 2, 128, "fp16"),
    ("W3", 32, 1, 16, "fp32"),
    ("W4", 8, 2, 64, "bf16"),
]
DT = 0.1  # ms
SLOW_MS = 40.0  # calls slower than this are timed over a few calls with CUDA events
QUANTILES = [0.5, 0.2, 0.8]
COMPILE_MIN_LEFT_S = 75.0  # a compiled baseline starts only with this much budget left
NEEDS_CUDA = (
    "roofline: needs a CUDA GPU and none is available; nothing was measured "
    "(--interpret-smoke checks the script on CPU)."
)


def quantile(samples: list[float], q: float) -> float:
    """Linear-interpolated quantile of ``samples`` (as numpy's default)."""
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def git_commit(repo: Path) -> str:
    """The checked-out commit (``-dirty`` with local changes), ``$ADEX_GIT_COMMIT`` if set."""
    if os.environ.get("ADEX_GIT_COMMIT"):
        return os.environ["ADEX_GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout)"


def storage_ptr(t) -> int | None:
    """Address of the storage under ``t`` (shared by all views of one allocation)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def split_saved(saved: dict, inputs) -> tuple[int, int]:
    """(new, alias) bytes of the packed tensors ``saved`` (``key -> (nbytes, storage ptr)``):
    alias when the storage is one of the ``inputs``' storages."""
    ptrs = {storage_ptr(t) for t in inputs if t is not None and t.nbytes}
    ptrs.discard(None)
    alias = sum(n for n, ptr in saved.values() if ptr in ptrs)
    return sum(n for n, _ in saved.values()) - alias, alias


class Bench:
    """Times callables: do_bench on CUDA (CUDA events for slow calls), perf_counter in smoke."""

    def __init__(self, torch, smoke: bool, quick: bool, deadline: float):
        self.torch = torch
        self.smoke = smoke
        self.quick = quick
        self.deadline = deadline
        self.slow_reps = 3 if quick else 5
        self.warmup_ms, self.rep_ms = (10, 60) if quick else (25, 200)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if not self.smoke:
            self.torch.cuda.synchronize()

    def once_ms(self, fn) -> float:
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        self.torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def __call__(self, fn, *, warm: bool = False) -> dict:
        """Median/p20/p80 in ms of ``fn()``; ``warm``: it already ran once (no warmup)."""
        if self.left_s() <= 0:
            return {"status": "skipped", "note": "skipped: time budget"}
        if not warm:
            fn()
            self.sync()
        first = self.once_ms(fn)
        if self.smoke or first > SLOW_MS:
            samples = [first]
            want = 3 if self.smoke else self.slow_reps
            while len(samples) < want and self.left_s() > first / 1e3:
                samples.append(self.once_ms(fn))
            timer = "perf_counter" if self.smoke else "cuda events"
            note = f"{timer}, {len(samples)} calls"
            if not self.smoke and len(samples) < want:
                note += " (cut by the time budget)"
        else:
            import triton.testing

            samples = triton.testing.do_bench(
                fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=QUANTILES
            )
            return {
                "status": "ok",
                "median_ms": samples[0],
                "p20_ms": samples[1],
                "p80_ms": samples[2],
                "timer": f"do_bench(warmup={self.warmup_ms}, rep={self.rep_ms})",
            }
        return {
            "status": "ok",
            "median_ms": quantile(samples, 0.5),
            "p20_ms": quantile(samples, 0.2),
            "p80_ms": quantile(samples, 0.8),
            "timer": note,
        }


SJ_IMPLEMENTATION_ENV = "SJ_IZHIKEVICH_CUDA_IMPLEMENTATION"
"""SpikingJelly 2.0 picks its CUDA implementation of the Izhikevich op from this variable
(auto, cuda, triton, torch), read when spikingjelly is imported."""


def spikingjelly_factory(torch, smoke: bool):
    """(callable(x, V0, w0) -> spikes, note) for SpikingJelly's fused multi-step
    IzhikevichNode, or (None, reason). SpikingJelly 2.0 selects the implementation with
    ``SJ_IZHIKEVICH_CUDA_IMPLEMENTATION`` (set to 'triton' here unless already set); older
    releases take ``backend='triton'`` or ``'cupy'``."""
    if smoke:
        return None, "n/a: SpikingJelly's fused backends need CUDA"
    os.environ.setdefault(SJ_IMPLEMENTATION_ENV, "triton")
    try:
        import spikingjelly
        from spikingjelly.activation_based import functional, neuron
    except Exception as err:
        return None, f"n/a: spikingjelly not importable ({type(err).__name__}: {err})"
    version = getattr(spikingjelly, "__version__", "?")
    if "backend" in inspect.signature(neuron.IzhikevichNode.__init__).parameters:
        try:
            probe = neuron.IzhikevichNode(step_mode="m", backend="torch")
            configs = [({"backend": b}, f"backend={b}") for b in ("triton", "cupy")
                       if b in probe.supported_backends]  # fmt: skip
        except Exception as err:
            return None, f"n/a: IzhikevichNode failed ({type(err).__name__}: {err})"
    else:  # 2.0: one multi-step op, implementation chosen by the environment variable
        configs = [({}, f"{SJ_IMPLEMENTATION_ENV}={os.environ[SJ_IMPLEMENTATION_ENV]}")]
    last = "none tried"
    for kwargs, label in configs:
        try:
            node = neuron.IzhikevichNode(step_mode="m", **kwargs).cuda()
            probe_x = torch.zeros((2, 1, 64), device="cuda", requires_grad=True)
            node(probe_x).sum().backward()
            functional.reset_net(node)
        except Exception as err:
            last = f"{label}: {type(err).__name__}: {err}"
            continue

        def run(x, V0, w0, node=node):
            functional.reset_net(node)  # SpikingJelly's own initial state (v = v_reset)
            return node(x)

        return run, f"SpikingJelly {version} IzhikevichNode {label} (own model and init)"
    if not configs:
        return None, "n/a: IzhikevichNode has no cupy/triton multi-step backend here"
    return None, f"n/a: no SpikingJelly configuration ran ({last})"


def import_modules(smoke: bool) -> SimpleNamespace | int:
    """torch, triton, adex and ``adex.kernels.launch`` (``SimpleNamespace``), imported in the
    order the run needs, or the exit status when it cannot run: 2 without CUDA (one line
    printed, as ``adex bench``), without pint or, under ``--interpret-smoke``, without the
    interpreter."""
    if smoke:
        # Triton reads it when the kernels are decorated: before adex is imported
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not smoke and not torch.cuda.is_available():
        print(NEEDS_CUDA)
        return 2
    try:
        import pint  # noqa: F401  (adex imports it for its units)
    except ImportError:
        print(
            "roofline: the package 'pint' is missing and adex imports it: install it "
            "(pip install pint, or pip install --no-index --find-links <wheels> pint)."
        )
        return 2
    import triton

    import adex
    from adex.kernels import launch
    from adex.kernels.launch import INTERPRETED

    if smoke and not INTERPRETED:
        print("roofline: --interpret-smoke needs TRITON_INTERPRET=1 before adex is imported")
        return 2
    return SimpleNamespace(torch=torch, triton=triton, adex=adex, launch=launch)


def run_meta(args, mods: SimpleNamespace, device) -> dict:
    """The report's ``meta``: label, card, date, commit, versions and the run's options."""
    torch, smoke = mods.torch, args.interpret_smoke
    repo = Path(__file__).resolve().parent.parent
    meta = {
        "label": SMOKE_LABEL if smoke else "timing",
        "interpret_smoke": smoke,
        "card": "cpu (Triton interpreter)" if smoke else torch.cuda.get_device_name(device),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(repo),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": mods.triton.__version__,
        "adex": getattr(mods.adex, "__version__", "?"),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "dt_ms": DT,
        "kernel_version": 2,
        "kernel_config": (
            f"one program per GPU_BLOCK={mods.launch.GPU_BLOCK} neurons, num_warps = "
            "GPU_BLOCK/64 (1-8), plain time loop, no prefetch, forward step shared "
            "(kernels/step.py)"
        ),
        "checkpoint_every": args.checkpoint_every,
    }
    if not smoke:
        prop = torch.cuda.get_device_properties(device)
        meta["card_memory_gib"] = round(prop.total_memory / 2**30, 1)
        meta["card_sms"] = prop.multi_processor_count
    return meta


class Run:
    """One benchmark run: its options, timer and report, the methods it times (the fused
    scan, the per-step references) and the bookkeeping of their rows."""

    def __init__(self, args, t_start: float, mods: SimpleNamespace):
        torch = mods.torch
        self.args, self.t_start = args, t_start
        self.torch, self.adex, self.launch = torch, mods.adex, mods.launch
        self.smoke = smoke = args.interpret_smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.out_dir = Path(args.out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = "roofline_smoke" if smoke else "roofline"
        self.bench = Bench(torch, smoke, args.quick, t_start + args.budget_s)
        wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
        table = SMOKE_WORKLOADS if smoke else WORKLOADS
        self.workloads = [w for w in table if w[0] in wanted]
        self.dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        self.meta = run_meta(args, mods, self.device)
        self.report = {"meta": self.meta, "copy": None, "rows": [], "memory": []}
        self.report.update(launch_overhead=None, recompile=None, v2_summary=None)
        self.copy_gbps = None  # measure_copy
        self.sj_factory, self.sj_note = None, ""  # spikingjelly_factory, before the rows
        self.params = mods.adex.AdExParams()
        self.surrogate = mods.adex.surrogate.ReluGrad()
        self.packed_cache = {}
        self.compiled_step = None
        self.fused_spikes = {}  # workload -> the fused forward's spikes, checked against

    def save(self) -> None:
        """Write ``<stem>.json`` and ``<stem>.md`` with everything measured so far."""
        report = self.report
        add_speedups(report)
        report["v2_summary"] = v2_summary(report)
        report["meta"]["elapsed_s"] = round(time.monotonic() - self.t_start, 1)
        (self.out_dir / f"{self.stem}.json").write_text(json.dumps(report, indent=1))
        (self.out_dir / f"{self.stem}.md").write_text(markdown(report))

    def free(self) -> None:
        """Collect garbage and return cached device memory."""
        gc.collect()
        if not self.smoke:
            self.torch.cuda.empty_cache()

    def make_inputs(self, T: int, B: int, N: int, dtype: torch.dtype):
        """``(x, V0, w0, g)`` of one workload, seeded: input, initial state, upstream grad."""
        torch, device = self.torch, self.device
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn((T, B, N), generator=gen, device=device, dtype=torch.float32)
        x = (x.mul_(8.0).add_(12.0)).to(dtype)  # mA: a mix of silent and spiking neurons
        V0 = torch.rand((B, N), generator=gen, device=device) * 10.0 - 70.0
        w0 = torch.zeros((B, N), device=device)
        g = torch.randn((T, B, N), generator=gen, device=device, dtype=torch.float32).to(dtype)
        return x, V0, w0, g

    def fused(self, x, V0, w0, **options):
        """The fused scan as the modules call it; ``options``: more adex_scan arguments."""
        packed = self.packed_cache.get(x.device)
        if packed is None:
            packed = self.packed_cache[x.device] = self.params.packed(1, x.device)
        return self.adex.adex_scan(
            x, V0, w0, self.params, dt=DT, surrogate=self.surrogate, backend="triton",
            check_finite=False, packed_params=packed, **options,
        ).spikes  # fmt: skip

    def fused_defaults(self, x, V0, w0):
        """The fused scan with ``adex_scan``'s defaults (finite check, packing per call)."""
        return self.adex.adex_scan(
            x, V0, w0, self.params, dt=DT, surrogate=self.surrogate, backend="triton"
        ).spikes

    def reference(self, x, V0, w0):
        """The per-step PyTorch reference, eager."""
        return self.adex.adex_scan(
            x, V0, w0, self.params, dt=DT, surrogate=self.surrogate, backend="reference",
            check_finite=False,
        ).spikes  # fmt: skip

    def reference_compiled(self, x, V0, w0):
        """The reference step under ``torch.compile`` (compiled once), in a Python loop."""
        torch = self.torch
        from adex.reference import adex_step_reference

        if self.compiled_step is None:
            # the 'bwd' mode replays one backward (retain_graph=True), which AOTAutograd's
            # donated buffers forbid
            try:
                import torch._functorch.config as functorch_config

                functorch_config.donated_buffer = False
            except (ImportError, AttributeError):
                pass
            surrogate = self.surrogate

            def step(xt, V, w, p):
                s, V, w = adex_step_reference(
                    xt.to(torch.float32), V, w, p, dt=DT, surrogate=surrogate
                )
                return s.to(xt.dtype), V, w

            self.compiled_step = torch.compile(step, dynamic=False)  # dynamic=True fails
        p = SimpleNamespace(**self.params.cast(torch.float32, x.device))
        V, w, spikes = V0, w0, []
        for t in range(x.shape[0]):
            s, V, w = self.compiled_step(x[t], V, w, p)
            spikes.append(s)
        return torch.stack(spikes)

    def measure_full(self, fn, x, V0, w0, g) -> tuple[dict, torch.Tensor, float]:
        """One fwd+bwd: peak memory, saved bytes for backward, first-call seconds."""
        torch, device, smoke = self.torch, self.device, self.smoke
        xr = x.detach().requires_grad_(True)
        seen: dict[tuple, tuple[int, int | None]] = {}

        def pack(t):
            if isinstance(t, torch.Tensor):
                key = (t.data_ptr(), t.nbytes, t.dtype, tuple(t.shape))
                seen[key] = (t.nbytes, storage_ptr(t))
            return t

        self.free()
        if not smoke:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        hooks_note = ""
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                spikes = fn(xr, V0, w0)
        except Exception as err:  # e.g. compiled graphs that refuse the hooks
            hooks_note = f"saved-tensor hooks failed ({type(err).__name__}); "
            seen.clear()
            spikes = fn(xr, V0, w0)
        new, alias = split_saved(seen, (xr, V0, w0, *self.packed_cache.values()))
        (gx,) = torch.autograd.grad(spikes, xr, g)
        self.bench.sync()
        first_s = time.perf_counter() - t0
        ok = bool(seen) or not hooks_note
        mem = {
            "saved_bytes": new + alias if ok else None,
            "saved_new_bytes": new if ok else None,
            "saved_alias_bytes": alias if ok else None,
            "note": hooks_note.rstrip("; "),
        }
        ns = x.numel()
        for key in ("saved", "saved_new", "saved_alias"):
            total = mem[f"{key}_bytes"]
            mem[f"{key}_bytes_per_neuron_step"] = None if total is None else total / ns
        if not smoke:
            peak = torch.cuda.max_memory_allocated(device)
            mem["peak_bytes"] = peak
            mem["peak_above_inputs_bytes"] = peak - base
        else:
            mem["peak_bytes"] = mem["peak_above_inputs_bytes"] = None
        del gx
        return mem, spikes.detach(), first_s

    def add_row(
        self,
        wl: tuple,
        method: str,
        mode: str,
        r: dict,
        extra: dict | None = None,
        model: dict | None = None,
    ) -> dict:
        """One report row; ``model``: options of ``bytes_model.bytes_per_neuron_step``."""
        copy_gbps = self.copy_gbps
        name, T, B, N, dt_name = wl
        model = model or {}
        ns = T * B * N
        row = {
            "workload": name, "T": T, "batch": B, "neurons": N, "dtype": dt_name,
            "neuron_steps": ns, "method": method, "mode": mode,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "timer": None, "note": "",
        }  # fmt: skip
        row.update(r)
        row.update(extra or {})
        mb = bytes_model.bytes_per_neuron_step(mode, dt_name, **model)
        row["model_options"] = {k: str(v) for k, v in model.items()}
        row["model_bytes_per_neuron_step"] = mb
        row["predicted_ms"] = bytes_model.predicted_ms(mode, dt_name, ns, copy_gbps, **model)
        if row["median_ms"]:
            row["achieved_gbps"] = mb * ns / (row["median_ms"] * 1e6)
            row["fraction_of_copy"] = row["achieved_gbps"] / copy_gbps
        else:
            row["achieved_gbps"] = row["fraction_of_copy"] = None
        if "checkpoint_every" in model and mode in ("bwd", "full"):  # scratch counted as DRAM
            mbs = bytes_model.bytes_per_neuron_step(mode, dt_name, scratch=True, **model)
            row["model_bytes_with_scratch"] = mbs
            if row["median_ms"]:
                row["achieved_gbps_with_scratch"] = mbs * ns / (row["median_ms"] * 1e6)
                row["fraction_of_copy_with_scratch"] = row["achieved_gbps_with_scratch"] / copy_gbps
        self.report["rows"].append(row)
        shown = fmt_ms(row) if row["median_ms"] is not None else row["note"]
        t = time.monotonic() - self.t_start
        print(f"[{self.stem} {t:5.0f}s] {name} {dt_name} {method:>24} {mode:>10}: {shown}")
        return row

    def run_method(
        self,
        wl,
        method: str,
        fn,
        modes,
        x,
        V0,
        w0,
        g,
        ref_spikes=None,
        note: str = "",
        model: dict | None = None,
    ):
        """Memory pass, then the timed modes of one method. Returns the forward spikes."""
        torch, bench = self.torch, self.bench
        name, dt_name = wl[0], wl[4]
        try:
            mem, spikes, first_s = self.measure_full(fn, x, V0, w0, g)
        except Exception as err:
            msg = error_note(err)
            for mode in modes:
                self.add_row(wl, method, mode, {"status": "error", "note": msg}, model=model)
            self.free()
            return None
        mem.update(workload=name, dtype=dt_name, method=method, first_call_s=round(first_s, 2))
        if ref_spikes is not None:
            mem["spike_mismatch_vs_fused"] = float(
                (spikes.float() != ref_spikes.float()).float().mean()
            )
        self.report["memory"].append(mem)
        xr = x.detach().requires_grad_(True)
        for mode in modes:
            try:
                if mode == "fwd_nograd":

                    def call():
                        with torch.no_grad():
                            fn(x, V0, w0)

                    r = bench(call)
                elif mode == "fwd":
                    r = bench(lambda: fn(xr, V0, w0), warm=True)
                elif mode == "bwd":
                    out = fn(xr, V0, w0)
                    r = bench(
                        lambda out=out: torch.autograd.grad(out, xr, g, retain_graph=True),
                        warm=True,
                    )
                    del out
                else:
                    r = bench(lambda: torch.autograd.grad(fn(xr, V0, w0), xr, g), warm=True)
            except Exception as err:
                r = {"status": "error", "note": error_note(err)}
            if note and r.get("status") == "ok":
                r["note"] = note
            self.add_row(wl, method, mode, r, model=model)
            self.free()
        return spikes


def measure_copy(run: Run) -> None:
    """The roof: device-to-device copy bandwidth (``report['copy']``, ``run.copy_gbps``)."""
    torch, device = run.torch, run.device
    n_copy = 2**12 if run.smoke else 2**28  # fp32 elements: 1 GiB on the GPU
    src = torch.randn(n_copy, device=device)
    dst = torch.empty_like(src)
    r = run.bench(lambda d=dst, s=src: d.copy_(s))
    copy_bytes = 2 * src.nbytes
    run.report["copy"] = {
        "bytes_moved": copy_bytes,
        **r,
        "gbps": copy_bytes / (r["median_ms"] * 1e6),
        "gbps_p20_time": copy_bytes / (r["p20_ms"] * 1e6),
    }
    run.copy_gbps = run.report["copy"]["gbps"]
    del src, dst
    run.free()
    print(f"[{run.stem}] {run.meta['card']}: copy bandwidth {run.copy_gbps:.1f} GB/s")


def fused_phase(run: Run) -> None:
    """Phase 1: the fused kernels on every workload (they matter most; they are fast)."""
    for wl in run.workloads:
        name, T, B, N, dt_name = wl
        x, V0, w0, g = run.make_inputs(T, B, N, run.dtypes[dt_name])
        modes = ("fwd_nograd", "fwd", "bwd", "full")
        spikes = run.run_method(wl, "fused", run.fused, modes, x, V0, w0, g)
        if spikes is not None:
            run.fused_spikes[name] = spikes.cpu() if not run.smoke else spikes
        xr = x.detach().requires_grad_(True)
        r = run.bench(lambda xr=xr, V0=V0, w0=w0: run.fused_defaults(xr, V0, w0))
        run.add_row(wl, "fused_defaults", "fwd", r, {"note": "check_finite=True, packed per call"})
        del x, V0, w0, g, xr, spikes
        run.free()
        run.save()


def v2_phase(run: Run) -> None:
    """Phase 1b: the version 2 rows per workload; phase 1c: the once-per-run checks."""
    args = run.args
    ctx = SimpleNamespace(
        torch=run.torch, adex=run.adex, launch=run.launch, bench=run.bench, device=run.device,
        smoke=run.smoke, fused=run.fused, run_method=run.run_method, add_row=run.add_row,
        free=run.free, fused_spikes=run.fused_spikes, K=args.checkpoint_every,
        blocks=[int(b) for b in args.blocks.split(",") if b.strip()],
        stages=[int(b) for b in args.stages.split(",") if b.strip()],
    )  # fmt: skip
    for wl in run.workloads:
        x, V0, w0, g = run.make_inputs(*wl[1:4], run.dtypes[wl[4]])
        v2_workload_rows(ctx, wl, x, V0, w0, g)
        del x, V0, w0, g
        run.free()
        run.save()
    run.report["launch_overhead"] = launch_overhead(ctx)
    run.free()
    run.save()
    run.report["recompile"] = recompile_check(ctx)
    run.free()
    run.save()


def baseline_rows(run: Run, wl: tuple) -> None:
    """Phase 2 for one workload: the eager reference, the compiled reference step and
    SpikingJelly, each skipped (its rows say why) when off or out of time budget."""
    args, bench = run.args, run.bench
    modes = ("fwd", "bwd", "full")
    name, T, B, N, dt_name = wl
    x, V0, w0, g = run.make_inputs(T, B, N, run.dtypes[dt_name])
    ref = run.fused_spikes.get(name)
    ref = None if ref is None else ref.to(run.device)
    baselines = [("reference_eager", run.reference, "", True)]
    compile_ok = not args.no_compile
    why = "skipped: --no-compile" if args.no_compile else ""
    if compile_ok and bench.left_s() < COMPILE_MIN_LEFT_S:
        compile_ok, why = False, "skipped: time budget (compile needs ~1 min)"
    baselines.append(
        ("reference_compiled_step", run.reference_compiled,
         "torch.compile'd step, Python loop over T", compile_ok)
    )  # fmt: skip
    for method, fn, note, ok in baselines:
        if not ok or bench.left_s() <= 0:
            for mode in modes:
                reason = why if not ok else "skipped: time budget"
                run.add_row(wl, method, mode, {"status": "skipped", "note": reason})
            continue
        run.run_method(wl, method, fn, modes, x, V0, w0, g, ref_spikes=ref, note=note)
    if run.sj_factory is None:
        for mode in modes:
            run.add_row(wl, "spikingjelly_izhikevich", mode, {"status": "n/a", "note": run.sj_note})
    elif bench.left_s() <= 0:
        for mode in modes:
            run.add_row(
                wl, "spikingjelly_izhikevich", mode,
                {"status": "skipped", "note": "skipped: time budget"},
            )  # fmt: skip
    else:
        run.run_method(
            wl, "spikingjelly_izhikevich", run.sj_factory, modes, x, V0, w0, g,
            note=run.sj_note,
        )  # fmt: skip


def baseline_phase(run: Run) -> None:
    """Phase 2: the baselines of every workload, inside the time budget."""
    for wl in run.workloads:
        baseline_rows(run, wl)
        run.free()
        run.save()


def run_benchmark(args) -> int:
    """Run the benchmark with ``roofline.py``'s parsed ``args``; returns the exit status.
    The report is saved after every workload of every phase."""
    t_start = time.monotonic()
    mods = import_modules(args.interpret_smoke)
    if isinstance(mods, int):
        return mods
    run = Run(args, t_start, mods)
    measure_copy(run)
    run.sj_factory, run.sj_note = spikingjelly_factory(mods.torch, run.smoke)
    fused_phase(run)
    if not args.no_v2:
        v2_phase(run)
    if not args.no_baselines:
        baseline_phase(run)
    run.save()
    stem = run.stem
    print(f"[{stem}] wrote {run.out_dir / (stem + '.json')} and {stem}.md ({run.meta['label']})")
    print(f"[{stem}] elapsed {time.monotonic() - t_start:.1f} s")
    return 0
