"""purchase_models: per organization, the BG/NBD and Gamma-Gamma fits and the RFM quintile
breaks, fitted in the background from `customer_facts` (profile history + tracked purchases).

The fit uses every buyer's (x repeat purchases, t_x, T) in days as of the fit; spend is fitted
in the organization's main currency (the most common one among buyers), on the customers'
average order value (all orders, not only repeat ones: the facts keep no per-order values).
For RFM, the buyers' recency (days), frequency (orders) and monetary value (total spent, main
currency) are kept as 1,001-point quantile samples (actual values, so ties keep their mass): a
customer's score against the sample is within 0.1 percentile of the score against everyone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from domain.purchase_model import BgNbdFit, GammaGammaFit, fit_bgnbd, fit_gamma_gamma

log = logging.getLogger(__name__)

TABLE = "purchase_models"
SAMPLE = np.linspace(0.0, 1.0, 1001)
ENROL_SECONDS = 600.0

BUYERS = """
SELECT order_count - 1,
    extract(epoch FROM last_purchase_at - first_purchase_at) / 86400,
    extract(epoch FROM %(as_of)s - first_purchase_at) / 86400,
    extract(epoch FROM %(as_of)s - last_purchase_at) / 86400,
    average_order_value, total_spent, spend_currency
FROM customer_facts
WHERE org_id = %(org)s AND status <> 'DELETED' AND order_count > 0
    AND first_purchase_at IS NOT NULL AND last_purchase_at <= %(as_of)s
"""
SAVE = """
INSERT INTO purchase_models AS m (org_id, fitted_at, observed_until, currency, customers,
    repeat_buyers, bgnbd, gamma_gamma, rfm_base, error)
VALUES (%(org)s, now(), %(as_of)s, %(currency)s, %(customers)s, %(repeat)s, %(bgnbd)s,
    %(gg)s, %(base)s, %(error)s)
ON CONFLICT (org_id) DO UPDATE SET fitted_at = excluded.fitted_at,
    observed_until = excluded.observed_until, currency = excluded.currency,
    customers = excluded.customers, repeat_buyers = excluded.repeat_buyers,
    bgnbd = excluded.bgnbd, gamma_gamma = excluded.gamma_gamma,
    rfm_base = excluded.rfm_base, error = excluded.error
