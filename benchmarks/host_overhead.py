"""Host-side (Python) cost of adex's calls, with every Triton launch stubbed out, against
plain PyTorch baselines measured in the same run.

These are CPU HOST TIMES WITH THE KERNEL LAUNCHES STUBBED, NOT GPU TIMINGS: the figures are
the Python work around the kernels (module and ``adex_scan`` checks, parameter packing,
output allocation, custom-op and autograd dispatch) on tiny CPU tensors. On a GPU, Triton's
own launch (argument binding) and the kernels come on top; ``roofline.py`` measures there.

How the launches are stubbed: ``TRITON_INTERPRET=1`` is set before ``adex`` is imported, so
every ``@triton.jit`` kernel is a ``triton.runtime.interpreter.InterpretedFunction``, and
``kernel[grid](...)`` ends in ``InterpretedFunction.run``; that method is replaced by one that
only counts the launch. Nothing of adex's own is patched or named, so the stub holds whatever
adex's internals are called. Kernel outputs are left as allocated (``torch.empty``:
uninitialized, possibly NaN), which sets what each row times:

- ``init_state``: ``layer.init_state(batch)`` alone (AdExIF, ``in_size`` neurons).
- no-grad forward: ``layer(x)`` under ``torch.no_grad()``, ``x`` ``[T, batch, in_size]``,
  the state carried over from call to call (garbage, never read: a state that adex produced
  is trusted and not checked again, so with ``check_finite=True`` only ``x`` is checked).
  Also, with ``check_finite=True``, the forward after the state was assigned through the
  public ``layer.V`` / ``layer.w`` setters (a finite state each call, which is then checked):
  setters + forward are timed, the setters alone too, and the row is the difference.
- training call: ``layer.init_state(batch)``, ``layer(x).sum().backward()`` with ``x``
  requiring grad (a layer inside a network: the call also computes the input's gradient),
  for ``AdExIF(n, backend="triton")`` (fixed) and ``learnable=("tau", "b")``; and for the
  learnable model with ``x`` not requiring grad (a first layer on data: parameter gradients
  only). ``init_state`` gives a finite state every call, so both ``check_finite`` settings
  are timed. Gradients accumulate across calls (no zeroing).
  The learnable parameters do not change between these calls, so with
  ``check_finite=False`` their constraint check runs once; the row "after an in-place
  step" first bumps both parameters' versions (``add_(0.0)`` under no_grad, as an
  optimizer step would; the two ops are in its time), so that the check runs every call.
- baselines: ``torch.sigmoid(nn.Linear(n, n)(x)).sum().backward()`` on the same ``x`` as
  the training call it is compared with, doing the same gradient work: with ``x`` requiring
  grad for the training calls above (it then computes the input's gradient too), without
  for the first-layer call; and a trivial ``torch.library.custom_op`` returning
  ``torch.empty_like(x)`` called under ``torch.no_grad()`` (the no-grad forward's).
- ``update()``: one step (T=1) at the size of the NOTES.md table (64 x 1024 neurons),
  ``check_finite=False``, no grad, the state carried over.

Each figure is the median over ``--rounds`` rounds of ``--calls`` calls (per-call mean per
round) after one warm-up round, the cases interleaved within each round; one thread
(``torch.set_num_threads(1)``), ``time.perf_counter`` (``--cpu-time``: ``time.process_time``,
this process's CPU time, for a machine that other jobs load). Then the ratios against the targets
(each training call <= 2x its baseline, ``init_state`` <= 30 us, no-grad forward <= 1.5x the
bare custom op) with PASS/FAIL for both ``check_finite`` settings. Each ratio is paired: the
median over rounds of the case's time over its baseline's in the same round (a few hundred
ms apart at most), so a machine whose speed drifts between rounds moves both alike.

    python benchmarks/host_overhead.py [--rounds 21] [--calls 100] [--batch 4] [--neurons 16]
        [--steps 8] [--update-batch 64] [--update-neurons 1024] [--json PATH] [--cpu-time]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

# before adex (and triton) are imported: the kernels become InterpretedFunctions, whose launch
# is stubbed below, and adex's launchers accept CPU tensors
os.environ["TRITON_INTERPRET"] = "1"

TARGETS = {"train_ratio": 2.0, "init_state_us": 30.0, "fwd_nograd_ratio": 1.5}
CF = (False, True)  # the check_finite settings, in column order
_LAUNCHES = [0]
_BARE_OP: list[Callable] = []


def stub_triton_launches() -> None:
    """Replace the interpreter's launch by a counter: ``kernel[grid](...)`` does nothing."""
    from triton.runtime import interpreter

    if not callable(getattr(interpreter.InterpretedFunction, "run", None)):
        raise RuntimeError("triton.runtime.interpreter.InterpretedFunction.run not found")

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            _LAUNCHES[0] += 1

    interpreter.InterpretedFunction.run = run


