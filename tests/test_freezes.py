"""Freeze windows (SPEC §11, docs/gates.md): the schedule read on the wall clock of
its time zone (daylight-saving changes included), the catalog, and the gate on
every backend — held, announced when the window ends (a durable timer), let
through by ``OverrideFreeze``, never interrupting a started deployment."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    CatalogError,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    DeploymentState,
    Environment,
    FlowEngine,
    FlowState,
    Freeze,
    FreezeWindow,
    HeldPayload,
    HookEvent,
    InvalidTransition,
    OverrideFreeze,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    ResumeFlow,
    RetryDeployment,
    Service,
    SteeringPayload,
    TimerKind,
    ValidationError,
)
from flowfsm.converter import structure, unstructure
from flowfsm.emitters import RecordingEmitter
from flowfsm.freezes import MAX_CHAIN, frozen
from flowfsm.model import Flow
from flowfsm.protocols import Repository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock, SequentialIds
from tests.conftest import two_actions
from tests.test_cli import Cli, cli

__all__ = ["cli"]  # the fixture: a command line (memory, SQLite, PostgreSQL: conftest's make_repository)

UTC = dt.UTC
BERLIN = "Europe/Berlin"
ARTIFACT = Artifact("com.acme", "api", "1.0.0")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def weekend(**kwargs: object) -> FreezeWindow:
    """Every Friday 18:00 for 64h (to Monday 10:00), Berlin time, in prod."""
    return FreezeWindow("weekend", ["prod"], "64h", BERLIN, **{"cron": "0 18 * * 5", **kwargs})  # type: ignore[arg-type]  # test helper


# --- the schedule, on the wall clock of its zone ------------------------------------------

# 2026: summer time ends on Sunday 25 October (03:00 CEST → 02:00 CET); 2027: it begins
# on Sunday 28 March (02:00 CET → 03:00 CEST).
WEEKLY = [
    weekend(),
    weekend(cron=None, rrule="FREQ=WEEKLY;BYDAY=FR", start="2026-01-02T18:00"),
]


@pytest.mark.parametrize("window", WEEKLY, ids=["cron", "rrule"])
@pytest.mark.parametrize(
    ("friday", "start", "end"),
    [
        # Summer time all weekend: 18:00 CEST is 16:00 UTC; Monday 10:00 CEST is 08:00 UTC.
        (utc(2026, 10, 16), utc(2026, 10, 16, 16), utc(2026, 10, 19, 8)),
        # The clocks go back on Sunday: it still ends on Monday at 10:00, now CET (09:00 UTC).
        (utc(2026, 10, 23), utc(2026, 10, 23, 16), utc(2026, 10, 26, 9)),
        # Winter time: 18:00 CET is 17:00 UTC.
        (utc(2026, 10, 30), utc(2026, 10, 30, 17), utc(2026, 11, 2, 9)),
        # The clocks go forward on Sunday: it starts at 18:00 CET, ends at 10:00 CEST.
        (utc(2027, 3, 26), utc(2027, 3, 26, 17), utc(2027, 3, 29, 8)),
        (utc(2027, 4, 2), utc(2027, 4, 2, 16), utc(2027, 4, 5, 8)),
    ],
)
def test_a_weekly_window_keeps_its_local_hours_across_daylight_saving_changes(
    window: FreezeWindow, friday: dt.datetime, start: dt.datetime, end: dt.datetime
) -> None:
    second = dt.timedelta(seconds=1)
    assert friday < start
    assert window.until(start - second) is None
    assert window.until(start) == end
    assert window.until(end - second) == end
    assert window.until(end) is None
    assert frozen([window], start + dt.timedelta(hours=30)) == Freeze("weekend", end)


@pytest.mark.parametrize(
    "window",
    [
        FreezeWindow("night", ["prod"], "1h", BERLIN, cron="30 2 * * *"),
        FreezeWindow("night", ["prod"], "1h", BERLIN, rrule="FREQ=DAILY", start="2027-03-01T02:30"),
    ],
    ids=["cron", "rrule"],
)
def test_a_start_in_the_skipped_hour_begins_as_the_clocks_go_forward(window: FreezeWindow) -> None:
    # 28 March 2027: 02:30 does not exist in Berlin. The window starts an hour after
    # 02:00 CET, which is 03:30 CEST (01:30 UTC), and lasts its hour on the wall: to 04:30 CEST.
    assert window.until(utc(2027, 3, 28, 1, 29)) is None
    assert window.until(utc(2027, 3, 28, 1, 30)) == utc(2027, 3, 28, 2, 30)
    # The days around it: 02:30 CET (01:30 UTC) before, 02:30 CEST (00:30 UTC) after.
    assert window.until(utc(2027, 3, 27, 1, 30)) == utc(2027, 3, 27, 2, 30)
    assert window.until(utc(2027, 3, 29, 0, 30)) == utc(2027, 3, 29, 1, 30)


@pytest.mark.parametrize(
    "window",
    [
        FreezeWindow("night", ["prod"], "1h", BERLIN, cron="30 2 * * *"),
        FreezeWindow("night", ["prod"], "1h", BERLIN, rrule="FREQ=DAILY", start="2026-10-01T02:30"),
    ],
    ids=["cron", "rrule"],
)
def test_a_start_in_the_repeated_hour_begins_at_its_first_occurrence(window: FreezeWindow) -> None:
    # 25 October 2026: 02:30 happens twice in Berlin, at 00:30 UTC (CEST) and 01:30 UTC (CET).
    # The window starts at the first, once, and ends at 03:30 on the wall (CET): 02:30 UTC.
    assert window.until(utc(2026, 10, 25, 0, 29)) is None
    assert window.until(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 2, 30)
    assert window.until(utc(2026, 10, 25, 1, 45)) == utc(2026, 10, 25, 2, 30)
    assert window.until(utc(2026, 10, 25, 2, 30)) is None


def test_back_to_back_and_overlapping_windows_make_one_freeze() -> None:
    holidays = FreezeWindow(
        "holidays", ["prod"], "7d", BERLIN, rrule="FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=20", start="2026-12-20T00:00"
    )
    new_year = FreezeWindow(  # starts as holidays ends (27 Dec 00:00), to 2 January 00:00
        "new-year", ["prod"], "6d", BERLIN, rrule="FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=27", start="2026-12-27T00:00"
    )
    overlap = FreezeWindow("inventory", ["prod"], "3d", BERLIN, cron="0 12 31 12 *")  # 31 Dec 12:00 to 3 Jan 12:00
    at = utc(2026, 12, 22)
    assert frozen([holidays], at) == Freeze("holidays", utc(2026, 12, 26, 23))
    assert frozen([holidays, new_year], at) == Freeze("holidays", utc(2027, 1, 1, 23))
    assert frozen([new_year, overlap, holidays], at) == Freeze("holidays", utc(2027, 1, 3, 11))
    assert frozen([holidays, new_year, overlap], utc(2027, 1, 2, 12)) == Freeze("inventory", utc(2027, 1, 3, 11))
    assert frozen([holidays, new_year, overlap], utc(2027, 1, 3, 11)) is None


def test_a_schedule_that_never_leaves_a_gap_is_answered_in_bounded_work() -> None:
    always = FreezeWindow("always", ["prod"], "2h", "UTC", cron="0 * * * *")
    freeze = frozen([always], utc(2026, 1, 1))
    assert freeze is not None
    # Each step of the chain reaches two hours further: it stops after MAX_CHAIN of them.
    assert freeze.until == utc(2026, 1, 1, 2) + dt.timedelta(hours=2 * MAX_CHAIN)


def test_a_window_from_long_ago_answers_quickly() -> None:
    import time

    old = FreezeWindow("old", ["prod"], "8h", BERLIN, rrule="FREQ=DAILY", start="1970-01-01T20:00")
    began = time.perf_counter()
    assert old.until(utc(2026, 7, 1, 19)) == utc(2026, 7, 2, 2)
    assert old.until(utc(2026, 7, 2, 12)) is None
    assert time.perf_counter() - began < 2.0


@pytest.mark.parametrize(
    ("rule", "start", "at", "until"),
    [
        ("FREQ=DAILY", "1900-01-01T20:00", utc(2026, 7, 1, 19), utc(2026, 7, 2, 2)),
        ("FREQ=WEEKLY;INTERVAL=2;BYDAY=WE;WKST=SU", "1900-01-03T20:00", utc(2026, 7, 1, 19), utc(2026, 7, 2, 2)),
        ("FREQ=MONTHLY;BYDAY=-1WE", "1900-01-31T20:00", utc(2026, 6, 24, 19), utc(2026, 6, 25, 2)),
        ("FREQ=YEARLY;BYMONTH=7;BYMONTHDAY=1", "1900-01-01T20:00", utc(2026, 7, 1, 19), utc(2026, 7, 2, 2)),
        ("FREQ=DAILY;COUNT=3", "1900-01-01T20:00", utc(1900, 1, 3, 20), utc(1900, 1, 4, 3)),
    ],
)
def test_a_question_on_a_window_from_long_ago_walks_a_bounded_span(
    monkeypatch: pytest.MonkeyPatch, rule: str, start: str, at: dt.datetime, until: dt.datetime
) -> None:
    from dateutil import rrule as dateutil_rule

    walked = 0
    iterate = dateutil_rule.rrule._iter  # type: ignore[attr-defined]  # dateutil's own walk over a rule's starts

    def counted(self: Any) -> Any:
        nonlocal walked
        for each in iterate(self):
            walked += 1
            yield each

    monkeypatch.setattr(dateutil_rule.rrule, "_iter", counted)
    window = FreezeWindow("old", ["prod"], "8h", BERLIN, rrule=rule, start=start)
    assert window.until(at) == until
    assert window.until(at + dt.timedelta(hours=12)) is None
    # Not every start since 1900 (more than 46,000 of them for the daily rule).
    assert walked < 200


def test_a_rule_with_a_long_interval_starts_only_on_its_own_beat() -> None:
    # Every million days: once, in 1990. Read from a later day, it must not start there.
    once = FreezeWindow("once", ["prod"], "3d", "UTC", rrule="FREQ=DAILY;INTERVAL=1000000", start="1990-01-01T12:00")
    assert once.until(utc(1990, 1, 2, 12)) == utc(1990, 1, 4, 12)
    assert once.until(utc(2026, 7, 1, 12, 30)) is None


def test_a_rule_that_ended_freezes_nothing_after() -> None:
    window = FreezeWindow("once", ["prod"], "1d", "UTC", rrule="FREQ=DAILY;COUNT=2", start="2026-01-01T00:00")
    assert window.until(utc(2026, 1, 2, 12)) == utc(2026, 1, 3)
    assert window.until(utc(2030, 1, 1)) is None


# --- declaring windows ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown IANA time zone"),
        ({"timezone": "../../etc/passwd"}, "timezone", "unknown IANA time zone"),
        ({"cron": "61 * * * *"}, "cron", "not a cron expression"),
        ({"cron": None}, "rrule", "either 'rrule'"),
        ({"rrule": "FREQ=DAILY"}, "rrule", "either 'rrule'"),
        ({"cron": None, "rrule": "FREQ=DAILY"}, "start", "needs its first start"),
        ({"cron": None, "rrule": "FREQ=SOMETIMES", "start": "2026-01-01"}, "rrule", "not an RFC 5545"),
        ({"cron": None, "rrule": "FREQ=MINUTELY", "start": "2026-01-01"}, "rrule", "FREQ must be"),
        ({"cron": None, "rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "start": "2026-01-01"}, "rrule", "never"),
        ({"cron": None, "rrule": "FREQ=DAILY;BYMONTH=4;BYMONTHDAY=31", "start": "2026-01-01"}, "rrule", "never"),
        ({"cron": None, "rrule": "DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "start": "2026-01-01"}, "rrule", "alone"),
        ({"cron": None, "rrule": "FREQ=YEARLY;UNTIL=20200101T000000", "start": "2026-01-01"}, "rrule", "never"),
        ({"cron": None, "rrule": "FREQ=DAILY", "start": "2026-01-01T00:00+01:00"}, "start", "without an offset"),
        ({"start": "2026-01-01"}, "start", "no start"),
        ({"duration": "0s"}, "duration", "more than zero"),
        ({"duration": "2y"}, "duration", "not a duration"),
        # A second FREQ, read by dateutil instead of the first: a rule starting every second.
        ({"cron": None, "rrule": "FREQ=DAILY;FREQ=SECONDLY", "start": "2026-01-01"}, "rrule", "FREQ twice"),
        ({"cron": None, "rrule": "FREQ=DAILY;INTERVAL=0", "start": "2026-01-01"}, "rrule", "INTERVAL"),
        # Starts more often than once a minute: a freeze, not a schedule of instants.
        ({"cron": None, "rrule": "FREQ=DAILY;BYSECOND=0,30", "start": "2026-01-01"}, "rrule", "BYSECOND"),
        ({"cron": "* * * * * */10"}, "cron", "five fields"),
        (
            {"cron": None, "rrule": "FREQ=DAILY;COUNT=2;UNTIL=20300101T000000", "start": "2026-01-01"},
            "rrule",
            "not both",
        ),
        ({"cron": None, "rrule": "FREQ=DAILY;COUNT=10001", "start": "2026-01-01"}, "rrule", "COUNT must be"),
        # Monday 29 February: a few times a century.
        (
            {"cron": None, "rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;COUNT=99", "start": "2026-01-01"},
            "rrule",
            "400",
        ),
        ({"timezone": "Europe/" + "x" * 300}, "timezone", "unknown IANA time zone"),
        ({"timezone": "localtime"}, "timezone", "unknown IANA time zone"),
        ({"timezone": "right/UTC"}, "timezone", "unknown IANA time zone"),  # counts leap seconds: 27s off
        ({"timezone": "posixrules"}, "timezone", "unknown IANA time zone"),
    ],
)
def test_a_bad_window_is_refused_naming_the_field(changes: dict[str, object], field: str, message: str) -> None:
    given: dict[str, object] = {"cron": "0 18 * * 5", **changes}
    kwargs = {k: v for k, v in given.items() if v is not None}
    with pytest.raises(ValidationError) as caught:
        FreezeWindow("weekend", ["prod"], kwargs.pop("duration", "64h"), kwargs.pop("timezone", BERLIN), **kwargs)  # type: ignore[arg-type]  # test input
    assert caught.value.field == field
    assert message in caught.value.message


def service(service_id: str = "svc", **kwargs: object) -> Service:
    return Service(
        service_id,
        ["com.acme:api"],
        Pipeline("p", [Environment("dev", ["smoke"]), Environment("prod", ["smoke"])]),
        webhooks=[two_actions(f"wh-{e.value}", e) for e in HookEvent],
        **kwargs,  # type: ignore[arg-type]  # test helper
    )


def test_a_catalog_gives_each_window_to_the_services_it_covers() -> None:
    everyone = weekend()
    only_api = FreezeWindow("api-freeze", ["dev"], "1h", "UTC", cron="0 0 * * *", services=["api"])
    catalog = Catalog([service("api"), service("web")], freezes=[everyone, only_api])
    assert catalog.freezes == (everyone, only_api)
    assert catalog.get("api").freezes == (everyone, only_api)
    assert catalog.get("web").freezes == (everyone,)
    assert catalog.get("web").timed
    assert not service("web").timed
    assert "freezes" not in unstructure(catalog.get("api"))  # declared once, at the top of a catalog


@pytest.mark.parametrize(
    ("window", "field", "message"),
    [
        (FreezeWindow("w", ["qa"], "1h", "UTC", cron="0 0 * * *"), "freezes[0].environments[0]", "'qa'"),
        (FreezeWindow("w", ["prod"], "1h", "UTC", cron="0 0 * * *", services=["nope"]), "freezes[0].services[0]", ""),
        ("weekend", "freezes[0]", "expected a FreezeWindow"),
    ],
)
def test_a_window_naming_nothing_in_the_catalog_is_refused(window: object, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Catalog([service()], freezes=[window])  # type: ignore[list-item]  # test input
    assert caught.value.field == field
    assert message in caught.value.message


def test_two_windows_of_one_name_are_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate freeze window 'weekend'"):
        Catalog([service()], freezes=[weekend(), weekend(cron="0 9 * * 1")])


SERVICE_JSON = {
    "id": "svc",
    "artifacts": ["com.acme:api"],
    "pipeline": {"name": "p", "environments": [{"name": "dev"}, {"name": "prod"}]},
}
WINDOW_JSON = {
    "name": "holidays",
    "rrule": "FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=20",
    "start": "2026-12-20T00:00:00",
    "duration": "8d",
    "timezone": BERLIN,
    "environments": ["prod"],
}


def write(tmp_path: Path, suffix: str, data: dict[str, object]) -> Path:
    """The catalog ``data`` as a file of the format ``suffix``."""
    path = tmp_path / f"catalog{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    elif suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(_toml(data))
    return path


def _toml(data: dict[str, object]) -> str:
    """Just enough TOML for these catalogs: arrays of tables of plain values, lists and inline tables."""

    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines: list[str] = []
    for key, tables in data.items():
        for table in tables:  # type: ignore[attr-defined]  # lists of dicts
            lines.append(f"[[{key}]]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_a_catalog_file_declares_windows_at_the_top(tmp_path: Path, suffix: str) -> None:
    catalog = Catalog.from_file(write(tmp_path, suffix, {"services": [SERVICE_JSON], "freezes": [WINDOW_JSON]}))
    (window,) = catalog.freezes
    assert window == FreezeWindow(
        "holidays", ["prod"], "8d", BERLIN, rrule="FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=20", start="2026-12-20T00:00"
    )
    assert catalog.get("svc").freeze("prod", utc(2026, 12, 24)) == Freeze("holidays", utc(2026, 12, 27, 23))
    assert catalog.get("svc").freeze("dev", utc(2026, 12, 24)) is None


def test_a_toml_local_time_is_a_start(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        _toml({"services": [SERVICE_JSON]})
        + '[[freezes]]\nname = "h"\nrrule = "FREQ=YEARLY"\nstart = 2026-12-20T00:00:00\n'
        + 'duration = "8d"\ntimezone = "Europe/Berlin"\nenvironments = ["prod"]\n'
    )
    (window,) = Catalog.from_file(path).freezes
    assert window.start == dt.datetime(2026, 12, 20)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"timezone": "Europe/Atlantis"}, "$.freezes[0].timezone", "unknown IANA time zone"),
        ({"environments": ["qa"]}, "$.freezes[0].environments[0]", "no service it covers"),
        ({"services": ["web"]}, "$.freezes[0].services[0]", "no service 'web'"),
        ({"duration": "forever"}, "$.freezes[0].duration", "not a duration"),
        ({"rrule": "FREQ=WEEKLY;BYDAY=XX"}, "$.freezes[0].rrule", "not an RFC 5545"),
        ({"start": "tomorrow"}, "$.freezes[0].start", "expected a local time"),
        ({"cron": "0 18 * * 5"}, "$.freezes[0].rrule", "either 'rrule'"),
        ({"timeZone": "UTC"}, "$.freezes[0]", "unknown key(s) 'timeZone'"),
        ({"name": ""}, "$.freezes[0].name", "non-blank"),
    ],
)
def test_a_bad_window_in_a_catalog_file_names_the_file_and_path(
    tmp_path: Path, suffix: str, change: dict[str, object], path: str, message: str
) -> None:
    source = write(tmp_path, suffix, {"services": [SERVICE_JSON], "freezes": [{**WINDOW_JSON, **change}]})
    with pytest.raises(CatalogError) as caught:
        Catalog.from_file(source)
    assert (caught.value.source, caught.value.path) == (str(source), path)
    assert message in caught.value.message
    assert str(source) in str(caught.value)


@pytest.mark.parametrize("module", ["dateutil", "cronsim"])
def test_a_window_without_the_extra_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as if not installed
    window = WINDOW_JSON if module == "dateutil" else {**WINDOW_JSON, "rrule": "x", "start": "x"}
    window = {k: v for k, v in window.items() if module == "dateutil" or k not in ("rrule", "start")}
    if module == "cronsim":
        window["cron"] = "0 18 * * 5"
    source = write(tmp_path, ".json", {"services": [SERVICE_JSON], "freezes": [window]})
    with pytest.raises(CatalogError) as caught:
        Catalog.from_file(source)
    assert "pip install flowfsm[freeze]" in caught.value.message
    assert caught.value.path == f"$.freezes[0].{'rrule' if module == 'dateutil' else 'cron'}"
    # A catalog without windows needs no extra.
    assert len(Catalog.from_file(write(tmp_path, ".toml", {"services": [SERVICE_JSON]}))) == 1


def test_a_held_payload_round_trips() -> None:
    payload = HeldPayload(
        ARTIFACT,
        structure(
            {"id": "d", "environment": "prod", "promotions": [], "state": "held"},
            __import__("flowfsm").Deployment,
        ),
        service().ref,
        Environment("prod"),
        "weekend",
        utc(2026, 10, 26, 9),
    )
    data = unstructure(payload)
    assert (data["window"], data["until"]) == ("weekend", "2026-10-26T09:00:00+00:00")
    assert structure(data, __import__("flowfsm.model", fromlist=["Payload"]).Payload) == payload


# --- the gate, on every backend -----------------------------------------------------------

FRIDAY_NOON = utc(2026, 10, 23, 10)  # 12:00 in Berlin; the weekend freeze starts at 16:00 UTC
FREEZE_STARTS = utc(2026, 10, 23, 16)
FREEZE_ENDS = utc(2026, 10, 26, 9)  # Monday 10:00 CET


class World:
    """An engine and a scheduler on one store, with a fake clock and the weekend window."""

    def __init__(self, repository: Repository, *windows: FreezeWindow, **service_kwargs: Any) -> None:
        self.clock = FakeClock(FRIDAY_NOON)
        self.repository = repository
        self.emitter = RecordingEmitter()
        self.catalog = Catalog([service(**service_kwargs)], freezes=windows or [weekend()])
        self.engine = FlowEngine(self.catalog, repository, self.emitter, clock=self.clock, id_factory=SequentialIds())
        self.scheduler = Scheduler(repository, self.engine, clock=self.clock)

    def start(self) -> Flow:
        (flow,) = self.engine.handle(ArtifactCreated(ARTIFACT)).flows
        return flow

    def flow(self, flow: Flow) -> Flow:
        return self.repository.get(flow.id)

    def deploy(self, flow: Flow, index: int) -> None:
        """The CD system deploys the flow's deployment ``index``; its checks pass."""
        deployment = self.flow(flow).deployments[index]
        self.engine.handle(DeploymentStarted(deployment.id))
        self.engine.handle(DeploymentCompleted(deployment.id))
        (promotion,) = deployment.promotions
        result = PromotionResult(promotion.id, ResultStatus.PASSED)
        self.engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))

    def events(self) -> list[HookEvent]:
        return [r.event for r in self.emitter.requests if r.action.name == "a1"]


