"""Storage benchmarks: SQLite against raw sqlite3, large stores, PostgreSQL workers."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowfsm import Artifact, ArtifactCreated, FlowEngine
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.repositories._common import flow_body
from flowfsm.testing import TemporaryPostgres

from .core import TRIGGERS_PER_FLOW, Versions, bench_catalog, full_flow, interleaved
from .report import Report


class _Recorder:
    """Stands in for a sqlite3 connection and writes down every statement run."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.statements: list[tuple[str, Any, bool]] = []

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.statements.append((sql, params, False))
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        rows = list(rows)
        self.statements.append((sql, rows, True))
        return self._db.executemany(sql, rows)

    def close(self) -> None:
        self._db.close()


def record_statements(flows: int) -> list[list[tuple[str, Any, bool]]]:
    """The statements SQLiteRepository runs for each trigger of ``flows`` full flows."""
    with tempfile.TemporaryDirectory() as tmp:
        repository = SQLiteRepository(Path(tmp) / "record.db")
        recorder = _Recorder(repository._db)
        repository._db = recorder  # type: ignore[assignment]  # a stand-in with the same methods
        engine = FlowEngine(bench_catalog(), repository, None)
        per_trigger: list[list[tuple[str, Any, bool]]] = []
        handle = engine.handle

        def recorded(trigger: Any) -> Any:
            recorder.statements = []
            outcome = handle(trigger)
            per_trigger.append(recorder.statements)
            return outcome

        engine.handle = recorded  # type: ignore[method-assign]  # to cut the statements per trigger
        versions = Versions("rec")
        for _ in range(flows):
            full_flow(engine, versions())
        repository.close()
    return per_trigger


def raw_replay(db: sqlite3.Connection, triggers: list[list[tuple[str, Any, bool]]]) -> float:
    """The same statements with plain sqlite3, one transaction per trigger."""
    start = time.perf_counter()
    for statements in triggers:
        db.execute("BEGIN IMMEDIATE")
        for sql, params, many in statements:
            if sql.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
                continue
            if many:
                db.executemany(sql, params)
            else:
                db.execute(sql, params).fetchall()
        db.execute("COMMIT")
    return (time.perf_counter() - start) / len(triggers)


def engine_per_trigger(engine: FlowEngine, versions: Versions, flows: int) -> float:
    start = time.perf_counter()
    for _ in range(flows):
        full_flow(engine, versions())
    return (time.perf_counter() - start) / (flows * TRIGGERS_PER_FLOW)


def size_ratio(
    report: Report,
    backend: str,
    *,
    big_n: int,
    small: Repository,
    big: Repository,
    rounds: int,
    flows: int,
    unit: str,
    scale: float,
) -> None:
    """Full flows of new artifacts against a big store and a store of 1,000, taking turns."""
    on_small = FlowEngine(bench_catalog(), small, None), Versions("small")
    on_big = FlowEngine(bench_catalog(), big, None), Versions("big")
    at_small, at_big = interleaved(
        rounds,
        lambda: engine_per_trigger(*on_small, flows),
        lambda: engine_per_trigger(*on_big, flows),
    )
    report.ratio(
        f"{backend} trigger with {big_n:,} flows stored vs 1,000",
        at_big,
        at_small,
        "≤ 1.3×",
        at_big / at_small <= 1.3,
        unit=unit,
        scale=scale,
    )


# --- filling a store with many flows, fast -----------------------------------------------


def _template() -> tuple[str, str, list[tuple[str, list[str]]]]:
    """A stored flow's JSON with placeholder ids, its id, and its deployments' ids."""
    engine = FlowEngine(bench_catalog(), InMemoryRepository(), None, id_factory=_Placeholders())
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "@V"))).flows[0]
    return flow_body(flow), flow.id, [(d.id, [p.id for p in d.promotions]) for d in flow.deployments]


class _Placeholders:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"@{self.n:02d}"


def filler_rows(count: int) -> Iterator[tuple[tuple[Any, ...], list[tuple[str, str]], list[tuple[str, str]]]]:
    """Rows for ``count`` stored flows: (flow row, deployment rows, promotion rows)."""
    body, flow_token, shape = _template()
    tokens = [flow_token, *(t for d, ps in shape for t in (d, *ps))]
    for i in range(count):
        prefix = f"fill{i:08d}-"
        text = body.replace('"@V"', f'"9.{i}"')
        for token in tokens:
            text = text.replace(f'"{token}"', f'"{prefix}{token[1:]}"')
        flow_id = prefix + flow_token[1:]
        deployments = [(prefix + d[1:], flow_id) for d, _ in shape]
        promotions = [(prefix + p[1:], prefix + d[1:]) for d, ps in shape for p in ps]
        yield (flow_id, f"com.acme:api:9.{i}", "svc", "inProgress", 1, text), deployments, promotions


