"""Worker benchmarks: claiming due timers in a large store, the time from a
trigger's commit to its webhook through a running ``flowfsm worker``, and timers
fired per second by 4 worker processes against 1 on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flowfsm import Artifact, ArtifactCreated, Catalog, DeploymentStarted, FlowEngine
from flowfsm.protocols import Repository
from flowfsm.repositories import PostgresRepository, SQLiteRepository
from flowfsm.repositories._common import due_text
from flowfsm.testing import FakeClock, TemporaryPostgres, sample_flow

from .core import interleaved
from .report import Report

FLOWFSM = str(Path(sys.executable).with_name("flowfsm"))
DUE = 500
"""Timers due in every store of the claim measure; the rest are due next year."""

CATALOG = """
[[services]]
id = "svc"
artifacts = ["com.acme:api"]
pipeline = {{ name = "p", environments = [{{ name = "dev", timeouts = {{ deploy = "10m" }} }}] }}
{webhooks}
"""
WEBHOOK = """
[[services.webhooks]]
id = "created"
event = "deployment-created"
actions = [{{ name = "a", url = "{url}" }}]
"""


# --- claiming due timers ----------------------------------------------------------------


def _timer_rows(count: int, now: dt.datetime, flow_id: str) -> Iterator[tuple[str, str, str, str, str]]:
    """``DUE`` timers due an hour ago, the rest spread over the next year."""
    for i in range(count):
        when = now - dt.timedelta(hours=1, seconds=i) if i < DUE else now + dt.timedelta(days=1, seconds=i * 31)
        yield f"d{i}/deploy", flow_id, f"d{i}", "deploy", due_text(when)


def fill_sqlite_timers(path: Path, count: int, now: dt.datetime) -> None:
    flow = sample_flow()
    with SQLiteRepository(path) as repository:
        repository.commit([flow])
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO timers (id, flow_id, deployment_id, kind, due) VALUES (?, ?, ?, ?, ?)",
        _timer_rows(count, now, flow.id),
    )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def fill_postgres_timers(dsn: str, schema: str, count: int, now: dt.datetime) -> None:
    """As ``fill_sqlite_timers``, each timer of a flow of its own, as in a real store
    (the flows are bare rows: claiming timers never reads them)."""
    import psycopg

    PostgresRepository(dsn, schema=schema, max_size=1).close()
    with psycopg.connect(dsn, options=f"-c search_path={schema}", autocommit=True) as conn:
        conn.execute(
            "INSERT INTO flows (id, artifact_id, service_id, state, version, body)"
            " SELECT 'f' || g, 'a' || g, 'svc', 'inProgress', 1, '[]' FROM generate_series(0, %s - 1) AS g",
            (count,),
        )
        conn.execute(
            "INSERT INTO timers (id, flow_id, deployment_id, kind, due)"
            " SELECT 'd' || g || '/deploy', 'f' || g, 'd' || g, 'deploy',"
            " CASE WHEN g < %(due)s THEN %(now)s - interval '1 hour' - g * interval '1 second'"
            " ELSE %(now)s + interval '1 day' + g * interval '31 seconds' END"
            " FROM generate_series(0, %(count)s - 1) AS g",
            {"due": DUE, "now": now, "count": count},
        )
        conn.execute("VACUUM ANALYZE")


def claim_due_seconds(repository: Repository, now: dt.datetime, rounds: int) -> float:
    """Median seconds of ``claim_due(now, 100)``; each claim released again, untimed."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        claimed = repository.claim_due(now, 100, lease=60.0)
        samples.append(time.perf_counter() - start)
        assert len(claimed) == 100, len(claimed)
        repository.release_timers([t.id for t in claimed])
    return statistics.median(samples)


def timer_claims(report: Report, backend: str, *, small: Repository, big: Repository, big_n: int, quick: bool) -> None:
    now = dt.datetime.now(dt.UTC)
    for repository in (small, big):
        claim_due_seconds(repository, now, 3)  # warm: connections, caches
    at_big, at_small = interleaved(
        5 if quick else 11,
        lambda: claim_due_seconds(big, now, 20),
        lambda: claim_due_seconds(small, now, 20),
    )
    report.ratio(
        f"{backend} claim_due(100) with {big_n:,} timers scheduled vs 1,000",
        at_big,
        at_small,
        "≤ 1.3×",
        at_big / at_small <= 1.3,
        unit="ms",
        scale=1e3,
        note=f"{DUE} due in each store; each claim released again; medians of 20 claims, interleaved rounds",
    )