@pytest.fixture
def world(make_repository: Callable[[], Repository]) -> World:
    return World(make_repository())


def held_in_prod(world: World) -> Flow:
    """A flow whose dev deployment succeeds during the weekend freeze: prod is held."""
    flow = world.start()
    world.clock.now = FREEZE_STARTS + dt.timedelta(hours=1)
    world.emitter.clear()
    world.deploy(flow, 0)
    return world.flow(flow)


def test_a_flow_reaching_a_frozen_environment_is_held_until_the_window_ends(world: World) -> None:
    flow = held_in_prod(world)
    prod = flow.deployments[1]
    assert prod.state is DeploymentState.HELD
    assert world.events()[-2:] == [HookEvent.DEPLOYMENT_SUCCEEDED, HookEvent.DEPLOYMENT_HELD]
    assert HookEvent.DEPLOYMENT_CREATED not in world.events()[-2:]
    held = world.emitter.requests[-1].payload
    assert isinstance(held, HeldPayload)
    assert (held.window, held.until, held.deployment.state) == ("weekend", FREEZE_ENDS, DeploymentState.HELD)
    (timer,) = world.repository.timers(flow.id)
    assert (timer.kind, timer.deployment_id, timer.due) == (TimerKind.FREEZE, prod.id, FREEZE_ENDS)
    # It cannot start while held: the refusal names the gate.
    with pytest.raises(InvalidTransition, match="freeze window holds it"):
        world.engine.handle(DeploymentStarted(prod.id))
    (explained,) = world.engine.explain(flow.id)
    assert explained.kind == "freeze"
    assert explained.text == (
        "The deployment to 'prod' is held by freeze window 'weekend' until 2026-10-26 09:00:00 UTC;"
        " it is announced then."
    )
    assert (explained.until, explained.details["window"]) == (FREEZE_ENDS, "weekend")
    # The timer announces it once the window ends, as flowfsm.
    world.clock.now = FREEZE_ENDS - dt.timedelta(seconds=1)
    assert world.scheduler.run_once() == 0
    world.emitter.clear()
    world.clock.now = FREEZE_ENDS
    assert world.scheduler.run_once() == 1
    assert world.flow(flow).deployments[1].state is DeploymentState.NOT_STARTED
    assert world.events() == [HookEvent.DEPLOYMENT_CREATED]
    assert world.repository.timers(flow.id) == []
    entry = world.repository.history(flow.id)[-1]
    assert entry.actor == "flowfsm"
    assert [(c.from_, c.to) for c in entry.changes] == [("held", "notStarted")]
    world.deploy(flow, 1)
    assert world.flow(flow).state is FlowState.SUCCESS


