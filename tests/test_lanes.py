"""Environment concurrency (SPEC §11): ``queue`` and ``newest-wins``, on every backend."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import random
import re
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowfsm import (
    AbortFlow,
    Action,
    ApprovalGranted,
    ApprovalPolicy,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    DeploymentState,
    Environment,
    Flow,
    FlowEngine,
    FlowFSMError,
    FlowState,
    FreezeWindow,
    HookEvent,
    InvalidTransition,
    OverrideFreeze,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    ResumeFlow,
    RetryDeployment,
    RetryPolicy,
    Service,
    SteeringPayload,
    Trigger,
    ValidationError,
    Webhook,
)
from flowfsm.emitters import RecordingEmitter
from flowfsm.lanes import Lane, LaneStatus, lane_status
from flowfsm.model import FINISHED
from flowfsm.protocols import Lanes, Repository
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock, SequentialIds, StepClock
from tests.test_repositories import drop_schemas

ENVIRONMENTS = ("staging", "prod")


def service(concurrency: str = "queue", strategy: str = "STOP") -> Service:
    """staging → prod, one check each, every event sent to one webhook."""
    return Service(
        "svc",
        artifacts=["com.acme:api"],
        pipeline=Pipeline("p", [Environment(name, promotions=["smoke"]) for name in ENVIRONMENTS]),
        webhooks=[Webhook(e.value, e, [Action("a", url=f"https://hooks.example/{e.value}")]) for e in HookEvent],
        failure_strategy=strategy,
        concurrency=concurrency,
    )


class World:
    """An engine on one store, with the events it sent."""

    def __init__(self, repository: Repository, svc: Service) -> None:
        self.svc = svc
        self.emitter = RecordingEmitter()
        self.ids = SequentialIds()
        self.clock = StepClock()
        self.open(repository)

    def open(self, repository: Repository) -> None:
        """(Re)start the engine on ``repository``: nothing but the store carries over."""
        self.repository = repository
        self.engine = FlowEngine(Catalog([self.svc]), repository, self.emitter, clock=self.clock, id_factory=self.ids)

    def create(self, version: str) -> Flow:
        (flow,) = self.engine.handle(ArtifactCreated(Artifact("com.acme", "api", version))).flows
        return flow

    def get(self, flow: Flow) -> Flow:
        return self.repository.get(flow.id)

    def states(self, flow: Flow) -> list[str]:
        return [d.state.value for d in self.get(flow).deployments]

    def deploy(self, flow: Flow, index: int) -> None:
        """The CD system deploys the flow's deployment ``index`` and its check passes."""
        deployment = self.get(flow).deployments[index]
        self.engine.handle(DeploymentStarted(deployment.id))
        self.engine.handle(DeploymentCompleted(deployment.id))
        (smoke,) = deployment.promotions
        result = PromotionResult(smoke.id, ResultStatus.PASSED)
        self.engine.handle(PromotionCompleted(deployment.id, smoke.id, [result]))

    def events(self, flow: Flow) -> list[str]:
        return [r.event.value for r in self.emitter.requests if r.flow_id == flow.id]

    def lane(self, environment: str = "staging") -> Lane:
        assert isinstance(self.repository, Lanes)
        return self.repository.lane("svc", environment)


@pytest.fixture
def world(make_repository: Callable[[], Repository]) -> World:
    return World(make_repository(), service())


@pytest.fixture
def newest(make_repository: Callable[[], Repository]) -> World:
    return World(make_repository(), service("newest-wins"))


# --- queue ----------------------------------------------------------------------------------


