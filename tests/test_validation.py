"""Bad inputs raise clear errors that name the offending argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import adex
from adex.params import AdExParams

u = adex.u
BATCH, N, T = 2, 4, 5


def good_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(T, BATCH, N, generator=g) * 5 + 20).to(dtype)
    V0 = (torch.rand(BATCH, N, generator=g) * 10 - 62).to(dtype)
    w0 = torch.rand(BATCH, N, generator=g).to(dtype)
    return x, V0, w0


def ready_layer(**kwargs) -> adex.AdExIF:
    kwargs.setdefault("backend", "reference")
    layer = adex.AdExIF(N, **kwargs)
    layer.init_state(BATCH)
    return layer


def test_good_inputs_pass():
    """The baseline of every test below runs without error (and spikes)."""
    x, V0, w0 = good_inputs()
    out = adex.adex_scan(x, V0, w0, backend="reference")
    assert out.V.shape == (BATCH, N)
    layer = ready_layer()
    spikes = layer(x)
    assert spikes.shape == x.shape
    layer.update(x[0])


# -- adex_scan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [np.ones((T, N)), [[1.0] * N] * T, 3.0], ids=["ndarray", "list", "float"]
)
def test_scan_x_not_a_tensor(bad):
    _, V0, w0 = good_inputs()
    with pytest.raises(TypeError, match=r"\bx\b.*torch\.Tensor"):
        adex.adex_scan(bad, V0[0], w0[0])


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_scan_x_not_floating(dtype):
    x, V0, w0 = good_inputs()
    with pytest.raises(TypeError, match=r"\bx\b.*floating"):
        adex.adex_scan(x.to(dtype), V0, w0)


def test_scan_empty_time():
    _, V0, w0 = good_inputs()
    with pytest.raises(ValueError, match=r"\bx\b.*T >= 1"):
        adex.adex_scan(torch.zeros(0, BATCH, N), V0, w0)
    with pytest.raises(ValueError, match=r"\bx\b"):
        adex.adex_scan(torch.tensor(1.0), V0, w0)


@pytest.mark.parametrize(
    "which, shape",
    [
        ("V0", (BATCH, N + 1)),
        ("V0", (N,)),
        ("V0", (1, BATCH, N)),
        ("w0", (BATCH + 1, N)),
        ("w0", ()),
    ],
)
def test_scan_state_shape(which, shape):
    x, V0, w0 = good_inputs()
    args = {"V0": V0, "w0": w0}
    args[which] = torch.zeros(shape)
    with pytest.raises(ValueError, match=rf"{which} must have shape"):
        adex.adex_scan(x, args["V0"], args["w0"])


@pytest.mark.parametrize("which", ["V0", "w0"])
def test_scan_state_type_and_dtype(which):
    x, V0, w0 = good_inputs()
    args = {"V0": V0, "w0": w0}
    args[which] = np.zeros((BATCH, N))
    with pytest.raises(TypeError, match=rf"{which} must be a torch.Tensor"):
        adex.adex_scan(x, args["V0"], args["w0"])
    args[which] = torch.zeros(BATCH, N, dtype=torch.int64)
    with pytest.raises(TypeError, match=rf"{which} must be a floating"):
        adex.adex_scan(x, args["V0"], args["w0"])


@pytest.mark.parametrize("which", ["V0", "w0"])
def test_scan_state_on_another_device(which):
    x, V0, w0 = good_inputs()
    args = {"V0": V0, "w0": w0}
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=rf"{which} is on meta.*x is on cpu"):
        adex.adex_scan(x, args["V0"], args["w0"])


def test_scan_params_and_surrogate_types():
    x, V0, w0 = good_inputs()
    with pytest.raises(TypeError, match="params"):
        adex.adex_scan(x, V0, w0, {"tau": 10.0})
    with pytest.raises(TypeError, match="surrogate"):
        adex.adex_scan(x, V0, w0, surrogate=torch.sigmoid)


@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, math.inf, "0.1"])
def test_scan_bad_dt(dt):
    x, V0, w0 = good_inputs()
    with pytest.raises(ValueError, match="dt"):
        adex.adex_scan(x, V0, w0, dt=dt)


def test_scan_bad_reset_and_backend():
    x, V0, w0 = good_inputs()
    with pytest.raises(ValueError, match=r"spk_reset.*'bogus'"):
        adex.adex_scan(x, V0, w0, spk_reset="bogus")
    with pytest.raises(ValueError, match=r"backend.*'cuda'"):
        adex.adex_scan(x, V0, w0, backend="cuda")


def test_scan_float64_on_triton():
    x, V0, w0 = good_inputs(torch.float64)
    with pytest.raises(TypeError, match=r"float64.*reference"):
        adex.adex_scan(x, V0, w0, backend="triton")


def test_scan_per_neuron_params_not_matching_state():
    x, V0, w0 = good_inputs()
    params = AdExParams(tau=torch.full((N + 1,), 10.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="per-neuron"):
        adex.adex_scan(x, V0, w0, params)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["x", "V0", "w0"])
def test_scan_non_finite(which, value):
    x, V0, w0 = good_inputs()
    args = {"x": x, "V0": V0, "w0": w0}
    args[which] = args[which].clone()
    args[which].view(-1)[3] = value
    with pytest.raises(ValueError, match=rf"{which} contains NaN or inf"):
        adex.adex_scan(args["x"], args["V0"], args["w0"], backend="reference")
    # opting out skips the check: no error
    out = adex.adex_scan(args["x"], args["V0"], args["w0"], backend="reference", check_finite=False)
    assert out.spikes.shape == x.shape


# -- AdExParams -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tau=0.0), "tau"),
        (dict(tau=-10.0), "tau"),
        (dict(tau_w=0.0), "tau_w"),
        (dict(tau_w=-1.0), "tau_w"),
        (dict(delta_T=0.0), "delta_T"),
        (dict(delta_T=-3.0), "delta_T"),
        (dict(V_th=-68.0), "V_th"),
        (dict(V_th=-70.0), "V_th"),
        (dict(tau=torch.tensor([10.0, -1.0], dtype=torch.float64)), "tau"),
    ],
)
def test_params_invalid(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        AdExParams(**kwargs)


# -- AdExIF construction --------------------------------------------------------------------


@pytest.mark.parametrize("in_size", [0, -3, (), (2, 0), True, "4", (2, None), (2.0, 3)])
def test_bad_in_size(in_size):
    with pytest.raises(ValueError, match="in_size"):
        adex.AdExIF(in_size)


@pytest.mark.parametrize("in_size", [2.5, None])
def test_in_size_not_a_shape(in_size):
    """Regression: tuple(in_size) once raised a bare "'float' object is not iterable"."""
    with pytest.raises((TypeError, ValueError), match="in_size"):
        adex.AdExIF(in_size)


WRONG_UNITS = [
    ("tau", 5 * u.mV),
    ("tau_w", 30 * u.mA),
    ("R", 1 * u.S),
    ("a", 1 * u.ohm),
    ("b", 1 * u.mV),
    ("V_th", -55 * u.ms),
    ("V_reset", -68 * u.mA),
    ("V_rest", -65 * u.S),
    ("V_T", -59.9 * u.dimensionless),
    ("delta_T", 3.48 * u.ms),
    ("dt", 0.1 * u.mV),
]


@pytest.mark.parametrize("name, quantity", WRONG_UNITS, ids=[n for n, _ in WRONG_UNITS])
def test_quantity_with_wrong_unit(name, quantity):
    with pytest.raises(ValueError, match=rf"\b{name}\b.*{quantity.units}"):
        adex.AdExIF(N, **{name: quantity})


@pytest.mark.parametrize(
    "name, value",
    [
        ("tau", 0.0),
        ("tau", -5 * u.ms),
        ("tau_w", 0 * u.s),
        ("tau_w", -30.0),
        ("delta_T", 0.0),
        ("delta_T", -1 * u.mV),
        ("dt", 0.0),
        ("dt", -0.1 * u.ms),
        ("dt", math.nan),
        ("tau", math.nan),
        ("tau", np.array([10.0, 10.0, 0.0, 10.0])),
    ],
)
def test_non_positive_or_non_finite(name, value):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        adex.AdExIF(N, **{name: value})


@pytest.mark.parametrize(
    "V_th, V_reset",
    [
        (-68.0, -68.0),
        (-70.0, -68.0),
        (-0.07 * u.V, -68 * u.mV),
        (np.array([-55, -55, -70, -55.0]), -68.0),
    ],
    ids=["equal", "below", "quantities", "per-neuron"],
)
def test_threshold_not_above_reset(V_th, V_reset):
    with pytest.raises(ValueError, match=r"V_th.*V_reset"):
        adex.AdExIF(N, V_th=V_th, V_reset=V_reset)


def test_bad_reset_backend_surrogate():
    with pytest.raises(ValueError, match=r"spk_reset.*'bogus'"):
        adex.AdExIF(N, spk_reset="bogus")
    with pytest.raises(ValueError, match=r"backend.*'gpu'"):
        adex.AdExIF(N, backend="gpu")
    with pytest.raises(TypeError, match="spk_fun"):
        adex.AdExIF(N, spk_fun=torch.sigmoid)


@pytest.mark.parametrize(
    "in_size, name, value",
    [
        (N, "tau", torch.full((N + 1,), 10.0)),
        (N, "a", np.ones((2, N))),
        ((2, 3), "b", np.ones(2)),
        ((2, 3), "V_rest", np.full((3, 2), -65.0)),
        ((2, 3), "R", torch.ones(2, 2, 3)),
    ],
    ids=["1d-longer", "1d-extra-dim", "2d-leading", "2d-transposed", "2d-extra-batch-dim"],
)
def test_per_neuron_shape_not_broadcasting(in_size, name, value):
    with pytest.raises(ValueError, match=rf"\b{name}\b.*shape.*in_size"):
        adex.AdExIF(in_size, **{name: value})


def test_parameter_of_wrong_type():
    with pytest.raises(TypeError, match="tau"):
        adex.AdExIF(N, tau="10 ms")
    with pytest.raises(TypeError, match="b"):
        adex.AdExIF(N, b=True)
    with pytest.raises(TypeError, match="R"):
        adex.AdExIF(N, R=torch.ones(N, dtype=torch.complex64))


# -- AdExIF state ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "2"])
def test_bad_batch_size(batch_size):
    layer = adex.AdExIF(N)
    with pytest.raises(ValueError, match="batch_size"):
        layer.init_state(batch_size)


def test_forward_before_init_state():
    x, _, _ = good_inputs()
    layer = adex.AdExIF(N, backend="reference")
    with pytest.raises(RuntimeError, match="init_state"):
        layer(x)
    with pytest.raises(RuntimeError, match="init_state"):
        layer.update(x[0])
    with pytest.raises(RuntimeError, match="init_state"):
        layer.get_spike()


@pytest.mark.parametrize("which", ["V", "w"])
@pytest.mark.parametrize("shape", [(N + 1,), (BATCH, N + 1), (1, BATCH, N), ()], ids=str)
def test_state_setter_shape(which, shape):
    layer = ready_layer()
    with pytest.raises(ValueError, match=rf"^{which} must be shaped"):
        setattr(layer, which, torch.zeros(shape))


@pytest.mark.parametrize("which, unit", [("V", "mA"), ("w", "mV")])
def test_state_setter_type_unit_dtype(which, unit):
    layer = ready_layer()
    with pytest.raises(TypeError, match=rf"^{which} must be"):
        setattr(layer, which, [0.0] * N)
    with pytest.raises(TypeError, match=rf"^{which} must be a floating"):
        setattr(layer, which, torch.zeros(BATCH, N, dtype=torch.int32))
    with pytest.raises(ValueError, match=rf"^{which} must be a \w+ quantity"):
        setattr(layer, which, torch.zeros(BATCH, N) * u(unit))


def test_state_shapes_disagree():
    layer = ready_layer()
    layer.w = torch.zeros(BATCH + 1, N)
    x, _, _ = good_inputs()
    with pytest.raises(ValueError, match=r"V \(2, 4\) and w \(3, 4\)"):
        layer(x)


def test_ref_state_rows_disagree():
    """Each row is named (here the third), and rows on two devices are refused."""
    layer = adex.AdExIFRef(N, backend="reference")
    layer.init_state(BATCH)
    layer.last_spike_time = torch.zeros(BATCH + 1, N)
    x, _, _ = good_inputs()
    with pytest.raises(ValueError, match=r"V \(2, 4\) and last_spike_time \(3, 4\)"):
        layer(x)
    layer.init_state(BATCH)
    layer.w = torch.zeros(BATCH, N, device="meta")
    with pytest.raises(ValueError, match="different devices"):
        layer(x)


@pytest.mark.parametrize(
    "shape",
    [(T, BATCH, N + 1), (T, BATCH + 1, N), (T, N, BATCH), (T, 1, BATCH, N), (T, 3)],
    ids=["neurons", "batch", "transposed", "extra-dim", "no-broadcast"],
)
def test_module_x_shape_not_matching_state(shape):
    layer = ready_layer()
    with pytest.raises(ValueError, match=r"\bx\w* has shape|\bx_seq\b"):
        layer(torch.zeros(shape))


def test_module_x_without_time_axis():
    """[batch, N] for a batched state is not silently run as `batch` steps."""
    layer = ready_layer()
    with pytest.raises(ValueError, match=r"x_seq must be \[T, \*state_shape\].*time axis"):
        layer(torch.ones(BATCH, N))


@pytest.mark.parametrize("shape", [(BATCH, N + 1), (BATCH + 1, N), (T, BATCH, N)], ids=str)
def test_update_x_shape_not_matching_state(shape):
    layer = ready_layer()
    with pytest.raises(ValueError, match=r"\bx has shape"):
        layer.update(torch.zeros(shape))


def test_module_x_dtype_and_type():
    layer = ready_layer()
    with pytest.raises(TypeError, match=r"\bx\b.*floating"):
        layer(torch.ones(T, BATCH, N, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"\bx\b.*floating"):
        layer.update(torch.ones(BATCH, N, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"\bx\b"):
        layer.update("20 mA")
    with pytest.raises((TypeError, ValueError), match=r"\bx(_seq)?\b.*tensor"):
        layer("20 mA")
    with pytest.raises((TypeError, ValueError), match=r"\bx(_seq)?\b.*tensor"):
        layer([[[20.0] * N] * BATCH] * T)


def test_module_x_wrong_unit():
    layer = ready_layer()
    x, _, _ = good_inputs()
    with pytest.raises(ValueError, match=r"\bx(_seq)?\b.*current"):
        layer(x * u.mV)
    with pytest.raises(ValueError, match=r"\bx\b.*current"):
        layer.update(x[0] * u.ms)


def test_module_empty_time():
    layer = ready_layer()
    with pytest.raises(ValueError, match="T >= 1"):
        layer(torch.zeros(0, BATCH, N))


def test_module_state_on_another_device():
    layer = adex.AdExIF(N, backend="reference")
    layer.init_state(BATCH, device="meta")
    assert layer.V.device.type == "meta"
    x, _, _ = good_inputs()
    with pytest.raises(ValueError, match=r"x is on cpu.*state is on meta"):
        layer(x)
    with pytest.raises(ValueError, match=r"x is on cpu.*state is on meta"):
        layer.update(x[0])


@pytest.mark.parametrize("which", ["x", "V", "w"])
def test_module_non_finite(which):
    x, V0, w0 = good_inputs()
    values = {"x": x.clone(), "V": V0.clone(), "w": w0.clone()}
    values[which].view(-1)[1] = math.nan
    layer = ready_layer()
    layer.V, layer.w = values["V"], values["w"]
    with pytest.raises(ValueError, match=rf"\b{which}0? contains NaN or inf"):
        layer(values["x"])
    relaxed = ready_layer(check_finite=False)
    relaxed.V, relaxed.w = values["V"], values["w"]
    assert relaxed(values["x"]).shape == x.shape


def test_module_float64_on_triton():
    layer = adex.AdExIF(N, backend="triton")
    layer.init_state(BATCH, dtype=torch.float64)
    x, _, _ = good_inputs(torch.float64)
    with pytest.raises(TypeError, match=r"float64.*reference"):
        layer(x)


def test_initializer_errors():
    with pytest.raises(ValueError, match=r"V_initializer.*shape"):
        adex.AdExIF(N, V_initializer=lambda shape: torch.zeros(N + 1)).init_state(BATCH)
    with pytest.raises(ValueError, match=r"V_initializer.*voltage"):
        adex.AdExIF(N, V_initializer=-65 * u.mA).init_state(BATCH)
    with pytest.raises(ValueError, match=r"w_initializer.*current"):
        adex.AdExIF(N, w_initializer=0 * u.mV).init_state(BATCH)
    # an initializer object of the wrong unit: the message names the kind and the unit
    with pytest.raises(ValueError, match=r"voltage.*milliampere"):
        adex.AdExIF(N, V_initializer=adex.init.Constant(-65 * u.mA)).init_state(BATCH)


@pytest.mark.parametrize("return_states", [False, True])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_state_written_in_place_is_checked_again(backend, return_states):
    """A state adex produced is not re-checked, until something writes to it in place
    (here through the ``V`` view): then the next call checks it and rejects the NaN."""
    if backend == "triton" and not adex.HAS_TRITON:
        pytest.skip("needs triton")
    layer = adex.AdExIF(N, backend=backend)
    layer.init_state(BATCH)
    x, _, _ = good_inputs()
    layer(x, return_states=return_states)
    layer(x)  # trusted state: no error
    with torch.no_grad():
        layer.V[0, 1] = math.nan
    with pytest.raises(ValueError, match=r"\bV0? contains NaN or inf"):
        layer(x)


def test_inference_mode_state_is_checked():
    """Inference tensors have no version counter: their state is checked on every call."""
    layer = adex.AdExIF(N, backend="reference")
    x, _, _ = good_inputs()
    with torch.inference_mode():
        layer.init_state(BATCH)
        layer(x)
        layer(x)
        layer.V[0, 1] = math.nan
        with pytest.raises(ValueError, match=r"\bV0? contains NaN or inf"):
            layer(x)
