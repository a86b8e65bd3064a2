"""Scale-out: three ``flowfsm worker`` processes on one PostgreSQL database, one of
them killed (SIGKILL) mid-run. Every flow's timer and HookRequests are due at
once; afterwards the store and a loopback receiver's log must show every timer
fired exactly once in effect, and every HookRequest delivered at least once, in
its flow's order, with nothing lost."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from flowfsm import Artifact, ArtifactCreated, Catalog, DeploymentStarted, FlowEngine, FlowState, HookEvent
from flowfsm.repositories import PostgresRepository
from flowfsm.testing import FakeClock

from .test_cli import FLOWFSM

FLOWS = 120
EVENTS = ("deployment-created", "deployment-started", "deployment-failed", "flow-failed")
WEBHOOK = '  {{ id = "wh-{event}", event = "{event}", actions = [{{ name = "a", url = "{url}" }}] }},\n'
CATALOG = """
[[services]]
id = "svc"
artifacts = ["com.acme:api"]
pipeline = { name = "p", environments = [{ name = "dev", timeouts = { deploy = "10m" } }] }
webhooks = [
"""


def catalog_text(url: str) -> str:
    return CATALOG + "".join(WEBHOOK.format(event=e, url=url) for e in EVENTS) + "]\n"


class Log:
    """A receiver on 127.0.0.1 that logs each request's id, in arrival order, and
    takes a few milliseconds to answer, as a real one does."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()
        log = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with log.lock:
                    log.ids.append(self.headers["webhook-id"])
                time.sleep(0.005)  # the receiver's own work
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def count(self) -> int:
        with self.lock:
            return len(self.ids)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def database(postgres_dsn: str) -> Iterator[str]:
    """A database of its own on the test server, as a postgresql:// URL."""
    name = f"scale_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    parts = conninfo_to_dict(postgres_dsn)
    password = f":{parts['password']}" if parts.get("password") else ""
    yield f"postgresql://{parts.get('user', 'postgres')}{password}@{parts['host']}:{parts['port']}/{name}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_three_workers_one_killed_lose_nothing(tmp_path: Path, database: str) -> None:
    receiver = Log()
    catalog_file = tmp_path / "catalog.toml"
    catalog_file.write_text(catalog_text(receiver.url))
    repository = PostgresRepository(database)
    workers: list[subprocess.Popen[str]] = []
    logs = [(tmp_path / f"worker{i}.log").open("w+") for i in range(3)]
    try:
        # Flows started on 1 January 2026 (a fake clock): every deploy timeout is long
        # due, and each flow's two HookRequests wait in the outbox.
        engine = FlowEngine(Catalog.from_file(catalog_file), repository, None, clock=FakeClock())
        flow_ids = []
        for n in range(FLOWS):
            (flow,) = engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"1.{n}"))).flows
            engine.handle(DeploymentStarted(flow.deployments[0].id))
            flow_ids.append(flow.id)
        expected = FLOWS * len(EVENTS)

        for log in logs:
            command = [FLOWFSM, "worker", "--store", database, "--catalog", str(catalog_file)]
            command += ["--poll-interval", "0.2", "--lease", "2", "--concurrency", "4"]
            workers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, cwd=tmp_path))

        until(lambda: receiver.count() >= expected // 4, 60, "a quarter of the deliveries")
        workers[0].send_signal(signal.SIGKILL)  # mid-run: whatever it holds is lost with it
        killed_at = receiver.count()
        assert workers[0].wait(10) == -signal.SIGKILL
        assert killed_at < expected, "the run ended before the kill"

        def done() -> bool:
            return repository.count_pending() == 0 and all(
                repository.get(f).state is FlowState.FAILED for f in flow_ids
            )

        until(done, 60, "every flow to fail by its timeout and the outbox to empty")
        for survivor in workers[1:]:
            survivor.send_signal(signal.SIGTERM)
        for survivor in workers[1:]:
            assert survivor.wait(30) == 0

        check(repository, flow_ids, list(receiver.ids), logs)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        repository.close()
        receiver.close()
        for log in logs:
            log.close()


def check(repository: PostgresRepository, flow_ids: list[str], arrived: list[str], logs: Sequence[IO[str]]) -> None:
    """The guarantees, read from the store, the receiver's log and the workers' logs."""
    expected = len(flow_ids) * len(EVENTS)
    # Every timer fired exactly once in effect: each flow failed by it, once.
    records = {f: repository.hook_requests(f) for f in flow_ids}
    for flow_id in flow_ids:
        events = [r.request.event.value for r in records[flow_id]]
        assert events == list(EVENTS), (flow_id, events)
        assert repository.timers(flow_id) == []
    fired: dict[str, int] = {}
    for log in logs:
        log.seek(0)
        text = log.read()
        assert "Traceback" not in text, text[-2000:]
        for timer_id in re.findall(r"INFO timer (\S+) of flow", text):
            fired[timer_id] = fired.get(timer_id, 0) + 1
    assert max(fired.values(), default=1) == 1, "a timer's firing logged twice"

    # Every HookRequest arrived at least once; per flow, first arrivals in order.
    first: dict[str, int] = {}
    for position, request_id in enumerate(arrived):
        first.setdefault(request_id, position)
    for flow_id in flow_ids:
        ids = [r.request.id for r in records[flow_id]]
        assert all(i in first for i in ids), flow_id
        assert sorted(ids, key=first.__getitem__) == ids, flow_id
        assert all(r.state.value == "delivered" for r in records[flow_id])
    assert repository.dead_requests() == []
    assert len(first) == expected
    assert {r.request.event for rs in records.values() for r in rs} == {HookEvent(e) for e in EVENTS}