def test_a_queue_runs_one_flow_at_a_time_and_announces_the_next_when_it_frees(world: World) -> None:
    a, b, c = world.create("1"), world.create("2"), world.create("3")
    assert world.states(a) == ["notStarted", "notStarted"]
    assert world.states(b) == world.states(c) == ["queued", "notStarted"]
    assert world.events(b) == ["deployment-queued"]  # waiting: not announced
    assert world.lane() == Lane("svc", "staging", a.id, (b.id, c.id))
    with pytest.raises(InvalidTransition, match="queued"):
        world.engine.handle(DeploymentStarted(b.deployments[0].id))
    world.deploy(a, 0)
    # a's staging succeeded: it moves on to prod, and b is announced in the same trigger.
    assert world.states(a) == ["success", "notStarted"]
    assert world.states(b) == ["notStarted", "notStarted"]
    assert world.events(b) == ["deployment-queued", "deployment-created"]
    (entry,) = [e for e in world.repository.history(b.id) if e.seq == 2]
    assert entry.trigger["type"] == "PromotionCompleted"  # the trigger that freed the environment
    assert world.states(c) == ["queued", "notStarted"]
    assert world.lane() == Lane("svc", "staging", b.id, (c.id,))
    assert world.lane("prod") == Lane("svc", "prod", a.id)


def test_the_waiting_order_survives_restarts(make_repository: Callable[[], Repository]) -> None:
    world = World(make_repository(), service())
    flows = [world.create(str(n)) for n in range(1, 5)]
    order = []
    for _ in flows:
        world.open(make_repository())  # a new engine, on the store reopened
        occupant = world.lane().occupant
        assert occupant is not None
        order.append(occupant)
        world.deploy(world.repository.get(occupant), 0)
        world.deploy(world.repository.get(occupant), 1)
    assert order == [f.id for f in flows]
    assert [world.get(f).state for f in flows] == [FlowState.SUCCESS] * 4


def test_a_failed_deployment_frees_its_environment(world: World) -> None:
    a, b = world.create("1"), world.create("2")
    world.engine.handle(DeploymentStarted(a.deployments[0].id))
    world.engine.handle(DeploymentFailed(a.deployments[0].id, reason="image pull"))
    assert world.get(a).state is FlowState.FAILED
    assert world.states(b) == ["notStarted", "notStarted"]
    assert world.events(b)[-1] == "deployment-created"
    assert world.lane() == Lane("svc", "staging", b.id)


def test_a_flow_leaving_the_line_keeps_the_others_in_order(world: World) -> None:
    a, b, c = world.create("1"), world.create("2"), world.create("3")
    world.engine.handle(AbortFlow(b.id, actor="ana"))
    assert world.lane() == Lane("svc", "staging", a.id, (c.id,))
    world.engine.handle(AbortFlow(a.id, actor="ana"))  # an announced flow that ends frees its environment
    assert world.states(c) == ["notStarted", "notStarted"]
    assert world.lane() == Lane("svc", "staging", c.id)


def test_a_paused_flow_whose_turn_comes_lets_the_next_one_go(world: World) -> None:
    a, b, c = world.create("1"), world.create("2"), world.create("3")
    world.engine.handle(PauseFlow(b.id, actor="ana"))
    world.deploy(a, 0)
    assert world.states(b) == ["notStarted", "notStarted"]
    assert world.events(b) == ["deployment-queued", "flow-paused"]  # held for the resume: not announced
    assert world.states(c) == ["notStarted", "notStarted"]
    assert world.lane() == Lane("svc", "staging", c.id)
    world.engine.handle(ResumeFlow(b.id, actor="ana"))
    assert world.states(b) == ["queued", "notStarted"]  # it comes back to the end of the line
    assert world.events(b)[-2:] == ["flow-resumed", "deployment-queued"]
    assert world.lane() == Lane("svc", "staging", c.id, (b.id,))


def test_a_retried_deployment_waits_behind_the_flows_already_waiting(make_repository: Callable[[], Repository]) -> None:
    world = World(make_repository(), service(strategy="PAUSE"))
    a, b, c = world.create("1"), world.create("2"), world.create("3")
    world.engine.handle(DeploymentStarted(a.deployments[0].id))
    world.engine.handle(DeploymentFailed(a.deployments[0].id, reason="boom"))
    assert world.get(a).state is FlowState.PAUSED
    assert world.lane() == Lane("svc", "staging", b.id, (c.id,))  # a failed deployment leaves it
    world.engine.handle(RetryDeployment(a.deployments[0].id, actor="ana"))
    assert world.states(a) == ["queued", "notStarted"]
    assert world.events(a)[-3:] == ["deployment-retried", "flow-resumed", "deployment-queued"]
    assert world.lane() == Lane("svc", "staging", b.id, (c.id, a.id))


