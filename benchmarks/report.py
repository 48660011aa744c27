"""The roofline report (``roofline.py``): speed-ups over the fused rows, the version 2
summary against the issue 4 targets, and the markdown of everything measured.
"""

from __future__ import annotations

# issue 4 targets, checked in the version 2 summary
TARGET_FULL_FRACTION = {"W1": 0.85, "W4": 0.85, "W3": 0.40}
TARGET_CKPT_SAVED = 0.5  # B newly saved per neuron-step
TARGET_CKPT_RATIO = 1.35  # checkpoint full / default full
TARGET_UPDATE_RATIO = 2.0  # T=1 update loop / eager op-chain loop
SMOKE_LABEL = "NOT a timing: Triton interpreter smoke test on CPU at tiny sizes"


def fmt_ms(r: dict) -> str:
    """A timing's median ms with its p20-p80 range, ``-`` without a median."""
    if r.get("median_ms") is None:
        return "-"
    return f"{r['median_ms']:.3f} ({r['p20_ms']:.3f}-{r['p80_ms']:.3f})"


def fmt_num(v, spec: str = ".1f", scale: float = 1.0) -> str:
    """``v * scale`` formatted with ``spec``, ``-`` for None."""
    return "-" if v is None else format(v * scale, spec)


def error_note(err: Exception) -> str:
    """A row's note for a failed measurement: the exception's type and first line."""
    return f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"


def v2_meets(value, target: float | None, smoke: bool, upper: bool = True) -> bool | None:
    """Whether ``value`` meets ``target`` (``<=`` if ``upper`` else ``>=``); None when either
    is missing or under the smoke test (its sizes and timings mean nothing for the targets)."""
    if smoke or value is None or target is None:
        return None
    return value <= target if upper else value >= target


def v2_summary(report: dict) -> dict:
    """Version 2 figures per workload against the issue 4 targets, plus the once-per-run
    checks. Ratios are medians of this run."""
    smoke = report["meta"]["interpret_smoke"]
    ck = f"fused_ckpt{report['meta'].get('checkpoint_every')}"
    rows = {(r["workload"], r["method"], r["mode"]): r for r in report["rows"]}
    mem = {(m["workload"], m["method"]): m for m in report["memory"]}

    def get(table, key, field):
        return (table.get(key) or {}).get(field)

    def ratio(a, b):
        return a / b if a and b else None

    out: dict = {"label": SMOKE_LABEL if smoke else "timing", "workloads": {}}
    for name in dict.fromkeys(r["workload"] for r in report["rows"]):
        w = {
            "fused_full_fraction_of_copy": get(rows, (name, "fused", "full"), "fraction_of_copy"),
            "target_full_fraction": TARGET_FULL_FRACTION.get(name),
            "ckpt_full_vs_default_full": ratio(
                get(rows, (name, ck, "full"), "median_ms"),
                get(rows, (name, "fused", "full"), "median_ms"),
            ),
            "ckpt_saved_new_bytes_per_neuron_step": get(
                mem, (name, ck), "saved_new_bytes_per_neuron_step"
            ),
            "ckpt_saved_alias_bytes_per_neuron_step": get(
                mem, (name, ck), "saved_alias_bytes_per_neuron_step"
            ),
            "default_saved_new_bytes_per_neuron_step": get(
                mem, (name, "fused"), "saved_new_bytes_per_neuron_step"
            ),
            "ckpt_peak_vs_default_peak": ratio(
                get(mem, (name, ck), "peak_above_inputs_bytes"),
                get(mem, (name, "fused"), "peak_above_inputs_bytes"),
            ),
            "u8_fwd_nograd_vs_float": ratio(
                get(rows, (name, "fused_spikes_u8", "fwd_nograd"), "median_ms"),
                get(rows, (name, "fused", "fwd_nograd"), "median_ms"),
            ),
            "u8_model_ratio": ratio(
                get(rows, (name, "fused_spikes_u8", "fwd_nograd"), "model_bytes_per_neuron_step"),
                get(rows, (name, "fused", "fwd_nograd"), "model_bytes_per_neuron_step"),
            ),
        }
        w["meets_full_fraction"] = v2_meets(
            w["fused_full_fraction_of_copy"], w["target_full_fraction"], smoke, upper=False
        )
        w["meets_ckpt_ratio"] = v2_meets(w["ckpt_full_vs_default_full"], TARGET_CKPT_RATIO, smoke)
        w["meets_ckpt_saved"] = v2_meets(
            w["ckpt_saved_new_bytes_per_neuron_step"], TARGET_CKPT_SAVED, smoke
        )
        out["workloads"][name] = w
    out["block_sweep"] = [
        {"workload": r["workload"], "gpu_block": r.get("gpu_block"),
         "gpu_stages": r.get("gpu_stages"), "median_ms": r["median_ms"],
         "fraction_of_copy": r.get("fraction_of_copy"), "note": r.get("note")}
        for r in report["rows"] if r["method"].startswith("fused_block")
    ]  # fmt: skip
    lo = report.get("launch_overhead") or {}
    for name in ("eager_reference_step", "eager_euler_chain"):
        out[f"update_ratio_vs_{name}"] = lo.get(f"ratio_vs_{name}")
        out[f"meets_update_ratio_vs_{name}"] = v2_meets(
            lo.get(f"ratio_vs_{name}"), TARGET_UPDATE_RATIO, smoke
        )
    rc = report.get("recompile") or {}
    for key in ("fwd", "bwd"):
        out[f"recompiles_{key}"] = rc.get(f"{key}_new_after_first_shape")
        out[f"meets_no_recompile_{key}"] = v2_meets(out[f"recompiles_{key}"], 0, smoke)
    return out


