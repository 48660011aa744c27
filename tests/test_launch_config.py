"""The GPU launch configuration (``kernels/launch.py``): the block narrows for a small M to
keep a few programs per SM, always 2 neurons per thread (pure host logic, no GPU needed)."""

from __future__ import annotations

import pytest

from adex.kernels.launch import _gpu_config


@pytest.mark.parametrize(
    "M, min_programs, expected",
    [
        (1 << 20, 528, (256, 4, 4096)),  # large M: GPU_BLOCK, 4 warps
        (64 * 256, 528, (64, 1, 256)),  # the W3 shape on 132 SMs: down to 64 neurons
        (64 * 256, 128, (128, 2, 128)),  # enough programs at 128
        (1000, 0, (256, 4, 4)),  # disabled: GPU_BLOCK whatever M
        (1, 528, (64, 1, 1)),
    ],
)
def test_block_narrows_for_small_m(M, min_programs, expected):
    block, warps, programs = _gpu_config(M, 256, min_programs)
    assert (block, warps, programs) == expected
    assert block == 2 * 32 * warps and programs * block >= M > (programs - 1) * block
