"""History benchmarks: reading one flow's history in a large store against a small one.

The stores are filled in bulk from one flow of 20 history entries: that flow is run
once through each backend's repository (ids from a counter, so that they can be
renamed), the rows the repository wrote to ``flows``, ``deployments``,
``promotions`` and ``history`` are read back, and copied once for each stored flow
with its ids and version renamed. Each stored flow therefore has exactly the rows
its repository writes for it; the outbox, the delivery log and the rollback index,
which reading a history never touches, are left empty. The history rows are
inserted entry by entry across all flows (every flow's first entry, then every
flow's second, ...), as flows running side by side would write them: in a heap
table (PostgreSQL) one flow's entries lie on pages of their own.
"""

from __future__ import annotations

import random
import re
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flowfsm import Artifact, FlowEngine
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.testing import TemporaryPostgres

from .core import Discard, Versions, bench_catalog, interleaved, steered_flow
from .report import Report
from .storage import _Placeholders

ENTRIES = 20  # a flow's history: the steered flow of the core group, and a skipped promotion
BIG, SMALL = 10_000, 100
_TOKEN = re.compile(r"@(\d+)")

# The rows a flow leaves in the tables a history read needs, as each backend reads them back.
_TABLES: tuple[tuple[str, str], ...] = (
    ("flows", "id, artifact_id, service_id, state, version, body"),
    ("deployments", "id, flow_id"),
    ("promotions", "id, deployment_id"),
    ("history", "flow_id, seq, body"),
)


def twenty_entries(engine: FlowEngine, artifact: Artifact) -> str:
    """Run one flow that leaves ``ENTRIES`` history entries; its id."""
    return steered_flow(engine, artifact, skip=True)


