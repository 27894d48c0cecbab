"""Customer lifetime-value models: BG/NBD for purchase counts, Gamma-Gamma for spend.

Pure computation (numpy/scipy), no I/O. Written from the published formulas:

- BG/NBD: Fader, Hardie & Lee (2005), "'Counting your customers' the easy way: an alternative
  to the Pareto/NBD model", Marketing Science 24(2). While active, a customer buys as a
  Poisson process of rate lambda ~ Gamma(shape r, rate alpha); after each *repeat* purchase
  they drop out for good with probability p ~ Beta(a, b). A customer is summarised by
  x (repeat purchases), t_x (time of the last purchase, from the first) and T (time from the
  first purchase to the observation date). Likelihood: paper eq. (6); P(alive): eq. (13) of
  the accompanying note; conditional expectation: eq. (10).
- Gamma-Gamma: Fader, Hardie & Lee (2005), "RFM and CLV: using iso-value curves for customer
  base analysis", J. Marketing Research 42(4), in the p, q, gamma parametrisation of the
  `lifetimes` documentation: each transaction value ~ Gamma(shape p, rate nu) with
  nu ~ Gamma(shape q, rate gamma), so a customer's mean value p/nu has population mean
  p*gamma/(q-1). Fitted on repeat buyers' mean transaction value m over their x repeat
  purchases; it assumes spend is independent of purchase frequency.

Units: all times are days (floats). Fitting maximises the exact log-likelihood, without any
penalty, over log-parameters (so positivity needs no constraint) with L-BFGS-B and analytic
gradients; 100,000 customers fit in about a second.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, optimize, special

FloatArray = NDArray[np.float64]

MIN_BGNBD_CUSTOMERS = 20
MIN_GAMMA_GAMMA_BUYERS = 10

# Box for the log-parameters, fitted on data rescaled to about 1 (times by the mean T, values
# by the geometric mean of m): e^-15..e^15 holds any sensible value, and stops a likelihood
# that keeps rising toward a boundary of the model (e.g. a, b -> inf together when the
# drop-out probability has no heterogeneity) before differences of gammaln(huge) lose their
# precision (rounding ~1e-16 * e^15 * 15 = 5e-9 per customer at the edge).
_LOG_BOUND = 15.0
# Eq. (10) has a removable singularity at a = 1; within this distance it is evaluated as the
# mean of a = 1 -+ _A_NEAR_ONE (error O(_A_NEAR_ONE^2), cancellation error ~1e-16/_A_NEAR_ONE).
_A_NEAR_ONE = 1e-4

# Projected-gradient thresholds (mean log-likelihood per customer, per unit of a
# log-parameter). Below _CONVERGED a fit is done. Between the two it is accepted only when
# restarts cannot improve it any more: moving any log-parameter by 0.1 would gain under 1e-4
# per customer, which happens on a likelihood that keeps rising, ever more slowly, toward a
# boundary of the model (e.g. r, alpha -> inf when purchase rates show no heterogeneity).
_CONVERGED = 1e-6
_STALLED = 1e-3

_Objective = Callable[[FloatArray], tuple[float, FloatArray]]


def _floats(value: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _is_scalar_call(*values: ArrayLike) -> bool:
    """Scalars in, float out: callers scoring one customer should not get 0-d arrays."""
    return all(not isinstance(v, np.ndarray) and np.ndim(v) == 0 for v in values)


def _result(array: FloatArray, scalar: bool) -> float | FloatArray:
    return float(array) if scalar else array


def _customers(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Validated, broadcast (x, t_x, T); the model is meaningless outside these rules."""
    xs, txs, Ts = np.broadcast_arrays(_floats(x, "x"), _floats(t_x, "t_x"), _floats(T, "T"))
    if np.any(xs < 0) or np.any(xs != np.floor(xs)):
        raise ValueError("x (repeat purchases) must be a non-negative integer")
    if np.any(txs < 0) or np.any(txs > Ts):
        raise ValueError("t_x must satisfy 0 <= t_x <= T")
    if np.any((xs == 0) & (txs != 0)):
        raise ValueError("t_x must be 0 for a customer without repeat purchases (x = 0)")
    return xs, txs, Ts


