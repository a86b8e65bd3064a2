"""What the repository backends share: page checks, the flow reads of the SQL
backends (``SQLFlowReads``), their migrations runner (``migrate``), the outbox
row → ``HookRecord`` step (``hook_record``), and the stored form of a flow."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Final

from flowfsm.converter import converter
from flowfsm.errors import (
    ConcurrencyConflict,
    FlowFSMError,
    RepositoryError,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    ValidationError,
    bounded,
    shown,
)
from flowfsm.lanes import Lane, LaneMove, LaneStatus
from flowfsm.model import (
    GATED,
    Artifact,
    DeliveryAttempt,
    DeliveryState,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HistoryEntry,
    HookRecord,
    HookRequest,
    Pause,
    PromotionState,
    Rollback,
    Timer,
    TimerKind,
    _make_artifact,
    _make_deployment,
    _make_flow,
    _make_promotion,
)

__all__ = [
    "BODY_FORMAT",
    "DRIVER_MESSAGE_LIMIT",
    "LANE_LINE",
    "MAX_OFFSET",
    "MAX_PAGE",
    "MAX_WAIT",
    "PENDING",
    "SQLFlowReads",
    "apply_lane_moves",
    "check_page",
    "driver_errors",
    "due_text",
    "flow_body",
    "flow_from_body",
    "history_entry",
    "history_rows",
    "hook_record",
    "migrate",
    "readable_claim",
    "success_rows",
    "timer_from_row",
    "wait_seconds",
]

log = logging.getLogger("flowfsm.repositories")

PENDING: Final = "delivered_at IS NULL AND dead_at IS NULL"
"""The SQL condition of an outbox row that still waits for delivery."""

MAX_WAIT: Final = 86_400.0
"""The longest any backend keeps a HookRequest from ``claim`` at a time (a lease,
a renewal or a retry's delay): one day. Longer asks are cut to it, so no value
can park a request for good or overflow a database's time arithmetic."""


DRIVER_MESSAGE_LIMIT: Final = 300
"""The most characters of a driver's message a ``RepositoryError`` repeats."""


def wait_seconds(name: str, value: float) -> float:
    """``value`` (a lease or a delay, in seconds) as a backend stores it: below
    zero counts as zero, above ``MAX_WAIT`` (infinity included) as ``MAX_WAIT``;
    NaN, which orders against nothing, is refused."""
    if 0.0 <= value <= MAX_WAIT:  # the usual case, first: a lease or a delay in range
        return value
    if isinstance(value, float) and math.isnan(value):  # an int is never NaN (and may not fit a float)
        raise ValidationError(name, "must be a number of seconds, not NaN")
    return 0.0 if value < 0 else MAX_WAIT


@contextlib.contextmanager
def driver_errors(backend: str, what: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A driver's ``errors`` become ``RepositoryError`` (the driver's error as the
    cause, its message on one line and ``bounded``: PostgreSQL's quotes the values
    of a failed constraint, whatever their size); flowfsm's own errors pass through."""
    try:
        yield
    except FlowFSMError:
        raise
    except errors as e:
        message = bounded(str(e), DRIVER_MESSAGE_LIMIT) or type(e).__name__
        raise RepositoryError(backend, f"{what}: {message}") from e


def migrate(
    execute: Callable[..., Any],
    migrations: Sequence[Sequence[str]],
    *,
    backend: str,
    where: str,
    save_version: str,
) -> None:
    """Bring a SQL store's schema to ``len(migrations)``, in the caller's transaction.

    ``execute(sql, args)`` runs one statement and returns a cursor; the schema
    version is kept in ``flowfsm_meta``; ``save_version`` stores it (the driver's
    upsert, with one placeholder). A store newer than this flowfsm is refused,
    naming ``where`` it is.
    """
    latest = len(migrations)
    execute("CREATE TABLE IF NOT EXISTS flowfsm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", ())
    row = execute("SELECT value FROM flowfsm_meta WHERE key = 'schema_version'", ()).fetchone()
    current = int(row[0]) if row else 0
    if current > latest:
        raise RepositoryError(backend, f"{where} has schema version {current}; this flowfsm knows up to {latest}")
    for statements in migrations[current:]:
        for statement in statements:
            execute(statement, ())
    if current != latest:
        execute(save_version, (str(latest),))


def due_text(when: dt.datetime) -> str:
    """A timer's due time as SQLite stores it: UTC, in one fixed format (microseconds
    always written), so that comparing the text compares the times."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def timer_from_row(flow_id: str, deployment_id: str, kind: str, due: dt.datetime | str) -> Timer:
    """A stored timer (SQLite's due is text, PostgreSQL's a ``timestamptz``)."""
    when = dt.datetime.fromisoformat(due) if isinstance(due, str) else due
    return Timer(flow_id, deployment_id, TimerKind(kind), when.astimezone(dt.UTC))


def hook_record(
    request: HookRequest | str | dict[str, Any],
    delivered_at: dt.datetime | str | None,
    dead: object,
    attempts: Iterable[Sequence[Any]],
) -> HookRecord:
    """An outbox row as a ``HookRecord``: its stored request (JSON text, or already
    parsed), when it was delivered, whether it is dead, and its attempts as rows of
    (at, status code, error, duration)."""
    if not isinstance(request, HookRequest):
        request = converter.structure(json.loads(request) if isinstance(request, str) else request, HookRequest)
    if isinstance(delivered_at, str):
        delivered_at = dt.datetime.fromisoformat(delivered_at)
    state = DeliveryState.DELIVERED if delivered_at else DeliveryState.DEAD if dead else DeliveryState.PENDING
    return HookRecord(
        request,
        state,
        delivered_at,
        tuple(DeliveryAttempt(dt.datetime.fromisoformat(a[0]), a[1], a[2], a[3]) for a in attempts),
    )


def readable_claim(backend: str, rows: Sequence[tuple[str, str | dict[str, Any]]]) -> list[HookRequest]:
    """The claimed outbox rows (flow id, stored request) that this version can read,
    in order. A row it cannot read (written by a newer flowfsm, or damaged) holds
    its flow as a failing delivery does — it and the flow's later requests stay
    leased, to be offered again when the lease ends — and is logged, while the
    other flows go on."""
    requests: list[HookRequest] = []
    held: set[str] = set()
    for flow_id, body in rows:
        if flow_id in held:
            continue
        try:
            requests.append(converter.structure(json.loads(body) if isinstance(body, str) else body, HookRequest))
        except Exception as e:  # noqa: BLE001 - any reading error: this version cannot deliver the row
            held.add(flow_id)
            log.warning(
                "%s: a pending hook request of flow %s cannot be read (%s); the flow's requests wait",
                backend,
                flow_id,
                type(e).__name__,
            )
    return requests


MAX_PAGE: Final = 10_000
"""The most flows one ``list_flows`` call returns: page through more with ``offset``."""

MAX_OFFSET: Final = 2**63 - 1
"""The largest ``offset``: what a database's 64-bit integer holds."""


def check_page(limit: int, offset: int) -> None:
    """Refuse a page every backend could not read alike: ``limit`` in
    1..``MAX_PAGE``, ``offset`` in 0..``MAX_OFFSET``."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError("limit", f"must be from 1 to {MAX_PAGE}, got {shown(limit)}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ValidationError("offset", f"must be from 0 to 2**63 - 1, got {shown(offset)}")


def history_rows(entries: Sequence[HistoryEntry]) -> list[tuple[str, int, str]]:
    """The rows (flow id, seq, JSON body) a SQL backend stores for history ``entries``:
    the converter's form of each (a test holds them equal), written by hand, since
    the trigger's form is JSON already and shared by the entries of one trigger."""
    rows = []
    for entry in entries:
        trigger = entry.trigger
        body = {
            "flowId": entry.flow_id,
            "seq": entry.seq,
            "at": entry.at.isoformat(),
            "trigger": trigger if isinstance(trigger, dict) else dict(trigger),  # nested: dicts and lists
            "actor": entry.actor,
            "reason": entry.reason,
            "changes": [{"entity": c.entity, "id": c.id, "from": c.from_, "to": c.to} for c in entry.changes],
            "hookRequestIds": list(entry.hook_request_ids),
        }
        rows.append((entry.flow_id, entry.seq, _dumps(body)))
    return rows


def success_rows(flows: Sequence[Flow]) -> list[tuple[str, str, str, str, str, str, str, str | None]]:
    """The rollback index rows (service id, environment, artifact group, name,
    version and id, flow id, time) of the deployments ``flows`` are saved with in
    state ``success``; a SQL backend inserts each unless its (flow id, environment)
    is already there."""
    rows = []
    for flow in flows:
        for deployment in flow.deployments:
            if deployment.state is _SUCCESS:
                a, updated = flow.artifact, flow.updated_at
                at = updated.isoformat() if updated else None
                rows.append((flow.service_id, deployment.environment, a.group, a.name, a.version, a.id, flow.id, at))
    return rows


def history_entry(body: str | dict[str, Any]) -> HistoryEntry:
    """A stored history entry (PostgreSQL hands back ``jsonb`` already parsed)."""
    return converter.structure(json.loads(body) if isinstance(body, str) else body, HistoryEntry)


# --- lanes (SPEC §11): the occupant of each (service, environment), and its line ---------

LANE_LINE: Final = "lane_waiting_in_order"
"""The index of each lane's line in arrival order: the next flow is its first entry,
found without reading the line (the cost of a trigger does not grow with the queue)."""


def apply_lane_moves(execute: Callable[..., Any], mark: str, flows: Sequence[Flow], moves: Sequence[LaneMove]) -> None:
    """Apply ``moves`` in the caller's write transaction, after its flows: every flow
    leaves its place, then takes its new one; ``ConcurrencyConflict`` if a move would
    take a lane another flow occupies, or leave a lane it touches with flows waiting
    and none occupying it (see ``Lanes.commit``). ``execute(sql, args)`` returns a
    cursor; ``mark`` is the driver's placeholder. The caller serializes writers of
    one lane (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a lock per lane)."""
    m = mark
    for move in moves:
        if move.to is not LaneStatus.WAITS:
            execute(
                f"DELETE FROM lane_waiting WHERE flow_id = {m} AND environment = {m}", (move.flow_id, move.environment)
            )
        if move.to is not LaneStatus.OCCUPIES:
            execute(
                f"DELETE FROM lane_occupants WHERE service_id = {m} AND environment = {m} AND flow_id = {m}",
                (move.service_id, move.environment, move.flow_id),
            )
    for move in moves:
        lane = (move.service_id, move.environment)
        if move.to is LaneStatus.OCCUPIES:
            execute(
                f"INSERT INTO lane_occupants (service_id, environment, flow_id) VALUES ({m}, {m}, {m})"
                " ON CONFLICT DO NOTHING",
                (*lane, move.flow_id),
            )
            row = execute(
                f"SELECT flow_id FROM lane_occupants WHERE service_id = {m} AND environment = {m}", lane
            ).fetchone()
            if row is None or row[0] != move.flow_id:
                raise _lane_conflict(flows, move.flow_id)
        elif move.to is LaneStatus.WAITS:
            execute(
                f"INSERT INTO lane_waiting (service_id, environment, flow_id) VALUES ({m}, {m}, {m})"
                " ON CONFLICT DO NOTHING",
                (*lane, move.flow_id),
            )
    for service_id, environment in sorted({(m_.service_id, m_.environment) for m_ in moves}):
        stranded = execute(
            f"SELECT EXISTS (SELECT 1 FROM lane_waiting WHERE service_id = {m} AND environment = {m})"
            f" AND NOT EXISTS (SELECT 1 FROM lane_occupants WHERE service_id = {m} AND environment = {m})",
            (service_id, environment, service_id, environment),
        ).fetchone()
        if stranded[0]:
            raise _lane_conflict(flows, moves[0].flow_id)


def _lane_conflict(flows: Sequence[Flow], flow_id: str) -> ConcurrencyConflict:
    """A lost compare-and-set of a lane, named by the flow whose move lost it."""
    for flow in flows:
        if flow.id == flow_id:
            return ConcurrencyConflict(flow.id, flow.version)
    return ConcurrencyConflict(flow_id, 0)


class SQLFlowReads:
    """The flow reads of the SQL backends: one set of queries, written with the
    driver's placeholder ``MARK`` (``?`` or ``%s``). Each backend runs them through
    ``_rows``, with its own connections and its own error translation."""

    MARK: ClassVar[str]

    def _rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """The rows of one read."""
        raise NotImplementedError

    def _flow(self, sql: str, *args: str) -> Flow | None:
        rows = self._rows(sql, args)
        return flow_from_body(*rows[0]) if rows else None

    def get(self, flow_id: str) -> Flow:
        flow = self._flow(f"SELECT body, version FROM flows WHERE id = {self.MARK}", flow_id)
        if flow is None:
            raise UnknownFlow(flow_id)
        return flow

    def find_by_deployment(self, deployment_id: str) -> Flow:
        flow = self._flow(
            f"SELECT f.body, f.version FROM deployments d JOIN flows f ON f.id = d.flow_id WHERE d.id = {self.MARK}",
            deployment_id,
        )
        if flow is None:
            raise UnknownDeployment(deployment_id)
        return flow

    def find_by_promotion(self, promotion_id: str) -> Flow:
        flow = self._flow(
            "SELECT f.body, f.version FROM promotions p JOIN deployments d ON d.id = p.deployment_id"
            f" JOIN flows f ON f.id = d.flow_id WHERE p.id = {self.MARK}",
            promotion_id,
        )
        if flow is None:
            raise UnknownPromotion(None, promotion_id)
        return flow

    def find_by_key(self, artifact_id: str, service_id: str) -> Flow | None:
        mark = self.MARK
        return self._flow(
            f"SELECT body, version FROM flows WHERE artifact_id = {mark} AND service_id = {mark}",
            artifact_id,
            service_id,
        )

    def list_flows(
        self,
        *,
        service_id: str | None = None,
        state: FlowState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Flow]:
        check_page(limit, offset)
        mark, where, args = self.MARK, [], []
        if service_id is not None:
            where.append(f"service_id = {mark}")
            args.append(service_id)
        if state is not None:
            where.append(f"state = {mark}")
            args.append(state.value)
        sql = "SELECT body, version FROM flows"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._rows(sql + f" ORDER BY seq DESC LIMIT {mark} OFFSET {mark}", [*args, limit, offset])
        return [flow_from_body(*row) for row in rows]

    def history(self, flow_id: str) -> list[HistoryEntry]:
        rows = self._rows(f"SELECT body FROM history WHERE flow_id = {self.MARK} ORDER BY seq", (flow_id,))
        return [history_entry(body) for (body,) in rows]

    def lane(self, service_id: str, environment: str, *, limit: int = 4) -> Lane:
        mark = self.MARK
        rows = self._rows(
            f"SELECT 0, flow_id, 0 FROM lane_occupants WHERE service_id = {mark} AND environment = {mark}"
            " UNION ALL SELECT * FROM (SELECT 1, flow_id, n FROM lane_waiting"
            f" WHERE service_id = {mark} AND environment = {mark} ORDER BY n LIMIT {mark}) w ORDER BY 1, 3",
            (service_id, environment, service_id, environment, limit + 1),
        )
        occupant = next((flow_id for kind, flow_id, _ in rows if kind == 0), None)
        waiting = tuple(flow_id for kind, flow_id, _ in rows if kind == 1)
        return Lane(service_id, environment, occupant, waiting[:limit], len(waiting) > limit)

    def lane_place(self, service_id: str, environment: str, flow_id: str) -> int | None:
        mark = self.MARK
        rows = self._rows(
            f"SELECT (SELECT count(*) FROM lane_waiting a WHERE a.service_id = w.service_id"
            " AND a.environment = w.environment AND a.n <= w.n)"
            f" FROM lane_waiting w WHERE w.flow_id = {mark} AND w.environment = {mark} AND w.service_id = {mark}",
            (flow_id, environment, service_id),
        )
        return int(rows[0][0]) if rows else None

    def last_success(self, service_id: str, environment: str, *, excluding: str | None = None) -> Artifact | None:
        mark = self.MARK
        rows = self._rows(
            "SELECT artifact_group, artifact_name, artifact_version FROM successes"
            f" WHERE service_id = {mark} AND environment = {mark} AND artifact_id <> {mark} ORDER BY n DESC LIMIT 1",
            (service_id, environment, "" if excluding is None else excluding),  # no artifact id is empty
        )
        return _make_artifact(*rows[0]) if rows else None


# A stored flow's body: compact positional JSON rather than the converter's keyed
# form, since loading and saving the aggregate is most of a trigger's own work:
# [format, id, group, name, version, service id, state, created, updated,
#  [[deployment id, environment, state, [[promotion id, name, state], ...]], ...]]
# Format 1 (the first) had no leading number; format 2 added it and nothing else.
# Format 3 adds what steering records, each only where it is not the default: an
# attempt after a deployment's or promotion's state when above 1, and a last
# element {"pause": ..., "rollback": ...} when the flow has either. A flow without
# them is written in format 2, as before, which every earlier flowfsm reads.
# Format 4 adds what the gates record: a deployment with approvals or a freeze
# override, or waiting at a gate, carries its attempt and then {"approvals": [...],
# "override": ...}; a
# flow without them is written as before, so an earlier flowfsm reads it, and one
# with them is refused by an earlier flowfsm rather than read without its gates.
# The artifact's author (which an approval gate reads) is one of them, in the last
# element: {"author": ...}.
BODY_FORMAT: Final = 4
"""The format of the flow bodies this flowfsm writes; it reads every earlier one."""
_FLOW_STATES: Final = {s.value: s for s in FlowState}
_DEPLOYMENT_STATES: Final = {s.value: s for s in DeploymentState}
_PROMOTION_STATES: Final = {s.value: s for s in PromotionState}
_SUCCESS: Final = DeploymentState.SUCCESS
_dumps: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def flow_body(flow: Flow) -> str:
    """The JSON a SQL backend stores for ``flow`` (its version is a column)."""
    artifact, created, updated = flow.artifact, flow.created_at, flow.updated_at
    body = [
        2,
        flow.id,
        artifact.group,
        artifact.name,
        artifact.version,
        flow.service_id,
        flow.state.value,
        created.isoformat() if created else None,
        updated.isoformat() if updated else None,
        [
            [d.id, d.environment, d.state.value, [[p.id, p.name, p.state.value] for p in d.promotions]]
            for d in flow.deployments
        ],
    ]
    if flow.pause is not None or flow.rollback is not None or flow.author is not None or _retried(flow):
        body = _format_3(flow, body)
    return _dumps(body)


def _gated(deployment: Deployment) -> bool:
    """Format 4: gate records, or a gate's state, which no earlier flowfsm can read
    (it must refuse the newer format rather than fail on an unknown state)."""
    return bool(deployment.approvals) or deployment.override is not None or deployment.state in GATED


def _retried(flow: Flow) -> bool:
    """The flow needs format 3 or 4: an attempt above 1, or gate records."""
    for d in flow.deployments:
        if d.attempt != 1 or _gated(d):
            return True
        for p in d.promotions:
            if p.attempt != 1:
                return True
    return False


def _format_3(flow: Flow, body: list[Any]) -> list[Any]:
    """Format 3: attempts above 1, and the pause and rollback (see ``BODY_FORMAT``)."""
    from flowfsm.converter import unstructure  # only steered flows need it

    deployments: list[list[Any]] = []
    gated = False
    for d in flow.deployments:
        promotions = [[p.id, p.name, p.state.value, *([p.attempt] if p.attempt != 1 else [])] for p in d.promotions]
        row: list[Any] = [d.id, d.environment, d.state.value, promotions]
        if _gated(d):
            gated = True
            gates: dict[str, Any] = {}
            if d.approvals:
                gates["approvals"] = list(d.approvals)
            if d.override is not None:
                gates["override"] = d.override
            row += [d.attempt, gates]
        elif d.attempt != 1:
            row.append(d.attempt)
        deployments.append(row)
    extra: dict[str, Any] = {}
    if flow.author is not None:  # a gate reads it (self-approval): format 4, as the gates' records
        extra["author"] = flow.author
        gated = True
    body[0], body[-1] = (4 if gated else 3), deployments
    if flow.pause is not None:
        extra["pause"] = unstructure(flow.pause)
    if flow.rollback is not None:
        extra["rollback"] = unstructure(flow.rollback)
    if extra:
        body.append(extra)
    return body


def flow_from_body(body: str | list[Any], version: int) -> Flow:
    """The flow ``flow_body`` stored (PostgreSQL hands back ``jsonb`` already parsed)."""
    data = json.loads(body) if isinstance(body, str) else body
    if type(data[0]) is int:  # format 2 on: the format first
        if data[0] > BODY_FORMAT:
            raise RepositoryError("sql", f"flow body format {data[0]}; this flowfsm reads up to {BODY_FORMAT}")
        if data[0] >= 3:
            return _flow_from_format_3(data[1:], version)
        data = data[1:]
    flow_id, group, name, artifact_version, service_id, state, created, updated, deployments = data
    promotion_states = _PROMOTION_STATES
    return _make_flow(
        flow_id,
        _make_artifact(group, name, artifact_version),
        service_id,
        tuple(
            [
                _make_deployment(
                    d_id,
                    environment,
                    tuple([_make_promotion(p_id, p_name, promotion_states[p]) for p_id, p_name, p in promotions]),
                    _DEPLOYMENT_STATES[d_state],
                )
                for d_id, environment, d_state, promotions in deployments
            ]
        ),
        _FLOW_STATES[state],
        version,
        dt.datetime.fromisoformat(created) if created else None,
        dt.datetime.fromisoformat(updated) if updated else None,
    )


def _flow_from_format_3(data: list[Any], version: int) -> Flow:
    """Formats 3 and 4 (format 4 adds a deployment's gate records, a 6th element)."""
    from flowfsm.converter import structure  # only steered flows need it

    flow_id, group, name, artifact_version, service_id, state, created, updated, deployments, *rest = data
    extra = rest[0] if rest else {}
    promotion_states = _PROMOTION_STATES
    return _make_flow(
        flow_id,
        _make_artifact(group, name, artifact_version),
        service_id,
        tuple(
            [
                _make_deployment(
                    d[0],
                    d[1],
                    tuple(
                        [_make_promotion(p[0], p[1], promotion_states[p[2]], p[3] if len(p) > 3 else 1) for p in d[3]]
                    ),
                    _DEPLOYMENT_STATES[d[2]],
                    d[4] if len(d) > 4 else 1,
                    tuple(d[5].get("approvals", ())) if len(d) > 5 else (),
                    d[5].get("override") if len(d) > 5 else None,
                )
                for d in deployments
            ]
        ),
        _FLOW_STATES[state],
        version,
        dt.datetime.fromisoformat(created) if created else None,
        dt.datetime.fromisoformat(updated) if updated else None,
        structure(extra["pause"], Pause) if "pause" in extra else None,
        structure(extra["rollback"], Rollback) if "rollback" in extra else None,
        extra.get("author"),
    )
