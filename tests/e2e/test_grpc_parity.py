"""The gRPC API against the REST API: the same scenario through both transports gives the same
customers, segments, members, analytics, masking and errors (the gRPC server runs in-process
on a free port beside the REST gateway, projector and segment engine)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, json_format, struct_pb2
from google.protobuf.message import Message

from grpc_api.calls import CONSISTENCY_TOKEN, ERROR_FIELD
from grpc_api.gen import customers_pb2 as pb
from grpc_api.gen import customers_pb2_grpc as rpc
from grpc_api.server import GrpcServer
from service.settings import Settings
from tests.e2e.conftest import TokenFactory, new_customer
from tests.e2e.test_membership_api import CUSTOMERS, SPAIN_30_TO_40, wait_job
from tests.e2e.test_segments_api import DERIVED, SEGMENTS, segment
from tests.e2e.test_tracking_api import page_view, purchase


def serve_grpc(settings: Settings) -> Iterator[int]:
    """A GrpcServer on a free port, its event loop in a thread; yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = GrpcServer(settings, "127.0.0.1", 0)
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def grpc_port(migrated: Settings, service_url: str) -> Iterator[int]:
    yield from serve_grpc(migrated)


@pytest.fixture
def channel(grpc_port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        yield ch


def metadata(headers: dict[str, str], token: str | None = None) -> tuple[tuple[str, str], ...]:
    """REST headers (from the `auth` fixture) as call metadata."""
    found = [(k.lower(), v) for k, v in headers.items()]
    if token is not None:
        found.append((CONSISTENCY_TOKEN, token))
    return tuple(found)


def token_of(call: grpc.Call) -> str:
    return dict(call.initial_metadata())[CONSISTENCY_TOKEN]


def as_json(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    return found


def comparable(value: Any) -> Any:
    """JSON compared by meaning: nulls and absent fields alike, times as instants (REST
    writes microseconds, Timestamp's JSON the fewest digits), 25.0 == 25."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[4:5] == "-" and "T" in value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value


def same(rest: Any, grpc_answer: Message | dict[str, Any], *ignored: str) -> None:
    answer = as_json(grpc_answer) if isinstance(grpc_answer, Message) else grpc_answer
    left, right = comparable(rest), comparable(answer)
    for key in ignored:
        left.pop(key, None)
        right.pop(key, None)
    assert left == right


def profile(body: dict[str, Any]) -> pb.Profile:
    return json_format.ParseDict(body, pb.Profile())


def rpc_error(call: Any, request: Message, md: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=md)
    error: grpc.RpcError = caught.value
    return error


def error_fields(error: grpc.RpcError) -> list[str]:
    return [v for k, v in error.trailing_metadata() or () if k == ERROR_FIELD]


# --------------------------------------------------------------------------- customers


def test_customer_lifecycle_matches_rest(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    h = auth()
    stub = rpc.CustomerServiceStub(channel)
    body = new_customer(
        preferences={
            **new_customer()["preferences"],
            "customPreferences": {"shoeSize": 43, "colours": ["red", "blue"], "vegan": True},
        },
        metadata={
            "source": "website",
            "acquisitionDate": "2024-01-15T10:30:00+01:00",
            "lifetimeValue": {"amount": 1250.5, "currency": "EUR"},
            "purchaseHistory": [
                {
                    "id": "p-1",
                    "amount": {"amount": 150.0, "currency": "EUR"},
                    "product": "Premium Subscription",
                    "purchaseDate": "2024-05-15T14:30:00Z",
                }
            ],
            "loginCount": 3,
        },
    )
    by_rest = http.post(CUSTOMERS, json=body, headers=h)
    assert by_rest.status_code == 201, by_rest.text
    twin = {**body, "email": f"twin.{uuid.uuid4().hex[:8]}@example.com"}
    by_grpc, call = stub.CreateCustomer.with_call(
        pb.CreateCustomerRequest(customer=profile(twin)), metadata=metadata(h)
    )
    token = token_of(call)
    assert int(token) > 0
    # The same body gives the same customer, whichever transport creates it.
    own = ("id", "email", "createdAt", "updatedAt", "lastActivity")
    same(by_rest.json(), by_grpc, *own)
    assert as_json(by_grpc)["preferences"]["customPreferences"]["shoeSize"] == 43

    # Either transport reads what either wrote.
    rest_id, grpc_id = by_rest.json()["id"], by_grpc.id
    for cid, write_token in ((rest_id, by_rest.headers["X-Consistency-Token"]), (grpc_id, token)):
        rest = http.get(f"{CUSTOMERS}/{cid}", headers={**h, "X-Consistency-Token": write_token})
        answer = stub.GetCustomer(pb.GetCustomerRequest(id=cid), metadata=metadata(h, write_token))
        same(rest.json(), answer)
        assert rest.headers["ETag"] == f'"{answer.version}"'

    # Listing: same pages, and the cursors work across transports.
    query = {"limit": 1, "sort": "email", "tags": ["vip"], "country": "ES"}
    rest_page = http.get(CUSTOMERS, params=query, headers=h).json()
    request = pb.ListCustomersRequest(limit=1, sort="email", tags=["vip"], country="ES")
    grpc_page = stub.ListCustomers(request, metadata=metadata(h))
    same(rest_page["items"], [as_json(c) for c in grpc_page.items])
    assert grpc_page.limit == 1 and rest_page["nextCursor"]
    second = stub.ListCustomers(
        pb.ListCustomersRequest(limit=1, sort="email", cursor=rest_page["nextCursor"]),
        metadata=metadata(h),
    )
    assert {second.items[0].id, grpc_page.items[0].id} == {rest_id, grpc_id}
    assert not second.HasField("next_cursor")

    # An exact e-mail finds one customer on both transports (any case).
    email = as_json(by_grpc)["email"].upper()
    by_email = http.get(CUSTOMERS, params={"email": email}, headers=h).json()["items"]
    grpc_by_email = stub.ListCustomers(pb.ListCustomersRequest(email=email), metadata=metadata(h))
    assert [c["id"] for c in by_email] == [grpc_id]
    same(by_email, [as_json(c) for c in grpc_by_email.items])

    # Update with the expected version; a stale one fails on both transports alike.
    changed = profile({**twin, "name": "Rename", "tags": ["gold"]})
    updated, call = stub.UpdateCustomer.with_call(
        pb.UpdateCustomerRequest(
            id=grpc_id, customer=changed, status="INACTIVE", expected_version=by_grpc.version
        ),
        metadata=metadata(h),
    )
    assert (updated.name, updated.status, list(updated.tags)) == ("Rename", "INACTIVE", ["gold"])
    rest = http.get(
        f"{CUSTOMERS}/{grpc_id}", headers={**h, "X-Consistency-Token": token_of(call)}
    ).json()
    same(rest, updated, "updatedAt", "lastActivity")
    stale = pb.UpdateCustomerRequest(id=grpc_id, customer=changed, expected_version=1)
    error = rpc_error(stub.UpdateCustomer, stale, metadata(h))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    put = http.put(
        f"{CUSTOMERS}/{grpc_id}", json={**twin, "name": "Rename"}, headers={**h, "If-Match": '"1"'}
    )
    assert put.status_code == 412

    # Delete.
    deleted, call = stub.DeleteCustomer.with_call(
        pb.DeleteCustomerRequest(id=grpc_id, expected_version=updated.version),
        metadata=metadata(h),
    )
    assert deleted.version == updated.version + 1
    rest = http.get(
        f"{CUSTOMERS}/{grpc_id}", headers={**h, "X-Consistency-Token": token_of(call)}
    ).json()
    assert rest["status"] == "DELETED" and rest["version"] == deleted.version
    again = rpc_error(stub.DeleteCustomer, pb.DeleteCustomerRequest(id=grpc_id), metadata(h))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION  # REST: 409
    assert http.delete(f"{CUSTOMERS}/{grpc_id}", headers=h).status_code == 409

    # Restore within the grace period, on either transport; restoring twice is a conflict.
    restored, call = stub.RestoreCustomer.with_call(
        pb.RestoreCustomerRequest(id=grpc_id, expected_version=deleted.version),
        metadata=metadata(h),
    )
    assert (restored.status, restored.version) == ("INACTIVE", deleted.version + 1)
    rest = http.get(
        f"{CUSTOMERS}/{grpc_id}", headers={**h, "X-Consistency-Token": token_of(call)}
    ).json()
    same(rest, restored, "updatedAt", "lastActivity")
    again = rpc_error(stub.RestoreCustomer, pb.RestoreCustomerRequest(id=grpc_id), metadata(h))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert http.post(f"{CUSTOMERS}/{grpc_id}/restore", headers=h).status_code == 409


def test_masking_by_role_is_the_same(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    h, analyst = auth(), auth("analyst")
    device = {
        "type": "mobile",
        "os": "iOS",
        "firstSeen": "2026-01-01T00:00:00Z",
        "lastSeen": "2026-01-02T00:00:00Z",
        "userAgent": "Secret/1.0",
    }
    body = new_customer(metadata={"source": "web", "deviceInfo": [device]})
    created = http.post(CUSTOMERS, json=body, headers=h)
    cid, token = created.json()["id"], created.headers["X-Consistency-Token"]
    stub = rpc.CustomerServiceStub(channel)
    masked = stub.GetCustomer(pb.GetCustomerRequest(id=cid), metadata=metadata(analyst, token))
    rest = http.get(f"{CUSTOMERS}/{cid}", headers=analyst).json()
    same(rest, masked)
    assert (masked.email, masked.name) == ("***", "***")
    assert as_json(masked.location) == {"country": "Spain", "countryCode": "ES"}
    assert not masked.metadata.device_info
    listed = stub.ListCustomers(pb.ListCustomersRequest(), metadata=metadata(analyst))
    same(http.get(CUSTOMERS, headers=analyst).json()["items"], [as_json(c) for c in listed.items])
    assert body["email"] not in str(listed) and "Secret/1.0" not in str(listed)
    full = stub.GetCustomer(pb.GetCustomerRequest(id=cid), metadata=metadata(auth("manager")))
    assert full.email == body["email"] and full.metadata.device_info[0].user_agent == "Secret/1.0"


def test_masked_fields_steer_no_listing_on_either_transport(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    analyst, manager = auth("analyst"), auth("manager")
    body = new_customer()
    created = http.post(CUSTOMERS, json=body, headers=auth())
    token = created.headers["X-Consistency-Token"]
    stub = rpc.CustomerServiceStub(channel)
    # The e-mail prefix probe, a sort on a masked field, a filter on the city.
    for request, query, field in (
        (pb.ListCustomersRequest(limit=1, q=body["email"][0]), {"q": body["email"][0]}, "q"),
        (pb.ListCustomersRequest(limit=1, sort="email"), {"sort": "email"}, "sort"),
        (pb.ListCustomersRequest(limit=1, sort="-name"), {"sort": "-name"}, "sort"),
        (pb.ListCustomersRequest(limit=1, city="Madrid"), {"city": "Madrid"}, "city"),
        (pb.ListCustomersRequest(limit=1, email=body["email"]), {"email": body["email"]}, "email"),
    ):
        error = rpc_error(stub.ListCustomers, request, metadata(analyst, token))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, field
        assert error_fields(error) == [field]
        rest = http.get(CUSTOMERS, params={"limit": 1, **query}, headers=analyst)
        assert rest.status_code == 403 and [e["field"] for e in rest.json()["errors"]] == [field]
        assert body["email"] not in error.details()

        page = stub.ListCustomers(request, metadata=metadata(manager, token))
        assert [c.email for c in page.items] == [body["email"]]
        same(http.get(CUSTOMERS, params={"limit": 1, **query}, headers=manager).json(), page)
    shown = stub.ListCustomers(
        pb.ListCustomersRequest(country="ES", sort="-createdAt"), metadata=metadata(analyst, token)
    )
    assert [c.id for c in shown.items] == [created.json()["id"]] and shown.items[0].email == "***"


# --------------------------------------------------------------------------- segments


def test_segments_and_members_match_rest(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    h, analyst = auth(), auth("analyst")
    for age in (33, 36, 50):
        response = http.post(CUSTOMERS, json=new_customer(age=age), headers=h)
        assert response.status_code == 201
    stub = rpc.SegmentServiceStub(channel)
    criteria = struct_pb2.Struct()
    criteria.update(SPAIN_30_TO_40)
    definition = pb.SegmentDefinition(name="Spain 30-40", rule_id="rule-1", criteria=criteria)
    created, call = stub.CreateSegment.with_call(
        pb.CreateSegmentRequest(segment=definition), metadata=metadata(h)
    )
    assert created.status == "CALCULATING" and created.kind == "DYNAMIC"
    rest = http.get(
        f"{SEGMENTS}/{created.id}", headers={**h, "X-Consistency-Token": token_of(call)}
    )
    assert rest.status_code == 200
    got = stub.GetSegment(pb.GetSegmentRequest(segment_id=created.id), metadata=metadata(h))
    same(rest.json(), got, *DERIVED)  # the calculation may finish in between
    assert as_json(got)["criteria"]["demographics"]["ageRange"] == {"min": 30, "max": 40}

    job = stub.CalculateSegment(
        pb.CalculateSegmentRequest(segment_id=created.id), metadata=metadata(h)
    )
    assert job.state in {"QUEUED", "RUNNING", "SUCCEEDED"} and job.segment_id == created.id
    done = wait_job(http, h, f"{SEGMENTS}/{created.id}/jobs/{job.id}")
    assert done["state"] == "SUCCEEDED" and done["memberCount"] == 2

    for headers in (h, analyst):
        rest_page = http.get(f"{SEGMENTS}/{created.id}/customers", headers=headers).json()
        page = stub.ListSegmentMembers(
            pb.ListSegmentMembersRequest(segment_id=created.id), metadata=metadata(headers)
        )
        same(rest_page, page)
        assert len(page.items) == 2
    assert {m.customer.email for m in page.items} == {"***"}

    rest_list = http.get(SEGMENTS, headers=h).json()
    same(rest_list, stub.ListSegments(pb.ListSegmentsRequest(), metadata=metadata(h)))
    again = rpc_error(stub.CreateSegment, pb.CreateSegmentRequest(segment=definition), metadata(h))
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS and error_fields(again) == ["name"]
    assert http.post(SEGMENTS, json=segment(name="spain  30-40"), headers=h).status_code == 409


# --------------------------------------------------------------------------- tracking


def test_tracking_and_analytics_match_rest(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    h, analyst = auth(), auth("analyst")
    created = http.post(CUSTOMERS, json=new_customer(), headers=h)
    cid, token = created.json()["id"], created.headers["X-Consistency-Token"]
    tracking = rpc.TrackingServiceStub(channel)

    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    once = {"eventId": str(uuid.uuid4()), "timestamp": yesterday}
    event = json_format.ParseDict(purchase(80.0, **once), pb.TrackedEvent())
    stored = tracking.Track(pb.TrackRequest(customer_id=cid, event=event), metadata=metadata(h))
    assert stored.stored and not stored.duplicate and stored.event_id == once["eventId"]
    again = tracking.Track(pb.TrackRequest(customer_id=cid, event=event), metadata=metadata(h))
    assert again.stored and again.duplicate  # a retry is counted once
    rest = http.post(f"{CUSTOMERS}/{cid}/track", json=purchase(20.0), headers=h)
    assert rest.status_code == 202

    views = [json_format.ParseDict({**page_view(), "customerId": cid}, pb.TrackedEvent())] * 2
    batch = tracking.TrackBatch(pb.TrackBatchRequest(events=views), metadata=metadata(h))
    assert (batch.accepted, batch.duplicates, list(batch.skipped)) == (2, 0, [])

    analytics = rpc.AnalyticsServiceStub(channel)
    for headers in (h, analyst):
        rest_metrics = http.get(f"{CUSTOMERS}/{cid}/analytics", headers=headers).json()
        metrics = analytics.GetAnalytics(
            pb.GetAnalyticsRequest(id=cid), metadata=metadata(headers, token)
        )
        same(rest_metrics, metrics)
    assert metrics.order_count == 2 and metrics.lifetime_value.amount == 100.0
    assert metrics.engagement.by_type["PAGE_VIEW"] == 2
    assert [d.type for d in metrics.devices] == ["mobile"] and not metrics.devices[0].os
    rest_insights = http.get(f"{CUSTOMERS}/{cid}/insights", headers=h).json()
    insights = analytics.GetInsights(pb.GetInsightsRequest(id=cid), metadata=metadata(h))
    same(rest_insights, insights, "asOf")

    batch_url = f"{CUSTOMERS}/track/batch"
    negative = {**purchase(-1.0), "customerId": cid}
    rest = http.post(batch_url, json={"events": [page_view(customerId=cid), negative]}, headers=h)
    assert rest.status_code == 422
    events = [views[0], json_format.ParseDict(negative, pb.TrackedEvent())]
    error = rpc_error(tracking.TrackBatch, pb.TrackBatchRequest(events=events), metadata(h))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(error) == [e["field"] for e in rest.json()["errors"]]
    assert error_fields(error) == ["events.1.data.amount"]
    stranger = json_format.ParseDict(
        {**purchase(), "customerId": str(uuid.uuid4())}, pb.TrackedEvent()
    )
    error = rpc_error(tracking.TrackBatch, pb.TrackBatchRequest(events=[stranger]), metadata(h))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # REST: 404 naming the same field
    assert error_fields(error) == ["events.0.customerId"]
    nul = json_format.ParseDict(
        {"type": "PAGE_VIEW", "data": {"url": "u", "title": "a\x00b"}}, pb.TrackedEvent()
    )
    error = rpc_error(tracking.Track, pb.TrackRequest(customer_id=cid, event=nul), metadata(h))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(error) == ["data.title"]

    forbidden = rpc_error(
        tracking.Track, pb.TrackRequest(customer_id=cid, event=event), metadata(analyst)
    )
    assert forbidden.code() == grpc.StatusCode.PERMISSION_DENIED


# --------------------------------------------------------------------------- errors


def test_errors_map_to_the_same_statuses(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    h = auth()
    stub = rpc.CustomerServiceStub(channel)

    bad = new_customer(email="not-an-email", location={"country": "Spain", "timezone": "Mars/X"})
    rest = http.post(CUSTOMERS, json=bad, headers=h)
    assert rest.status_code == 422
    error = rpc_error(
        stub.CreateCustomer, pb.CreateCustomerRequest(customer=profile(bad)), metadata(h)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(error) == [e["field"] for e in rest.json()["errors"]]
    assert set(error_fields(error)) == {"email", "location.timezone"}
    assert "email" in error.details() and "not-an-email" not in error.details()

    unstated = new_customer()
    del unstated["preferences"]["marketingConsent"]
    error = rpc_error(
        stub.CreateCustomer, pb.CreateCustomerRequest(customer=profile(unstated)), metadata(h)
    )
    assert error_fields(error) == ["preferences.marketingConsent"]

    for request, field in (
        (pb.ListCustomersRequest(limit=0), "limit"),
        (pb.ListCustomersRequest(age_min=-1), "ageMin"),
        (pb.ListCustomersRequest(sort="shoeSize"), "sort"),
        (pb.ListCustomersRequest(country="Atlantis"), "country"),
        (pb.ListCustomersRequest(cursor="forged"), "cursor"),
    ):
        error = rpc_error(stub.ListCustomers, request, metadata(h))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error_fields(error) == [field]
    error = rpc_error(stub.GetCustomer, pb.GetCustomerRequest(id="42"), metadata(h))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_fields(error) == ["id"]

    missing = rpc_error(stub.GetCustomer, pb.GetCustomerRequest(id=str(uuid.uuid4())), metadata(h))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert http.get(f"{CUSTOMERS}/{uuid.uuid4()}", headers=h).status_code == 404

    anonymous = rpc_error(stub.ListCustomers, pb.ListCustomersRequest(), ())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    assert http.get(CUSTOMERS).status_code == 401
    forged = rpc_error(
        stub.ListCustomers, pb.ListCustomersRequest(), (("authorization", "Bearer x.y.z"),)
    )
    assert forged.code() == grpc.StatusCode.UNAUTHENTICATED

    analyst = auth("analyst")
    good = pb.CreateCustomerRequest(customer=profile(new_customer()))
    denied = rpc_error(stub.CreateCustomer, good, metadata(analyst))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert http.post(CUSTOMERS, json=new_customer(), headers=analyst).status_code == 403

    first = stub.CreateCustomer(good, metadata=metadata(h))
    taken = rpc_error(stub.CreateCustomer, good, metadata(h))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS and error_fields(taken) == ["email"]
    assert first.email not in taken.details()

    # Bytes that are not a request message: INVALID_ARGUMENT, not grpcio's INTERNAL.
    raw = channel.unary_unary("/customers.v1.CustomerService/GetCustomer")
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff", metadata=metadata(h))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:  # invalid UTF-8 in a string field
        raw(b"\x0a\x01\xff", metadata=metadata(h))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Larger than CUSTOMERS_MAX_BODY_BYTES: refused before it is read (REST: 413).
    huge = pb.CreateCustomerRequest(customer=profile(new_customer(name="x" * 1_100_000)))
    too_large = rpc_error(stub.CreateCustomer, huge, metadata(h))
    assert too_large.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_idempotency_key_replays_the_first_answer(
    auth: TokenFactory, channel: grpc.Channel
) -> None:
    h = auth()
    stub = rpc.CustomerServiceStub(channel)
    request = pb.CreateCustomerRequest(customer=profile(new_customer()), idempotency_key="k-1")
    first, call = stub.CreateCustomer.with_call(request, metadata=metadata(h))
    again, call2 = stub.CreateCustomer.with_call(request, metadata=metadata(h))
    assert again == first and token_of(call2) == token_of(call)
    other = pb.CreateCustomerRequest(customer=profile(new_customer()), idempotency_key="k-1")
    error = rpc_error(stub.CreateCustomer, other, metadata(h))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(error) == ["Idempotency-Key"]
    # A protobuf string may hold what an HTTP header cannot; the key is stored as text.
    for unstorable in ("k\x00", "k\x1b", "k" * 256, ""):
        request = pb.CreateCustomerRequest(
            customer=profile(new_customer()), idempotency_key=unstorable
        )
        error = rpc_error(stub.CreateCustomer, request, metadata(h))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(unstorable)
        assert error_fields(error) == ["Idempotency-Key"]


def test_an_api_key_works_as_bearer_or_x_api_key(
    http: httpx.Client, auth: TokenFactory, channel: grpc.Channel
) -> None:
    made = http.post("/api/v1/api-keys", json={"name": "crm", "roles": ["analyst"]}, headers=auth())
    key = made.json()["key"]
    stub = rpc.CustomerServiceStub(channel)
    for md in ((("authorization", f"Bearer {key}"),), (("x-api-key", key),)):
        page = stub.ListCustomers(pb.ListCustomersRequest(), metadata=md)
        assert page.limit == 50
    denied = rpc_error(stub.CreateCustomer, pb.CreateCustomerRequest(), (("x-api-key", key),))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    revoked = rpc_error(
        stub.ListCustomers, pb.ListCustomersRequest(), (("x-api-key", "cmk_unknown"),)
    )
    assert revoked.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- operations


def test_health_and_reflection(channel: grpc.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "customers.v1.CustomerService", "customers.v1.TrackingService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    reflected = ProtoReflectionDescriptorDatabase(channel)
    assert {
        "customers.v1.CustomerService",
        "customers.v1.SegmentService",
        "customers.v1.TrackingService",
        "customers.v1.AnalyticsService",
        "grpc.health.v1.Health",
    } <= set(reflected.get_services())
    pool = descriptor_pool.DescriptorPool(reflected)
    methods = {m.name for m in pool.FindServiceByName("customers.v1.CustomerService").methods}
    assert methods == {
        "GetCustomer",
        "ListCustomers",
        "CreateCustomer",
        "UpdateCustomer",
        "DeleteCustomer",
        "RestoreCustomer",
    }
