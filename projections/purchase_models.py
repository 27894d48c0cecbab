"""model_fits: BG/NBD (purchases) and Gamma-Gamma (spend) fits of an organization's tracked
purchases as of a calibration end, with optional holdout validation; and the RFM quantile
samples the insights score against.

Purchase occasions are calendar days (UTC): several purchases on one day are one occasion worth
their sum, the convention of the published models; the first occasion is not a repeat. As of
the calibration end c, a customer whose first occasion is on day f and last on day l, with
x + 1 occasions, has x repeat purchases, t_x = l - f and T = c - f, both in whole days (c is the
calibration end's day: the time of day of a purchase, or of the end, moves no fit;
tests/integration/test_purchase_days.py). Spend is fitted on the mean value of the repeat
occasions, in the organization's main currency (the most common among purchases; customers who
also bought in another currency are left out of the spend model). Fits run in the segments
process, one at a time, each in one transaction (a crash leaves the fit QUEUED, to be run
again); a successful fit of the whole base is the model the insights use until the next.
Deterministic: the same data in the same order give the same fit.

For RFM, the buyers' recency (days), frequency (orders) and monetary value (total spent, main
currency) from `customer_facts` are kept as 1,001-point quantile samples (actual values, so
ties keep their mass): a customer's score against the sample is within 0.1 percentile of the
score against everyone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from domain.purchase_model import (
    MIN_BGNBD_CUSTOMERS,
    MIN_GAMMA_GAMMA_BUYERS,
    BgNbdFit,
    GammaGammaFit,
    fit_bgnbd,
    fit_gamma_gamma,
)
from domain.values import utc_iso
from eventstore import dead_letters
from projections.customers import selection_sql

log = logging.getLogger(__name__)

SAMPLE = np.linspace(0.0, 1.0, 1001)
ENROL_SECONDS = 600.0
FREQUENCY_GROUPS = 8  # 0, 1, ..., 6, 7+ repeat purchases in the calibration period

COLUMNS = (
    "id, state, requested_at, requested_by, calibration_end, holdout_end, selection,"
    " finished_at, currency, customers, repeat_purchases, bgnbd, gamma_gamma, rfm_base,"
    " validation, error"
)
QUEUE = (
    "INSERT INTO model_fits (id, org_id, state, requested_by, calibration_end, holdout_end,"  # noqa: S608
    f" selection) VALUES (%s, %s, 'QUEUED', %s, %s, %s, %s) RETURNING {COLUMNS}"
)
ONE = f"SELECT {COLUMNS} FROM model_fits WHERE id = %s AND org_id = %s"  # noqa: S608
LIST = (
    f"SELECT {COLUMNS} FROM model_fits WHERE org_id = %s"  # noqa: S608
    " ORDER BY requested_at DESC, id LIMIT %s"
)
# Why insights and reports have no model-based figures (docs/api.md "Model minimums").
NO_MODEL = (
    "no model is fitted for the organization yet: a fit needs at least"
    f" {MIN_BGNBD_CUSTOMERS} customers with a tracked purchase, some buying on more than one"
    f" day, and at least {MIN_GAMMA_GAMMA_BUYERS} of those repeat buyers (fits run daily;"
    " request one now with POST /api/v1/customers/analytics/models)"
)
# The model insights and reports use: the organization's latest successful whole-base fit.
LOAD = (
    f"SELECT {COLUMNS} FROM model_fits WHERE org_id = %s AND state = 'SUCCEEDED'"  # noqa: S608
    " AND selection IS NULL ORDER BY finished_at DESC LIMIT 1"
)
CLAIM = (
    "SELECT id, org_id, calibration_end, holdout_end, selection FROM model_fits"
    " WHERE state = 'QUEUED' ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED"
)
FINISH = """
UPDATE model_fits SET state = %(state)s, finished_at = now(),
    calibration_end = %(calibration_end)s, currency = %(currency)s, customers = %(customers)s,
    repeat_purchases = %(repeat)s, bgnbd = %(bgnbd)s, gamma_gamma = %(gg)s,
    rfm_base = %(base)s, validation = %(validation)s, error = %(error)s