def test_a_retry_policy_announces_the_retry_through_the_queue(make_repository: Callable[[], Repository]) -> None:
    """RETRY (no backoff) retries a failed deployment at once, in the same trigger: it
    waits behind the flow already waiting, which is announced first."""
    world = World(make_repository(), service(strategy="RETRY"))
    a, b = world.create("1"), world.create("2")
    world.engine.handle(DeploymentStarted(a.deployments[0].id))
    world.engine.handle(DeploymentFailed(a.deployments[0].id, reason="node lost"))
    assert world.states(a) == ["queued", "notStarted"]
    assert world.events(a)[-3:] == ["deployment-failed", "deployment-retried", "deployment-queued"]
    assert world.states(b) == ["notStarted", "notStarted"]
    assert world.events(b)[-1] == "deployment-created"
    assert world.lane() == Lane("svc", "staging", b.id, (a.id,))


def test_explain_says_behind_which_flow_and_the_place_in_line(world: World) -> None:
    a, b, c = world.create("1"), world.create("2"), world.create("3")
    world.engine.handle(DeploymentStarted(a.deployments[0].id))
    (waiting,) = world.engine.explain(c.id)
    assert waiting.kind == "queue"
    assert waiting.text.startswith(f"Queued for 'staging' behind flow {a.id} (deploying), 2nd in line, since ")
    assert waiting.details == {"behind": a.id, "place": 2}
    assert [w.kind for w in world.engine.explain(b.id)] == ["queue"]


def test_a_lost_race_for_the_environment_is_retried_and_waits(make_repository: Callable[[], Repository]) -> None:
    """Two engines on one store: one reads the environment free, the other takes it
    before the first commits; the first's commit loses, and its retry queues."""
    store = make_repository()
    other = World(store, service())
    racing = _Racing(store, lambda: other.create("2"))
    world = World(racing, service())
    a = world.create("1")
    b = store.find_by_key(Artifact("com.acme", "api", "2").id, "svc")
    assert b is not None
    assert racing.raced == 1
    assert [d.state for d in store.get(a.id).deployments] == [DeploymentState.QUEUED, DeploymentState.NOT_STARTED]
    assert world.lane() == Lane("svc", "staging", b.id, (a.id,))


class _Racing:
    """A store whose first lane read lets another engine act before it answers."""

    def __init__(self, store: Repository, meanwhile: Callable[[], object]) -> None:
        self._store, self._meanwhile, self.raced = store, meanwhile, 0

    def lane(self, service_id: str, environment: str, *, limit: int = 4) -> Lane:
        assert isinstance(self._store, Lanes)
        lane = self._store.lane(service_id, environment, limit=limit)
        if not self.raced:
            self.raced += 1
            self._meanwhile()
        return lane

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_queued_service_needs_a_repository_that_keeps_lanes() -> None:
    class NoLanes:
        def __init__(self) -> None:
            self._store = InMemoryRepository()

        def __getattr__(self, name: str) -> Any:
            if name.startswith("lane"):
                raise AttributeError(name)
            return getattr(self._store, name)

    with pytest.raises(ValidationError, match=r"concurrency.*'queue'.*keeps no lanes"):
        FlowEngine(Catalog([service()]), NoLanes(), None)
    engine = FlowEngine(Catalog([service("parallel")]), NoLanes(), None)  # parallel needs none
    for version in "12":
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", version)))
    assert [f.deployments[0].state for f in engine.repository.list_flows()] == [DeploymentState.NOT_STARTED] * 2


