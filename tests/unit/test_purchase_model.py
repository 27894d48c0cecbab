"""BG/NBD and Gamma-Gamma: parameter recovery on data simulated from the models' own
generative processes, the closed forms against first-principles integrals and Monte Carlo,
and the numerical guards.

Tolerances for parameter recovery come from a replication study (40 seeds per setting, same
sizes and designs as below): the standard deviation of each log-estimate, times 4 and rounded
up. A fixed seed makes every test deterministic; 4 SD keeps the tolerances honest (a bug that
biases an estimate by a few SD fails) without depending on a lucky seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import integrate, optimize, special

from domain import purchase_model
from domain.purchase_model import (
    BgNbdFit,
    GammaGammaFit,
    bgnbd_log_likelihood,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    predicted_value,
)

FloatArray = NDArray[np.float64]

# CDNOW's published BG/NBD fit (Fader, Hardie & Lee 2005) is r=0.243, alpha=4.414 in weeks;
# rates per day divide lambda by 7, i.e. multiply alpha by 7.
R, ALPHA, A, B = 0.24, 4.41 * 7, 0.79, 2.43
TRUE = BgNbdFit(r=R, alpha=ALPHA, a=A, b=B, log_likelihood=math.nan, sample_size=0)
# The Gamma-Gamma fit to CDNOW in the lifetimes documentation.
P, Q, GAMMA = 6.25, 3.74, 15.44
TRUE_GG = GammaGammaFit(p=P, q=Q, gamma=GAMMA, log_likelihood=math.nan, sample_size=0)


@dataclass(frozen=True)
class Simulated:
    x: FloatArray
    t_x: FloatArray
    T: FloatArray
    alive: NDArray[np.bool_]  # still active at T
    future: FloatArray  # purchases in (T, T + horizon]


def simulate_bgnbd(
    rng: np.random.Generator,
    n: int,
    fit: BgNbdFit = TRUE,
    T_range: tuple[float, float] = (365.0, 730.0),
    horizon: float = 0.0,
) -> Simulated:
    """BG/NBD's story, vectorised: lambda ~ Gamma(r, rate alpha), p ~ Beta(a, b); purchases
    form a Poisson(lambda) process from the first purchase at 0; after each repeat purchase
    the customer drops out with probability p, i.e. after the K-th, K ~ Geometric(p)."""
    lam = rng.gamma(fit.r, 1.0 / fit.alpha, n)
    p = rng.beta(fit.a, fit.b, n)
    lifetime_purchases = rng.geometric(p)
    T = rng.uniform(*T_range, n)
    would_buy = rng.poisson(lam * T)  # repeat purchases in [0, T] if never dropping out
    x = np.minimum(would_buy, lifetime_purchases)
    # Given n Poisson events in [0, T], the x-th is T times the x-th of n uniform order
    # statistics, which is Beta(x, n - x + 1).
    t_x = np.zeros(n)
    buyers = x > 0
    t_x[buyers] = T[buyers] * rng.beta(x[buyers], would_buy[buyers] - x[buyers] + 1)
    alive = would_buy < lifetime_purchases
    # The Poisson process is memoryless, so the future is a fresh Poisson count, cut off by
    # the purchases the customer has left before dropping out.
    left = lifetime_purchases - would_buy
    future = np.where(alive, np.minimum(rng.poisson(lam * horizon), left), 0)
    return Simulated(x.astype(float), t_x, T, alive, future.astype(float))


def simulate_spend(rng: np.random.Generator, n: int) -> tuple[NDArray[np.int64], FloatArray]:
    """Gamma-Gamma's story: nu ~ Gamma(q, rate gamma) per customer, each transaction value
    ~ Gamma(p, rate nu), so the sum of x of them is Gamma(p x, rate nu)."""
    x = 1 + rng.poisson(2.0, n)
    nu = rng.gamma(Q, 1.0 / GAMMA, n)
    m = rng.gamma(P * x, 1.0 / nu) / x
    return x, m


def log_error(estimate: float, truth: float) -> float:
    return abs(math.log(estimate / truth))


# --------------------------------------------------------------------------- fitting


def test_bgnbd_recovers_the_simulating_parameters() -> None:
    data = simulate_bgnbd(np.random.default_rng(20240611), 5000)
    fit = fit_bgnbd(data.x, data.t_x, data.T)

    assert fit.sample_size == 5000
    # The MLE is at least as likely as the truth: the optimiser found the maximum (this has
    # no tolerance to tune; it fails if the optimiser stops early).
    truth = bgnbd_log_likelihood(data.x, data.t_x, data.T, r=R, alpha=ALPHA, a=A, b=B)
    assert fit.log_likelihood >= truth
    assert fit.log_likelihood == pytest.approx(
        bgnbd_log_likelihood(data.x, data.t_x, data.T, r=fit.r, alpha=fit.alpha, a=fit.a, b=fit.b)
    )
    # Replication SDs of the log-estimates at n=5000, T ~ U[365, 730] days: r 0.025,
    # alpha 0.050, a 0.087, b 0.116, mean rate r/alpha 0.035, mean drop-out a/(a+b) 0.046.
    assert log_error(fit.r, R) < 0.10
    assert log_error(fit.alpha, ALPHA) < 0.20
    assert log_error(fit.a, A) < 0.35
    assert log_error(fit.b, B) < 0.47
    assert log_error(fit.r / fit.alpha, R / ALPHA) < 0.14
    assert log_error(fit.a / (fit.a + fit.b), A / (A + B)) < 0.19


def test_gamma_gamma_recovers_the_simulating_parameters() -> None:
    x, m = simulate_spend(np.random.default_rng(77), 5000)
    # One-time buyers (x = 0) are ignored, whatever their m.
    x_all = np.concatenate([x, np.zeros(50, dtype=np.int64)])
    m_all = np.concatenate([m, np.full(50, np.nan)])
    fit = fit_gamma_gamma(x_all, m_all)

    assert fit.sample_size == 5000
    truth = gamma_gamma_log_likelihood(x, m, p=P, q=Q, gamma=GAMMA)
    assert fit.log_likelihood >= truth
    # Replication SDs of the log-estimates at n=5000: p 0.099, q 0.034, gamma 0.124, and
    # 0.012 for the population mean value p*gamma/(q-1), which the data pin down far better
    # than p and gamma apart (they trade off against each other).
    assert log_error(fit.p, P) < 0.40
    assert log_error(fit.q, Q) < 0.14
    assert log_error(fit.gamma, GAMMA) < 0.50
    assert log_error(fit.p * fit.gamma / (fit.q - 1), P * GAMMA / (Q - 1)) < 0.05


def test_gradients_match_finite_differences() -> None:
    """The fits rely on analytic gradients; a wrong one would stop L-BFGS-B short."""
    data = simulate_bgnbd(np.random.default_rng(3), 500)
    counts = purchase_model._Counts.of(data.x)
    theta = np.log([0.3, 25.0, 0.9, 2.0])

    def bgnbd(th: FloatArray) -> float:
        return float(purchase_model._bgnbd_loglik(th, data.x, data.t_x, data.T, counts)[0].sum())

    _, grad = purchase_model._bgnbd_loglik(theta, data.x, data.t_x, data.T, counts)
    numeric = optimize.approx_fprime(theta, bgnbd, 1e-7)
    np.testing.assert_allclose(grad.sum(axis=1), numeric, rtol=1e-4, atol=1e-3)

    x, m = simulate_spend(np.random.default_rng(4), 500)
    xf = x.astype(float)
    theta = np.log([5.0, 3.0, 12.0])

    def gg(th: FloatArray) -> float:
        return float(purchase_model._gamma_gamma_loglik(th, xf, m)[0].sum())

    _, grad = purchase_model._gamma_gamma_loglik(theta, xf, m)
    numeric = optimize.approx_fprime(theta, gg, 1e-7)
    np.testing.assert_allclose(grad.sum(axis=1), numeric, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("seed", "n", "truth"),
    [
        (0, 150, BgNbdFit(r=0.16, alpha=144.0, a=4.1, b=1.1, log_likelihood=0, sample_size=0)),
        (2, 60, BgNbdFit(r=20.0, alpha=400.0, a=0.1, b=30.0, log_likelihood=0, sample_size=0)),
        (3, 2000, BgNbdFit(r=2.0, alpha=3.0, a=0.3, b=0.2, log_likelihood=0, sample_size=0)),
        (4, 500, BgNbdFit(r=0.05, alpha=2000.0, a=40.0, b=40.0, log_likelihood=0, sample_size=0)),
    ],
)
def test_bgnbd_fit_beats_the_truth_across_the_parameter_space(
    seed: int, n: int, truth: BgNbdFit
) -> None:
    """Small samples, near-degenerate ones (no drop-out or no rate heterogeneity to speak
    of) and extreme ones: whatever the estimate, the optimiser must reach the maximum. (The
    first case once failed to converge: a and b ran off to e^30, where gammaln differences
    are noise.)"""
    data = simulate_bgnbd(np.random.default_rng(seed), n, fit=truth, T_range=(5.0, 500.0))
    fit = fit_bgnbd(data.x, data.t_x, data.T)
    params = {"r": truth.r, "alpha": truth.alpha, "a": truth.a, "b": truth.b}
    assert fit.log_likelihood >= bgnbd_log_likelihood(data.x, data.t_x, data.T, **params)


@pytest.mark.parametrize(
    ("seed", "p", "q", "gamma"),
    [
        # Spend so heavy-tailed that its mean is infinite (q < 1): one customer dominates
        # the arithmetic mean, so rescaling by it pushed gamma out of the box.
        (13, 0.21, 0.18, 1014.0),
        # Near-constant spend: a long, narrow ridge where L-BFGS-B reported success after a
        # step that made no progress (hence convergence judged by the gradient).
        (11, 54.5, 53.2, 2073.0),
        (13, 2.0, 5.0, 4.0e6),  # in cents of a big-ticket business
    ],
)
def test_gamma_gamma_fit_beats_the_truth_across_the_parameter_space(
    seed: int, p: float, q: float, gamma: float
) -> None:
    rng = np.random.default_rng(seed)
    x = 1 + rng.poisson(2.0, 300)
    m = rng.gamma(p * x, 1.0 / rng.gamma(q, 1.0 / gamma, 300)) / x
    fit = fit_gamma_gamma(x, m)
    assert fit.log_likelihood >= gamma_gamma_log_likelihood(x, m, p=p, q=q, gamma=gamma)


def test_fitting_100k_customers_recovers_their_parameters() -> None:
    """The size a real organization has (its speed is bench.analytics's business)."""
    data = simulate_bgnbd(np.random.default_rng(5), 100_000, T_range=(30.0, 1000.0))
    fit = fit_bgnbd(data.x, data.t_x, data.T)
    for name in ("r", "alpha", "a", "b"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=0.15), name


def test_a_likelihood_flat_toward_a_boundary_still_fits() -> None:
    """Plain Poisson buyers who never drop out: the MLE runs off to r, alpha -> inf, a -> 0.
    The fit stops on the plateau instead of failing, and its predictions are the obvious
    ones (rate 0.05 a day, everyone alive)."""
    rng = np.random.default_rng(6)
    T = rng.uniform(100, 400, 3000)
    x = rng.poisson(0.05 * T).astype(float)
    t_x = np.where(x > 0, T * rng.beta(np.maximum(x, 1), 1), 0.0)
    fit = fit_bgnbd(x, t_x, T)
    assert fit.r / fit.alpha == pytest.approx(0.05, rel=0.05)
    assert fit.p_alive(3, 50.0, 300.0) > 0.99
    assert fit.expected_purchases(100.0, 3, 250.0, 300.0) == pytest.approx(5.0, rel=0.05)


def test_too_little_data_is_refused() -> None:
    data = simulate_bgnbd(np.random.default_rng(8), 400)
    with pytest.raises(ValueError, match="at least 20 customers"):
        fit_bgnbd(data.x[:19], data.t_x[:19], data.T[:19])
    with pytest.raises(ValueError, match="repeat purchases"):
        fit_bgnbd(np.zeros(100), np.zeros(100), np.full(100, 30.0))
    x, _ = simulate_spend(np.random.default_rng(9), 9)
    with pytest.raises(ValueError, match="at least 10 repeat buyers"):
        fit_gamma_gamma(np.concatenate([x, np.zeros(100, dtype=np.int64)]), np.ones(109))


@pytest.mark.parametrize(
    ("x", "t_x", "T", "message"),
    [
        ([1.0] * 30, [5.0] * 30, [4.0] * 30, "t_x must satisfy"),
        ([0.0] * 30, [1.0] * 30, [4.0] * 30, "t_x must be 0"),
        ([1.5] * 30, [1.0] * 30, [4.0] * 30, "non-negative integer"),
        ([-1.0] * 30, [0.0] * 30, [4.0] * 30, "non-negative integer"),
        ([1.0] * 30, [math.nan] * 30, [4.0] * 30, "finite"),
        ([1.0] * 30, [1.0] * 29, [4.0] * 30, "equal length"),
    ],
)
def test_invalid_customers_are_refused(
    x: list[float], t_x: list[float], T: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_bgnbd(x, t_x, T)


def test_invalid_spend_is_refused() -> None:
    x = np.full(20, 2)
    with pytest.raises(ValueError, match="> 0"):
        fit_gamma_gamma(x, np.r_[np.ones(19), 0.0])
    with pytest.raises(ValueError, match="equal length"):
        fit_gamma_gamma(x, np.ones(19))


def test_optimiser_failure_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Failed:
        x: FloatArray
        fun: float = 1.0
        success: bool = False
        message: str = "ABNORMAL"

    def failing(fun: Any, x0: FloatArray, **_: Any) -> Failed:
        return Failed(np.asarray(x0, dtype=float))

    monkeypatch.setattr(optimize, "minimize", failing)
    data = simulate_bgnbd(np.random.default_rng(10), 200)
    with pytest.raises(ValueError, match="BG/NBD fit did not converge: ABNORMAL"):
        fit_bgnbd(data.x, data.t_x, data.T)
    x, m = simulate_spend(np.random.default_rng(11), 200)
    with pytest.raises(ValueError, match="Gamma-Gamma fit did not converge"):
        fit_gamma_gamma(x, m)


# --------------------------------------------------------------------------- BG/NBD predictions


def test_p_alive_is_one_without_repeat_purchases() -> None:
    """BG/NBD lets a customer drop out only right after a repeat purchase, so one who made
    none is certainly still active (eq. 13 with x = 0), however long ago they bought."""
    assert TRUE.p_alive(0, 0.0, 10.0) == 1.0
    assert TRUE.p_alive(0, 0.0, 1e9) == 1.0


def test_p_alive_decreases_with_time_since_last_purchase() -> None:
    T = np.array([50.0, 100.0, 200.0, 400.0, 800.0, 1e4, 1e8])
    alive = TRUE.p_alive(3, 40.0, T)
    assert np.all(np.diff(alive) < 0)
    assert alive[0] < 1.0
    assert alive[-1] < 1e-15
    # Log-space guard: an absurd T underflows cleanly to 0 rather than overflowing to nan.
    assert TRUE.p_alive(3, 40.0, 1e300) == 0.0
    assert TRUE.expected_purchases(90.0, 3, 40.0, 1e300) == 0.0
    # Bought on the observation date: the (r+x) power is 1, p_alive = 1 / (1 + a/(b+x-1)).
    assert TRUE.p_alive(3, 40.0, 40.0) == pytest.approx(1 / (1 + A / (B + 2)))


def test_expected_purchases_grows_with_the_horizon() -> None:
    t = np.array([0.0, 1.0, 7.0, 30.0, 90.0, 365.0, 3650.0])
    for x, t_x, T in [(0, 0.0, 100.0), (1, 50.0, 100.0), (10, 300.0, 310.0)]:
        expected = TRUE.expected_purchases(t, x, t_x, T)
        assert expected[0] == 0.0
        assert np.all(np.diff(expected) > 0)


def literal_eq10(fit: BgNbdFit, t: float, x: float, t_x: float, T: float) -> float:
    """Eq. (10) exactly as printed."""
    r, alpha, a, b = fit.r, fit.alpha, fit.a, fit.b
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    numerator = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    dead_odds = a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x) if x > 0 else 0.0
    return float(numerator / (1 + dead_odds))


def from_first_principles(fit: BgNbdFit, t: float, x: float, t_x: float, T: float) -> float:
    """E[purchases in (T, T+t] | x, t_x, T] by integrating over p numerically. Given
    (lambda, p) the likelihood is (1-p)^x lambda^x e^(-lambda T) (alive) + [x>0] p (1-p)^(x-1)
    lambda^x e^(-lambda t_x) (dropped), and an active customer buys (1 - e^(-lambda p t))/p
    in expectation; lambda's Gamma prior integrates out of each term in closed form."""
    k = fit.r + x
    u = t / (fit.alpha + T)

    def future(p: float) -> float:
        if p == 0:
            return k * u
        return float((1 - p) ** x * -np.expm1(-k * np.log1p(p * u)) / p)

    # Both terms relative to the alive one's (alpha+T)^-(r+x); Beta(a, b) is the weight.
    kw: dict[str, Any] = {"weight": "alg", "wvar": (fit.a - 1, fit.b - 1), "epsrel": 1e-11}
    kw["epsabs"] = 0.0
    expected = integrate.quad(future, 0, 1, **kw)[0]
    alive = integrate.quad(lambda p: (1 - p) ** x, 0, 1, **kw)[0]
    dropped = 0.0
    if x > 0:
        ratio = ((fit.alpha + T) / (fit.alpha + t_x)) ** k
        dropped = ratio * integrate.quad(lambda p: p * (1 - p) ** (x - 1), 0, 1, **kw)[0]
    return float(expected / (alive + dropped))


CASES = [(182.0, 0, 0.0, 300.0), (182.0, 2, 100.0, 300.0), (365.0, 6, 250.0, 300.0),
         (30.0, 1, 5.0, 400.0), (3650.0, 40, 700.0, 730.0), (1.0, 3, 0.0, 0.5)]  # fmt: skip


@pytest.mark.parametrize(("t", "x", "t_x", "T"), CASES)
@pytest.mark.parametrize("fit", [TRUE, replace(TRUE, a=3.2, b=0.6, r=2.0, alpha=5.0)])
def test_expected_purchases_is_eq10_and_its_integral(
    fit: BgNbdFit, t: float, x: int, t_x: float, T: float
) -> None:
    """Against the printed formula (this module evaluates an Euler-transformed 2F1) and
    against the expectation it solves, integrated numerically from the model's story."""
    expected = fit.expected_purchases(t, x, t_x, T)
    assert expected == pytest.approx(literal_eq10(fit, t, x, t_x, T), rel=1e-9)
    assert expected == pytest.approx(from_first_principles(fit, t, x, t_x, T), rel=1e-8)


def test_a_brand_new_customer_expects_the_unconditional_eq9() -> None:
    """x = t_x = T = 0 carries no information, so eq. (10) must reduce to eq. (9)."""
    t = 200.0
    hyp = special.hyp2f1(R, B, A + B - 1, t / (ALPHA + t))
    eq9 = (A + B - 1) / (A - 1) * (1 - (ALPHA / (ALPHA + t)) ** R * hyp)
    assert TRUE.expected_purchases(t, 0, 0.0, 0.0) == pytest.approx(eq9, rel=1e-12)


def test_predictions_match_monte_carlo_futures() -> None:
    """Simulate calibration data and what happens next; by the tower property, within any
    group of customers chosen by their data, mean(actual - predicted) is 0 in expectation
    under the true parameters, with standard error sd / sqrt(n). The bound is 5 SE, not 4:
    in the small groups of heavy buyers the residuals are skewed, and over 40 seeds x 18
    checks the largest |z| seen was 4.2."""
    horizon = 182.0
    data = simulate_bgnbd(np.random.default_rng(12), 60_000, horizon=horizon)
    expected = TRUE.expected_purchases(horizon, data.x, data.t_x, data.T)
    alive = TRUE.p_alive(data.x, data.t_x, data.T)
    recent = data.t_x > data.T / 2
    for low, high in [(0, 0), (1, 1), (2, 2), (3, 5), (6, 10**9)]:
        for recency in (recent, ~recent) if low > 0 else (np.ones_like(recent),):
            group = (data.x >= low) & (data.x <= high) & recency
            n = int(group.sum())
            assert n > 500
            for actual, predicted in ((data.future, expected), (data.alive, alive)):
                residual = actual[group] - predicted[group]
                se = residual.std() / math.sqrt(n)
                if se == 0:  # x = 0: p_alive is exactly 1 and so is everyone
                    assert np.all(residual == 0)
                else:
                    assert abs(residual.mean()) < 5 * se, (low, high, n)


def test_scalars_give_floats_and_arrays_give_arrays() -> None:
    assert type(TRUE.p_alive(2, 10.0, 50.0)) is float
    assert type(TRUE.expected_purchases(30.0, 2, 10.0, 50.0)) is float
    assert type(TRUE_GG.expected_average_value(2, 30.0)) is float
    x = np.array([0.0, 2.0, 5.0])
    t_x = np.array([0.0, 10.0, 40.0])
    T = np.array([50.0, 50.0, 60.0])
    many = TRUE.expected_purchases(30.0, x, t_x, T)
    assert isinstance(many, np.ndarray)
    assert many.shape == (3,)
    for i in range(3):
        assert many[i] == TRUE.expected_purchases(30.0, x[i], t_x[i], T[i])
        assert TRUE.p_alive(x, t_x, T)[i] == TRUE.p_alive(x[i], t_x[i], T[i])


def test_a_near_one_is_continuous() -> None:
    """Eq. (10) divides by a - 1; the singularity is removable and must not show."""
    values = [replace(TRUE, a=a).expected_purchases(90.0, 3, 50.0, 200.0) for a in
              (1 - 1e-3, 1 - 1e-6, 1.0, 1 + 1e-6, 1 + 1e-3)]  # fmt: skip
    assert np.all(np.isfinite(values))
    assert values[1] == pytest.approx(values[2], rel=1e-6)
    assert values[3] == pytest.approx(values[2], rel=1e-6)
    assert values[0] > values[2] > values[4]  # smooth, decreasing in a (fewer purchases)


def test_the_quadrature_fallback_agrees_with_the_closed_form() -> None:
    """Where scipy's 2F1 overflows (horizons ~1e6 times alpha + T with a large a) the
    expectation is integrated instead; check that path where both work."""
    fit = replace(TRUE, a=3.5, b=1.7)
    for t, x, T in [(90.0, 0.0, 20.0), (400.0, 4.0, 100.0), (30.0, 60.0, 500.0)]:
        closed = fit._expected_if_alive(fit.a, np.array(t), np.array(x), np.array(T))
        integral = fit._expected_if_alive_by_quadrature(fit.a, t / (fit.alpha + T), x)
        assert float(closed) == pytest.approx(integral, rel=1e-8)
    # And a case that needs it: the limit for t -> inf is E[1/p | alive] = c / (a - 1).
    extreme = replace(TRUE, r=0.75, alpha=1.0, a=49.8, b=0.28)
    value = extreme.expected_purchases(3.4e7, 2, 1.0, 1.0)
    limit = (49.8 + 0.28 + 2 - 1) / (49.8 - 1) * extreme.p_alive(2, 1.0, 1.0)
    assert value == pytest.approx(limit, rel=1e-6)


@given(
    x=st.integers(0, 2000),
    recency=st.floats(0.0, 1.0),
    T=st.floats(0.0, 1e7),
    t=st.floats(0.0, 1e5),
    a=st.floats(0.05, 30.0),
    b=st.floats(0.05, 30.0),
)
def test_predictions_are_finite_probabilities_and_counts(
    x: int, recency: float, T: float, t: float, a: float, b: float
) -> None:
    fit = replace(TRUE, a=a, b=b)
    t_x = recency * T if x > 0 else 0.0
    alive = fit.p_alive(x, t_x, T)
    expected = fit.expected_purchases(t, x, t_x, T)
    assert 0.0 <= alive <= 1.0
    assert math.isfinite(expected)
    assert expected >= 0.0


def test_prediction_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="t must be >= 0"):
        TRUE.expected_purchases(-1.0, 1, 1.0, 2.0)
    with pytest.raises(ValueError, match="t_x must satisfy"):
        TRUE.p_alive(1, 3.0, 2.0)