"""
REQUEST = (
    "INSERT INTO purchase_models (org_id, requested_at) VALUES (%s, now())"
    " ON CONFLICT (org_id) DO UPDATE SET requested_at = now()"
    " RETURNING requested_at"
)
# Organizations with customers and no model yet, and models requested or older than allowed.
ENROL = (
    "INSERT INTO purchase_models (org_id, requested_at)"
    " SELECT DISTINCT org_id, now() FROM segment_facts ON CONFLICT DO NOTHING"
)
DUE = (
    "SELECT org_id FROM purchase_models"
    " WHERE requested_at > coalesce(fitted_at, '-infinity')"
    " OR fitted_at < now() - make_interval(secs => %s) ORDER BY org_id"
)
LOAD = (
    "SELECT fitted_at, observed_until, currency, customers, repeat_buyers, bgnbd, gamma_gamma,"
    " rfm_base, error, requested_at FROM purchase_models WHERE org_id = %s"
)


@dataclass(frozen=True)
class Model:
    fitted_at: datetime | None
    observed_until: datetime | None
    currency: str | None  # folded, as in the facts
    customers: int
    repeat_buyers: int
    bgnbd: BgNbdFit | None
    gamma_gamma: GammaGammaFit | None
    rfm_base: dict[str, list[float]]  # recency, frequency, monetary: sorted samples
    error: str | None
    requested_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "status": "FITTED" if self.bgnbd else "FAILED" if self.error else "PENDING",
            "fittedAt": self.fitted_at and self.fitted_at.isoformat(),
            "observedUntil": self.observed_until and self.observed_until.isoformat(),
            "requestedAt": self.requested_at and self.requested_at.isoformat(),
            "currency": self.currency and self.currency.upper(),
            "sampleSize": {"customers": self.customers, "repeatBuyers": self.repeat_buyers},
            "bgnbd": self.bgnbd and _params(self.bgnbd, ("r", "alpha", "a", "b")),
            "gammaGamma": self.gamma_gamma and _params(self.gamma_gamma, ("p", "q", "gamma")),
            "rfmQuintileBreaks": {k: v[200:1000:200] for k, v in self.rfm_base.items()},
            "error": self.error,
        }


def _params(fit: Any, names: tuple[str, ...]) -> dict[str, float]:
    return {**{n: getattr(fit, n) for n in names}, "logLikelihood": fit.log_likelihood}


def load(row: tuple[Any, ...] | None) -> Model | None:
    if row is None:
        return None
    fitted, until, currency, customers, repeat, bg, gg, base, error, requested = row
    return Model(
        fitted,
        until,
        currency,
        customers or 0,
        repeat or 0,
        BgNbdFit(**bg) if bg else None,
        GammaGammaFit(**gg) if gg else None,
        base or {},
        error,
        requested,
    )


def fit(conn: psycopg.Connection[Any], org: str, as_of: datetime) -> dict[str, Any]:
    """Fit the organization's models as of `as_of` and save them (or the reason they could
    not be fitted); returns what was saved."""
    rows = conn.execute(BUYERS, {"org": org, "as_of": as_of}).fetchall()
    saved: dict[str, Any] = {
        "org": org,
        "as_of": as_of,
        "currency": None,
        "customers": len(rows),
        "repeat": 0,
        "bgnbd": None,
        "gg": None,
        "base": None,
        "error": None,
    }
    try:
        if not rows:
            raise ValueError("no customer has purchased yet")
        data = np.array([r[:4] for r in rows], dtype=np.float64)
        x, t_x, age, recency = data.T
        currencies = [r[6] for r in rows if r[6] is not None]
        main = max(set(currencies), key=currencies.count) if currencies else None
        in_main = [i for i, r in enumerate(rows) if main is not None and r[6] == main]
        aov = np.array([float(rows[i][4]) for i in in_main], dtype=np.float64)
        spent = np.array([float(rows[i][5]) for i in in_main], dtype=np.float64)
        base = {"recency": _sample(recency), "frequency": _sample(x + 1)}
        if spent.size:
            base["monetary"] = _sample(spent)
        saved.update(currency=main, repeat=int((x[in_main] > 0).sum()), base=Jsonb(base))
        saved["bgnbd"] = Jsonb(vars(fit_bgnbd(x, t_x, age)))
        saved["gg"] = Jsonb(vars(fit_gamma_gamma(x[in_main], aov)))
    except ValueError as e:  # too little data, or the optimiser failed
        saved["error"] = str(e)
    conn.execute(SAVE, saved)
    return saved


def _sample(values: Any) -> list[float]:
    return [float(v) for v in np.quantile(values, SAMPLE, method="inverted_cdf")]


def fit_due(conn: psycopg.Connection[Any], max_age_hours: float) -> int:
    """Fit every organization whose model is requested or older than allowed."""
    due = [r[0] for r in conn.execute(DUE, (max_age_hours * 3600,))]
    for org in due:
        fit(conn, org, datetime.now(UTC))
    return len(due)


def fit_forever(database_url: str, max_age_hours: float, stop: threading.Event) -> None:
    """The segments process's model-fitting thread: fits what is due every few seconds, and
    enrols organizations without a model every ten minutes (a scan of the facts)."""
    enrolled = 0.0
    while not stop.is_set():
        try:
            with psycopg.connect(database_url, autocommit=True, row_factory=tuple_row) as conn:
                while not stop.is_set():
                    if time.monotonic() - enrolled > ENROL_SECONDS:
                        conn.execute(ENROL)
                        enrolled = time.monotonic()
                    fit_due(conn, max_age_hours)
                    stop.wait(2.0)
        except Exception:
            log.exception("model fitting failed; retrying")
            stop.wait(5.0)