def test_a_service_made_parallel_announces_the_flows_left_waiting(make_repository: Callable[[], Repository]) -> None:
    """A catalog that makes a queued service ``parallel``: the flows still waiting are
    announced, all of them, when the flow they wait behind leaves the environment —
    never left queued with nothing left to announce them."""
    store = make_repository()
    world = World(store, service())
    a, b, c = world.create("1"), world.create("2"), world.create("3")
    world.engine.handle(DeploymentStarted(a.deployments[0].id))
    world.svc = service("parallel")
    world.open(make_repository())  # the new catalog, on the store reopened
    world.deploy(a, 0)
    assert world.states(b) == world.states(c) == ["notStarted", "notStarted"]
    assert world.events(b)[-1] == world.events(c)[-1] == "deployment-created"
    assert world.lane() == Lane("svc", "staging")
    d = world.create("4")  # parallel from now on: no lane
    assert world.states(d) == ["notStarted", "notStarted"]
    world.deploy(b, 0)
    assert world.lane() == Lane("svc", "staging")
    assert world.lane("prod") == Lane("svc", "prod")


def test_a_trigger_of_a_queued_service_leaves_no_reference_cycle_behind() -> None:
    """The lanes a unit of work reads refer to it: the engine lets go of both."""
    import gc

    world = World(InMemoryRepository(), service("newest-wins"))
    a = world.create("1")
    gc.collect()
    gc.disable()
    try:
        world.engine.handle(DeploymentStarted(a.deployments[0].id))
        world.create("2")  # queued
        world.create("3")  # queued, superseding 2
        assert gc.collect() == 0
    finally:
        gc.enable()


# --- newest-wins ----------------------------------------------------------------------------


def test_newest_wins_supersedes_older_waiting_flows_and_never_a_deploying_one(newest: World) -> None:
    a, b = newest.create("1"), None
    newest.engine.handle(DeploymentStarted(a.deployments[0].id))
    b = newest.create("2")
    assert newest.states(b) == ["queued", "notStarted"]
    c = newest.create("3")
    assert newest.get(b).state is FlowState.SUPERSEDED
    assert newest.get(a).state is FlowState.IN_PROGRESS  # deploying: never interrupted
    superseded = [r for r in newest.emitter.requests if r.event is HookEvent.FLOW_SUPERSEDED]
    assert [r.flow_id for r in superseded] == [b.id]
    payload = superseded[0].payload
    assert isinstance(payload, SteeringPayload)
    assert payload.actor == "flowfsm"
    assert payload.reason == f"superseded by flow {c.id} (artifact com.acme:api:3)"
    assert newest.lane() == Lane("svc", "staging", a.id, (c.id,))
    # b's history and explanation say flowfsm ended it, for c; c's creation is c's own.
    entry = newest.repository.history(b.id)[-1]
    assert (entry.actor, entry.reason, entry.trigger["type"]) == ("flowfsm", payload.reason, "ArtifactCreated")
    (finished,) = newest.engine.explain(b.id)
    assert "superseded by 'flowfsm' at " in finished.text
    assert finished.text.endswith(f": superseded by flow {c.id} (artifact com.acme:api:3).")
    assert newest.repository.history(c.id)[-1].actor is None
    newest.deploy(a, 0)
    assert newest.states(c) == ["notStarted", "notStarted"]  # c passes every check itself
    assert [p.state.value for d in newest.get(c).deployments for p in d.promotions] == ["pending", "pending"]


def test_newest_wins_supersedes_an_older_flow_that_has_not_started(newest: World) -> None:
    a = newest.create("1")  # announced, not started
    b = newest.create("2")
    assert newest.get(a).state is FlowState.SUPERSEDED
    # a's end freed the environment in the same trigger: b is announced at once.
    assert newest.states(b) == ["notStarted", "notStarted"]
    assert newest.events(b) == ["deployment-queued", "deployment-created"]
    assert newest.lane() == Lane("svc", "staging", b.id)