# --- commit → webhook latency through a running worker --------------------------------------


class _Arrivals:
    """A receiver on 127.0.0.1 that notes when each request arrived (monotonic)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.arrived = threading.Condition()
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                now = time.monotonic()
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()
                with arrivals.arrived:
                    arrivals.at.setdefault(self.headers["webhook-id"], now)
                    arrivals.arrived.notify_all()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait(self, request_id: str, timeout: float = 30.0) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: request_id in self.at, timeout):
                raise TimeoutError(request_id)
            return self.at[request_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_workers(store: str, catalog: Path, count: int, *options: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    command = [FLOWFSM, "worker", "--store", store, "--catalog", str(catalog), *options]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(count)]
    try:
        for worker in workers:  # running once it says so; its log is read on, and dropped
            assert worker.stderr is not None
            line = worker.stderr.readline()
            assert b"worker running" in line, line
            threading.Thread(target=worker.stderr.read, daemon=True).start()
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)


def latencies(repository: Repository, store: str, tmp: Path, samples: int, poll: float) -> list[float]:
    """Seconds from each trigger's commit (``handle`` returned) to its webhook's arrival."""
    receiver = _Arrivals()
    catalog = tmp / f"latency-{uuid.uuid4().hex[:6]}.toml"
    catalog.write_text(CATALOG.format(webhooks=WEBHOOK.format(url=receiver.url)))
    engine = FlowEngine(Catalog.from_file(catalog), repository, None)
    measured = []
    rng = random.Random(7)
    try:
        with running_workers(store, catalog, 1, "--poll-interval", str(poll), "--concurrency", "1"):
            time.sleep(1.0)  # let it connect (and listen)
            for n in range(samples + 5):
                time.sleep(rng.uniform(0, min(poll, 0.05)))  # out of step with the worker's polls
                (request,) = engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"lat.{n}"))).hook_requests
                start = time.monotonic()  # the trigger's commit has returned
                arrived = receiver.wait(request.id)
                if n >= 5:  # the first few warm the connections up
                    measured.append(arrived - start)
    finally:
        receiver.close()
    return measured


def latency_report(report: Report, backend: str, measured: list[float], target: float, how: str) -> None:
    ordered = sorted(measured)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    report.value(f"{backend}: commit → webhook, p50", p50 * 1e3, "(context)", None, unit="ms", digits=1)
    report.value(
        f"{backend}: commit → webhook, p99 ({len(ordered)} triggers; {how})",
        p99 * 1e3,
        f"≤ {target * 1e3:g} ms",
        p99 <= target,
        unit="ms",
        digits=1,
    )


# --- timers fired per second, 4 workers vs 1 ------------------------------------------------


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _run_queue_seconds(pids: list[int]) -> float:
    """Time the threads of these processes have spent ready to run but waiting for a
    CPU (``/proc/PID/task/TID/schedstat``, second field), so far."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # ended meanwhile
            continue
        for task in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry))
    return found


