"""One step of the AdEx family for one neuron, as numba scalar functions: the forward step,
its recomputed factors, its adjoint and its parameter-gradient terms, term for term the
Triton device functions of ``adex.kernels.step`` (same names, same order of operations,
same selections on refractory and runaway steps, the same loop-invariant reciprocals: 1/tau,
dt/tau, 1/delta_T, 1/theta, R/tau and 1/(R tau) are per-neuron values the caller computes
once, so a step multiplies where it would divide). Everything is a float64 scalar."""

from __future__ import annotations

from numba import njit

from adex.cpu.device_math import JIT, exp_term, exprel, exprel_derivative, reset

# packed parameter rows (adex.params.PARAM_KINDS order)
R_, TAU, TAU_W, V_TH, V_RESET, V_REST, V_T, DELTA_T, A, B = range(10)


@njit(inline="always", **JIT)
def integrate_step(v, w, x, R, vth, vreset, vrest, vT, dT, a, b, theta, vcap, cw, dt, itau,
                   dtitau, idT, hard, has_w, has_exp):  # fmt: skip
    """Reset from the previous spike, exponential-Euler V, exact-exponential w (the
    refractory hold is the caller's). ``itau``, ``dtitau``, ``idT``: 1/tau, dt/tau,
    1/delta_T. Returns ``(V, w, V', w')``: the new stored V and w and the post-reset values
    the refractory hold keeps."""
    vr, sprev, _ = reset(v, vth, vreset, theta, 1.0, hard)  # u unused: the spike is V >= V_th
    # every branch computed, one selected: no control flow, so the loop over a block of
    # neurons vectorizes (the unselected values of a model without w or exp are discarded)
    z, e, slope = exp_term(vr, vT, idT)
    leak = -(vr - vrest)
    drift = leak + dT * e if has_exp else leak
    zj = (-1.0 + e * slope) * dtitau if has_exp else -dtitau  # dt J
    wr = w + b * sprev if has_w else w
    drift = drift - R * wr if has_w else drift
    # V' + P F with P = dt exprel(dt J), F = (drift + R x)/tau (the backward recovers F as
    # (V_new - V')/P with the same P)
    vn = vr + (dt * exprel(zj)) * ((drift + R * x) * itau)
    runaway = has_exp & (not ((vn <= vcap) | (z <= 0.0)))  # RUNAWAY_CEILING, or NaN
    vn = vth if runaway else vn
    wn = wr + cw * (a * (vn - vrest) - wr) if has_w else w
    return vn, wn, vr, wr


@njit(inline="always", **JIT)
def step_factors(vprev, vnew, vth, vreset, vT, dT, theta, dt, itau, dtitau, idT, itheta,
                 hard, has_exp):  # fmt: skip
    """The forward quantities of one step that its adjoint needs, recomputed from the
    stored V before and after it: ``(V', s_prev, u_prev, z, E, slope, J, zJ, phi, P, F,
    dV/dV', runaway)`` as ``adex.kernels.step.step_factors`` defines them (selects, no
    control flow; ``dt J`` as :func:`integrate_step` computes it)."""
    vr, sprev, uprev = reset(vprev, vth, vreset, theta, itheta, hard)
    z, e, slope = exp_term(vr, vT, idT)
    z = z if has_exp else 0.0
    e = e if has_exp else 0.0
    slope = slope if has_exp else 0.0
    jac = (-1.0 + e * slope) * itau if has_exp else -itau
    zj = (-1.0 + e * slope) * dtitau if has_exp else -dtitau
    djac = e * slope * (itau * idT) if has_exp else 0.0  # dJ/dV'
    phi = exprel(zj)
    p = dt * phi
    f = (vnew - vr) / p  # F_V(V'), recovered from consecutive V
    dvdv = 1.0 + p * jac + dt * dt * exprel_derivative(zj, phi) * djac * f
    # a runaway step stored the constant V_th: nothing flows through its V
    run = has_exp & (vnew == vth) & (z > 0.0)
    p = 0.0 if run else p
    dvdv = 0.0 if run else dvdv
    return vr, sprev, uprev, z, e, slope, jac, zj, phi, p, f, dvdv, run


@njit(inline="always", **JIT)
def step_adjoint(lv, lw, ref, p, dvdv, ritau, a, cw, has_w):
    """The adjoint of one step's integration: ``(grad_x, lambda_V', lambda_w',
    lambda_big)`` from the adjoints of the stored V_t and w_t (``ref``: the step was
    refractory, an identity without input gradient; ``ritau``: R/tau)."""
    big = lv + lw * a * cw if has_w else lv
    gx = big * p * ritau
    lwr = lw - lw * cw - gx
    return (0.0 if ref else gx), (lv if ref else big * dvdv), (lw if ref else lwr), big


