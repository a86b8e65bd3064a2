"""Atomicity and concurrency under real failures (SPEC §4, §5, §10, §11).

Every trigger applies fully or raises a ``FlowFSMError`` and leaves the whole store
as it was: flows, history, timers, the outbox and the lanes. Failures are injected
into the real drivers (SQLite files, the PostgreSQL of ``postgres_dsn``) at every
statement of a commit; engines race on one store in threads.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import flowfsm
from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    FlowEngine,
    FlowFSMError,
    HookEvent,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    RepositoryError,
    ResultStatus,
    Service,
    Trigger,
    Webhook,
)
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.protocols import Lanes, Repository
from flowfsm.repositories import PostgresRepository, SQLiteRepository
from flowfsm.testing import FakeClock

from .test_repositories import drop_schemas

WEBHOOKS = [Webhook(f"wh-{e.value}", e, [Action("a1"), Action("a2")]) for e in HookEvent]
TIMED = Service(
    "svc-timed",
    artifacts=["com.acme:api"],
    pipeline=Pipeline(
        "p",
        [
            Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m", verify="10m")),
            Environment("prod", ["smoke"]),
        ],
    ),
    webhooks=WEBHOOKS,
)
QUEUED = Service(
    "svc-queued",
    artifacts=["com.acme:api"],
    pipeline=Pipeline("q", [Environment("dev", ["smoke"]), Environment("prod")]),
    webhooks=WEBHOOKS,
    concurrency="queue",
)
CATALOG = Catalog([TIMED, QUEUED])
LANES = [(s.id, e.name) for s in (TIMED, QUEUED) for e in s.pipeline.environments]


def artifact(n: int) -> Artifact:
    return Artifact("com.acme", "api", f"1.{n}")


def store(repository: Repository) -> Any:
    """Everything the store holds: flows, their history, timers and outbox, and the lanes."""
    flows = repository.list_flows(limit=10_000)
    whole = [
        (
            flow,
            repository.history(flow.id),
            repository.timers(flow.id),
            [(r.request.id, r.state) for r in repository.hook_requests(flow.id)],
        )
        for flow in flows
    ]
    assert isinstance(repository, Lanes)
    lanes = [repository.lane(s, e, limit=100) for s, e in LANES]
    return whole, repository.count_pending(), lanes


def steps(engine: FlowEngine) -> Iterator[Trigger]:
    """A plan touching every kind of write: new flows (both services, a lane), a
    timer set and cancelled, a lane freed and handed to the next flow in line."""
    outcome = engine.handle(ArtifactCreated(artifact(1)))
    yield ArtifactCreated(artifact(2))  # the queued service's second flow waits in line
    timed, queued = sorted(outcome.flows, key=lambda f: f.service_id != TIMED.id)
    for flow in (timed, queued):
        deployment = flow.deployments[0]
        yield DeploymentStarted(deployment.id)
        yield DeploymentCompleted(deployment.id)
        promotion = deployment.promotions[0]
        yield PromotionCompleted(deployment.id, promotion.id, [PromotionResult(promotion.id, ResultStatus.PASSED)])


class Faulty:
    """A SQLite connection that fails its ``n``-th statement (counting from 1) with
    ``error``, once; it passes the rest to the real connection."""

    def __init__(self, db: sqlite3.Connection, n: int, error: Exception) -> None:
        self._db, self._n, self._error = db, n, error
        self.count, self.failed = 0, ""

    def _tick(self, sql: str) -> None:
        self.count += 1
        if self.count == self._n:
            self.failed = sql
            raise self._error

    def execute(self, sql: str, *args: Any) -> Any:
        self._tick(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._tick(sql)
        return self._db.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _sqlite_engine(path: Path, emitter: RecordingEmitter) -> tuple[FlowEngine, SQLiteRepository]:
    repository = SQLiteRepository(path, timeout=1)
    return FlowEngine(CATALOG, repository, emitter, clock=FakeClock()), repository


@pytest.mark.parametrize("message", ["disk I/O error", "database or disk is full"])
def test_a_sqlite_statement_failing_anywhere_in_a_trigger_changes_nothing(tmp_path: Path, message: str) -> None:
    emitter = RecordingEmitter()
    engine, repository = _sqlite_engine(tmp_path / "flows.db", emitter)
    real = repository._db
    failed = 0
    for trigger in steps(engine):
        n = 1
        while True:  # fail its 1st statement, then its 2nd, ..., until it goes through
            before, sent = store(repository), len(emitter.requests)
            faulty = Faulty(real, n, sqlite3.OperationalError(message))
            repository._db = faulty  # type: ignore[assignment]  # fails its n-th statement
            try:
                engine.handle(trigger)
            except RepositoryError as error:
                assert message in str(error), error
            else:  # it went through: no statement failed, or one of the delivery's after the commit
                assert faulty.count < n or faulty.failed.startswith("SELECT DISTINCT o.flow_id"), faulty.failed
                break
            finally:
                repository._db = real
            assert store(repository) == before, f"{faulty.failed!r} of {type(trigger).__name__}"
            assert len(emitter.requests) == sent
            failed += 1
            n += 1
    assert failed > 7 * 4  # each trigger reads and writes several statements
