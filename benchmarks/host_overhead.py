"""Host-side cost of one ``layer.update(x)`` call, with the kernel launch itself stubbed out.

What the T=1 launch-overhead target depends on besides the GPU: the Python work around the
launch (input and state checks, ``adex_scan``'s validation, output allocation, dispatch). The
Triton kernel is replaced by a no-op so that the figure is host time only, on any machine
(CPU tensors; no GPU needed). With ``check_finite=True`` it includes the finiteness
reductions computed on the CPU tensors. It is NOT a GPU timing: on a GPU, Triton's own launch
(argument binding) comes on top; ``roofline.py`` measures the whole call there.

    python benchmarks/host_overhead.py [--calls 2000] [--batch 64] [--neurons 1024]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # adex's launchers accept CPU tensors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--neurons", type=int, default=1024)
    args = ap.parse_args(argv)

    import torch

    import adex
    import adex.kernels.scan_fwd as scan_fwd

    class NoLaunch:  # kernel[grid](...) does nothing: the outputs stay uninitialized
        def __getitem__(self, grid):
            return lambda *a, **k: None

    scan_fwd._adex_scan_fwd_kernel = NoLaunch()
    torch.set_num_threads(1)
    x = torch.rand(args.batch, args.neurons) * 30
    for check_finite in (False, True):
        for grad in (False, True):
            layer = adex.AdExIF(args.neurons, backend="triton", check_finite=check_finite)
            layer.init_state(args.batch)
            V0, w0 = layer.V.clone(), layer.w.clone()
            xi = x.clone().requires_grad_(grad)
            timings = []
            for _ in range(2):  # the first round warms up
                start = time.perf_counter()
                for _ in range(args.calls):
                    # the stubbed kernel leaves garbage states: restore them without the
                    # validating setters, whose cost is not part of update()
                    layer._V, layer._w = V0, w0
                    layer.update(xi)
                timings.append((time.perf_counter() - start) / args.calls)
            print(f"update() host time, check_finite={check_finite!s:5} grad={grad!s:5}: "
                  f"{timings[-1] * 1e6:7.1f} us per call (kernel launch stubbed)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
