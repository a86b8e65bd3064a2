"""``SQLiteRepository``: the embedded default, one file, stdlib ``sqlite3``.

Flows are stored whole as JSON (the aggregate is loaded and saved whole) beside
indexed columns for the lookups; deployments and promotions get index tables so
no lookup scans. The file runs in WAL mode, so readers never wait for the writer
and several processes can share it; every write is one ``BEGIN IMMEDIATE``
transaction, and a save is a compare-and-set on the flow's version.

The schema is versioned in ``flowfsm_meta``; ``MIGRATIONS`` upgrades older files
when they are opened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

from flowfsm.converter import hook_requests_json
from flowfsm.errors import (
    ConcurrencyConflict,
    RepositoryError,
    ValidationError,
)
from flowfsm.lanes import LaneMove
from flowfsm.model import FINISHED, DeliveryAttempt, Flow, HistoryEntry, HookRecord, HookRequest, Timer
from flowfsm.repositories._common import (
    LANE_LINE,
    PENDING,
    SQLFlowReads,
    apply_lane_moves,
    driver_errors,
    due_text,
    flow_body,
    history_rows,
    hook_record,
    migrate,
    readable_claim,
    success_rows,
    timer_from_row,
    wait_seconds,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteRepository"]

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # version 1
        """CREATE TABLE flows (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            artifact_id TEXT NOT NULL,
            service_id TEXT NOT NULL,
            state TEXT NOT NULL,
            version INTEGER NOT NULL,
            body TEXT NOT NULL,
            UNIQUE (artifact_id, service_id)
        )""",
        "CREATE INDEX flows_by_service_state ON flows (service_id, state, seq)",
        "CREATE INDEX flows_by_state ON flows (state, seq)",
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            flow_id TEXT NOT NULL REFERENCES flows (id)
        ) WITHOUT ROWID""",
        """CREATE TABLE promotions (
            id TEXT PRIMARY KEY,
            deployment_id TEXT NOT NULL REFERENCES deployments (id)
        ) WITHOUT ROWID""",
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            flow_id TEXT NOT NULL REFERENCES flows (id),
            body TEXT NOT NULL,
            lease_until REAL NOT NULL DEFAULT 0,
            delivered_at TEXT
        )""",
        "CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL",
        "CREATE INDEX outbox_by_flow ON outbox (flow_id, seq)",
    ),
    (  # version 2: the delivery log
        "ALTER TABLE outbox ADD COLUMN dead_at TEXT",
        "DROP INDEX outbox_pending",
        "CREATE INDEX outbox_pending ON outbox (seq) WHERE delivered_at IS NULL AND dead_at IS NULL",
        """CREATE TABLE delivery_attempts (
            request_id TEXT NOT NULL REFERENCES outbox (id),
            at TEXT NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration REAL NOT NULL
        )""",
        "CREATE INDEX delivery_attempts_by_request ON delivery_attempts (request_id)",
        "CREATE TABLE disabled_endpoints (url TEXT PRIMARY KEY, disabled_at TEXT NOT NULL) WITHOUT ROWID",
    ),
    (  # version 3: each flow's pending requests, for the engine's check before it delivers
        f"CREATE INDEX outbox_pending_by_flow ON outbox (flow_id, seq) WHERE {PENDING}",
    ),
    (  # version 4: durable timers (due: UTC, in one fixed ISO format, so text order is time order)
        """CREATE TABLE timers (
            id TEXT PRIMARY KEY,
            flow_id TEXT NOT NULL REFERENCES flows (id),
            deployment_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            due TEXT NOT NULL,
            lease_until REAL NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        "CREATE INDEX timers_by_due ON timers (due)",
        "CREATE INDEX timers_by_flow ON timers (flow_id)",
    ),
    (  # version 5: each flow's history, and the successes a rollback returns to (newest: highest n)
        """CREATE TABLE history (
            flow_id TEXT NOT NULL REFERENCES flows (id),
            seq INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (flow_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TABLE successes (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            service_id TEXT NOT NULL,
            environment TEXT NOT NULL,
            artifact_group TEXT NOT NULL,
            artifact_name TEXT NOT NULL,
            artifact_version TEXT NOT NULL,
            artifact_id TEXT NOT NULL,
            flow_id TEXT NOT NULL REFERENCES flows (id),
            at TEXT,
            UNIQUE (flow_id, environment)
        )""",
        "CREATE INDEX successes_by_environment ON successes (service_id, environment, n)",
        # Timers kept in due order, so that a claim reads and rewrites a few adjacent pages
        # (in id order each claimed timer sat on a page of its own in a large store).
        """CREATE TABLE timers_by_due_order (
            id TEXT NOT NULL,
            flow_id TEXT NOT NULL REFERENCES flows (id),
            deployment_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            due TEXT NOT NULL,
            lease_until REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (due, id)
        ) WITHOUT ROWID""",
        "INSERT INTO timers_by_due_order SELECT id, flow_id, deployment_id, kind, due, lease_until FROM timers",
        "DROP TABLE timers",
        "ALTER TABLE timers_by_due_order RENAME TO timers",
        "CREATE UNIQUE INDEX timers_by_id ON timers (id)",
        "CREATE INDEX timers_by_flow ON timers (flow_id)",
        # The successes stored so far, oldest flow first (bodies of format 1 lack the leading format number).
        """INSERT INTO successes (service_id, environment, artifact_group, artifact_name, artifact_version,
            artifact_id, flow_id, at)
        SELECT f.service_id, json_extract(d.value, '$[1]'), json_extract(f.body, printf('$[%d]', b.o + 1)),
            json_extract(f.body, printf('$[%d]', b.o + 2)), json_extract(f.body, printf('$[%d]', b.o + 3)),
            f.artifact_id, f.id, json_extract(f.body, printf('$[%d]', b.o + 7))
        FROM flows f
        JOIN (SELECT id, CASE json_type(body, '$[0]') WHEN 'integer' THEN 1 ELSE 0 END AS o FROM flows) b
            ON b.id = f.id
        JOIN json_each(f.body, printf('$[%d]', b.o + 8)) d
        WHERE json_extract(d.value, '$[2]') = 'success'
        ORDER BY f.seq, d.key""",
    ),
    (  # version 6: the lanes of services that run one flow at a time per environment (SPEC §11)
        """CREATE TABLE lane_occupants (
            service_id TEXT NOT NULL,
            environment TEXT NOT NULL,
            flow_id TEXT NOT NULL REFERENCES flows (id),
            PRIMARY KEY (service_id, environment)
        ) WITHOUT ROWID""",
        # n: arrival order (AUTOINCREMENT: never reused, so a later arrival always has a higher n).
        """CREATE TABLE lane_waiting (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            service_id TEXT NOT NULL,
            environment TEXT NOT NULL,
            flow_id TEXT NOT NULL REFERENCES flows (id),
            UNIQUE (flow_id, environment)
        )""",
        f"CREATE INDEX {LANE_LINE} ON lane_waiting (service_id, environment, n)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_BACKEND: Final = "sqlite"
_BUSY: Final = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# The WAL switch waits on these; tests replace them to move time without sleeping.
_clock = time.monotonic
_pause = time.sleep


class SQLiteRepository(SQLFlowReads):
    """A ``Repository`` in one SQLite file (or ``":memory:"``)."""

    MARK = "?"

    def __init__(
        self,
        path: str | os.PathLike[str] = "flowfsm.db",
        *,
        timeout: float = 5.0,
        synchronous: str = "NORMAL",
    ) -> None:
        """``timeout``: how long a writer waits for another process's lock.
        ``synchronous``: ``NORMAL`` (WAL's usual choice: safe across process
        crashes) or ``FULL`` (also across power loss, slower)."""
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise RepositoryError(_BACKEND, f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = os.fspath(path)
        if not self.path:  # sqlite3 would open a private temporary database, which has no WAL
            raise ValidationError("path", "must name a SQLite file (or ':memory:'), not be empty")
        self._lock = threading.RLock()
        with _driver_errors(f"cannot open {self.path!r}"):
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            try:
                if self.path != ":memory:":
                    self._enable_wal(timeout)
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
            except BaseException:
                self._db.close()  # a repository that failed to open holds nothing open
                raise

    def _enable_wal(self, timeout: float) -> None:
        """Switch the file to WAL. The switch needs the file to itself, and SQLite does
        not always wait for that (two openers would deadlock), so several processes
        opening a new file at once retry here, for up to ``timeout`` seconds, until one
        of them has done it. SQLite's own wait is off meanwhile: this loop is the one
        that waits, so the bound is ``timeout`` and no more."""
        deadline = _clock() + timeout
        self._db.execute("PRAGMA busy_timeout = 0")
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
                if mode != "wal":
                    mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode & 0xFF not in _BUSY:
                    raise
                if _clock() >= deadline:
                    raise RepositoryError(
                        _BACKEND,
                        f"cannot open {self.path!r}: another connection kept it busy for more than"
                        f" {timeout:g} s while it was switched to WAL",
                    ) from e
                _pause(0.01)
                continue
            if mode != "wal":  # a database that cannot use WAL: stop, rather than ask again forever
                raise RepositoryError(_BACKEND, f"cannot open {self.path!r} in WAL mode (journal mode {mode!r})")
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            return

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteRepository:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteRepository({self.path!r})"

    # --- schema ----------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._write() as db:
            migrate(
                db.execute,
                MIGRATIONS,
                backend=_BACKEND,
                where=repr(self.path),
                save_version="INSERT OR REPLACE INTO flowfsm_meta VALUES ('schema_version', ?)",
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it or none of it. A failed ``COMMIT`` (the
        disk filling up as the log is written) is rolled back too: left open, the
        transaction would show its writes to this connection's reads and refuse
        every later write."""
        with self._lock, _driver_errors("write failed"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite ends some failed transactions itself (disk full)
                    self._db.execute("ROLLBACK")
                raise

    def _one(self, sql: str, args: Sequence[Any]) -> Any:
        with self._lock, _driver_errors("read failed"):
            return self._db.execute(sql, args).fetchone()

    def _rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._lock, _driver_errors("read failed"):
            return self._db.execute(sql, args).fetchall()

    # --- flows -----------------------------------------------------------------------

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
        bodies = [flow_body(flow) for flow in flows]
        entries = history_rows(history)
        successes = success_rows(flows)
        requests = [
            (r.id, r.flow_id, body) for r, body in zip(hook_requests, hook_requests_json(hook_requests), strict=True)
        ]
        lease = wait_seconds("lease", lease)
        until = time.time() + lease if lease > 0 else 0.0
        with self._write() as db:
            for flow, body in zip(flows, bodies, strict=True):
                if flow.version == 1:
                    try:
                        db.execute(
                            "INSERT INTO flows (id, artifact_id, service_id, state, version, body)"
                            " VALUES (?, ?, ?, ?, 1, ?)",
                            (flow.id, flow.artifact.id, flow.service_id, flow.state.value, body),
                        )
                    except sqlite3.IntegrityError as e:
                        raise ConcurrencyConflict(flow.id, flow.version) from e
                    db.executemany(
                        "INSERT INTO deployments (id, flow_id) VALUES (?, ?)",
                        [(d.id, flow.id) for d in flow.deployments],
                    )
                    db.executemany(
                        "INSERT INTO promotions (id, deployment_id) VALUES (?, ?)",
                        [(p.id, d.id) for d in flow.deployments for p in d.promotions],
                    )
                else:
                    cursor = db.execute(
                        "UPDATE flows SET state = ?, version = ?, body = ? WHERE id = ? AND version = ?",
                        (flow.state.value, flow.version, body, flow.id, flow.version - 1),
                    )
                    if cursor.rowcount != 1:
                        raise ConcurrencyConflict(flow.id, flow.version)
            db.executemany(
                "INSERT INTO outbox (id, flow_id, body, lease_until) VALUES (?, ?, ?, ?)",
                [(*r, until) for r in requests],
            )
            if entries:
                db.executemany("INSERT INTO history (flow_id, seq, body) VALUES (?, ?, ?)", entries)
            if successes:
                db.executemany(
                    "INSERT OR IGNORE INTO successes (service_id, environment, artifact_group, artifact_name,"
                    " artifact_version, artifact_id, flow_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    successes,
                )
            if cancel:
                db.executemany("DELETE FROM timers WHERE id = ?", [(i,) for i in cancel])
            if timers:
                db.executemany(
                    "INSERT OR REPLACE INTO timers (id, flow_id, deployment_id, kind, due) VALUES (?, ?, ?, ?, ?)",
                    [(t.id, t.flow_id, t.deployment_id, t.kind.value, due_text(t.due)) for t in timers],
                )
            finished = [(f.id,) for f in flows if f.state in FINISHED]
            if finished:
                db.executemany("DELETE FROM timers WHERE flow_id = ?", finished)
            if lanes:  # BEGIN IMMEDIATE: no other writer between the engine's check and this one
                apply_lane_moves(db.execute, "?", flows, lanes)

    # --- timers ----------------------------------------------------------------------

    def claim_due(self, now: dt.datetime, limit: int = 100, *, lease: float = 30.0) -> list[Timer]:
        lease = wait_seconds("lease", lease)
        with self._write() as db:
            held = time.time()
            rows = db.execute(
                "SELECT flow_id, deployment_id, kind, due FROM timers WHERE due <= ? AND lease_until <= ?"
                " ORDER BY due, id LIMIT ?",
                (due_text(now), held, limit),
            ).fetchall()
            db.executemany(  # by the primary key (due, id), not through timers_by_id (``+id``: no index)
                "UPDATE timers SET lease_until = ? WHERE due = ? AND +id = ?",
                [(held + lease, r[3], f"{r[1]}/{r[2]}") for r in rows],
            )
        return [timer_from_row(*row) for row in rows]

    def complete_timers(self, timers: Sequence[Timer]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM timers WHERE id = ? AND due = ?", [(t.id, due_text(t.due)) for t in timers])

    def release_timers(self, ids: Sequence[str]) -> None:
        self._update("UPDATE timers SET lease_until = 0 WHERE id = ?", ids)

    def timers(self, flow_id: str) -> list[Timer]:
        rows = self._rows(
            "SELECT flow_id, deployment_id, kind, due FROM timers WHERE flow_id = ? ORDER BY due, id", (flow_id,)
        )
        return [timer_from_row(*row) for row in rows]

    # --- outbox ----------------------------------------------------------------------

    def claim(self, limit: int = 100, *, lease: float = 30.0) -> list[HookRequest]:
        lease = wait_seconds("lease", lease)
        now = time.time()
        claimed: list[tuple[str, str, str]] = []
        blocked: set[str] = set()
        with self._write() as db:
            cursor = db.execute(f"SELECT id, flow_id, lease_until, body FROM outbox WHERE {PENDING} ORDER BY seq")
            for request_id, flow_id, lease_until, body in cursor:
                if len(claimed) >= limit:
                    break
                if flow_id in blocked:
                    continue
                if lease_until > now:
                    blocked.add(flow_id)
                    continue
                claimed.append((request_id, flow_id, body))
            cursor.close()
            db.executemany("UPDATE outbox SET lease_until = ? WHERE id = ?", [(now + lease, i) for i, _, _ in claimed])
        return readable_claim(_BACKEND, [(flow_id, body) for _, flow_id, body in claimed])

    def _update(self, sql: str, ids: Sequence[str], *args: Any) -> None:
        with self._write() as db:
            db.executemany(sql, [(*args, i) for i in ids])

    def mark_delivered(self, ids: Sequence[str]) -> None:
        self._update(
            f"UPDATE outbox SET delivered_at = ?, lease_until = 0 WHERE id = ? AND {PENDING}",
            ids,
            _now(),
        )

    def release(self, ids: Sequence[str], *, delay: float = 0.0) -> None:
        delay = wait_seconds("delay", delay)
        until = time.time() + delay if delay > 0 else 0.0
        self._update(f"UPDATE outbox SET lease_until = ? WHERE id = ? AND {PENDING}", ids, until)

    def renew(self, ids: Sequence[str], *, lease: float = 30.0) -> None:
        until = time.time() + wait_seconds("lease", lease)
        self._update(f"UPDATE outbox SET lease_until = max(lease_until, ?) WHERE id = ? AND {PENDING}", ids, until)

    def waiting_flows(self, ids: Sequence[str]) -> frozenset[str]:
        wanted = json.dumps(list(ids))
        rows = self._rows(
            "SELECT DISTINCT o.flow_id FROM outbox o WHERE o.id IN (SELECT value FROM json_each(?))"
            # PENDING's bare columns are the inner query's own (p's).
            f" AND EXISTS (SELECT 1 FROM outbox p WHERE p.flow_id = o.flow_id AND p.seq < o.seq AND {PENDING}"
            " AND p.id NOT IN (SELECT value FROM json_each(?)))",
            (wanted, wanted),
        )
        return frozenset(flow_id for (flow_id,) in rows)

    def count_pending(self) -> int:
        row = self._one(f"SELECT count(*) FROM outbox WHERE {PENDING}", ())
        return int(row[0])

    def hook_requests(self, flow_id: str) -> list[HookRecord]:
        return self._records("WHERE flow_id = ? ORDER BY seq", (flow_id,))

    def dead_requests(self, limit: int = 100) -> list[HookRecord]:
        return self._records("WHERE dead_at IS NOT NULL ORDER BY seq LIMIT ?", (limit,))

    def _records(self, where: str, args: Sequence[Any]) -> list[HookRecord]:
        with self._lock, _driver_errors("read failed"):
            rows = self._db.execute(f"SELECT id, body, delivered_at, dead_at FROM outbox {where}", args).fetchall()
            attempts: dict[str, list[tuple[Any, ...]]] = {}
            for request_id, *attempt in self._db.execute(
                "SELECT request_id, at, status_code, error, duration FROM delivery_attempts"
                f" WHERE request_id IN (SELECT id FROM outbox {where}) ORDER BY rowid",
                args,
            ):
                attempts.setdefault(request_id, []).append(tuple(attempt))
        return [
            hook_record(body, delivered, dead, attempts.get(request_id, ()))
            for request_id, body, delivered, dead in rows
        ]

    # --- the delivery log ------------------------------------------------------------

    def record_attempt(self, request_id: str, attempt: DeliveryAttempt) -> int:
        with self._write() as db:
            db.execute(
                "INSERT INTO delivery_attempts (request_id, at, status_code, error, duration) VALUES (?, ?, ?, ?, ?)",
                (request_id, attempt.at.isoformat(), attempt.status_code, attempt.error, attempt.duration),
            )
            row = db.execute("SELECT count(*) FROM delivery_attempts WHERE request_id = ?", (request_id,)).fetchone()
        return int(row[0])

    def mark_dead(self, ids: Sequence[str]) -> None:
        self._update(f"UPDATE outbox SET dead_at = ?, lease_until = 0 WHERE id = ? AND {PENDING}", ids, _now())

    def requeue(self, ids: Sequence[str]) -> None:
        self._update("UPDATE outbox SET dead_at = NULL, lease_until = 0 WHERE id = ? AND dead_at IS NOT NULL", ids)

    def disable_endpoint(self, url: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO disabled_endpoints (url, disabled_at) VALUES (?, ?)", (url, _now()))

    def enable_endpoint(self, url: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM disabled_endpoints WHERE url = ?", (url,))

    def disabled_endpoints(self) -> frozenset[str]:
        with self._lock, _driver_errors("read failed"):
            return frozenset(url for (url,) in self._db.execute("SELECT url FROM disabled_endpoints"))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _driver_errors(what: str) -> contextlib.AbstractContextManager[None]:
    return driver_errors(_BACKEND, what, (sqlite3.Error,))
