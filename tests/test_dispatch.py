"""The dispatcher drains the outbox: at least once, in order per flow, in parallel,
and no one request's trouble stops the others."""

from __future__ import annotations

import datetime as dt
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

import flowfsm
from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeliveryError,
    DeploymentStarted,
    FlowEngine,
    HookRequest,
    RepositoryError,
    ValidationError,
)
from flowfsm.dispatch import Dispatcher, DispatchReport, RetryPolicy
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository

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


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Repository, Repository]]:
    """Two handles on one store, as two processes would have (one object in memory)."""
    if request.param == "memory":
        memory = InMemoryRepository()
        yield memory, memory
        return
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


NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class Spy:
    """A repository that runs ``before[name](*args)`` ahead of the real call (which
    may raise instead), and passes everything else through."""

    def __init__(self, inner: Repository, **before: Callable[..., None]) -> None:
        self._inner = inner
        self._before = before

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        before = self._before.get(name)
        if before is None:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            before(*args, **kwargs)
            return method(*args, **kwargs)

        return call


def spy(inner: Repository, **before: Callable[..., None]) -> Repository:
    return cast(Repository, Spy(inner, **before))


@pytest.mark.parametrize(
    ("retry_after", "waits"),
    [
        (99_999_999_999.0, 3600.0),
        (float("9" * 400), 3600.0),
        (10**400, 3600.0),
        (float("nan"), 30.0),
        (-1.0, 30.0),
        (0.0, 30.0),  # Retry-After: 0 (or a date past) never shortens the policy's backoff
        (5.0, 30.0),
        (90.0, 90.0),
    ],
)
def test_a_receivers_retry_after_never_parks_a_request(
    shared: tuple[Repository, Repository], retry_after: float, waits: float
) -> None:
    repository, _ = shared
    made = fill(repository)
    busy = made[0].flow_id
    delivered: list[HookRequest] = []

    def answer(request: HookRequest) -> None:
        if request.flow_id == busy:
            raise DeliveryError("HTTP 503 Service Unavailable", status_code=503, retry_after=retry_after)
        delivered.append(request)

    delays: list[float] = []
    watched = spy(repository, release=lambda ids, delay=0.0: delays.append(delay))
    policy = RetryPolicy(delays=(30.0,), jitter=0.0)
    report = Dispatcher(watched, CallbackEmitter(answer), retry=policy, clock=lambda: NOW).run_once()
    assert delivered == [r for r in made if r.flow_id != busy]  # the other flows went on
    assert report == DispatchReport(len(delivered), 1, 0, NOW + dt.timedelta(seconds=waits))
    assert delays[0] == waits  # an unusable Retry-After falls back on the policy; a long one is cut to 1 h
    assert all(math.isfinite(d) and d <= 3600 for d in delays)
    assert repository.count_pending() == len(made) - len(delivered)


def test_a_repository_error_on_one_request_costs_only_that_request(
    shared: tuple[Repository, Repository],
) -> None:
    repository, _ = shared
    made = fill(repository)
    broken = made[0]

    def fail_on_broken(request_id: str, *_: object) -> None:
        if request_id == broken.id:
            raise RepositoryError("test", "could not write the attempt")

    emitter = RecordingEmitter()
    dispatcher = Dispatcher(spy(repository, record_attempt=fail_on_broken), emitter, clock=lambda: NOW, lease=45.0)
    report = dispatcher.run_once()
    others = [r for r in made if r.flow_id != broken.flow_id]
    assert emitter.requests == [broken, *others]  # and none of the broken flow's later requests
    assert report == DispatchReport(len(others), 1, 0, NOW + dt.timedelta(seconds=45))
    assert repository.count_pending() == len(made) - len(others)


