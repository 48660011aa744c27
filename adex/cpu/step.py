"""One step of the AdEx family for one neuron, as numba scalar functions: the forward step,
its recomputed factors, its adjoint and its parameter-gradient terms, term for term the
Triton device functions of ``adex.kernels.step`` (same names, same order of operations,
same selections on refractory and runaway steps). Everything is a float64 scalar."""

from __future__ import annotations

from numba import njit

from adex.cpu.device_math import JIT, exp_term, exprel, exprel_derivative, reset, surrogate_grad

# packed parameter rows (adex.params.PARAM_KINDS order)
R_, TAU, TAU_W, V_TH, V_RESET, V_REST, V_T, DELTA_T, A, B = range(10)


@njit(inline="always", **JIT)
def integrate_step(v, w, x, R, tau, vth, vreset, vrest, vT, dT, a, b, theta, vcap, cw, dt,
                   hard, has_w, has_exp):  # fmt: skip
    """Reset from the previous spike, exponential-Euler V, exact-exponential w (the
    refractory hold is the caller's). Returns ``(V, w, V', w')``: the new stored V and w
    and the post-reset values the refractory hold keeps."""
    vr, sprev, _ = reset(v, vth, vreset, theta, hard)
    # every branch computed, one selected: no control flow, so the loop over a block of
    # neurons vectorizes (the unselected values of a model without w or exp are discarded)
    z, e, slope = exp_term(vr, vT, dT)
    leak = -(vr - vrest)
    drift = leak + dT * e if has_exp else leak
    jac = (-1.0 + e * slope) / tau if has_exp else -1.0 / tau
    wr = w + b * sprev if has_w else w
    drift = drift - R * wr if has_w else drift
    drift = (drift + R * x) / tau
    vn = vr + dt * exprel(dt * jac) * drift
    runaway = has_exp & (not ((vn <= vcap) | (z <= 0.0)))  # RUNAWAY_CEILING, or NaN
    vn = vth if runaway else vn
    wn = wr + cw * (a * (vn - vrest) - wr) if has_w else w
    return vn, wn, vr, wr


@njit(**JIT)
def step_factors(vprev, vnew, tau, vth, vreset, vT, dT, theta, dt, hard, has_exp):
    """The forward quantities of one step that its adjoint needs, recomputed from the
    stored V before and after it: ``(V', s_prev, u_prev, z, E, slope, J, zJ, phi, P, F,
    dV/dV', runaway)`` as ``adex.kernels.step.step_factors`` defines them."""
    vr, sprev, uprev = reset(vprev, vth, vreset, theta, hard)
    z = e = slope = 0.0
    if has_exp:
        z, e, slope = exp_term(vr, vT, dT)
        jac = (-1.0 + e * slope) / tau
        djac = e * slope / (tau * dT)  # dJ/dV'
    else:
        jac = -1.0 / tau
        djac = 0.0
    zj = dt * jac
    phi = exprel(zj)
    p = dt * phi
    f = (vnew - vr) / p  # F_V(V'), recovered from consecutive V
    dvdv = 1.0 + p * jac + dt * dt * exprel_derivative(zj, phi) * djac * f
    run = False
    if has_exp:  # a runaway step stored the constant V_th: nothing flows through its V
        run = vnew == vth and z > 0.0
        if run:
            p = 0.0
            dvdv = 0.0
    return vr, sprev, uprev, z, e, slope, jac, zj, phi, p, f, dvdv, run


@njit(**JIT)
def step_adjoint(lv, lw, ref, p, dvdv, R, tau, a, cw, has_w):
    """The adjoint of one step's integration: ``(grad_x, lambda_V', lambda_w',
    lambda_big)`` from the adjoints of the stored V_t and w_t (``ref``: the step was
    refractory, an identity without input gradient)."""
    big = lv
    if has_w:
        big += lw * a * cw
    if ref:
        return 0.0, lv, lw, big
    gx = big * p * R / tau
    return gx, big * dvdv, lw - lw * cw - big * p * R / tau, big


@njit(**JIT)
def reset_adjoint(lvr, lwr, lw, vprev, uprev, vreset, b, theta, sg, kind, hard, has_w,
                  detach):  # fmt: skip
    """The adjoint through the reset at the start of a step: ``(lambda_V_{t-1},
    lambda_w_{t-1})``. ``sg``: the four surrogate hyper-parameters."""
    lv_prev = lvr
    if not detach:
        sig = surrogate_grad(uprev, sg[0], sg[1], sg[2], sg[3], kind) / theta
        if hard:
            lv_prev = lvr - lvr * (vprev - vreset) * sig
        else:
            lv_prev = lvr - lvr * theta * sig
        if has_w:
            lv_prev += lwr * b * sig
    return lv_prev, (lwr if has_w else lw)


@njit(**JIT)
def step_param_grads(g, j, gsg, u, lw, big, lvr, lwr, ref, vprev, vnew, wprev, fac,
                     R, tau, vreset, vrest, dT, a, b, theta, cw, dcw, dt, sg, kind,
                     hard, has_w, has_exp, detach, has_gspk):  # fmt: skip
    """Add one step's direct dependence on the ten parameters to ``g[:, j]`` (packed-row
    order): the returned spike, the exponential-Euler V, the w update and the reset.
    ``fac``: the tuple of :func:`step_factors`."""
    vr, sprev, uprev, z, e, slope, jac, zj, phi, p, f, _, run = fac
    if has_gspk:  # u = (V - V_th)/(V_th - V_reset)
        g[V_TH, j] -= gsg * (1.0 + u)
        g[V_RESET, j] += gsg * u
    upd = not ref  # w was updated
    on = upd and not (has_exp and run)  # V was integrated
    if on:  # selected, not multiplied by 0: exprel(dt J) may be inf elsewhere
        acc = dt * dt * exprel_derivative(zj, phi) * f  # dV/dJ
        inet = tau * f + (vr - vrest)  # R (x - w')
        if has_exp:
            inet -= dT * e
            em = e * slope
            g[V_T, j] -= big * (acc * em / (dT * tau) + p * em / tau)
            g[DELTA_T, j] += big * (p * (e - em * z) - acc * em * z / dT) / tau
        g[R_, j] += big * p * inet / (R * tau)
        g[TAU, j] -= big * (acc * jac + p * f) / tau
        g[V_REST, j] += big * p / tau
    if has_exp and run and upd:  # a runaway step stored V_new = V_th
        g[V_TH, j] += big
    if has_w and upd:
        wr = wprev + b * sprev
        g[A, j] += lw * cw * (vnew - vrest)
        g[V_REST, j] -= lw * cw * a
        g[TAU_W, j] += lw * dcw * (a * (vnew - vrest) - wr)
    # the reset at the start of this step: V' and w' depend on V_th, V_reset, b
    gpre = 0.0 if detach else surrogate_grad(uprev, sg[0], sg[1], sg[2], sg[3], kind)
    if hard:
        k = (vprev - vreset) * gpre / theta
        g[V_TH, j] += lvr * k * (1.0 + uprev)
        g[V_RESET, j] += lvr * (sprev - k * uprev)
    else:
        g[V_TH, j] += lvr * (gpre * (1.0 + uprev) - sprev)
        g[V_RESET, j] += lvr * (sprev - gpre * uprev)
    if has_w:
        g[B, j] += lwr * sprev
        g[V_TH, j] -= lwr * b * gpre * (1.0 + uprev) / theta
        g[V_RESET, j] += lwr * b * gpre * uprev / theta
