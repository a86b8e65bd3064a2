"""Lane benchmarks (SPEC §11): a trigger of a ``queue`` service with 10,000 flows
waiting for its environment against 10 waiting.

Each store is filled through the engine: one flow occupies the environment and the
others wait behind it, in arrival order. A round is one cycle at each size, the two
taking turns: a new release joins the end of the line (``ArtifactCreated``: the
lane read, the flow queued), then the occupant's deployment completes, which frees
the environment and announces the first waiting flow in the same commit
(``DeploymentCompleted``: the line's first entry read, the lane moved). The line
keeps its length: one joins, one leaves. Finding the next flow reads the line's
index from its start, so neither trigger should grow with the line.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    FlowEngine,
    Pipeline,
    Service,
)
from flowfsm.protocols import Lanes, Repository
from flowfsm.repositories import PostgresRepository, SQLiteRepository
from flowfsm.testing import TemporaryPostgres

from .core import interleaved
from .report import Report

BIG, SMALL = 10_000, 10
SERVICE = Service("svc", artifacts=["com.acme:api"], pipeline=Pipeline("p", [Environment("prod")]), concurrency="queue")


class Line:
    """One store's engine, with a line of ``waiting`` flows behind an occupant."""

    def __init__(self, repository: Repository, waiting: int) -> None:
        assert isinstance(repository, Lanes)
        self.repository, self.lanes = repository, repository
        self.engine = FlowEngine(Catalog([SERVICE]), repository, None)
        self.released = 0
        for _ in range(waiting + 1):
            self.release()
        lane = self.lanes.lane("svc", "prod")
        assert lane.occupant is not None
        assert lane.more == (waiting > len(lane.waiting))

    def release(self) -> float:
        self.released += 1
        start = time.perf_counter()
        self.engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"1.{self.released}")))
        return time.perf_counter() - start

    def free(self) -> float:
        occupant = self.lanes.lane("svc", "prod", limit=1).occupant
        assert occupant is not None
        (deployment,) = self.repository.get(occupant).deployments
        self.engine.handle(DeploymentStarted(deployment.id))
        start = time.perf_counter()
        self.engine.handle(DeploymentCompleted(deployment.id))
        return time.perf_counter() - start


def cycles(line: Line, count: int) -> tuple[float, float]:
    """Medians of ``count`` cycles: (a release joining the line, the occupant freeing it)."""
    joins, frees = [], []
    for _ in range(count):
        joins.append(line.release())
        frees.append(line.free())
    return statistics.median(joins), statistics.median(frees)


def compare(report: Report, backend: str, small: Line, big: Line, *, quick: bool) -> None:
    rounds, count = (5, 10) if quick else (11, 30)
    results: dict[str, list[tuple[float, float]]] = {"small": [], "big": []}

    def turn(name: str, line: Line) -> Callable[[], float]:
        def run() -> float:
            results[name].append(cycles(line, count))
            return 0.0

        return run

    cycles(small, 5), cycles(big, 5)  # warm: connections, caches
    interleaved(rounds, turn("small", small), turn("big", big))
    for i, what in enumerate(("a release joining the line", "freeing announces the next flow")):
        at_small = statistics.median(r[i] for r in results["small"])
        at_big = statistics.median(r[i] for r in results["big"])
        report.ratio(
            f"{backend} queue: {what}, {BIG:,} flows waiting vs {SMALL}",
            at_big,
            at_small,
            "≤ 1.3×",
            at_big / at_small <= 1.3,
            unit="µs",
            scale=1e6,
            note=f"medians of {count} cycles, {rounds} interleaved rounds",
        )


def _filled(make: Callable[[], Repository], waiting: int, what: str) -> Line:
    start = time.perf_counter()
    line = Line(make(), waiting)
    print(f"  ({what}: {waiting:,} flows waiting, filled in {time.perf_counter() - start:.1f} s)")
    return line


def run(report: Report, quick: bool) -> None:
    report.section(f"lanes: a trigger of a queue service, {BIG:,} flows waiting vs {SMALL}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        small = _filled(lambda: SQLiteRepository(tmp / "small.db"), SMALL, "SQLite")
        big = _filled(lambda: SQLiteRepository(tmp / "big.db"), BIG, "SQLite")
        try:
            compare(report, "SQLite", small, big, quick=quick)
        finally:
            _close(small.repository)
            _close(big.repository)
    if TemporaryPostgres.find_bin_dir() is None:
        report.section("lanes on PostgreSQL: not found, skipped (install PostgreSQL 15+)")
        return
    with TemporaryPostgres() as server:
        small = _filled(lambda: PostgresRepository(server.dsn, schema="small", max_size=1), SMALL, "PostgreSQL")
        big = _filled(lambda: PostgresRepository(server.dsn, schema="big", max_size=1), BIG, "PostgreSQL")
        try:
            compare(report, "PostgreSQL", small, big, quick=quick)
        finally:
            _close(small.repository)
            _close(big.repository)


def _close(repository: Any) -> None:
    repository.close()
