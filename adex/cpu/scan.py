"""The fused CPU scans: the forward over all T steps and the BPTT backward, each one numba
kernel parallel over blocks of ``BLOCK`` neurons (``prange``), the Triton kernels'
algorithm (``adex.kernels.scan_fwd``, ``adex.kernels.scan_bwd``) with the same saved
tensors: V per step (w only for the tau_w gradient, the synaptic current I only for the
tau_syn gradient), the refractory flags packed 8 steps to a byte, or the checkpoints of the
low-memory mode, whose segments the backward recomputes. The optional synaptic current
(``I_t = I_{t-1} + c_s (x_t - I_{t-1})`` before each step, the membrane reading I_t) and
the per-sample ``lengths`` (from step ``lengths[b]`` on, sample b holds its state, returns
zero spikes and passes no gradient) are selects in the same loops.

Within a block, each step runs over the block's neurons (contiguous in memory) before the
next step, as one branch-free loop that LLVM vectorizes; the block's state lives in local
rows of the storage dtype, rounded to it after every step as the stored V is, so the
backward's recomputed factors see the forward's own trajectory. Flags are runtime
arguments that only select values or skip whole loops: one compiled kernel per direction
and storage dtype (float32, float64), cached on disk. Arrays a plan does not use are passed as empty
arrays of the same type (numba would compile one variant per None pattern otherwise).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from adex.cpu.device_math import JIT, exprel, relu_grad, surrogate_grad
from adex.cpu.step import (
    DELTA_T,
    R_,
    TAU,
    TAU_W,
    V_RESET,
    V_REST,
    V_T,
    V_TH,
    A,
    B,
    integrate_step,
    reset_adjoint,
    step_adjoint,
    step_factors,
    step_param_grads,
)

BLOCK = 64
"""Neurons per parallel work item (a multiple of the cache line in float32 and float64)."""

TAU_SYN = 10  # packed row of tau_syn
# derived rows of the block parameters: theta, the runaway ceiling, c_w and d c_w/d tau_w,
# c_s and d c_s/d tau_syn, and the loop-invariant reciprocals the Triton kernels hoist
THETA, VCAP, CW, DCW, CS, DCS = 11, 12, 13, 14, 15, 16
ITAU, DTITAU, IDT, ITHETA, RITAU, IRTAU = 17, 18, 19, 20, 21, 22
N_ROWS = 23
N_GRADS = 11  # parameter gradients accumulated per neuron: the packed rows, tau_syn last
NO_LENGTH = 1 << 62  # the length of a sample without lengths: it never holds


@njit(**JIT)
def _local_rows(C, has_w, has_ref, has_syn):
    """``[C]`` the local row (0 V, 1 w, 2 last-spike time, 3 I) of each state row."""
    rows = np.zeros(C, dtype=np.int64)
    c = 1
    if has_w:
        rows[c] = 1
        c += 1
    if has_ref:
        rows[c] = 2
        c += 1
    if has_syn:
        rows[c] = 3
    return rows


@njit(**JIT)
def _block_lengths(lens, sps, lo, hi):
    """``[hi - lo]`` int64 steps each neuron's sample runs (``lens[m // sps]``), or
    :data:`NO_LENGTH` where ``lens`` is empty."""
    out = np.full(hi - lo, NO_LENGTH, dtype=np.int64)
    if lens.size:
        for m in range(lo, hi):
            out[m - lo] = lens[m // sps]
    return out


@njit(**JIT)
def _block_params(par, lo, hi, dt, ceiling):
    """``[N_ROWS, hi - lo]`` float64: the eleven packed parameters of neurons ``lo..hi-1``
    of the flattened state (neuron ``m % N``), then theta, the runaway ceiling, ``c_w = 1 -
    exp(-dt/tau_w)``, ``d c_w / d tau_w``, ``c_s = 1 - exp(-dt/tau_syn)``, ``d c_s / d
    tau_syn``, 1/tau, dt/tau, 1/delta_T, 1/theta, R/tau and 1/(R tau) (as the Triton
    kernels compute them: ``dt * (1/tau)``, ``R * (1/tau)``, ``(1/R) * (1/tau)``)."""
    n_par = par.shape[1]
    pb = np.empty((N_ROWS, hi - lo))
    for m in range(lo, hi):
        j, n = m - lo, m % n_par
        for k in range(TAU_SYN + 1):
            pb[k, j] = par[k, n]
        theta = pb[3, j] - pb[4, j]
        tau_w, tau_s = pb[2, j], pb[TAU_SYN, j]
        cw = dt * exprel(-dt / tau_w) / tau_w
        cs = dt * exprel(-dt / tau_s) / tau_s
        pb[THETA, j] = theta
        pb[VCAP, j] = pb[3, j] + ceiling * theta
        pb[CW, j] = cw
        pb[DCW, j] = -(dt / (tau_w * tau_w)) * (1.0 - cw)
        pb[CS, j] = cs
        pb[DCS, j] = -(dt / (tau_s * tau_s)) * (1.0 - cs)
        itau = 1.0 / pb[1, j]
        pb[ITAU, j] = itau
        pb[DTITAU, j] = dt * itau
        pb[IDT, j] = 1.0 / pb[7, j]
        pb[ITHETA, j] = 1.0 / theta
        pb[RITAU, j] = pb[0, j] * itau
        pb[IRTAU, j] = (1.0 / pb[0, j]) * itau
    return pb


@njit(inline="always", **JIT)
def _forward_neuron(v, w, ts, i, xt, length, t, t_now, pb, j, tau_ref, dt, hard, has_w,
                    has_exp, has_ref, has_syn, gated):  # fmt: skip
    """One step ``t`` of neuron ``j`` of the block (parameters ``pb[:, j]``) from its V, w,
    last-spike time ``ts``, synaptic current ``i``, input ``xt`` and sample length:
    returns ``(V, w, I, refractory, ran)``. ``gated`` (a compile-time constant at each
    call): the synapse and the sample length are read; without it the step is the plain
    model's (no I, every step runs) and their selects compile away. Scalars in and out:
    an inlined function that writes the block's rows itself keeps LLVM from vectorizing
    the loop that calls it."""
    on = (t < length) if gated else True
    syn = has_syn if gated else False
    i_new = i + pb[CS, j] * (xt - i)  # the synapse first: I_t
    i_new = i_new if on & syn else i
    vn, wn, vr, wr = integrate_step(
        v, w, i_new if syn else xt, pb[0, j], pb[3, j], pb[4, j], pb[5, j], pb[6, j],
        pb[7, j], pb[8, j], pb[9, j], pb[THETA, j], pb[VCAP, j], pb[CW, j], dt, pb[ITAU, j],
        pb[DTITAU, j], pb[IDT, j], hard, has_w, has_exp,
    )  # fmt: skip
    # BrainPy's float test on t = float(k) * dt, in the storage dtype
    ref = has_ref & ((t_now - ts) < tau_ref)
    vn = vr if ref else vn
    wn = wr if ref else wn
    return (vn if on else v), (wn if on else w), i_new, ref, on


@njit(**JIT)
def _run_steps(x, t_first, L, lo, hi, pb, len_b, times, tau_ref, dt, hard, has_w, has_exp,
               has_ref, has_syn, state, spk, vrows, wrows, rbits, irows, row0, ckpt,
               K):  # fmt: skip
    """Steps ``t_first .. t_first + L - 1`` of neurons ``lo..hi-1`` from ``state`` ``[C, M]``
    (updated in place); ``len_b``: each neuron's sample length (steps from it on hold the
    state and return zero spikes). Writes, where the array is not empty: the spikes
    ``spk[t]``, the V, w and I rows ``[t - row0]``, the refractory bit ``t - row0`` and the
    checkpoint before every K-th step (K > 0).

    The block's state is copied into contiguous local rows (storage dtype) for the run; each
    step is one branch-free loop over the block's neurons (the flags only select values, so
    LLVM vectorizes it; two copies, with and without the synapse and lengths, the choice
    made outside the loops), then one loop per optional output, its flag tested outside it."""
    nb, C = hi - lo, state.shape[0]
    rows = _local_rows(C, has_w, has_ref, has_syn)
    # local rows V, w, last-spike time, I (a zero row where the model has none: the rows
    # never alias, so LLVM's runtime overlap check passes and the vector loop runs)
    loc = np.zeros((4, nb), dtype=state.dtype)
    for c in range(C):
        for j in range(nb):
            loc[rows[c], j] = state[c, lo + j]
    v_b, w_b, ts_b, i_b = loc[0], loc[1], loc[2], loc[3]
    gated = has_syn | (len_b[0] != NO_LENGTH)  # the synapse or sample lengths (nb >= 1)
    wn_b = np.empty(nb)
    ref_b = np.zeros(nb, dtype=np.bool_)
    on_b = np.zeros(nb, dtype=np.bool_)
    for t in range(t_first, t_first + L):
        if K > 0 and t % K == 0:
            for c in range(C):
                for j in range(nb):
                    ckpt[t // K, c, lo + j] = loc[rows[c], j]
        r = t - row0
        t_now = times[t]
        if gated:
            for j in range(nb):
                v_b[j], wn_b[j], i_b[j], ref_b[j], on_b[j] = _forward_neuron(
                    v_b[j], w_b[j], ts_b[j], i_b[j], x[t, lo + j], len_b[j], t, t_now, pb, j,
                    tau_ref, dt, hard, has_w, has_exp, has_ref, has_syn, True)  # fmt: skip
        else:
            for j in range(nb):
                v_b[j], wn_b[j], i_b[j], ref_b[j], on_b[j] = _forward_neuron(
                    v_b[j], w_b[j], ts_b[j], i_b[j], x[t, lo + j], len_b[j], t, t_now, pb, j,
                    tau_ref, dt, hard, has_w, has_exp, has_ref, has_syn, False)  # fmt: skip
        if has_w:
            for j in range(nb):
                w_b[j] = wn_b[j]
        if has_ref:
            for j in range(nb):
                ts_b[j] = t_now if (v_b[j] >= pb[3, j]) & on_b[j] else ts_b[j]
            if rbits.size:
                bit = np.uint8(1 << (r & 7))
                for j in range(nb):
                    old = rbits[r >> 3, lo + j]
                    rbits[r >> 3, lo + j] = (old | bit) if ref_b[j] else (old & ~bit)
        if spk.size:
            for j in range(nb):
                spk[t, lo + j] = 1.0 if (v_b[j] >= pb[3, j]) & on_b[j] else 0.0
        if vrows.size:
            for j in range(nb):
                vrows[r, lo + j] = v_b[j]
        if wrows.size:
            for j in range(nb):
                wrows[r, lo + j] = w_b[j]
        if irows.size:
            for j in range(nb):
                irows[r, lo + j] = i_b[j]
    for c in range(C):
        for j in range(nb):
            state[c, lo + j] = loc[rows[c], j]


@njit(parallel=True, **JIT)
def scan_forward(x, state0, par, times, tau_ref, dt, ceiling, hard, has_w, has_exp, has_ref,
                 has_syn, lens, sps, spk, state, vseq, wseq, rbits, iseq, ckpt,
                 K):  # fmt: skip
    """All T steps of every neuron: ``x`` ``[T, M]``, ``state0`` ``[C, M]``, ``par``
    ``[11, N]``, ``times`` ``[T]`` (ms, ``float(k) * dt`` in the storage dtype),
    ``tau_ref`` ``[1]``, ``lens`` ``[batch]`` int32 sample lengths (or empty) with ``sps``
    elements per sample; outputs ``spk`` ``[T, M]``, ``state`` ``[C, M]`` and, where not
    empty, ``vseq``/``wseq``/``iseq`` ``[T, M]``, ``rbits`` ``[cdiv(T, 8), M]`` uint8 and
    ``ckpt`` ``[cdiv(T, K), C, M]``."""
    T, M = x.shape
    for blk in prange((M + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        hi = min(M, lo + BLOCK)
        pb = _block_params(par, lo, hi, dt, ceiling)
        len_b = _block_lengths(lens, sps, lo, hi)
        for c in range(state0.shape[0]):
            for m in range(lo, hi):
                state[c, m] = state0[c, m]
        _run_steps(x, 0, T, lo, hi, pb, len_b, times, tau_ref[0], dt, hard, has_w, has_exp,
                   has_ref, has_syn, state, spk, vseq, wseq, rbits, iseq, 0, ckpt,
                   K)  # fmt: skip


@njit(inline="always", **JIT)
def _neuron_params(pb, j):
    """The parameters of neuron ``j`` of the block that its adjoint reads, as one tuple (in
    :func:`_adjoint_neuron`'s order): tau, V_th, V_reset, V_rest, V_T, delta_T, a, b, theta,
    c_w, d c_w/d tau_w, c_s, d c_s/d tau_syn, 1/tau, dt/tau, 1/delta_T, 1/theta, R/tau and
    1/(R tau). Straight-line loads only: numba's pruning removes the reference count it
    takes on ``pb`` (no branch between the two updates)."""
    return (pb[1, j], pb[3, j], pb[4, j], pb[5, j], pb[6, j], pb[7, j], pb[8, j], pb[9, j],
            pb[THETA, j], pb[CW, j], pb[DCW, j], pb[CS, j], pb[DCS, j], pb[ITAU, j],
            pb[DTITAU, j], pb[IDT, j], pb[ITHETA, j], pb[RITAU, j], pb[IRTAU, j])  # fmt: skip


@njit(inline="always", **JIT)
def _adjoint_neuron(vprev, vnew, wprev, ref, on, gsg, gpre, iprev, xt, lv0, lw0, li0, prm, dt,
                    flags):  # fmt: skip
    """One neuron's adjoint of one step from its stored V before (``vprev``) and after
    (``vnew``), w and I before, x, refractory flag, whether the step ran (``on``), the
    returned spike's dL/dV_t ``gsg`` (added to ``lv0`` already), g(u_{t-1}) ``gpre``, the
    adjoints ``lv0``/``lw0``/``li0`` of V_t, w_t, I_t and its parameters ``prm``
    (:func:`_neuron_params`). Returns ``(lambda_V_{t-1}, lambda_w_{t-1}, lambda_I_{t-1},
    grad x_t, d, d_syn)``: ``d`` the step's terms of the ten packed parameters' gradients
    (:func:`adex.cpu.step.step_param_grads`), ``d_syn`` tau_syn's; a caller without
    parameter gradients drops them and LLVM removes their arithmetic. A held step (``on``
    false) is the identity: its own terms see zero adjoints and the carried ones pass
    unchanged. Straight-line code, scalars and tuples in and out, no arrays: numba counts
    the references of an inlined function's array arguments on every call, and among the
    branches of the conditional expressions those updates outlive numba's pruning of them
    until after LLVM's loop vectorizer has run, so the loop would be vectorized only where
    the module is optimized a second time (linked into the kernel that calls it). A process
    that compiles the kernels runs each function's own once-optimized code (the linked
    copies resolve to it), one that loads them from the cache runs the kernel's copy: with
    arrays passed here, a freshly compiled backward ran about 4x slower than a cached one.
    (A plain-model copy without the synapse's and the lengths' selects, as the forward has,
    was measured no faster and lengthened the compile: not kept.)"""
    hard, has_w, has_exp, _, detach, _, _, has_gspk = flags[:8]
    has_syn, read_i = flags[14], flags[15]
    tau, vth, vreset, vrest, vT, dT, a, b, theta, cw, dcw, cs, dcs = prm[:13]
    itau, dtitau, idt, itheta, ritau, irtau = prm[13:]
    lvj = lv0 if on else 0.0
    lwj = lw0 if on else 0.0
    u = (vnew - vth) * itheta
    fac = step_factors(vprev, vnew, vth, vreset, vT, dT, theta, dt, itau, dtitau, idt, itheta,
                       hard, has_exp)  # fmt: skip
    gxv, lvr, lwr, big = step_adjoint(lvj, lwj, ref, fac[9], fac[11], ritau, a, cw, has_w)
    # the membrane read I_t: through the synapse to x_t and I_{t-1}
    lt = (li0 if on else 0.0) + gxv
    li_new = (lt - lt * cs) if on else li0
    gx = lt * cs if has_syn else gxv
    d = step_param_grads(gsg, u, lwj, big, lvr, lwr, ref, vprev, vnew, wprev, fac, tau,
                         vreset, vrest, dT, a, b, cw, dcw, dt, gpre,
                         (itau, idt, itheta, irtau), hard, has_w, has_exp, detach,
                         has_gspk)  # fmt: skip
    d_syn = lt * dcs * (xt - iprev) if read_i else 0.0
    lvn, lwn = reset_adjoint(lvr, lwr, lwj, vprev, vreset, b, theta, itheta, gpre, hard,
                             has_w, detach)  # fmt: skip
    return (lvn if on else lv0), (lwn if on else lw0), li_new, gx, d, d_syn


@njit(inline="always", **JIT)
def _surrogate_row(v_b, pb, nb, sg, kind, out):
    """``out[j] = g(u_j)`` with ``u_j = (v_b[j] - V_th) * (1/theta)`` for the block's
    neurons: ReluGrad (kind 0, the models' default) in a vectorized loop, the other kinds
    through the scalar switch."""
    if kind == 0:
        for j in range(nb):
            out[j] = relu_grad(abs((v_b[j] - pb[3, j]) * pb[ITHETA, j]), sg[0], sg[1])
    else:
        for j in range(nb):
            u = (v_b[j] - pb[3, j]) * pb[ITHETA, j]
            out[j] = surrogate_grad(u, sg[0], sg[1], sg[2], sg[3], kind)


@njit(**JIT)
def _adjoint_rows(rows_v, rows_w, rows_r, rows_i, x, t0, L, lo, hi, pb, len_b, v0, w0, i0,
                  lv, lw, li, g, gspk, gv, gw, gi, gx, dt, sg, kind, flags):  # fmt: skip
    """The adjoint recursion over steps ``t0 + L - 1 .. t0`` (rows ``L-1 .. 0`` of the
    stored V/w/I/flags) of neurons ``lo..hi-1``, from the adjoints ``lv``/``lw``/``li``
    (updated in place), accumulating the parameter gradients into ``g`` ``[11, hi - lo]``.

    Per step: the block's stored V before/after, w and I before, x, refractory flags,
    whether the step ran (``len_b``) and surrogate values g(u_t), g(u_{t-1}) go into
    contiguous local rows (g(u_t) is the previous iteration's g(u_{t-1}) of the same V,
    computed once), the incoming gradients are added, then one branch-free loop over the
    neurons (vectorized by LLVM) runs the adjoint, with or without the parameter gradients
    (two loops, the flag tested outside them)."""
    has_ref, detach, param_grad, read_w = flags[3], flags[4], flags[5], flags[6]
    has_gspk, has_gv, has_gw, write_gx = flags[7:11]
    read_i, has_gi = flags[15], flags[16]
    # an incoming gradient given as one (1, M) row is the same at every step (row 0)
    s_spk, s_v = int(gspk.shape[0] > 1), int(gv.shape[0] > 1)
    s_w, s_i = int(gw.shape[0] > 1), int(gi.shape[0] > 1)
    nb = hi - lo
    vn_b, vp_b, wp_b = np.empty(nb), np.empty(nb), np.zeros(nb)
    ip_b, xt_b = np.zeros(nb), np.zeros(nb)
    sgu_b, sgp_b, gn_b, gx_b = np.zeros(nb), np.zeros(nb), np.zeros(nb), np.empty(nb)
    ref_b = np.zeros(nb, dtype=np.bool_)
    on_b = np.zeros(nb, dtype=np.bool_)
    for i in range(L - 1, -1, -1):
        t = t0 + i
        for j in range(nb):
            vn_b[j] = rows_v[i, lo + j]
            vp_b[j] = rows_v[i - 1, lo + j] if i > 0 else v0[j]
            on_b[j] = t < len_b[j]
        if read_w:
            for j in range(nb):
                wp_b[j] = rows_w[i - 1, lo + j] if i > 0 else w0[j]
        if read_i:
            for j in range(nb):
                ip_b[j] = rows_i[i - 1, lo + j] if i > 0 else i0[j]
                xt_b[j] = x[t, lo + j]
        if has_ref:
            for j in range(nb):
                ref_b[j] = ((rows_r[i >> 3, lo + j] >> (i & 7)) & 1) != 0
        if has_gspk:  # the returned spike of step t (the constant 0 of a held step)
            if i == L - 1:  # g(u_t): the last iteration's g(u_{t-1}) of the same V otherwise
                _surrogate_row(vn_b, pb, nb, sg, kind, gn_b)
            else:  # (copied: swapping the two rows kept LLVM from vectorizing the adjoint)
                gn_b[:] = sgp_b
            for j in range(nb):
                sgu_b[j] = gspk[t * s_spk, lo + j] * (gn_b[j] * pb[ITHETA, j]) if on_b[j] else 0.0
        if has_gspk or not detach:
            _surrogate_row(vp_b, pb, nb, sg, kind, sgp_b)
        if has_gspk:
            for j in range(nb):
                lv[j] += sgu_b[j]
        if has_gv:
            for j in range(nb):
                lv[j] += gv[t * s_v, lo + j]
        if has_gw:
            for j in range(nb):
                lw[j] += gw[t * s_w, lo + j]
        if has_gi:
            for j in range(nb):
                li[j] += gi[t * s_i, lo + j]
        if param_grad:
            for j in range(nb):
                lv[j], lw[j], li[j], gx_b[j], d, d_syn = _adjoint_neuron(
                    vp_b[j], vn_b[j], wp_b[j], ref_b[j], on_b[j], sgu_b[j], sgp_b[j], ip_b[j],
                    xt_b[j], lv[j], lw[j], li[j], _neuron_params(pb, j), dt, flags)  # fmt: skip
                g[R_, j] += d[R_]
                g[TAU, j] += d[TAU]
                g[TAU_W, j] += d[TAU_W]
                g[V_TH, j] += d[V_TH]
                g[V_RESET, j] += d[V_RESET]
                g[V_REST, j] += d[V_REST]
                g[V_T, j] += d[V_T]
                g[DELTA_T, j] += d[DELTA_T]
                g[A, j] += d[A]
                g[B, j] += d[B]
                g[TAU_SYN, j] += d_syn
        else:
            for j in range(nb):
                lv[j], lw[j], li[j], gx_b[j], _, _ = _adjoint_neuron(
                    vp_b[j], vn_b[j], wp_b[j], ref_b[j], on_b[j], sgu_b[j], sgp_b[j], ip_b[j],
                    xt_b[j], lv[j], lw[j], li[j], _neuron_params(pb, j), dt, flags)  # fmt: skip
        if write_gx:
            for j in range(nb):
                gx[t, lo + j] = gx_b[j]


@njit(**JIT)
def _segment_start(src, C, lo, hi, v0, w0, i0, has_w, i_row):
    """Copy V, w (``has_w``) and I (``i_row >= 0``) of ``src`` ``[C, M]`` for neurons
    ``lo..hi-1`` into the block rows ``v0``, ``w0``, ``i0``."""
    for m in range(lo, hi):
        v0[m - lo] = src[0, m]
        if has_w:
            w0[m - lo] = src[1, m]
        if i_row >= 0:
            i0[m - lo] = src[i_row, m]


@njit(parallel=True, **JIT)
def scan_backward(vseq, wseq, rbits, iseq, state0, par, gspk, gv, gw, gi, gstate, x, ckpt,
                  times, tau_ref, dt, ceiling, sg, kind, flags, lens, sps, param_mask, K, T,
                  gx, gstate0, gpar, scr_state, scr_v, scr_w, scr_r, scr_i,
                  no_spk):  # fmt: skip
    """The BPTT backward of :func:`scan_forward`. ``flags``: (hard, has_w, has_exp, has_ref,
    detach_reset, param_grad, read_w, has_gspk, has_gv, has_gw, write_gx, has_gstate,
    write_gstate0, recompute, has_syn, read_i, has_gi). Incoming gradients
    ``gspk``/``gv``/``gw``/``gi`` ``[T, M]`` (or ``[1, M]``: one row for every step),
    ``gstate`` ``[C, M]``; outputs ``gx``
    ``[T, M]``, ``gstate0`` ``[C, M]``, ``gpar`` ``[popcount(param_mask), M]`` (one row per
    parameter of ``param_mask``, in packed-row order). ``lens``/``sps``: the forward's
    sample lengths (or empty). With recompute, each
    K-step segment is rerun from ``ckpt`` into the scratch ``scr_*`` (``[C, M]``, ``[K,
    M]``, ``[cdiv(K, 8), M]``) first (``no_spk``: an empty ``[0, 0]`` array, the
    recomputation's spikes)."""
    hard, has_w, has_exp, has_ref = flags[0], flags[1], flags[2], flags[3]
    param_grad = flags[5]
    has_gstate, write_gstate0, recompute = flags[11], flags[12], flags[13]
    has_syn = flags[14]
    i_row = 1 + has_w + has_ref if has_syn else -1
    M = state0.shape[1]
    C = state0.shape[0]
    n_seg = (T + K - 1) // K if recompute else 1
    for blk in prange((M + BLOCK - 1) // BLOCK):
        lo = blk * BLOCK
        hi = min(M, lo + BLOCK)
        nb = hi - lo
        pb = _block_params(par, lo, hi, dt, ceiling)
        len_b = _block_lengths(lens, sps, lo, hi)
        lv, lw, li = np.zeros(nb), np.zeros(nb), np.zeros(nb)
        v0, w0, i0 = np.empty(nb), np.zeros(nb), np.zeros(nb)
        g = np.zeros((N_GRADS, nb))
        if has_gstate:
            for m in range(lo, hi):
                lv[m - lo] = gstate[0, m]
                if has_w:
                    lw[m - lo] = gstate[1, m]
                if has_syn:
                    li[m - lo] = gstate[i_row, m]
        for s in range(n_seg):
            seg = n_seg - 1 - s
            if recompute:
                t0 = seg * K
                L = min(K, T - t0)
                for c in range(C):
                    for m in range(lo, hi):
                        scr_state[c, m] = ckpt[seg, c, m]
                _run_steps(x, t0, L, lo, hi, pb, len_b, times, tau_ref[0], dt, hard, has_w,
                           has_exp, has_ref, has_syn, scr_state, no_spk, scr_v, scr_w, scr_r,
                           scr_i, t0, ckpt, 0)  # fmt: skip
                _segment_start(ckpt[seg], C, lo, hi, v0, w0, i0, has_w, i_row)
                _adjoint_rows(scr_v, scr_w, scr_r, scr_i, x, t0, L, lo, hi, pb, len_b, v0,
                              w0, i0, lv, lw, li, g, gspk, gv, gw, gi, gx, dt, sg, kind,
                              flags)  # fmt: skip
            else:
                _segment_start(state0, C, lo, hi, v0, w0, i0, has_w, i_row)
                _adjoint_rows(vseq, wseq, rbits, iseq, x, 0, T, lo, hi, pb, len_b, v0, w0, i0,
                              lv, lw, li, g, gspk, gv, gw, gi, gx, dt, sg, kind,
                              flags)  # fmt: skip
        for m in range(lo, hi):
            j = m - lo
            if write_gstate0:
                gstate0[0, m] = lv[j]
                if has_w:
                    gstate0[1, m] = lw[j]
                if has_ref:  # the last-spike time carries no gradient
                    gstate0[1 + has_w, m] = 0.0
                if has_syn:
                    gstate0[i_row, m] = li[j]
            if param_grad:  # compact rows: the parameters of param_mask, in row order
                row = 0
                for k in range(N_GRADS):
                    if (param_mask >> k) & 1:
                        gpar[row, m] = g[k, j]
                        row += 1
