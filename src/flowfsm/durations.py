"""Durations as people write them: ``"30m"``, ``"1h30m"``, ``"90s"``, ``"2d"``, and
ISO 8601's ``"PT30M"``, ``"P1DT2H"`` — parsed here, with no dependency.

A duration is a positive whole number of seconds or more (fractions are allowed,
``"1.5h"``), at most a year: a timeout of zero or of centuries is a typo.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from flowfsm.errors import ValidationError, shown

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

MAX_DURATION: Final = dt.timedelta(days=366)
"""The longest duration a catalog may give (a year)."""

_NUMBER: Final = r"([0-9]{1,9}(?:\.[0-9]{1,6})?)"  # ASCII digits: other scripts' are lookalikes
_UNITS: Final = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_SHORT: Final = re.compile("".join(rf"(?:{_NUMBER}{unit})?" for unit in _UNITS))
_ISO: Final = re.compile(
    rf"P(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?", re.IGNORECASE
)
_ISO_UNITS: Final[tuple[int, ...]] = (604_800, 86_400, 3_600, 60, 1)


def parse_duration(value: object, field: str = "duration") -> dt.timedelta:
    """``value`` (a string as above, or a ``timedelta``) as a ``timedelta``;
    ``ValidationError`` naming ``field`` otherwise."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        parsed = _seconds(value.strip())
        if parsed is None:
            raise ValidationError(
                field, f"{shown(value, 40)} is not a duration (write e.g. '30m', '1h30m', '90s', '2d' or 'PT30M')"
            )
        seconds = parsed
    else:
        raise ValidationError(field, f"expected a duration such as '30m', got {shown(value, 40)}")
    if not 0 < seconds <= MAX_DURATION.total_seconds():
        raise ValidationError(field, f"must be more than zero and at most {MAX_DURATION.days} days")
    return dt.timedelta(seconds=seconds)


def _seconds(text: str) -> float | None:
    """The seconds ``text`` says, or None if it is not a duration."""
    units: tuple[int, ...]
    if text[:1] in ("P", "p"):
        match, units = _ISO.fullmatch(text), _ISO_UNITS
        if match is not None and text.upper().endswith("T"):  # "PT" / "P1DT": a time part with nothing in it
            return None
    else:
        match, units = _SHORT.fullmatch(text.lower()), tuple(_UNITS.values())
    if match is None or not any(match.groups()):
        return None
    return sum(float(number) * unit for number, unit in zip(match.groups(), units, strict=True) if number)


def format_duration(value: dt.timedelta) -> str:
    """``value`` as the short form ``parse_duration`` reads (``"1h30m"``)."""
    seconds, parts = value.total_seconds(), []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        count = int(seconds // size)
        if count:
            parts.append(f"{count}{unit}")
            seconds -= count * size
    if seconds:
        parts.append(f"{seconds:g}s")
    return "".join(parts) or "0s"
