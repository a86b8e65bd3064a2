"""Behaviour of the core that only a mutation run showed untested (``./dev mutate``):
each test here fails on a mutant that every other test let through."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    ConcurrencyConflict,
    DeliveryAttempt,
    DeploymentCompleted,
    DeploymentPayload,
    DeploymentStarted,
    Environment,
    Flow,
    FlowEngine,
    HookEvent,
    HookRequest,
    InvalidTransition,
    Pipeline,
    RepositoryError,
    ValidationError,
)
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.engine import new_id, utc_now
from flowfsm.machines import CallablesMachine
from flowfsm.repositories import InMemoryRepository, SQLiteRepository
from flowfsm.repositories.sqlite import SCHEMA_VERSION
from flowfsm.testing import SequentialIds, StepClock

from .conftest import api_service
from .test_walkthrough import API, create, passed, through_completed

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_hook_requests_the_engine_delivers_are_leased_from_dispatchers(catalog: Catalog) -> None:
    """While the engine delivers inline, a dispatcher's claim finds nothing to take."""
    repository = InMemoryRepository()
    claimed: list[list[HookRequest]] = []
    engine = FlowEngine(catalog, repository, CallbackEmitter(lambda r: claimed.append(repository.claim(100))))
    engine.handle(ArtifactCreated(API))
    assert claimed
    assert claimed == [[]] * len(claimed)


def test_without_an_emitter_nothing_is_leased(catalog: Catalog) -> None:
    repository = InMemoryRepository()
    outcome = FlowEngine(catalog, repository, None).handle(ArtifactCreated(API))
    assert repository.claim(100) == list(outcome.hook_requests)


def test_a_flow_records_when_it_was_created_and_last_changed(catalog: Catalog) -> None:
    repository = InMemoryRepository()
    engine = FlowEngine(catalog, repository, None, clock=StepClock(T0, dt.timedelta(minutes=1)))
    flow = create(engine)
    assert (flow.created_at, flow.updated_at, flow.version) == (T0, T0, 1)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    stored = repository.get(flow.id)
    assert (stored.created_at, stored.updated_at, stored.version) == (T0, T0 + dt.timedelta(minutes=1), 2)
    engine.handle(DeploymentStarted(flow.deployments[0].id))  # a duplicate: nothing changes, not even the time
    assert repository.get(flow.id) == stored


def test_the_default_clock_is_aware_utc(catalog: Catalog) -> None:
    before = dt.datetime.now(dt.UTC)
    now = utc_now()
    assert now.tzinfo is dt.UTC
    assert before <= now <= dt.datetime.now(dt.UTC)
    flow = FlowEngine(catalog, InMemoryRepository(), None).handle(ArtifactCreated(API)).flows[0]
    assert flow.created_at is not None
    assert flow.created_at.tzinfo is dt.UTC


def test_default_ids_are_unique_and_share_a_prefix() -> None:
    first, second = new_id(), new_id()
    assert first != second
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]
    assert int(second.rsplit("-", 1)[1]) == int(first.rsplit("-", 1)[1]) + 1


def test_payloads_describe_the_environment_as_the_flow_has_it_after_the_catalog_changed(
    repository: InMemoryRepository,
) -> None:
    old = FlowEngine(Catalog([api_service()]), repository, None, clock=StepClock(), id_factory=SequentialIds())
    flow = create(old)
    through_completed(old, flow, 0)
    renamed = api_service(
        pipeline=Pipeline("default", [Environment("development", ["smoke"]), Environment("production")])
    )
    engine = FlowEngine(Catalog([renamed]), repository, None, clock=StepClock(), id_factory=SequentialIds("n"))
    outcome = engine.handle(passed(flow, 0, 0))
    payloads = {r.event: r.payload for r in outcome.hook_requests}
    created = payloads[HookEvent.DEPLOYMENT_CREATED]
    assert isinstance(created, DeploymentPayload)
    assert created.environment == Environment("staging", ["smoke", "perf"])  # the flow's, not the catalog's
    succeeded = payloads[HookEvent.DEPLOYMENT_SUCCEEDED]
    assert isinstance(succeeded, DeploymentPayload)
    assert succeeded.environment == Environment("dev", ["smoke"])


def test_handle_refuses_what_is_not_a_trigger(engine: FlowEngine) -> None:
    for thing in (object(), "DeploymentStarted", None, API):
        with pytest.raises(ValidationError) as caught:
            engine.handle(thing)  # type: ignore[arg-type]  # what the test checks
        assert caught.value.field == "trigger"
        assert repr(thing) in caught.value.message