WHERE id = %(id)s
"""
# A daily whole-base fit for organizations whose latest one is older than allowed (and none
# is queued), and a first one for organizations with customers and no fit yet.
SCHEDULE = """
INSERT INTO model_fits (id, org_id, state, requested_by)
SELECT gen_random_uuid(), org_id, 'QUEUED', 'schedule' FROM model_fits
WHERE selection IS NULL GROUP BY org_id
HAVING max(requested_at) < now() - make_interval(secs => %s)
    AND NOT bool_or(state = 'QUEUED')
"""
ENROL = """
INSERT INTO model_fits (id, org_id, state, requested_by)
SELECT gen_random_uuid(), f.org_id, 'QUEUED', 'schedule'
FROM (SELECT DISTINCT org_id FROM segment_facts) f
WHERE NOT EXISTS (SELECT 1 FROM model_fits m WHERE m.org_id = f.org_id)
"""

# Purchase occasions (days) up to %(until)s, per customer, of the selected customers.
_DAYS = """
WITH days AS (
    SELECT customer_id, (occurred_at AT TIME ZONE 'UTC')::date AS day,
        sum((event_data->>'amount')::numeric) AS value,
        min(upper(event_data->>'currency')) AS currency,
        count(DISTINCT upper(event_data->>'currency')) AS currencies
    FROM customer_events
    WHERE org_id = %(org)s AND event_type = 'PURCHASE' AND occurred_at <= %(until)s {where}
    GROUP BY 1, 2
)
"""
OCCASIONS = (
    _DAYS
    + """
SELECT customer_id, count(*) - 1,
    max(day) - min(day),
    (%(until)s AT TIME ZONE 'UTC')::date - min(day),
    (sum(value) - (array_agg(value ORDER BY day))[1]) / nullif(count(*) - 1, 0),
    CASE WHEN max(currencies) = 1 AND min(currency) = max(currency) THEN min(currency) END
FROM days GROUP BY customer_id ORDER BY customer_id
"""
)
CURRENCIES = _DAYS + "SELECT currency, count(*) FROM days GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"  # noqa: S608
HOLDOUT_DAYS = """
SELECT DISTINCT customer_id, (occurred_at AT TIME ZONE 'UTC')::date
FROM customer_events
WHERE org_id = %(org)s AND event_type = 'PURCHASE'
    AND occurred_at > %(until)s AND occurred_at <= %(holdout)s AND customer_id = ANY(%(ids)s)
"""
FACTS = """
SELECT extract(epoch FROM %(until)s - last_purchase_at) / 86400, order_count,
    CASE WHEN upper(spend_currency) = %(currency)s THEN total_spent END
FROM customer_facts
WHERE org_id = %(org)s AND status <> 'DELETED' AND order_count > 0
    AND last_purchase_at <= %(until)s {where}
"""


@dataclass(frozen=True)
class Model:
    id: UUID
    state: str
    requested_at: datetime
    requested_by: str
    calibration_end: datetime | None
    holdout_end: datetime | None
    selection: dict[str, Any] | None
    finished_at: datetime | None
    currency: str | None
    customers: int
    repeat_purchases: int
    bgnbd: BgNbdFit | None
    gamma_gamma: GammaGammaFit | None
    rfm_base: dict[str, list[float]]  # recency, frequency, monetary: sorted samples
    validation: dict[str, Any] | None
    error: str | None

    def summary(self) -> dict[str, Any]:
        """What an answer computed with this model says about it."""
        return {
            "id": str(self.id),
            "calibrationEnd": self.calibration_end and utc_iso(self.calibration_end),
            "customers": self.customers,
            "currency": self.currency,
        }

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "state": self.state,
            "requestedAt": utc_iso(self.requested_at),
            "requestedBy": self.requested_by,
            "calibrationEnd": self.calibration_end and utc_iso(self.calibration_end),
            "holdoutEnd": self.holdout_end and utc_iso(self.holdout_end),
            "selection": self.selection,
            "finishedAt": self.finished_at and utc_iso(self.finished_at),
            "currency": self.currency,
            "customers": self.customers,
            "repeatPurchases": self.repeat_purchases,
            "bgnbd": self.bgnbd and _params(self.bgnbd, ("r", "alpha", "a", "b")),
            "gammaGamma": self.gamma_gamma and _params(self.gamma_gamma, ("p", "q", "gamma")),
            "rfmQuintileBreaks": {k: v[200:1000:200] for k, v in self.rfm_base.items()},
            "validation": self.validation,
            "error": self.error,
        }


def _params(fit: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Parameters as fitted (per day for the BG/NBD rates), the likelihood and the sample;
    a fit only exists when the optimiser converged (domain.purchase_model)."""
    return {
        **{n: getattr(fit, n) for n in names},
        "timeUnit": "day",
        "logLikelihood": fit.log_likelihood,
        "sampleSize": fit.sample_size,
        "converged": True,
    }