def test_an_older_flow_reaching_an_environment_a_newer_one_holds_is_superseded(
    make_repository: Callable[[], Repository],
) -> None:
    world = World(make_repository(), service("newest-wins", strategy="PAUSE"))
    a = world.create("1")
    world.engine.handle(DeploymentStarted(a.deployments[0].id))
    b = world.create("2")
    world.engine.handle(DeploymentFailed(a.deployments[0].id, reason="flaky"))  # a pauses; b takes staging
    world.deploy(b, 0)
    world.engine.handle(DeploymentStarted(b.deployments[1].id))  # b deploys prod
    world.engine.handle(RetryDeployment(a.deployments[0].id, actor="ana"))
    world.deploy(a, 0)
    assert world.get(a).state is FlowState.SUPERSEDED  # it would have followed b to prod with an older artifact
    assert world.get(b).state is FlowState.IN_PROGRESS
    assert world.lane("prod") == Lane("svc", "prod", b.id)


# --- two engines interleaved, every gate at once ---------------------------------------------


class _Interleaved:
    """A store whose lane reads sometimes let another engine act before they answer."""

    def __init__(self, store: Repository, rnd: random.Random) -> None:
        self._store, self._rnd, self._busy = store, rnd, False
        self.meanwhile: Callable[[], None] = lambda: None

    def lane(self, service_id: str, environment: str, *, limit: int = 4) -> Lane:
        assert isinstance(self._store, Lanes)
        lane = self._store.lane(service_id, environment, limit=limit)
        if not self._busy and self._rnd.random() < 0.3:
            self._busy = True
            try:
                self.meanwhile()
            finally:
                self._busy = False
        return lane

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _gated(concurrency: str, strategy: str) -> Service:
    """staging → prod (alice approves), one check each, RETRY with a backoff."""
    environments = [
        Environment("staging", ["smoke"]),
        Environment("prod", ["smoke"], approvals=ApprovalPolicy(["alice"])),
    ]
    retry = RetryPolicy(attempts=3, backoff=dt.timedelta(minutes=3)) if strategy == "RETRY" else None
    return Service(
        "svc",
        ["com.acme:api"],
        Pipeline("p", environments),
        failure_strategy=strategy,
        concurrency=concurrency,
        retry=retry,
    )


def _check_lanes(store: Repository, flows: list[Flow], at: object) -> None:
    """At most one flow occupies each environment; the stored lanes are the flows'
    own (``lane_status``); no flow waits for an environment nobody occupies; a held
    deployment has the timer that ends its hold."""
    assert isinstance(store, Lanes)
    occupants: dict[str, str] = {}
    waiting: dict[str, set[str]] = {"staging": set(), "prod": set()}
    for flow in (store.get(f.id) for f in flows):
        for index, deployment in enumerate(flow.deployments):
            status = lane_status(flow.state, flow.pause, flow.deployments, index)
            if status is LaneStatus.OCCUPIES:
                assert deployment.environment not in occupants, at
                occupants[deployment.environment] = flow.id
            elif status is LaneStatus.WAITS:
                waiting[deployment.environment].add(flow.id)
            if deployment.state is DeploymentState.HELD and flow.state not in FINISHED:
                assert any(t.deployment_id == deployment.id for t in store.timers(flow.id)), at
    for environment in ENVIRONMENTS:
        lane = store.lane("svc", environment, limit=1000)
        assert lane.occupant == occupants.get(environment), at
        assert set(lane.waiting) == waiting[environment], at
        assert not lane.waiting or lane.occupant is not None, at