def test_the_first_environment_may_be_frozen_when_the_flow_begins(make_repository: Callable[[], Repository]) -> None:
    world = World(make_repository(), FreezeWindow("all", ["dev", "prod"], "1h", "UTC", cron="0 10 * * *"))
    flow = world.start()
    assert flow.deployments[0].state is DeploymentState.HELD
    assert world.events() == [HookEvent.DEPLOYMENT_HELD]
    world.clock.advance(hours=1)
    assert world.scheduler.run_once() == 1
    assert world.events()[-1] is HookEvent.DEPLOYMENT_CREATED


def test_a_timer_held_by_a_window_survives_a_restart(make_repository: Callable[[], Repository]) -> None:
    world = World(make_repository())
    flow = held_in_prod(world)
    # Another process, on the same store, after the window ended.
    restarted = World(make_repository())
    restarted.clock.now = FREEZE_ENDS + dt.timedelta(minutes=5)
    assert restarted.scheduler.run_once() == 1
    assert restarted.flow(flow).deployments[1].state is DeploymentState.NOT_STARTED
    assert restarted.events() == [HookEvent.DEPLOYMENT_CREATED]


def test_override_freeze_lets_one_deployment_through(world: World) -> None:
    flow = held_in_prod(world)
    prod = flow.deployments[1]
    world.emitter.clear()
    world.engine.handle(OverrideFreeze(prod.id, "alice", reason="hotfix for INC-7"))
    after = world.flow(flow).deployments[1]
    assert (after.state, after.override) == (DeploymentState.NOT_STARTED, "alice")
    assert world.events() == [HookEvent.FREEZE_OVERRIDDEN, HookEvent.DEPLOYMENT_CREATED]
    payload = world.emitter.requests[0].payload
    assert isinstance(payload, SteeringPayload)
    assert (payload.actor, payload.reason) == ("alice", "hotfix for INC-7")
    assert world.repository.timers(flow.id) == []
    entry = world.repository.history(flow.id)[-1]
    assert (entry.actor, entry.reason, entry.trigger["type"]) == ("alice", "hotfix for INC-7", "OverrideFreeze")
    # The same override again is a duplicate; the deployment deploys during the freeze.
    assert world.engine.handle(OverrideFreeze(prod.id, "alice", reason="hotfix for INC-7")).duplicate
    world.deploy(flow, 1)
    assert world.flow(flow).state is FlowState.SUCCESS


