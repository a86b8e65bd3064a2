"""The worker (flowfsm.worker, ``flowfsm worker``): the dispatcher and the scheduler
together, a graceful stop, and PostgreSQL's wakeups. Fake clocks move time; what
runs in threads or processes is waited for on events, with a bounded timeout."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    ConcurrencyConflict,
    DeploymentStarted,
    Environment,
    FlowEngine,
    FlowState,
    HookEvent,
    HookRequest,
    Pipeline,
    Service,
    Timeouts,
    ValidationError,
    Webhook,
    Worker,
)
from flowfsm.dispatch import Dispatcher
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock
from flowfsm.worker import WorkerReport

from .test_cli import FLOWFSM, Cli
from .test_http import Receiver
from .test_repositories import drop_schemas

EVENTS = (HookEvent.DEPLOYMENT_CREATED, HookEvent.DEPLOYMENT_STARTED, HookEvent.DEPLOYMENT_FAILED)


def service(url: str = "https://hooks.example/x") -> Service:
    """dev with a 10-minute deploy timeout; a webhook on creation, start and failure."""
    return Service(
        "svc",
        ["com.acme:api"],
        Pipeline("p", [Environment("dev", timeouts=Timeouts(deploy="10m"))]),
        webhooks=[Webhook(f"wh-{e.value}", e, [Action("a", url=url)]) for e in EVENTS],
    )


def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (bounded) for something another thread or process does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def started_flows(engine: FlowEngine, count: int) -> list[str]:
    ids = []
    for n in range(count):
        (flow,) = engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"1.{n}"))).flows
        engine.handle(DeploymentStarted(flow.deployments[0].id))
        ids.append(flow.id)
    return ids


# --- run_once and a graceful stop, in memory -------------------------------------------


def test_run_once_fires_the_due_timers_then_delivers_what_they_made() -> None:
    clock, repository, emitter = FakeClock(), InMemoryRepository(), RecordingEmitter()
    engine = FlowEngine(Catalog([service()]), repository, None, clock=clock)
    (flow_id,) = started_flows(engine, 1)
    clock.advance(minutes=10)
    with Worker(engine, emitter) as worker:
        report = worker.run_once()
    assert report.timers_fired == 1
    assert (report.deliveries.delivered, report.deliveries.retried, report.deliveries.dead) == (3, 0, 0)
    assert [r.event for r in emitter.requests] == list(EVENTS)  # the timeout's event too
    assert repository.get(flow_id).state is FlowState.FAILED
    with Worker(engine, emitter) as worker:
        assert worker.run_once() == WorkerReport(worker.run_once().deliveries, 0)  # nothing left
    assert repository.count_pending() == 0


def test_a_stop_lets_the_delivery_under_way_finish_and_releases_the_rest() -> None:
    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([service()]), repository, None)
    started_flows(engine, 3)  # 6 HookRequests, 2 per flow
    stop = threading.Event()
    sent: list[HookRequest] = []

    def deliver(request: HookRequest) -> None:
        sent.append(request)
        stop.set()  # asked to stop while this delivery is under way

    report = Dispatcher(repository, CallbackEmitter(deliver), batch=2).run_once(stop)
    assert report.delivered == 1
    assert len(sent) == 1
    # The rest is not held: another dispatcher takes it at once, in order.
    assert repository.count_pending() == 5
    taken = repository.claim(10)
    assert sent[0].id not in {r.id for r in taken}
    assert len(taken) == 5


def test_a_stop_lets_the_timer_under_way_finish_and_releases_the_rest() -> None:
    clock, repository = FakeClock(), InMemoryRepository()
    engine = FlowEngine(Catalog([service()]), repository, None, clock=clock)
    flow_ids = started_flows(engine, 3)
    clock.advance(minutes=10)
    stop = threading.Event()
    handle = engine.handle

    def handle_then_stop(trigger: object) -> object:
        outcome = handle(trigger)  # type: ignore[arg-type]  # the engine's own trigger
        stop.set()
        return outcome

    engine.handle = handle_then_stop  # type: ignore[assignment,method-assign]  # observe each firing
    assert Scheduler(repository, engine).fire_due(stop) == (3, 1, 2)
    states = [repository.get(f).state for f in flow_ids]
    assert states.count(FlowState.FAILED) == 1
    assert len(repository.claim_due(clock(), 10)) == 2  # released, not leased


def timed(service_id: str, key: str) -> Service:
    return Service(service_id, [key], Pipeline("p", [Environment("dev", timeouts=Timeouts(deploy="10m"))]))


def test_timers_of_a_service_gone_from_the_catalog_never_hold_the_others_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A timer the engine refuses (its service left the catalog) is logged once a
    lease, in one line, and waits out its lease: the timers behind it still fire."""
    clock, repository = FakeClock(), InMemoryRepository()
    both = FlowEngine(
        Catalog([timed("gone", "com.acme:old"), timed("kept", "com.acme:api")]), repository, None, clock=clock
    )
    orphans = []
    for n in range(5):  # due first, more than a batch
        (flow,) = both.handle(ArtifactCreated(Artifact("com.acme", "old", f"1.{n}"))).flows
        both.handle(DeploymentStarted(flow.deployments[0].id))
        orphans.append(flow)
    clock.advance(minutes=1)
    (kept,) = both.handle(ArtifactCreated(Artifact("com.acme", "api", "2.0"))).flows
    both.handle(DeploymentStarted(kept.deployments[0].id))
    clock.advance(minutes=20)
    left = FlowEngine(Catalog([timed("kept", "com.acme:api")]), repository, None, clock=clock)
    with caplog.at_level("INFO", logger="flowfsm"), Worker(left, RecordingEmitter(), batch=2) as worker:
        assert worker.run_once().timers_fired == 1
        assert repository.get(kept.id).state is FlowState.FAILED
        refused = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(refused) == len(orphans)
        for record, flow in zip(refused, orphans, strict=True):
            assert not record.exc_info  # no traceback: the message says it all
            assert record.getMessage() == (
                f"timer {flow.deployments[0].id}/deploy of flow {flow.id} could not fire:"
                " UnknownService: unknown service 'gone'; it is tried again when its lease of 30 s ends"
            )
        caplog.clear()
        assert worker.run_once().timers_fired == 0  # held for their lease: not tried every round
        assert caplog.records == []
    for flow in orphans:  # kept, not dropped: with the service back, each fires
        assert [t.kind.value for t in repository.timers(flow.id)] == ["deploy"]
    repository.release_timers([f"{flow.deployments[0].id}/deploy" for flow in orphans])  # the leases end
    with Worker(both, RecordingEmitter()) as worker:
        assert worker.run_once().timers_fired == len(orphans)


