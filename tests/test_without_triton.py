"""Without triton (a CPU-only install: it is not a dependency of the package) adex imports,
the reference backend runs forward and backward, and backend='triton' says what is missing.
Run in a subprocess whose import system refuses ``triton``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, NoTriton())
    import torch
    import adex

    assert not adex.HAS_TRITON
    layer = adex.AdExIF(4, learnable=("tau",))  # backend='auto': the reference on CPU
    layer.init_state(2)
    x = (torch.rand(20, 2, 4) * 40).requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.tau.grad is not None
    try:
        bad = adex.AdExIF(4, backend="triton")
        bad.init_state(2)
        bad(torch.rand(3, 2, 4))
    except RuntimeError as err:
        print(err)
    assert not any(m == "triton" or m.startswith("triton.") for m in sys.modules)
    """
)


def test_imports_and_runs_without_triton():
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "backend='triton' needs the triton package, which is not installed" in out.stdout
