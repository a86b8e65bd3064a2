"""``PostgresRepository``: one database shared by many engines, on many machines.

Needs the ``postgres`` extra (psycopg 3 and psycopg-pool); psycopg is imported
when a repository is created, not with this module.

The layout follows ``SQLiteRepository``: each flow whole, as JSON, beside indexed
columns, with index tables for deployments and promotions, and an outbox. What
several engines need on top:

- a save is a compare-and-set on the flow's version (``UPDATE ... WHERE version``),
  and a new flow is inserted ``ON CONFLICT DO NOTHING`` on its id and its unique
  (artifact id, service id) key, so a lost race is a ``ConcurrencyConflict`` that
  the engine retries, never a duplicate flow;
- a commit is one SQL statement (the flows and their outbox rows as data-modifying
  CTEs), so the engine's usual commit, one flow, is one round trip and its own
  transaction;
- ``claim`` locks outbox rows ``FOR UPDATE SKIP LOCKED`` and hands each flow's
  requests out in order, a prefix at a time, so dispatchers in several processes
  share the work without delivering a flow's requests out of order;
- leases use the database's clock, so machines need not agree on the time;
- a commit that adds HookRequests or sets timers is followed by a ``NOTIFY``, which
  ``listen`` (the ``Wakeups`` role) turns into a worker's wakeup;
- the schema lives in its own PostgreSQL schema (``flowfsm`` by default), created
  and migrated under an advisory lock when the first engine starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from flowfsm.converter import hook_requests_json
from flowfsm.errors import (
    ConcurrencyConflict,
    RepositoryError,
    ValidationError,
    bounded,
)
from flowfsm.lanes import LaneMove
from flowfsm.model import FINISHED, DeliveryAttempt, Flow, HistoryEntry, HookRecord, HookRequest, Timer
from flowfsm.repositories._common import (
    LANE_LINE,
    PENDING,
    SQLFlowReads,
    apply_lane_moves,
    driver_errors,
    flow_body,
    history_rows,
    hook_record,
    migrate,
    readable_claim,
    success_rows,
    timer_from_row,
    wait_seconds,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresRepository"]

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # version 1
        """CREATE TABLE flows (
            seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            id text PRIMARY KEY,
            artifact_id text NOT NULL,
            service_id text NOT NULL,
            state text NOT NULL,
            version integer NOT NULL,
            body jsonb NOT NULL,
            UNIQUE (artifact_id, service_id)
        )""",
        "CREATE INDEX flows_by_service_state ON flows (service_id, state, seq)",
        "CREATE INDEX flows_by_state ON flows (state, seq)",
        "CREATE TABLE deployments (id text PRIMARY KEY, flow_id text NOT NULL REFERENCES flows (id))",
        """CREATE TABLE promotions (
            id text PRIMARY KEY,
            deployment_id text NOT NULL REFERENCES deployments (id)
        )""",
        """CREATE TABLE outbox (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            flow_id text NOT NULL REFERENCES flows (id),
            body jsonb NOT NULL,
            lease_until timestamptz NOT NULL DEFAULT 'epoch',
            delivered_at timestamptz
        )""",
        "CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL",
        "CREATE INDEX outbox_by_flow ON outbox (flow_id, seq)",
    ),
    (  # version 2: the delivery log
        "ALTER TABLE outbox ADD COLUMN dead_at timestamptz",
        "DROP INDEX outbox_pending",
        "CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL AND dead_at IS NULL",
        """CREATE TABLE delivery_attempts (
            n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id text NOT NULL REFERENCES outbox (id),
            at timestamptz NOT NULL,
            status_code integer,
            error text,
            duration double precision NOT NULL
        )""",
        "CREATE INDEX delivery_attempts_by_request ON delivery_attempts (request_id)",
        """CREATE TABLE disabled_endpoints (
            url text PRIMARY KEY,
            disabled_at timestamptz NOT NULL DEFAULT now()
        )""",
    ),
    (  # version 3: each flow's pending requests, for claim and the engine's check
        f"CREATE INDEX outbox_pending_by_flow ON outbox (flow_id, seq) WHERE {PENDING}",
    ),
    (  # version 4: durable timers
        """CREATE TABLE timers (
            id text PRIMARY KEY,
            flow_id text NOT NULL REFERENCES flows (id),
            deployment_id text NOT NULL,
            kind text NOT NULL,
            due timestamptz NOT NULL,
            lease_until timestamptz NOT NULL DEFAULT 'epoch'
        )""",
        "CREATE INDEX timers_by_due ON timers (due)",
        "CREATE INDEX timers_by_flow ON timers (flow_id)",
    ),
    (  # version 5: each flow's history, and the successes a rollback returns to (newest: highest n)
        """CREATE TABLE history (
            flow_id text NOT NULL REFERENCES flows (id),
            seq integer NOT NULL,
            body jsonb NOT NULL,
            PRIMARY KEY (flow_id, seq)
        )""",
        """CREATE TABLE successes (
            n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            service_id text NOT NULL,
            environment text NOT NULL,
            artifact_group text NOT NULL,
            artifact_name text NOT NULL,
            artifact_version text NOT NULL,
            artifact_id text NOT NULL,
            flow_id text NOT NULL REFERENCES flows (id),
            at timestamptz,
            UNIQUE (flow_id, environment)
        )""",
        "CREATE INDEX successes_by_environment ON successes (service_id, environment, n)",
        # The successes stored so far, oldest flow first (bodies of format 1 lack the leading format number).
        """INSERT INTO successes (service_id, environment, artifact_group, artifact_name, artifact_version,
            artifact_id, flow_id, at)
        SELECT f.service_id, d.value->>1, f.body->>(b.o + 1), f.body->>(b.o + 2), f.body->>(b.o + 3),
            f.artifact_id, f.id, (f.body->>(b.o + 7))::timestamptz
        FROM flows f
        CROSS JOIN LATERAL (SELECT CASE jsonb_typeof(f.body->0) WHEN 'number' THEN 1 ELSE 0 END AS o) b
        CROSS JOIN LATERAL jsonb_array_elements(f.body->(b.o + 8)) WITH ORDINALITY AS d(value, n)
        WHERE d.value->>2 = 'success'
        ORDER BY f.seq, d.n""",
    ),
    (  # version 6: the lanes of services that run one flow at a time per environment (SPEC §11)
        """CREATE TABLE lane_occupants (
            service_id text NOT NULL,
            environment text NOT NULL,
            flow_id text NOT NULL REFERENCES flows (id),
            PRIMARY KEY (service_id, environment)
        )""",
        """CREATE TABLE lane_waiting (
            n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            service_id text NOT NULL,
            environment text NOT NULL,
            flow_id text NOT NULL REFERENCES flows (id),
            UNIQUE (flow_id, environment)
        )""",
        f"CREATE INDEX {LANE_LINE} ON lane_waiting (service_id, environment, n)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

log = logging.getLogger("flowfsm.repositories")

_BACKEND: Final = "postgres"
_MIGRATION_LOCK: Final = 0x666C6F77  # "flow": one advisory lock for every flowfsm schema
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CHANNEL: Final = "flowfsm"
"""The ``NOTIFY`` channel of every flowfsm schema; a notice's payload is
``"SCHEMA hooks"`` or ``"SCHEMA timers"``, so schemas sharing a database keep apart."""


class PostgresRepository(SQLFlowReads):
    """A ``Repository`` in PostgreSQL, shared by every engine that uses the same
    ``dsn`` and ``schema``."""

    MARK = "%s"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "flowfsm",
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
    ) -> None:
        """``dsn``: a libpq connection string or URL. ``schema``: the PostgreSQL
        schema holding flowfsm's tables. ``min_size``/``max_size``: the connection
        pool. ``timeout``: seconds to wait for a connection before failing."""
        if not _IDENTIFIER.fullmatch(schema):
            raise ValidationError("schema", f"{schema!r} is not a lower-case SQL identifier")
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as e:  # pragma: no cover - the extra is installed for the tests
            raise RepositoryError(_BACKEND, "needs the 'postgres' extra: pip install flowfsm[postgres]") from e
        self.schema = schema
        _redact_pool_log()
        _check_dsn(dsn)
        # libpq waits at most connect_timeout (whole seconds, 2 at least) per attempt.
        kwargs = {"options": f"-c search_path={schema}", "autocommit": True, "connect_timeout": max(2, round(timeout))}
        _first_connection(dsn, kwargs)
        self._dsn, self._kwargs = dsn, dict[str, Any](kwargs)  # for listen's connection, outside the pool
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs=kwargs,
            name=f"flowfsm-{schema}",
        )
        with _driver_errors("cannot connect"):
            self._pool.open(wait=True, timeout=timeout)
        try:
            self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresRepository:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresRepository(schema={self.schema!r})"

    @contextlib.contextmanager
    def _connection(self, what: str, *, transaction: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, driver errors raised as ``RepositoryError``.

        Connections run in autocommit, so a lone statement is one round trip;
        ``transaction=True`` wraps the block in one transaction, committed on
        success and rolled back on any error.
        """
        with _driver_errors(what), self._pool.connection() as conn:
            if transaction:
                with conn.transaction():
                    yield conn
            else:
                yield conn

    def _migrate(self) -> None:
        with self._connection("migration failed", transaction=True) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            migrate(
                conn.execute,
                MIGRATIONS,
                backend=_BACKEND,
                where=f"schema {self.schema!r}",
                save_version="INSERT INTO flowfsm_meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            )

    # --- flows -----------------------------------------------------------------------

    def _rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._connection("read failed") as conn:
            return conn.execute(sql, args).fetchall()

    def commit(
        self,
        flows: Sequence[Flow],
        hook_requests: Sequence[HookRequest] = (),
        *,
        lease: float = 0.0,
        timers: Sequence[Timer] = (),
        cancel: Sequence[str] = (),
        history: Sequence[HistoryEntry] = (),
        lanes: Sequence[LaneMove] = (),
    ) -> None:
        sql, args = _commit_statement(flows, hook_requests, wait_seconds("lease", lease), history)
        finished = [f.id for f in flows if f.state in FINISHED]
        timed = bool(timers or cancel or finished)
        # One statement is one transaction, so a lone flow (the engine's usual
        # commit) is saved in one round trip; several flows, timers, or lanes share a
        # transaction, so that one lost compare-and-set rolls back all of it.
        with self._connection("write failed", transaction=len(flows) > 1 or timed or bool(lanes)) as conn:
            if lanes:
                self._lock_lanes(conn, lanes)
            (saved,) = conn.execute(sql, args).fetchall()
            for flow, count in zip(flows, saved, strict=True):
                if count != 1:
                    raise ConcurrencyConflict(flow.id, flow.version)
            if timed:
                conn.execute("DELETE FROM timers WHERE id = ANY(%s) OR flow_id = ANY(%s)", (list(cancel), finished))
                if timers:
                    conn.execute(
                        "INSERT INTO timers (id, flow_id, deployment_id, kind, due)"
                        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])"
                        " ON CONFLICT (id) DO UPDATE SET flow_id = EXCLUDED.flow_id, deployment_id ="
                        " EXCLUDED.deployment_id, kind = EXCLUDED.kind, due = EXCLUDED.due, lease_until = 'epoch'",
                        (
                            [t.id for t in timers],
                            [t.flow_id for t in timers],
                            [t.deployment_id for t in timers],
                            [t.kind.value for t in timers],
                            [t.due for t in timers],
                        ),
                    )
            if lanes:
                apply_lane_moves(conn.execute, "%s", flows, lanes)
        kinds = [kind for kind, added in (("hooks", hook_requests), ("timers", timers)) if added]
        if kinds:
            self._announce(kinds)

    def _lock_lanes(self, conn: psycopg.Connection[Any], lanes: Sequence[LaneMove]) -> None:
        """Take the transaction's lock on each lane it moves, in one order (no two
        commits wait for each other's), before its flows: commits that move flows
        in one lane run one after the other, so each checks the lane as the one
        before it left it (``apply_lane_moves``)."""
        for service_id, environment in sorted({(m.service_id, m.environment) for m in lanes}):
            key = f"{self.schema}\x1f{service_id}\x1f{environment}"
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    def _announce(self, kinds: list[str]) -> None:
        """Wake listening workers (``listen``) once a commit added work: a ``NOTIFY``
        in a transaction of its own, after the commit, so it is sent only for work
        that is visible. Inside the commit's transaction it would hold PostgreSQL's
        lock on the notification queue through the commit's flush to disk, so that
        engines committing at once would take turns; here, with
        ``synchronous_commit`` off (a lost notice costs only a poll), it holds it
        for microseconds. It never fails the commit, which is done."""
        import psycopg
        from psycopg_pool import PoolTimeout

        notify = "".join(f", pg_notify('{_CHANNEL}', %s)" for _ in kinds)
        try:
            with self._pool.connection() as conn:
                conn.execute(
                    f"SELECT set_config('synchronous_commit', 'off', true){notify}",
                    [f"{self.schema} {k}" for k in kinds],
                )
        except (psycopg.Error, PoolTimeout) as e:
            log.warning(
                "could not announce new work to listening workers (%s); they find it by polling", bounded(str(e))
            )

    # --- wakeups ---------------------------------------------------------------------

    def listen(self, wake: Callable[[str], None], stop: threading.Event) -> None:
        import psycopg

        prefix = f"{self.schema} "
        with _driver_errors("listening failed"), psycopg.connect(self._dsn, **self._kwargs) as conn:
            conn.execute(f"LISTEN {_CHANNEL}")
            wake("ready")
            while not stop.is_set():
                # Returns after the timeout, so that ``stop`` is seen within it.
                for notice in conn.notifies(timeout=0.2):
                    if notice.payload.startswith(prefix):
                        wake(notice.payload[len(prefix) :])

    def next_timer_due(self) -> dt.datetime | None:
        due = self._rows("SELECT min(due) FROM timers", ())[0][0]
        return None if due is None else due.astimezone(dt.UTC)

    # --- timers ----------------------------------------------------------------------

    def claim_due(self, now: dt.datetime, limit: int = 100, *, lease: float = 30.0) -> list[Timer]:
        lease = wait_seconds("lease", lease)
        with self._connection("claim failed", transaction=True) as conn:
            # The locked rows are updated where they lie (their ctid), not found again
            # through the primary key: that second descent grew with the table.
            rows = conn.execute(
                "WITH due AS MATERIALIZED (SELECT ctid FROM timers WHERE due <= %s AND lease_until <= now()"
                " ORDER BY due, id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE timers t SET lease_until = now() + make_interval(secs => %s) FROM due WHERE t.ctid = due.ctid"
                " RETURNING t.flow_id, t.deployment_id, t.kind, t.due",
                (now, limit, lease),
            ).fetchall()
        return sorted((timer_from_row(*row) for row in rows), key=lambda t: (t.due, t.id))

    def complete_timers(self, timers: Sequence[Timer]) -> None:
        with self._connection("write failed") as conn:
            conn.execute(
                "DELETE FROM timers t USING unnest(%s::text[], %s::timestamptz[]) AS c(id, due)"
                " WHERE t.id = c.id AND t.due = c.due",
                ([t.id for t in timers], [t.due for t in timers]),
            )

    def release_timers(self, ids: Sequence[str]) -> None:
        self._update("UPDATE timers SET lease_until = 'epoch' WHERE id = ANY(%s)", ids)

    def timers(self, flow_id: str) -> list[Timer]:
        rows = self._rows(
            "SELECT flow_id, deployment_id, kind, due FROM timers WHERE flow_id = %s ORDER BY due, id", (flow_id,)
        )
        return [timer_from_row(*row) for row in rows]

    # --- outbox ----------------------------------------------------------------------

    def claim(self, limit: int = 100, *, lease: float = 30.0) -> list[HookRequest]:
        lease = wait_seconds("lease", lease)
        with self._connection("claim failed", transaction=True) as conn:
            # The plans are right whatever the statistics say, but the first one's
            # cost is estimated as a scan of every pending row, which would set JIT
            # compiling for longer than the claim itself takes.
            conn.execute("SET LOCAL jit = off")
            candidates = conn.execute(_CLAIM_CANDIDATES, {"limit": limit}).fetchall()
            if not candidates:
                return []
            rows = conn.execute(_CLAIM_TAKE, {"lease": lease, "mine": [seq for (seq,) in candidates]}).fetchall()
        return readable_claim(_BACKEND, [(flow_id, body) for _, flow_id, body in sorted(rows, key=lambda r: r[0])])

    def _update(self, sql: str, ids: Sequence[str], *args: Any) -> None:
        with self._connection("write failed") as conn:
            conn.execute(sql, (*args, list(ids)))

    def mark_delivered(self, ids: Sequence[str]) -> None:
        self._update(
            f"UPDATE outbox SET delivered_at = now(), lease_until = 'epoch' WHERE id = ANY(%s) AND {PENDING}",
            ids,
        )

    def release(self, ids: Sequence[str], *, delay: float = 0.0) -> None:
        delay = wait_seconds("delay", delay)
        self._update(
            "UPDATE outbox SET lease_until = CASE WHEN %s > 0 THEN now() + make_interval(secs => %s)"
            f" ELSE 'epoch' END WHERE id = ANY(%s) AND {PENDING}",
            ids,
            delay,
            delay,
        )

    def renew(self, ids: Sequence[str], *, lease: float = 30.0) -> None:
        self._update(
            "UPDATE outbox SET lease_until = greatest(lease_until, now() + make_interval(secs => %s))"
            f" WHERE id = ANY(%s) AND {PENDING}",
            ids,
            wait_seconds("lease", lease),
        )

    def waiting_flows(self, ids: Sequence[str]) -> frozenset[str]:
        rows = self._rows(
            "SELECT DISTINCT o.flow_id FROM outbox o WHERE o.id = ANY(%s)"
            # PENDING's bare columns are the inner query's own (p's).
            f" AND EXISTS (SELECT 1 FROM outbox p WHERE p.flow_id = o.flow_id AND p.seq < o.seq AND {PENDING}"
            " AND p.id <> ALL(%s))",
            (list(ids), list(ids)),
        )
        return frozenset(flow_id for (flow_id,) in rows)

    def count_pending(self) -> int:
        with self._connection("read failed") as conn:
            row = conn.execute(f"SELECT count(*) FROM outbox WHERE {PENDING}").fetchone()
        return int(row[0]) if row else 0

    def hook_requests(self, flow_id: str) -> list[HookRecord]:
        return self._records("WHERE flow_id = %s ORDER BY seq", (flow_id,))

    def dead_requests(self, limit: int = 100) -> list[HookRecord]:
        return self._records("WHERE dead_at IS NOT NULL ORDER BY seq LIMIT %s", (limit,))

    def _records(self, where: str, args: tuple[Any, ...]) -> list[HookRecord]:
        with self._connection("read failed") as conn:
            rows = conn.execute(
                "SELECT o.body, o.delivered_at, o.dead_at, coalesce("
                "  json_agg(json_build_array(a.at, a.status_code, a.error, a.duration) ORDER BY a.n)"
                "  FILTER (WHERE a.n IS NOT NULL), '[]')"
                " FROM (SELECT * FROM outbox " + where + ") o"
                " LEFT JOIN delivery_attempts a ON a.request_id = o.id"
                " GROUP BY o.seq, o.body, o.delivered_at, o.dead_at ORDER BY o.seq",
                args,
            ).fetchall()
        return [hook_record(body, delivered, dead, attempts) for body, delivered, dead, attempts in rows]

    # --- the delivery log ------------------------------------------------------------

    def record_attempt(self, request_id: str, attempt: DeliveryAttempt) -> int:
        # One statement, one round trip. Its count does not see the row the statement
        # itself adds (one snapshot), so that row is counted from what it returns.
        with self._connection("write failed") as conn:
            row = conn.execute(
                "WITH added AS (INSERT INTO delivery_attempts (request_id, at, status_code, error, duration)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING 1)"
                " SELECT count(*) + (SELECT count(*) FROM added) FROM delivery_attempts WHERE request_id = %s",
                (request_id, attempt.at, attempt.status_code, attempt.error, attempt.duration, request_id),
            ).fetchone()
        return int(row[0]) if row else 0

    def mark_dead(self, ids: Sequence[str]) -> None:
        self._update(f"UPDATE outbox SET dead_at = now(), lease_until = 'epoch' WHERE id = ANY(%s) AND {PENDING}", ids)

    def requeue(self, ids: Sequence[str]) -> None:
        self._update(
            "UPDATE outbox SET dead_at = NULL, lease_until = 'epoch' WHERE id = ANY(%s) AND dead_at IS NOT NULL", ids
        )

    def disable_endpoint(self, url: str) -> None:
        with self._connection("write failed") as conn:
            conn.execute("INSERT INTO disabled_endpoints (url) VALUES (%s) ON CONFLICT DO NOTHING", (url,))

    def enable_endpoint(self, url: str) -> None:
        with self._connection("write failed") as conn:
            conn.execute("DELETE FROM disabled_endpoints WHERE url = %s", (url,))

    def disabled_endpoints(self) -> frozenset[str]:
        with self._connection("read failed") as conn:
            return frozenset(url for (url,) in conn.execute("SELECT url FROM disabled_endpoints"))


