"""JSON forms of every entity, trigger and HookRequest, through cattrs.

Keys are camelCase, enums are their values (the state spellings of the
contract), datetimes are ISO 8601 strings. ``structure(unstructure(x), type(x))``
gives back ``x`` for every flowfsm value. Triggers carry a ``type`` tag (the
class name) when (un)structured as ``Trigger``.

>>> from flowfsm import Artifact, ArtifactCreated
>>> to_json(ArtifactCreated(Artifact("com.acme", "api", "1.4.0")), Trigger)
'{"artifact": {"group": "com.acme", "name": "api", "version": "1.4.0"}, "type": "ArtifactCreated"}'
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii as _quote  # C: a str as json.dumps writes it
from typing import Any, Final, TypeVar, get_args, get_origin, overload

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from flowfsm.durations import format_duration, parse_duration
from flowfsm.errors import ValidationError, shown
from flowfsm.freezes import FreezeWindow
from flowfsm.model import (
    Action,
    ApprovalPolicy,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    FailurePayload,
    Flow,
    FlowState,
    HeldPayload,
    HookEvent,
    HookRequest,
    Payload,
    Promotion,
    PromotionPayload,
    PromotionResult,
    PromotionState,
    ResultStatus,
    RetryPolicy,
    RollbackPayload,
    Service,
    SteeringPayload,
    TimeoutPayload,
    Timeouts,
    TimerKind,
    text_problem,
)
from flowfsm.triggers import ApprovalGranted, ApprovalRejected, Trigger

__all__ = ["converter", "from_json", "hook_requests_json", "parse_json", "structure", "to_json", "unstructure"]

T = TypeVar("T")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _renames(cls: type) -> dict[str, Any]:
    return {a.name: override(rename=_camel(a.name)) for a in attrs.fields(cls) if a.init and _camel(a.name) != a.name}


_OMITTED_IF_UNSET: Final[dict[type, tuple[str, ...]]] = {
    Environment: ("timeouts", "soak", "failure_strategy", "retry", "approvals"),
    Timeouts: ("deploy", "verify"),
    Service: ("retry", "concurrency"),
    Promotion: ("attempt",),
    Deployment: ("attempt", "approvals", "override"),
    Flow: ("pause", "rollback", "author"),
    PromotionResult: ("attempt",),
    **{
        cls: tuple(
            a.name
            for a in attrs.fields(cls)
            if a.name in ("actor", "reason", "attempt") and a.default is not attrs.NOTHING  # attempt: of an approval
        )
        for cls in get_args(Trigger)
    },
}
"""Fields left out of the JSON when unset, so that what does not use them reads
exactly as before they existed (payloads included)."""


def _unstructure_renames(cls: type) -> dict[str, Any]:
    overrides = _renames(cls)
    for name in _OMITTED_IF_UNSET.get(cls, ()):  # renamed still: ``failure_strategy`` is ``failureStrategy``
        overrides[name] = override(rename=_camel(name), omit_if_default=True)
    for name in _NOT_IN_JSON.get(cls, ()):
        overrides[name] = override(omit=True)
    return overrides


_NOT_IN_JSON: Final[dict[type, tuple[str, ...]]] = {
    Service: ("freezes",),  # a catalog declares its windows once, at the top (``Catalog.from_dict``)
}
"""Fields a class's JSON form never has."""

_AS_SENT: Final[dict[type, tuple[str, ...]]] = {
    FreezeWindow: ("start",),  # a local time: TOML and YAML give a datetime, JSON a string
    Action: ("secret",),  # a secret or a reference to one, never shown
    PromotionResult: ("attempt",),  # PromotionCompleted refuses all but a whole number (int() reads true as 1)
    ApprovalPolicy: ("required", "allow_author"),  # bool("false") is True; int() reads true and 1.5
    RetryPolicy: ("attempts",),  # int() reads 2.7 as 2, "3" as 3 and true as 1
    ApprovalGranted: ("groups", "attempt"),  # a string is not its letters
    ApprovalRejected: ("groups", "attempt"),
}
"""Fields structured as the JSON has them, for their class to check."""


