"""Value objects of the customer profile, validated once and stored in camelCase JSON shape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import available_timezones

import email_validator
import orjson
import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel


class Choice(StrEnum):
    """A closed set of values a client names in any case (`female`, `Female`), answered as
    declared; a value outside it is a 422 that lists the allowed ones."""

    @classmethod
    def _missing_(cls, value: object) -> Choice | None:
        if isinstance(value, str):
            folded = value.casefold()
            return next((m for m in cls if m.value.casefold() == folded), None)
        return None


class CustomerStatus(Choice):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUSPENDED = "SUSPENDED"
    DELETED = "DELETED"
    ANONYMIZED = "ANONYMIZED"  # read-only, holds nothing that identifies the person


class Gender(Choice):
    MALE = "MALE"
    FEMALE = "FEMALE"
    OTHER = "OTHER"
    UNKNOWN = "UNKNOWN"


_NUMBER = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _rfc3339(value: Any) -> Any:
    """Times are RFC 3339 text, as the contract says: pydantic's lax mode would also read a
    number as Unix seconds."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and _NUMBER.fullmatch(value.strip())
    ):
        raise ValueError("must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z")
    return value


# A point in time given by a client (query parameters, request bodies).
Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        str_strip_whitespace=True,
        frozen=True,
    )

    def dump(self) -> dict[str, Any]:
        """The stored/public JSON shape: camelCase, JSON-native values."""
        return self.model_dump(mode="json", by_alias=True)

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """Every text anywhere in the input, free-form maps included, must be storable:
        PostgreSQL text and jsonb cannot hold NUL, and lone surrogates are not UTF-8."""
        if not _storable(value):
            raise ValueError("must not contain NUL characters or lone surrogates")
        return value


# A \u escape of NUL or of a surrogate, with the backslashes before it (an even number of
# them is escaped backslashes followed by plain text).
_ESCAPE = re.compile(rb"(\\+)u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_LOW_SURROGATE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def storable_json(raw: bytes) -> bool:
    """The same rule as Model's, checked once on a JSON text instead of on every field (for
    high-volume input): no NUL, no lone surrogate. Raw control characters and invalid UTF-8
    are refused by the JSON parser itself, so only escapes need a look."""
    paired_low = -1
    for m in _ESCAPE.finditer(raw):
        if len(m.group(1)) % 2 == 0 or m.start(2) - 1 == paired_low:
            continue
        code = int(m.group(2), 16)
        if code == 0 or code >= 0xDC00:  # NUL, or a low surrogate without its high one
            return False
        if not _LOW_SURROGATE.match(raw, m.end()):
            return False
        paired_low = m.end() + 1  # where the pair's low half's "u" is
    return True


def unstorable_field(value: Any) -> str | None:
    """The dotted path of the first text `_storable` refuses in parsed JSON, else None (the
    slow path that names the field once `storable_json` has said no)."""
    for where, text in _texts(value):
        if not _storable_text(text):
            return _dotted(where) or "body"
    return None


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return _storable_text(value)
    return all(_storable_text(text) for _, text in _texts(value))


def _storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _texts(value: Any) -> Iterator[tuple[Any, str]]:
    """Every text in `value`, keys included, in document order, with where it is: a chain
    (parent, key), unrolled only when needed. A loop, not recursion: input may nest deeper
    than Python's stack allows (a RecursionError would be a 500)."""
    stack: list[tuple[Any, Any]] = [((), value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                stack.append(((where, key), child))
                stack.append(((where, key), key))
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(((where, i), child) for i, child in reversed(list(enumerate(item))))


def _dotted(where: Any) -> str:
    parts: list[str] = []
    while where:
        where, key = where
        parts.append(str(key))
    return ".".join(reversed(parts))


# Free-form maps (customPreferences) are bounded, well within what everything downstream that
# serialises them can take (events, read models, exports; orjson refuses beyond 255 levels).
FREE_FORM_DEPTH = 16
FREE_FORM_BYTES = 16 * 1024


def _free_form(value: dict[str, Any]) -> dict[str, Any]:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > FREE_FORM_DEPTH:
            raise ValueError(f"must not be nested more than {FREE_FORM_DEPTH} levels deep")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # text with lone surrogates, an integer beyond 64 bits
        raise ValueError(
            "must hold only storable JSON (text without NUL or lone surrogates,"
            " integers within 64 bits)"
        ) from None
    if size > FREE_FORM_BYTES:
        raise ValueError(f"must not be larger than {FREE_FORM_BYTES} bytes as JSON")
    return value


# A JSON object the client shapes freely, up to 50 keys.
FreeForm = Annotated[dict[str, Any], Field(max_length=50), AfterValidator(_free_form)]


# The plain ASCII addresses email_validator accepts with nothing to normalize but case:
# a dot-atom before the @ (RFC 5322 atext), after it two or more host-name labels of at most
# 63 characters, the last ending in a letter (all top-level domains do). An address of this
# shape that could still be refused goes the whole way instead: one over 254 characters, one
# with `--` after the @ (IDNA's rules for `xn--` and other `??--` labels), one under a
# special-use domain (`.local`, `.test`, …). tests/property/test_email_fast_path.py holds
# both paths to the same answers.
_EMAIL_MAX = 254
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PLAIN_EMAIL = re.compile(
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z0-9][A-Za-z0-9-]{0,61})?[A-Za-z]"
)
_SPECIAL_USE = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)


def plain_email(value: str) -> str | None:
    """`value` lower-cased when it is a plain ASCII address (above); None: ask the whole way."""
    if len(value) > _EMAIL_MAX or _PLAIN_EMAIL.fullmatch(value) is None:
        return None
    domain = value[value.index("@") + 1 :].lower()
    if "--" in domain or any(domain == d or domain.endswith("." + d) for d in _SPECIAL_USE):
        return None
    return value.lower()