def test_run_outlives_a_failing_run_once(caplog: pytest.LogCaptureFixture) -> None:
    repository = InMemoryRepository()
    made = fill(repository)
    calls = 0

    def down_twice(*_: object, **__: object) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RepositoryError("test", "connection refused")

    received: list[HookRequest] = []
    everything = threading.Event()

    def receive(request: HookRequest) -> None:
        received.append(request)
        if len(received) == len(made):
            everything.set()

    dispatcher = Dispatcher(spy(repository, claim=down_twice), CallbackEmitter(receive), poll_interval=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    with caplog.at_level(logging.ERROR, "flowfsm.dispatch"):
        thread.start()
        try:
            assert everything.wait(10)
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    assert received == made
    failures = [r.getMessage() for r in caplog.records if r.name == "flowfsm.dispatch"]
    assert failures == [
        "dispatching failed (1 time(s) in a row); trying again in 0.0 s",
        "dispatching failed (2 time(s) in a row); trying again in 0.0 s",
    ]


def test_run_once_reports_delivered_retried_and_dead_apart(
    shared: tuple[Repository, Repository], caplog: pytest.LogCaptureFixture
) -> None:
    repository, _ = shared
    made = fill(repository)
    retried, dead = made[0].flow_id, made[-1].flow_id

    def answer(request: HookRequest) -> None:
        if request.flow_id == retried:
            raise DeliveryError("HTTP 503 Service Unavailable", status_code=503)
        if request.flow_id == dead:
            raise DeliveryError("HTTP 400 Bad Request", status_code=400, retry=False)

    policy = RetryPolicy(delays=(30.0,), jitter=0.0)
    with caplog.at_level(logging.WARNING, "flowfsm.dispatch"):
        report = Dispatcher(repository, CallbackEmitter(answer), retry=policy, clock=lambda: NOW).run_once()
    flows = {r.flow_id for r in made}
    per_flow = len(made) // len(flows)
    assert report == DispatchReport(per_flow * (len(flows) - 2), 1, per_flow, NOW + dt.timedelta(seconds=30))
    assert len(repository.dead_requests()) == per_flow
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"hook request {made[0].id} (deployment-created) failed: HTTP 503 Service Unavailable (status 503);"
        " attempt 1, next at 2026-03-01T12:00:30+00:00"
    ) in warnings
    dead_lines = [w for w in warnings if "is dead after 1 attempt(s): HTTP 400 Bad Request (status 400)" in w]
    assert len(dead_lines) == per_flow


def test_a_failure_without_an_answer_logs_no_status(caplog: pytest.LogCaptureFixture) -> None:
    """A connection error or a timeout got no HTTP answer: its log line says what went
    wrong, with no ``(status None)``."""
    repository = InMemoryRepository()
    made = fill(repository)

    def unreachable(_: HookRequest) -> None:
        raise DeliveryError("ConnectError: cannot resolve 'cd.example'")

    policy = RetryPolicy(delays=(30.0,), max_attempts=2, jitter=0.0)
    with caplog.at_level(logging.WARNING, "flowfsm.dispatch"):
        Dispatcher(repository, CallbackEmitter(unreachable), retry=policy, clock=lambda: NOW).run_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"hook request {made[0].id} (deployment-created) failed: ConnectError: cannot resolve 'cd.example';"
        " attempt 1, next at 2026-03-01T12:00:30+00:00"
    ) in warnings
    assert not [w for w in warnings if "status" in w]


def test_inline_delivery_waits_behind_an_earlier_request_of_its_flow(
    shared: tuple[Repository, Repository],
) -> None:
    repository, _ = shared
    calls: list[tuple[str, bool]] = []
    down = True

    def receiver(request: HookRequest) -> None:
        calls.append((request.id, not down))
        if down:
            raise ConnectionError("receiver down")

    engine = FlowEngine(Catalog([api_service()]), repository, CallbackEmitter(receiver))
    created = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))
    assert calls == [(created.hook_requests[0].id, False)]
    down = False
    started = engine.handle(DeploymentStarted(created.flows[0].deployments[0].id))
    assert calls == [(created.hook_requests[0].id, False)]  # started waits behind created
    other = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "2.0")))
    assert calls[1:] == [(r.id, True) for r in other.hook_requests]  # another flow is not held back
    report = Dispatcher(repository, CallbackEmitter(receiver)).run_once()
    assert report.delivered == len(created.hook_requests) + len(started.hook_requests)
    delivered = [request_id for request_id, ok in calls if ok]
    assert delivered == [r.id for r in (*other.hook_requests, *created.hook_requests, *started.hook_requests)]
    assert repository.count_pending() == 0


def test_inline_delivery_holds_its_lease_against_a_dispatcher(shared: tuple[Repository, Repository]) -> None:
    repository, other = shared
    inline: list[HookRequest] = []
    concurrent: list[HookRequest] = []

    def deliver_while_a_dispatcher_polls(request: HookRequest) -> None:
        if not inline:  # a dispatcher elsewhere polls while the engine delivers
            Dispatcher(other, CallbackEmitter(concurrent.append)).run_once()
        inline.append(request)

    engine = FlowEngine(Catalog([api_service()]), repository, CallbackEmitter(deliver_while_a_dispatcher_polls))
    outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))
    assert inline == list(outcome.hook_requests)
    assert concurrent == []  # each delivered once, by the engine
    assert repository.count_pending() == 0