@njit(inline="always", **JIT)
def reset_adjoint(lvr, lwr, lw, vprev, vreset, b, theta, itheta, gpre, hard, has_w, detach):
    """The adjoint through the reset at the start of a step: ``(lambda_V_{t-1},
    lambda_w_{t-1})``. ``gpre``: the surrogate's g(u_{t-1}); ``itheta``: 1/theta."""
    sig = gpre * itheta
    lv_hard = lvr - lvr * (vprev - vreset) * sig
    lv_soft = lvr - lvr * theta * sig
    lv_prev = lv_hard if hard else lv_soft
    lv_prev = lv_prev + lwr * b * sig if has_w else lv_prev
    return (lvr if detach else lv_prev), (lwr if has_w else lw)


@njit(inline="always", **JIT)
def step_param_grads(gsg, u, lw, big, lvr, lwr, ref, vprev, vnew, wprev, fac, tau, vreset,
                     vrest, dT, a, b, cw, dcw, dt, gpre, inv, hard, has_w, has_exp, detach,
                     has_gspk):  # fmt: skip
    """One step's direct dependence on the ten parameters: the ten terms (packed-row order)
    the caller adds to its gradient rows (the returned spike, the exponential-Euler V, the w
    update and the reset). ``fac``: the tuple of :func:`step_factors`; ``gpre``:
    g(u_{t-1}); ``inv``: the tuple (1/tau, 1/delta_T, 1/theta, 1/(R tau)) (a call of more
    than 30 arguments would compile to ``*args``, which numba cannot inline). Scalars in,
    a tuple of scalars out: the caller writes its gradient rows itself (an inlined function
    given arrays keeps LLVM from vectorizing the loop that calls it, see
    :mod:`adex.cpu.scan`). Every term is computed and the ones that do not apply are
    selected away (not multiplied by 0: exprel(dt J) may be inf where they do not apply).
    The tau term is negated as a whole (``g - t`` is ``g + (-t)`` in IEEE arithmetic)."""
    vr, sprev, uprev, z, e, slope, jac, zj, phi, p, f, _, run = fac
    itau, idT, itheta, irtau = inv
    d_vth = -gsg * (1.0 + u) if has_gspk else 0.0  # u = (V - V_th)/(V_th - V_reset)
    d_vreset = gsg * u if has_gspk else 0.0
    upd = not ref  # w was updated
    on = upd & (not (has_exp & run))  # V was integrated
    acc = dt * dt * exprel_derivative(zj, phi) * f  # dV/dJ
    inet = tau * f + (vr - vrest)  # R (x - w')
    em = e * slope
    inet = inet - dT * e if has_exp else inet
    d_vt = -big * em * (acc * idT + p) * itau
    d_dt = big * (p * (e - em * z) - acc * em * z * idT) * itau
    g_vt = d_vt if on & has_exp else 0.0
    g_dt = d_dt if on & has_exp else 0.0
    g_r = big * p * inet * irtau if on else 0.0
    g_tau = -(big * (acc * jac + p * f) * itau if on else 0.0)
    d_vrest = big * p * itau if on else 0.0
    d_vth += big if has_exp & run & upd else 0.0  # a runaway step stored V_new = V_th
    wr = wprev + b * sprev
    w_on = has_w & upd
    g_a = lw * cw * (vnew - vrest) if w_on else 0.0
    d_vrest -= lw * cw * a if w_on else 0.0
    g_tau_w = lw * dcw * (a * (vnew - vrest) - wr) if w_on else 0.0
    # the reset at the start of this step: V' and w' depend on V_th, V_reset, b
    gp = 0.0 if detach else gpre
    k = (vprev - vreset) * gp * itheta
    d_vth += lvr * k * (1.0 + uprev) if hard else lvr * (gp * (1.0 + uprev) - sprev)
    d_vreset += lvr * (sprev - k * uprev) if hard else lvr * (sprev - gp * uprev)
    g_b = lwr * sprev if has_w else 0.0
    bg = lwr * b * gp * itheta
    d_vth -= bg * (1.0 + uprev) if has_w else 0.0
    d_vreset += bg * uprev if has_w else 0.0
    return g_r, g_tau, g_tau_w, d_vth, d_vreset, d_vrest, g_vt, g_dt, g_a, g_b