@pytest.mark.parametrize("seed", range(12))
def test_two_engines_interleaved_never_share_an_environment(seed: int, tmp_path: Path) -> None:
    """Two engines on one SQLite file, one acting in the middle of the other's
    triggers, drive flows of a queued service through approvals, a freeze window,
    pauses, failures (every policy), retries, overrides and aborts at random."""
    rnd = random.Random(seed)
    svc = _gated(rnd.choice(["queue", "newest-wins"]), rnd.choice(["STOP", "PAUSE", "RETRY", "ROLLBACK"]))
    window = FreezeWindow("w", [rnd.choice(ENVIRONMENTS)], "20m", "UTC", cron="0 * * * *")
    clock, ids = FakeClock(dt.datetime(2026, 10, 23, 10, tzinfo=dt.UTC)), SequentialIds()
    with SQLiteRepository(tmp_path / "f.db") as first, SQLiteRepository(tmp_path / "f.db") as second:
        racing = _Interleaved(first, rnd)
        engines = [
            FlowEngine(Catalog([svc], freezes=[window]), store, None, clock=clock, id_factory=ids, max_attempts=50)
            for store in (racing, second)
        ]
        schedulers = [Scheduler(e.repository, e, clock=clock) for e in engines]
        flows: list[Flow] = []
        versions = itertools.count()

        def act(n: int) -> None:
            engine, op = engines[n], rnd.randrange(11)
            if op == 0 or not flows:
                flows.append(engine.handle(ArtifactCreated(Artifact("com.acme", "api", str(next(versions))))).flows[0])
                return
            flow = second.get(rnd.choice(flows).id)
            deployment = flow.current_deployment() or flow.deployments[-1]
            smoke = deployment.promotions[0]
            outcome = rnd.choice([ResultStatus.PASSED] * 3 + [ResultStatus.FAILED])
            triggers: list[Trigger] = [
                DeploymentStarted(deployment.id),
                DeploymentCompleted(deployment.id),
                PromotionCompleted(deployment.id, smoke.id, [PromotionResult(smoke.id, outcome)]),
                DeploymentFailed(deployment.id, reason="boom"),
                PauseFlow(flow.id, actor="ana"),
                ResumeFlow(flow.id, actor="ana"),
                AbortFlow(flow.id, actor="ana") if rnd.random() < 0.2 else ResumeFlow(flow.id, actor="ana"),
                RetryDeployment(deployment.id, actor="ana"),
                ApprovalGranted(deployment.id, "alice"),
                OverrideFreeze(deployment.id, actor="ana", reason="hotfix"),
            ]
            with contextlib.suppress(FlowFSMError):  # refused: nothing changed
                engine.handle(triggers[op - 1])
            if op == 10:
                clock.now += dt.timedelta(minutes=rnd.choice([1, 5, 20, 40]))
                schedulers[n].run_once()

        racing.meanwhile = lambda: act(1)
        for step in range(120):
            act(0)
            _check_lanes(second, flows, (seed, step))


# --- stores made by an earlier flowfsm ------------------------------------------------------


def test_a_sqlite_store_of_schema_5_opens_with_lanes(tmp_path: Path) -> None:
    from flowfsm.repositories.sqlite import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE flowfsm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for step in MIGRATIONS[:5]:
        for statement in step:
            db.execute(statement)
    db.execute("INSERT INTO flowfsm_meta VALUES ('schema_version', '5')")
    db.commit()
    db.close()
    with SQLiteRepository(path) as repo:
        world = World(repo, service())
        a, b = world.create("1"), world.create("2")
        assert world.lane() == Lane("svc", "staging", a.id, (b.id,))
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM flowfsm_meta").fetchone()[0] == str(SCHEMA_VERSION) == "6"
    db.close()


def test_a_postgres_store_of_schema_5_opens_with_lanes(postgres_dsn: str) -> None:
    import psycopg

    from flowfsm.repositories.postgres import MIGRATIONS

    schema = f"m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        conn.execute("CREATE TABLE flowfsm_meta (key text PRIMARY KEY, value text NOT NULL)")
        for step in MIGRATIONS[:5]:
            for statement in step:
                conn.execute(statement)
        conn.execute("INSERT INTO flowfsm_meta VALUES ('schema_version', '5')")
    try:
        with PostgresRepository(postgres_dsn, schema=schema) as repo:
            world = World(repo, service())
            a, b = world.create("1"), world.create("2")
            assert world.lane() == Lane("svc", "staging", a.id, (b.id,))
    finally:
        drop_schemas(postgres_dsn, [schema])


