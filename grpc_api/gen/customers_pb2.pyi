import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Location(_message.Message):
    __slots__ = ("country", "country_code", "city", "region", "postal_code", "timezone", "latitude", "longitude")
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    POSTAL_CODE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    country: str
    country_code: str
    city: str
    region: str
    postal_code: str
    timezone: str
    latitude: float
    longitude: float
    def __init__(self, country: _Optional[str] = ..., country_code: _Optional[str] = ..., city: _Optional[str] = ..., region: _Optional[str] = ..., postal_code: _Optional[str] = ..., timezone: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class NotificationSettings(_message.Message):
    __slots__ = ("email_notifications", "sms_notifications", "push_notifications", "marketing_emails", "system_alerts")
    EMAIL_NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    SMS_NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    PUSH_NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    MARKETING_EMAILS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_ALERTS_FIELD_NUMBER: _ClassVar[int]
    email_notifications: bool
    sms_notifications: bool
    push_notifications: bool
    marketing_emails: bool
    system_alerts: bool
    def __init__(self, email_notifications: _Optional[bool] = ..., sms_notifications: _Optional[bool] = ..., push_notifications: _Optional[bool] = ..., marketing_emails: _Optional[bool] = ..., system_alerts: _Optional[bool] = ...) -> None: ...

class PrivacySettings(_message.Message):
    __slots__ = ("data_sharing", "analytics_tracking", "personalization", "third_party_sharing")
    DATA_SHARING_FIELD_NUMBER: _ClassVar[int]
    ANALYTICS_TRACKING_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZATION_FIELD_NUMBER: _ClassVar[int]
    THIRD_PARTY_SHARING_FIELD_NUMBER: _ClassVar[int]
    data_sharing: bool
    analytics_tracking: bool
    personalization: bool
    third_party_sharing: bool
    def __init__(self, data_sharing: _Optional[bool] = ..., analytics_tracking: _Optional[bool] = ..., personalization: _Optional[bool] = ..., third_party_sharing: _Optional[bool] = ...) -> None: ...

class Preferences(_message.Message):
    __slots__ = ("language", "currency", "timezone", "notification_settings", "privacy_settings", "marketing_consent", "data_processing_consent", "custom_preferences")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MARKETING_CONSENT_FIELD_NUMBER: _ClassVar[int]
    DATA_PROCESSING_CONSENT_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    language: str
    currency: str
    timezone: str
    notification_settings: NotificationSettings
    privacy_settings: PrivacySettings
    marketing_consent: bool
    data_processing_consent: bool
    custom_preferences: _struct_pb2.Struct
    def __init__(self, language: _Optional[str] = ..., currency: _Optional[str] = ..., timezone: _Optional[str] = ..., notification_settings: _Optional[_Union[NotificationSettings, _Mapping]] = ..., privacy_settings: _Optional[_Union[PrivacySettings, _Mapping]] = ..., marketing_consent: _Optional[bool] = ..., data_processing_consent: _Optional[bool] = ..., custom_preferences: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Money(_message.Message):
    __slots__ = ("amount", "currency")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    amount: float
    currency: str
    def __init__(self, amount: _Optional[float] = ..., currency: _Optional[str] = ...) -> None: ...

class PurchaseRecord(_message.Message):
    __slots__ = ("id", "amount", "product", "category", "purchase_date", "channel")
    ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_DATE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    amount: Money
    product: str
    category: str
    purchase_date: _timestamp_pb2.Timestamp
    channel: str
    def __init__(self, id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., product: _Optional[str] = ..., category: _Optional[str] = ..., purchase_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., channel: _Optional[str] = ...) -> None: ...

class InteractionRecord(_message.Message):
    __slots__ = ("id", "type", "channel", "action", "timestamp", "duration", "outcome")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    channel: str
    action: str
    timestamp: _timestamp_pb2.Timestamp
    duration: int
    outcome: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., channel: _Optional[str] = ..., action: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("type", "os", "browser", "user_agent", "first_seen", "last_seen", "is_active")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    type: str
    os: str
    browser: str
    user_agent: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    is_active: bool
    def __init__(self, type: _Optional[str] = ..., os: _Optional[str] = ..., browser: _Optional[str] = ..., user_agent: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., is_active: _Optional[bool] = ...) -> None: ...

class Metadata(_message.Message):
    __slots__ = ("source", "acquisition_date", "lifetime_value", "purchase_history", "interaction_history", "device_info", "referral_source", "last_login", "login_count")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACQUISITION_DATE_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_HISTORY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INFO_FIELD_NUMBER: _ClassVar[int]
    REFERRAL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_LOGIN_FIELD_NUMBER: _ClassVar[int]
    LOGIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    source: str
    acquisition_date: _timestamp_pb2.Timestamp
    lifetime_value: Money
    purchase_history: _containers.RepeatedCompositeFieldContainer[PurchaseRecord]
    interaction_history: _containers.RepeatedCompositeFieldContainer[InteractionRecord]
    device_info: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    referral_source: str
    last_login: _timestamp_pb2.Timestamp
    login_count: int
    def __init__(self, source: _Optional[str] = ..., acquisition_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lifetime_value: _Optional[_Union[Money, _Mapping]] = ..., purchase_history: _Optional[_Iterable[_Union[PurchaseRecord, _Mapping]]] = ..., interaction_history: _Optional[_Iterable[_Union[InteractionRecord, _Mapping]]] = ..., device_info: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., referral_source: _Optional[str] = ..., last_login: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., login_count: _Optional[int] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("email", "name", "age", "gender", "location", "preferences", "tags", "metadata")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    email: str
    name: str
    age: int
    gender: str
    location: Location
    preferences: Preferences
    tags: _containers.RepeatedScalarFieldContainer[str]
    metadata: Metadata
    def __init__(self, email: _Optional[str] = ..., name: _Optional[str] = ..., age: _Optional[int] = ..., gender: _Optional[str] = ..., location: _Optional[_Union[Location, _Mapping]] = ..., preferences: _Optional[_Union[Preferences, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ...) -> None: ...

class Customer(_message.Message):
    __slots__ = ("id", "email", "name", "age", "gender", "location", "preferences", "segments", "tags", "status", "created_at", "updated_at", "last_activity", "metadata", "pending_email", "active_orders", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PENDING_EMAIL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ORDERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    name: str
    age: int
    gender: str
    location: Location
    preferences: Preferences
    segments: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    status: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_activity: _timestamp_pb2.Timestamp
    metadata: Metadata
    pending_email: str
    active_orders: int
    version: int
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., name: _Optional[str] = ..., age: _Optional[int] = ..., gender: _Optional[str] = ..., location: _Optional[_Union[Location, _Mapping]] = ..., preferences: _Optional[_Union[Preferences, _Mapping]] = ..., segments: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[str]] = ..., status: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ..., pending_email: _Optional[str] = ..., active_orders: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class GetCustomerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListCustomersRequest(_message.Message):
    __slots__ = ("limit", "cursor", "sort", "status", "country", "city", "gender", "tags", "age_min", "age_max", "created_from", "created_to", "q", "email")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    AGE_MIN_FIELD_NUMBER: _ClassVar[int]
    AGE_MAX_FIELD_NUMBER: _ClassVar[int]
    CREATED_FROM_FIELD_NUMBER: _ClassVar[int]
    CREATED_TO_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    limit: int
    cursor: str
    sort: str
    status: str
    country: str
    city: str
    gender: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    age_min: int
    age_max: int
    created_from: _timestamp_pb2.Timestamp
    created_to: _timestamp_pb2.Timestamp
    q: str
    email: str
    def __init__(self, limit: _Optional[int] = ..., cursor: _Optional[str] = ..., sort: _Optional[str] = ..., status: _Optional[str] = ..., country: _Optional[str] = ..., city: _Optional[str] = ..., gender: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., age_min: _Optional[int] = ..., age_max: _Optional[int] = ..., created_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., q: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class ListCustomersResponse(_message.Message):
    __slots__ = ("items", "next_cursor", "limit")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Customer]
    next_cursor: str
    limit: int
    def __init__(self, items: _Optional[_Iterable[_Union[Customer, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class CreateCustomerRequest(_message.Message):
    __slots__ = ("customer", "idempotency_key")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    customer: Profile
    idempotency_key: str
    def __init__(self, customer: _Optional[_Union[Profile, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class UpdateCustomerRequest(_message.Message):
    __slots__ = ("id", "customer", "status", "expected_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer: Profile
    status: str
    expected_version: int
    def __init__(self, id: _Optional[str] = ..., customer: _Optional[_Union[Profile, _Mapping]] = ..., status: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteCustomerRequest(_message.Message):
    __slots__ = ("id", "expected_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    expected_version: int
    def __init__(self, id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteCustomerResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class RestoreCustomerRequest(_message.Message):
    __slots__ = ("id", "expected_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    expected_version: int
    def __init__(self, id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SegmentDefinition(_message.Message):
    __slots__ = ("name", "description", "rule_id", "kind", "purpose", "criteria")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    rule_id: str
    kind: str
    purpose: str
    criteria: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., rule_id: _Optional[str] = ..., kind: _Optional[str] = ..., purpose: _Optional[str] = ..., criteria: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("id", "name", "description", "rule_id", "kind", "purpose", "criteria", "customer_count", "status", "created_by", "created_at", "updated_at", "last_calculated", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_CALCULATED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    rule_id: str
    kind: str
    purpose: str
    criteria: _struct_pb2.Struct
    customer_count: int
    status: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_calculated: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., rule_id: _Optional[str] = ..., kind: _Optional[str] = ..., purpose: _Optional[str] = ..., criteria: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., customer_count: _Optional[int] = ..., status: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_calculated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class GetSegmentRequest(_message.Message):
    __slots__ = ("segment_id",)
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    def __init__(self, segment_id: _Optional[str] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ("limit", "cursor", "status")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    cursor: str
    status: str
    def __init__(self, limit: _Optional[int] = ..., cursor: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("items", "next_cursor", "limit")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Segment]
    next_cursor: str
    limit: int
    def __init__(self, items: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class CreateSegmentRequest(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: SegmentDefinition
    def __init__(self, segment: _Optional[_Union[SegmentDefinition, _Mapping]] = ...) -> None: ...

class CalculateSegmentRequest(_message.Message):
    __slots__ = ("segment_id",)
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    def __init__(self, segment_id: _Optional[str] = ...) -> None: ...

class CalculationJob(_message.Message):
    __slots__ = ("id", "segment_id", "reason", "state", "phase", "requested_by", "created_at", "started_at", "finished_at", "member_count", "joined", "left", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MEMBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    segment_id: str
    reason: str
    state: str
    phase: str
    requested_by: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    member_count: int
    joined: int
    left: int
    error: str
    def __init__(self, id: _Optional[str] = ..., segment_id: _Optional[str] = ..., reason: _Optional[str] = ..., state: _Optional[str] = ..., phase: _Optional[str] = ..., requested_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., member_count: _Optional[int] = ..., joined: _Optional[int] = ..., left: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ListSegmentMembersRequest(_message.Message):
    __slots__ = ("segment_id", "limit", "cursor", "as_of")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    limit: int
    cursor: str
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, segment_id: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SegmentMember(_message.Message):
    __slots__ = ("customer_id", "joined_at", "join_reason", "customer")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    JOIN_REASON_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    joined_at: _timestamp_pb2.Timestamp
    join_reason: str
    customer: Customer
    def __init__(self, customer_id: _Optional[str] = ..., joined_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., join_reason: _Optional[str] = ..., customer: _Optional[_Union[Customer, _Mapping]] = ...) -> None: ...

class ListSegmentMembersResponse(_message.Message):
    __slots__ = ("items", "next_cursor", "limit", "as_of")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SegmentMember]
    next_cursor: str
    limit: int
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, items: _Optional[_Iterable[_Union[SegmentMember, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., limit: _Optional[int] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("type", "os", "browser", "app_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: str
    os: str
    browser: str
    app_version: str
    def __init__(self, type: _Optional[str] = ..., os: _Optional[str] = ..., browser: _Optional[str] = ..., app_version: _Optional[str] = ...) -> None: ...

class TrackedEvent(_message.Message):
    __slots__ = ("type", "data", "event_id", "customer_id", "timestamp", "session_id", "channel", "device")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    type: str
    data: _struct_pb2.Struct
    event_id: str
    customer_id: str
    timestamp: _timestamp_pb2.Timestamp
    session_id: str
    channel: str
    device: Device
    def __init__(self, type: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_id: _Optional[str] = ..., channel: _Optional[str] = ..., device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class TrackRequest(_message.Message):
    __slots__ = ("customer_id", "event")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    event: TrackedEvent
    def __init__(self, customer_id: _Optional[str] = ..., event: _Optional[_Union[TrackedEvent, _Mapping]] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("event_id", "stored", "duplicate", "reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    stored: bool
    duplicate: bool
    reason: str
    def __init__(self, event_id: _Optional[str] = ..., stored: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class TrackBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrackedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[TrackedEvent, _Mapping]]] = ...) -> None: ...

class SkippedEvent(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TrackBatchResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "skipped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedEvent]
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., skipped: _Optional[_Iterable[_Union[SkippedEvent, _Mapping]]] = ...) -> None: ...

class GetAnalyticsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetInsightsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Engagement(_message.Message):
    __slots__ = ("last_7_days", "last_30_days", "last_90_days", "by_type", "by_channel")
    class ByTypeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ByChannelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LAST_7_DAYS_FIELD_NUMBER: _ClassVar[int]
    LAST_30_DAYS_FIELD_NUMBER: _ClassVar[int]
    LAST_90_DAYS_FIELD_NUMBER: _ClassVar[int]
    BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    BY_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    last_7_days: int
    last_30_days: int
    last_90_days: int
    by_type: _containers.ScalarMap[str, int]
    by_channel: _containers.ScalarMap[str, int]
    def __init__(self, last_7_days: _Optional[int] = ..., last_30_days: _Optional[int] = ..., last_90_days: _Optional[int] = ..., by_type: _Optional[_Mapping[str, int]] = ..., by_channel: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DeviceUsage(_message.Message):
    __slots__ = ("type", "os", "browser", "events", "first_seen", "last_seen")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    BROWSER_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    type: str
    os: str
    browser: str
    events: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[str] = ..., os: _Optional[str] = ..., browser: _Optional[str] = ..., events: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CustomerAnalytics(_message.Message):
    __slots__ = ("customer_id", "lifetime_value", "order_count", "average_order_value", "purchase_frequency", "first_purchase_at", "last_purchase_at", "recency_days", "tenure_days", "categories", "login_count", "last_login", "last_activity", "engagement", "devices")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_VALUE_FIELD_NUMBER: _ClassVar[int]
    ORDER_COUNT_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_ORDER_VALUE_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    FIRST_PURCHASE_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_PURCHASE_AT_FIELD_NUMBER: _ClassVar[int]
    RECENCY_DAYS_FIELD_NUMBER: _ClassVar[int]
    TENURE_DAYS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    LOGIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_LOGIN_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    lifetime_value: Money
    order_count: int
    average_order_value: Money
    purchase_frequency: float
    first_purchase_at: _timestamp_pb2.Timestamp
    last_purchase_at: _timestamp_pb2.Timestamp
    recency_days: int
    tenure_days: int
    categories: _containers.RepeatedScalarFieldContainer[str]
    login_count: int
    last_login: _timestamp_pb2.Timestamp
    last_activity: _timestamp_pb2.Timestamp
    engagement: Engagement
    devices: _containers.RepeatedCompositeFieldContainer[DeviceUsage]
    def __init__(self, customer_id: _Optional[str] = ..., lifetime_value: _Optional[_Union[Money, _Mapping]] = ..., order_count: _Optional[int] = ..., average_order_value: _Optional[_Union[Money, _Mapping]] = ..., purchase_frequency: _Optional[float] = ..., first_purchase_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_purchase_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recency_days: _Optional[int] = ..., tenure_days: _Optional[int] = ..., categories: _Optional[_Iterable[str]] = ..., login_count: _Optional[int] = ..., last_login: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., engagement: _Optional[_Union[Engagement, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[DeviceUsage, _Mapping]]] = ...) -> None: ...

class RfmScores(_message.Message):
    __slots__ = ("recency", "frequency", "monetary", "segment")
    RECENCY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_FIELD_NUMBER: _ClassVar[int]
    MONETARY_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    recency: int
    frequency: int
    monetary: int
    segment: str
    def __init__(self, recency: _Optional[int] = ..., frequency: _Optional[int] = ..., monetary: _Optional[int] = ..., segment: _Optional[str] = ...) -> None: ...

class EngagementTrend(_message.Message):
    __slots__ = ("trend", "last_30_days", "previous_30_days")
    TREND_FIELD_NUMBER: _ClassVar[int]
    LAST_30_DAYS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_30_DAYS_FIELD_NUMBER: _ClassVar[int]
    trend: str
    last_30_days: int
    previous_30_days: int
    def __init__(self, trend: _Optional[str] = ..., last_30_days: _Optional[int] = ..., previous_30_days: _Optional[int] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("id", "calibration_end", "customers", "currency")
    ID_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_END_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    id: str
    calibration_end: _timestamp_pb2.Timestamp
    customers: int
    currency: str
    def __init__(self, id: _Optional[str] = ..., calibration_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., customers: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class CustomerInsights(_message.Message):
    __slots__ = ("customer_id", "as_of", "rfm", "probability_alive", "expected_purchases_90_days", "predicted_value_12_months", "preferred_channel", "preferred_category", "engagement_trend", "model", "reason")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    RFM_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_ALIVE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PURCHASES_90_DAYS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_VALUE_12_MONTHS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_TREND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    as_of: _timestamp_pb2.Timestamp
    rfm: RfmScores
    probability_alive: float
    expected_purchases_90_days: float
    predicted_value_12_months: Money
    preferred_channel: str
    preferred_category: str
    engagement_trend: EngagementTrend
    model: ModelSummary
    reason: str
    def __init__(self, customer_id: _Optional[str] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rfm: _Optional[_Union[RfmScores, _Mapping]] = ..., probability_alive: _Optional[float] = ..., expected_purchases_90_days: _Optional[float] = ..., predicted_value_12_months: _Optional[_Union[Money, _Mapping]] = ..., preferred_channel: _Optional[str] = ..., preferred_category: _Optional[str] = ..., engagement_trend: _Optional[_Union[EngagementTrend, _Mapping]] = ..., model: _Optional[_Union[ModelSummary, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