def test_run_delivers_and_stops_when_asked(tmp_path: Path) -> None:
    repository = SQLiteRepository(tmp_path / "flows.db")
    engine = FlowEngine(Catalog([service()]), repository, None)
    received = threading.Event()
    worker = Worker(engine, CallbackEmitter(lambda _: received.set()), poll_interval=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))
        assert received.wait(10)
        assert not worker.listening.is_set()  # SQLite: polled
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    until(lambda: repository.count_pending() == 0)
    worker.close()
    repository.close()


def test_the_worker_checks_its_settings() -> None:
    engine = FlowEngine(Catalog([service()]), InMemoryRepository(), None)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="poll_interval"):
            Worker(engine, RecordingEmitter(), poll_interval=bad)


# --- PostgreSQL: LISTEN/NOTIFY -----------------------------------------------------------


@pytest.fixture
def pg(postgres_dsn: str) -> Iterator[Callable[[], PostgresRepository]]:
    schema = f"w_{uuid.uuid4().hex[:12]}"
    opened: list[PostgresRepository] = []

    def make() -> PostgresRepository:
        opened.append(PostgresRepository(postgres_dsn, schema=schema, max_size=4))
        return opened[-1]

    yield make
    for repository in opened:
        repository.close()
    drop_schemas(postgres_dsn, [schema])


class Running:
    """A worker running in a thread, recording what it delivers."""

    def __init__(self, engine: FlowEngine, poll_interval: float) -> None:
        self.delivered: list[HookRequest] = []
        self.arrived = threading.Event()
        self.worker = Worker(engine, CallbackEmitter(self._got), poll_interval=poll_interval)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,))

    def _got(self, request: HookRequest) -> None:
        self.delivered.append(request)
        self.arrived.set()

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.worker.listening.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.worker.close()