def fill_sqlite(path: Path, count: int) -> None:
    SQLiteRepository(path).close()  # the schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    rows = filler_rows(count)
    while batch := list(itertools.islice(rows, 20_000)):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO flows (id, artifact_id, service_id, state, version, body) VALUES (?, ?, ?, ?, ?, ?)",
            [b[0] for b in batch],
        )
        db.executemany("INSERT INTO deployments (id, flow_id) VALUES (?, ?)", [r for b in batch for r in b[1]])
        db.executemany("INSERT INTO promotions (id, deployment_id) VALUES (?, ?)", [r for b in batch for r in b[2]])
        db.execute("COMMIT")
    db.close()


def fill_postgres(dsn: str, schema: str, count: int) -> None:
    import psycopg

    PostgresRepository(dsn, schema=schema).close()  # the schema
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn, conn.cursor() as cur:
        flows, deployments, promotions = [], [], []
        for flow, ds, ps in filler_rows(count):
            flows.append(flow)
            deployments += ds
            promotions += ps
            if len(flows) == 50_000:
                _copy(cur, flows, deployments, promotions)
                flows, deployments, promotions = [], [], []
        _copy(cur, flows, deployments, promotions)
        conn.commit()
        # As pgbench does after loading: vacuum and flush now, rather than leave
        # autovacuum and the checkpointer to compete with the measurements that follow.
        conn.autocommit = True
        cur.execute("VACUUM (ANALYZE)")
        cur.execute("CHECKPOINT")


def _copy(cur: Any, flows: list[Any], deployments: list[Any], promotions: list[Any]) -> None:
    for sql, rows in (
        ("COPY flows (id, artifact_id, service_id, state, version, body) FROM STDIN", flows),
        ("COPY deployments (id, flow_id) FROM STDIN", deployments),
        ("COPY promotions (id, deployment_id) FROM STDIN", promotions),
    ):
        with cur.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)


# --- PostgreSQL claim latency ------------------------------------------------------------


def fill_outbox_postgres(dsn: str, schema: str, pending: int, per_flow: int = 5) -> None:
    """``pending`` HookRequests waiting, ``per_flow`` a flow, the flows interleaved as
    triggers make them; the tables left as loaded, never analyzed."""
    import psycopg

    from flowfsm.converter import hook_requests_json
    from flowfsm.testing import sample_flow, sample_hook_request

    PostgresRepository(dsn, schema=schema).close()  # the schema
    body = hook_requests_json([sample_hook_request(sample_flow())])[0]
    flows = pending // per_flow
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO flows (id, artifact_id, service_id, state, version, body)"
            " SELECT 'f' || g, 'a' || g, 's', 'inProgress', 1, '[]' FROM generate_series(1, %s) g",
            (flows,),
        )
        conn.execute(
            "INSERT INTO outbox (id, flow_id, body) SELECT 'r' || k || '-' || g, 'f' || g, %s::jsonb"
            " FROM generate_series(1, %s) k, generate_series(1, %s) g ORDER BY k, g",
            (body, per_flow, flows),
        )


