"""Fault tests: processes killed mid-stream, processes racing, stores refusing work.

Each run is checked against a sequential run of the same plan on the in-memory
store: a flow at version v must hold exactly the states and the HookRequests that
the first v applied triggers of its plan produce — no more, no fewer, none twice.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowfsm import (
    ArtifactCreated,
    DeploymentStarted,
    DeploymentState,
    Flow,
    FlowEngine,
    FlowState,
    HookRequest,
    RepositoryError,
)
from flowfsm.dispatch import Dispatcher
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.testing import TemporaryPostgres

from . import workers
from .test_repositories import drop_schemas

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = 9

Signature = tuple[str, str, str, str, str]


def signature(request: HookRequest) -> Signature:
    deployment = request.payload.deployment
    return (
        request.event.value,
        request.webhook_id,
        request.action.name,
        deployment.environment,
        deployment.state.value,
    )


def states(flow: Flow) -> tuple[Any, ...]:
    return (
        flow.state.value,
        tuple((d.state.value, tuple(p.state.value for p in d.promotions)) for d in flow.deployments),
    )


class Reference:
    """The plan run sequentially in memory, remembered at every version of every flow."""

    def __init__(self, artifacts: int) -> None:
        repository = InMemoryRepository()
        emitter = RecordingEmitter()
        engine = FlowEngine(workers.CATALOG, repository, emitter)
        self.at: dict[tuple[str, str], dict[int, tuple[tuple[Any, ...], list[Signature]]]] = {}
        seen: dict[str, list[Signature]] = {}
        original = engine.handle

        def handle(trigger: Any) -> Any:
            outcome = original(trigger)
            for request in outcome.hook_requests:
                seen.setdefault(request.flow_id, []).append(signature(request))
            for flow in outcome.flows if not outcome.duplicate else ():
                self.at.setdefault(flow.key, {})[flow.version] = (states(flow), list(seen.get(flow.id, [])))
            return outcome

        engine.handle = handle  # type: ignore[method-assign]  # record every version as it is made
        workers.run(engine, artifacts)
        self.final = {f.key: f for f in repository.list_flows(limit=10_000)}


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(ARTIFACTS)


def check_consistent(repository: Repository, reference: Reference, *, complete: bool) -> list[str]:
    """Every stored flow matches the reference at its version; returns all HookRequest ids."""
    flows = repository.list_flows(limit=10_000)
    keys = [f.key for f in flows]
    assert len(keys) == len(set(keys)), "a flow was created twice"
    if complete:
        assert sorted(keys) == sorted(reference.final)
    ids: list[str] = []
    for flow in flows:
        expected_states, expected_requests = reference.at[flow.key][flow.version]
        assert states(flow) == expected_states, flow.key
        records = repository.hook_requests(flow.id)
        assert [signature(r.request) for r in records] == expected_requests, flow.key
        ids += [r.request.id for r in records]
        deployments = [d.state for d in flow.deployments]
        succeeded = deployments.count(DeploymentState.SUCCESS)
        assert deployments[:succeeded] == [DeploymentState.SUCCESS] * succeeded
        assert (flow.state is FlowState.SUCCESS) == (succeeded == len(deployments))
        if complete:
            assert states(flow) == states(reference.final[flow.key])
    return ids


def drain(repository: Repository, log: Path, ids: list[str], dispatched: set[str]) -> None:
    """The dispatcher delivers what the killed workers left; nothing is missing:
    every HookRequest reached a worker's emitter or a dispatcher's (``dispatched``
    gathers the dispatchers' across calls)."""
    emitter = RecordingEmitter()
    dispatcher = Dispatcher(repository, emitter)
    deadline = time.monotonic() + 20
    while repository.count_pending() and time.monotonic() < deadline:
        dispatcher.run_once()  # what a killed worker held comes free when its lease ends
        time.sleep(0.1)
    assert repository.count_pending() == 0
    dispatched |= {r.id for r in emitter.requests}
    delivered = set(log.read_text().split()) if log.exists() else set()
    assert set(ids) <= delivered | dispatched


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[str], Any]]:
    """Worker arguments for a fresh store, and a factory for the test's own handle."""
    if request.param == "sqlite":
        path = tmp_path / "flows.db"
        yield ["--sqlite", str(path)], lambda: SQLiteRepository(path)
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"f_{uuid.uuid4().hex[:12]}"
    yield ["--postgres", dsn, "--schema", schema], lambda: PostgresRepository(dsn, schema=schema)
    drop_schemas(dsn, [schema])