def test_postgres_wakes_a_worker_when_work_is_committed(pg: Callable[[], PostgresRepository]) -> None:
    engine = FlowEngine(Catalog([service()]), pg(), None)
    with Running(FlowEngine(Catalog([service()]), pg(), None), poll_interval=600) as running:
        running.arrived.clear()
        start = time.monotonic()
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))
        assert running.arrived.wait(10)
        assert time.monotonic() - start < 5  # woken, not polled (every 10 minutes)
        assert [r.event for r in running.delivered] == [HookEvent.DEPLOYMENT_CREATED]


def test_a_lost_listening_connection_is_opened_again(pg: Callable[[], PostgresRepository], postgres_dsn: str) -> None:
    engine = FlowEngine(Catalog([service()]), pg(), None)
    with Running(FlowEngine(Catalog([service()]), pg(), None), poll_interval=600) as running:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            (killed,) = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = 'LISTEN flowfsm'"
                " AND pid <> pg_backend_pid()"
            ).fetchone() or (0,)
        assert killed >= 1
        until(lambda: not running.worker.listening.is_set())
        assert running.worker.listening.wait(10)  # listening again
        running.arrived.clear()
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", "2.0")))
        assert running.arrived.wait(10)


def test_postgres_announces_only_committed_work(pg: Callable[[], PostgresRepository], postgres_dsn: str) -> None:
    repository = pg()
    engine = FlowEngine(Catalog([service()]), repository, None)
    with psycopg.connect(postgres_dsn, autocommit=True) as listener:
        listener.execute("LISTEN flowfsm")
        (flow,) = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows
        started = engine.handle(DeploymentStarted(flow.deployments[0].id))
        assert started.hook_requests
        with pytest.raises(ConcurrencyConflict):  # a lost compare-and-set: nothing committed
            repository.commit(started.flows, started.hook_requests)
        listener.execute("NOTIFY flowfsm, 'end'")  # notices arrive in commit order
        payloads = []
        for notice in listener.notifies(timeout=10):
            if notice.payload == "end":
                break
            payloads.append(notice.payload)
    # creation (a HookRequest), start (a HookRequest and a timer); none for the conflict
    assert payloads == [f"{repository.schema} hooks", f"{repository.schema} hooks", f"{repository.schema} timers"]


def test_postgres_says_when_the_next_timer_is_due(pg: Callable[[], PostgresRepository]) -> None:
    repository = pg()
    clock = FakeClock()
    engine = FlowEngine(Catalog([service()]), repository, None, clock=clock)
    assert repository.next_timer_due() is None
    started_flows(engine, 2)
    assert repository.next_timer_due() == clock() + dt.timedelta(minutes=10)


def test_a_listening_scheduler_sleeps_until_the_next_timer(pg: Callable[[], PostgresRepository]) -> None:
    clock = FakeClock()
    engine = FlowEngine(Catalog([service()]), pg(), None, clock=clock)
    worker = Worker(engine, RecordingEmitter(), poll_interval=1.0)
    worker.listening.set()  # as if listening
    assert worker._timer_pause() == 60.0  # no timer: the longest sleep
    started_flows(engine, 1)
    clock.advance(minutes=9, seconds=55)
    assert worker._timer_pause() == pytest.approx(5.0)  # until it is due
    clock.advance(seconds=5)
    assert worker._timer_pause() == 1.0  # due (leased elsewhere, or released): polled
    clock.advance(minutes=-9)
    worker.listening.clear()
    assert worker._timer_pause() == 1.0  # not listening: polled
    worker.close()


# --- the command ---------------------------------------------------------------------------

TIMED_CATALOG = """
[[services]]
id = "svc-api"
artifacts = ["com.acme:api"]
pipeline = {{ name = "default", environments = [{{ name = "dev", timeouts = {{ deploy = "10m" }} }}] }}

[[services.webhooks]]
id = "failed"
event = "deployment-failed"
actions = [{{ name = "tell", url = "{url}" }}]
"""