def test_handle_applies_a_trigger_subclass_as_its_class(engine: FlowEngine, repository: InMemoryRepository) -> None:
    class Started(DeploymentStarted):
        pass

    flow = create(engine)
    outcome = engine.handle(Started(flow.deployments[0].id))
    assert [r.event for r in outcome.hook_requests][:1] == [HookEvent.DEPLOYMENT_STARTED]
    assert engine.handle(Started(flow.deployments[0].id)).duplicate


class _Losing(InMemoryRepository):
    """Loses the race ``losses`` times, then saves."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses
        self.tries = 0

    def commit(self, flows: Any, hook_requests: Any = (), *, lease: float = 0.0, **timing: Any) -> None:
        self.tries += 1
        if self.losses:
            self.losses -= 1
            raise ConcurrencyConflict("flow", 1)
        super().commit(flows, hook_requests, lease=lease, **timing)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_attempts_must_be_at_least_one(catalog: Catalog, bad: int) -> None:
    with pytest.raises(ValidationError) as caught:
        FlowEngine(catalog, InMemoryRepository(), None, max_attempts=bad)
    assert (caught.value.field, caught.value.message) == ("max_attempts", "must be at least 1")


def test_an_engine_tries_five_times_by_default(catalog: Catalog) -> None:
    FlowEngine(catalog, _Losing(losses=4), None).handle(ArtifactCreated(API))
    with pytest.raises(ConcurrencyConflict):
        FlowEngine(catalog, _Losing(losses=5), None).handle(ArtifactCreated(API))


def test_inline_delivery_is_leased_for_thirty_seconds_by_default(catalog: Catalog) -> None:
    leases: list[float] = []

    class Leases(InMemoryRepository):
        def commit(self, flows: Any, hook_requests: Any = (), *, lease: float = 0.0, **timing: Any) -> None:
            leases.append(lease)
            super().commit(flows, hook_requests, lease=lease, **timing)

    FlowEngine(catalog, Leases(), RecordingEmitter()).handle(ArtifactCreated(API))
    FlowEngine(catalog, Leases(), RecordingEmitter(), lease=2.5).handle(ArtifactCreated(API))
    FlowEngine(catalog, Leases(), None, lease=2.5).handle(ArtifactCreated(API))
    assert leases == [30.0, 2.5, 0.0]


def test_max_attempts_counts_every_try(catalog: Catalog) -> None:
    once = _Losing(losses=1)
    with pytest.raises(ConcurrencyConflict):
        FlowEngine(catalog, once, None, max_attempts=1).handle(ArtifactCreated(API))
    assert once.tries == 1
    twice = _Losing(losses=1)
    FlowEngine(catalog, twice, None, max_attempts=2).handle(ArtifactCreated(API))
    assert twice.tries == 2
    assert len(twice.list_flows()) == 1


_KINDS = [
    "prepare_event",
    "before_state_change",
    "after_state_change",
    "finalize_event",
    "on_exception",
    "on_final",
]


@pytest.mark.parametrize("kind", _KINDS)
def test_the_callables_only_check_covers_machine_callbacks(kind: str) -> None:
    with pytest.raises(TypeError, match="callables only, not 'by_name'"):
        CallablesMachine(model=None, states=["a", "b"], initial="a", send_event=True, **{kind: "by_name"})


@pytest.mark.parametrize("kind", ["on_enter", "on_exit"])
def test_the_callables_only_check_covers_state_callbacks(kind: str) -> None:
    with pytest.raises(TypeError, match="callables only, not 'by_name'"):
        CallablesMachine(model=None, states=[{"name": "a", kind: "by_name"}, "b"], initial="a", send_event=True)


@pytest.mark.parametrize("kind", ["prepare", "before", "after", "conditions", "unless"])
def test_the_callables_only_check_covers_transition_callbacks(kind: str) -> None:
    transition = {"trigger": "go", "source": "a", "dest": "b", kind: "by_name"}
    with pytest.raises(TypeError, match="callables only, not 'by_name'"):
        CallablesMachine(model=None, states=["a", "b"], initial="a", send_event=True, transitions=[transition])


def test_invalid_transition_names_entity_id_state_trigger_and_reason(engine: FlowEngine) -> None:
    flow = create(engine)
    prod = flow.deployments[2]
    with pytest.raises(InvalidTransition) as caught:
        engine.handle(DeploymentStarted(prod.id))
    error = caught.value
    assert (error.entity, error.entity_id, error.state, error.trigger) == ("deployment", prod.id, "notStarted", "start")
    assert error.reason == "it is not the flow's current deployment"
    with pytest.raises(InvalidTransition) as caught:
        engine.handle(DeploymentCompleted(prod.id))
    assert caught.value.reason == "only a 'started' deployment can complete"
    with pytest.raises(InvalidTransition) as caught:
        engine.handle(passed(flow, 0, 0))
    assert (caught.value.entity, caught.value.state, caught.value.trigger) == ("promotion", "pending", "succeed")
    assert caught.value.reason == "its deployment has not completed"


def test_a_finished_flow_refuses_with_its_reason(engine: FlowEngine) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    from .test_walkthrough import failed

    engine.handle(failed(flow, 0, 0))
    with pytest.raises(InvalidTransition) as caught:
        engine.handle(DeploymentStarted(flow.deployments[1].id))
    assert caught.value.reason == "the flow is finished"


def test_sqlite_stores_delivery_attempts_exactly(tmp_path: Path) -> None:
    with SQLiteRepository(tmp_path / "flows.db") as repository:
        engine = FlowEngine(Catalog([api_service()]), repository, None, clock=StepClock(), id_factory=SequentialIds())
        request = engine.handle(ArtifactCreated(API)).hook_requests[0]
        first = DeliveryAttempt(T0 + dt.timedelta(seconds=3), 503, None, 0.25)
        second = DeliveryAttempt(T0 + dt.timedelta(seconds=9), None, "timed out", 1.5)
        assert repository.record_attempt(request.id, first) == 1
        assert repository.record_attempt(request.id, second) == 2
        (record,) = [r for r in repository.hook_requests(request.flow_id) if r.request.id == request.id]
        assert record.attempts == (first, second)


def test_sqlite_waits_for_the_file_to_switch_to_wal(tmp_path: Path) -> None:
    """Another process holds the new file: opening retries until it lets go."""
    path = tmp_path / "flows.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(0.2, lambda: holder.execute("COMMIT"))
    released.start()
    try:
        with SQLiteRepository(path, timeout=5.0) as repository:
            assert repository._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        released.join()
        holder.close()


def test_sqlite_gives_up_on_wal_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RepositoryError, match="cannot open"):
            SQLiteRepository(path, timeout=0.1)
    finally:
        holder.close()


def test_the_recording_emitter_keeps_what_it_got(engine: FlowEngine, emitter: RecordingEmitter) -> None:
    outcome = engine.handle(ArtifactCreated(API))
    assert emitter.requests == list(outcome.hook_requests)
    assert isinstance(outcome.flows[0], Flow)
    assert outcome.flows[0].artifact == Artifact("com.acme", "api", "1.4.0")


def test_default_ids_restart_with_a_fresh_prefix() -> None:
    """After a fork the child draws a new prefix and counts from 1 (``reset``)."""
    import re

    from flowfsm.engine import _Ids

    before = new_id()
    _Ids.reset()
    first, second = new_id(), new_id()
    assert re.fullmatch(r"[0-9a-f]{16}-1", first), first
    assert second == first[:-1] + "2"
    assert first[:16] != before[:16]


def test_an_id_source_registers_its_reset_for_forks() -> None:
    from flowfsm.engine import _Ids

    ids = _Ids()  # registers a second reset; both give the same fresh source
    first = ids()
    assert first.endswith("-1")
    assert new_id() == first[:-1] + "2"  # one source per process, shared


def test_default_ids_differ_in_a_forked_child() -> None:
    import os

    read, write = os.pipe()
    parent = new_id()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child.endswith("-1")
    assert child[:16] != parent[:16]


def test_a_reported_failure_reaches_the_strategy_with_its_reason(repository: InMemoryRepository) -> None:
    from flowfsm import DeploymentFailed, Failure, FailureKind

    seen: list[tuple[FailureKind, str, str, object, str]] = []

    class Record:
        def on_failure(self, failure: Failure) -> None:
            seen.append((failure.kind, failure.reason, failure.failed_id, failure.promotion, repr(failure)))
            failure.fail_flow()

    catalog = Catalog([api_service(failure_strategy="R")])
    engine = FlowEngine(catalog, repository, None, strategies={"R": Record()})
    flow = create(engine)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    engine.handle(DeploymentFailed(flow.deployments[0].id, "disk full"))
    dev = flow.deployments[0].id
    shown = f"Failure(deployment, {dev!r} of flow {flow.id!r}: 'disk full')"
    assert seen == [(FailureKind.DEPLOYMENT, "disk full", dev, None, shown)]


def test_a_callables_machine_says_exactly_why_it_refuses() -> None:
    with pytest.raises(TypeError) as caught:
        CallablesMachine(model=None, states=["a"], initial="a")
    assert str(caught.value) == "a CallablesMachine passes the EventData to its callbacks: send_event=True"
    with pytest.raises(TypeError) as caught:
        CallablesMachine(model=None, states=["a"], initial="a", send_event=True, after_state_change="x")
    assert str(caught.value) == "a CallablesMachine takes callables only, not 'x'"


def test_an_emitter_failure_is_logged_with_the_request_and_the_count_left(
    catalog: Catalog, repository: InMemoryRepository, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(request: HookRequest) -> None:
        raise RuntimeError("receiver down")

    engine = FlowEngine(catalog, repository, CallbackEmitter(fail), id_factory=SequentialIds())
    with caplog.at_level("WARNING", logger="flowfsm.engine"):
        outcome = engine.handle(ArtifactCreated(API))
    (record,) = [r for r in caplog.records if r.name == "flowfsm.engine"]
    first = outcome.hook_requests[0].id
    assert record.getMessage() == (
        f"emitter failed on hook request {first}; {len(outcome.hook_requests)} left pending for the dispatcher"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert repository.claim(100) == list(outcome.hook_requests)  # released at once


def test_sqlite_lists_a_hundred_dead_requests_by_default(tmp_path: Path) -> None:
    with SQLiteRepository(tmp_path / "flows.db") as repository:
        engine = FlowEngine(Catalog([api_service()]), repository, None, clock=StepClock(), id_factory=SequentialIds())
        requests: list[HookRequest] = []
        for version in range(30):
            requests += engine.handle(ArtifactCreated(Artifact("com.acme", "api", str(version)))).hook_requests
        assert len(requests) > 100
        repository.mark_dead([r.id for r in requests])
        dead = repository.dead_requests()
        assert [d.request.id for d in dead] == [r.id for r in requests[:100]]
        assert len(repository.dead_requests(limit=101)) == 101


def test_sqlite_reads_of_a_closed_store_are_repository_errors(tmp_path: Path) -> None:
    repository = SQLiteRepository(tmp_path / "flows.db")
    repository.close()
    reads = (repository.count_pending, repository.disabled_endpoints, lambda: repository.get("x"))
    for read in (*reads, lambda: repository.hook_requests("x"), repository.dead_requests):
        with pytest.raises(RepositoryError) as caught:
            read()
        assert str(caught.value).startswith("sqlite: read failed: ")
    with pytest.raises(RepositoryError) as caught:
        repository.enable_endpoint("https://h.example/")
    assert str(caught.value).startswith("sqlite: write failed: ")


def test_sqlite_endpoint_switches_round_trip(tmp_path: Path) -> None:
    with SQLiteRepository(tmp_path / "flows.db") as repository:
        assert repository.disabled_endpoints() == frozenset()
        repository.disable_endpoint("https://a.example/")
        repository.disable_endpoint("https://a.example/")  # twice: still one
        repository.disable_endpoint("https://b.example/")
        assert repository.disabled_endpoints() == {"https://a.example/", "https://b.example/"}
        repository.enable_endpoint("https://a.example/")
        assert repository.disabled_endpoints() == {"https://b.example/"}


def test_a_retry_after_a_lost_race_is_logged(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="flowfsm.engine"):
        FlowEngine(catalog, _Losing(losses=2), None, max_attempts=3).handle(ArtifactCreated(API))
    assert [r.getMessage() for r in caplog.records if r.name == "flowfsm.engine"] == [
        "concurrent change, retrying ArtifactCreated (attempt 1)",
        "concurrent change, retrying ArtifactCreated (attempt 2)",
    ]


def test_artifact_created_needs_an_artifact(engine: FlowEngine) -> None:
    with pytest.raises(ValidationError) as caught:
        engine.handle(ArtifactCreated("com.acme:api:1"))  # type: ignore[arg-type]  # what the test checks
    assert caught.value.field == "artifact"
    assert caught.value.message == "expected an Artifact, got 'com.acme:api:1'"


def test_a_repository_returning_the_wrong_flow_is_caught(catalog: Catalog) -> None:
    class Confused(InMemoryRepository):
        def find_by_deployment(self, deployment_id: str) -> Flow:
            return super().find_by_deployment(deployment_id.removesuffix("-typo"))

    repository = Confused()
    engine = FlowEngine(catalog, repository, None)
    flow = create(engine)
    with pytest.raises(ValidationError) as caught:
        engine.handle(DeploymentStarted(flow.deployments[0].id + "-typo"))
    assert caught.value.field == "deployment_id"
    assert caught.value.message == f"flow {flow.id!r} has no {flow.deployments[0].id + '-typo'!r}"


def test_payloads_describe_an_environment_as_the_catalog_has_it_now(repository: InMemoryRepository) -> None:
    old = FlowEngine(Catalog([api_service()]), repository, None, clock=StepClock(), id_factory=SequentialIds())
    flow = create(old)
    through_completed(old, flow, 0)
    changed = api_service(
        pipeline=Pipeline(
            "default",
            [Environment("dev", ["smoke"]), Environment("staging", ["smoke", "load"]), Environment("prod")],
        )
    )
    engine = FlowEngine(Catalog([changed]), repository, None, clock=StepClock(), id_factory=SequentialIds("n"))
    outcome = engine.handle(passed(flow, 0, 0))
    created = next(r.payload for r in outcome.hook_requests if r.event is HookEvent.DEPLOYMENT_CREATED)
    assert isinstance(created, DeploymentPayload)
    assert created.environment == Environment("staging", ["smoke", "load"])


def test_sqlite_delivery_times_are_aware_utc(tmp_path: Path) -> None:
    with SQLiteRepository(tmp_path / "flows.db") as repository:
        engine = FlowEngine(Catalog([api_service()]), repository, None, clock=StepClock(), id_factory=SequentialIds())
        request = engine.handle(ArtifactCreated(API)).hook_requests[0]
        before = dt.datetime.now(dt.UTC)
        repository.mark_delivered([request.id])
        (record,) = [r for r in repository.hook_requests(request.flow_id) if r.request.id == request.id]
        assert record.delivered_at is not None
        assert record.delivered_at.utcoffset() == dt.timedelta(0)
        assert before <= record.delivered_at <= dt.datetime.now(dt.UTC)


def test_an_unknown_strategy_names_the_known_ones(catalog: Catalog) -> None:
    service = api_service("svc-x", failure_strategy="NOPE")
    with pytest.raises(ValidationError) as caught:
        FlowEngine(Catalog([service]), InMemoryRepository(), None, strategies={"PAGE": object()})  # type: ignore[dict-item]  # never called
    assert caught.value.field == "failure_strategy"
    assert (
        caught.value.message
        == "service 'svc-x' names unknown failure strategy 'NOPE' (known: PAGE, PAUSE, RETRY, ROLLBACK, STOP)"
    )


def test_sqlite_opens_flowfsm_db_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with SQLiteRepository() as repository:
        assert repository.path == "flowfsm.db"
    assert (tmp_path / "flowfsm.db").exists()


@pytest.mark.parametrize(("given", "level"), [("normal", 1), ("FULL", 2), ("extra", 3)])
def test_sqlite_takes_each_synchronous_level(tmp_path: Path, given: str, level: int) -> None:
    with SQLiteRepository(tmp_path / "flows.db", synchronous=given) as repository:
        assert repository._db.execute("PRAGMA synchronous").fetchone()[0] == level


def test_sqlite_refuses_an_unknown_synchronous_level(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as caught:
        SQLiteRepository(tmp_path / "flows.db", synchronous="off")
    assert caught.value.backend == "sqlite"
    assert str(caught.value) == "sqlite: synchronous must be NORMAL, FULL or EXTRA, not 'off'"
    assert not (tmp_path / "flows.db").exists()


def test_sqlite_is_usable_from_another_thread(tmp_path: Path) -> None:
    with SQLiteRepository(tmp_path / "flows.db") as repository:
        counted: list[int] = []
        worker = threading.Thread(target=lambda: counted.append(repository.count_pending()))
        worker.start()
        worker.join()
        assert counted == [0]


def test_sqlite_writers_wait_for_a_lock_only_their_timeout(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    impatient, patient = SQLiteRepository(path, timeout=0.05), SQLiteRepository(path, timeout=5.0)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    released.start()
    try:
        with pytest.raises(RepositoryError, match="locked"):
            impatient.disable_endpoint("https://a.example/")
        patient.disable_endpoint("https://a.example/")  # waits for the holder
        assert patient.disabled_endpoints() == {"https://a.example/"}
    finally:
        released.join()
        holder.close()
        impatient.close()
        patient.close()


def test_sqlite_names_the_file_with_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    SQLiteRepository(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE flowfsm_meta SET value = '7' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RepositoryError) as caught:
        SQLiteRepository(path)
    assert caught.value.backend == "sqlite"
    assert str(path) in str(caught.value)
    assert f"has schema version 7; this flowfsm knows up to {SCHEMA_VERSION}" in str(caught.value)
