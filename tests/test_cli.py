"""The ``adex`` command line (``adex.cli``), the Naud et al. (2008) presets and their
simulation (``adex.patterns``).

Commands run in-process through ``adex.cli.main(argv)`` (importing torch in a subprocess
takes seconds); one subprocess checks ``python -m adex``.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import adex
from adex import cli
from adex.patterns import adaptation_index, simulate_patterns
from adex.presets import naud2008, naud2008_table1, stacked_module_kwargs

PATTERNS = [
    "tonic",
    "adapting",
    "initial_burst",
    "regular_bursting",
    "delayed_accelerating",
    "delayed_regular_bursting",
    "transient",
    "irregular",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# -- presets ------------------------------------------------------------------------------------


def test_naud2008_presets():
    assert list(naud2008) == PATTERNS and list(naud2008_table1) == PATTERNS
    tonic = naud2008["tonic"]
    assert tonic.C.to("pF").magnitude == 200 and tonic.gL.to("nS").magnitude == 10
    assert tonic.current.to("pA").magnitude == 500
    kw = tonic.module_kwargs()
    assert kw["tau"].to("ms").magnitude == pytest.approx(20.0)
    assert kw["R"].to("ohm").magnitude == pytest.approx(1e8)
    assert kw["V_th"].to("mV").magnitude == 0 and kw["spk_reset"] == "hard"
    assert kw["V_reset"].to("mV").magnitude == -58 and kw["V_rest"].to("mV").magnitude == -70
    assert kw["V_T"].to("mV").magnitude == -50 and kw["delta_T"].to("mV").magnitude == 2
    # the two rows whose printed values do not give their pattern ship Brian2's values
    for name in PATTERNS:
        adapted = name in ("delayed_regular_bursting", "transient")
        assert naud2008[name].adapted is adapted
        assert (naud2008[name] == naud2008_table1[name]) is not adapted
    assert naud2008["transient"].a.to("nS").magnitude == 10
    assert naud2008_table1["transient"].a.to("nS").magnitude == -10
    with pytest.raises(AttributeError):  # frozen
        tonic.b = 0  # type: ignore[misc]


def test_module_kwargs_build_a_layer_equal_to_the_stacked_one():
    p = naud2008["adapting"]
    single = adex.AdExIF(1, backend="reference", **p.module_kwargs())
    single.init_state()
    assert single.V.item() == pytest.approx(-70.0)  # starts at rest
    kwargs, current = stacked_module_kwargs(list(naud2008.values()))
    stacked = adex.AdExIF(8, backend="reference", **kwargs)
    stacked.init_state()
    T = 600
    s1 = single(torch.full((T, 1), p.current.to("mA").magnitude))
    s8 = stacked(current.expand(T, -1))
    assert torch.equal(s1[:, 0], s8[:, 1]) and s1.sum() >= 3


def test_adaptation_index():
    assert adaptation_index([1.0, 2.0, 3.0, 4.0]) == 0.0
    assert math.isnan(adaptation_index([1.0, 2.0]))
    # ISIs 1, 2, 4: each term (2-1)/(2+1) = (4-2)/(4+2) = 1/3
    assert adaptation_index([0.0, 1.0, 3.0, 7.0]) == pytest.approx(1 / 3)


def test_simulate_patterns_needs_one_step():
    with pytest.raises(ValueError, match="shorter than one step"):
        simulate_patterns(list(naud2008.values()), duration_ms=0.01, dt_ms=0.1)


# -- commands -----------------------------------------------------------------------------------


def test_help(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("patterns", "demo", "bench"):
        assert command in out
    for command in ("patterns", "demo", "bench"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and out.startswith(f"usage: adex {command}"), out


def test_python_m_adex_help():
    proc = subprocess.run(
        [sys.executable, "-m", "adex", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: adex" in proc.stdout and "patterns" in proc.stdout


def parse_table(out: str) -> dict[str, tuple[int, float, float]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("pattern")) + 2
    rows = {}
    for line in lines[start:]:
        if line.startswith("wrote "):
            break
        name, count, latency, index = line.split()
        rows[name] = (
            int(count),
            float("nan" if latency == "-" else latency),
            float("nan" if index == "-" else index),
        )
    return rows


def test_patterns_writes_png_and_table(capsys, tmp_path):
    png = tmp_path / "patterns.png"
    code, out, err = run_cli(capsys, "patterns", "--out", str(png), "--duration", "100")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = parse_table(out)
    assert list(rows) == PATTERNS
    count = {name: r[0] for name, r in rows.items()}
    latency = {name: r[1] for name, r in rows.items()}
    index = {name: r[2] for name, r in rows.items()}
    assert 8 <= count["tonic"] <= 12  # ~9.5 ms intervals in 100 ms
    assert abs(index["tonic"]) < 0.02  # regular
    assert count["adapting"] >= 4 and index["adapting"] > 0.05  # slowing down
    assert count["initial_burst"] >= 3 and latency["initial_burst"] < 10
    assert count["delayed_accelerating"] >= 2 and latency["delayed_accelerating"] > 25
    assert latency["delayed_regular_bursting"] > 40
    assert 1 <= count["transient"] <= 3
    assert all(c >= 1 for c in count.values()), count
    assert f"wrote {png}" in out


def test_runtime_error_is_one_line(capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something\nwent wrong")

    monkeypatch.setattr(cli, "simulate_patterns", broken)
    code, _, err = run_cli(capsys, "patterns", "--duration", "1")
    assert code == 1
    assert one_line_error(err) == "adex patterns: error: RuntimeError: something went wrong"


def test_patterns_bad_output_path(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "patterns", "--duration", "1", "--out", str(tmp_path / "no" / "such" / "dir.png")
    )
    assert code == 1
    assert one_line_error(err).startswith("adex patterns: error: cannot write")


def test_demo(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo saves adex_demo.png in the working directory
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():
            code, out, err = run_cli(
                capsys, "demo", "--epochs", "1", "--steps", "2", "--device", "cpu"
            )
    finally:
        torch.set_num_threads(threads)  # the demo sets 1 thread on CPU
    assert code == 0, err
    assert "epoch   1: mean training loss" in out and "test accuracy" in out
    assert "1 epochs x 2 steps" in out and "8x8 digits" in out
    assert "s per epoch" in out and "saved the spike raster" in out
    png = tmp_path / "adex_demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, bench runs the benchmark")
def test_bench_without_gpu_exits_2(capsys):
    code, out, err = run_cli(capsys, "bench")
    assert code == 2 and out == ""
    assert one_line_error(err).startswith("adex bench: error: needs a CUDA GPU")


def test_roofline_path_points_at_the_checkout():
    assert cli.roofline_path().name == "roofline.py"
    assert cli.roofline_path().parent.name == "benchmarks"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), "adex: error: the following arguments are required: COMMAND"),
        (("nosuch",), "adex: error: argument COMMAND: invalid choice: 'nosuch'"),
        (("patterns", "--duration", "abc"), "adex patterns: error: argument --duration"),
        (("patterns", "--duration", "-5"), "adex patterns: error: --duration must be > 0"),
        (
            ("patterns", "--duration", "0.01"),
            "adex patterns: error: --duration 0.01 ms is shorter than one step of 0.1 ms",
        ),
        (("patterns", "--bogus"), "adex patterns: error: unrecognized arguments: --bogus"),
        (("patterns", "--backend", "gpu"), "adex patterns: error: argument --backend"),
        (("demo", "--epochs", "0"), "adex demo: error: --epochs must be >= 1"),
        (("demo", "--steps", "x"), "adex demo: error: argument --steps"),
        (("patterns", "--device", "cuda"), "adex patterns: error: device 'cuda' requested"),
        (("demo", "--device", "tpu9"), "adex demo: error: unknown device 'tpu9'"),
    ],
)
def test_bad_arguments_give_one_line(capsys, argv, expected):
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert line.startswith(expected), line
