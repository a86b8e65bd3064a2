"""The ``flowfsm`` command: drive, inspect and picture flows from a terminal.

Needs the ``cli`` extra (Typer and Rich). Every command takes ``--store`` (a
SQLite file, or a ``postgresql://`` URL; default ``flowfsm.db`` here) and, where
it needs services, ``--catalog`` (default ``flowfsm.toml``); both also come from
``FLOWFSM_STORE`` and ``FLOWFSM_CATALOG``. ``--json`` prints what scripts parse.
Bad input prints one line, ``error: ...``, on standard error, exits 1 and writes
nothing; a usage mistake exits 2.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, Final, NoReturn
from urllib.parse import quote

import typer
from rich import box
from rich.console import Console
from rich.errors import ConsoleError
from rich.text import Text

from flowfsm.catalog import Catalog
from flowfsm.converter import parse_json, structure, unstructure
from flowfsm.dispatch import MAX_CONCURRENCY
from flowfsm.engine import FlowEngine
from flowfsm.errors import (
    ID_LIMIT,
    CatalogError,
    FlowFSMError,
    NotFound,
    RepositoryError,
    UnknownDeployment,
    UnknownFlow,
    ValidationError,
    bounded,
    shown,
)
from flowfsm.model import (
    Action,
    Artifact,
    DeliveryState,
    Flow,
    FlowState,
    HistoryEntry,
    HookRecord,
    PromotionResult,
    ResultStatus,
    check_json,
    text_problem,
)
from flowfsm.protocols import Repository
from flowfsm.repositories._common import MAX_PAGE, MAX_WAIT
from flowfsm.triggers import (
    AbortFlow,
    ApprovalGranted,
    ApprovalRejected,
    ArtifactCreated,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    Outcome,
    OverrideFreeze,
    PauseFlow,
    PromotionCompleted,
    ResumeFlow,
    RetryDeployment,
    RetryPromotion,
    SkipPromotion,
    Trigger,
)

if TYPE_CHECKING:
    from flowfsm.repositories import SQLiteRepository

__all__ = ["app"]

app = typer.Typer(
    name="flowfsm",
    help="Continuous-delivery flows as explicit state machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from flowfsm import __version__

        out.print(f"flowfsm {__version__}", markup=False)
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Continuous-delivery flows as explicit state machines."""


