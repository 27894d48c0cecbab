"""The organization's model fits: `GET /api/v1/customers/analytics/models[/{id}]`, with the
holdout validation as JSON or as an HTML page with the two classic charts (conditional
expectations by calibration frequency; cumulative repeat purchases over the holdout)."""

from __future__ import annotations

from html import escape
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response

from domain.errors import Code, DomainError
from projections import purchase_models
from read_api import paging
from read_api.consistency import READ_PROBLEMS
from service.auth import CanRead
from service.problems import problem_responses

router = APIRouter(prefix="/api/v1/customers/analytics/models", tags=["analytics"])
_ERRORS = {**problem_responses({404: "No such fit in the caller's organization"}), **READ_PROBLEMS}


@router.get("", responses={200: {"description": "{items: [fit, …]}, newest first"}})
async def list_fits(
    request: Request, principal: CanRead, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    async with paging.pool(request).connection() as conn:
        rows = await (await conn.execute(purchase_models.LIST, (principal.org, limit))).fetchall()
    return {"items": [m.public() for m in map(purchase_models.load, rows) if m is not None]}


@router.get(
    "/{fit_id}",
    response_model=None,
    responses={200: {"content": {"text/html": {}}, "description": "the fit"}, **_ERRORS},
)
async def get_fit(
    request: Request,
    principal: CanRead,
    fit_id: UUID,
    accept: Annotated[str | None, Header()] = None,
) -> dict[str, Any] | Response:
    """One fit; `Accept: text/html` renders its validation charts."""
    async with paging.pool(request).connection() as conn:
        row = await (await conn.execute(purchase_models.ONE, (fit_id, principal.org))).fetchone()
    model = purchase_models.load(row)
    if model is None:
        raise DomainError(Code.NOT_FOUND, f"model fit {fit_id} not found")
    if accept is not None and "text/html" in accept:
        return Response(page(model.public()), media_type="text/html; charset=utf-8")
    return model.public()


def page(fit: dict[str, Any]) -> str:
    validation = fit.get("validation")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Model fit {escape(fit['id'])}</title>",
        "<style>body{font:14px sans-serif;margin:2em}svg{background:#fafafa}"
        "td,th{padding:2px 8px;text-align:right}</style></head><body>",
        f"<h1>Model fit {escape(fit['id'])}</h1>",
        f"<p>State {escape(fit['state'])}; calibration end"
        f" {escape(str(fit['calibrationEnd']))}; {fit['customers']} customers,"
        f" {fit['repeatPurchases']} repeat purchases.</p>",
    ]
    if fit.get("bgnbd"):
        params = ", ".join(f"{k} = {v:.4g}" for k, v in fit["bgnbd"].items() if k in "r alpha a b")
        parts.append(f"<p>BG/NBD (per day): {escape(params)}</p>")
    if validation:
        groups = validation["byFrequency"]
        weeks = validation["cumulative"]
        parts += [
            f"<h2>Holdout to {escape(str(fit['holdoutEnd']))}</h2>",
            f"<p>Mean absolute error per customer: {validation['meanAbsoluteError']:.3f};"
            f" predicted {validation['totals']['predicted']:.1f},"
            f" actual {validation['totals']['actual']} repeat purchases.</p>",
            "<h3>Repeat purchases in the holdout, by calibration repeat purchases</h3>",
            chart(
                [g["repeatPurchases"] for g in groups],
                [g["predicted"] for g in groups],
                [g["actual"] for g in groups],
            ),
            "<h3>Cumulative repeat purchases, week by week</h3>",
            chart(
                [str(w["week"]) for w in weeks],
                [w["predicted"] for w in weeks],
                [float(w["actual"]) for w in weeks],
            ),
        ]
    elif fit.get("error"):
        parts.append(f"<p>{escape(fit['error'])}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def chart(labels: list[str], predicted: list[float], actual: list[float]) -> str:
    """Two polylines (predicted dashed, actual solid) over the labels, in inline SVG."""
    width, height, pad = 640, 260, 30
    top = max([*predicted, *actual, 1e-9])
    step = (width - 2 * pad) / max(len(labels) - 1, 1)

    def points(values: list[float]) -> str:
        return " ".join(
            f"{pad + i * step:.1f},{height - pad - (height - 2 * pad) * v / top:.1f}"
            for i, v in enumerate(values)
        )

    ticks = "".join(
        f"<text x='{pad + i * step:.1f}' y='{height - 8}' font-size='10'>{escape(label)}</text>"
        for i, label in enumerate(labels)
    )
    return (
        f"<svg width='{width}' height='{height}' role='img'>"
        f"<polyline fill='none' stroke='#d62728' stroke-dasharray='6 4' stroke-width='2'"
        f" points='{points(predicted)}'><title>predicted</title></polyline>"
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='2'"
        f" points='{points(actual)}'><title>actual</title></polyline>"
        f"<text x='{pad}' y='16' font-size='11'>max {top:.3g} — dashed: predicted,"
        f" solid: actual</text>{ticks}</svg>"
    )