def test_override_freeze_on_a_deployment_no_window_holds_is_refused(world: World) -> None:
    flow = world.start()
    with pytest.raises(InvalidTransition, match="no freeze window holds it") as caught:
        world.engine.handle(OverrideFreeze(flow.deployments[0].id, "alice", reason="just in case"))
    assert caught.value.trigger == "override_freeze"
    assert world.repository.history(flow.id)[-1].seq == 1


def test_an_override_covers_one_attempt_a_retry_is_held_again(make_repository: Callable[[], Repository]) -> None:
    world = World(make_repository(), failure_strategy="PAUSE")
    flow = held_in_prod(world)
    prod = flow.deployments[1]
    world.engine.handle(OverrideFreeze(prod.id, "alice", reason="hotfix"))
    world.engine.handle(DeploymentStarted(prod.id))
    world.engine.handle(DeploymentFailed(prod.id, reason="crashloop"))
    world.emitter.clear()
    world.engine.handle(RetryDeployment(prod.id, "alice", reason="again"))
    after = world.flow(flow).deployments[1]
    assert (after.state, after.attempt, after.override) == (DeploymentState.HELD, 2, None)
    assert world.events() == [HookEvent.DEPLOYMENT_RETRIED, HookEvent.FLOW_RESUMED, HookEvent.DEPLOYMENT_HELD]
    # The failure and the retry, delivered again while the retry is held: duplicates.
    assert world.engine.handle(DeploymentFailed(prod.id, reason="crashloop")).duplicate
    assert world.engine.handle(RetryDeployment(prod.id, "alice", reason="again")).duplicate


