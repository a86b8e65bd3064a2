"""Freeze windows (SPEC §11): when deployments to some environments wait.

A ``FreezeWindow`` is a recurring schedule — an RFC 5545 recurrence rule with its
start (``rrule``, ``start``), or a cron expression (``cron``) — with a duration and
an IANA time zone, covering some environments (of some services, or all). The
engine asks one question, ``frozen(windows, at)``: is ``at`` inside a window, and if
so until when, as a person reading the schedule sees it (overlapping and
back-to-back windows make one freeze).

Schedules are read on the clock on the wall of the window's time zone: a window
"every Friday 18:00 for 64h in Europe/Berlin" starts at 18:00 local time all year
and ends on Monday at 10:00 local time, whatever the clocks did over the weekend.
A start at a local time that does not exist (the hour skipped in spring) begins
when the clocks have gone forward, as far after the skipped hour's start as it was
meant to be (02:30 → 03:30); a start at a local time that happens twice (the hour
repeated in autumn) begins at its first occurrence. That is RFC 5545's rule for
such times (the offset from before the change), and what cron does.

Recurrence comes from well-kept libraries behind the ``freeze`` extra
(``python-dateutil``'s rrule, ``cronsim``), imported when a window is made: the core
gains no required dependency. Time zones are the standard library's ``zoneinfo``.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import attrs

from flowfsm.durations import MAX_DURATION, parse_duration
from flowfsm.errors import ValidationError, shown

__all__ = ["EXTRA", "MAX_CHAIN", "Freeze", "FreezeWindow", "frozen"]

EXTRA: Final = "pip install flowfsm[freeze]"
"""How to install what freeze windows need."""

MAX_CHAIN: Final = 100
"""The most windows one freeze runs through (each starting as, or before, the last
ends): a schedule that never leaves a gap is answered with the end of the
hundredth, and asked again then. Bounds the work of one question."""

_SLACK: Final = dt.timedelta(hours=3)
"""More than any daylight-saving shift: a start this far from a time on the wall
is on the same side of it in real time too."""
_MAX_CANDIDATES: Final = 2_000
"""The most starts looked at near one time (a cron schedule firing every minute
has 360 within the slack either side)."""
_FREQUENCIES: Final = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY")
"""The recurrence frequencies a window may have: more often than daily is not a
freeze window, and would make each question cost more."""
_FREQ: Final = re.compile(r"(?:^|;)FREQ=([A-Z]+)")
_INTERVAL: Final = re.compile(r"(?:^|;)INTERVAL=(\d+)")  # dateutil has read it as a number
_UTC: Final = dt.UTC


class _Schedule(Protocol):
    def before(self, wall: dt.datetime) -> Iterator[dt.datetime]:
        """The starts at or before ``wall`` (naive local wall times), latest first."""
        ...  # pragma: no cover - a protocol


def _parts(body: str) -> collections.Counter[str]:
    """Refuses what dateutil reads otherwise than the rule says: a part given twice
    (RFC 5545 forbids it; dateutil keeps the last, so "FREQ=DAILY;FREQ=SECONDLY"
    would start every second), an INTERVAL of zero, and more than one BYSECOND (with
    at most 24 hours and 60 minutes, a window starts at most once a minute, which
    bounds the starts each question looks at)."""
    names = collections.Counter(part.partition("=")[0].strip() for part in body.split(";") if part.strip())
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise ValidationError("rrule", f"gives {twice[0][:20]} twice: each part once")
    for part in body.split(";"):
        name, _, value = part.partition("=")
        if name.strip() == "INTERVAL" and set(value.strip()) == {"0"}:
            raise ValidationError("rrule", "INTERVAL must be at least 1")
        if name.strip() == "BYSECOND" and "," in value:
            raise ValidationError("rrule", "give at most one BYSECOND: a window starts at most once a minute")
    if "COUNT" in names and "UNTIL" in names:
        raise ValidationError("rrule", "give COUNT or UNTIL, not both")
    return names


def _missing(field: str, e: ImportError) -> ValidationError:
    return ValidationError(field, f"freeze windows need the 'freeze' extra: {EXTRA} (missing {e.name or 'a module'})")


class _RRule:
    """An RFC 5545 recurrence rule from ``start``, through ``dateutil.rrule``."""

    def __init__(self, text: str, start: dt.datetime) -> None:
        try:
            from dateutil import rrule
        except ImportError as e:
            raise _missing("rrule", e) from e
        body = text.strip()
        if body.upper().startswith("RRULE:"):
            body = body[6:]
        if "\n" in body or "DTSTART" in body.upper():
            raise ValidationError("rrule", "give the rule alone (FREQ=...); its first start is 'start'")
        names = _parts(body.upper())
        try:
            rule = rrule.rrulestr(body, dtstart=start)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise ValidationError("rrule", f"not an RFC 5545 recurrence rule: {shown(str(e), 60)}") from None
        if not isinstance(rule, rrule.rrule):  # pragma: no cover - a single RRULE line is one rule
            raise ValidationError("rrule", "give one recurrence rule")
        frequency = _FREQ.search(body.upper())  # dateutil has read it: only which one is asked here
        if frequency is None or frequency.group(1) not in _FREQUENCIES:
            raise ValidationError("rrule", f"FREQ must be one of {', '.join(_FREQUENCIES)}")
        if not _fires(rule, body, start):
            raise ValidationError("rrule", "the rule never starts a window from 'start' on")
        # dateutil counts a rule's starts from its first, so a question about today on a
        # rule from long ago would walk every start since. The rule is read instead from
        # a later first start on the rule's own beat (the first day of a day, week,
        # month or year it runs in), with every default it took from 'start' made
        # explicit, so that it starts at the same times from there on (a COUNT becomes
        # the UNTIL of its last start). Each question then walks a bounded span.
        self._start, self._frequency = start, frequency.group(1)
        interval = _INTERVAL.search(body.upper())
        self._interval = int(interval.group(1)) if interval else 1
        wkst = re.search(r"(?:^|;)WKST=([A-Z]{2})", body.upper())
        self._wkst = _WEEKDAYS.index(wkst.group(1)) if wkst else 0
        last = _last(rule, body, start)
        ending: dict[str, Any] = {"count": None, "until": last} if last is not None else {}
        self._rule = rule.replace(**ending, **_defaults(names, self._frequency, start))

    def before(self, wall: dt.datetime) -> Iterator[dt.datetime]:
        # The starts from a little before ``wall``; further back while none is more
        # than the slack before it, up to a duration before (an earlier start has ended).
        back = dt.timedelta(days=2)
        while True:
            since = self._anchor(_minus(wall, 2 * _SLACK + back))
            starts: list[dt.datetime] = []
            for following in self._rule.replace(dtstart=since):  # bounded: at most a minute apart
                if following > wall:
                    break
                starts.append(following)
            if since == self._start or back > MAX_DURATION or (starts and starts[0] < _minus(wall, 2 * _SLACK)):
                return reversed(starts)
            back *= 4

    def _anchor(self, wall: dt.datetime) -> dt.datetime:
        """The latest first day of a period the rule runs in at or before ``wall``, and
        after ``start`` (else ``start``): from there it starts at the same times."""
        start, every, day = self._start, self._interval, wall.date()
        if self._frequency == "YEARLY":
            steps = (day.year - start.year) // every
            first = dt.date(start.year + steps * every, 1, 1) if steps > 0 else None
        elif self._frequency == "MONTHLY":
            steps = ((day.year - start.year) * 12 + day.month - start.month) // every
            month = start.month - 1 + steps * every
            first = dt.date(start.year + month // 12, month % 12 + 1, 1) if steps > 0 else None
        else:
            days = every * (7 if self._frequency == "WEEKLY" else 1)
            week = start.weekday() - self._wkst if self._frequency == "WEEKLY" else 0
            origin = start.date() - dt.timedelta(days=week % 7)
            steps = (day - origin).days // days
            first = origin + dt.timedelta(days=steps * days) if steps > 0 else None
        return dt.datetime.combine(first, dt.time()) if first is not None else start


_WEEKDAYS: Final = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_MAX_COUNT: Final = 10_000
"""The most starts a COUNT may give (more: use UNTIL): its last is found when the
window is made."""


def _defaults(names: collections.Counter[str], frequency: str, start: dt.datetime) -> dict[str, Any]:
    """What dateutil takes from the rule's first start when the rule does not say
    (RFC 5545: the time of day, and the day of the year, month or week), explicit."""
    given: dict[str, Any] = {}
    for part, value in (("BYHOUR", start.hour), ("BYMINUTE", start.minute), ("BYSECOND", start.second)):
        if part not in names:
            given[part.lower()] = value
    if not names.keys() & {"BYWEEKNO", "BYYEARDAY", "BYMONTHDAY", "BYDAY", "BYEASTER"}:
        if frequency == "YEARLY" and "BYMONTH" not in names:
            given["bymonth"] = start.month
        if frequency in ("YEARLY", "MONTHLY"):
            given["bymonthday"] = start.day
        elif frequency == "WEEKLY":
            given["byweekday"] = start.weekday()
    return given


def _last(rule: Any, body: str, start: dt.datetime) -> dt.datetime | None:
    """The last of the rule's COUNT starts (None: it has no COUNT), looked for within
    one calendar cycle of ``start`` (bounded work), which a COUNT of at most
    ``_MAX_COUNT`` starts reaches unless the rule starts very rarely."""
    count = re.search(r"(?:^|;)COUNT=(\d+)", body.upper())
    if count is None:
        return None
    if len(count.group(1)) > 5 or int(count.group(1)) > _MAX_COUNT:
        raise ValidationError("rrule", f"COUNT must be at most {_MAX_COUNT}: give UNTIL instead")
    interval = _INTERVAL.search(body.upper())
    span = _CYCLE * (int(interval.group(1)) if interval else 1)
    bound = start.replace(year=min(dt.MAXYEAR, start.year + span), month=1, day=1)
    starts: list[dt.datetime] = list(itertools.islice(rule.replace(count=None, until=bound), int(count.group(1))))
    if len(starts) < int(count.group(1)) and bound.year < dt.MAXYEAR:
        raise ValidationError("rrule", "its COUNT takes more than 400 years: give UNTIL instead")
    return starts[-1]


def _minus(wall: dt.datetime, delta: dt.timedelta) -> dt.datetime:
    """``wall - delta``, or the earliest time there is."""
    return wall - delta if wall - dt.datetime.min > delta else dt.datetime.min


_CYCLE: Final = 400
"""Years after which the Gregorian calendar repeats, weekdays and leap days alike."""


def _fires(rule: Any, body: str, start: dt.datetime) -> bool:
    """Whether ``rule`` starts a window at ``start`` or later, in bounded work.

    dateutil looks for a rule's next start up to the year 9999, however long that
    takes: seconds for a daily rule that never fires (February 30th). The rule's
    calendar repeats every ``_CYCLE`` × INTERVAL years, so it fires at all if it
    fires within one such span: asked of the same rule (without COUNT or UNTIL) from
    as late a start as leaves one span before 9999, the search ends there. Then the
    rule itself, which fires within a span of its start (or ended), is asked."""
    interval = _INTERVAL.search(body.upper())
    cycle = _CYCLE * (int(interval.group(1)) if interval else 1)
    spans = (dt.MAXYEAR - cycle - start.year) // cycle
    if spans > 0:
        later = start.replace(year=start.year + spans * cycle)
        if rule.replace(dtstart=later, count=None, until=None).after(later, inc=True) is None:
            return False
    return rule.after(start, inc=True) is not None


class _Cron:
    """A cron expression (five fields, as crontab(5) has them), through ``cronsim``."""

    def __init__(self, text: str) -> None:
        try:
            from cronsim import CronSim, CronSimError
        except ImportError as e:
            raise _missing("cron", e) from e
        if len(text.split()) != 5:  # cronsim also reads a sixth field, of seconds
            raise ValidationError("cron", "give five fields (minute hour day month weekday)")
        try:
            CronSim(text, dt.datetime(2000, 1, 1))
        except CronSimError as e:
            raise ValidationError("cron", f"not a cron expression: {shown(str(e), 60)}") from None
        self._text = text
        self._cron = CronSim

    def before(self, wall: dt.datetime) -> Iterator[dt.datetime]:
        # cronsim counts back from a time excluded; the second after ``wall`` includes it.
        return iter(self._cron(self._text, wall + dt.timedelta(seconds=1), reverse=True))


def _names(value: object, field: str, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValidationError(field, f"expected a list of {what} names, got {shown(value)}")
    names = tuple(value)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValidationError(f"{field}[{i}]", f"must be a non-blank string, got {shown(name)}")
    if len(set(names)) != len(names):
        raise ValidationError(field, f"names a {what} twice")
    return names


def _environments(value: object) -> tuple[str, ...]:
    return _names(value, "environments", "environment")


def _services(value: object) -> tuple[str, ...]:
    return _names(value, "services", "service")


def _duration(value: object) -> dt.timedelta:
    return parse_duration(value, "duration")


def _zone(_: object, __: object, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("timezone", f"expected an IANA time zone such as 'Europe/Berlin', got {shown(value)}")
    # Only the zones the IANA database names, spelled as it does: not a file that
    # ZoneInfo would also read ("localtime", this machine's zone; "right/UTC", with leap
    # seconds; "europe/berlin" on a file system ignoring case), which workers elsewhere
    # would read otherwise.
    if value == "localtime" or value not in _available():
        raise ValidationError("timezone", f"unknown IANA time zone {shown(value)}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # pragma: no cover - listed, yet unreadable
        raise ValidationError("timezone", f"unknown IANA time zone {shown(value)}") from None


@functools.cache
def _available() -> frozenset[str]:
    return frozenset(available_timezones())


def _start(value: object) -> dt.datetime | None:
    if value is None or (isinstance(value, dt.datetime) and value.tzinfo is None):
        return value
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time())
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                "start", f"expected a local time such as '2026-12-18T18:00', got {shown(value)}"
            ) from None
        return _start(parsed)
    if isinstance(value, dt.datetime):
        raise ValidationError("start", "give the local time without an offset: the window's timezone says which")
    raise ValidationError("start", f"expected a local time such as '2026-12-18T18:00', got {shown(value)}")


def _text(field: str, optional: bool = True) -> Any:
    def check(_: object, __: object, value: object) -> None:
        if (value is not None or not optional) and (not isinstance(value, str) or not value.strip()):
            raise ValidationError(field, f"must be a non-blank string, got {shown(value)}")

    return check


@attrs.frozen(weakref_slot=False, repr=False)
class FreezeWindow:
    """A recurring freeze: from each start of its schedule, for ``duration`` (on the
    wall clock of ``timezone``), deployments to ``environments`` (of ``services``;
    none named: every service) are held, and announced when it ends.

    The schedule is either ``rrule`` (an RFC 5545 RRULE such as
    ``"FREQ=WEEKLY;BYDAY=FR"``; FREQ daily or less often) with ``start``, its
    DTSTART as a local time in ``timezone``; or ``cron`` (``"0 18 * * 5"``). Making
    one needs the ``freeze`` extra (``ValidationError`` naming it otherwise).
    """

    name: str = attrs.field(validator=_text("name", optional=False))
    environments: tuple[str, ...] = attrs.field(converter=_environments)
    duration: dt.timedelta = attrs.field(converter=_duration)
    timezone: str = attrs.field(validator=_zone)
    rrule: str | None = attrs.field(default=None, kw_only=True, validator=_text("rrule"))
    start: dt.datetime | None = attrs.field(default=None, kw_only=True, converter=_start)
    cron: str | None = attrs.field(default=None, kw_only=True, validator=_text("cron"))
    services: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=_services)
    _schedule: _Schedule = attrs.field(init=False, repr=False, eq=False, alias="_schedule")
    _zone: ZoneInfo = attrs.field(init=False, repr=False, eq=False, alias="_zone")

    def __attrs_post_init__(self) -> None:
        if not self.environments:
            raise ValidationError("environments", "name at least one environment the window freezes")
        schedule: _Schedule
        if (self.rrule is None) == (self.cron is None):
            raise ValidationError("rrule", "give either 'rrule' (with 'start') or 'cron'")
        if self.rrule is not None:
            if self.start is None:
                raise ValidationError("start", "an 'rrule' needs its first start, as a local time")
            schedule = _RRule(self.rrule, self.start)
        else:
            if self.start is not None:
                raise ValidationError("start", "a 'cron' schedule has no start: its expression says when")
            schedule = _Cron(str(self.cron))
        object.__setattr__(self, "_schedule", schedule)
        object.__setattr__(self, "_zone", ZoneInfo(self.timezone))

    def __repr__(self) -> str:
        when = f"rrule={self.rrule!r}, start={self.start!r}" if self.rrule is not None else f"cron={self.cron!r}"
        return f"FreezeWindow({self.name!r}, {when}, duration={self.duration!r}, timezone={self.timezone!r})"

    def covers(self, service_id: str, environment: str) -> bool:
        """Whether the window freezes ``environment`` of the service ``service_id``."""
        return environment in self.environments and (not self.services or service_id in self.services)

    def _real(self, wall: dt.datetime) -> dt.datetime:
        """A wall time in the window's zone as a UTC time (a skipped time: as if the
        clocks had not yet gone forward; a repeated one: its first occurrence)."""
        return wall.replace(tzinfo=self._zone, fold=0).astimezone(_UTC)

    def until(self, at: dt.datetime) -> dt.datetime | None:
        """The end of the window's occurrence that covers ``at`` (aware), in UTC, or
        None: ``at`` is in none. Occurrences of one window may overlap: the latest
        to have started ends last. Within hours of the ends of the calendar (years
        1 and 9999), where its starts or end cannot be written, it is in none."""
        try:
            return self._until(at)
        except OverflowError:  # a time of year 1 or 9999 moved past the calendar's end
            return None

    def _until(self, at: dt.datetime) -> dt.datetime | None:
        wall = at.astimezone(self._zone).replace(tzinfo=None)
        latest: tuple[dt.datetime, dt.datetime] | None = None  # (start, as on the wall)
        for wall_start in itertools.islice(self._schedule.before(wall + _SLACK), _MAX_CANDIDATES):
            start = self._real(wall_start)
            if start <= at and (latest is None or start > latest[0]):
                latest = (start, wall_start)
            if wall_start < wall - _SLACK:  # every earlier start is earlier in real time too
                break
        if latest is None:
            return None
        # The duration runs on the wall clock from when the window really began (a
        # start in the skipped hour begins after it, and lasts its whole duration).
        end = self._real(latest[0].astimezone(self._zone).replace(tzinfo=None) + self.duration)
        return end if end > at else None


@attrs.frozen(weakref_slot=False)
class Freeze:
    """A freeze in force: the ``window`` covering the moment asked about, and when the
    freeze ends (``until``, UTC), counting the windows that follow without a gap."""

    window: str
    until: dt.datetime


def frozen(windows: Sequence[FreezeWindow], at: dt.datetime) -> Freeze | None:
    """The freeze ``windows`` put in force at ``at`` (aware), or None. Its end is
    the freeze as a person sees it: when a window overlaps the next one or ends as
    the next starts, the freeze lasts until the last of them ends (at most
    ``MAX_CHAIN`` windows on)."""
    holding: tuple[dt.datetime, str] | None = None
    for window in windows:
        end = window.until(at)
        if end is not None and (holding is None or end > holding[0]):
            holding = (end, window.name)
    if holding is None:
        return None
    until, name = holding
    for _ in range(MAX_CHAIN):
        later = max((end for window in windows if (end := window.until(until)) is not None), default=None)
        if later is None:
            break
        until = later
    return Freeze(name, until)
