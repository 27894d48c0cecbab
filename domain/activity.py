"""Tracked activity: the twelve event types with typed payloads, and which of them are
behavioral (stored only with the customer's analytics-tracking consent).

A tracked event is not a domain event of the Customer aggregate: it is a fact reported by
another system, validated here and appended to the activity log (write_api/tracking.py).
Device details are kept to what analytics needs (type, OS, browser, app version); user agents
and IP addresses are not accepted (data minimisation).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PlainSerializer,
    StringConstraints,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from domain.consent import Purpose
from domain.values import Choice, Currency, Instant, Model, ShortText

MAX_BATCH = 1000
# Clocks of producers drift; an event from further in the future is a bug, not a fact.
FUTURE_TOLERANCE = timedelta(minutes=5)

Url = Annotated[str, StringConstraints(max_length=2048)]
Amount = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=2),
    PlainSerializer(str, return_type=str, when_used="json"),
]


class EventType(Choice):
    PAGE_VIEW = "PAGE_VIEW"
    PURCHASE = "PURCHASE"
    LOGIN = "LOGIN"
    LOGOUT = "LOGOUT"
    EMAIL_OPEN = "EMAIL_OPEN"
    EMAIL_CLICK = "EMAIL_CLICK"
    SMS_RECEIVED = "SMS_RECEIVED"
    PUSH_RECEIVED = "PUSH_RECEIVED"
    SEGMENT_JOINED = "SEGMENT_JOINED"
    SEGMENT_LEFT = "SEGMENT_LEFT"
    PREFERENCE_CHANGED = "PREFERENCE_CHANGED"
    CONSENT_UPDATED = "CONSENT_UPDATED"


# Observations of behaviour need analytics-tracking consent. Purchases are records of a
# contract, and segment, preference and consent changes are records of the service itself:
# kept whatever the analytics setting.
BEHAVIORAL = frozenset(
    {
        EventType.PAGE_VIEW,
        EventType.LOGIN,
        EventType.LOGOUT,
        EventType.EMAIL_OPEN,
        EventType.EMAIL_CLICK,
        EventType.SMS_RECEIVED,
        EventType.PUSH_RECEIVED,
    }
)


class Fact(BaseModel):
    """Model's shape without its per-field storability check, which costs more than the rest
    of validating a tracked event: the input's text is checked once instead
    (`domain.values.storable_json`), by the HTTP routes and the NATS ingester alike."""

    model_config = Model.model_config

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class DeviceType(Choice):
    DESKTOP = "desktop"
    MOBILE = "mobile"
    TABLET = "tablet"
    TV = "tv"
    WEARABLE = "wearable"
    OTHER = "other"


class Device(Fact):
    type: DeviceType
    os: ShortText = ""
    browser: ShortText = ""
    app_version: ShortText = ""


class PageView(Fact):
    url: Url
    title: ShortText = ""
    referrer: Url = ""
    duration_seconds: Annotated[int, Field(ge=0, le=86_400)] | None = None


class Purchase(Fact):
    order_id: ShortText
    amount: Amount
    currency: Currency
    product: ShortText
    category: ShortText = ""
    channel: ShortText = ""


class Login(Fact):
    method: ShortText = ""


class Logout(Fact):
    pass


class Message(Fact):
    """An e-mail opened, an SMS or push notification received."""

    campaign_id: ShortText = ""
    message_id: ShortText = ""


class EmailClick(Message):
    url: Url


class SegmentChange(Fact):
    segment_id: UUID


class PreferenceChange(Fact):
    fields: list[ShortText] = Field(min_length=1, max_length=50)


class ConsentUpdate(Fact):
    consents: dict[Purpose, bool] = Field(min_length=1)


class _Event(Fact):
    event_id: UUID | None = Field(
        default=None, description="a UUID of the producer's choosing: retries with it count once"
    )
    customer_id: UUID | None = None  # in a batch; the path names it for a single event
    timestamp: Instant | None = None  # when it happened; default: when received
    session_id: UUID | None = None
    channel: ShortText = ""
    device: Device | None = None

    @field_validator("type", mode="before", check_fields=False)
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        # The union chose the class by the type in any case (_event_type); its Literal
        # takes the declared member. An unknown type is left to the field's own check, whose
        # message lists the allowed ones.
        try:
            return EventType(value)
        except ValueError:
            return value


class PageViewEvent(_Event):
    type: Literal[EventType.PAGE_VIEW]
    data: PageView


class PurchaseEvent(_Event):
    type: Literal[EventType.PURCHASE]
    data: Purchase


class LoginEvent(_Event):
    type: Literal[EventType.LOGIN]
    data: Login = Login()


class LogoutEvent(_Event):
    type: Literal[EventType.LOGOUT]
    data: Logout = Logout()


class EmailOpenEvent(_Event):
    type: Literal[EventType.EMAIL_OPEN]
    data: Message = Message()


class EmailClickEvent(_Event):
    type: Literal[EventType.EMAIL_CLICK]
    data: EmailClick


class SmsReceivedEvent(_Event):
    type: Literal[EventType.SMS_RECEIVED]
    data: Message = Message()


class PushReceivedEvent(_Event):
    type: Literal[EventType.PUSH_RECEIVED]
    data: Message = Message()


class SegmentJoinedEvent(_Event):
    type: Literal[EventType.SEGMENT_JOINED]
    data: SegmentChange


class SegmentLeftEvent(_Event):
    type: Literal[EventType.SEGMENT_LEFT]
    data: SegmentChange


class PreferenceChangedEvent(_Event):
    type: Literal[EventType.PREFERENCE_CHANGED]
    data: PreferenceChange


class ConsentUpdatedEvent(_Event):
    type: Literal[EventType.CONSENT_UPDATED]
    data: ConsentUpdate


UNTYPED = "untyped"  # the union tag of an event without a known type


class UntypedEvent(_Event):
    """What an event without a known `type` is validated as, so that the error is about
    `type` and lists the allowed values; it never validates (a known type picks its class)."""

    type: EventType
    data: Any = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("a tracked event is a JSON object")  # not "an UntypedEvent"
        return value


def _event_type(value: Any) -> str:
    """The union member a tracked event is, by its `type` in any case."""
    tag: Any = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    try:
        return EventType(tag).value
    except ValueError:
        return UNTYPED


TrackedEvent = Annotated[
    Annotated[PageViewEvent, Tag(EventType.PAGE_VIEW.value)]
    | Annotated[PurchaseEvent, Tag(EventType.PURCHASE.value)]
    | Annotated[LoginEvent, Tag(EventType.LOGIN.value)]
    | Annotated[LogoutEvent, Tag(EventType.LOGOUT.value)]
    | Annotated[EmailOpenEvent, Tag(EventType.EMAIL_OPEN.value)]
    | Annotated[EmailClickEvent, Tag(EventType.EMAIL_CLICK.value)]
    | Annotated[SmsReceivedEvent, Tag(EventType.SMS_RECEIVED.value)]
    | Annotated[PushReceivedEvent, Tag(EventType.PUSH_RECEIVED.value)]
    | Annotated[SegmentJoinedEvent, Tag(EventType.SEGMENT_JOINED.value)]
    | Annotated[SegmentLeftEvent, Tag(EventType.SEGMENT_LEFT.value)]
    | Annotated[PreferenceChangedEvent, Tag(EventType.PREFERENCE_CHANGED.value)]
    | Annotated[ConsentUpdatedEvent, Tag(EventType.CONSENT_UPDATED.value)]
    | Annotated[UntypedEvent, Tag(UNTYPED)],
    Discriminator(_event_type),
]


class Batch(Fact):
    events: list[TrackedEvent] = Field(min_length=1, max_length=MAX_BATCH)


ONE: TypeAdapter[Any] = TypeAdapter(TrackedEvent)
BATCH: TypeAdapter[Batch] = TypeAdapter(Batch)


def check_times(
    events: list[Any], now: datetime, retention_months: int = 0
) -> list[tuple[str, str]]:
    """(field, message) for events dated too far in the future, or before the first month
    the activity log keeps (`retention_months` whole months before this one; 0 = any)."""
    limit = now + FUTURE_TOLERANCE
    first = now.year * 12 + now.month - 1 - retention_months
    oldest = datetime(first // 12, first % 12 + 1, 1, tzinfo=UTC) if retention_months else None
    late = [
        (f"events.{i}.timestamp", "must not be in the future")
        for i, e in enumerate(events)
        if e.timestamp is not None and e.timestamp > limit
    ]
    early = [
        (f"events.{i}.timestamp", "older than the activity retention period")
        for i, e in enumerate(events)
        if oldest is not None and e.timestamp is not None and e.timestamp < oldest
    ]
    return late + early


def occurred(event: Any, received: datetime) -> datetime:
    return (event.timestamp or received).astimezone(UTC)