# Claiming is two statements. Each checks a row's flow with a scalar subquery, not
# NOT EXISTS: that is always one probe of outbox_pending_by_flow per row, where an
# anti-join on a table not yet analyzed was planned as a scan of the whole index per
# row (0.2 s for a claim of 100 among 10,000 pending, against 5 ms now). Inside the
# subqueries, PENDING's bare columns are p's.

_CLAIM_CANDIDATES: Final = (
    # Oldest first, skipping rows another claim holds (locked now, or leased
    # earlier) and rows queued behind a leased request of their flow.
    "SELECT o.seq FROM outbox o WHERE o.delivered_at IS NULL AND o.dead_at IS NULL AND o.lease_until < now()"
    " AND (SELECT true FROM outbox p WHERE p.flow_id = o.flow_id AND p.seq < o.seq"
    f" AND {PENDING} AND p.lease_until >= now() LIMIT 1) IS NULL"
    " ORDER BY o.seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
)
_CLAIM_TAKE: Final = (
    # A flow's requests go out in order: take only the leading run of its pending
    # requests that this claim holds (one before them may be locked by a concurrent
    # claim); the rest wait for whoever holds the first.
    "UPDATE outbox o SET lease_until = now() + make_interval(secs => %(lease)s) WHERE o.seq = ANY(%(mine)s)"
    " AND (SELECT true FROM outbox p WHERE p.flow_id = o.flow_id AND p.seq < o.seq"
    f" AND {PENDING} AND p.seq <> ALL(%(mine)s) LIMIT 1) IS NULL"
    " RETURNING o.seq, o.flow_id, o.body"
)


