"""Every error flowfsm raises, under one root.

Catch ``FlowFSMError`` to catch them all; catch a leaf to handle one case. Each
error carries the data that names what went wrong, so callers never parse
messages::

    FlowFSMError
    ├── ValidationError           field, message        (also a ValueError)
    │   └── CatalogError          source, path          a bad catalog file
    ├── NotFound                                        (also a LookupError)
    │   ├── UnknownFlow           flow_id
    │   ├── UnknownDeployment     deployment_id
    │   ├── UnknownPromotion      deployment_id (or None), promotion_id
    │   └── UnknownService        service_id
    ├── InvalidTransition         entity, entity_id, state, trigger, reason
    ├── NotAuthorized             deployment_id, actor, reason
                                                        not allowed to approve (or act)
    ├── ConcurrencyConflict       flow_id, version      a lost compare-and-set
    ├── RepositoryError           backend               a storage failure
    └── DeliveryError             status_code, retry, retry_after, gone
                                                        a HookRequest not delivered

A trigger that raises leaves the repository exactly as it was and emits nothing.
Messages show values through ``shown``: bounded, and never a secret.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Final

__all__ = [
    "CatalogError",
    "ConcurrencyConflict",
    "DeliveryError",
    "FlowFSMError",
    "InvalidTransition",
    "NotAuthorized",
    "NotFound",
    "RepositoryError",
    "UnknownDeployment",
    "UnknownFlow",
    "UnknownPromotion",
    "UnknownService",
    "ValidationError",
    "bounded",
    "shown",
]

SHOWN_LIMIT: Final = 80
"""The most characters ``shown`` gives a value."""

ID_LIMIT: Final = 100
"""The most characters an error message gives one id (or one name, or a reason):
whatever the input, an error naming a few ids stays a few hundred characters."""
_NAME_LIMIT: Final = 40  # a state, a trigger, an entity's kind: flowfsm's own short names

_REDACTED: Final = "<redacted>"
_DEPTH: Final = 3  # levels of nested containers shown
_SECRET_KEYS: Final = frozenset({"secret", "secrets"})
_SECRET_SHAPE: Final = "whsec_"  # a Standard Webhooks signing secret
_URL_USERINFO: Final = re.compile(r"(://)[^/?#@\s]*@")
_SECRET_TOKEN: Final = re.compile(r"whsec_\S*")


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """``value`` as an error message may show it: a repr of at most ``limit``
    characters (cut short with ``…``), where a string holding a signing secret
    (``whsec_...``), anything under a ``secret``/``secrets`` key and the credentials
    of a URL read ``<redacted>``. Bounded whatever the value: a huge number, a deep
    or long container, an object whose ``repr`` fails."""
    text = _shown(value, limit + 1, 0)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded(text: str, limit: int = 2 * SHOWN_LIMIT) -> str:
    """A message flowfsm did not write (a parser's, a driver's), as its own would be:
    one line of at most ``limit`` characters, secrets and URL credentials redacted."""
    text = " ".join(text[: limit + 1].split())
    text = _URL_USERINFO.sub(rf"\1{_REDACTED}@", _SECRET_TOKEN.sub(_REDACTED, text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut(text: str, limit: int) -> str:
    """``text`` (flowfsm's own words: a state, a trigger, a reason) cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: object, room: int, depth: int) -> str:
    """At least ``room`` characters of ``value``'s repr, when it has them (the caller cuts to size)."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):  # the repr of a 5000-digit int raises, and 80 digits say enough
        if value.bit_length() < 256:
            return repr(value)
        kind = "a negative number" if value < 0 else "a number"
        return f"<{kind} of about {int(value.bit_length() * 0.30103) + 1} digits>"
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return _shown_container(value, room, depth)
    if isinstance(value, str):
        secret = _SECRET_SHAPE in value
        value = _URL_USERINFO.sub(rf"\1{_REDACTED}@", value)
        text = repr(value[:room]) + ("…" if len(value) > room else "")
    elif isinstance(value, bytes | bytearray):
        text = repr(bytes(value[:room]))
        secret = _SECRET_SHAPE.encode() in value
    else:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - whatever a __repr__ raises, name the type instead
            return f"<{type(value).__name__}>"
        secret = _SECRET_SHAPE in text
    return _REDACTED if secret else _URL_USERINFO.sub(rf"\1{_REDACTED}@", text)


def _shown_container(value: Collection[object], room: int, depth: int) -> str:
    """A container's first items, each shown as ``_shown`` shows it, three levels deep at most."""
    if isinstance(value, list):
        opening, closing = "[", "]"
    elif isinstance(value, tuple):
        opening, closing = "(", ")"
    else:
        opening, closing = "{", "}"
    if depth >= _DEPTH and value:
        return f"{opening}…{closing}"
    parts: list[str] = []
    used = len(opening)
    for item in value:
        if used >= room:
            parts.append("…")
            break
        text = _shown(item, room - used, depth + 1)
        if isinstance(value, Mapping):
            secret = isinstance(item, str) and item.lower() in _SECRET_KEYS
            text += ": " + (_REDACTED if secret else _shown(value[item], room - used - len(text), depth + 1))
        parts.append(text)
        used += len(text) + 2
    return opening + ", ".join(parts) + closing


class FlowFSMError(Exception):
    """The root of every flowfsm error."""


class ValidationError(FlowFSMError, ValueError):
    """Malformed input: ``field`` names what is wrong, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class CatalogError(ValidationError):
    """A catalog file that cannot be loaded: which file, where in it, and why."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        super().__init__(path, message)
        self.args = (f"{source}: {path}: {message}",)


class NotFound(FlowFSMError, LookupError):
    """An id that names nothing stored."""

    def __str__(self) -> str:  # LookupError would quote the message like a key.
        return str(self.args[0])


class UnknownFlow(NotFound):
    def __init__(self, flow_id: str) -> None:
        self.flow_id = flow_id
        super().__init__(f"unknown flow {shown(flow_id, ID_LIMIT)}")


class UnknownDeployment(NotFound):
    def __init__(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        super().__init__(f"unknown deployment {shown(deployment_id, ID_LIMIT)}")


class UnknownPromotion(NotFound):
    """No promotion with this id (in the given deployment, when one is given)."""

    def __init__(self, deployment_id: str | None, promotion_id: str) -> None:
        self.deployment_id = deployment_id
        self.promotion_id = promotion_id
        where = f" in deployment {shown(deployment_id, ID_LIMIT)}" if deployment_id else ""
        super().__init__(f"unknown promotion {shown(promotion_id, ID_LIMIT)}{where}")


class UnknownService(NotFound):
    """A flow names a service the catalog no longer has."""

    def __init__(self, service_id: str) -> None:
        self.service_id = service_id
        super().__init__(f"unknown service {shown(service_id, ID_LIMIT)}")


class InvalidTransition(FlowFSMError):
    """The state machine forbids this trigger for this entity in its state."""

    def __init__(self, entity: str, entity_id: str, state: str, trigger: str, reason: str = "") -> None:
        self.entity = entity
        self.entity_id = entity_id
        self.state = state
        self.trigger = trigger
        self.reason = reason
        because = f": {_cut(reason, ID_LIMIT)}" if reason else ""
        what = f"{_cut(trigger, _NAME_LIMIT)} {_cut(entity, _NAME_LIMIT)} {shown(entity_id, ID_LIMIT)}"
        super().__init__(f"cannot {what} in state {shown(state, _NAME_LIMIT)}{because}")


class NotAuthorized(FlowFSMError):
    """The actor may not do this (SPEC §11: approve or reject a deployment whose
    environment does not list them); nothing changed. flowfsm authorizes; the
    embedding service authenticates the actor and groups it passes."""

    def __init__(self, deployment_id: str, actor: str, reason: str) -> None:
        self.deployment_id = deployment_id
        self.actor = actor
        self.reason = reason
        who, what = shown(actor, ID_LIMIT), shown(deployment_id, ID_LIMIT)
        super().__init__(f"{who} may not act on deployment {what}: {_cut(reason, ID_LIMIT)}")


class ConcurrencyConflict(FlowFSMError):
    """Another writer saved the flow first; the engine retries the whole trigger."""

    def __init__(self, flow_id: str, version: int) -> None:
        self.flow_id = flow_id
        self.version = version
        super().__init__(f"flow {shown(flow_id, ID_LIMIT)} changed concurrently (saving version {shown(version)})")


class RepositoryError(FlowFSMError):
    """The storage backend failed; the driver's error is the ``__cause__``."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"{backend}: {message}")


class DeliveryError(FlowFSMError):
    """An emitter could not deliver a HookRequest.

    ``retry``: worth trying again later (timeouts, 5xx, 429); ``retry_after``: the
    receiver's ``Retry-After``, in seconds; ``gone``: the endpoint answered
    410 Gone and should be disabled; ``url``: the endpoint that answered, where it
    may differ from the one the HookRequest names (the catalog moved the action).
    Messages never carry secrets.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry: bool = True,
        retry_after: float | None = None,
        gone: bool = False,
        url: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.retry = retry
        self.retry_after = retry_after
        self.gone = gone
        self.url = url
        super().__init__(message)