def test_a_freeze_never_interrupts_a_started_deployment(world: World) -> None:
    flow = world.start()
    world.deploy(flow, 0)
    prod = world.flow(flow).deployments[1]
    assert prod.state is DeploymentState.NOT_STARTED  # announced before the freeze
    world.engine.handle(DeploymentStarted(prod.id))
    world.clock.now = FREEZE_STARTS + dt.timedelta(hours=2)
    assert world.scheduler.run_once() == 0
    world.engine.handle(DeploymentCompleted(prod.id))
    (promotion,) = prod.promotions
    world.engine.handle(PromotionCompleted(prod.id, promotion.id, [PromotionResult(promotion.id, ResultStatus.PASSED)]))
    assert world.flow(flow).state is FlowState.SUCCESS
    assert HookEvent.DEPLOYMENT_HELD not in world.events()


def test_a_deployment_announced_before_the_freeze_may_still_start(world: World) -> None:
    flow = world.start()
    world.deploy(flow, 0)
    world.clock.now = FREEZE_STARTS + dt.timedelta(hours=2)
    prod = world.flow(flow).deployments[1]
    world.engine.handle(DeploymentStarted(prod.id))
    assert world.flow(flow).deployments[1].state is DeploymentState.STARTED


def test_a_freeze_ending_while_the_flow_is_paused_announces_on_resume(world: World) -> None:
    flow = held_in_prod(world)
    world.engine.handle(PauseFlow(flow.id, "bob", reason="investigating"))
    world.clock.now = FREEZE_ENDS
    assert world.scheduler.run_once() == 1
    assert world.flow(flow).deployments[1].state is DeploymentState.NOT_STARTED
    assert HookEvent.DEPLOYMENT_CREATED not in world.events()
    world.emitter.clear()
    world.engine.handle(ResumeFlow(flow.id, "bob"))
    assert world.events() == [HookEvent.FLOW_RESUMED, HookEvent.DEPLOYMENT_CREATED]


