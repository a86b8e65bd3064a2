"""Who looks at the dashboard, and the tokens that tie each form to them.

A form's CSRF token is an HMAC, under the dashboard's secret, of the time it was
issued and the viewer's actor: a page served to one person cannot be replayed as
another, a token older than its lifetime is refused, and nothing is stored. The
time is rounded down to ``GRAIN`` seconds, so that a page refreshed in place (the
live regions) gets the same tokens and is not redrawn for a new one every second.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Final

import attrs

from flowfsm.errors import ValidationError, shown

__all__ = ["GRAIN", "CsrfTokens", "Viewer", "redacted"]

GRAIN: Final = 600
"""Seconds a token's issue time is rounded down to."""


def _groups(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):  # a lone group name would become a set of its letters
        raise ValidationError("groups", f"must be a collection of group names, got {shown(value)}")
    return frozenset(value)


def _actor(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(attribute.name, f"must be a non-blank string, got {shown(value)}")


@attrs.frozen
class Viewer:
    """The person the embedding service says is looking: ``actor`` goes into every
    trigger they cause (and so into the history), ``groups`` into approvals."""

    actor: str = attrs.field(validator=_actor)
    groups: frozenset[str] = attrs.field(default=frozenset(), converter=_groups)


class CsrfTokens:
    """Issues and checks the tokens of a dashboard's forms (see the module's docstring)."""

    def __init__(self, secret: bytes, max_age: dt.timedelta) -> None:
        self._secret = secret
        self._max_age = max_age

    def _mac(self, issued: int, actor: str) -> str:
        message = f"flowfsm-dashboard\0{issued}\0{actor}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, viewer: Viewer, now: dt.datetime) -> str:
        issued = int(now.timestamp()) // GRAIN * GRAIN
        return f"{issued}.{self._mac(issued, viewer.actor)}"

    def valid(self, token: str, viewer: Viewer, now: dt.datetime) -> bool:
        """Whether ``token`` was issued to ``viewer`` within the lifetime (and not in the future)."""
        issued_text, _, mac = token.partition(".")
        # ASCII only: "²" is a digit to isdigit but not to int, and compare_digest refuses other text
        if not (token.isascii() and issued_text.isdigit()) or len(issued_text) > 12:
            return False
        issued = int(issued_text)
        age = now.timestamp() - issued
        if not -60 <= age <= self._max_age.total_seconds():  # a minute's leeway for clocks a little apart
            return False
        return hmac.compare_digest(mac, self._mac(issued, viewer.actor))


_URL_USERINFO: Final = re.compile(r"(://)[^/?#\s]*@")
"""A URL's credentials, up to the authority's last ``@`` (where a client ends them)."""
_SIGNING_SECRET: Final = re.compile(r"whsec_\S*")


def redacted(text: str) -> str:
    """Free text (a reason, a delivery error) as a page may show it: a URL's
    credentials and anything shaped like a signing secret read ``<redacted>``."""
    return _URL_USERINFO.sub(r"\1<redacted>@", _SIGNING_SECRET.sub("<redacted>", text))