def test_worker_once_fires_timers_and_delivers_and_logs_both(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        cli = Cli(tmp_path)
        cli.catalog.write_text(TIMED_CATALOG.format(url=receiver.url("/failed")))
        with SQLiteRepository(cli.store) as repository:
            # Started on 1 January 2026 (a fake clock): its timeout has long passed.
            engine = FlowEngine(Catalog.from_file(cli.catalog), repository, None, clock=FakeClock())
            (flow,) = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows
            engine.handle(DeploymentStarted(flow.deployments[0].id))
        receiver.answer("/failed", (503, {}, 0.0, b"busy"))
        done = cli("worker", "--once")
        assert done.returncode == 0, done.stderr
        assert "timers fired 1; delivered 0; retried 1 (next attempt at " in done.stdout
        assert f"INFO timer {flow.deployments[0].id}/deploy of flow {flow.id} fired" in done.stderr
        assert "(deployment-failed) failed: HTTP 503 Service Unavailable (status 503); attempt 1, next" in done.stderr
        with SQLiteRepository(cli.store) as repository:
            assert repository.get(flow.id).state is FlowState.FAILED
    finally:
        receiver.close()


@pytest.mark.parametrize("command", [["worker", "--once"], ["dispatch"]])
def test_the_summary_is_one_line_however_narrow_the_terminal(tmp_path: Path, command: list[str]) -> None:
    """Scripts read it: ``(next attempt at ...)`` must not wrap it at 80 columns."""
    receiver = Receiver()
    try:
        cli = Cli(tmp_path, url=receiver.url("/deploy"))
        assert cli("artifact-created", "com.acme:api:1.0.0").returncode == 0
        receiver.answer("/deploy", (503, {}, 0.0, b"busy"))
        env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog), "COLUMNS": "40"}
        done = subprocess.run(
            [FLOWFSM, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.splitlines()
        assert "retried 1 (next attempt at " in line
        assert line.endswith("; dead 0; pending 1")
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("option", "least"), [("--poll-interval", "0.01 s"), ("--lease", "1 s")], ids=["poll-interval", "lease"]
)
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e-9", "0.001", "99999"])
def test_worker_refuses_a_bad_number_of_seconds(tmp_path: Path, option: str, least: str, value: str) -> None:
    """Too short is refused as too long is: a poll interval of a nanosecond spins a
    core polling the store, a lease of a millisecond lapses before any delivery ends."""
    done = Cli(tmp_path)("worker", "--once", f"{option}={value}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {option}: must be from {least} to 86400 s"]
    assert not (tmp_path / "flows.db").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["worker", "--poll-interval", "0.05"], "worker stopped"),
        # A service manager stops it with SIGTERM too: what is under way is recorded, not sent again later.
        (["dispatch", "--follow"], "stopped"),
    ],
)
def test_a_signal_lets_the_delivery_under_way_finish_and_exits_0(
    tmp_path: Path, sig: int, command: list[str], said: str
) -> None:
    receiver = Receiver()
    try:
        cli = Cli(tmp_path, url=receiver.url("/deploy"))
        assert cli("artifact-created", "com.acme:api:1.0.0").returncode == 0
        receiver.answer("/deploy", (200, {}, 1.0, b"slow"))  # answers after a second
        env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog)}
        process = subprocess.Popen(
            [FLOWFSM, *command], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            until(lambda: receiver.bodies("/deploy"), timeout=30)  # the delivery is under way
            process.send_signal(sig)
            stdout, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 0, stderr
        assert said in (stdout + stderr).splitlines()
        assert "Traceback" not in stderr
        with SQLiteRepository(cli.store) as repository:
            assert repository.count_pending() == 0  # the delivery under way was finished and recorded
    finally:
        receiver.close()


@pytest.mark.parametrize("command", ["worker", "dispatch"])
def test_more_flows_at_once_than_a_dispatcher_takes_is_a_usage_error(tmp_path: Path, command: str) -> None:
    """``--concurrency`` is bounded as ``Dispatcher`` bounds it: a typo such as 10**20
    is refused naming the option, before anything is opened."""
    from flowfsm.dispatch import MAX_CONCURRENCY

    done = Cli(tmp_path)(command, "--once" if command == "worker" else "--follow", f"--concurrency={10**20}")
    assert done.returncode == 2
    assert "--concurrency" in done.stderr
    assert f"less than or equal to {MAX_CONCURRENCY}" in done.stderr
    assert not (tmp_path / "flows.db").exists()
