"""Between protobuf messages and the REST JSON they mirror: requests become the dicts the
REST body models validate, answers of the shared use cases become messages."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from pydantic import BaseModel, TypeAdapter, ValidationError

M = TypeVar("M", bound=Message)
T = TypeVar("T")

ID: TypeAdapter[UUID] = TypeAdapter(UUID)  # ids of customers and segments in requests


def to_json(message: Message) -> dict[str, Any]:
    """The message as JSON in REST's shape: camelCase names, unset fields absent (as a REST
    client would leave them out), and whole Struct numbers as integers."""
    found: dict[str, Any] = _whole(json_format.MessageToDict(message))
    return found


def body(request: Message, name: str) -> dict[str, Any]:
    """The REST body a request carries in its field `name` (absent: an empty one, which
    validation then finds wanting)."""
    found: dict[str, Any] = to_json(request).get(name, {})
    return found


def _whole(value: Any) -> Any:
    # google.protobuf.Struct has only doubles; 25.0 from a client meant 25.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def to_message(value: dict[str, Any], cls: type[M]) -> M:
    """An answer (REST JSON; nulls leave fields unset) as a message. Strict: a field the
    proto lacks is an error, so the two shapes cannot drift apart silently."""
    message: M = cls()
    json_format.ParseDict(value, message)
    return message


class InvalidInput(Exception):
    """Validation errors of a part of a request; `prefix` names that part where the errors'
    locations do not (a bare value such as an id)."""

    def __init__(self, error: ValidationError, prefix: tuple[str, ...]) -> None:
        super().__init__("invalid input")
        self.errors = error.errors(include_url=False, include_input=False)
        self.prefix = prefix


def validated(model: type[BaseModel] | TypeAdapter[T], value: Any, *prefix: str) -> Any:
    """`value` validated by a REST body model (or adapter); errors name fields as REST does
    (the model's camelCase path), after `prefix`."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(value)
        return model.model_validate(value)
    except ValidationError as e:
        raise InvalidInput(e, prefix) from None


class Undecodable:
    """What a request that is not a valid message of its type deserializes to, so that the
    handler can answer INVALID_ARGUMENT (a raising deserializer makes grpcio answer INTERNAL)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def lenient_parser(cls: type[Message]) -> Any:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except DecodeError:
            return Undecodable(cls.DESCRIPTOR.full_name)

    return parse
