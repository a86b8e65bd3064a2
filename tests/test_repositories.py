"""The repository contract (flowfsm.testing.RepositoryContract) on every backend."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.stateful import run_state_machine_as_test

from flowfsm import RepositoryError, ValidationError
from flowfsm.protocols import Repository
from flowfsm.repositories import MAX_WAIT, InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.repositories.sqlite import SCHEMA_VERSION
from flowfsm.testing import LanesContract, RepositoryContract, RepositoryStateMachine, sample_flow, sample_hook_request


def drop_schemas(dsn: str, schemas: list[str]) -> None:
    """Leave a shared server as it was (a throwaway one is removed anyway)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class TestInMemoryRepository(RepositoryContract, LanesContract):
    keeps_delivered = False

    def make_repository(self) -> Repository:
        return InMemoryRepository()


class TestPostgresRepository(RepositoryContract, LanesContract):
    @pytest.fixture(autouse=True)
    def _server(self, postgres_dsn: str) -> Iterator[None]:
        self.dsn = postgres_dsn
        self.schemas: list[str] = []
        yield
        drop_schemas(self.dsn, self.schemas)

    def make_repository(self) -> Repository:
        schema = f"t_{uuid.uuid4().hex[:16]}"
        self.schemas.append(schema)
        return PostgresRepository(self.dsn, schema=schema)