def add_speedups(report: dict) -> None:
    """For every other row: ``fused_speedup`` = its median / the fused median (same workload
    and mode): the fused kernels' speed-up over a baseline, or for ``fused_defaults`` the cost
    of ``adex_scan``'s defaults."""
    fused = {
        (r["workload"], r["mode"]): r["median_ms"]
        for r in report["rows"]
        if r["method"] == "fused" and r["median_ms"]
    }
    for r in report["rows"]:
        f = fused.get((r["workload"], r["mode"]))
        if r["method"] != "fused" and r["median_ms"] and f:
            r["fused_speedup"] = r["median_ms"] / f


def summary_lines(report: dict) -> list[str]:
    """Median ms per workload and mode: fused, then each baseline with its ratio to fused."""
    ck = f"fused_ckpt{report['meta'].get('checkpoint_every')}"
    methods = ["fused", "fused_defaults", ck, "fused_spikes_u8", "reference_eager",
               "reference_compiled_step", "spikingjelly_izhikevich"]  # fmt: skip
    cells: dict[tuple, dict] = {}
    keys: list[tuple] = []
    for r in report["rows"]:
        if r["method"] not in methods:
            continue
        key = (r["workload"], r["dtype"], r["mode"])
        if key not in cells:
            cells[key] = {}
            keys.append(key)
        cells[key][r["method"]] = r
    lines = [
        "Summary: median ms; in brackets this method's median / the fused median (for a "
        "baseline: the fused kernels' speed-up over it; for the checkpoint and uint8-spike "
        "rows: their time relative to the default fused kernels).",
        "",
        "| workload | dtype | mode | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for key in keys:
        row = []
        for m in methods:
            r = cells[key].get(m)
            if r is None:
                row.append("")
            elif r.get("median_ms") is None:
                row.append(str(r.get("status", "-")))
            elif r.get("fused_speedup") is not None:
                row.append(f"{r['median_ms']:.3f} ({r['fused_speedup']:.1f}x)")
            else:
                row.append(f"{r['median_ms']:.3f}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(row) + " |")
    return lines


def fmt_meets(value, spec: str, meets: bool | None, scale: float = 1.0) -> str:
    """A number with its target verdict: '0.25 (yes)', '1.50 (no)', or just the number."""
    text = fmt_num(value, spec, scale)
    return text if meets is None else f"{text} ({'yes' if meets else 'no'})"


def v2_lines(report: dict) -> list[str]:
    """Markdown of the version 2 summary, the block sweep and the once-per-run checks."""
    v2 = report.get("v2_summary") or v2_summary(report)
    k = report["meta"].get("checkpoint_every")
    lines = [
        f"## Version 2 checks ({v2['label']})",
        "",
        f"Targets (issue 4): fused full >= 85% of copy bandwidth at W1/W4, >= 40% at W3; "
        f"checkpoint mode (K={k}) <= {TARGET_CKPT_SAVED} B newly saved per neuron-step and <= "
        f"{TARGET_CKPT_RATIO}x the default full time; T=1 update loop <= "
        f"{TARGET_UPDATE_RATIO}x an eager op-chain loop; no recompilation when T or batch "
        "changes. (yes/no) marks a target; none under the smoke test.",
        "",
        "| workload | fused full % copy | ckpt full / default full | ckpt saved new B/ns | "
        "ckpt saved alias B/ns | default saved new B/ns | ckpt / default peak above inputs | "
        "u8 / float fwd_nograd time (model) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, w in v2["workloads"].items():
        u8 = fmt_num(w["u8_fwd_nograd_vs_float"], ".2f")
        lines.append(
            f"| {name} | "
            f"{fmt_meets(w['fused_full_fraction_of_copy'], '.0f', w['meets_full_fraction'], 100)}"
            f" | {fmt_meets(w['ckpt_full_vs_default_full'], '.2f', w['meets_ckpt_ratio'])} | "
            f"{fmt_meets(w['ckpt_saved_new_bytes_per_neuron_step'], '.3f', w['meets_ckpt_saved'])}"
            f" | {fmt_num(w['ckpt_saved_alias_bytes_per_neuron_step'], '.3f')} | "
            f"{fmt_num(w['default_saved_new_bytes_per_neuron_step'], '.3f')} | "
            f"{fmt_num(w['ckpt_peak_vs_default_peak'], '.2f')} | "
            f"{u8} ({fmt_num(w['u8_model_ratio'], '.3f')}) |"
        )
    if v2["block_sweep"]:
        lines += ["", "Block-size sweep (default fused full):", "",
                  "| workload | GPU_BLOCK | GPU_STAGES | median ms | % copy BW | note |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for b in v2["block_sweep"]:
            lines.append(
                f"| {b['workload']} | {b['gpu_block']} | {b.get('gpu_stages')} | "
                f"{fmt_num(b['median_ms'], '.3f')} | "
                f"{fmt_num(b['fraction_of_copy'], '.0f', 100.0)} | {b['note'] or ''} |"
            )
    lines += ["", *launch_overhead_lines(report.get("launch_overhead"), v2)]
    lines += ["", *recompile_lines(report.get("recompile"), v2)]
    return lines


def launch_overhead_lines(lo: dict | None, v2: dict) -> list[str]:
    """Markdown of the T=1 launch-overhead check."""
    if not lo:
        return ["T=1 launch overhead: not run."]
    head = (
        f"T=1 launch overhead ({lo['label']}): a loop of {lo['calls_per_loop']} calls, "
        f"batch {lo['batch']} x {lo['neurons']} neurons, no grad; status {lo['status']}"
    )
    lines = [head + (f" ({lo['note']})" if lo.get("note") else "") + ".", ""]
    for name, what in (
        ("update_triton", "`AdExIF(backend='triton', check_finite=False).update(x)`"),
        ("eager_reference_step", "eager `adex.reference.adex_step_reference`"),
        ("eager_euler_chain", "eager hand-written Euler step, 22 elementwise ops"),
    ):
        r = lo.get(name) or {}
        lines.append(
            f"- {what}: {fmt_ms(r)} ms per loop, {fmt_num(r.get('us_per_call'), '.1f')} us per call"
        )
    for name in ("eager_reference_step", "eager_euler_chain"):
        ratio = fmt_meets(
            v2.get(f"update_ratio_vs_{name}"), ".2f", v2.get(f"meets_update_ratio_vs_{name}")
        )
        lines.append(f"- update loop / {name} loop: {ratio}")
    return lines


def recompile_lines(rc: dict | None, v2: dict) -> list[str]:
    """Markdown of the Triton recompile check."""
    if not rc:
        return ["Recompile check: not run."]
    lines = [
        f"Recompile check (triton {rc['triton']}; compiled variants counted in the kernels' "
        f"`{rc['cache_attribute']}`, or n/a where they keep none, as under the "
        f"interpreter): fused fwd+bwd, default and checkpoint_every={rc['checkpoint_every']}, "
        f"{rc['neurons']} neurons, at each (T, batch) in turn; status {rc['status']}"
        + (f" ({rc['note']})" if rc.get("note") else "")
        + ".",
        "",
        "| T | batch | fwd kernel variants | bwd kernel variants |",
        "|---|---|---|---|",
    ]
    for s in rc["steps"]:
        fwd = "n/a" if s["fwd_variants"] is None else s["fwd_variants"]
        bwd = "n/a" if s["bwd_variants"] is None else s["bwd_variants"]
        lines.append(f"| {s['T']} | {s['batch']} | {fwd} | {bwd} |")
    shown = [
        "n/a" if v2.get(f"recompiles_{k}") is None
        else fmt_meets(v2[f"recompiles_{k}"], ".0f", v2.get(f"meets_no_recompile_{k}"))
        for k in ("fwd", "bwd")
    ]  # fmt: skip
    lines += ["", f"Variants added after the first shape: fwd {shown[0]}, bwd {shown[1]}."]
    return lines


def markdown(report: dict) -> str:
    """The whole report as markdown: meta, copy bandwidth, every row, the summaries, memory."""
    meta, copy = report["meta"], report["copy"]
    lines = []
    title = "Roofline: fused AdEx scans"
    if meta["interpret_smoke"]:
        title += f" -- {SMOKE_LABEL.upper()}"
    lines += [f"# {title}", ""]
    for key in ("label", "card", "date_utc", "git_commit", "python", "torch", "torch_cuda"):
        lines.append(f"- {key}: {meta.get(key)}")
    for key in ("triton", "kernel_version", "kernel_config", "quick", "elapsed_s"):
        lines.append(f"- {key}: {meta.get(key)}")
    if copy:
        lines += [
            "",
            f"Device-to-device copy (`dst.copy_(src)`, {copy['bytes_moved'] / 2**30:.2f} GiB "
            f"moved): **{copy['gbps']:.1f} GB/s** at the median "
            f"({fmt_ms(copy)} ms; {copy['timer']}).",
        ]
    lines += [
        "",
        "Model B: minimal bytes per neuron-step (`benchmarks/bytes_model.py`). GB/s = model "
        "bytes / median time. Predicted = model bytes / copy bandwidth. Speed-up = baseline "
        "median / fused median for the same mode (for `fused_defaults`: the slowdown caused by "
        "`check_finite=True` and per-call parameter packing; for the version 2 rows "
        "`fused_ckpt*`, `fused_spikes_u8`, `fused_block*`: their median / the default fused "
        "median). Checkpoint rows show in brackets the model and % copy BW with the recompute "
        "scratch counted as DRAM traffic.",
        "",
        "| workload | T x batch x neurons | dtype | method | mode | median ms (p20-p80) | "
        "model B | GB/s | % copy BW | predicted ms | this / fused | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        shape = f"{r['T']} x {r['batch']} x {r['neurons']}"
        pct = fmt_num(r.get("fraction_of_copy"), ".0f", 100.0)
        speed = fmt_num(r.get("fused_speedup"), ".1f")
        speed = speed + "x" if speed != "-" else speed
        model_b = f"{r['model_bytes_per_neuron_step']:g}"
        if r.get("model_bytes_with_scratch") is not None:
            model_b += f" ({r['model_bytes_with_scratch']:g})"
            pct += f" ({fmt_num(r.get('fraction_of_copy_with_scratch'), '.0f', 100.0)})"
        lines.append(
            f"| {r['workload']} | {shape} | {r['dtype']} | {r['method']} | {r['mode']} | "
            f"{fmt_ms(r)} | {model_b} | "
            f"{fmt_num(r.get('achieved_gbps'))} | {pct} | {fmt_num(r['predicted_ms'], '.3f')} | "
            f"{speed} | {r.get('note') or r.get('timer') or ''} |"
        )
    lines += ["", *summary_lines(report), "", *v2_lines(report), ""]
    lines += [
        "Memory of one fwd+bwd (peak of `torch.cuda.max_memory_allocated` after "
        "`reset_peak_memory_stats`; above inputs = peak minus what was allocated before) and "
        "bytes saved for backward (`saved_tensors_hooks`, distinct tensors; new: storage not "
        "shared with an input, alias: same `untyped_storage()` as x, V0, w0 or the packed "
        "parameters).",
        "",
        "| workload | dtype | method | peak GiB | peak above inputs GiB | saved B/neuron-step | "
        "saved new | saved alias | first call s | spike mismatch vs fused | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["memory"]:
        lines.append(
            f"| {m['workload']} | {m['dtype']} | {m['method']} | "
            f"{fmt_num(m.get('peak_bytes'), '.2f', 1 / 2**30)} | "
            f"{fmt_num(m.get('peak_above_inputs_bytes'), '.2f', 1 / 2**30)} | "
            f"{fmt_num(m.get('saved_bytes_per_neuron_step'), '.2f')} | "
            f"{fmt_num(m.get('saved_new_bytes_per_neuron_step'), '.3f')} | "
            f"{fmt_num(m.get('saved_alias_bytes_per_neuron_step'), '.3f')} | "
            f"{m.get('first_call_s')} | {fmt_num(m.get('spike_mismatch_vs_fused'), '.2e')} | "
            f"{m.get('note', '')} |"
        )
    lines.append("")
    return "\n".join(lines)
