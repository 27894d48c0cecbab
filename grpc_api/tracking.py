"""customers.v1.TrackingService: activity events through the REST tracking routes' writer
(write_api.tracking: validated, made durable by group commit, then answered)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domain.access import Permission
from domain.activity import BATCH, ONE
from domain.errors import invalid
from domain.values import unstorable_field
from grpc_api.backend import Backend
from grpc_api.calls import Call, rpc
from grpc_api.gen import customers_pb2 as pb
from grpc_api.messages import ID, to_json, validated
from service.limits import RouteClass
from write_api import tracking

SKIPPED = "analytics_tracking_off"  # the reason a behavioral event was not stored


class TrackingService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @rpc(Permission.TRACK, RouteClass.TRACKING)
    async def Track(self, request: pb.TrackRequest, call: Call) -> pb.TrackResponse:
        customer_id = validated(ID, request.customer_id, "customerId")
        raw = _storable(to_json(request).get("event", {}))
        event = validated(ONE, raw)
        if event.customer_id not in (None, customer_id):
            raise invalid("customerId", "differs from the customer in the path")
        event = event.model_copy(update={"customer_id": customer_id})
        result = await self._store(call, [event], batch=False)
        return pb.TrackResponse(
            event_id=result.ids[0] if result.ids else None,
            stored=not result.skipped,
            duplicate=result.duplicates > 0,
            reason=SKIPPED if result.skipped else None,
        )

    @rpc(Permission.TRACK, RouteClass.TRACKING)
    async def TrackBatch(self, request: pb.TrackBatchRequest, call: Call) -> pb.TrackBatchResponse:
        batch = validated(BATCH, _storable(to_json(request)))
        missing = [i for i, e in enumerate(batch.events) if e.customer_id is None]
        if missing:
            raise invalid(f"events.{missing[0]}.customerId", "required in a batch")
        result = await self._store(call, batch.events, batch=True)
        return pb.TrackBatchResponse(
            accepted=result.accepted,
            duplicates=result.duplicates,
            skipped=[
                pb.SkippedEvent(index=i, reason="analytics_tracking_off") for i in result.skipped
            ],
        )

    async def _store(self, call: Call, events: Sequence[Any], *, batch: bool) -> tracking.Result:
        backend = self.backend
        org = call.principal.org
        return await tracking.track(backend.activity, org, events, backend.settings, batch=batch)


def _storable(value: Any) -> Any:
    """Tracked events skip the per-field text check of the profile models (REST checks the
    raw body once instead): NUL characters are refused here, naming the field."""
    field = unstorable_field(value)
    if field is not None:
        raise invalid(field, "must not contain NUL characters or lone surrogates")
    return value