def load(row: tuple[Any, ...] | None) -> Model | None:
    if row is None:
        return None
    (fid, state, requested, by, cal, hold, sel, done, cur, n, repeat, bg, gg, base, val, err) = row
    return Model(
        fid,
        state,
        requested,
        by,
        cal,
        hold,
        sel,
        done,
        cur,
        n or 0,
        repeat or 0,
        BgNbdFit(**bg) if bg else None,
        GammaGammaFit(**gg) if gg else None,
        base or {},
        val,
        err,
    )


@dataclass(frozen=True)
class Occasions:
    """The selected buyers as of a calibration end (one element per customer)."""

    ids: list[UUID]
    x: np.ndarray[Any, np.dtype[np.float64]]
    t_x: np.ndarray[Any, np.dtype[np.float64]]
    T: np.ndarray[Any, np.dtype[np.float64]]
    repeat_mean: np.ndarray[Any, np.dtype[np.float64]]  # nan: no repeat or other currency


def occasions(
    conn: psycopg.Connection[Any], org: str, until: datetime, selection: dict[str, Any] | None
) -> tuple[Occasions, str | None]:
    where, params = selection_sql(selection)
    params = {**params, "org": org, "until": until}
    top = conn.execute(sql.SQL(CURRENCIES).format(where=where), params).fetchone()
    currency = top[0] if top else None
    rows = conn.execute(sql.SQL(OCCASIONS).format(where=where), params).fetchall()
    mean = [float(r[4]) if r[4] is not None and r[5] == currency else np.nan for r in rows]
    return (
        Occasions(
            [r[0] for r in rows],
            np.array([r[1] for r in rows], dtype=np.float64),
            np.array([r[2] for r in rows], dtype=np.float64),
            np.array([float(r[3]) for r in rows], dtype=np.float64),
            np.array(mean, dtype=np.float64),
        ),
        currency,
    )


def _failed(until: datetime) -> dict[str, Any]:
    """FINISH parameters of a fit that produced nothing (yet)."""
    return {
        "state": "FAILED",
        "calibration_end": until,
        "currency": None,
        "customers": 0,
        "repeat": 0,
        "bgnbd": None,
        "gg": None,
        "base": None,
        "validation": None,
        "error": None,
    }


