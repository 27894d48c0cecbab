"""Rules across a model's fields, stated in JSON Schema so that the published contract says
what the validators enforce (a generated client, or a fuzzer, sees them)."""

from __future__ import annotations

from typing import Any


def _set(name: str) -> dict[str, Any]:
    """`name` is given and not null (a null member counts as absent)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def exactly_one(*names: str) -> dict[str, Any]:
    return {"oneOf": [_set(n) for n in names]}


def at_least_one(*names: str) -> dict[str, Any]:
    return {"anyOf": [_set(n) for n in names]}


def any_member(schema: dict[str, Any], model: type) -> None:
    """`json_schema_extra` of a model at least one of whose members must be set."""
    schema.update(at_least_one(*schema.get("properties", {})))


def criteria_by_kind(schema: dict[str, Any], model: type) -> None:
    """A DYNAMIC segment (the default kind) has criteria; a STATIC one has none."""
    schema["if"] = {"required": ["kind"], "properties": {"kind": {"const": "STATIC"}}}
    schema["then"] = {"properties": {"criteria": {"type": "null"}}}
    schema["else"] = _set("criteria")