def _minimize(objective: _Objective, start: FloatArray, model: str) -> FloatArray:
    """Minimise over the log-parameter box; a failed or non-finite optimum is an error.

    Convergence is judged here, by the projected gradient, not by L-BFGS-B's own flag: on a
    narrow curved ridge (e.g. Gamma-Gamma with large p and q) it can report success after a
    step that made no progress, and on a flat optimum it reports a failed line search."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(start)
    options = {"maxiter": 2000, "ftol": 1e-12, "gtol": 1e-8}

    def run(x0: FloatArray) -> Any:
        return optimize.minimize(
            objective, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options
        )

    result = run(start)
    for _ in range(5):
        if _projected_gradient(objective, result.x) <= _CONVERGED:
            break
        # A restart forgets the stale curvature estimate; keep going while it helps.
        again = run(result.x)
        if not again.fun < result.fun:
            break
        result = again
    theta = np.asarray(result.x, dtype=np.float64)
    if not (np.all(np.isfinite(theta)) and np.isfinite(result.fun)):
        raise ValueError(f"{model} fit failed: {result.message}")
    if not _projected_gradient(objective, theta) <= _STALLED:
        raise ValueError(f"{model} fit did not converge: {result.message}")
    return theta


def _projected_gradient(objective: _Objective, theta: FloatArray) -> float:
    """Largest gradient component of the mean log-likelihood per customer, ignoring those
    that push against the box (inf when not finite)."""
    _, grad = objective(theta)
    outward = ((theta <= -_LOG_BOUND) & (grad > 0)) | ((theta >= _LOG_BOUND) & (grad < 0))
    projected = np.where(outward, 0.0, grad)
    return float(np.max(np.abs(projected))) if np.all(np.isfinite(projected)) else np.inf


# --------------------------------------------------------------------------- BG/NBD


class _Counts(NamedTuple):
    """Customers' purchase counts as distinct values plus an index back: the special
    functions of x are evaluated once per distinct count (a few hundred) rather than once
    per customer, which is most of the cost of a likelihood evaluation."""

    values: FloatArray
    position: NDArray[np.intp]

    @classmethod
    def of(cls, x: FloatArray) -> _Counts:
        values, index = np.unique(x, return_inverse=True)
        return cls(values, index.reshape(-1))


def _bgnbd_loglik(
    theta: FloatArray, x: FloatArray, t_x: FloatArray, T: FloatArray, counts: _Counts
) -> tuple[FloatArray, FloatArray]:
    """Per-customer log-likelihood (paper eq. 6) and its gradient in log-parameters."""
    r, alpha, a, b = np.exp(theta)
    u, at = counts.values, counts.position
    repeat = x > 0
    # The paper's r ln(alpha) - (r+x) ln(alpha+T) regrouped as -r log1p(T/alpha) - x ln(alpha+T):
    # the big logs cancel when r and alpha are large (little rate heterogeneity).
    log1p_T = np.log1p(T / alpha)
    log1p_tx = np.log1p(t_x / alpha)
    log_alpha_T = np.log(alpha + T)
    log_alpha_tx = np.log(alpha + t_x)
    b_x_1 = np.where(repeat, b + x - 1.0, 1.0)  # > 0 where used; 1.0 keeps log() quiet
    # log L = A12 + log(exp(A3) + [x > 0] exp(A4)), the two branches being "still alive at T"
    # and "dropped out right after the purchase at t_x". A12 depends on x only.
    a12 = (
        special.gammaln(r + u)
        - special.gammaln(r)
        + special.gammaln(a + b)
        + special.gammaln(b + u)
        - special.gammaln(b)
        - special.gammaln(a + b + u)
    )
    a3 = -r * log1p_T - x * log_alpha_T
    a4 = np.where(repeat, np.log(a) - np.log(b_x_1) - r * log1p_tx - x * log_alpha_tx, -np.inf)
    branches = np.logaddexp(a3, a4)
    loglik = a12[at] + branches
    alive = np.exp(a3 - branches)
    dropped = np.exp(a4 - branches)

    psi_ab = special.digamma(a + b)
    psi_abu = special.digamma(a + b + u)
    d_r = (special.digamma(r + u) - special.digamma(r))[at] - alive * log1p_T - dropped * log1p_tx
    alpha_d_alpha = alive * (r * T - x * alpha) / (alpha + T) + dropped * (r * t_x - x * alpha) / (
        alpha + t_x
    )
    d_a = (psi_ab - psi_abu)[at] + dropped / a
    d_b = (psi_ab + special.digamma(b + u) - special.digamma(b) - psi_abu)[at] - dropped / b_x_1
    grad = np.stack([r * d_r, alpha_d_alpha, a * d_a, b * d_b])
    return loglik, grad


def bgnbd_log_likelihood(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, *, r: float, alpha: float, a: float, b: float
) -> float:
    """Total log-likelihood of customers under given parameters (for model comparison)."""
    xs, txs, Ts = _customers(x, t_x, T)
    theta = np.log(np.array([r, alpha, a, b], dtype=np.float64))
    xs, txs, Ts = xs.ravel(), txs.ravel(), Ts.ravel()
    loglik, _ = _bgnbd_loglik(theta, xs, txs, Ts, _Counts.of(xs))
    return float(loglik.sum())


@dataclass(frozen=True)
class BgNbdFit:
    """Fitted BG/NBD parameters (rates per day) and the fit's total log-likelihood."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    sample_size: int

    def _log_odds_dead(self, x: FloatArray, t_x: FloatArray, T: FloatArray) -> FloatArray:
        """log(P(dropped) / P(alive)); -inf without repeat purchases, where BG/NBD cannot
        have dropped out (drop-out happens only right after a repeat purchase)."""
        repeat = x > 0
        b_x_1 = np.where(repeat, self.b + x - 1.0, 1.0)
        # (r + x) * log((alpha + T) / (alpha + t_x)), kept in logs so that a huge T gives a
        # huge log-odds (P(alive) -> 0) rather than overflowing a power.
        log_ratio = np.log1p((T - t_x) / (self.alpha + t_x))
        odds = np.log(self.a) - np.log(b_x_1) + (self.r + x) * log_ratio
        return np.where(repeat, odds, -np.inf)

    @overload
    def p_alive(self, x: float, t_x: float, T: float) -> float: ...
    @overload
    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray: ...
    def p_alive(self, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> float | FloatArray:
        """Probability that the customer is still active at T. Exactly 1 for x = 0: in BG/NBD
        a customer can only drop out right after a repeat purchase."""
        xs, txs, Ts = _customers(x, t_x, T)
        alive: FloatArray = special.expit(-self._log_odds_dead(xs, txs, Ts))
        return _result(alive, _is_scalar_call(x, t_x, T))

    def _expected_if_alive(
        self, a: float, t: FloatArray, x: FloatArray, T: FloatArray
    ) -> FloatArray:
        """Expected purchases in (T, T + t] given alive at T and the data: eq. (10) times its
        denominator. Euler's transformation of its 2F1,
        (1-z)^(r+x) 2F1(r+x, b+x; c; z) = (1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z),
        z = t / (alpha + T + t), c = a+b+x-1, keeps the growing x out of the 2F1's upper
        parameters (the literal form overflows for x in the hundreds and t beyond T)."""
        c = a + self.b + x - 1.0
        u = t / (self.alpha + T)
        with np.errstate(all="ignore"):  # overflow is detected below
            hyp = special.hyp2f1(a + self.b - 1.0 - self.r, a - 1.0, c, u / (1.0 + u))
            share = np.exp(-(a - 1.0) * np.log1p(u)) * hyp
            # np.array: a writable array even for 0-d inputs (numpy returns scalars there).
            value: FloatArray = np.array(c / (a - 1.0) * (1.0 - share), dtype=np.float64)
        # E[purchases | alive] lies between 0 and E[1/p] = c/(a-1) (unbounded for a <= 1);
        # outside that (beyond rounding of 1 - share for t << alpha + T), or non-finite,
        # scipy's 2F1 has broken down: only for horizons hundreds of times alpha + T with a
        # large a (> 10), where the 2F1 and its prefactor overflow/underflow.
        limit = c / (a - 1.0)
        slack = 1e-9 * np.abs(limit)
        sound = np.isfinite(value) & (value >= -slack)
        if a > 1:
            sound &= value <= limit + slack
        for i in np.flatnonzero(~sound):
            value.flat[i] = self._expected_if_alive_by_quadrature(a, u.flat[i], x.flat[i])
        return value

    def _expected_if_alive_by_quadrature(self, a: float, u: float, x: float) -> float:
        """The same expectation from its definition, E[(1 - (1 + p u)^-(r+x)) / p] with
        p ~ Beta(a, b+x) (p's posterior given alive; lambda integrated out analytically),
        u = t / (alpha + T), by adaptive quadrature: the fallback where the 2F1 breaks down.
        nan if this fails too."""
        k = self.r + x
        shape_b = self.b + x
        log_beta = float(special.betaln(a, shape_b))

        def per_p(p: float) -> float:
            return k * u if p == 0 else float(-np.expm1(-k * np.log1p(p * u)) / p)

        def integrand(p: float, left: bool, right: bool) -> float:
            # The density's p^(a-1) at 0 and (1-p)^(b+x-1) at 1 go to quad's algebraic
            # weight on the end intervals (they may be integrable singularities).
            log_density = -log_beta
            if not left:
                log_density += (a - 1.0) * np.log(p) if p > 0 else -np.inf
            if not right:
                log_density += (shape_b - 1.0) * np.log1p(-p) if p < 1 else -np.inf
            # Overflow here (degenerate fits: a, b at the bound) makes the result non-finite,
            # which the caller reports as nan instead of a number.
            with np.errstate(over="ignore"):
                return per_p(p) * float(np.exp(log_density))

        # Breaks around the posterior's bulk, so that the adaptive subdivision sees it.
        mean = a / (a + shape_b)
        sd = float(np.sqrt(mean * (1.0 - mean) / (a + shape_b + 1.0)))
        offsets = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)
        breaks = sorted({0.0, 1.0} | {float(np.clip(mean + o * sd, 0.0, 1.0)) for o in offsets})
        total = 0.0
        for lo, hi in itertools.pairwise(breaks):
            left, right = lo == 0.0, hi == 1.0
            weight = (a - 1.0 if left else 0.0, shape_b - 1.0 if right else 0.0)
            # full_output: no IntegrationWarning; the result is judged by finiteness below.
            part = integrate.quad(
                integrand,
                lo,
                hi,
                args=(left, right),
                weight="alg",
                wvar=weight,
                epsabs=0.0,
                epsrel=1e-10,
                limit=200,
                full_output=1,
            )
            total += float(part[0])
        return total if np.isfinite(total) else float("nan")

    @overload
    def expected_purchases(self, t: float, x: float, t_x: float, T: float) -> float: ...
    @overload
    def expected_purchases(
        self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
    ) -> FloatArray: ...
    def expected_purchases(
        self, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
    ) -> float | FloatArray:
        """Expected number of purchases in the next t days (paper eq. 10), element-wise."""
        ts = _floats(t, "t")
        if np.any(ts < 0):
            raise ValueError("t must be >= 0")
        xs, txs, Ts = _customers(x, t_x, T)
        ts, xs, txs, Ts = np.broadcast_arrays(ts, xs, txs, Ts)
        if abs(self.a - 1.0) < _A_NEAR_ONE:
            if_alive = 0.5 * (
                self._expected_if_alive(1.0 - _A_NEAR_ONE, ts, xs, Ts)
                + self._expected_if_alive(1.0 + _A_NEAR_ONE, ts, xs, Ts)
            )
        else:
            if_alive = self._expected_if_alive(self.a, ts, xs, Ts)
        alive = special.expit(-self._log_odds_dead(xs, txs, Ts))
        # t = 0 is exactly 0; elsewhere rounding in the 1 - (...) difference can go a hair
        # below 0 for tiny t.
        expected = np.where(ts > 0, np.maximum(if_alive * alive, 0.0), 0.0)
        return _result(expected.astype(np.float64), _is_scalar_call(t, x, t_x, T))


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> BgNbdFit:
    """Maximum-likelihood BG/NBD fit on one customer per element of x, t_x, T (days)."""
    xs, txs, Ts = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    if not (xs.ndim == txs.ndim == Ts.ndim == 1 and xs.shape == txs.shape == Ts.shape):
        raise ValueError("x, t_x and T must be 1-D arrays of equal length")
    xs, txs, Ts = _customers(xs, txs, Ts)
    n = xs.size
    if n < MIN_BGNBD_CUSTOMERS:
        raise ValueError(
            f"BG/NBD needs at least {MIN_BGNBD_CUSTOMERS} customers with a tracked purchase,"
            f" got {n}"
        )
    if not np.any(xs > 0):
        raise ValueError("BG/NBD needs some repeat purchases to estimate drop-out")
    if not np.any(Ts > 0):
        raise ValueError("BG/NBD needs customers observed for some time (T > 0)")

    counts = _Counts.of(xs)
    # Fitted in units of the mean T (alpha scales with time, r, a, b do not), so the box and
    # the start suit any data; the log-likelihood is reported in days, as the paper's.
    scale = float(Ts.mean())
    txs_scaled, Ts_scaled = txs / scale, Ts / scale

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        # Mean rather than sum keeps the optimiser's tolerances independent of n.
        loglik, grad = _bgnbd_loglik(theta, xs, txs_scaled, Ts_scaled, counts)
        return -float(loglik.mean()), -grad.mean(axis=1)

    # Start at r = 1 with the population's average purchase rate and a 50% drop-out chance.
    rate = xs.sum() / Ts_scaled.sum()
    start = np.log(np.array([1.0, 1.0 / rate, 1.0, 1.0]))
    theta = _minimize(objective, start, "BG/NBD") + np.array([0.0, np.log(scale), 0.0, 0.0])
    loglik, _ = _bgnbd_loglik(theta, xs, txs, Ts, counts)
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    return BgNbdFit(r, alpha, a, b, float(loglik.sum()), n)