# --------------------------------------------------------------------------- spend and value


def test_expected_average_value_shrinks_toward_the_population_mean() -> None:
    population = P * GAMMA / (Q - 1)
    assert TRUE_GG.expected_average_value(0, 0.0) == pytest.approx(population)
    assert TRUE_GG.expected_average_value(0, math.nan) == pytest.approx(population)
    x = np.array([1, 2, 5, 20, 100, 10_000])
    high = TRUE_GG.expected_average_value(x, np.full(6, 3 * population))
    # Between the population mean and the customer's own mean, closer to the latter the
    # more purchases back it: weight p x / (p x + q - 1) on m.
    assert np.all((population < high) & (high < 3 * population))
    assert np.all(np.diff(high) > 0)
    weight = P * 5 / (P * 5 + Q - 1)
    assert high[2] == pytest.approx(weight * 3 * population + (1 - weight) * population)
    low = TRUE_GG.expected_average_value(x, np.full(6, population / 3))
    assert np.all((population / 3 < low) & (low < population))


def test_expected_average_value_without_a_population_mean_is_infinite() -> None:
    heavy = replace(TRUE_GG, q=0.8)
    assert heavy.expected_average_value(0, 0.0) == math.inf
    assert math.isfinite(heavy.expected_average_value(1, 10.0))


def test_predicted_value_is_purchases_times_value() -> None:
    x = np.array([0.0, 1.0, 4.0])
    t_x = np.array([0.0, 30.0, 200.0])
    T = np.array([100.0, 250.0, 260.0])
    m = np.array([0.0, 20.0, 55.0])
    value = predicted_value(TRUE, TRUE_GG, 365.0, x, t_x, T, m)
    purchases = TRUE.expected_purchases(365.0, x, t_x, T)
    assert np.allclose(value, purchases * TRUE_GG.expected_average_value(x, m))
    one = predicted_value(TRUE, TRUE_GG, 365.0, 4.0, 200.0, 260.0, 55.0)
    assert type(one) is float
    assert one == pytest.approx(value[2])
    assert predicted_value(TRUE, TRUE_GG, 0.0, 4.0, 200.0, 260.0, 55.0) == 0.0