def test_a_freeze_ending_into_the_next_window_holds_again(make_repository: Callable[[], Repository]) -> None:
    early = FreezeWindow("early", ["prod"], "1h", "UTC", cron="0 17 * * *")  # 17:00-18:00 UTC
    later = FreezeWindow("later", ["prod"], "1h", "UTC", cron="30 17 * * *")  # 17:30-18:30 UTC
    world = World(make_repository(), early)
    flow = world.start()
    world.clock.now = utc(2026, 10, 23, 17, 10)
    world.deploy(flow, 0)
    (timer,) = world.repository.timers(flow.id)
    assert timer.due == utc(2026, 10, 23, 18)
    # The catalog changes while it is held: a window now runs on past the first.
    restarted = World(world.repository, early, later)
    restarted.clock.now = utc(2026, 10, 23, 18)
    assert restarted.scheduler.run_once() == 1
    assert restarted.flow(flow).deployments[1].state is DeploymentState.HELD
    assert restarted.events() == [HookEvent.DEPLOYMENT_HELD]
    (timer,) = restarted.repository.timers(flow.id)
    assert timer.due == utc(2026, 10, 23, 18, 30)


# --- the command line -------------------------------------------------------------------

ALWAYS = """
[[freezes]]
name = "always"
cron = "* * * * *"
duration = "1d"
timezone = "UTC"
environments = ["dev"]
"""


