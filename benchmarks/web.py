"""Dashboard benchmarks (flowfsm.web): the flows page with 100,000 flows stored
against 100, on SQLite and PostgreSQL, and a flow page of 200 history entries.

Each page is rendered server side: the dashboard's ASGI application is called
in process (no HTTP client, no socket), from the request to the last byte of the
body, on one event loop kept across calls. The stores are filled in bulk as the
history group fills its own (``benchmarks/history.py``): one flow's rows, written
by its repository, copied once for each stored flow with its ids renamed; only
the tables a flows page reads (flows, deployments, promotions).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

from flowfsm import Artifact, ArtifactCreated, FlowEngine, PauseFlow, ResumeFlow
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.testing import TemporaryPostgres
from flowfsm.web import dashboard

from .core import Discard, bench_catalog, interleaved
from .history import _template, fill_postgres, fill_sqlite
from .report import Report

BIG, SMALL = 100_000, 100
STEPS = 200  # the flow page's history entries


class Pages:
    """Calls a dashboard in process, as a server would, and times each page."""

    def __init__(self, engine: FlowEngine) -> None:
        self.app = dashboard(engine)
        self.loop = asyncio.new_event_loop()

    def get(self, path: str, query: str = "") -> bytes:
        """The body of ``GET path?query``; asserts a 200."""
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"bench")],
            "client": ("127.0.0.1", 1),
            "server": ("bench", 80),
        }
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, receive, send))
        assert sent[0]["status"] == 200, sent[0]
        return b"".join(m.get("body", b"") for m in sent[1:])

    def seconds(self, path: str, calls: int, query: str = "") -> float:
        """Median seconds of ``calls`` requests of the page."""
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            self.get(path, query)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    def close(self) -> None:
        self.loop.close()


def compare(report: Report, backend: str, small: Repository, big: Repository, *, quick: bool) -> None:
    """The flows page (newest first, the first page; then one filtered by state) on a
    big store against a small one."""
    rounds, calls = (5, 20) if quick else (11, 50)
    pages = [Pages(FlowEngine(bench_catalog(), repository, None)) for repository in (small, big)]
    try:
        for query, label in (("", "flows page"), ("state=success", "flows page, state filter")):
            for page in pages:
                page.seconds("/", 5, query)  # warm: connections, caches, templates
            at_small, at_big = interleaved(rounds, *(partial(page.seconds, "/", calls, query) for page in pages))
            report.ratio(
                f"{backend} {label} with {BIG:,} flows stored vs {SMALL}",
                at_big,
                at_small,
                "≤ 1.5×",
                at_big / at_small <= 1.5,
                unit="ms",
                scale=1e3,
                note=f"medians of {calls} renders, {rounds} interleaved rounds; 50 flows a page",
            )
    finally:
        for page in pages:
            page.close()


def long_flow(engine: FlowEngine) -> str:
    """A flow of ``STEPS`` history entries: created, then paused and resumed."""
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "long.1"))).flows[0]
    for i in range((STEPS - 1) // 2):
        engine.handle(PauseFlow(flow.id, "alice", f"hold {i}"))
        engine.handle(ResumeFlow(flow.id, "alice", f"go {i}"))
    engine.handle(PauseFlow(flow.id, "alice", "hold"))
    assert len(engine.repository.history(flow.id)) == STEPS
    return flow.id


def flow_page(report: Report, backend: str, repository: Repository, *, quick: bool) -> None:
    engine = FlowEngine(bench_catalog(), repository, Discard())
    flow_id = long_flow(engine)
    pages = Pages(engine)
    try:
        size = len(pages.get(f"/flows/{flow_id}"))
        (median,) = interleaved(5 if quick else 11, partial(pages.seconds, f"/flows/{flow_id}", 10 if quick else 30))
        report.value(
            f"{backend} flow page with {STEPS} history entries ({size // 1024} KiB of HTML)",
            median * 1e3,
            "report",
            None,
            unit="ms",
            digits=2,
        )
    finally:
        pages.close()


def run(report: Report, quick: bool) -> None:
    report.section(f"web: the dashboard's pages, server side; flows page with {BIG:,} flows stored vs {SMALL}")
    flow_page(report, "in memory", InMemoryRepository(), quick=quick)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with SQLiteRepository(tmp / "template.db") as repository:
            template = _template(repository, lambda columns: columns)
        start = time.perf_counter()
        fill_sqlite(tmp / "big.db", template, BIG, history=False)
        print(f"  (SQLite store of {BIG:,} flows filled in {time.perf_counter() - start:.1f} s)")
        fill_sqlite(tmp / "small.db", template, SMALL, history=False)
        with SQLiteRepository(tmp / "small.db") as small, SQLiteRepository(tmp / "big.db") as big:
            compare(report, "SQLite", small, big, quick=quick)
        with SQLiteRepository(tmp / "long.db") as repository:
            flow_page(report, "SQLite", repository, quick=quick)

    if TemporaryPostgres.find_bin_dir() is None:
        report.section("web on PostgreSQL: not found, skipped (install PostgreSQL 15+)")
        return
    with TemporaryPostgres(durable=True) as server:
        with PostgresRepository(server.dsn, schema="template", max_size=1) as repository:
            template = _template(repository, lambda columns: columns.replace("body", "body::text"))
        start = time.perf_counter()
        fill_postgres(server.dsn, "big", template, BIG, history=False)
        print(f"  (PostgreSQL store of {BIG:,} flows filled in {time.perf_counter() - start:.1f} s)")
        fill_postgres(server.dsn, "small", template, SMALL, history=False)
        small_pg = PostgresRepository(server.dsn, schema="small", max_size=1)
        big_pg = PostgresRepository(server.dsn, schema="big", max_size=1)
        try:
            compare(report, "PostgreSQL", small_pg, big_pg, quick=quick)
        finally:
            small_pg.close()
            big_pg.close()
        with PostgresRepository(server.dsn, schema="long", max_size=1) as repository:
            flow_page(report, "PostgreSQL", repository, quick=quick)
