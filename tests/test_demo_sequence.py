"""The sequence demo (``adex demo --task sequence``, :mod:`adex.demo_sequence`): its data,
a tiny training run through the command line, and the error without the sequence extra."""

from __future__ import annotations

import sys

import pytest
import torch

from adex import cli, demo_sequence


def test_missing_sktime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sktime.datasets", None)  # import fails: not installed
    with pytest.raises(ModuleNotFoundError, match=r"\.\[sequence\]"):
        demo_sequence.load_data(torch.device("cpu"))


def test_data_are_variable_length_padded_sequences():
    pytest.importorskip("sktime")
    x_tr, len_tr, y_tr, x_te, len_te, y_te = demo_sequence.load_data(torch.device("cpu"))
    assert x_tr.shape[1:] == (270, 12) and x_te.shape[1:] == (370, 12)
    assert len_tr.dtype == torch.int64 and y_tr.dtype == torch.int64
    lengths = torch.cat([len_tr, len_te])
    assert int(lengths.min()) == 7 and int(lengths.max()) == 29  # the archive's 7..29 frames
    assert set(torch.cat([y_tr, y_te]).tolist()) == set(range(9))
    for x, lengths in ((x_tr, len_tr), (x_te, len_te)):
        assert x.shape[0] == int(lengths.max())
        pad = torch.arange(x.shape[0])[:, None] >= lengths[None, :]
        assert torch.all(x[pad] == 0) and torch.all(x[~pad].abs().sum(-1) > 0)
    real = x_tr[torch.arange(x_tr.shape[0])[:, None] < len_tr[None, :]]
    torch.testing.assert_close(real.mean(0), torch.zeros(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(real.std(0), torch.ones(12), atol=1e-4, rtol=0)


def test_sequence_demo_tiny_run(capsys):
    pytest.importorskip("sktime")
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():
            code = cli.main(
                ["demo", "--task", "sequence", "--epochs", "1", "--steps", "2", "--device", "cpu"]
            )
    finally:
        torch.set_num_threads(threads)  # the demo sets 1 thread on CPU
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Japanese Vowels (270 train / 370 test" in out and "7..29 frames" in out
    assert "AdLIF(64, tau_syn" in out and "LI(9, tau_syn)" in out
    assert "1 epochs x 2 steps" in out and "epoch   1: mean training loss" in out
    assert "s per epoch" in out and "backend " in out


def test_plot_is_refused_for_the_sequence_task(capsys):
    code = cli.main(["demo", "--task", "sequence", "--plot", "x.png"])
    _, err = capsys.readouterr()
    assert code == 2 and "--plot is an option of the digits task only" in err
