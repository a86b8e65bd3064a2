"""The repository contract (flowfsm.testing.RepositoryContract) on every backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flowfsm import RepositoryError
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, SQLiteRepository
from flowfsm.repositories.sqlite import SCHEMA_VERSION
from flowfsm.testing import RepositoryContract, sample_flow


class TestInMemoryRepository(RepositoryContract):
    def make_repository(self) -> Repository:
        return InMemoryRepository()


class TestSQLiteFileRepository(RepositoryContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "flows.db"

    def make_repository(self) -> Repository:
        return SQLiteRepository(self.path)


class TestSQLiteMemoryRepository(RepositoryContract):
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
