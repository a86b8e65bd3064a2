"""The dispatcher drains the outbox: at least once, in order per flow, in parallel."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowfsm import Artifact, ArtifactCreated, Catalog, DeploymentStarted, FlowEngine, HookRequest
from flowfsm.dispatch import Dispatcher, RetryPolicy
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.protocols import Repository
from flowfsm.repositories import PostgresRepository, SQLiteRepository

from .conftest import api_service
from .test_repositories import drop_schemas
from .test_walkthrough import create, passed, through_completed


def fill(repository: Repository, flows: int = 3) -> list[HookRequest]:
    """Flows whose HookRequests all wait in the outbox; returns them in creation order."""
    engine = FlowEngine(Catalog([api_service()]), repository, None)
    made: list[HookRequest] = []
    for n in range(flows):
        outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"9.{n}")))
        made += outcome.hook_requests
        made += engine.handle(DeploymentStarted(outcome.flows[0].deployments[0].id)).hook_requests
    return made


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Repository, Repository]]:
    """Two handles on one store, as two processes would have."""
    if request.param == "sqlite":
        path = tmp_path / "flows.db"
        first, second = SQLiteRepository(path), SQLiteRepository(path)
        yield first, second
        first.close()
        second.close()
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"d_{uuid.uuid4().hex[:12]}"
    pg_first, pg_second = PostgresRepository(dsn, schema=schema), PostgresRepository(dsn, schema=schema)
    yield pg_first, pg_second
    pg_first.close()
    pg_second.close()
    drop_schemas(dsn, [schema])


def test_run_once_delivers_everything_pending_in_order(shared: tuple[Repository, Repository]) -> None:
    repository, _ = shared
    made = fill(repository)
    emitter = RecordingEmitter()
    assert Dispatcher(repository, emitter, batch=5).run_once().delivered == len(made)
    assert emitter.requests == made
    assert repository.count_pending() == 0
    assert Dispatcher(repository, emitter).run_once().delivered == 0


def test_a_failing_flow_waits_and_the_others_go_on(shared: tuple[Repository, Repository]) -> None:
    repository, _ = shared
    made = fill(repository)
    broken = made[0].flow_id
    delivered: list[HookRequest] = []

    def flaky(request: HookRequest) -> None:
        if request.flow_id == broken:
            raise ConnectionError("receiver down")
        delivered.append(request)

    no_wait = RetryPolicy(delays=(0.0,))
    assert Dispatcher(repository, CallbackEmitter(flaky), batch=2, retry=no_wait).run_once().delivered == len(delivered)
    assert delivered == [r for r in made if r.flow_id != broken]
    waiting = [r for r in made if r.flow_id == broken]
    assert repository.count_pending() == len(waiting)
    first = repository.hook_requests(broken)[0]
    assert [(a.status_code, a.error) for a in first.attempts] == [(None, "ConnectionError: receiver down")]
    recovered = RecordingEmitter()
    assert Dispatcher(repository, recovered).run_once().delivered == len(waiting)
    assert recovered.requests == waiting  # still in creation order


def test_follow_mode_delivers_what_arrives(shared: tuple[Repository, Repository]) -> None:
    repository, other = shared
    emitter = RecordingEmitter()
    stop = threading.Event()
    dispatcher = Dispatcher(other, emitter, poll_interval=0.05)
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    try:
        made = fill(repository, flows=2)
        deadline = time.monotonic() + 10
        while len(emitter.requests) < len(made) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert emitter.requests == made


def test_two_dispatchers_share_the_work_and_keep_each_flows_order(
    shared: tuple[Repository, Repository],
) -> None:
    first, second = shared
    made = fill(first, flows=6)
    delivered: list[HookRequest] = []
    lock = threading.Lock()

    def record(request: HookRequest) -> None:
        time.sleep(0.001)  # slow enough for the two to overlap
        with lock:
            delivered.append(request)

    threads = [
        threading.Thread(target=Dispatcher(repo, CallbackEmitter(record), batch=3).run_once) for repo in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r.id for r in delivered) == sorted(r.id for r in made)  # each once
    for flow_id in {r.flow_id for r in made}:
        assert [r for r in delivered if r.flow_id == flow_id] == [r for r in made if r.flow_id == flow_id]
    assert first.count_pending() == 0


def test_the_engine_hands_over_what_its_emitter_could_not_deliver(tmp_path: Path) -> None:
    repository = SQLiteRepository(tmp_path / "flows.db")

    def down(_: HookRequest) -> None:
        raise ConnectionError("receiver down")

    engine = FlowEngine(Catalog([api_service()]), repository, CallbackEmitter(down), lease=0.0)
    flow = create(engine)
    through_completed(engine, flow, 0)
    outcome = engine.handle(passed(flow, 0, 0))
    pending = repository.count_pending()
    assert pending > len(outcome.hook_requests)
    emitter = RecordingEmitter()
    assert Dispatcher(repository, emitter).run_once().delivered == pending
    assert emitter.requests[-len(outcome.hook_requests) :] == list(outcome.hook_requests)
    repository.close()