def test_a_slow_receiver_and_a_second_dispatcher_deliver_each_request_once(
    shared: tuple[Repository, Repository],
) -> None:
    """The first dispatcher's claim outlives its tiny lease while a receiver stalls:
    it renews the lease, and the second dispatcher, polling all along, takes nothing."""
    first, second = shared
    made = fill(first, flows=3)
    deliveries: list[str] = []
    lock = threading.Lock()
    stalled = threading.Event()

    def slow(request: HookRequest) -> None:
        if request.id == made[0].id:
            stalled.set()
            time.sleep(2.5)  # a receiver that answers after two and a half leases
        with lock:
            deliveries.append(request.id)

    def fast(request: HookRequest) -> None:
        with lock:
            deliveries.append(request.id)

    holder = Dispatcher(first, CallbackEmitter(slow), lease=1.0)
    poller = Dispatcher(second, CallbackEmitter(fast), lease=1.0, poll_interval=0.02)
    result: list[DispatchReport] = []
    holding = threading.Thread(target=lambda: result.append(holder.run_once()))
    stop = threading.Event()
    polling = threading.Thread(target=poller.run, args=(stop,))
    holding.start()
    try:
        assert stalled.wait(10)  # the holder has claimed everything
        polling.start()
        holding.join(30)
    finally:
        stop.set()
        polling.join(10)
    assert not holding.is_alive()
    assert sorted(deliveries) == sorted(r.id for r in made)  # each once
    assert result == [DispatchReport(len(made), 0, 0)]
    assert first.count_pending() == 0


def test_the_dispatcher_checks_its_settings() -> None:
    repository, emitter = InMemoryRepository(), RecordingEmitter()
    for field, kwargs in [
        ("lease", {"lease": 0.0}),
        ("lease", {"lease": math.inf}),
        ("lease", {"lease": math.nan}),
        ("batch", {"batch": 0}),
        ("poll_interval", {"poll_interval": 0.0}),
        ("max_retry_after", {"max_retry_after": math.inf}),
        ("max_retry_after", {"max_retry_after": -1.0}),
        ("lease", {"lease": "5"}),
        ("lease", {"lease": True}),
        ("batch", {"batch": math.nan}),
        ("batch", {"batch": 2.5}),
        ("batch", {"batch": True}),
        ("concurrency", {"concurrency": math.nan}),
        ("concurrency", {"concurrency": "2"}),
        ("concurrency", {"concurrency": 0}),
        ("concurrency", {"concurrency": 257}),
        ("concurrency", {"concurrency": 10**20}),
        ("poll_interval", {"poll_interval": None}),
        ("max_retry_after", {"max_retry_after": "60"}),
    ]:
        with pytest.raises(ValidationError) as error:
            Dispatcher(repository, emitter, **kwargs)  # type: ignore[arg-type]  # each a float or an int
        assert error.value.field == field
    for field, settings in [
        ("delays", {"delays": (5.0, math.inf)}),
        ("delays", {"delays": "5"}),
        ("delays", {"delays": (5.0, "30")}),
        ("delays", {"delays": (math.nan,)}),
        ("delays", {"delays": (True,)}),
        ("max_attempts", {"max_attempts": math.nan}),
        ("max_attempts", {"max_attempts": 1.5}),
        ("max_attempts", {"max_attempts": True}),
        ("max_attempts", {"max_attempts": "3"}),
        ("jitter", {"jitter": math.nan}),
        ("jitter", {"jitter": "0.1"}),
    ]:
        with pytest.raises(ValidationError) as policy_error:
            RetryPolicy(**settings)  # type: ignore[arg-type]  # each of the wrong type or range
        assert policy_error.value.field == field


def test_a_failure_policys_retry_policy_is_refused_by_the_dispatcher() -> None:
    """``flowfsm.RetryPolicy`` (a failure policy's retries) is not delivery's: refused
    when the dispatcher is built, not by an AttributeError at the first failed delivery."""
    with pytest.raises(ValidationError) as error:
        Dispatcher(InMemoryRepository(), RecordingEmitter(), retry=flowfsm.RetryPolicy())  # type: ignore[arg-type]
    assert error.value.field == "retry"
    assert "flowfsm.dispatch.RetryPolicy" in str(error.value)