def bare_custom_op() -> Callable:
    """A trivial custom op (defined once per process): ``torch.empty_like(x)``."""
    if not _BARE_OP:
        import torch

        # the schema is given: the annotations are strings here (``from __future__``)
        @torch.library.custom_op(
            "adex_host_bench::empty_like", mutates_args=(), schema="(Tensor x) -> Tensor"
        )
        def empty_like(x):
            return torch.empty_like(x)

        _BARE_OP.append(empty_like)
    return _BARE_OP[0]


def build_cases(args) -> dict[str, tuple[Callable[[], object], bool]]:
    """key -> (one call, grad enabled); every call only through adex's public API."""
    import torch
    from torch import nn

    import adex

    T, B, N = args.steps, args.batch, args.neurons
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(T, B, N, generator=gen) * 30
    x_grad = x.clone().requires_grad_(True)
    cases: dict[str, tuple[Callable[[], object], bool]] = {}

    init_layer = adex.AdExIF(N, backend="triton")
    cases["init_state"] = (lambda: init_layer.init_state(B), False)

    for cf in CF:
        fwd = adex.AdExIF(N, backend="triton", check_finite=cf)
        fwd.init_state(B)
        V0, w0 = fwd.V.clone(), fwd.w.clone()

        def setters(layer=fwd, V0=V0, w0=w0):
            layer.V = V0
            layer.w = w0

        carried = adex.AdExIF(N, backend="triton", check_finite=cf)
        carried.init_state(B)
        cases[f"fwd_nograd_cf{cf}"] = (lambda layer=carried: layer(x), False)
        if cf:  # an assigned state is checked: a finite one each call

            def setters_fwd(layer=fwd, setters=setters):
                setters()
                return layer(x)

            cases[f"setters_fwd_nograd_cf{cf}"] = (setters_fwd, False)
        cases[f"setters_cf{cf}"] = (setters, False)

        for kind, extra in (("fixed", {}), ("learnable", {"learnable": ("tau", "b")})):
            layer = adex.AdExIF(N, backend="triton", check_finite=cf, **extra)

            def train(layer=layer):
                layer.init_state(B)
                layer(x_grad).sum().backward()

            cases[f"train_{kind}_cf{cf}"] = (train, True)
            if kind == "learnable":  # a first layer on data: parameter gradients only

                def train_data(layer=layer):
                    layer.init_state(B)
                    layer(x).sum().backward()

                cases[f"train_data_cf{cf}"] = (train_data, True)
            if kind == "learnable":  # as after an optimizer step: the versions moved

                def stepped(layer=layer, train=train):
                    with torch.no_grad():
                        layer.tau.add_(0.0)
                        layer.b.add_(0.0)
                    train()

                cases[f"train_stepped_cf{cf}"] = (stepped, True)

    lin = nn.Linear(N, N)
    cases["baseline_linear_sigmoid"] = (lambda: torch.sigmoid(lin(x_grad)).sum().backward(), True)
    cases["baseline_linear_sigmoid_data"] = (lambda: torch.sigmoid(lin(x)).sum().backward(), True)
    op = bare_custom_op()
    cases["baseline_custom_op"] = (lambda: op(x), False)

    upd = adex.AdExIF(args.update_neurons, backend="triton", check_finite=False)
    upd.init_state(args.update_batch)
    x_upd = torch.rand(args.update_batch, args.update_neurons, generator=gen) * 30
    cases["update_T1"] = (lambda: upd.update(x_upd), False)
    return cases


