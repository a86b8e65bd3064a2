"""Opening a SQLite store: a clear error for what cannot be opened, a bounded wait
for what is busy, and the WAL switch that several openers race for."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowfsm import RepositoryError, ValidationError
from flowfsm.repositories import SQLiteRepository
from flowfsm.repositories import sqlite as sqlite_module


def test_an_empty_path_is_refused() -> None:
    """sqlite3 opens "" as a private temporary database, which cannot use WAL."""
    with pytest.raises(ValidationError) as caught:
        SQLiteRepository("")
    assert caught.value.field == "path"


@pytest.fixture
def busy_file(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A file in rollback-journal mode that another connection is reading: it holds a
    shared lock, so the file cannot be switched to WAL until that read ends."""
    path = tmp_path / "busy.db"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("CREATE TABLE t (x)")
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()
    yield path, reader
    reader.close()


class FakeTime:
    """The WAL switch's clock and pause: each pause moves the clock, nothing sleeps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        self.pauses = 0
        self.on_pause: Callable[[], object] = lambda: None
        monkeypatch.setattr(sqlite_module, "_clock", lambda: self.now)
        monkeypatch.setattr(sqlite_module, "_pause", self.pause)

    def pause(self, seconds: float) -> None:
        self.pauses += 1
        self.now += seconds
        self.on_pause()


def test_the_wal_switch_waits_for_another_connection(
    busy_file: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, reader = busy_file
    time = FakeTime(monkeypatch)
    time.on_pause = lambda: reader.execute("COMMIT") if reader.in_transaction else None
    with SQLiteRepository(path, timeout=5) as repository:
        assert repository.list_flows() == []
    assert time.pauses == 1  # refused once while the reader held the file, then switched
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_busy_for_longer_than_the_timeout_is_a_clear_error(
    busy_file: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, reader = busy_file
    time = FakeTime(monkeypatch)
    with pytest.raises(RepositoryError) as caught:
        SQLiteRepository(path, timeout=2)
    assert str(caught.value) == (
        f"sqlite: cannot open {str(path)!r}: another connection kept it busy for more than 2 s"
        " while it was switched to WAL"
    )
    assert 190 <= time.pauses <= 210  # 10 ms pauses until 2 s had passed: bounded, not a spin
    assert reader.in_transaction  # it was not disturbed
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