def prepare_timers(dsn: str, database: str, flows: int) -> None:
    """A database of ``flows`` flows, each with a deploy timeout due in a day (each
    run makes them due once its workers are all running)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    url = _url(dsn, database)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(CATALOG.format(webhooks=""))
        repository = PostgresRepository(url)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        engine = FlowEngine(Catalog.from_file(path), repository, None, clock=FakeClock(later))
        for n in range(flows):
            (flow,) = engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"t.{n}"))).flows
            engine.handle(DeploymentStarted(flow.deployments[0].id))
        repository.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _url(dsn: str, database: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    return f"postgresql://{parts.get('user', 'postgres')}@{parts['host']}:{parts['port']}/{database}"


def timers_per_second(dsn: str, template: str, workers: int, tmp: Path) -> tuple[float, float, float, float]:
    """(timers fired a second, cores busy in the workers, cores busy in the server,
    the workers' and the server's threads waiting for a CPU, on average) while
    ``workers`` processes fire the timers of a copy of ``template``."""
    import psycopg

    database = f"run_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database} TEMPLATE {template}")
        backend = admin.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    parent = int(Path(f"/proc/{backend[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    catalog = tmp / "timers.toml"
    catalog.write_text(CATALOG.format(webhooks=""))
    url = _url(dsn, database)
    try:
        with psycopg.connect(url, autocommit=True) as conn:

            def left() -> int:
                row = conn.execute("SELECT count(*) FROM flowfsm.timers").fetchone()
                return int(row[0]) if row else 0

            total = left()
            with running_workers(url, catalog, workers, "--poll-interval", "0.05") as procs:
                pids = [p.pid for p in procs]
                time.sleep(1.0)  # every worker started, connected and listening
                # Every timer due at once, and the workers told (as a commit would).
                conn.execute("UPDATE flowfsm.timers SET due = due - interval '2 days'")
                conn.execute("NOTIFY flowfsm, 'flowfsm timers'")
                started = time.monotonic()
                cpu_workers, cpu_server = _cpu_seconds(pids), _cpu_seconds(_children(parent))
                queued = _run_queue_seconds([*pids, *_children(parent)])
                # Timed to 90% fired: the last batches, one worker's each, are a tail.
                while (remaining := left()) > total // 10:
                    time.sleep(0.01)
                elapsed = time.monotonic() - started
                busy_workers = (_cpu_seconds(pids) - cpu_workers) / elapsed
                busy_server = (_cpu_seconds(_children(parent)) - cpu_server) / elapsed
                waiting = (_run_queue_seconds([*pids, *_children(parent)]) - queued) / elapsed
        return (total - remaining) / elapsed, busy_workers, busy_server, waiting
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def run(report: Report, quick: bool) -> None:
    big_n = 100_000 if quick else 1_000_000
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        report.section("worker: claiming due timers (SQLite file)")
        fill_sqlite_timers(tmp / "small.db", 1_000, now)
        fill_sqlite_timers(tmp / "big.db", big_n, now)
        with SQLiteRepository(tmp / "small.db") as small, SQLiteRepository(tmp / "big.db") as big:
            timer_claims(report, "SQLite", small=small, big=big, big_n=big_n, quick=quick)

        report.section("worker: commit → webhook through a running `flowfsm worker` (SQLite, polling)")
        poll = 0.1
        with SQLiteRepository(tmp / "latency.db") as repository:
            measured = latencies(repository, str(tmp / "latency.db"), tmp, 50 if quick else 200, poll)
        latency_report(report, "SQLite", measured, poll + 0.020, f"poll interval {poll * 1e3:g} ms")

        if TemporaryPostgres.find_bin_dir() is None:
            report.section("worker on PostgreSQL: not found, skipped (install PostgreSQL 15+)")
            return
        report.section("worker on PostgreSQL (loopback, fsync on)")
        with TemporaryPostgres(durable=True) as server:
            fill_postgres_timers(server.dsn, "small", 1_000, now)
            fill_postgres_timers(server.dsn, "big", big_n, now)
            with (
                PostgresRepository(server.dsn, schema="small", max_size=1) as small_pg,
                PostgresRepository(server.dsn, schema="big", max_size=1) as big_pg,
            ):
                timer_claims(report, "PostgreSQL", small=small_pg, big=big_pg, big_n=big_n, quick=quick)
        with TemporaryPostgres(durable=True) as server:
            url = _url(server.dsn, "latency")
            import psycopg

            with psycopg.connect(server.dsn, autocommit=True) as admin:
                admin.execute("CREATE DATABASE latency")
            with PostgresRepository(url) as repository:
                measured = latencies(repository, url, tmp, 50 if quick else 200, 1.0)
            latency_report(report, "PostgreSQL", measured, 0.050, "LISTEN/NOTIFY, poll interval 1 s")
        flows = 1_000 if quick else 3_000
        for durable in (True, False):  # fsync off: context, what the CPU alone allows
            with TemporaryPostgres(durable=durable) as server:
                prepare_timers(server.dsn, "timers", flows)
                one: list[tuple[float, float, float, float]] = []
                four: list[tuple[float, float, float, float]] = []
                for _ in range(1 if quick or not durable else 3):
                    one.append(timers_per_second(server.dsn, "timers", 1, tmp))
                    four.append(timers_per_second(server.dsn, "timers", 4, tmp))
            one.sort()
            four.sort()
            m1, m4 = one[len(one) // 2], four[len(four) // 2]
            report.ratio(
                f"PostgreSQL timers fired/s, 4 worker processes vs 1{'' if durable else ', fsync off'}",
                m4[0],
                m1[0],
                "≥ 1.8×" if durable else "(context)",
                m4[0] / m1[0] >= 1.8 if durable else None,
                unit="/s",
                note=f"{os.cpu_count()} cores; {flows:,} due timers, no webhooks; cores busy: 1 worker"
                f" {m1[1]:.2f} + server {m1[2]:.2f}, 4 workers {m4[1]:.2f} + server {m4[2]:.2f};"
                f" threads waiting for a CPU: {m1[3]:.2f} vs {m4[3]:.2f} on average",
            )