def checked_email(value: str) -> str:
    """The whole way: email_validator's syntax checks (no DNS), lower-cased."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(f"not a valid e-mail address: {e}") from None
    return result.normalized.lower()


def normalize_email(value: str) -> str:
    """Case-insensitive identity: the whole address is lower-cased after syntax checks,
    without the cost of the general path when the address is plain ASCII (an import checks
    one per row)."""
    return plain_email(value) or checked_email(value)


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not a valid IANA time zone (e.g. Europe/Madrid)")
    return value


def check_currency(value: str) -> str:
    code = value.upper()
    if pycountry.currencies.get(alpha_3=code) is None:
        raise ValueError("not an ISO 4217 currency code")
    return code


_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def check_language(value: str) -> str:
    if not _LANGUAGE.match(value):
        raise ValueError("not a BCP 47 language tag (e.g. es, en-GB)")
    return value


def lookup_country(value: str) -> tuple[str, str]:
    """ISO 3166 code or English name → (alpha-2 code, English name)."""
    try:
        country = pycountry.countries.lookup(value.strip())
    except LookupError:
        raise ValueError("not a known country (ISO 3166 code or English name)") from None
    return str(country.alpha_2), str(country.name)


Email = Annotated[str, StringConstraints(max_length=_EMAIL_MAX), AfterValidator(normalize_email)]
Timezone = Annotated[str, AfterValidator(check_timezone)]
Currency = Annotated[str, AfterValidator(check_currency)]
Language = Annotated[str, AfterValidator(check_language)]
ShortText = Annotated[str, StringConstraints(max_length=255)]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w.:\-]+$")]


class Location(Model):
    country: ShortText
    country_code: Annotated[str, StringConstraints(max_length=2)] | None = None
    city: ShortText = ""
    region: ShortText = ""
    postal_code: Annotated[str, StringConstraints(max_length=20)] | None = None
    timezone: Timezone | None = None
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None

    @model_validator(mode="after")
    def _normalize_country(self) -> Location:
        code, name = lookup_country(self.country)
        if self.country_code is not None and self.country_code.upper() != code:
            raise ValueError(f"countryCode does not match country {name!r}")
        object.__setattr__(self, "country", name)
        object.__setattr__(self, "country_code", code)
        return self


class NotificationSettings(Model):
    email_notifications: bool = False
    sms_notifications: bool = False
    push_notifications: bool = False
    marketing_emails: bool = False
    system_alerts: bool = True


class PrivacySettings(Model):
    data_sharing: bool = False
    analytics_tracking: bool = False
    personalization: bool = False
    third_party_sharing: bool = False


class Preferences(Model):
    language: Language = "en"
    currency: Currency = "EUR"
    timezone: Timezone | None = None
    notification_settings: NotificationSettings = NotificationSettings()
    privacy_settings: PrivacySettings = PrivacySettings()
    # Required without default: the spec wants both consents given explicitly.
    marketing_consent: bool
    data_processing_consent: bool
    custom_preferences: FreeForm = Field(default_factory=dict)


class Money(Model):
    # JSON numbers as in the spec's examples; Decimal keeps input exact until then.
    amount: Annotated[
        Decimal,
        Field(ge=0, max_digits=14, decimal_places=2),
        PlainSerializer(float, return_type=float, when_used="json"),
    ]
    currency: Currency


class PurchaseRecord(Model):
    id: ShortText
    amount: Money
    product: ShortText
    category: ShortText = ""
    purchase_date: AwareDatetime
    channel: ShortText = ""


class InteractionRecord(Model):
    id: ShortText
    type: ShortText
    channel: ShortText = ""
    action: ShortText = ""
    timestamp: AwareDatetime
    duration: Annotated[int, Field(ge=0)] | None = None
    outcome: ShortText = ""


class DeviceInfo(Model):
    type: ShortText
    os: ShortText = ""
    browser: ShortText = ""
    user_agent: Annotated[str, StringConstraints(max_length=1024)] = ""
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    is_active: bool = True


class Metadata(Model):
    source: ShortText = "api"
    acquisition_date: AwareDatetime | None = None
    lifetime_value: Money | None = None
    purchase_history: list[PurchaseRecord] = Field(default_factory=list, max_length=1000)
    interaction_history: list[InteractionRecord] = Field(default_factory=list, max_length=1000)
    device_info: list[DeviceInfo] = Field(default_factory=list, max_length=100)
    referral_source: ShortText | None = None
    last_login: AwareDatetime | None = None
    login_count: Annotated[int, Field(ge=0)] = 0


class Profile(Model):
    """Everything a client may set on a customer (create and full update share it)."""

    email: Email
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    age: Annotated[int, Field(ge=0, le=150)] | None = None
    gender: Gender | None = None
    location: Location | None = None
    preferences: Preferences
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    metadata: Metadata = Metadata()

    @model_validator(mode="after")
    def _dedupe_tags(self) -> Profile:
        object.__setattr__(self, "tags", sorted(set(self.tags)))
        return self


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: `patch`'s members replace `target`'s, objects merge member
    by member, null removes a member, anything but an object replaces the whole."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class CustomerPublic(Model):
    """The customer as every API answer shows it (documentation of `representation()`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    id: str
    email: str
    name: str
    age: int | None
    gender: Gender | None
    location: Location | None
    preferences: Preferences
    segments: list[str]
    tags: list[str]
    status: CustomerStatus
    created_at: str
    updated_at: str
    last_activity: str
    metadata: Metadata
    pending_email: str | None
    active_orders: int
    version: int