def time_cases(cases, rounds: int, calls: int,
               clock: Callable[[], float] = time.perf_counter,
               ) -> tuple[dict[str, list[float]], dict[str, int]]:  # fmt: skip
    """The us per call of each case in every timed round (timed by ``clock``), and the
    Triton launches one call makes."""
    import torch

    launches = {}
    for key, (fn, grad) in cases.items():
        with torch.set_grad_enabled(grad):
            before = _LAUNCHES[0]
            fn()
            launches[key] = _LAUNCHES[0] - before
    samples: dict[str, list[float]] = {key: [] for key in cases}
    for r in range(rounds + 1):  # round 0 warms up
        for key, (fn, grad) in cases.items():
            with torch.set_grad_enabled(grad):
                start = clock()
                for _ in range(calls):
                    fn()
                elapsed = clock() - start
            if r:
                samples[key].append(elapsed / calls * 1e6)
    return samples, launches


def paired_ratio(samples: dict[str, list[float]], case: str, baseline: str) -> float:
    """The median over rounds of ``case``'s time over ``baseline``'s in the same round: a
    machine whose speed drifts (other jobs, frequency) moves both alike within a round."""
    return statistics.median(a / b for a, b in zip(samples[case], samples[baseline], strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=21, help="timed rounds (median); + 1 warm-up")
    ap.add_argument("--calls", type=int, default=100, help="calls per round")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--neurons", type=int, default=16, help="AdExIF in_size")
    ap.add_argument("--steps", type=int, default=8, help="T of the forward and training calls")
    ap.add_argument("--update-batch", type=int, default=64)
    ap.add_argument("--update-neurons", type=int, default=1024)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with this process's CPU time (time.process_time) instead of "
                         "the wall clock: on a machine that other jobs load, the time this "
                         "process waits for a core is then left out")  # fmt: skip
    args = ap.parse_args(argv)

    stub_triton_launches()
    import torch
    import triton

    torch.set_num_threads(1)
    cases = build_cases(args)
    clock = time.process_time if args.cpu_time else time.perf_counter
    samples, launches = time_cases(cases, args.rounds, args.calls, clock)
    # the forward on an assigned state: setters + forward, less the setters (per round)
    both, setters = samples["setters_fwd_nograd_cfTrue"], samples["setters_cfTrue"]
    samples["assigned_fwd_nograd_cfTrue"] = [a - b for a, b in zip(both, setters, strict=True)]
    us = {key: statistics.median(v) for key, v in samples.items()}
    if launches["update_T1"] < 1 or launches["train_fixed_cfFalse"] < 2:
        raise RuntimeError(f"the stub saw no Triton launches ({launches}): is adex on Triton?")
    launches["assigned_fwd_nograd_cfTrue"] = launches["setters_fwd_nograd_cfTrue"]

    ratios, checks = {}, {}
    for cf in CF:
        for kind, base in (("fixed", "baseline_linear_sigmoid"),
                           ("learnable", "baseline_linear_sigmoid"),
                           ("data", "baseline_linear_sigmoid_data")):  # fmt: skip
            key = f"train_{kind}_cf{cf}_over_baseline"
            ratios[key] = paired_ratio(samples, f"train_{kind}_cf{cf}", base)
            checks[key] = ratios[key] <= TARGETS["train_ratio"]
        key = f"fwd_nograd_cf{cf}_over_custom_op"
        ratios[key] = paired_ratio(samples, f"fwd_nograd_cf{cf}", "baseline_custom_op")
        checks[key] = ratios[key] <= TARGETS["fwd_nograd_ratio"]
    checks["init_state_us"] = us["init_state"] <= TARGETS["init_state_us"]

    T, B, N = args.steps, args.batch, args.neurons
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    print("adex host overhead: CPU HOST TIME per call, every Triton launch stubbed (nothing")
    print("executes; outputs uninitialized). NOT a GPU timing.")
    print(f"python {env['python']}, torch {env['torch']}, triton {env['triton']}, "
          f"{env['threads']} thread; AdExIF in_size={N}, batch={B}, T={T}; median of "
          f"{args.rounds} rounds x {args.calls} calls after 1 warm-up round; "
          f"{'process CPU time' if args.cpu_time else 'wall clock'}")  # fmt: skip
    print()

    def cell(key: str) -> str:
        return f"{us[key]:9.1f}" if key in us else f"{'-':>9}"

    rows = [
        ("init_state(batch)", "init_state", "init_state"),
        ("no-grad forward", "fwd_nograd_cfFalse", "fwd_nograd_cfTrue"),
        ("  on an assigned state (the difference)", None, "assigned_fwd_nograd_cfTrue"),
        ("  V/w setters + no-grad forward", None, "setters_fwd_nograd_cfTrue"),
        ("  V/w setters alone", "setters_cfFalse", "setters_cfTrue"),
        ("training call, fixed", "train_fixed_cfFalse", "train_fixed_cfTrue"),
        ("training call, learnable (tau, b)", "train_learnable_cfFalse", "train_learnable_cfTrue"),
        ("  after an in-place step", "train_stepped_cfFalse", "train_stepped_cfTrue"),
        ("  input without grad (first layer)", "train_data_cfFalse", "train_data_cfTrue"),
        ("baseline: Linear + sigmoid fwd+bwd", "baseline_linear_sigmoid", None),
        ("  input without grad", "baseline_linear_sigmoid_data", None),
        ("baseline: bare custom_op, no grad", "baseline_custom_op", None),
        (f"update(), T=1, {args.update_batch} x {args.update_neurons}", "update_T1", None),
    ]
    print(f"{'us per call':<40} {'cf=False':>9} {'cf=True':>9}  launches/call")
    for label, k_false, k_true in rows:
        n = launches.get(k_false or k_true, 0)
        a = cell(k_false) if k_false else f"{'-':>9}"
        b = cell(k_true) if k_true else f"{'-':>9}"
        if k_false == k_true:  # independent of check_finite
            b = f"{'(same)':>9}"
        print(f"{label:<40} {a} {b}  {n}")
    print("(cf = check_finite; the forward on an assigned state = setters + forward - setters)")
    print()

    def verdict(key: str) -> str:
        return "PASS" if checks[key] else "FAIL"

    print(f"{'target':<40} {'cf=False':>14} {'cf=True':>14}")
    for label, stem, limit in (
        ("training fixed / baseline", "train_fixed", TARGETS["train_ratio"]),
        ("training learnable / baseline", "train_learnable", TARGETS["train_ratio"]),
        ("  first layer / its baseline", "train_data", TARGETS["train_ratio"]),
    ):
        label = f"{label} (<= {limit:g}x)"
        cells = [f"{stem}_cf{cf}_over_baseline" for cf in CF]
        print(f"{label:<40} " + " ".join(f"{ratios[k]:6.2f}x {verdict(k)}" for k in cells))
    label = f"no-grad forward / custom op (<= {TARGETS['fwd_nograd_ratio']:g}x)"
    cells = [f"fwd_nograd_cf{cf}_over_custom_op" for cf in CF]
    print(f"{label:<40} " + " ".join(f"{ratios[k]:6.2f}x {verdict(k)}" for k in cells))
    label = f"init_state (<= {TARGETS['init_state_us']:g} us)"
    print(f"{label:<40} {us['init_state']:6.1f}us {verdict('init_state_us')}")

    if args.json:
        report = {
            "note": "CPU host time per call with every Triton launch stubbed; NOT GPU timings",
            "settings": {
                "rounds": args.rounds,
                "calls": args.calls,
                "batch": B,
                "neurons": N,
                "steps": T,
                "update_batch": args.update_batch,
                "update_neurons": args.update_neurons,
                "clock": "process_time" if args.cpu_time else "perf_counter",
            },
            "environment": env,
            "us_per_call": us,
            "launches_per_call": launches,
            "ratios": ratios,
            "targets": TARGETS,
            "pass": checks,
            "argv": sys.argv[1:] if argv is None else list(argv),
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