def _template(repository: Repository, text: Callable[[str], str]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows one flow of ``ENTRIES`` entries leaves in ``repository`` (empty), each
    table's read with ``text`` applied to its column list (PostgreSQL: JSON as text)."""
    engine = FlowEngine(bench_catalog(failure_strategy="PAUSE"), repository, Discard(), id_factory=_Placeholders())
    twenty_entries(engine, Artifact("com.acme", "api", "@V"))
    (flow,) = repository.list_flows()
    assert len(repository.history(flow.id)) == ENTRIES
    reader: Any = repository
    return {
        table: [tuple(r) for r in reader._rows(f"SELECT {text(columns)} FROM {table}", ())]
        for table, columns in _TABLES
    }


def _renamed(rows: Sequence[tuple[Any, ...]], i: int) -> list[tuple[Any, ...]]:
    """``rows`` with each id renamed for the ``i``-th flow, and its artifact's version."""
    prefix, version = f"h{i:06d}-", f"9.{i}"
    return [
        tuple(_TOKEN.sub(prefix + r"\1", v.replace("@V", version)) if isinstance(v, str) else v for v in row)
        for row in rows
    ]


def store_rows(
    template: dict[str, list[tuple[Any, ...]]], count: int, *, history: bool = True
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) to insert, in order, for ``count`` flows; history entry by entry
    across the flows (``history=False``: the flows alone)."""
    for table in ("flows", "deployments", "promotions"):
        for start in range(0, count, 1_000):
            yield table, [r for i in range(start, min(count, start + 1_000)) for r in _renamed(template[table], i)]
    if not history:
        return
    entries = sorted(template["history"], key=lambda row: row[1])
    for entry in entries:
        yield "history", [r for i in range(count) for r in _renamed([entry], i)]


def fill_sqlite(path: Path, template: dict[str, list[tuple[Any, ...]]], count: int, *, history: bool = True) -> None:
    SQLiteRepository(path).close()  # the schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    for table, rows in store_rows(template, count, history=history):
        columns = dict(_TABLES)[table]
        marks = ", ".join("?" * (columns.count(",") + 1))
        db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def fill_postgres(
    dsn: str, schema: str, template: dict[str, list[tuple[Any, ...]]], count: int, *, history: bool = True
) -> None:
    import psycopg

    PostgresRepository(dsn, schema=schema, max_size=1).close()  # the schema
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn, conn.cursor() as cur:
        for table, rows in store_rows(template, count, history=history):
            with cur.copy(f"COPY {table} ({dict(_TABLES)[table]}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        cur.execute("VACUUM (ANALYZE)")  # as after any bulk load (see fill_postgres in storage.py)
        cur.execute("CHECKPOINT")


def history_seconds(repository: Repository, flow_ids: Sequence[str], calls: int, rng: random.Random) -> float:
    """Median seconds of ``history(flow)`` over ``calls`` flows drawn at random."""
    samples = []
    for flow_id in rng.choices(flow_ids, k=calls):
        start = time.perf_counter()
        entries = repository.history(flow_id)
        samples.append(time.perf_counter() - start)
        assert len(entries) == ENTRIES, len(entries)
    return statistics.median(samples)


def flow_ids(template: dict[str, list[tuple[Any, ...]]], count: int) -> list[str]:
    return [_renamed([template["flows"][0][:1]], i)[0][0] for i in range(count)]


def compare(
    report: Report,
    backend: str,
    small: tuple[Repository, Sequence[str]],
    big: tuple[Repository, Sequence[str]],
    *,
    quick: bool,
    target: bool = True,
) -> None:
    """``history(flow)`` on a big store against a small one, each a repository and its flows' ids."""
    rng = random.Random(7)
    rounds, calls = (5, 100) if quick else (11, 300)
    for repository, ids in (small, big):
        history_seconds(repository, ids, 20, rng)  # warm: connections, caches
    at_small, at_big = interleaved(
        rounds,
        lambda: history_seconds(*small, calls, rng),
        lambda: history_seconds(*big, calls, rng),
    )
    report.ratio(
        f"{backend} history(flow) with {BIG:,} flows × {ENTRIES} entries stored vs {SMALL}",
        at_big,
        at_small,
        "≤ 1.3×" if target else "(context)",
        at_big / at_small <= 1.3 if target else None,
        unit="µs",
        scale=1e6,
        note=f"medians of {calls} reads of flows drawn at random, {rounds} interleaved rounds",
    )


def _in_memory(count: int) -> tuple[InMemoryRepository, list[str]]:
    """A store of ``count`` flows run through the engine (a dict and a list a flow: nothing to copy)."""
    repository = InMemoryRepository()
    engine = FlowEngine(bench_catalog(failure_strategy="PAUSE"), repository, Discard())
    versions = Versions("hist")
    return repository, [twenty_entries(engine, versions()) for _ in range(count)]


def run(report: Report, quick: bool) -> None:
    report.section(f"history: one flow's history, {BIG:,} flows stored vs {SMALL}")
    compare(report, "in memory", _in_memory(SMALL), _in_memory(BIG), quick=quick, target=False)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with SQLiteRepository(tmp / "template.db") as repository:
            template = _template(repository, lambda columns: columns)
        start = time.perf_counter()
        fill_sqlite(tmp / "big.db", template, BIG)
        print(f"  (SQLite store of {BIG:,} flows filled in {time.perf_counter() - start:.1f} s)")
        fill_sqlite(tmp / "small.db", template, SMALL)
        with SQLiteRepository(tmp / "small.db") as small, SQLiteRepository(tmp / "big.db") as big:
            ids = flow_ids(template, BIG)
            compare(report, "SQLite", (small, ids[:SMALL]), (big, ids), quick=quick)

    if TemporaryPostgres.find_bin_dir() is None:
        report.section("history on PostgreSQL: not found, skipped (install PostgreSQL 15+)")
        return
    with TemporaryPostgres(durable=True) as server:
        with PostgresRepository(server.dsn, schema="template", max_size=1) as repository:
            template = _template(repository, lambda columns: columns.replace("body", "body::text"))
        start = time.perf_counter()
        fill_postgres(server.dsn, "big", template, BIG)
        print(f"  (PostgreSQL store of {BIG:,} flows filled in {time.perf_counter() - start:.1f} s)")
        fill_postgres(server.dsn, "small", template, SMALL)
        small_pg = PostgresRepository(server.dsn, schema="small", max_size=1)
        big_pg = PostgresRepository(server.dsn, schema="big", max_size=1)
        try:
            ids = flow_ids(template, BIG)
            compare(report, "PostgreSQL", (small_pg, ids[:SMALL]), (big_pg, ids), quick=quick)
        finally:
            small_pg.close()
            big_pg.close()
