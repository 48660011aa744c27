"""The fused forward's own finiteness check (``check_finite=True`` on ``backend='triton'``):
the kernel checks every x it reads (and the state block, and a learnable layer's
constraint verdict) in the same pass, and the caller raises the same errors as the host
check of the other backends, naming the tensor."""

from __future__ import annotations

import math

import pytest
import torch

import adex
from adex import functional
from adex.functional import finite_flag

pytestmark = pytest.mark.skipif(not adex.HAS_TRITON, reason="needs triton")

T, BATCH, N = 5, 3, 7
# more neurons than one interpreter program holds (1024): a second program's lanes
WIDE = 1100


def inputs(n: int = N, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, BATCH, n, generator=g) * 5 + 20).to(dtype)
    V0 = torch.rand(BATCH, n, generator=g) * 10 - 62
    w0 = torch.rand(BATCH, n, generator=g)
    return x, V0, w0


def flag_is_clear() -> bool:
    return int(finite_flag(torch.device("cpu")).item()) == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "where", [(0, 0, 0), (T - 1, BATCH - 1, WIDE - 1), (2, 1, 1030)], ids=["first", "last", "mid"]
)
def test_x_non_finite_anywhere(where, value):
    x, V0, w0 = inputs(WIDE)
    x[where] = value
    with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
        adex.adex_scan(x, V0, w0, backend="triton")
    assert flag_is_clear()
    # the next (finite) call runs, and equals the reference
    x[where] = 20.0
    out = adex.adex_scan(x, V0, w0, backend="triton")
    ref = adex.adex_scan(x, V0, w0, backend="reference")
    torch.testing.assert_close(out.spikes, ref.spikes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_x_inf(dtype):
    x, V0, w0 = inputs(dtype=dtype)
    x[3, 0, 2] = math.inf
    with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
        adex.adex_scan(x, V0, w0, backend="triton")
    x[3, 0, 2] = 1.0
    assert adex.adex_scan(x, V0, w0, backend="triton").spikes.dtype == dtype


@pytest.mark.parametrize("which", ["V0", "w0"])
def test_state_non_finite(which):
    x, V0, w0 = inputs()
    state = {"V0": V0, "w0": w0}
    state[which][BATCH - 1, N - 1] = math.nan
    with pytest.raises(ValueError, match=rf"\b{which} contains NaN or inf"):
        adex.adex_scan(x, V0, w0, backend="triton")
    assert flag_is_clear()


def test_ref_and_synapse_state_rows():
    x, V0, w0 = inputs()
    t_last = torch.full((BATCH, N), -1e4)
    t_last[0, 3] = math.nan
    with pytest.raises(ValueError, match=r"last_spike_time contains NaN or inf"):
        adex.adex_scan(x, V0, w0, tau_ref=2.0, last_spike_time=t_last, backend="triton")
    I0 = torch.zeros(BATCH, N)
    I0[1, 2] = -math.inf
    params = adex.AdExParams(tau_syn=5.0)
    with pytest.raises(ValueError, match=r"I0 contains NaN or inf"):
        adex.adex_scan(x, V0, w0, params, I0=I0, backend="triton")


def test_with_gradient_and_lengths():
    """The training path checks too; with lengths, x past a sample's length is checked as
    on the other backends (all of x is the input)."""
    x, V0, w0 = inputs()
    x[T - 1, 0, 0] = math.nan
    xg = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
        adex.adex_scan(xg, V0, w0, backend="triton")
    lengths = torch.tensor([2, T, T])
    for backend in ("triton", "reference"):
        with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
            adex.adex_scan(x, V0, w0, backend=backend, lengths=lengths)
    assert flag_is_clear()


def test_opt_out_runs_unchecked():
    x, V0, w0 = inputs()
    x[1, 1, 1] = math.nan
    out = adex.adex_scan(x, V0, w0, backend="triton", check_finite=False)
    assert out.spikes.shape == x.shape
    assert flag_is_clear()


def test_module_keeps_its_state_after_a_failed_call():
    layer = adex.AdExIF(N, backend="triton")
    layer.init_state(BATCH)
    x, _, _ = inputs()
    layer(x)
    V, w, steps = layer.V.clone(), layer.w.clone(), layer.t_step
    bad = x.clone()
    bad[0, 2, 6] = math.inf
    with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
        layer(bad)
    assert torch.equal(layer.V, V) and torch.equal(layer.w, w) and layer.t_step == steps
    layer(x)  # the state is still trusted, the flag clear


@pytest.mark.parametrize("check_finite", [True, False])
def test_learnable_constraint_in_the_kernel(check_finite):
    """A learnable parameter pushed out of its range (as an optimizer step could) is
    reported as such, with or without check_finite; the call passes again once the parameter
    is clamped."""
    layer = adex.AdExIF(N, backend="triton", learnable=("tau",), check_finite=check_finite)
    layer.init_state(BATCH)
    x, _, _ = inputs()
    layer(x)
    with torch.no_grad():
        layer.tau.fill_(-1.0)
    with pytest.raises(ValueError, match="left its valid range"):
        layer(x)
    assert flag_is_clear()
    with torch.no_grad():
        layer.tau.clamp_(min=1.0)
    layer(x)


def test_inference_mode_then_normal_mode():
    """The flag made inside inference mode is an ordinary tensor: cleared in place after a
    failure outside it."""
    x, V0, w0 = inputs()
    functional._FINITE_FLAGS.clear()  # (the flag, and the checks that hold it, made anew)
    functional._FINITE_CHECKS.clear()
    with torch.inference_mode():
        adex.adex_scan(x, V0, w0, backend="triton")
    x[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
        adex.adex_scan(x, V0, w0, backend="triton")
    assert flag_is_clear()


def test_routed_through_the_ops(monkeypatch):
    """Eager calls routed through the custom ops (as tests/test_dispatch.py does) are
    checked on the host instead: the ops' kernels do not check."""
    monkeypatch.setattr(adex.fused, "_through_ops", lambda: True)
    x, V0, w0 = inputs()
    x[2, 1, 3] = math.nan
    with pytest.raises(ValueError, match=r"\bx contains NaN or inf"):
        adex.adex_scan(x, V0, w0, backend="triton")
    assert flag_is_clear()
