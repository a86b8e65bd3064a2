"""Shared fixtures: a catalog shaped like the contract's examples, and engines with
deterministic clocks and ids so HookRequests can be compared exactly."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from flowfsm import (
    Action,
    Catalog,
    Environment,
    FlowEngine,
    HookEvent,
    Pipeline,
    Service,
    Webhook,
)
from flowfsm.emitters import RecordingEmitter
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.testing import SequentialIds, StepClock, TemporaryPostgres

# "dev" is quick for local runs; CI (CI=true) runs the thorough profile.
settings.register_profile("dev", max_examples=100, stateful_step_count=25, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

ALL_EVENTS = list(HookEvent)
# The base64 part of every signing secret the tests use: none may reach a log line.
SECRET_KEYS = (
    "Zmxvd2ZzbS10ZXN0LXNlY3JldC0wMDAx",
    "Zmxvd2ZzbS1jYXRhbG9nLXNlY3JldC0y",
    "Zmxvd2ZzbS1kZW1vLXNlY3JldC0wMDAz",
    "cmVjZWl2ZXItc2VjcmV0LTAxMjM0NTY3ODk=",
    "cm90YXRlZC1zZWNyZXQtOTg3NjU0MzIxMGFi",
)


def two_actions(webhook_id: str, event: HookEvent) -> Webhook:
    return Webhook(
        webhook_id,
        event,
        [
            Action("a1", url=f"https://hooks.example/{webhook_id}/1", secret="whsec_Zmxvd2ZzbS10ZXN0LXNlY3JldC0wMDAx"),
            Action("a2", url=f"https://hooks.example/{webhook_id}/2"),
        ],
    )


def api_service(service_id: str = "svc-api", **kwargs: object) -> Service:
    """dev → staging → prod, 2 promotions in staging and prod, a webhook with two
    actions on every event, plus a second one on deployment-created."""
    webhooks = [two_actions(f"wh-{e.value}", e) for e in ALL_EVENTS]
    webhooks.append(two_actions("wh-created-2", HookEvent.DEPLOYMENT_CREATED))
    defaults: dict[str, object] = {
        "artifacts": ["com.acme:api"],
        "pipeline": Pipeline(
            "default",
            [
                Environment("dev", promotions=["smoke"]),
                Environment("staging", promotions=["smoke", "perf"]),
                Environment("prod", promotions=["smoke", "perf"]),
            ],
        ),
        "webhooks": webhooks,
    }
    defaults.update(kwargs)
    return Service(service_id, **defaults)  # type: ignore[arg-type]  # test helper: keywords as given


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log_line() -> Iterator[None]:
    """Every line flowfsm (and httpx, which it drives) logs in the whole run, at any
    level, is checked for signing secrets when the run ends."""
    handler = _Everything()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger("flowfsm"), logging.getLogger("httpx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)
    leaks = [line for line in handler.lines if "whsec_" in line or any(key in line for key in SECRET_KEYS)]
    assert not leaks, leaks[:3]


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL server for the session: FLOWFSM_TEST_POSTGRES_DSN if set, else a
    throwaway one on loopback. Missing PostgreSQL skips locally and fails in CI."""
    given = os.environ.get("FLOWFSM_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    if TemporaryPostgres.find_bin_dir() is None:
        message = "PostgreSQL (initdb, pg_ctl) not found: install it or set FLOWFSM_TEST_POSTGRES_DSN"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with TemporaryPostgres() as server:
        yield server.dsn


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """An empty store of each kind, through the public constructors (closed after; a
    PostgreSQL store in a schema of its own, dropped after)."""
    if request.param == "memory":
        yield InMemoryRepository()
    elif request.param == "sqlite":
        with SQLiteRepository(tmp_path / "flows.db") as sqlite:
            yield sqlite
    else:
        from .test_repositories import drop_schemas

        dsn = request.getfixturevalue("postgres_dsn")
        schema = f"b_{uuid.uuid4().hex[:12]}"
        with PostgresRepository(dsn, schema=schema) as postgres:
            yield postgres
        drop_schemas(dsn, [schema])


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Repository]]:
    """A factory of repositories sharing one store (each call: one more connection; in
    memory, the one store itself), all closed after, a PostgreSQL schema dropped."""
    from .test_repositories import drop_schemas

    opened: list[Repository] = []
    memory = InMemoryRepository()
    schema = f"t_{uuid.uuid4().hex[:16]}"

    def make() -> Repository:
        repo: Repository
        if request.param == "memory":
            repo = memory
        elif request.param == "sqlite":
            repo = SQLiteRepository(tmp_path / "flows.db")
        else:
            repo = PostgresRepository(request.getfixturevalue("postgres_dsn"), schema=schema, max_size=2)
        opened.append(repo)
        return repo

    yield make
    for repo in opened:
        close = getattr(repo, "close", None)
        if close is not None:
            close()
    if request.param == "postgres":
        drop_schemas(request.getfixturevalue("postgres_dsn"), [schema])


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([api_service()])


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def repository() -> InMemoryRepository:
    return InMemoryRepository()


@pytest.fixture
def engine(catalog: Catalog, repository: InMemoryRepository, emitter: RecordingEmitter) -> FlowEngine:
    return FlowEngine(catalog, repository, emitter, clock=StepClock(), id_factory=SequentialIds())