def worker(args: list[str], log: Path, order: int = 0, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.workers", *args, "--artifacts", str(ARTIFACTS)]
    command += ["--order", str(order), "--log", str(log), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_killed_at_random_points_loses_nothing(
    store: tuple[list[str], Any], reference: Reference, tmp_path: Path
) -> None:
    args, open_store = store
    log = tmp_path / "delivered.log"
    rng = random.Random(os.environ.get("FLOWFSM_FAULT_SEED", "7"))
    dispatched: set[str] = set()
    steps = sum(1 for _ in workers.stream(ARTIFACTS))
    partial = 0
    for _ in range(4):
        process = worker(args, log, 0, "--progress")
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        kill_at = rng.randrange(steps * 4 // 5)  # the worker starts over each time: late kills too
        while int(process.stdout.readline() or steps) < kill_at:
            pass
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)  # reap it and close its pipes
        with open_store() as repository:
            ids = check_consistent(repository, reference, complete=False)
            versions = {f.key: f.version for f in repository.list_flows(limit=10_000)}
            partial += versions != {key: f.version for key, f in reference.final.items()}
            drain(repository, log, ids, dispatched)
    assert partial, "no kill landed before the stream's end"
    process = worker(args, log)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    with open_store() as repository:
        drain(repository, log, check_consistent(repository, reference, complete=True), dispatched)


def test_four_workers_racing_on_the_same_flows_agree_with_a_sequential_run(
    store: tuple[list[str], Any], reference: Reference, tmp_path: Path
) -> None:
    args, open_store = store
    log = tmp_path / "delivered.log"
    processes = [worker(args, log, order) for order in range(4)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert out.split() == ["ready", "done"]
    with open_store() as repository:
        drain(repository, log, check_consistent(repository, reference, complete=True), set())


# --- stores that refuse work -----------------------------------------------------------


def snapshot(repository: Repository) -> tuple[list[Flow], int]:
    return repository.list_flows(limit=10_000), repository.count_pending()


def test_postgres_refusing_connections_is_a_clear_error() -> None:
    with socket_port() as port, pytest.raises(RepositoryError) as error:
        PostgresRepository(f"host=127.0.0.1 port={port} user=postgres connect_timeout=2", timeout=2)
    assert error.value.backend == "postgres"
    assert "cannot connect" in str(error.value)


def test_postgres_going_away_mid_stream_writes_nothing_half() -> None:
    if TemporaryPostgres.find_bin_dir() is None:
        pytest.fail("PostgreSQL (initdb, pg_ctl) is needed for this test")
    with TemporaryPostgres() as server:
        repository = PostgresRepository(server.dsn, timeout=3)
        engine = FlowEngine(workers.CATALOG, repository, RecordingEmitter())
        flow = engine.handle(ArtifactCreated(workers.artifact(1))).flows[0]
        before = snapshot(repository)
        server.stop()
        with pytest.raises(RepositoryError):
            engine.handle(DeploymentStarted(flow.deployments[0].id))
        server.start()
        for _ in range(3):  # the pool replaces connections the restart broke
            try:
                assert snapshot(repository) == before
                break
            except RepositoryError:
                time.sleep(0.2)
        else:
            raise AssertionError("the repository did not recover after the server came back")
        assert engine.handle(DeploymentStarted(flow.deployments[0].id)).flows[0].version == 2
        repository.close()


class _Seen(logging.Handler):
    """Sets ``event`` on the first ERROR record."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


def test_a_dispatcher_outlives_postgres_going_away() -> None:
    """``run`` (what ``flowfsm dispatch --follow`` runs) logs a failed poll, backs off
    and goes on: once the server is back, everything is delivered."""
    if TemporaryPostgres.find_bin_dir() is None:
        pytest.fail("PostgreSQL (initdb, pg_ctl) is needed for this test")
    with TemporaryPostgres() as server:
        repository = PostgresRepository(server.dsn, timeout=2)
        engine = FlowEngine(workers.CATALOG, repository, None)
        made = list(engine.handle(ArtifactCreated(workers.artifact(1))).hook_requests)
        made += engine.handle(ArtifactCreated(workers.artifact(2))).hook_requests
        received: list[HookRequest] = []
        everything = threading.Event()

        def receive(request: HookRequest) -> None:
            received.append(request)
            if len(received) == len(made):
                everything.set()

        dispatcher = Dispatcher(repository, CallbackEmitter(receive), poll_interval=0.05)
        seen = _Seen()
        logger = logging.getLogger("flowfsm.dispatch")
        logger.addHandler(seen)
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run, args=(stop,))
        try:
            server.stop()
            thread.start()
            assert seen.event.wait(30)  # a poll failed, and was logged
            server.start()
            assert everything.wait(60)
            assert thread.is_alive()
        finally:
            stop.set()
            thread.join(30)
            logger.removeHandler(seen)
            repository.close()
        assert not thread.is_alive()
        assert received == made


_HOLD_A_SERVER = """
import sys, time
from flowfsm.testing import TemporaryPostgres
server = TemporaryPostgres().__enter__()
print(server.port, server._dir, flush=True)
time.sleep(600)
"""


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGKILL])
def test_a_temporary_postgres_outlives_no_killed_process(signal_number: int) -> None:
    """SIGTERM skips ``__exit__`` and SIGKILL skips everything: the watchdog still
    stops the server and removes its files."""
    if TemporaryPostgres.find_bin_dir() is None:
        pytest.fail("PostgreSQL (initdb, pg_ctl) is needed for this test")
    with subprocess.Popen([sys.executable, "-c", _HOLD_A_SERVER], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        port_text, directory = holder.stdout.readline().split()
        port = int(port_text)
        assert _accepts(port)
        assert os.path.isdir(directory)
        holder.send_signal(signal_number)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (_accepts(port) or os.path.exists(directory)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _accepts(port), "the server is still running"
    assert not os.path.exists(directory), "the server's files are still there"


def test_a_locked_sqlite_file_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    repository = SQLiteRepository(path, timeout=0.2)
    engine = FlowEngine(workers.CATALOG, repository, RecordingEmitter())
    flow = engine.handle(ArtifactCreated(workers.artifact(1))).flows[0]
    before = snapshot(repository)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(RepositoryError) as error:
        engine.handle(DeploymentStarted(flow.deployments[0].id))
    assert "locked" in str(error.value)
    other.execute("ROLLBACK")
    other.close()
    assert snapshot(repository) == before
    assert engine.handle(DeploymentStarted(flow.deployments[0].id)).flows[0].version == 2


def test_a_full_sqlite_disk_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    repository = SQLiteRepository(tmp_path / "flows.db")
    engine = FlowEngine(workers.CATALOG, repository, RecordingEmitter())
    engine.handle(ArtifactCreated(workers.artifact(1)))
    before = snapshot(repository)
    pages = repository._db.execute("PRAGMA page_count").fetchone()[0]
    repository._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now

    def fill_up() -> None:
        for i in range(2, 50):
            engine.handle(ArtifactCreated(workers.artifact(i)))

    with pytest.raises(RepositoryError) as error:
        fill_up()
    assert "full" in str(error.value)
    assert isinstance(error.value.__cause__, sqlite3.Error)
    after, pending = snapshot(repository)
    assert pending == before[1]
    assert after[-len(before[0]) :] == before[0]  # what was there is intact
    for flow in after:
        assert len(repository.hook_requests(flow.id)) == 2  # each flow whole: deployment-created × 2 actions


class socket_port:  # noqa: N801 - used like a function
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self.sock.close()