catalog_app = typer.Typer(help="Check catalog files.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
outbox_app = typer.Typer(
    help="The outbox: HookRequests pending or given up on, and endpoints turned off.", no_args_is_help=True
)
app.add_typer(outbox_app, name="outbox")

# No emoji codes: ":package:" in an artifact id is text. User data is printed as
# rich.text.Text (see _line), never as markup, where "[rc1]" would be a style.
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

Store = Annotated[
    str,
    typer.Option("--store", envvar="FLOWFSM_STORE", help="SQLite file, or a postgresql:// URL."),
]
CatalogFile = Annotated[
    Path,
    typer.Option("--catalog", envvar="FLOWFSM_CATALOG", help="Catalog file (.toml, .json, .yaml)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
FlowsAtOnce = Annotated[int, typer.Option("--concurrency", min=1, max=MAX_CONCURRENCY, help="Flows delivered at once.")]


# Characters a terminal acts on rather than shows: C0 and C1 controls (ESC, BEL, CSI,
# a newline), DEL, and the invisible format characters that reorder or hide text.
_UNSEEN: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with each character a terminal would act on (``\\x1b[2J`` clears the
    screen) written as its escape, ``\\x1b``: the one place the command makes text
    from input (ids, actors, reasons, details, messages) safe to print."""
    return _UNSEEN.sub(_escape, text)


def _line(*parts: str | Text | tuple[str, str]) -> Text:
    """One line of output from plain strings and (string, style) pairs. Nothing in it
    is read as markup, and control characters are shown escaped (``visible``), so
    ids, versions and messages print exactly as they are and one line stays one line."""
    return Text.assemble(
        *(visible(p) if isinstance(p, str) else (visible(p[0]), p[1]) if isinstance(p, tuple) else p for p in parts)
    )


def _fail(message: str) -> NoReturn:
    """``error: message`` on standard error, one line, and exit status 1."""
    err.print(_line(("error:", "bold red"), " ", " ".join(message.splitlines())), soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _reported() -> Iterator[None]:
    """flowfsm's errors become one line on standard error and exit status 1."""
    try:
        yield
    except CatalogError as e:  # the file's name as given, which may be long or odd
        _fail(f"{_file_name(e.source)}: {e.path}: {e.message}")
    except FlowFSMError as e:
        _fail(str(e))
    except ConsoleError as e:  # Rich refused to print: a clear line, never a traceback
        _fail(f"cannot print the result: {e}")


MAX_FILE_NAME: Final = 300
"""The most characters of a file's name an error shows: its end, where the name is."""


def _file_name(path: str) -> str:
    """A file's name as an error shows it, unquoted: bytes that are not UTF-8 as
    ``\\xff`` (as the shell writes them), control characters escaped (a newline too:
    one line stays one line), and a name too long cut at its start."""
    text = visible(os.fsencode(path).decode("utf-8", "backslashreplace"))
    return text if len(text) <= MAX_FILE_NAME else "…" + text[-(MAX_FILE_NAME - 1) :]


def _checked_text(field: str, value: str) -> str:
    """An argument that is not stored but looked up: refused as stored text would be."""
    problem = text_problem(value)
    if problem:
        raise ValidationError(field, problem)
    return value


def _shown_path(path: str) -> str:
    """A path from the command line as a message shows it: bytes that are not UTF-8
    (which Python keeps as lone surrogates) read ``\\xff``, as the shell would write them."""
    return _SURROGATE.sub(lambda m: f"{m[1]}\\x{m[2]}", shown(path, 300))


# "\udcff" in a repr, not preceded by an escaped backslash: the byte 0xff, undecodable.
_SURROGATE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def open_store(store: str, *, create: bool = True) -> Repository:
    """A repository for ``--store``: PostgreSQL for a postgres URL, else SQLite.

    ``create=False``, for commands that only find things, refuses a SQLite file that
    does not exist rather than leaving an empty store behind.
    """
    if not store:
        raise ValidationError("--store", f"is empty: {_STORE_KINDS}")
    url = _URL_SCHEME.match(store)
    if url is not None:  # a URL: PostgreSQL, or a mistake that must not become a file (or show its password)
        scheme = url[1].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValidationError("--store", f"{bounded(url[1], 40)}:// is not a store; {_STORE_KINDS}")
        from flowfsm.repositories import PostgresRepository

        try:
            return PostgresRepository(scheme + store[len(url[1]) :])  # libpq reads the scheme in lower case only
        except ValidationError as e:  # the URL itself: say which option holds it
            raise ValidationError("--store", e.message) from None
        except RepositoryError as e:
            raise ValidationError("--store", str(e)) from e
    if not create and store != ":memory:" and not os.path.exists(store):
        raise ValidationError("--store", f"no store at {_shown_path(store)}")
    return _sqlite_store(store)


def _sqlite_store(store: str) -> SQLiteRepository:
    """The SQLite store at ``store``; one it cannot open, or another program's
    database, is a ``ValidationError`` naming ``--store``."""
    from flowfsm.repositories import SQLiteRepository

    if _foreign_database(store):
        raise ValidationError(
            "--store",
            f"{_shown_path(store)} is a SQLite database of something else (it has tables, none of flowfsm's);"
            " nothing was changed",
        )
    try:
        return SQLiteRepository(store)
    except RepositoryError as e:  # its message quotes the path whole: shown bounded, as the option's value
        raise ValidationError("--store", str(e).replace(repr(store), _shown_path(store))) from e


def _foreign_database(store: str) -> bool:
    """Whether ``store`` is a SQLite database with tables but not flowfsm's, read
    without writing (opening it as a store would add flowfsm's tables and switch it to
    WAL). Anything else — no file, an empty database, a file that is not SQLite, one
    that cannot be read — is left for the repository to open or to refuse."""
    if store == ":memory:" or not os.path.isfile(store) or os.path.getsize(store) == 0:
        return False
    uri = "file:" + quote(os.fsencode(os.path.abspath(store))) + "?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return False
    return bool(tables) and "flowfsm_meta" not in tables


_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_STORE_KINDS: Final = "give a SQLite file or a postgresql:// URL"


def _checked_engine(catalog: Path) -> FlowEngine:
    """An engine on the catalog with an in-memory stand-in for its store, so that a
    catalog the engine refuses (e.g. an unknown failure strategy) leaves no store file."""
    from flowfsm.repositories import InMemoryRepository

    # The command line leaves delivery to `flowfsm dispatch`: HookRequests wait in the outbox.
    return FlowEngine(Catalog.from_file(catalog), InMemoryRepository(), None)


def _engine(store: str, catalog: Path, *, create: bool) -> FlowEngine:
    engine = _checked_engine(catalog)
    engine.repository = open_store(store, create=create)
    return engine


def _print_json(data: Any) -> None:
    """``data`` as indented JSON; characters ``visible`` escapes are ``\\uXXXX`` escapes
    (JSON escapes only those below U+0020 itself), the same text to a parser."""
    text = json.dumps(data, indent=2, ensure_ascii=False)  # a newline here is layout, never in a string
    sys.stdout.write(_UNSEEN.sub(lambda m: m[0] if m[0] == "\n" else f"\\u{ord(m[0]):04x}", text) + "\n")


def _show_outcome(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        _print_json(unstructure(outcome))
        return
    lines: list[Text] = []
    if outcome.duplicate:
        lines.append(_line(("duplicate:", "yellow"), " already recorded; nothing changed"))
    for flow in outcome.flows:
        line = _line("flow ", (flow.id, "bold"), f" {flow.artifact.id} {flow.service_id} ", _state(flow.state.value))
        line.append("  ")
        for i, d in enumerate(flow.deployments):
            line.append_text(_line(" → " if i else "", f"{d.environment}:", _state(d.state.value)))
        lines.append(line)
    for request in outcome.hook_requests:
        lines.append(_line(f"  ↳ {request.event.value} → {request.webhook_id}/{request.action.name} ({request.id})"))
    if not outcome.flows:
        lines.append(_line("no service consumes this artifact; nothing to do"))
    for line in lines:
        out.print(line)


_COLOUR = {
    "success": "green",
    "delivered": "green",
    "failed": "red",
    "dead": "red",
    "inProgress": "cyan",
    "paused": "magenta",
    "aborted": "red",
    "superseded": "bright_black",
    "skipped": "yellow",
    "started": "cyan",
    "completed": "blue",
    "pending": "yellow",
}
_GLYPH = {"success": "✓", "failed": "✗", "started": "▶", "completed": "▶", "notStarted": "·"}
_WAITING_GLYPH = "…"
"""Any other deployment state: one waiting at a gate (queued, held, awaiting approval)."""


def _state(value: str, width: int = 0) -> tuple[str, str]:
    """A state name in its colour (padded to ``width``)."""
    return value.ljust(width), _COLOUR.get(value, "white")


def _apply(trigger: Callable[[], Trigger], store: str, catalog: Path, as_json: bool, *, create: bool = False) -> None:
    """A trigger command's whole work: the trigger made from the arguments (a bad one
    is refused before the catalog is read or the store opened), applied by the store's
    engine, and the outcome shown."""
    with _reported():
        made = trigger()
        engine = _engine(store, catalog, create=create)
        _show_outcome(engine.handle(made), as_json)


def _apply_to_promotion(
    trigger: Callable[[str], Trigger], deployment_id: str, promotion: str, store: str, catalog: Path, as_json: bool
) -> None:
    """``_apply`` for a trigger on a promotion named by its id or by its name in the
    deployment: ``trigger(promotion_id)``, once the store says which promotion it is."""
    with _reported():
        engine = _engine(store, catalog, create=False)
        _show_outcome(engine.handle(trigger(_promotion_id(engine, deployment_id, promotion))), as_json)


@app.command("artifact-created")
def artifact_created(
    artifact: Annotated[str, typer.Argument(help="GROUP:NAME:VERSION")],
    actor: Annotated[
        str | None, typer.Option("--actor", help="The artifact's author (an approval gate refuses their approval).")
    ] = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """CI published an artifact: start a flow for each service that consumes it."""
    _apply(lambda: ArtifactCreated(Artifact.parse(artifact), actor=actor), store, catalog, as_json, create=True)


@app.command("deployment-started")
def deployment_started(
    deployment_id: str,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """The CD system started a deployment."""
    _apply(lambda: DeploymentStarted(deployment_id), store, catalog, as_json)


@app.command("deployment-completed")
def deployment_completed(
    deployment_id: str,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """The CD system finished a deployment; its promotions may now report."""
    _apply(lambda: DeploymentCompleted(deployment_id), store, catalog, as_json)


@app.command("deployment-failed")
def deployment_failed(
    deployment_id: str,
    reason: str,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """The CD system reports that a started deployment failed, and why."""
    _apply(lambda: DeploymentFailed(deployment_id, reason), store, catalog, as_json)


class Result(StrEnum):
    passed = "passed"
    failed = "failed"


@app.command("promotion-completed")
def promotion_completed(
    deployment_id: str,
    promotion: Annotated[str, typer.Argument(help="The promotion's id, or its name in the deployment.")],
    result: Annotated[Result, typer.Option("--result", case_sensitive=False, help="The check's verdict.")],
    details: Annotated[str | None, typer.Option("--details", help="A JSON object of details.")] = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """A promotion's check finished, passed or failed."""

    def completed(promotion_id: str) -> Trigger:
        return PromotionCompleted(deployment_id, promotion_id, [PromotionResult(promotion_id, status, extra)])

    with _reported():  # the details and the result are checked before the store is opened
        extra = _details(details)
        status = ResultStatus(result.value)
        completed(promotion)
    _apply_to_promotion(completed, deployment_id, promotion, store, catalog, as_json)


# --- steering: a person acts, so --actor is required ------------------------------------

Actor = Annotated[str, typer.Option("--actor", help="Who acts (recorded, and named in the payloads).")]
Reason = Annotated[str | None, typer.Option("--reason", help="Why (recorded, and named in the payloads).")]


@app.command("pause")
def pause(
    flow_id: str,
    actor: Actor,
    reason: Reason = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Pause a flow: work under way is still recorded; nothing new begins until it resumes."""
    _apply(lambda: PauseFlow(flow_id, actor, reason), store, catalog, as_json)


@app.command("resume")
def resume(
    flow_id: str,
    actor: Actor,
    reason: Reason = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Resume a paused flow; what the pause held is announced."""
    _apply(lambda: ResumeFlow(flow_id, actor, reason), store, catalog, as_json)


@app.command("abort")
def abort(
    flow_id: str,
    actor: Actor,
    reason: Reason = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """End a flow for good: it never moves again."""
    _apply(lambda: AbortFlow(flow_id, actor, reason), store, catalog, as_json)


@app.command("retry-promotion")
def retry_promotion(
    deployment_id: str,
    promotion: Annotated[str, typer.Argument(help="The promotion's id, or its name in the deployment.")],
    actor: Actor,
    reason: Reason = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Retry a failed promotion: pending again, at its next attempt."""
    _apply_to_promotion(
        lambda promotion_id: RetryPromotion(deployment_id, promotion_id, actor, reason),
        deployment_id,
        promotion,
        store,
        catalog,
        as_json,
    )


@app.command("skip-promotion")
def skip_promotion(
    deployment_id: str,
    promotion: Annotated[str, typer.Argument(help="The promotion's id, or its name in the deployment.")],
    actor: Actor,
    reason: Annotated[str, typer.Option("--reason", help="Why the check may be skipped (required).")],
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Let a pending or failed promotion pass unchecked; it counts as passed."""
    _apply_to_promotion(
        lambda promotion_id: SkipPromotion(deployment_id, promotion_id, actor, reason),
        deployment_id,
        promotion,
        store,
        catalog,
        as_json,
    )


@app.command("retry-deployment")
def retry_deployment(
    deployment_id: str,
    actor: Actor,
    reason: Reason = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Retry a failed deployment: announced again, at its next attempt."""
    _apply(lambda: RetryDeployment(deployment_id, actor, reason), store, catalog, as_json)


# --- approvals (SPEC §11): the store authorizes, the caller vouches for --actor and --group ---

Groups = Annotated[
    list[str] | None,
    typer.Option("--group", help="A group the actor belongs to (repeat for several), for group:NAME approvers."),
]
Answers = Annotated[
    int | None,
    typer.Option("--attempt", min=1, help="The deployment's attempt this answers; an earlier one's is stale."),
]


@app.command("approve")
def approve(
    deployment_id: str,
    actor: Actor,
    group: Groups = None,
    reason: Reason = None,
    attempt: Answers = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Approve a deployment awaiting approval; the last approval needed announces it."""
    _apply(
        lambda: ApprovalGranted(deployment_id, actor, group or (), reason=reason, attempt=attempt),
        store,
        catalog,
        as_json,
    )


@app.command("reject")
def reject(
    deployment_id: str,
    actor: Actor,
    reason: Annotated[str, typer.Option("--reason", help="Why it may not go (required).")],
    group: Groups = None,
    attempt: Answers = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Reject a deployment awaiting approval: a failure, for its failure policy."""
    _apply(
        lambda: ApprovalRejected(deployment_id, actor, reason, groups=group or (), attempt=attempt),
        store,
        catalog,
        as_json,
    )


@app.command("override-freeze")
def override_freeze(
    deployment_id: str,
    actor: Actor,
    reason: Annotated[str, typer.Option("--reason", help="Why it may deploy during the freeze (required).")],
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Let a deployment held by a freeze window through: announced now (this attempt)."""
    _apply(lambda: OverrideFreeze(deployment_id, actor, reason), store, catalog, as_json)


@app.command("freezes")
def freezes(
    at: Annotated[str | None, typer.Option("--at", help="An ISO 8601 time with its offset (default: now).")] = None,
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """List the catalog's freeze windows, and whether each is in force (at ``--at``)."""
    from flowfsm.durations import format_duration
    from flowfsm.engine import utc_now
    from flowfsm.freezes import frozen

    with _reported():
        when = utc_now() if at is None else _aware(at)
        windows = Catalog.from_file(catalog).freezes
    rows = []
    for window in windows:
        freeze = frozen([window], when)
        rows.append((window, freeze.until if freeze is not None else None))
    if as_json:
        listed = [
            unstructure(window) | {"active": until is not None, "until": until.isoformat() if until else None}
            for window, until in rows
        ]
        _print_json({"at": when.isoformat(), "freezes": listed})
        return
    if not rows:
        out.print(_line("no freeze windows in the catalog"))
    for window, until in rows:
        schedule = f"rrule {window.rrule} from {window.start:%Y-%m-%dT%H:%M}" if window.rrule else f"cron {window.cron}"
        covers = ", ".join(window.environments) + (f" of {', '.join(window.services)}" if window.services else "")
        state = ("frozen", "red") if until is not None else ("open", "green")
        ends = f" until {until:%Y-%m-%d %H:%M:%S} UTC" if until is not None else ""
        out.print(
            _line(
                (window.name, "bold"),
                f": {schedule}, {format_duration(window.duration)} in {window.timezone}; {covers}: ",
                state,
                ends,
            )
        )


def _aware(text: str) -> dt.datetime:
    """``--at``: an ISO 8601 time with its offset (``Z`` for UTC)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("--at", "expected an ISO 8601 time such as 2026-12-24T12:00:00+01:00") from None
    if when.tzinfo is None:
        raise ValidationError("--at", "give the time's offset (e.g. +01:00, or Z for UTC)")
    return when


def _promotion_id(engine: FlowEngine, deployment_id: str, promotion: str) -> str:
    """The id of the deployment's promotion named ``promotion`` (its id or its name);
    an unknown one is left for the engine to refuse (``UnknownPromotion``)."""
    _checked_text("DEPLOYMENT_ID", deployment_id)
    _checked_text("PROMOTION", promotion)
    deployment = engine.repository.find_by_deployment(deployment_id).deployment(deployment_id)
    if deployment is not None and deployment.promotion(promotion) is None:
        for candidate in deployment.promotions:
            if candidate.name == promotion:
                return candidate.id
    return promotion


def _details(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    value = parse_json(text, "--details")
    if not isinstance(value, dict):
        raise ValidationError("--details", f"expected a JSON object, got {shown(value)}")
    check_json("--details", value)
    return value


def _open_source(source: str) -> BinaryIO:
    """The JSON lines to read, as bytes: each line is decoded (strictly, as UTF-8) on its own."""
    if source == "-":
        if sys.stdin is None:  # started with standard input closed (<&-)
            raise ValidationError("SOURCE", "there is no standard input to read")
        return sys.stdin.buffer
    try:
        return Path(source).open("rb")
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ValidationError("SOURCE", f"cannot read {_shown_path(source)}: {why}") from None


def _read_line(lines: BinaryIO, source: str) -> bytes:
    """The next line, at most ``MAX_LINE`` + 1 bytes (b"" at the end); a read that
    fails (a device's I/O error) is a ``ValidationError`` naming ``SOURCE``."""
    try:
        return lines.readline(MAX_LINE + 1)
    except OSError as e:
        where = "standard input" if source == "-" else _shown_path(source)
        raise ValidationError("SOURCE", f"cannot read {where}: {e.strerror or type(e).__name__}") from None


MAX_LINE: Final = 2**20
"""The longest trigger ``handle`` reads, in bytes (1 MiB): a longer line (or an endless
one, like /dev/zero) is refused as soon as it is this long, never read whole."""


@app.command("handle")
def handle(
    source: Annotated[str, typer.Argument(help="'-' for standard input, or a file of JSON lines.")],
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Apply triggers given as JSON lines ({"type": "DeploymentStarted", ...}), in order.

    Stops at the first trigger that fails, naming its line; those before it stay applied.
    """
    with _reported():
        engine = _checked_engine(catalog)
        lines = _open_source(source)
        opened = False  # the store is opened at the first well-formed trigger
        try:
            for number, line in enumerate(iter(lambda: _read_line(lines, source), b""), 1):
                if len(line.rstrip(b"\r\n")) > MAX_LINE:
                    _fail(f"line {number}: longer than {MAX_LINE // 2**20} MiB")
                if not line.strip():
                    continue
                try:
                    trigger = structure(parse_json(line), Trigger)
                    if not opened:
                        engine.repository, opened = open_store(store), True
                    outcome = engine.handle(trigger)
                except FlowFSMError as e:
                    _fail(f"line {number}: {e}")
                if as_json:
                    sys.stdout.write(json.dumps(unstructure(outcome)) + "\n")
                else:
                    _show_outcome(outcome, False)
        finally:
            if lines is not sys.stdin.buffer:
                lines.close()


@app.command("flows")
def flows(
    service: Annotated[str | None, typer.Option("--service", help="Only this service's flows.")] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="inProgress, paused, success, failed, aborted or superseded.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_PAGE)] = 50,
    store: Store = "flowfsm.db",
    as_json: Json = False,
) -> None:
    """List flows, newest first."""
    from rich.table import Table

    with _reported():
        wanted = _flow_state(state) if state is not None else None
        service_id = _checked_text("--service", service) if service is not None else None
        found = open_store(store, create=False).list_flows(service_id=service_id, state=wanted, limit=limit)
        if as_json:
            _print_json(unstructure(found))
            return
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("artifact / flow", no_wrap=True)
        table.add_column("service", overflow="fold")
        table.add_column("state", no_wrap=True)
        table.add_column("deployments")
        table.add_column("updated")
        for flow in found:
            trail = " ".join(f"{_GLYPH.get(d.state.value, _WAITING_GLYPH)}{d.environment}" for d in flow.deployments)
            updated = flow.updated_at.strftime("%m-%d %H:%M:%S") if flow.updated_at else ""
            table.add_row(
                Text("\n").join([_line(flow.artifact.id), _line((flow.id, "dim"))]),
                _line(flow.service_id),
                _line(_state(flow.state.value)),
                _line(trail),
                _line(updated),
            )
        out.print(table)


def _flow_state(value: str) -> FlowState:
    """A state as typed: ``inprogress`` is ``inProgress`` (people do not type camel case)."""
    for state in FlowState:
        if state.value.casefold() == value.casefold():
            return state
    allowed = ", ".join(repr(s.value) for s in FlowState)
    raise ValidationError("--state", f"{shown(value)} is not one of {allowed}")


def _names(flow: Flow) -> dict[str, str]:
    """What history lines call each part of ``flow``: a deployment by its
    environment, a promotion as ``environment/name`` (the flow needs no name)."""
    names = {flow.id: ""}
    for deployment in flow.deployments:
        names[deployment.id] = deployment.environment
        for promotion in deployment.promotions:
            names[promotion.id] = f"{deployment.environment}/{promotion.name}"
    return names


def _history_lines(flow: Flow, entries: list[HistoryEntry]) -> list[Text]:
    """Each entry: its number, time, trigger, actor and reason, then one line per
    state change and the HookRequests it made."""
    names, lines = _names(flow), []
    for entry in entries:
        line = _line(
            f"  {entry.seq:>3}  {entry.at.strftime('%Y-%m-%d %H:%M:%S')}  ", (str(entry.trigger["type"]), "bold")
        )
        if entry.actor:
            line.append_text(_line(f" by {entry.actor}"))
        if entry.reason:
            line.append_text(_line(f": {bounded(entry.reason, 200)}"))
        lines.append(line)
        for change in entry.changes:
            was = [_state(change.from_), " → "] if change.from_ else ["new, "]
            name = names.get(change.id, change.id)
            lines.append(_line(f"         {change.entity}{' ' if name else ''}{name}: ", *was, _state(change.to)))
        if entry.hook_request_ids:
            lines.append(_line(f"         ↳ {len(entry.hook_request_ids)} hook request(s)"))
    return lines


class NothingNamed(NotFound):
    """``show``, ``history`` or ``explain`` was given an id that names no flow, no
    deployment and no artifact with a flow."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no flow, deployment or artifact {shown(key, ID_LIMIT)} in the store")


MAX_NAMED: Final = 5
"""The most flows an error lists when an artifact id names several."""


def _flows_named(repository: Repository, key: str, catalog: Path) -> tuple[list[Flow], bool]:
    """The flows ``key`` names, and whether it named them as an artifact: a flow id,
    then a deployment id (its flow), then ``GROUP:NAME:VERSION`` (the flow of each
    service in the catalog that consumes it; the catalog is read only then)."""
    _checked_text("ID", key)
    try:
        return [repository.get(key)], False
    except UnknownFlow:
        pass
    try:
        return [repository.find_by_deployment(key)], False
    except UnknownDeployment:
        pass
    if key.count(":") == 2:
        try:
            artifact = Artifact.parse(key)
        except ValidationError:  # no artifact id: it names nothing
            raise NothingNamed(key) from None
        services = Catalog.from_file(catalog).for_artifact(artifact.key)
        found = [f for s in services if (f := repository.find_by_key(artifact.id, s.id)) is not None]
        if found:
            return found, True
    raise NothingNamed(key)


def _one_flow_named(repository: Repository, key: str, catalog: Path) -> Flow:
    """The one flow ``key`` names; an artifact with several flows is refused, naming them."""
    found, _ = _flows_named(repository, key, catalog)
    if len(found) > 1:
        listed = ", ".join(f"{f.id} ({f.service_id})" for f in found[:MAX_NAMED])
        more = f" and {len(found) - MAX_NAMED} more" if len(found) > MAX_NAMED else ""
        raise ValidationError("ID", f"artifact {shown(key)} has {len(found)} flows: {bounded(listed)}{more}; name one")
    return found[0]


FlowKey = Annotated[str, typer.Argument(metavar="ID", help="A flow id, a deployment id, or GROUP:NAME:VERSION.")]


@app.command("history")
def history(
    key: FlowKey,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """What happened to a flow: each trigger that changed it, in order, with who,
    why, each state change and the HookRequests it made. An artifact id needs
    --catalog (its services), and must name one flow."""
    with _reported():
        repository = open_store(store, create=False)
        flow = _one_flow_named(repository, key, catalog)
        entries = repository.history(flow.id)
        if as_json:
            _print_json(unstructure(entries))
            return
        out.print(_line((flow.artifact.id, "bold"), f" → {flow.service_id}: ", _state(flow.state.value)))
        for line in _history_lines(flow, entries) or [_line("  no history recorded")]:
            out.print(line)


@app.command("explain")
def explain(
    key: FlowKey,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """What a flow waits for (or how it finished): one line per reason, its kind first.
    An artifact id must name one flow."""
    with _reported():
        engine = _engine(store, catalog, create=False)
        items = engine.explain(_one_flow_named(engine.repository, key, catalog).id)
        if as_json:
            _print_json(unstructure(items))
            return
        width = max((len(i.kind) for i in items), default=0)
        for item in items:
            out.print(_line((item.kind.ljust(width), "bold"), "  ", item.text), soft_wrap=True)


@app.command("show")
def show(
    key: FlowKey,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """A flow's timeline: deployments, promotions, HookRequests and their delivery,
    and its history. An artifact id (its services come from --catalog) shows each
    of its flows; with --json, a list of them."""
    with _reported():
        repository = open_store(store, create=False)
        found, by_artifact = _flows_named(repository, key, catalog)
        if as_json:
            shown_flows = [
                {
                    "flow": unstructure(flow),
                    "hookRequests": unstructure(repository.hook_requests(flow.id)),
                    "history": unstructure(repository.history(flow.id)),
                }
                for flow in found
            ]
            _print_json(shown_flows if by_artifact else shown_flows[0])
            return
        for i, flow in enumerate(found):
            if i:
                out.print()
            _show_flow(repository, flow)


def _show_flow(repository: Repository, flow: Flow) -> None:
    """One flow's timeline, as ``show`` prints it."""
    from rich.table import Table

    records = repository.hook_requests(flow.id)
    entries = repository.history(flow.id)
    created = flow.created_at.strftime("%Y-%m-%d %H:%M:%S") if flow.created_at else "?"
    head = [
        _line((flow.artifact.id, "bold"), f" → {flow.service_id}: ", _state(flow.state.value)),
        _line(f"  flow {flow.id}, created {created}, version {flow.version}"),
    ]
    if flow.pause is not None:
        why = f": {flow.pause.reason}" if flow.pause.reason else ""
        head.append(_line(f"  paused by {flow.pause.actor}{why}"))
    if flow.author is not None:
        head.append(_line(f"  published by {flow.author}"))
    if flow.rollback is not None:
        target = flow.rollback.artifact.id if flow.rollback.artifact else "nothing to return to"
        head.append(_line(f"  rollback requested in {flow.rollback.environment}: {target}"))
    for deployment in flow.deployments:
        checks = Text(", ").join(
            _line(f"{p.name} ", _state(p.state.value), f" (attempt {p.attempt})" if p.attempt > 1 else "")
            for p in deployment.promotions
        )
        head.append(
            _line(
                f"  {deployment.environment:<10} ",
                _state(deployment.state.value, 10),
                "  ",
                checks if deployment.promotions else "no promotions",
                f"  approved by {', '.join(deployment.approvals)}" if deployment.approvals else "",
                f"  ({deployment.id})",
            )
        )
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("time", "event", "environment", "webhook/action", "delivery", "attempts"):
        table.add_column(column, no_wrap=column in ("time", "event", "delivery"), overflow="fold")
    for record in records:
        request = record.request
        last = record.attempts[-1] if record.attempts else None
        answer = f" (last: {last.status_code or last.error})" if last else ""
        # Delivered with no attempt logged: the engine's own emitter took it at once.
        inline = record.state is DeliveryState.DELIVERED and not record.attempts
        tries = "inline" if inline else len(record.attempts)
        table.add_row(
            _line(request.created_at.strftime("%H:%M:%S")),
            _line(request.event.value),
            _line(request.payload.deployment.environment),
            _line(f"{request.webhook_id}/{request.action.name}"),
            _line(_state(record.state.value)),
            _line(f"{tries}{answer}"),
        )
    for line in head:
        out.print(line)
    out.print(table)
    if entries:
        out.print(_line(("history", "bold")))
        for line in _history_lines(flow, entries):
            out.print(line)


@app.command("dispatch")
def dispatch(
    follow: Annotated[bool, typer.Option("--follow", help="Keep polling until interrupted.")] = False,
    concurrency: FlowsAtOnce = 4,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
) -> None:
    """Deliver pending HookRequests over HTTP (needs the 'http' extra).

    Each failed attempt is logged on standard error (status, next attempt time)."""
    from flowfsm.dispatch import Dispatcher
    from flowfsm.emitters import HttpEmitter

    _log_delivery_to_stderr()
    with _stopped_by_signals() as stop, _reported():
        repository = open_store(store)
        emitter = HttpEmitter(Catalog.from_file(catalog))
        dispatcher = Dispatcher(repository, emitter, concurrency=concurrency)
        try:
            if follow:
                out.print("delivering; SIGTERM or Ctrl-C stops it")
                dispatcher.run(stop)
                out.print("stopped")
            else:
                report = dispatcher.run_once(stop)
                line = f"delivered {report.delivered}; retried {report.retried}"
                if report.next_attempt_at is not None:
                    line += f" (next attempt at {report.next_attempt_at.isoformat(timespec='seconds')})"
                out.print(
                    f"{line}; dead {report.dead}; pending {repository.count_pending()}", markup=False, soft_wrap=True
                )
        finally:
            dispatcher.close()
            emitter.close()


@contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """An event SIGTERM and SIGINT set, in place of ending the process: what is under
    way (a delivery, a timer) finishes and is recorded, the rest is released for
    other workers, and the command exits 0. The handlers before are put back."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _VisibleFormatter(logging.Formatter):
    """Log lines with control characters escaped (``visible``): a message may quote an
    endpoint's answer or a URL from the catalog. A traceback keeps its line breaks."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(visible(line) for line in super().format(record).split("\n"))


def _log_delivery_to_stderr(level: int = logging.WARNING) -> None:
    """Show the dispatcher's warnings (failed attempts, dead requests) on standard
    error, one line each, unless the embedding program configured logging itself;
    at ``logging.INFO``, each timer fired too."""
    logger = logging.getLogger("flowfsm")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_VisibleFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)


@app.command("worker")
def worker(
    once: Annotated[bool, typer.Option("--once", help="Do what is due now, then exit (for cron).")] = False,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="Seconds between looks for work nothing announced.")
    ] = 1.0,
    concurrency: FlowsAtOnce = 4,
    lease: Annotated[
        float, typer.Option("--lease", help="Seconds a claim is held before another worker may take it over.")
    ] = 60.0,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
) -> None:
    """Deliver HookRequests over HTTP and fire due timers until SIGTERM or SIGINT
    (needs the 'http' extra). On PostgreSQL, new work wakes it at once.

    Each failed delivery (status, next attempt time) and each timer fired is logged
    on standard error. A stop finishes the delivery and the timer under way,
    releases the rest for other workers, and exits 0."""
    from flowfsm.emitters import HttpEmitter
    from flowfsm.worker import Worker

    _log_delivery_to_stderr(logging.INFO)
    with _stopped_by_signals() as stop, _reported():
        for option, seconds, least in (("--poll-interval", poll_interval, 0.01), ("--lease", lease, 1.0)):
            if not least <= seconds <= MAX_WAIT:  # NaN too; shorter spins on the store, or lapses at once
                raise ValidationError(option, f"must be from {least:g} s to {MAX_WAIT:g} s")
        engine = _engine(store, catalog, create=True)
        emitter = HttpEmitter(engine.catalog)
        running = Worker(
            engine, emitter, poll_interval=poll_interval, concurrency=concurrency, lease=lease, timer_lease=lease
        )
        try:
            if once:
                report = running.run_once(stop)
                done = report.deliveries
                line = f"timers fired {report.timers_fired}; delivered {done.delivered}; retried {done.retried}"
                if done.next_attempt_at is not None:
                    line += f" (next attempt at {done.next_attempt_at.isoformat(timespec='seconds')})"
                out.print(
                    f"{line}; dead {done.dead}; pending {engine.repository.count_pending()}",
                    markup=False,
                    soft_wrap=True,
                )
            else:
                err.print("worker running; SIGTERM or Ctrl-C stops it", markup=False)
                running.run(stop)
                err.print("worker stopped", markup=False)
        finally:
            running.close()
            emitter.close()


# --- the outbox -----------------------------------------------------------------------


def _records_table(records: list[HookRecord]) -> Any:
    """HookRequests, one row each: id, when, flow, event, webhook/action, attempts and the last answer."""
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "created", "flow", "event", "webhook/action", "attempts"):
        table.add_column(column, no_wrap=column in ("created", "event"), overflow="fold")
    for record in records:
        request = record.request
        last = record.attempts[-1] if record.attempts else None
        answer = f" (last: {last.status_code or bounded(last.error or '', 100)})" if last else ""
        table.add_row(
            _line(request.id),
            _line(request.created_at.strftime("%Y-%m-%d %H:%M:%S")),
            _line(request.flow_id),
            _line(request.event.value),
            _line(f"{request.webhook_id}/{request.action.name}"),
            _line(f"{len(record.attempts)}{answer}"),
        )
    return table


@outbox_app.command("pending")
def outbox_pending(
    key: Annotated[
        str | None,
        typer.Argument(metavar="ID", help="Only this flow's (a flow, deployment or artifact id): list them."),
    ] = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """How many HookRequests wait for delivery; with an ID, that flow's pending ones."""
    with _reported():
        repository = open_store(store, create=False)
        if key is None:
            count = repository.count_pending()
            if as_json:
                _print_json({"pending": count})
            else:
                out.print(_line(f"pending {count}"))
            return
        found, _ = _flows_named(repository, key, catalog)
        records = [r for flow in found for r in repository.hook_requests(flow.id) if r.state is DeliveryState.PENDING]
        if as_json:
            _print_json(unstructure(records))
            return
        out.print(_records_table(records) if records else _line("nothing pending"))


@outbox_app.command("dead")
def outbox_dead(
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_PAGE)] = 50,
    store: Store = "flowfsm.db",
    as_json: Json = False,
) -> None:
    """HookRequests given up on, oldest first, with their attempts and last answer:
    they wait, visible, until requeued."""
    with _reported():
        records = open_store(store, create=False).dead_requests(limit)
        if as_json:
            _print_json(unstructure(records))
            return
        out.print(_records_table(records) if records else _line("no dead HookRequests"))


@outbox_app.command("requeue")
def outbox_requeue(
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Dead HookRequests' ids.")],
    store: Store = "flowfsm.db",
    as_json: Json = False,
) -> None:
    """Make dead HookRequests pending again, in their original place; the next
    dispatch delivers them. Any other id is left as it is, and named."""
    with _reported():
        if len(ids) > MAX_PAGE:
            raise ValidationError("ID", f"at most {MAX_PAGE} ids at once, got {len(ids)}")
        for request_id in ids:
            _checked_text("ID", request_id)
        repository = open_store(store, create=False)
        dead = {r.request.id for r in repository.dead_requests(MAX_PAGE)}
        wanted = list(dict.fromkeys(ids))
        requeued = [i for i in wanted if i in dead]
        others = [i for i in wanted if i not in dead]
        repository.requeue(requeued)
        if as_json:
            _print_json({"requeued": requeued, "notDead": others})
            return
        out.print(_line(f"requeued {len(requeued)}"), soft_wrap=True)
        if others:
            listed = ", ".join(shown(i, ID_LIMIT) for i in others[:MAX_NAMED])
            more = f" and {len(others) - MAX_NAMED} more" if len(others) > MAX_NAMED else ""
            out.print(_line(("not dead, left as they are: ", "yellow"), listed, more), soft_wrap=True)


def check_url(url: str) -> None:
    """An endpoint URL as the catalog accepts an action's (the same rule, checked by
    ``Action``): http(s), a host, no credentials, no whitespace."""
    Action("endpoint", url=url)


class EndpointAction(StrEnum):
    enable = "enable"
    disable = "disable"


@outbox_app.command("endpoints")
def outbox_endpoints(
    action: Annotated[EndpointAction | None, typer.Argument(help="enable or disable URL; none: list.")] = None,
    url: Annotated[str | None, typer.Argument(metavar="URL", help="The action URL.")] = None,
    store: Store = "flowfsm.db",
    as_json: Json = False,
) -> None:
    """The endpoints delivery skips (they answered 410 Gone, or a person disabled
    them); `enable URL` delivers to one again, `disable URL` stops delivering to it."""
    with _reported():
        if action is not None:
            if url is None:
                raise ValidationError("URL", f"give the URL to {action.value}")
            try:
                check_url(url)
            except ValidationError as e:
                raise ValidationError("URL", e.message) from None
        elif url is not None:
            raise ValidationError("URL", "give enable or disable before it")
        repository = open_store(store, create=False)
        if action is EndpointAction.enable and url is not None:
            repository.enable_endpoint(url)
        elif action is EndpointAction.disable and url is not None:
            repository.disable_endpoint(url)
        disabled = sorted(repository.disabled_endpoints())
        if as_json:
            _print_json({"disabled": disabled})
            return
        if action is not None:
            out.print(_line(f"{action.value}d ", url or ""), soft_wrap=True)
        out.print(_line(f"disabled endpoints: {len(disabled)}"))
        for disabled_url in disabled[:MAX_PAGE]:
            out.print(_line(f"  {disabled_url}"), soft_wrap=True)


@catalog_app.command("validate")
def catalog_validate(
    file: Annotated[Path | None, typer.Argument(help="The catalog file; by default --catalog's.")] = None,
    catalog: CatalogFile = Path("flowfsm.toml"),
    as_json: Json = False,
) -> None:
    """Load a catalog file and say what is wrong with it, if anything: what the
    engine would refuse, with the built-in failure strategies. Without FILE, the
    catalog every other command reads (--catalog, FLOWFSM_CATALOG, flowfsm.toml)."""
    from flowfsm.strategies import BUILTIN_STRATEGIES

    file = catalog if file is None else file
    with _reported():
        loaded = Catalog.from_file(file, strategies=BUILTIN_STRATEGIES)
    services = list(loaded)
    if as_json:
        _print_json({"valid": True, "services": [s.id for s in services]})
        return
    out.print(_line(("ok:", "green"), f" {file}: {len(services)} service(s)"))
    for service in services:
        environments = " → ".join(e.name for e in service.pipeline.environments)
        line = f"  {service.id}: {', '.join(service.artifacts)}; {environments}; {len(service.webhooks)} webhook(s)"
        out.print(_line(line))


class Machine(StrEnum):
    flow = "flow"
    deployment = "deployment"
    promotion = "promotion"


class Format(StrEnum):
    mermaid = "mermaid"
    svg = "svg"


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    user_header: Annotated[
        str | None,
        typer.Option(
            "--user-header",
            envvar="FLOWFSM_USER_HEADER",
            help="Trust this request header for the viewer's name (set by an authenticating proxy in front); "
            "without it the dashboard is read-only.",
        ),
    ] = None,
    groups_header: Annotated[
        str | None,
        typer.Option(
            "--groups-header",
            envvar="FLOWFSM_GROUPS_HEADER",
            help="Trust this header for the viewer's groups, comma-separated (with --user-header).",
        ),
    ] = None,
    store: Store = "flowfsm.db",
    catalog: CatalogFile = Path("flowfsm.toml"),
) -> None:
    """Serve the web dashboard (needs the 'web' extra) until Ctrl-C.

    The forms' CSRF tokens are keyed by FLOWFSM_DASHBOARD_SECRET (16 bytes or more;
    give every process the same one), or by a key drawn at start."""
    with _reported():
        try:
            import uvicorn

            from flowfsm.web import Viewer, dashboard
        except ImportError as e:
            raise ValidationError(
                "serve", f"needs the 'web' extra: pip install 'flowfsm[web]' ({e.name} is missing)"
            ) from None
        if groups_header and not user_header:
            raise ValidationError("--groups-header", "needs --user-header")
        engine = _engine(store, catalog, create=False)
        authorize = None
        if user_header:
            user, groups = user_header, groups_header

            def authorize(request: Any) -> Viewer | None:  # the proxy in front vouches for the header
                actor = request.headers.get(user, "").strip()
                if not actor:
                    return None
                named = request.headers.get(groups, "") if groups else ""
                return Viewer(actor, frozenset(g.strip() for g in named.split(",") if g.strip()))

        app = dashboard(engine, authorize=authorize, secret=os.environ.get("FLOWFSM_DASHBOARD_SECRET") or None)
        listening = _listen(host, port)
    with listening:
        shown_host = f"[{host}]" if ":" in host else host
        err.print(
            _line(f"dashboard on http://{shown_host}:{listening.getsockname()[1]}/ ; Ctrl-C stops it"), soft_wrap=True
        )
        config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="off")
        uvicorn.Server(config).run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host`` and ``port``, as uvicorn binds one, bound here so that
    an address that cannot be used is one ``error:`` line (uvicorn would log it and
    exit with its own status)."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
    except (OSError, UnicodeError, ValueError) as e:  # unknown name, address in use, not allowed; NUL
        listening.close()
        option = "--port" if getattr(e, "errno", None) in (errno.EADDRINUSE, errno.EACCES) else "--host"
        why = getattr(e, "strerror", None) or type(e).__name__
        raise ValidationError(option, f"cannot listen on {shown(host, 100)} port {port}: {why}") from None
    listening.set_inheritable(True)
    return listening


@app.command("diagram")
def diagram(
    machine: Machine,
    fmt: Annotated[Format, typer.Option("--format", help="mermaid text or a standalone SVG.")] = Format.mermaid,
) -> None:
    """Print a state machine's diagram, drawn from its declaration."""
    from flowfsm.diagrams import mermaid, svg

    sys.stdout.write(mermaid(machine.value) if fmt is Format.mermaid else svg(machine.value))


@app.command("demo")
def demo(
    store: Annotated[
        str | None, typer.Option("--store", help="SQLite file to keep (default: a temporary one).")
    ] = None,
) -> None:
    """Run two releases through dev → staging → prod on SQLite, printing every step."""
    from flowfsm.cli.demo import run

    with _reported():
        if store is not None:
            url = _URL_SCHEME.match(store)
            if url is not None:
                raise ValidationError("--store", f"the demo runs on a SQLite file, not a {bounded(url[1], 40)}:// URL")
            _sqlite_store(store).close()  # what cannot be opened is said before the demo starts
        run(out, Path(store) if store is not None else None)
