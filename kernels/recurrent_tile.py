"""The tile of a recurrent-kernel program and its recurrent product: ``BLOCK_B`` samples of
the batch by all N neurons (``BLOCK_N = next_pow2(N)``), and the product of a ``[B, N]`` fp32
row block in memory with an ``[N, N]`` matrix, streamed in ``BLOCK_K``-wide chunks so that
neither operand is held whole in registers."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_offsets(pid, B, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets and masks of program ``pid``'s tile: ``(o_m [BLOCK_B, BLOCK_N] int64 element
    offsets b * N + n, m [BLOCK_B, BLOCK_N] in-range mask, o_b [BLOCK_B] samples, o_n
    [BLOCK_N] neurons, m_n [BLOCK_N] in-range neurons)``."""
    o_b = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m = (o_b < B)[:, None] & m_n[None, :]
    o_m = o_b[:, None] * N + o_n[None, :]
    return o_m, m, o_b, o_n, m_n


@triton.jit
def tile_matmul(a_ptr, mat_ptr, stride_k, stride_n, o_b, B, N,
                BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """``sum_k a[b, k] * mat[k, n]`` ``[BLOCK_B, BLOCK_N]`` fp32 for the tile's samples
    ``o_b``: ``a`` a row-major ``[B, N]`` fp32 block at ``a_ptr``, ``mat[k, n]`` at
    ``mat_ptr + k * stride_k + n * stride_n`` (``[N, N]``). fp32 products and fp32
    accumulation (``input_precision="ieee"``: no tf32); zero outside ``B x N``. The caller
    makes ``a``'s stores visible first (``tl.debug_barrier``)."""
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    m_b = o_b < B
    acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < N
        b_a = tl.load(a_ptr + o_b[:, None] * N + o_k[None, :], mask=m_b[:, None] & m_k[None, :],
                      other=0.0)  # fmt: skip
        b_mat = tl.load(mat_ptr + o_k[:, None] * stride_k + o_n[None, :] * stride_n,
                        mask=m_k[:, None] & m_n[None, :], other=0.0)  # fmt: skip
        acc = tl.dot(b_a, b_mat, acc=acc, input_precision="ieee")
    return acc