class TestSQLiteFileRepository(RepositoryContract, LanesContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "flows.db"

    def make_repository(self) -> Repository:
        return SQLiteRepository(self.path)


class TestSQLiteMemoryRepository(RepositoryContract, LanesContract):
    def make_repository(self) -> Repository:
        return SQLiteRepository(":memory:")


def test_sqlite_survives_reopening_and_records_its_schema(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    flow = sample_flow()
    with SQLiteRepository(path) as repo:
        repo.commit([flow])
    with SQLiteRepository(path) as repo:
        assert repo.get(flow.id) == flow
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM flowfsm_meta WHERE key = 'schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    db.close()


def test_sqlite_migrates_an_older_schema(tmp_path: Path) -> None:
    from flowfsm.repositories.sqlite import MIGRATIONS

    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE flowfsm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO flowfsm_meta VALUES ('schema_version', '1')")
    db.commit()
    db.close()
    flow = sample_flow()
    with SQLiteRepository(path) as repo:
        repo.commit([flow], [sample_hook_request(flow)])
        repo.mark_dead([sample_hook_request(flow).id])
        assert len(repo.dead_requests()) == 1
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM flowfsm_meta").fetchone()[0] == str(SCHEMA_VERSION)
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_pending_by_flow'").fetchone() == (1,)
    db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    SQLiteRepository(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE flowfsm_meta SET value = '999' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RepositoryError) as error:
        SQLiteRepository(path)
    assert "schema version 999" in str(error.value)


def test_sqlite_driver_errors_become_repository_errors(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as error:
        SQLiteRepository(tmp_path / "no" / "such" / "dir" / "flows.db")
    assert isinstance(error.value.__cause__, sqlite3.Error)
    assert error.value.backend == "sqlite"


TestSQLiteAgainstReference = RepositoryStateMachine.for_repository(lambda: SQLiteRepository(":memory:")).TestCase


class PostgresAgainstReference(RepositoryStateMachine):
    dsn = ""

    def make_repository(self) -> Repository:
        self.schema = f"s_{uuid.uuid4().hex[:16]}"
        return PostgresRepository(self.dsn, schema=self.schema, max_size=2)

    def teardown(self) -> None:
        super().teardown()
        drop_schemas(self.dsn, [self.schema])


@pytest.fixture
def postgres_machine(postgres_dsn: str) -> type[PostgresAgainstReference]:
    PostgresAgainstReference.dsn = postgres_dsn
    return PostgresAgainstReference


def test_postgres_against_reference(postgres_machine: type[PostgresAgainstReference]) -> None:
    run_state_machine_as_test(postgres_machine, settings=settings(max_examples=max(10, settings().max_examples // 4)))


def test_postgres_migrates_an_older_schema(postgres_dsn: str) -> None:
    import psycopg

    from flowfsm.repositories.postgres import MIGRATIONS
    from flowfsm.repositories.postgres import SCHEMA_VERSION as PG_VERSION

    schema = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        conn.execute("CREATE TABLE flowfsm_meta (key text PRIMARY KEY, value text NOT NULL)")
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO flowfsm_meta VALUES ('schema_version', '1')")
    try:
        flow = sample_flow()
        with PostgresRepository(postgres_dsn, schema=schema) as repo:
            repo.commit([flow], [sample_hook_request(flow)])
            repo.mark_dead([sample_hook_request(flow).id])
            assert len(repo.dead_requests()) == 1
        with psycopg.connect(postgres_dsn, options=f"-c search_path={schema}") as conn:
            row = conn.execute("SELECT value FROM flowfsm_meta").fetchone()
            assert row is not None
            assert row[0] == str(PG_VERSION)
            index = "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = 'outbox_pending_by_flow'"
            assert conn.execute(index, (schema,)).fetchone() == (1,)
    finally:
        drop_schemas(postgres_dsn, [schema])


@pytest.mark.parametrize("delay", [99_999_999_999.0, float("9" * 400)])
def test_a_huge_delay_parks_a_request_for_at_most_a_day(
    delay: float, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What each backend stores, read behind its back: no later than ``MAX_WAIT`` from now."""
    flow = sample_flow()
    hook = sample_hook_request(flow)
    memory = InMemoryRepository()
    sqlite = SQLiteRepository(tmp_path / "flows.db")
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"w_{uuid.uuid4().hex[:12]}"
    postgres = PostgresRepository(dsn, schema=schema)
    try:
        for repo in (memory, sqlite, postgres):
            repo.commit([flow], [hook])
            repo.release([hook.id], delay=delay)
        assert memory._outbox[hook.id][1] <= time.monotonic() + MAX_WAIT
        (until,) = sqlite._db.execute("SELECT lease_until FROM outbox").fetchone()
        assert time.time() + MAX_WAIT - 60 <= until <= time.time() + MAX_WAIT
        (late,) = postgres._rows("SELECT lease_until - now() <= make_interval(secs => %s) FROM outbox", [MAX_WAIT])
        assert late == (True,)
    finally:
        sqlite.close()
        postgres.close()
        drop_schemas(dsn, [schema])


def _rows_examined(plan: dict[str, Any]) -> float:
    """Rows that a plan node and those below it produced or filtered out, every loop counted."""
    own: float = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
    own += plan.get("Rows Removed by Index Recheck", 0)
    loops: float = plan.get("Actual Loops", 1)
    return own * loops + sum(_rows_examined(p) for p in plan.get("Plans", ()))


def test_postgres_claim_probes_each_flow_on_a_table_never_analyzed(postgres_dsn: str) -> None:
    """Claiming 100 of 10,000 pending reads a few rows per claimed row, with or
    without statistics (as an anti-join, a fresh table was read whole per row)."""
    import psycopg

    from flowfsm.converter import hook_requests_json
    from flowfsm.repositories.postgres import _CLAIM_CANDIDATES, _CLAIM_TAKE

    schema = f"c_{uuid.uuid4().hex[:12]}"
    PostgresRepository(postgres_dsn, schema=schema).close()
    body = hook_requests_json([sample_hook_request(sample_flow())])[0]
    try:
        with psycopg.connect(postgres_dsn, options=f"-c search_path={schema}") as conn:
            conn.execute(
                "INSERT INTO flows (id, artifact_id, service_id, state, version, body)"
                " SELECT 'f' || g, 'a' || g, 's', 'inProgress', 1, '[]' FROM generate_series(1, 2000) g"
            )
            conn.execute(  # five requests a flow, the flows interleaved, as triggers make them
                "INSERT INTO outbox (id, flow_id, body) SELECT 'r' || k || '-' || g, 'f' || g, %s::jsonb"
                " FROM generate_series(1, 5) k, generate_series(1, 2000) g ORDER BY k, g",
                (body,),
            )
            conn.commit()
            examined = []
            for analyzed in (False, True):
                if analyzed:
                    conn.execute("ANALYZE outbox")
                ((plan,),) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _CLAIM_CANDIDATES, {"limit": 100})
                mine = list(range(1, 101))  # what the first claim takes: the oldest 100
                ((take,),) = conn.execute(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + _CLAIM_TAKE, {"lease": 30.0, "mine": mine}
                )
                conn.rollback()
                assert plan[0]["Plan"]["Actual Rows"] == 100
                examined.append(_rows_examined(plan[0]["Plan"]) + _rows_examined(take[0]["Plan"]))
        assert max(examined) < 20 * 100, examined
    finally:
        drop_schemas(postgres_dsn, [schema])


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """Each backend, empty but for one flow."""
    if request.param == "memory":
        yield InMemoryRepository()
        return
    if request.param == "sqlite":
        with SQLiteRepository(tmp_path / "flows.db") as sqlite:
            yield sqlite
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"p_{uuid.uuid4().hex[:12]}"
    try:
        with PostgresRepository(dsn, schema=schema) as postgres:
            yield postgres
    finally:
        drop_schemas(dsn, [schema])


@pytest.mark.parametrize(
    ("limit", "offset", "field"),
    [(0, 0, "limit"), (10_001, 0, "limit"), (2**70, 0, "limit"), (1, -1, "offset"), (1, 2**63, "offset")],
)
def test_every_backend_refuses_the_same_pages(any_backend: Repository, limit: int, offset: int, field: str) -> None:
    """One rule for every backend: a limit of 1 to 10,000, an offset a 64-bit integer holds."""
    any_backend.commit([sample_flow()])
    with pytest.raises(ValidationError) as caught:
        any_backend.list_flows(limit=limit, offset=offset)
    assert caught.value.field == field
    assert len(str(caught.value)) < 200


MAX_PAGE = 10_000  # the documented bounds (docs/decisions.md), written out
MAX_OFFSET = 2**63 - 1


def test_every_backend_reads_the_largest_page(any_backend: Repository) -> None:
    flow = sample_flow()
    any_backend.commit([flow])
    assert [f.id for f in any_backend.list_flows(limit=MAX_PAGE)] == [flow.id]
    assert any_backend.list_flows(limit=MAX_PAGE, offset=MAX_OFFSET) == []


@pytest.mark.parametrize(
    "url",
    ["postgresql://alice:S3cretPass@[::1/db", "postgresql://u:S3cretPass@127.0.0.1:1/x", "host=127.0.0.1 port=1"],
)
def test_a_postgres_url_that_cannot_be_used_fails_at_once_without_its_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One connection attempt, then one error; the pool never starts retrying (and logging)."""
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises((ValidationError, RepositoryError)) as caught:
        PostgresRepository(url, timeout=1)
    assert time.monotonic() - started < 8
    assert [r for r in caplog.records if r.name.startswith("psycopg")] == []
    assert "S3cretPass" not in caplog.text
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert not any("S3cretPass" in str(e) for e in chain), chain
    assert len(str(caught.value)) < 500


def test_the_pool_log_never_shows_a_password(caplog: pytest.LogCaptureFixture) -> None:
    """psycopg's pool logs a failed (re)connection with libpq's message, which may quote the URL."""
    with pytest.raises(ValidationError):
        PostgresRepository("postgresql://alice:S3cretPass@[::1/db", timeout=1)
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        logging.getLogger("psycopg.pool").warning(
            "error connecting in %r: %s", "flowfsm-flowfsm", 'invalid URI: "postgresql://alice:S3cretPass@[::1/db"'
        )
    assert "S3cretPass" not in caplog.text
    assert "postgresql://<redacted>@[::1/db" in caplog.text