def _commit_statement(
    flows: Sequence[Flow], hook_requests: Sequence[HookRequest], lease: float, history: Sequence[HistoryEntry] = ()
) -> tuple[str, dict[str, Any]]:
    """One SQL statement that saves ``flows``, queues ``hook_requests`` and appends
    the ``history`` entries, and returns one row: for each flow, 1 if it was saved,
    0 if its compare-and-set lost.

    Each flow is a data-modifying CTE (``saved0``, ``saved1``, ...); the outbox and
    history rows are inserted only if every flow was saved, so a lone flow's
    conflict leaves nothing behind. A new flow's deployment and promotion ids go in beside it, from
    arrays, so the statement's shape depends only on which flows are new.
    """
    ctes: list[str] = []
    args: dict[str, Any] = {}
    for i, flow in enumerate(flows):
        args[f"id{i}"], args[f"state{i}"], args[f"version{i}"] = flow.id, flow.state.value, flow.version
        args[f"body{i}"] = flow_body(flow)
        if flow.version == 1:
            args[f"artifact{i}"], args[f"service{i}"] = flow.artifact.id, flow.service_id
            args[f"deployments{i}"] = [d.id for d in flow.deployments]
            args[f"promotions{i}"] = [p.id for d in flow.deployments for p in d.promotions]
            args[f"promoted{i}"] = [d.id for d in flow.deployments for _ in d.promotions]
            ctes += [
                f"saved{i} AS (INSERT INTO flows (id, artifact_id, service_id, state, version, body)"
                f" VALUES (%(id{i})s, %(artifact{i})s, %(service{i})s, %(state{i})s, 1, %(body{i})s::jsonb)"
                " ON CONFLICT DO NOTHING RETURNING id)",
                f"deployments{i} AS (INSERT INTO deployments (id, flow_id)"
                f" SELECT d.id, s.id FROM saved{i} s, unnest(%(deployments{i})b::text[]) AS d(id))",
                f"promotions{i} AS (INSERT INTO promotions (id, deployment_id)"
                f" SELECT p.id, p.deployment_id FROM saved{i},"
                f" unnest(%(promotions{i})b::text[], %(promoted{i})b::text[]) AS p(id, deployment_id))",
            ]
        else:
            ctes.append(
                f"saved{i} AS (UPDATE flows"
                f" SET state = %(state{i})s, version = %(version{i})s, body = %(body{i})s::jsonb"
                f" WHERE id = %(id{i})s AND version = %(version{i})s - 1 RETURNING id)"
            )
    every_flow_saved = " AND ".join(f"EXISTS (SELECT FROM saved{i})" for i in range(len(flows))) or "true"
    if history:
        rows = history_rows(history)
        args["h_flows"], args["h_seqs"] = [r[0] for r in rows], [r[1] for r in rows]
        args["h_bodies"] = [r[2] for r in rows]
        ctes.append(
            "history AS (INSERT INTO history (flow_id, seq, body)"
            " SELECT h.flow_id, h.seq, h.body::jsonb"
            " FROM unnest(%(h_flows)s::text[], %(h_seqs)s::integer[], %(h_bodies)s::text[]) AS h(flow_id, seq, body)"
            f" WHERE {every_flow_saved})"
        )
    successes = success_rows(flows)
    if successes:  # the rollback index: each deployment saved success, once
        columns = list(zip(*successes, strict=True))
        for j, name in enumerate(("s_services", "s_envs", "s_groups", "s_names", "s_versions", "s_ids", "s_flows")):
            args[name] = list(columns[j])
        args["s_ats"] = list(columns[7])
        ctes.append(
            "successes AS (INSERT INTO successes (service_id, environment, artifact_group, artifact_name,"
            " artifact_version, artifact_id, flow_id, at)"
            " SELECT * FROM unnest(%(s_services)s::text[], %(s_envs)s::text[], %(s_groups)s::text[],"
            " %(s_names)s::text[], %(s_versions)s::text[], %(s_ids)s::text[], %(s_flows)s::text[],"
            f" %(s_ats)s::timestamptz[]) WHERE {every_flow_saved} ON CONFLICT (flow_id, environment) DO NOTHING)"
        )
    if hook_requests:
        # One JSON array, parsed by the server: text arrays of JSON would need escaping.
        args["requests"] = f"[{','.join(hook_requests_json(hook_requests))}]"
        args["lease"] = lease
        ctes.append(
            "queued AS (INSERT INTO outbox (id, flow_id, body, lease_until)"
            " SELECT r.body->>'id', r.body->>'flowId', r.body,"
            " CASE WHEN %(lease)s > 0 THEN now() + make_interval(secs => %(lease)s) ELSE 'epoch' END"
            " FROM jsonb_array_elements(%(requests)s::jsonb) WITH ORDINALITY AS r(body, n)"
            f" WHERE {every_flow_saved} ORDER BY r.n)"
        )
    counts = ", ".join(f"(SELECT count(*) FROM saved{i})" for i in range(len(flows)))
    with_ = f"WITH {', '.join(ctes)} " if ctes else ""
    return f"{with_}SELECT {counts}", args