def test_override_freeze_from_the_command_line(cli: Cli) -> None:
    cli.catalog.write_text(cli.catalog.read_text() + ALWAYS)
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    dev = flow["deployments"][0]
    assert dev["state"] == "held"
    refused = cli("deployment-started", dev["id"])
    assert refused.returncode == 1
    assert "a freeze window holds it" in refused.stderr
    explained = cli("explain", flow["id"])
    assert "held by freeze window 'always' until" in explained.stdout
    missing = cli("override-freeze", dev["id"], "--actor", "alice")
    assert missing.returncode != 0
    assert "--reason" in missing.stderr
    done = cli.json("override-freeze", dev["id"], "--actor", "alice", "--reason", "hotfix")
    let_through = done["flows"][0]["deployments"][0]
    assert (let_through["state"], let_through["override"]) == ("notStarted", "alice")
    assert [r["event"] for r in done["hookRequests"]] == ["deployment-created"]
    assert cli.json("override-freeze", dev["id"], "--actor", "alice", "--reason", "hotfix")["duplicate"] is True
    unheld = cli("override-freeze", "nope", "--actor", "alice", "--reason", "x")
    assert unheld.returncode == 1
    assert "Traceback" not in unheld.stderr


def test_freezes_lists_the_windows_and_whether_each_holds(cli: Cli) -> None:
    cli.catalog.write_text(cli.catalog.read_text() + ALWAYS.replace("* * * * *", "0 18 * * 5"))
    listed = cli.json("freezes", "--at", "2026-10-23T18:30:00+00:00")
    (window,) = listed["freezes"]
    assert (window["name"], window["cron"], window["active"]) == ("always", "0 18 * * 5", True)
    assert window["until"] == "2026-10-24T18:00:00+00:00"
    assert cli.json("freezes", "--at", "2026-10-23T17:59:00Z")["freezes"][0]["active"] is False
    shown = cli("freezes", "--at", "2026-10-23T18:30:00+00:00")
    assert "always: cron 0 18 * * 5, 1d in UTC; dev: frozen until 2026-10-24 18:00:00 UTC" in shown.stdout
    naive = cli("freezes", "--at", "2026-10-23T18:30:00")
    assert naive.returncode == 1
    assert "--at" in naive.stderr


@pytest.mark.parametrize(
    "at", ["0001-01-01T00:00:00Z", "0001-01-01T05:00:00+14:00", "9999-12-31T23:59:00Z", "9999-12-31T20:00:00-10:00"]
)
def test_freezes_at_the_ends_of_the_calendar_answers_without_a_traceback(cli: Cli, at: str) -> None:
    cli.catalog.write_text(cli.catalog.read_text() + ALWAYS.replace("* * * * *", "0 18 * * 5"))
    answer = cli("freezes", "--at", at)
    assert (answer.returncode, answer.stderr) == (0, "")
    assert "always: cron 0 18 * * 5" in answer.stdout


def test_the_windows_in_the_docs_load(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "gates.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]
    (windows,) = [block for block in blocks if "[[freezes]]" in block]
    path = tmp_path / "catalog.toml"
    path.write_text(_toml({"services": [{**SERVICE_JSON, "id": "svc-api"}]}) + windows)
    catalog = Catalog.from_file(path)
    assert [w.name for w in catalog.freezes] == ["weekend", "holidays"]
    assert catalog.get("svc-api").freeze("prod", utc(2026, 12, 24)) == Freeze("holidays", utc(2026, 12, 28, 23))