def _make_converter() -> cattrs.Converter:  # noqa: PLR0915 - every hook of the one converter, in one place
    conv = cattrs.Converter(forbid_extra_keys=True)

    def unstructure_object(cls: type) -> Any:
        return make_dict_unstructure_fn(cls, conv, **_unstructure_renames(cls))

    conv.register_unstructure_hook_factory(attrs.has, unstructure_object)

    def structure_object(cls: type) -> Any:
        overrides = _renames(cls)
        for name in _AS_SENT.get(cls, ()):
            overrides[name] = override(rename=_camel(name), struct_hook=lambda value, _: value)
        for name in _NOT_IN_JSON.get(cls, ()):
            overrides[name] = override(omit=True)
        structure_fields: Any = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **overrides)

        def structure_mapping(value: Any, as_type: Any) -> Any:
            if not isinstance(value, dict) and not isinstance(value, Mapping):  # dict first: the ABC check is slow
                raise ValidationError("$", f"expected a JSON object, got {shown(value)}")
            return structure_fields(value, as_type)

        return structure_mapping

    conv.register_structure_hook_factory(attrs.has, structure_object)

    def structure_list(as_type: Any) -> Any:
        items = (
            homogenous_tuple_structure_factory(as_type, conv)
            if get_origin(as_type) is tuple
            else list_structure_factory(as_type, conv)
        )

        def structure_array(value: Any, as_type: Any) -> Any:
            if not isinstance(value, (list, tuple)):  # cattrs would take a string's letters, a mapping's keys
                raise ValidationError("$", f"expected a list, got {shown(value)}")
            return items(value, as_type)

        return structure_array

    conv.register_structure_hook_factory(_is_list, structure_list)

    def structure_str(value: Any, _: Any) -> str:
        if not isinstance(value, str):  # cattrs would turn 7 into "7" silently
            raise ValidationError("$", f"expected a string, got {shown(value)}")
        problem = text_problem(value)
        if problem:
            raise ValidationError("$", problem)
        return value

    conv.register_structure_hook(str, structure_str)

    # Enums by table lookup: Enum(value) and member.value are slow paths in Python.
    for enum_cls in (FlowState, DeploymentState, PromotionState, ResultStatus, HookEvent, TimerKind):
        by_value = {m.value: m for m in enum_cls}
        to_value = {m: m.value for m in enum_cls}

        def structure_enum(value: Any, cls: Any, by_value: dict[str, Any] = by_value) -> Any:
            try:
                return by_value[value]
            except (KeyError, TypeError):
                allowed = ", ".join(repr(v) for v in by_value)
                raise ValidationError("$", f"{shown(value)} is not one of {allowed}") from None

        conv.register_structure_hook(enum_cls, structure_enum)
        conv.register_unstructure_hook(enum_cls, to_value.__getitem__)
    conv.register_unstructure_hook(dt.datetime, dt.datetime.isoformat)
    # An approver's groups (``frozenset[str]``): a list, in one order.
    conv.register_unstructure_hook_func(_is_frozenset, sorted)

    def structure_datetime(value: Any, _: Any) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise ValidationError("$", f"expected an ISO 8601 time, got {shown(value)}") from None

    conv.register_structure_hook(dt.datetime, structure_datetime)
    # Durations: the attrs converters of the classes holding them parse the text.
    conv.register_structure_hook(dt.timedelta, lambda value, _: parse_duration(value, "$"))
    conv.register_unstructure_hook(dt.timedelta, format_duration)

    def structure_payload(value: Any, _: Any) -> Payload:
        if isinstance(value, dict) and "promotionResult" in value:
            return conv.structure(value, PromotionPayload)
        if isinstance(value, dict) and "window" in value:
            return conv.structure(value, HeldPayload)
        if isinstance(value, dict) and "rollbackTo" in value:
            return conv.structure(value, RollbackPayload)
        if isinstance(value, dict) and "actor" in value:
            return conv.structure(value, SteeringPayload)
        if isinstance(value, dict) and "reason" in value:  # a timeout's, or the reason a trigger gave
            return conv.structure(value, TimeoutPayload if value["reason"] == "timeout" else FailurePayload)
        return conv.structure(value, DeploymentPayload)

    conv.register_structure_hook(Payload, structure_payload)
    _configure_triggers(conv)
    return conv


def _is_frozenset(as_type: Any) -> bool:
    return as_type is frozenset or get_origin(as_type) is frozenset


def _is_list(as_type: Any) -> bool:
    """``list[X]`` or ``tuple[X, ...]``: what JSON spells as an array."""
    origin, args = get_origin(as_type), get_args(as_type)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


def _configure_triggers(conv: cattrs.Converter) -> None:
    """Triggers as JSON: a ``type`` tag, and every malformed part named by its path."""

    def structure_details(value: Any, _: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):  # PromotionResult checks the rest (flowfsm.model.check_json)
            raise ValidationError("$", f"expected a JSON object, got {shown(value)}")
        return value

    details_type = Mapping[str, Any]
    conv.register_structure_hook_func(lambda t: t == details_type, structure_details)
    configure_tagged_union(Trigger, conv, tag_name="type")
    triggers = {cls.__name__: cls for cls in get_args(Trigger)}
    kinds = ", ".join(repr(name) for name in triggers)

    def structure_trigger(value: Any, _: Any) -> Trigger:
        """cattrs' tagged union, with errors that name the tag rather than a KeyError."""
        if not isinstance(value, dict):
            raise ValidationError("$", f"expected a JSON object, got {shown(value)}")
        if "type" not in value:
            raise ValidationError("$.type", f"required key missing: one of {kinds}")
        tag = value["type"]
        cls = triggers.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise ValidationError("$.type", f"{shown(tag)} is not one of {kinds}")
        return conv.structure({k: v for k, v in value.items() if k != "type"}, cls)  # type: ignore[no-any-return]

    conv.register_structure_hook(Trigger, structure_trigger)


converter: cattrs.Converter = _make_converter()
"""The configured cattrs converter; register hooks on it for your own types."""