def _check_dsn(dsn: str) -> None:
    """Refuse a connection string libpq cannot parse, at once. psycopg's message
    quotes the whole string, password included, so it is neither shown nor chained."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - any parse failure is the same mistake; its text holds the password
        problem = "is not a valid PostgreSQL URL or connection string"
    else:
        return
    raise ValidationError("dsn", problem)


def _first_connection(dsn: str, kwargs: dict[str, Any]) -> None:
    """One connection attempt before the pool opens, so that a server that cannot be
    reached fails once, within ``connect_timeout``, rather than after the pool's
    retries. libpq's message names the host, never the password; it is bounded and
    redacted all the same."""
    import psycopg

    try:
        psycopg.connect(dsn, **kwargs).close()
    except psycopg.Error as e:
        raise RepositoryError(_BACKEND, f"cannot connect: {bounded(str(e), 300)}") from None


class _RedactedURLs(logging.Filter):
    """Redacts the credentials of any URL in a record of psycopg's pool logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _USERINFO.sub(r"\1<redacted>@", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_USERINFO: Final = re.compile(r"(://)[^/?#@\s]*@")
_POOL_FILTER: Final = _RedactedURLs()


def _redact_pool_log() -> None:
    """Install ``_RedactedURLs`` on the ``psycopg.pool`` logger, once: its warnings
    (a failed reconnection) quote the connection string when libpq cannot parse it."""
    logger = logging.getLogger("psycopg.pool")
    if _POOL_FILTER not in logger.filters:
        logger.addFilter(_POOL_FILTER)


def _driver_errors(what: str) -> contextlib.AbstractContextManager[None]:
    """psycopg's and the pool's errors become ``RepositoryError``."""
    import psycopg
    from psycopg_pool import PoolTimeout

    return driver_errors(_BACKEND, what, (psycopg.Error, PoolTimeout))