def test_a_failed_outbox_check_leaves_the_committed_trigger_to_the_dispatcher() -> None:
    repository = InMemoryRepository()

    def unreachable(*_: object) -> None:
        raise RepositoryError("test", "connection lost")

    emitter = RecordingEmitter()
    engine = FlowEngine(Catalog([api_service()]), spy(repository, waiting_flows=unreachable), emitter, lease=0.0)
    outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))  # returns: the trigger is saved
    assert repository.get(outcome.flows[0].id) == outcome.flows[0]
    assert emitter.requests == []
    later = RecordingEmitter()
    assert Dispatcher(repository, later).run_once().delivered == len(outcome.hook_requests)
    assert later.requests == list(outcome.hook_requests)


def test_a_slow_inline_delivery_renews_the_engines_lease(shared: tuple[Repository, Repository]) -> None:
    """The engine's emitter takes longer over a trigger's requests than the commit's
    lease: the engine renews it, and a dispatcher polling all along takes nothing."""
    repository, other = shared
    deliveries: list[str] = []
    lock = threading.Lock()

    def slow(request: HookRequest) -> None:
        time.sleep(0.6)  # three requests: well past the engine's one-second lease
        with lock:
            deliveries.append(request.id)

    def fast(request: HookRequest) -> None:
        with lock:
            deliveries.append(request.id)

    engine = FlowEngine(Catalog([api_service()]), repository, CallbackEmitter(slow), lease=1.0)
    poller = Dispatcher(other, CallbackEmitter(fast), lease=1.0, poll_interval=0.02)
    stop = threading.Event()
    polling = threading.Thread(target=poller.run, args=(stop,))
    polling.start()
    try:
        outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))
    finally:
        stop.set()
        polling.join()
    assert len(outcome.hook_requests) >= 3
    assert deliveries == [r.id for r in outcome.hook_requests]  # each once, by the engine, in order
    assert repository.count_pending() == 0


class _Unrecorded(InMemoryRepository):
    """A store that fails to record what the engine delivered inline."""

    def mark_delivered(self, ids: Sequence[str]) -> None:
        raise RepositoryError("memory", "the disk is full")

    def release(self, ids: Sequence[str], *, delay: float = 0.0) -> None:
        raise RepositoryError("memory", "the disk is full")


@pytest.mark.parametrize("emitter_fails", [False, True])
def test_handle_does_not_raise_once_its_trigger_is_committed(
    emitter_fails: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Recording inline delivery comes after the commit: a store failing then is
    logged, and ``handle`` reports the trigger it applied."""
    repository = _Unrecorded()

    def emit(request: HookRequest) -> None:
        if emitter_fails:
            raise ConnectionError("receiver down")

    engine = FlowEngine(Catalog([api_service()]), repository, CallbackEmitter(emit))
    with caplog.at_level(logging.WARNING, logger="flowfsm.engine"):
        outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0")))
    (flow,) = outcome.flows
    assert repository.get(flow.id) == flow
    assert repository.count_pending() == len(outcome.hook_requests)  # left for a dispatcher
    assert "could not record inline delivery" in caplog.text
    assert ("emitter failed on hook request" in caplog.text) is emitter_fails


@pytest.mark.parametrize("shared", ["sqlite", "postgres"], indirect=True)
def test_an_unreadable_request_holds_only_its_own_flow(
    shared: tuple[Repository, Repository], request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored request this version cannot read (a newer flowfsm wrote it, or it is
    damaged) waits with its flow; the dispatcher delivers every other flow."""
    repository, _ = shared
    made = fill(repository, flows=3)
    unreadable = made[1]
    if isinstance(repository, SQLiteRepository):
        with sqlite3.connect(repository.path) as db:
            db.execute(
                "UPDATE outbox SET body = json_set(body, '$.event', 'flow-teleported') WHERE id = ?", [unreadable.id]
            )
    else:
        import psycopg

        assert isinstance(repository, PostgresRepository)
        with psycopg.connect(request.getfixturevalue("postgres_dsn"), autocommit=True) as conn:
            conn.execute(
                f"UPDATE {repository.schema}.outbox SET body = jsonb_set(body, '{{event}}', '\"flow-teleported\"')"
                " WHERE id = %s",
                [unreadable.id],
            )
    emitter = RecordingEmitter()
    with caplog.at_level(logging.WARNING, logger="flowfsm.repositories"):
        report = Dispatcher(repository, emitter).run_once()
    waiting = [r for r in made[1:] if r.flow_id == unreadable.flow_id]  # the unreadable one and what follows it
    assert [r.id for r in emitter.requests] == [r.id for r in made if r not in waiting]
    assert report.delivered == len(made) - len(waiting)
    assert repository.count_pending() == len(waiting)
    assert f"flow {unreadable.flow_id} cannot be read" in caplog.text