def fit(
    conn: psycopg.Connection[Any],
    org: str,
    until: datetime,
    holdout: datetime | None = None,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The organization's fits as of `until` (and their validation up to `holdout`), as the
    FINISH parameters; FAILED with the reason when there is too little data."""
    done = _failed(until)
    try:
        data, currency = occasions(conn, org, until, selection)
        done.update(customers=len(data.ids), repeat=int(data.x.sum()), currency=currency)
        bg = fit_bgnbd(data.x, data.t_x, data.T)
        repeat_buyers = data.repeat_mean > 0  # nan compares false
        gg = fit_gamma_gamma(data.x[repeat_buyers], data.repeat_mean[repeat_buyers])
        done.update(state="SUCCEEDED", bgnbd=Jsonb(vars(bg)), gg=Jsonb(vars(gg)))
        done["base"] = Jsonb(rfm_base(conn, org, until, currency, selection))
        if holdout is not None:
            validation = validate(conn, bg, data, org=org, until=until, holdout=holdout)
            done["validation"] = Jsonb(validation)
    except ValueError as e:  # too little data, or the optimiser failed
        done["error"] = str(e)
    return done


def rfm_base(
    conn: psycopg.Connection[Any],
    org: str,
    until: datetime,
    currency: str | None,
    selection: dict[str, Any] | None,
) -> dict[str, list[float]]:
    where, params = selection_sql(selection, "id")
    rows = conn.execute(
        sql.SQL(FACTS).format(where=where),
        {**params, "org": org, "until": until, "currency": currency},
    ).fetchall()
    base: dict[str, list[float]] = {}
    if rows:
        base["recency"] = _sample([float(r[0]) for r in rows])
        base["frequency"] = _sample([r[1] for r in rows])
        spent = [float(r[2]) for r in rows if r[2] is not None]
        if spent:
            base["monetary"] = _sample(spent)
    return base


def validate(
    conn: psycopg.Connection[Any],
    bg: BgNbdFit,
    data: Occasions,
    *,
    org: str,
    until: datetime,
    holdout: datetime,
) -> dict[str, Any]:
    """Predicted against actual repeat purchases in (until, holdout] of the calibration
    customers: by calibration frequency, week by week cumulatively, and per customer."""
    length = (holdout - until).total_seconds() / 86400
    index = {cid: i for i, cid in enumerate(data.ids)}
    actual_days: list[list[float]] = [[] for _ in data.ids]
    params = {"org": org, "until": until, "holdout": holdout, "ids": data.ids}
    for cid, day in conn.execute(HOLDOUT_DAYS, params):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        # A day's purchases count from the start of the day, but not before the holdout.
        actual_days[index[cid]].append(max((start - until).total_seconds() / 86400, 0.0))
    actual = np.array([len(d) for d in actual_days], dtype=np.float64)
    predicted = bg.expected_purchases(np.full(len(data.ids), length), data.x, data.t_x, data.T)
    groups = np.minimum(data.x, FREQUENCY_GROUPS - 1).astype(int)
    by_frequency = [
        {
            "repeatPurchases": str(g) if g < FREQUENCY_GROUPS - 1 else f"{g}+",
            "customers": int((groups == g).sum()),
            "predicted": float(predicted[groups == g].mean()),
            "actual": float(actual[groups == g].mean()),
        }
        for g in range(FREQUENCY_GROUPS)
        if (groups == g).any()
    ]
    weeks = max(1, int(np.ceil(length / 7)))
    moments = np.array([min(7.0 * w, length) for w in range(1, weeks + 1)])
    all_days = np.array(sorted(d for days in actual_days for d in days), dtype=np.float64)
    cumulative = [
        {
            "week": w + 1,
            "end": utc_iso(until + timedelta(days=float(t))),
            "predicted": float(
                bg.expected_purchases(np.full(len(data.ids), t), data.x, data.t_x, data.T).sum()
            ),
            "actual": int(np.searchsorted(all_days, t, side="right")),
        }
        for w, t in enumerate(moments)
    ]
    return {
        "holdoutDays": length,
        "customers": len(data.ids),
        "byFrequency": by_frequency,
        "cumulative": cumulative,
        "totals": {"predicted": float(predicted.sum()), "actual": int(actual.sum())},
        "meanAbsoluteError": float(np.abs(predicted - actual).mean()),
    }


def _sample(values: Any) -> list[float]:
    return [float(v) for v in np.quantile(values, SAMPLE, method="inverted_cdf")]


def run_next(conn: psycopg.Connection[Any]) -> bool:
    """Run the oldest queued fit, in one transaction; False when none is queued."""
    with conn.transaction():
        claimed = conn.execute(CLAIM).fetchone()
        if claimed is None:
            return False
        fid, org, until, holdout, selection = claimed
        try:
            with conn.transaction():  # a savepoint: what a failed fit did is undone
                done = fit(conn, org, until or datetime.now(UTC), holdout, selection)
        except Exception as e:
            if not dead_letters.poisoned(e):
                raise  # an outage: the fit stays queued and is tried again
            # The fit's own fault: it ends FAILED, and the fits queued behind it still run.
            log.exception("model fit failed", extra={"fit": str(fid)})
            done = {**_failed(until or datetime.now(UTC)), "error": "internal error"}
        conn.execute(FINISH, {**done, "id": fid})
    log.info("model fit", extra={"fit": str(fid), "state": done["state"]})
    return True


def fit_forever(database_url: str, max_age_hours: float, stop: threading.Event) -> None:
    """The segments process's model-fitting thread: runs queued fits, schedules the daily
    ones, and enrols organizations without a fit every ten minutes (a scan of the facts).
    It holds a connection only while it works: fits are rare, connections are not free."""
    enrolled = 0.0
    while not stop.is_set():
        try:
            with psycopg.connect(database_url, autocommit=True, row_factory=tuple_row) as conn:
                if time.monotonic() - enrolled > ENROL_SECONDS:
                    conn.execute(ENROL)
                    enrolled = time.monotonic()
                conn.execute(SCHEDULE, (max_age_hours * 3600,))
                while run_next(conn):
                    pass
            stop.wait(2.0)
        except Exception:
            log.exception("model fitting failed; retrying")
            stop.wait(5.0)