def claim_seconds(repository: Repository, rounds: int) -> float:
    """Median seconds of ``claim(100)``; each claim is released again, untimed."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        claimed = repository.claim(100, lease=60.0)
        samples.append(time.perf_counter() - start)
        repository.release([r.id for r in claimed])
    return sorted(samples)[len(samples) // 2]


def pg_claim_latency(report: Report, dsn: str, pending: int, rounds: int) -> None:
    """``claim(100)`` among ``pending`` on a table never analyzed, against the same
    once analyzed: the claim must not wait for statistics to be fast."""
    import psycopg

    fill_outbox_postgres(dsn, "claims", pending)
    repository = PostgresRepository(dsn, schema="claims", max_size=1)
    repository.claim(1, lease=0.0)  # a connection, and the catalog cached
    fresh = claim_seconds(repository, rounds)
    with psycopg.connect(dsn, options="-c search_path=claims", autocommit=True) as conn:
        conn.execute("ANALYZE outbox")
    analyzed = claim_seconds(repository, rounds)
    repository.close()
    report.ratio(
        f"PostgreSQL claim(100) with {pending:,} pending, never analyzed vs analyzed",
        fresh,
        analyzed,
        "≤ 20 ms and ≤ 2×",
        fresh <= 0.020 and fresh / analyzed <= 2,
        unit="ms",
        scale=1e3,
        note="5 requests a flow; each claim released again; median of the rounds",
    )


# --- PostgreSQL workers --------------------------------------------------------------------


def _pg_worker(job: tuple[str, str, str, float], start: Any, out: Any) -> None:
    dsn, schema, prefix, seconds = job
    repository = PostgresRepository(dsn, schema=schema, max_size=1)
    engine = FlowEngine(bench_catalog(), repository, None)
    versions = Versions(prefix)
    full_flow(engine, versions())  # warm up
    start.wait()
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        full_flow(engine, versions())
        done += TRIGGERS_PER_FLOW
    out.put(done)
    repository.close()


def pg_throughput(dsn: str, schema: str, workers: int, seconds: float) -> float:
    """Triggers per second with ``workers`` processes, each on its own flows."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    run_id = uuid.uuid4().hex[:6]
    processes = [
        ctx.Process(target=_pg_worker, args=((dsn, schema, f"w{run_id}{n}", seconds), start, out))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    time.sleep(2.0)  # let every worker connect and warm up
    start.set()
    total: int = sum(out.get(timeout=seconds + 120) for _ in processes)
    for process in processes:
        process.join(60)
    return total / seconds


def run(report: Report, quick: bool) -> None:
    rounds = 5 if quick else 11
    flows_per_round = 10 if quick else 25

    report.section("SQLite (file, WAL)")
    recorded = record_statements(flows_per_round * rounds)
    with tempfile.TemporaryDirectory() as tmp:
        repository = SQLiteRepository(Path(tmp) / "engine.db")
        engine, versions = FlowEngine(bench_catalog(), repository, None), Versions("eng")
        SQLiteRepository(Path(tmp) / "raw.db").close()
        raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")  # the settings SQLiteRepository opens with
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA foreign_keys=ON")
        size = flows_per_round * TRIGGERS_PER_FLOW
        batches = iter([recorded[i : i + size] for i in range(0, len(recorded), size)])
        ours, baseline = interleaved(
            rounds,
            lambda: engine_per_trigger(engine, versions, flows_per_round),
            lambda: raw_replay(raw, next(batches)),
        )
        report.ratio(
            "engine trigger on SQLite vs raw sqlite3, same statements",
            ours,
            baseline,
            "≤ 2×",
            ours / baseline <= 2,
            unit="µs",
            scale=1e6,
            note="outbox only (no emitter); the baseline replays the repository's own statements",
        )
        raw.close()
        repository.close()

        big_n = 100_000 if quick else 1_000_000
        fill_sqlite(Path(tmp) / "small.db", 1_000)
        fill_sqlite(Path(tmp) / "big.db", big_n)
        small_repo, big_repo = (
            SQLiteRepository(Path(tmp) / "small.db"),
            SQLiteRepository(Path(tmp) / "big.db"),
        )
        size_ratio(
            report,
            "SQLite",
            big_n=big_n,
            small=small_repo,
            big=big_repo,
            rounds=rounds,
            flows=flows_per_round,
            unit="µs",
            scale=1e6,
        )
        small_repo.close()
        big_repo.close()

    if TemporaryPostgres.find_bin_dir() is None:
        report.section("PostgreSQL: not found, skipped (install PostgreSQL 15+)")
        return
    report.section("PostgreSQL (loopback, fsync on)")
    with TemporaryPostgres(durable=True) as server:
        pg_claim_latency(report, server.dsn, 100_000, 11 if quick else 31)
    # Each measurement on its own server: loading a million flows leaves a server
    # (and the host's page cache) busy for a while, which is no part of how workers scale.
    with TemporaryPostgres(durable=True) as server:
        PostgresRepository(server.dsn, schema="tp").close()
        seconds = 4.0 if quick else 10.0
        one, four = [], []
        for _ in range(1 if quick else 3):
            one.append(pg_throughput(server.dsn, "tp", 1, seconds))
            four.append(pg_throughput(server.dsn, "tp", 4, seconds))
    best_one, best_four = sorted(one)[len(one) // 2], sorted(four)[len(four) // 2]

    with TemporaryPostgres(durable=True) as server:
        fill_postgres(server.dsn, "small", 1_000)
        fill_postgres(server.dsn, "big", big_n)
        small_pg = PostgresRepository(server.dsn, schema="small", max_size=1)
        big_pg = PostgresRepository(server.dsn, schema="big", max_size=1)
        size_ratio(
            report,
            "PostgreSQL",
            big_n=big_n,
            small=small_pg,
            big=big_pg,
            rounds=rounds,
            flows=max(2, flows_per_round // 2),
            unit="ms",
            scale=1e3,
        )
        small_pg.close()
        big_pg.close()

    report.ratio(
        "PostgreSQL throughput, 4 worker processes vs 1",
        best_four,
        best_one,
        "≥ 1.8×",
        best_four / best_one >= 1.8,
        unit="triggers/s",
        note=f"{os.cpu_count()} cores; each worker on its own flows; commits wait on disk; a server of its own",
    )