def unstructure(value: Any, as_type: Any = None) -> Any:
    """``value`` as JSON-ready dicts and lists (``as_type=Trigger`` adds the tag)."""
    return converter.unstructure(value, as_type)


@overload
def structure(data: Any, as_type: type[T]) -> T: ...
@overload
def structure(data: Any, as_type: Any) -> Any: ...
def structure(data: Any, as_type: Any) -> Any:
    """Build an ``as_type`` from JSON-ready data.

    Bad data raises ``ValidationError`` whose ``field`` is the JSON path of the
    first problem, e.g. ``$.results[0].resultStatus``.
    """
    try:
        return converter.structure(data, as_type)
    except (ValidationError, ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as e:
        path, message = _first_error(e, "$")
        raise ValidationError(path, message) from e
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise ValidationError("$", f"malformed {getattr(as_type, '__name__', 'value')}") from e


def _first_error(exc: BaseException, path: str) -> tuple[str, str]:  # noqa: PLR0911 - one return per error kind
    """The JSON path and message of the first leaf error in a cattrs error group."""
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = sorted(exc.extra_fields, key=str)  # YAML keys need not be strings
        return path, f"unknown key(s) {', '.join(shown(k, 40) for k in keys[:5])}{', …' if len(keys) > 5 else ''}"
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        if with_notes:
            inner, note = with_notes[0]
            if isinstance(note, IterableValidationNote):
                return _first_error(inner, f"{path}[{note.index}]")
            return _first_error(inner, f"{path}.{_camel(note.name)}")
        if without:  # raised by the class's own __init__ (its validators)
            return _first_error(without[0], path)
        return path, str(exc)
    if isinstance(exc, ValidationError):
        if exc.field == "$":
            return path, exc.message
        return (exc.field if exc.field.startswith("$") else f"{path}.{_camel(exc.field)}"), exc.message
    if isinstance(exc, KeyError):
        return path, "required key missing"
    return path, f"malformed value ({type(exc).__name__})"  # the text would be Python's, not the data's


def to_json(value: Any, as_type: Any = None) -> str:
    return json.dumps(unstructure(value, as_type))


def hook_requests_json(requests: Sequence[HookRequest]) -> list[str]:
    """``to_json(r)`` for each HookRequest, for the outbox: the HookRequests of one
    event share one payload object, so each payload is converted and encoded once,
    and the rest, a few strings, is written around it with json's own C escaping.
    (The JSON is equal to ``to_json``'s; a property test holds them together.)"""
    payloads: dict[int, str] = {}  # every request is alive here, so ids are unique
    times: dict[dt.datetime, str] = {}  # a trigger's requests share one creation time
    texts: list[str] = []
    for request in requests:
        created = times.get(request.created_at)
        if created is None:
            created = times[request.created_at] = _quote(request.created_at.isoformat())
        payload = payloads.get(id(request.payload))
        if payload is None:
            payload = payloads[id(request.payload)] = json.dumps(converter.unstructure(request.payload))
        action, url = request.action, request.action.url
        texts.append(
            f'{{"id": {_quote(request.id)}, "flowId": {_quote(request.flow_id)},'
            f' "webhookId": {_quote(request.webhook_id)},'
            f' "action": {{"name": {_quote(action.name)}, "url": {"null" if url is None else _quote(url)},'
            f' "signed": {"true" if action.signed else "false"}}},'
            f' "event": {_quote(request.event.value)}, "createdAt": {created}, "payload": {payload}}}'
        )
    return texts


@overload
def from_json(text: str | bytes, as_type: type[T]) -> T: ...
@overload
def from_json(text: str | bytes, as_type: Any) -> Any: ...
def from_json(text: str | bytes, as_type: Any) -> Any:
    """``structure(parse_json(text), as_type)``: any bad text raises ``ValidationError``."""
    return structure(parse_json(text), as_type)


class _Constant(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in JSON text."""


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


class _DuplicateKey(Exception):
    """A key given twice in one JSON object."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _one_value_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def parse_json(text: str | bytes, field: str = "$") -> Any:
    """JSON text (bytes must be UTF-8) as Python data, or a ``ValidationError`` naming
    ``field``: never ``json``'s own errors, and not ``NaN`` or ``Infinity``, which
    ``json`` accepts but JSON has not, nor an object with a key given twice, which
    parsers read differently (the first value, or the last)."""
    try:
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_one_value_per_key)
    except UnicodeDecodeError as e:
        raise ValidationError(field, f"not UTF-8 (byte {e.start + 1})") from None
    except json.JSONDecodeError as e:
        raise ValidationError(field, f"not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except _Constant as e:
        raise ValidationError(field, f"not JSON: {e} is not a JSON number") from None
    except _DuplicateKey as e:
        raise ValidationError(field, f"duplicate key {shown(e.key, 40)}") from None
    except RecursionError:
        raise ValidationError(field, "nested too deeply to read") from None
    except ValueError:  # an integer past Python's digit limit (int_max_str_digits)
        raise ValidationError(field, "a number has too many digits to read") from None