# --- several engine processes on one PostgreSQL database ------------------------------------


def test_engine_processes_racing_on_postgres_never_share_an_environment(postgres_dsn: str) -> None:
    """Three processes release flows of one ``queue`` service and drive whichever flow
    occupies the environment. Announcements (``deployment-created``) and successes are
    made in the commits that move the lane, which PostgreSQL runs one at a time per
    lane, so the outbox's order is the order they happened: each announcement must
    follow the success of the one before, and every flow must succeed."""
    import subprocess
    import sys

    import psycopg

    processes, flows = 3, 12
    total = processes * flows
    schema = f"race_{uuid.uuid4().hex[:12]}"
    PostgresRepository(postgres_dsn, schema=schema).close()  # the schema, before the race
    root = Path(__file__).resolve().parent.parent
    try:
        racers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.lane_racer", postgres_dsn, schema, str(i), str(flows), str(total)],
                cwd=root,
            )
            for i in range(processes)
        ]
        for racer in racers:
            assert racer.wait(timeout=180) == 0
        with psycopg.connect(postgres_dsn, options=f"-c search_path={schema}") as conn:
            rows = conn.execute("SELECT body->>'event', flow_id FROM outbox ORDER BY seq").fetchall()
            states = conn.execute("SELECT state, count(*) FROM flows GROUP BY state").fetchall()
    finally:
        drop_schemas(postgres_dsn, [schema])
    assert states == [("success", total)]  # none lost
    active: str | None = None
    announced = []
    for event, flow_id in rows:
        if event == "deployment-created":
            assert active is None, f"{flow_id} announced while {active} was active"
            active = flow_id
            announced.append(flow_id)
        elif event == "deployment-succeeded":
            assert active == flow_id
            active = None
    assert len(announced) == len(set(announced)) == total
    queued = [flow_id for event, flow_id in rows if event == "deployment-queued"]
    assert queued, "the race never made a flow wait"


# --- the catalog key and the command line -----------------------------------------------------


def test_a_catalog_file_names_the_file_and_path_of_a_bad_concurrency(tmp_path: Path) -> None:
    from flowfsm import CatalogError

    text = '[[services]]\nid = "svc"\nartifacts = ["com.acme:api"]\nconcurrency = "{}"\n'
    text += 'pipeline = { name = "p", environments = [{ name = "prod" }] }\n'
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(text.replace("{}", "newest-wins", 1))
    bad.write_text(text.replace("{}", "one-at-a-time", 1))
    assert Catalog.from_file(good).get("svc").concurrency.value == "newest-wins"
    with pytest.raises(CatalogError) as caught:
        Catalog.from_file(bad)
    assert caught.value.path == "$.services[0].concurrency"
    assert "bad.toml" in str(caught.value)
    assert "'parallel', 'queue', 'newest-wins'" in str(caught.value)


def test_the_command_line_shows_queued_and_superseded_flows(tmp_path: Path) -> None:
    from tests.test_cli import Cli

    cli = Cli(tmp_path)
    cli.catalog.write_text(cli.catalog.read_text().replace('artifacts = ["com.acme:api"]', _NEWEST, 1))
    first = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    cli.json("deployment-started", first["deployments"][0]["id"])
    waiting = cli.json("artifact-created", "com.acme:api:1.1.0")
    assert waiting["flows"][0]["deployments"][0]["state"] == "queued"
    shown = cli("show", waiting["flows"][0]["id"])
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"dev\s+queued", shown.stdout)
    explained = cli("explain", waiting["flows"][0]["id"])
    assert f"Queued for 'dev' behind flow {first['id']} (deploying), 1st in line" in explained.stdout
    cli.json("artifact-created", "com.acme:api:1.2.0")
    listed = cli("flows", "--state", "superseded")
    assert listed.returncode == 0, listed.stderr
    assert "com.acme:api:1.1.0" in listed.stdout


_NEWEST = 'artifacts = ["com.acme:api"]\nconcurrency = "newest-wins"'