# --------------------------------------------------------------------------- Gamma-Gamma


def _gamma_gamma_loglik(
    theta: FloatArray, x: FloatArray, m: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per-customer log-density of the mean value m of x transactions, and its gradient in
    log-parameters. x * m | nu ~ Gamma(p x, nu); integrating nu ~ Gamma(q, gamma) out gives
    Gamma(px+q) / (Gamma(px) Gamma(q)) * gamma^q * m^(px-1) * x^(px) / (gamma + m x)^(px+q)."""
    p, q, gamma = np.exp(theta)
    px = p * x
    log_x = np.log(x)
    log_m = np.log(m)
    log_gamma_mx = np.log(gamma + m * x)
    loglik = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(gamma)
        + (px - 1.0) * log_m
        + px * log_x
        - (px + q) * log_gamma_mx
    )
    psi_pxq = special.digamma(px + q)
    d_p = x * (psi_pxq - special.digamma(px) + log_m + log_x - log_gamma_mx)
    d_q = psi_pxq - special.digamma(q) + np.log(gamma) - log_gamma_mx
    d_gamma = q / gamma - (px + q) / (gamma + m * x)
    grad = np.stack([p * d_p, q * d_q, gamma * d_gamma])
    return loglik, grad


def _repeat_buyers(x: ArrayLike, m: ArrayLike) -> tuple[FloatArray, FloatArray]:
    xs = _floats(x, "x")
    ms = np.asarray(m, dtype=np.float64)
    if not (xs.ndim == ms.ndim == 1 and xs.shape == ms.shape):
        raise ValueError("x and m must be 1-D arrays of equal length")
    if np.any(xs < 0) or np.any(xs != np.floor(xs)):
        raise ValueError("x (repeat purchases) must be a non-negative integer")
    repeat = xs > 0
    xs, ms = xs[repeat], ms[repeat]
    if not np.all(np.isfinite(ms)) or np.any(ms <= 0):
        raise ValueError("m (mean transaction value) must be finite and > 0 for repeat buyers")
    return xs, ms


def gamma_gamma_log_likelihood(
    x: ArrayLike, m: ArrayLike, *, p: float, q: float, gamma: float
) -> float:
    """Total log-likelihood of the repeat buyers (x >= 1) among x, m under given parameters."""
    xs, ms = _repeat_buyers(x, m)
    theta = np.log(np.array([p, q, gamma], dtype=np.float64))
    loglik, _ = _gamma_gamma_loglik(theta, xs, ms)
    return float(loglik.sum())


@dataclass(frozen=True)
class GammaGammaFit:
    """Fitted Gamma-Gamma parameters (gamma in the money unit of m)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float
    sample_size: int

    @overload
    def expected_average_value(self, x: float, m: float) -> float: ...
    @overload
    def expected_average_value(self, x: ArrayLike, m: ArrayLike) -> FloatArray: ...
    def expected_average_value(self, x: ArrayLike, m: ArrayLike) -> float | FloatArray:
        """A customer's expected mean transaction value: a credibility-weighted mix of the
        population mean p*gamma/(q-1) and their own mean m, weight p*x/(p*x+q-1) on m; for
        x = 0 (m ignored) the population mean. inf where that mean does not exist (q <= 1
        with too little own data, i.e. p*x + q <= 1)."""
        xs = _floats(x, "x")
        ms = np.asarray(m, dtype=np.float64)
        if np.any(xs < 0):
            raise ValueError("x must be >= 0")
        xs, ms = np.broadcast_arrays(xs, ms)
        own = np.where(xs > 0, ms, 0.0)
        if not np.all(np.isfinite(own)) or np.any((xs > 0) & (ms <= 0)):
            raise ValueError("m must be finite and > 0 where x > 0")
        denominator = self.p * xs + self.q - 1.0
        safe = np.where(denominator > 0, denominator, 1.0)
        value = np.where(denominator > 0, (self.gamma + own * xs) * self.p / safe, np.inf).astype(
            np.float64
        )
        return _result(value, _is_scalar_call(x, m))


def fit_gamma_gamma(x: ArrayLike, m: ArrayLike) -> GammaGammaFit:
    """Maximum-likelihood Gamma-Gamma fit on the repeat buyers (x >= 1) among x, m; others
    are ignored (their m is not looked at)."""
    xs, ms = _repeat_buyers(x, m)
    n = xs.size
    if n < MIN_GAMMA_GAMMA_BUYERS:
        raise ValueError(
            f"Gamma-Gamma needs at least {MIN_GAMMA_GAMMA_BUYERS} repeat buyers (purchases on"
            f" two days or more, with a positive amount), got {n}"
        )

    # Fitted in units of the geometric mean of m (gamma scales with money, p and q do not),
    # so the box and the start suit cents as well as euros; geometric, because spend can be
    # so heavy-tailed (q < 1) that one customer dominates the arithmetic mean.
    scale = float(np.exp(np.log(ms).mean()))
    ms_scaled = ms / scale

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        loglik, grad = _gamma_gamma_loglik(theta, xs, ms_scaled)
        return -float(loglik.mean()), -grad.mean(axis=1)

    # p = 1, q = 2 puts the population mean p*gamma/(q-1) at gamma = 1, the data's scale.
    theta = _minimize(objective, np.log(np.array([1.0, 2.0, 1.0])), "Gamma-Gamma")
    theta += np.array([0.0, 0.0, np.log(scale)])
    loglik, _ = _gamma_gamma_loglik(theta, xs, ms)
    p, q, gamma = (float(v) for v in np.exp(theta))
    return GammaGammaFit(p, q, gamma, float(loglik.sum()), n)


# --------------------------------------------------------------------------- value


@overload
def predicted_value(
    bgnbd: BgNbdFit,
    gg: GammaGammaFit,
    horizon_days: float,
    x: float,
    t_x: float,
    T: float,
    m: float,
) -> float: ...
@overload
def predicted_value(
    bgnbd: BgNbdFit,
    gg: GammaGammaFit,
    horizon_days: ArrayLike,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    m: ArrayLike,
) -> FloatArray: ...
def predicted_value(  # noqa: PLR0917 — mirrors the model notation (x, t_x, T, m)
    bgnbd: BgNbdFit,
    gg: GammaGammaFit,
    horizon_days: ArrayLike,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    m: ArrayLike,
) -> float | FloatArray:
    """Expected spend over the next horizon_days: expected purchases x expected average value.
    Not discounted (money later counts as much as money now). The product is the expectation
    only because Gamma-Gamma assumes spend independent of purchase frequency."""
    purchases = bgnbd.expected_purchases(
        np.asarray(horizon_days), np.asarray(x), np.asarray(t_x), np.asarray(T)
    )
    value = gg.expected_average_value(np.asarray(x), np.asarray(m))
    # Zero expected purchases are worth zero even where the average value is inf.
    product = np.where(purchases > 0, purchases * value, 0.0).astype(np.float64)
    return _result(product, _is_scalar_call(horizon_days, x, t_x, T, m))
