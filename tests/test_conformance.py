"""The contract's Part II read by an outsider: each test is written from SPEC.md
(§7-§13) and the public API only, and runs on the in-memory and SQLite stores.

Each test says which rule it checks; where the contract is silent, the expectation
is what a careful user of a CD platform would have (see docs/decisions.md)."""

from __future__ import annotations

import datetime as dt
import inspect
import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowfsm
from flowfsm import (
    AbortFlow,
    Action,
    ApprovalGranted,
    ApprovalPolicy,
    ApprovalRejected,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    DeploymentState,
    Environment,
    FailureStrategy,
    Flow,
    FlowEngine,
    FlowState,
    FreezeWindow,
    HookEvent,
    InvalidTransition,
    OverrideFreeze,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    PromotionState,
    ResultStatus,
    ResumeFlow,
    RetryDeployment,
    RetryPolicy,
    Service,
    Webhook,
)
from flowfsm.emitters import RecordingEmitter
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock

from .test_repositories import drop_schemas

pytest.importorskip("cronsim")  # freeze windows need the 'freeze' extra, which the suite installs

T0 = dt.datetime(2026, 10, 23, 12, 0, tzinfo=dt.UTC)  # a Friday
WEEKEND = FreezeWindow("weekend", ["prod"], "64h", "UTC", cron="0 18 * * 5")  # Fri 18:00 - Mon 10:00 UTC
WEEKEND_ENDS = dt.datetime(2026, 10, 26, 10, 0, tzinfo=dt.UTC)

Store = Callable[[], object]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A factory of empty stores, through the public constructors (each closed after)."""
    if request.param == "memory":
        yield InMemoryRepository
        return
    made: list[Any] = []
    counter = itertools.count()
    if request.param == "sqlite":

        def make() -> object:
            made.append(SQLiteRepository(str(tmp_path / f"flows-{next(counter)}.db")))
            return made[-1]

    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        schemas: list[str] = []

        def make() -> object:
            schemas.append(f"c_{uuid.uuid4().hex[:16]}")
            made.append(PostgresRepository(dsn, schema=schemas[-1]))
            return made[-1]

    yield make
    for repository in made:
        repository.close()
    if request.param == "postgres":
        drop_schemas(dsn, schemas)


class DescendingIds:
    """Ids that sort the other way round from the order they are made in, so that
    nothing can pass for arrival order by sorting ids."""

    def __init__(self) -> None:
        self._n = 1_000_000

    def __call__(self) -> str:
        self._n -= 1
        return f"id-{self._n}"


def every_event() -> list[Webhook]:
    return [Webhook(f"wh-{e.value}", e, [Action("log", url="https://cd.example/hook")]) for e in HookEvent]


def service(
    service_id: str = "svc-api", *, artifacts: tuple[str, ...] = ("com.acme:api",), **kwargs: object
) -> Service:
    defaults: dict[str, object] = {
        "pipeline": Pipeline("default", [Environment("dev", ["smoke"]), Environment("prod", ["smoke"])]),
        "webhooks": every_event(),
    }
    defaults.update(kwargs)
    return Service(service_id, list(artifacts), **defaults)  # type: ignore[arg-type]  # test helper: keywords as given


class Rig:
    """An engine over a store, a recording emitter, a fake clock and a scheduler."""

    def __init__(self, store: Store, *services: Service, freezes: list[FreezeWindow] | None = None) -> None:
        self.clock = FakeClock(T0)
        self.emitter = RecordingEmitter()
        self.repository = store()
        catalog = Catalog(list(services), freezes=freezes or [])
        self.engine = FlowEngine(catalog, self.repository, self.emitter, clock=self.clock, id_factory=DescendingIds())  # type: ignore[arg-type]  # a store of the factory
        self.scheduler = Scheduler(self.repository, self.engine)  # type: ignore[arg-type]  # a store of the factory

    def create(self, version: str, name: str = "api", actor: str | None = None) -> list[Flow]:
        return list(self.engine.handle(ArtifactCreated(Artifact("com.acme", name, version), actor=actor)).flows)

    def flow(self, flow_id: str) -> Flow:
        return self.engine.repository.get(flow_id)

    def events(self, flow_id: str | None = None) -> list[str]:
        return [r.event.value for r in self.emitter.requests if flow_id is None or r.flow_id == flow_id]

    def clear(self) -> None:
        self.emitter.requests.clear()

    def deploy(self, flow_id: str, index: int, result: ResultStatus = ResultStatus.PASSED) -> None:
        """Start and complete the flow's deployment ``index`` and report each promotion."""
        deployment = self.flow(flow_id).deployments[index]
        self.engine.handle(DeploymentStarted(deployment.id))
        self.engine.handle(DeploymentCompleted(deployment.id))
        for promotion in deployment.promotions:
            self.engine.handle(PromotionCompleted(deployment.id, promotion.id, [PromotionResult(promotion.id, result)]))


# --- §7, §13: public names ------------------------------------------------------------

SECTION_7 = [
    "FlowEngine",
    "Outcome",
    "Catalog",
    "Service",
    "Pipeline",
    "Environment",
    "Webhook",
    "Action",
    "HookEvent",
    "Artifact",
    "Flow",
    "Deployment",
    "Promotion",
    "PromotionResult",
    "HookRequest",
    "ArtifactCreated",
    "DeploymentStarted",
    "DeploymentCompleted",
    "PromotionCompleted",
    "FlowState",
    "DeploymentState",
    "PromotionState",
    "ResultStatus",
    "FailureStrategy",
    "FlowFSMError",
    "InvalidTransition",
    "UnknownFlow",
    "UnknownDeployment",
    "UnknownPromotion",
]
SECTION_13 = [
    "DeploymentFailed",
    "PauseFlow",
    "ResumeFlow",
    "AbortFlow",
    "RetryPromotion",
    "SkipPromotion",
    "RetryDeployment",
    "ApprovalGranted",
    "ApprovalRejected",
    "OverrideFreeze",
    "NotAuthorized",
]


@pytest.mark.parametrize("name", SECTION_7 + SECTION_13)
def test_every_public_name_of_the_contract_is_exported(name: str) -> None:
    assert name in flowfsm.__all__
    assert getattr(flowfsm, name).__name__ == name


@pytest.mark.parametrize(
    ("trigger", "positional"),
    [
        ("DeploymentFailed", ["deployment_id", "reason"]),
        ("PauseFlow", ["flow_id", "actor", "reason"]),
        ("ResumeFlow", ["flow_id", "actor", "reason"]),
        ("AbortFlow", ["flow_id", "actor", "reason"]),
        ("RetryPromotion", ["deployment_id", "promotion_id", "actor", "reason"]),
        ("SkipPromotion", ["deployment_id", "promotion_id", "actor", "reason"]),
        ("RetryDeployment", ["deployment_id", "actor", "reason"]),
        ("ApprovalGranted", ["deployment_id", "actor", "groups"]),
        ("ApprovalRejected", ["deployment_id", "actor", "reason"]),
        ("OverrideFreeze", ["deployment_id", "actor", "reason"]),
    ],
)
def test_part_two_triggers_take_the_positional_order_of_the_contract(trigger: str, positional: list[str]) -> None:
    parameters = list(inspect.signature(getattr(flowfsm, trigger)).parameters)
    assert parameters[: len(positional)] == positional
    assert {"actor", "reason"} <= set(parameters)


@pytest.mark.parametrize(
    ("member", "spelling"),
    [
        (FlowState.PAUSED, "paused"),
        (FlowState.ABORTED, "aborted"),
        (FlowState.SUPERSEDED, "superseded"),
        (PromotionState.SKIPPED, "skipped"),
        (FailureStrategy.STOP, "STOP"),
        (FailureStrategy.RETRY, "RETRY"),
        (FailureStrategy.PAUSE, "PAUSE"),
        (FailureStrategy.ROLLBACK, "ROLLBACK"),
    ],
)
def test_new_states_and_strategies_have_the_contract_spelling(member: object, spelling: str) -> None:
    assert getattr(member, "value", None) == spelling or getattr(member, "name", None) == spelling


PART_TWO_EVENTS = [
    "deployment-failed",
    "flow-paused",
    "flow-resumed",
    "flow-aborted",
    "promotion-retried",
    "promotion-skipped",
    "deployment-retried",
    "rollback-requested",
    "approval-requested",
    "approval-granted",
    "approval-rejected",
    "approval-expired",
    "deployment-queued",
    "flow-superseded",
    "deployment-held",
]


@pytest.mark.parametrize("spelling", PART_TWO_EVENTS)
def test_every_part_two_hook_event_is_a_member_of_hook_event(spelling: str) -> None:
    assert HookEvent(spelling).value == spelling
    assert HookEvent[spelling.upper().replace("-", "_")] is HookEvent(spelling)


# --- §11: freeze windows, and the queue behind them -----------------------------------


def queue_service(**kwargs: Any) -> Service:
    return service(pipeline=Pipeline("default", [Environment("prod", ["smoke"])]), concurrency="queue", **kwargs)


def test_flows_held_by_one_freeze_are_announced_in_arrival_order_when_it_ends(store: Store) -> None:
    """§11: a queue serves flows in arrival order; a freeze that held them all must not
    reorder them (say, by the ids of their timers)."""
    rig = Rig(store, queue_service(), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)  # Saturday: frozen
    flows = []
    for n in range(3):  # ids sort the other way round: timer-id order is the reverse of arrival
        flows += rig.create(f"1.{n}.0")
        rig.clock.advance(seconds=1)
    assert [rig.flow(f.id).deployments[0].state for f in flows] == [DeploymentState.HELD] * 3
    rig.clear()

    rig.clock.now = WEEKEND_ENDS
    rig.scheduler.run_once()
    states = [rig.flow(f.id).deployments[0].state for f in flows]
    assert states == [DeploymentState.NOT_STARTED, DeploymentState.QUEUED, DeploymentState.QUEUED]
    # and the line behind the first is in arrival order too
    rig.deploy(flows[0].id, 0)
    assert [rig.flow(f.id).deployments[0].state for f in flows[1:]] == [
        DeploymentState.NOT_STARTED,
        DeploymentState.QUEUED,
    ]


def test_flows_of_a_parallel_service_held_by_one_freeze_are_announced_in_arrival_order(store: Store) -> None:
    """Same inputs, same HookRequests in the same order (§3): the CD system is told to go
    in the order the flows reached the frozen environment."""
    rig = Rig(store, service(pipeline=Pipeline("default", [Environment("prod")])), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    flows = []
    for n in range(3):
        flows += rig.create(f"1.{n}.0")
        rig.clock.advance(seconds=1)
    rig.clear()
    rig.clock.now = WEEKEND_ENDS
    assert rig.scheduler.run_once() == 3
    created = [r.flow_id for r in rig.emitter.requests if r.event is HookEvent.DEPLOYMENT_CREATED]
    assert created == [f.id for f in flows]


def test_explain_of_a_held_deployment_does_not_promise_an_announcement_a_queue_will_delay(store: Store) -> None:
    """§9: explain says what the flow waits for. A flow held by a freeze, whose
    environment another flow occupies, will queue when the freeze ends: "it is
    announced then" would be wrong."""
    rig = Rig(store, queue_service(), freezes=[WEEKEND])
    first = rig.create("1.0.0")[0]  # announced on Friday noon, before the freeze: it may still start
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    second = rig.create("1.1.0")[0]
    assert rig.flow(second.id).deployments[0].state is DeploymentState.HELD
    (waiting,) = rig.engine.explain(second.id)
    assert waiting.kind == "freeze"
    assert "it is announced then" not in waiting.text
    assert first.id in waiting.text  # the flow it will queue behind


def test_explain_of_held_deployments_sharing_a_queue_does_not_promise_each_the_announcement(store: Store) -> None:
    """Two flows held for one queued environment: when the freeze ends one is
    announced and the other queues, so neither is promised "it is announced then"."""
    rig = Rig(store, queue_service(), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    flows = [rig.create(f"1.{n}.0")[0] for n in range(2)]
    for flow in flows:
        (waiting,) = rig.engine.explain(flow.id)
        assert waiting.kind == "freeze"
        assert "it is announced then" not in waiting.text
        assert "'prod' is free, else queued" in waiting.text


def test_explain_of_a_held_deployment_of_a_parallel_service_says_it_is_announced_then(store: Store) -> None:
    rig = Rig(store, service(pipeline=Pipeline("p", [Environment("prod")])), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    flow = rig.create("1.1.0")[0]
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "freeze"
    assert waiting.text.endswith("; it is announced then.")


def test_a_freeze_ending_while_the_flow_is_paused_announces_it_on_resume(store: Store) -> None:
    """§8: nothing new begins while paused; the freeze's end is held for the resume."""
    rig = Rig(store, queue_service(), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    flow = rig.create("1.0.0")[0]
    rig.engine.handle(PauseFlow(flow.id, "alice", "hold on"))
    rig.clear()
    rig.clock.now = WEEKEND_ENDS
    rig.scheduler.run_once()
    assert HookEvent.DEPLOYMENT_CREATED.value not in rig.events()
    deployment = rig.flow(flow.id).deployments[0]
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentStarted(deployment.id))
    rig.clear()
    rig.engine.handle(ResumeFlow(flow.id, "alice", "go"))
    assert rig.events() == ["flow-resumed", "deployment-created"]
    rig.engine.handle(DeploymentStarted(deployment.id))
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.STARTED


def test_override_freeze_announces_and_is_recorded(store: Store) -> None:
    rig = Rig(store, queue_service(), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    flow = rig.create("1.0.0")[0]
    deployment = flow.deployments[0]
    rig.clear()
    rig.engine.handle(OverrideFreeze(deployment.id, "alice", reason="hotfix"))
    assert rig.events() == ["freeze-overridden", "deployment-created"]
    assert rig.engine.handle(OverrideFreeze(deployment.id, "alice", reason="hotfix")).duplicate
    last = rig.engine.repository.history(flow.id)[-1]
    assert (last.actor, last.reason, last.trigger["type"]) == ("alice", "hotfix", "OverrideFreeze")


# --- §11: approvals, and their interactions -------------------------------------------


def approval_service(**kwargs: Any) -> Service:
    gate = ApprovalPolicy(["alice", "group:rm"], required=1, expiry="1h")
    pipeline = Pipeline("default", [Environment("dev", ["smoke"]), Environment("prod", ["smoke"], approvals=gate)])
    return service(pipeline=pipeline, **kwargs)


@pytest.mark.parametrize("first_attempt", ["started", "rejected"])
def test_a_start_while_the_retry_awaits_approval_is_refused_and_changes_nothing(
    store: Store, first_attempt: str
) -> None:
    """§11: a deployment awaiting approval cannot start. After a retry the report may be
    the first attempt's, delivered again, or, if that attempt's approval was rejected,
    a start that skipped the gate: flowfsm cannot tell them apart, so it refuses both,
    naming the gate, and the store is as it was."""
    rig = Rig(store, approval_service(failure_strategy="RETRY", retry=RetryPolicy(attempts=2)))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    if first_attempt == "started":
        rig.engine.handle(ApprovalGranted(prod.id, "alice"))
        rig.engine.handle(DeploymentStarted(prod.id))
        rig.engine.handle(DeploymentFailed(prod.id, "crash"))
    else:
        rig.engine.handle(ApprovalRejected(prod.id, "alice", "not today"))
    retried = rig.flow(flow.id).deployments[1]
    assert (retried.state, retried.attempt) == (DeploymentState.AWAITING_APPROVAL, 2)
    before = rig.engine.repository.history(flow.id)
    rig.clear()
    with pytest.raises(InvalidTransition, match="awaits approval"):
        rig.engine.handle(DeploymentStarted(prod.id))
    assert rig.events() == []
    assert rig.engine.repository.history(flow.id) == before
    assert rig.flow(flow.id).deployments[1] == retried


def test_a_start_for_a_first_attempt_awaiting_approval_is_refused(store: Store) -> None:
    rig = Rig(store, approval_service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentStarted(prod.id))


def test_abort_while_awaiting_approval_cancels_the_request(store: Store) -> None:
    rig = Rig(store, approval_service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    rig.clear()
    rig.engine.handle(AbortFlow(flow.id, "bob", reason="wrong build"))
    assert rig.events() == ["flow-aborted", "approval-cancelled"] or rig.events() == [
        "approval-cancelled",
        "flow-aborted",
    ]
    assert rig.flow(flow.id).state is FlowState.ABORTED
    with pytest.raises(InvalidTransition):
        rig.engine.handle(ApprovalGranted(prod.id, "alice"))
    rig.clock.advance(hours=2)  # the expiry timer was cancelled with the flow
    assert rig.scheduler.run_once() == 0
    assert rig.flow(flow.id).state is FlowState.ABORTED


def test_retry_after_an_approval_expired_asks_again(store: Store) -> None:
    """§11: expiry is a failure (§8); under PAUSE a person retries the deployment,
    which asks for approval again, its approvals cleared."""
    rig = Rig(store, approval_service(failure_strategy="PAUSE"))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    rig.clear()
    rig.clock.advance(hours=1)
    assert rig.scheduler.run_once() == 1
    assert rig.events() == ["approval-expired", "flow-paused"]  # approval-expired stands for deployment-failed
    expired = rig.flow(flow.id)
    assert (expired.state, expired.deployments[1].state) == (FlowState.PAUSED, DeploymentState.FAILED)
    with pytest.raises(InvalidTransition):
        rig.engine.handle(ResumeFlow(flow.id, "alice", "go"))
    rig.clear()
    rig.engine.handle(RetryDeployment(prod.id, "alice", reason="again"))
    assert rig.events() == ["deployment-retried", "flow-resumed", "approval-requested"] or rig.events() == [
        "flow-resumed",
        "deployment-retried",
        "approval-requested",
    ]
    retried = rig.flow(flow.id).deployments[1]
    assert (retried.state, retried.attempt, retried.approvals) == (DeploymentState.AWAITING_APPROVAL, 2, ())
    rig.engine.handle(ApprovalGranted(prod.id, "alice"))
    assert rig.flow(flow.id).deployments[1].state is DeploymentState.NOT_STARTED


def test_a_rejection_under_stop_fails_the_flow_and_nothing_else_moves(store: Store) -> None:
    rig = Rig(store, approval_service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    rig.clear()
    rig.engine.handle(ApprovalRejected(prod.id, "alice", reason="no"))
    assert rig.events()[0] == "approval-rejected"
    assert rig.flow(flow.id).state is FlowState.FAILED
    assert rig.engine.handle(ApprovalRejected(prod.id, "alice", reason="no")).duplicate


# --- §11: queues and pauses -------------------------------------------------------------


def test_a_flow_paused_while_queued_lets_the_next_go_and_rejoins_at_the_end(store: Store) -> None:
    rig = Rig(store, queue_service())
    first, second, third = (rig.create(f"1.{n}.0")[0] for n in range(3))
    assert rig.flow(second.id).deployments[0].state is DeploymentState.QUEUED
    rig.engine.handle(PauseFlow(second.id, "alice", "wait"))
    rig.deploy(first.id, 0)
    assert rig.flow(third.id).deployments[0].state is DeploymentState.NOT_STARTED  # the next one went
    paused = rig.flow(second.id).deployments[0]
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentStarted(paused.id))
    rig.engine.handle(ResumeFlow(second.id, "alice", "go"))
    assert rig.flow(second.id).deployments[0].state is DeploymentState.QUEUED
    rig.deploy(third.id, 0)
    assert rig.flow(second.id).deployments[0].state is DeploymentState.NOT_STARTED


def test_newest_wins_supersedes_waiting_flows_and_spares_the_deploying_one(store: Store) -> None:
    rig = Rig(store, service(pipeline=Pipeline("default", [Environment("prod", ["smoke"])]), concurrency="newest-wins"))
    deploying = rig.create("1.0.0")[0]
    rig.engine.handle(DeploymentStarted(deploying.deployments[0].id))
    waiting = rig.create("1.1.0")[0]
    rig.clear()
    newest = rig.create("1.2.0")[0]
    assert rig.flow(waiting.id).state is FlowState.SUPERSEDED
    assert rig.flow(deploying.id).state is FlowState.IN_PROGRESS
    superseded = [r for r in rig.emitter.requests if r.event is HookEvent.FLOW_SUPERSEDED]
    assert [r.flow_id for r in superseded] == [waiting.id]
    assert newest.id in (getattr(superseded[0].payload, "reason", None) or "")  # a steering payload
    (entry,) = rig.engine.repository.history(waiting.id)[-1:]
    assert entry.actor == "flowfsm"
    rig.deploy(deploying.id, 0)
    assert rig.flow(newest.id).deployments[0].state is DeploymentState.NOT_STARTED


def test_two_services_sharing_an_artifact_each_get_their_own_flow_and_queue(store: Store) -> None:
    shared = ("com.acme:api",)
    prod = Pipeline("p", [Environment("prod", ["smoke"])])
    one = service("svc-one", artifacts=shared, pipeline=prod, concurrency="queue")
    two = service("svc-two", artifacts=shared, pipeline=prod, concurrency="queue")
    rig = Rig(store, one, two)
    flows = rig.create("1.0.0")
    assert sorted(f.service_id for f in flows) == ["svc-one", "svc-two"]
    # each service's prod is its own lane: neither flow waits for the other
    assert [rig.flow(f.id).deployments[0].state for f in flows] == [DeploymentState.NOT_STARTED] * 2
    again = rig.create("1.0.0")  # a redelivered ArtifactCreated: the same flows
    assert sorted(f.id for f in again) == sorted(f.id for f in flows)
    later = rig.create("1.1.0")
    assert [rig.flow(f.id).deployments[0].state for f in later] == [DeploymentState.QUEUED] * 2
    one_flow = next(f for f in flows if f.service_id == "svc-one")
    rig.deploy(one_flow.id, 0)
    states = {f.service_id: rig.flow(f.id).deployments[0].state for f in later}
    assert states == {"svc-one": DeploymentState.NOT_STARTED, "svc-two": DeploymentState.QUEUED}


# --- §8, §13: the operator triggers' inputs ----------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: PauseFlow("f", None, "r"),  # type: ignore[arg-type]  # the missing actor under test
        lambda: ResumeFlow("f", "", "r"),
        lambda: AbortFlow("f", "   ", "r"),
        lambda: RetryDeployment("d", None),  # type: ignore[arg-type]  # the missing actor under test
        lambda: OverrideFreeze("d", None, "r"),  # type: ignore[arg-type]  # the missing actor under test
    ],
)
def test_operator_triggers_require_an_actor(make: Callable[[], object]) -> None:
    with pytest.raises(flowfsm.ValidationError) as raised:
        make()
    assert raised.value.field == "actor"


def test_skip_promotion_requires_a_reason() -> None:
    with pytest.raises(flowfsm.ValidationError) as raised:
        flowfsm.SkipPromotion("d", "p", "alice", " ")
    assert raised.value.field == "reason"


def test_part_two_triggers_take_actor_and_reason_as_keywords() -> None:
    trigger = PauseFlow("f", actor="alice", reason="why")
    assert (trigger.actor, trigger.reason) == ("alice", "why")
    assert DeploymentStarted("d", actor="argo", reason="r").actor == "argo"
    assert ApprovalGranted("d", actor="alice", groups=["rm"]).actor == "alice"


@pytest.mark.parametrize(
    "trigger",
    [
        DeploymentFailed("d", "crash", actor="argo"),
        PauseFlow("f", "alice", "why"),
        ResumeFlow("f", "alice"),
        AbortFlow("f", "alice", "why"),
        flowfsm.RetryPromotion("d", "p", "alice"),
        flowfsm.SkipPromotion("d", "p", "alice", "flaky"),
        RetryDeployment("d", "alice"),
        ApprovalGranted("d", "alice", ["rm"]),
        ApprovalRejected("d", "alice", "no"),
        OverrideFreeze("d", "alice", "hotfix"),
    ],
)
def test_part_two_triggers_round_trip_through_the_converter(trigger: flowfsm.Trigger) -> None:
    from flowfsm import converter

    data = converter.unstructure(trigger, flowfsm.Trigger)
    assert data["type"] == type(trigger).__name__
    assert all("_" not in key for key in data)  # camelCase keys
    assert converter.structure(data, flowfsm.Trigger) == trigger


# --- §8: steering on every store -----------------------------------------------------------


def test_pause_holds_the_next_announcement_and_resume_releases_it(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.clear()
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    assert rig.events() == ["flow-paused"]
    assert rig.engine.handle(PauseFlow(flow.id, "alice", "look")).duplicate
    rig.deploy(flow.id, 0)  # facts about work under way are recorded (start is a duplicate)
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.SUCCESS
    assert "deployment-created" not in rig.events()
    prod = rig.flow(flow.id).deployments[1]
    with pytest.raises(InvalidTransition) as refused:
        rig.engine.handle(DeploymentStarted(prod.id))
    assert prod.id in str(refused.value)
    assert "paused" in str(refused.value)
    rig.clear()
    rig.engine.handle(ResumeFlow(flow.id, "alice"))
    assert rig.events() == ["flow-resumed", "deployment-created"]
    assert rig.engine.handle(ResumeFlow(flow.id, "alice")).duplicate


def test_resume_of_a_paused_flow_whose_last_deployment_succeeded_finishes_it(store: Store) -> None:
    rig = Rig(store, service(pipeline=Pipeline("default", [Environment("dev", ["smoke"])])))
    flow = rig.create("1.0.0")[0]
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentStarted(flow.deployments[0].id))
    rig.engine.handle(ResumeFlow(flow.id, "alice"))
    rig.deploy(flow.id, 0)
    assert rig.flow(flow.id).state is FlowState.SUCCESS


def test_abort_is_terminal_and_refuses_everything_after(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    rig.clear()
    rig.engine.handle(AbortFlow(flow.id, "bob", "wrong build"))
    assert rig.events() == ["flow-aborted"]
    assert rig.engine.handle(AbortFlow(flow.id, "bob", "again")).duplicate
    history = rig.engine.repository.history(flow.id)
    for trigger in (DeploymentStarted(flow.deployments[0].id), PauseFlow(flow.id, "bob", "x")):
        with pytest.raises(InvalidTransition) as refused:
            rig.engine.handle(trigger)
        assert "finished" in str(refused.value) or "aborted" in str(refused.value)
    assert rig.engine.repository.history(flow.id) == history
    (finished,) = rig.engine.explain(flow.id)
    assert finished.kind == "finished"
    assert "bob" in finished.text
    assert "wrong build" in finished.text


def test_stale_result_of_an_earlier_attempt_is_a_duplicate(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="PAUSE"))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)
    assert rig.flow(flow.id).state is FlowState.PAUSED
    dev = rig.flow(flow.id).deployments[0]
    assert dev.state is DeploymentState.COMPLETED  # PAUSE leaves the deployment completed
    smoke = dev.promotions[0]
    with pytest.raises(InvalidTransition) as refused:
        rig.engine.handle(ResumeFlow(flow.id, "alice"))
    assert "retry or skip" in str(refused.value)
    rig.clear()
    rig.engine.handle(flowfsm.RetryPromotion(dev.id, smoke.id, "alice"))
    assert rig.events() == ["promotion-retried", "flow-resumed"] or rig.events() == [
        "flow-resumed",
        "promotion-retried",
    ]
    assert rig.flow(flow.id).state is FlowState.IN_PROGRESS
    stale = PromotionResult(smoke.id, ResultStatus.FAILED, attempt=1)
    assert rig.engine.handle(PromotionCompleted(dev.id, smoke.id, [stale])).duplicate
    fresh = PromotionResult(smoke.id, ResultStatus.PASSED, attempt=2)
    rig.engine.handle(PromotionCompleted(dev.id, smoke.id, [fresh]))
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.SUCCESS


def test_a_contradicting_result_is_invalid_and_leaves_the_store_unchanged(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    dev = rig.flow(flow.id).deployments[0]
    smoke = dev.promotions[0]
    before, history = rig.flow(flow.id), rig.engine.repository.history(flow.id)
    rig.clear()
    with pytest.raises(InvalidTransition) as refused:
        rig.engine.handle(PromotionCompleted(dev.id, smoke.id, [PromotionResult(smoke.id, ResultStatus.FAILED)]))
    assert smoke.id in str(refused.value)
    assert rig.flow(flow.id) == before
    assert rig.engine.repository.history(flow.id) == history
    assert rig.events() == []


def test_skip_counts_as_passed_and_is_recorded(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    rig.clear()
    rig.engine.handle(flowfsm.SkipPromotion(dev.id, dev.promotions[0].id, "alice", "flaky"))
    assert rig.events()[:2] == ["promotion-skipped", "deployment-succeeded"]
    assert rig.flow(flow.id).deployments[0].promotions[0].state is PromotionState.SKIPPED
    entry = rig.engine.repository.history(flow.id)[-1]
    assert (entry.actor, entry.reason) == ("alice", "flaky")
    assert rig.engine.handle(flowfsm.SkipPromotion(dev.id, dev.promotions[0].id, "alice", "flaky")).duplicate


def test_retry_policy_retries_a_failed_deployment_then_stops(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="RETRY", retry=RetryPolicy(attempts=2)))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.clear()
    rig.engine.handle(DeploymentFailed(dev.id, "crash"))
    assert rig.events() == ["deployment-failed", "deployment-retried", "deployment-created"]
    assert rig.flow(flow.id).deployments[0].attempt == 2
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.clear()
    rig.engine.handle(DeploymentFailed(dev.id, "crash again"))
    assert rig.events() == ["deployment-failed", "flow-failed"]
    assert rig.flow(flow.id).state is FlowState.FAILED


def test_retry_backoff_is_a_timer_and_explained(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="RETRY", retry=RetryPolicy(attempts=3, backoff="5m")))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "backoff"
    assert waiting.until == T0 + dt.timedelta(minutes=5)
    rig.clock.advance(minutes=4)
    assert rig.scheduler.run_once() == 0
    rig.clear()
    rig.clock.advance(minutes=1)
    assert rig.scheduler.run_once() == 1
    assert rig.events() == ["promotion-retried"]
    entry = rig.engine.repository.history(flow.id)[-1]
    assert entry.actor == "flowfsm"


def test_rollback_names_the_newest_other_successful_artifact(store: Store) -> None:
    one_env = Pipeline("default", [Environment("dev", ["smoke"])])
    rig = Rig(store, service(pipeline=one_env, failure_strategy="ROLLBACK"))
    for version in ("1.0.0", "1.1.0"):
        ok = rig.create(version)[0]
        rig.deploy(ok.id, 0)
    bad = rig.create("1.2.0")[0]
    rig.clear()
    rig.deploy(bad.id, 0, ResultStatus.FAILED)
    assert rig.events()[-1] == "rollback-requested"
    (request,) = [r for r in rig.emitter.requests if r.event is HookEvent.ROLLBACK_REQUESTED]
    from flowfsm import converter

    payload = converter.unstructure(request, flowfsm.HookRequest)["payload"]
    assert payload["rollbackTo"]["version"] == "1.1.0"
    stored = rig.flow(bad.id)
    assert stored.state is FlowState.FAILED
    assert stored.rollback is not None


def test_rollback_with_nothing_to_return_to_says_so(store: Store) -> None:
    one_env = Pipeline("default", [Environment("dev", ["smoke"])])
    rig = Rig(store, service(pipeline=one_env, failure_strategy="ROLLBACK"))
    bad = rig.create("1.0.0")[0]
    rig.deploy(bad.id, 0, ResultStatus.FAILED)
    (request,) = [r for r in rig.emitter.requests if r.event is HookEvent.ROLLBACK_REQUESTED]
    from flowfsm import converter

    assert converter.unstructure(request, flowfsm.HookRequest)["payload"]["rollbackTo"] is None


# --- §9: history ------------------------------------------------------------------------------


def test_history_has_one_entry_per_change_with_the_contract_fields(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0", actor="ci")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id, actor="argo", reason="rollout"))
    rig.engine.handle(DeploymentStarted(dev.id, actor="argo"))  # duplicate: no entry
    with pytest.raises(InvalidTransition):  # refused: no entry
        rig.engine.handle(DeploymentStarted(flow.deployments[1].id))
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    entries = rig.engine.repository.history(flow.id)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.trigger["type"] for e in entries] == ["ArtifactCreated", "DeploymentStarted", "PauseFlow"]
    assert [(e.actor, e.reason) for e in entries] == [("ci", None), ("argo", "rollout"), ("alice", "look")]
    for entry in entries:
        assert {"seq", "at", "trigger", "actor", "reason", "changes", "hook_request_ids"} <= set(dir(entry))
    sent = {r.id for r in rig.emitter.requests}
    assert set(entries[0].hook_request_ids) <= sent
    assert entries[0].hook_request_ids
    created = entries[0].changes
    assert (created[-1].entity, created[-1].id, created[-1].from_, created[-1].to) == (
        "flow",
        flow.id,
        None,
        "inProgress",
    )
    (paused,) = entries[2].changes
    assert (paused.entity, paused.from_, paused.to) == ("flow", "inProgress", "paused")
    from flowfsm import converter

    data = converter.unstructure(entries[2], flowfsm.HistoryEntry)
    assert {"seq", "at", "trigger", "actor", "reason", "changes", "hookRequestIds"} <= set(data)
    assert data["changes"][0]["from"] == "inProgress"


# --- §10: timeouts and soak with a fake clock -------------------------------------------------


def test_deploy_timeout_fails_the_deployment_with_reason_timeout(store: Store) -> None:
    env = Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m"))
    rig = Rig(store, service(pipeline=Pipeline("p", [env])))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "cd-finish"
    assert waiting.until == T0 + dt.timedelta(minutes=10)
    rig.clock.advance(minutes=9, seconds=59)
    assert rig.scheduler.run_once() == 0
    rig.clear()
    rig.clock.advance(seconds=1)
    assert rig.scheduler.run_once() == 1
    assert rig.events() == ["deployment-failed", "flow-failed"]
    failed = next(r for r in rig.emitter.requests if r.event is HookEvent.DEPLOYMENT_FAILED)
    assert getattr(failed.payload, "reason", None) == "timeout"
    assert rig.engine.repository.history(flow.id)[-1].actor == "flowfsm"
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentCompleted(dev.id))
    assert rig.engine.handle(DeploymentFailed(dev.id, "late")).duplicate


def test_verify_timeout_fails_each_pending_promotion(store: Store) -> None:
    env = Environment("dev", ["smoke", "perf"], timeouts=flowfsm.Timeouts(verify="1h"))
    rig = Rig(store, service(pipeline=Pipeline("p", [env])))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    rig.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    rig.clear()
    rig.clock.advance(hours=1)
    assert rig.scheduler.run_once() == 1
    stored = rig.flow(flow.id)
    assert [p.state for p in stored.deployments[0].promotions] == [PromotionState.SUCCESS, PromotionState.FAILED]
    assert stored.state is FlowState.FAILED
    assert rig.events()[0] == "promotion-failed"


def test_soak_holds_success_until_it_ends(store: Store) -> None:
    pipeline = Pipeline("p", [Environment("dev", ["smoke"], soak="1h"), Environment("prod")])
    rig = Rig(store, service(pipeline=pipeline))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.COMPLETED
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "soak"
    assert waiting.until == T0 + dt.timedelta(hours=1)
    rig.clear()
    rig.clock.advance(minutes=59)
    assert rig.scheduler.run_once() == 0
    rig.clock.advance(minutes=1)
    assert rig.scheduler.run_once() == 1
    assert rig.events() == ["deployment-succeeded", "deployment-created"]
    assert rig.engine.repository.timers(flow.id) == []


def test_timers_of_a_finished_flow_are_cancelled(store: Store) -> None:
    env = Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m", verify="10m"))
    rig = Rig(store, service(pipeline=Pipeline("p", [env])))
    flow = rig.create("1.0.0")[0]
    rig.engine.handle(DeploymentStarted(flow.deployments[0].id))
    assert rig.engine.repository.timers(flow.id)
    rig.engine.handle(AbortFlow(flow.id, "bob", "stop"))
    assert rig.engine.repository.timers(flow.id) == []
    rig.clock.advance(hours=1)
    assert rig.scheduler.run_once() == 0


# --- §4 for Part II: unknown ids, refusals, nothing changes -----------------------------------


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda f, d, p: PauseFlow("nope", "alice", "x"), flowfsm.UnknownFlow),
        (lambda f, d, p: ResumeFlow("nope", "alice"), flowfsm.UnknownFlow),
        (lambda f, d, p: AbortFlow("nope", "alice", "x"), flowfsm.UnknownFlow),
        (lambda f, d, p: DeploymentFailed("nope", "x"), flowfsm.UnknownDeployment),
        (lambda f, d, p: RetryDeployment("nope", "alice"), flowfsm.UnknownDeployment),
        (lambda f, d, p: flowfsm.RetryPromotion(d, "nope", "alice"), flowfsm.UnknownPromotion),
        (lambda f, d, p: flowfsm.SkipPromotion(d, "nope", "alice", "x"), flowfsm.UnknownPromotion),
        (lambda f, d, p: ApprovalGranted("nope", "alice"), flowfsm.UnknownDeployment),
        (lambda f, d, p: ApprovalRejected("nope", "alice", "x"), flowfsm.UnknownDeployment),
        (lambda f, d, p: OverrideFreeze("nope", "alice", "x"), flowfsm.UnknownDeployment),
    ],
)
def test_unknown_ids_raise_the_typed_error_naming_the_id(
    store: Store, make: Callable[[str, str, str], flowfsm.Trigger], error: type[Exception]
) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.clear()
    with pytest.raises(error) as raised:
        rig.engine.handle(make(flow.id, dev.id, dev.promotions[0].id))
    assert "nope" in str(raised.value)
    assert isinstance(raised.value, flowfsm.FlowFSMError)
    assert rig.events() == []
    assert len(rig.engine.repository.history(flow.id)) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda f, d, p: DeploymentFailed(d, "crash"),  # not started
        lambda f, d, p: RetryDeployment(d, "alice"),  # not failed
        lambda f, d, p: flowfsm.RetryPromotion(d, p, "alice"),  # not failed
        lambda f, d, p: OverrideFreeze(d, "alice", "x"),  # no freeze holds it
        lambda f, d, p: ApprovalGranted(d, "alice"),  # it awaits no approval
    ],
)
def test_refused_part_two_triggers_name_the_entity_and_change_nothing(
    store: Store, make: Callable[[str, str, str], flowfsm.Trigger]
) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    before = rig.flow(flow.id)
    rig.clear()
    with pytest.raises(InvalidTransition) as raised:
        rig.engine.handle(make(flow.id, dev.id, dev.promotions[0].id))
    assert dev.id in str(raised.value) or dev.promotions[0].id in str(raised.value)
    assert rig.flow(flow.id) == before
    assert rig.events() == []
    assert len(rig.engine.repository.history(flow.id)) == 1


def test_not_authorized_changes_nothing(store: Store) -> None:
    rig = Rig(store, approval_service())
    flow = rig.create("1.0.0", actor="bob")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    before, history = rig.flow(flow.id), rig.engine.repository.history(flow.id)
    rig.clear()
    for actor, groups in (("dave", ()), ("bob", ("rm",))):  # not an approver; the author
        with pytest.raises(flowfsm.NotAuthorized) as raised:
            rig.engine.handle(ApprovalGranted(prod.id, actor, groups))
        assert actor in str(raised.value)
    assert rig.flow(flow.id) == before
    assert rig.engine.repository.history(flow.id) == history
    assert rig.events() == []
    rig.engine.handle(ApprovalGranted(prod.id, "carol", ["group:rm"]))
    assert rig.flow(flow.id).deployments[1].state is DeploymentState.NOT_STARTED


# --- interactions ------------------------------------------------------------------------------


def test_an_approval_given_while_paused_counts_and_its_announcement_waits_for_the_resume(store: Store) -> None:
    rig = Rig(store, approval_service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    rig.engine.handle(PauseFlow(flow.id, "alice", "wait"))
    rig.clear()
    rig.engine.handle(ApprovalGranted(prod.id, "alice"))
    assert rig.events() == ["approval-granted"]
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentStarted(prod.id))
    rig.clear()
    rig.engine.handle(ResumeFlow(flow.id, "alice"))
    assert rig.events() == ["flow-resumed", "deployment-created"]


def test_aborting_the_occupant_lets_the_next_flow_go(store: Store) -> None:
    rig = Rig(store, queue_service())
    first, second = (rig.create(f"1.{n}.0")[0] for n in range(2))
    rig.engine.handle(DeploymentStarted(first.deployments[0].id))
    rig.clear()
    rig.engine.handle(AbortFlow(first.id, "bob", "bad"))
    assert rig.events(second.id) == ["deployment-created"]
    (waiting,) = rig.engine.explain(second.id)
    assert waiting.kind == "cd-start"


def test_aborting_a_queued_flow_takes_it_out_of_the_line(store: Store) -> None:
    rig = Rig(store, queue_service())
    first, second, third = (rig.create(f"1.{n}.0")[0] for n in range(3))
    (waiting,) = rig.engine.explain(third.id)
    assert waiting.kind == "queue"
    assert first.id in waiting.text
    assert "2nd" in waiting.text
    rig.engine.handle(AbortFlow(second.id, "bob", "bad"))
    (waiting,) = rig.engine.explain(third.id)
    assert "1st" in waiting.text
    rig.deploy(first.id, 0)
    assert rig.flow(third.id).deployments[0].state is DeploymentState.NOT_STARTED


def test_a_failed_deployment_frees_the_queue(store: Store) -> None:
    rig = Rig(store, queue_service(failure_strategy="PAUSE"))
    first, second = (rig.create(f"1.{n}.0")[0] for n in range(2))
    dev = first.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentFailed(dev.id, "crash"))
    assert rig.flow(first.id).state is FlowState.PAUSED
    assert rig.flow(second.id).deployments[0].state is DeploymentState.NOT_STARTED
    rig.engine.handle(RetryDeployment(dev.id, "alice"))  # it waits behind the second now
    assert rig.flow(first.id).deployments[0].state is DeploymentState.QUEUED
    history = rig.engine.repository.history(first.id)
    with pytest.raises(InvalidTransition, match="queued"):  # at a gate: refused, whichever attempt it reports
        rig.engine.handle(DeploymentStarted(dev.id))
    assert rig.engine.repository.history(first.id) == history
    assert rig.flow(first.id).deployments[0].state is DeploymentState.QUEUED


def test_newest_wins_ends_an_older_announced_flow_when_a_newer_one_is_approved(store: Store) -> None:
    """§11: a flow that starts waiting ends every older flow that has not yet started
    its first deployment; approvals do not occupy the environment."""
    gate = ApprovalPolicy(["alice"])
    pipeline = Pipeline("default", [Environment("prod", ["smoke"], approvals=gate)])
    rig = Rig(store, service(pipeline=pipeline, concurrency="newest-wins"))
    older = rig.create("1.0.0")[0]
    newer = rig.create("1.1.0")[0]
    states = [rig.flow(f.id).deployments[0].state for f in (older, newer)]
    assert states == [DeploymentState.AWAITING_APPROVAL] * 2
    rig.engine.handle(ApprovalGranted(older.deployments[0].id, "alice"))
    assert rig.flow(older.id).deployments[0].state is DeploymentState.NOT_STARTED  # announced
    rig.engine.handle(ApprovalGranted(newer.deployments[0].id, "alice"))
    assert rig.flow(older.id).state is FlowState.SUPERSEDED  # announced, never started
    assert rig.flow(newer.id).deployments[0].state is DeploymentState.NOT_STARTED
    with pytest.raises(InvalidTransition):
        rig.engine.handle(DeploymentStarted(older.deployments[0].id))


def test_newest_wins_after_a_freeze_announces_only_the_newest_flow(store: Store) -> None:
    prod = Pipeline("p", [Environment("prod")])
    rig = Rig(store, service(pipeline=prod, concurrency="newest-wins"), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    older = rig.create("1.0.0")[0]
    rig.clock.advance(minutes=1)
    newer = rig.create("1.1.0")[0]
    rig.clock.now = WEEKEND_ENDS
    rig.scheduler.run_once()
    assert rig.flow(older.id).state is FlowState.SUPERSEDED
    assert rig.flow(newer.id).deployments[0].state is DeploymentState.NOT_STARTED


def test_a_person_pausing_a_policy_paused_flow_is_a_duplicate_and_retry_resumes(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="PAUSE"))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.clear()
    rig.engine.handle(DeploymentFailed(dev.id, "crash"))
    assert rig.events() == ["deployment-failed", "flow-paused"]
    (paused,) = rig.engine.explain(flow.id)
    assert paused.kind == "paused"
    assert paused.details["failed"][0]["id"] == dev.id
    assert rig.engine.handle(PauseFlow(flow.id, "alice", "me too")).duplicate
    rig.clear()
    rig.engine.handle(RetryDeployment(dev.id, "alice"))
    assert set(rig.events()) == {"deployment-retried", "flow-resumed", "deployment-created"}
    assert rig.events()[-1] == "deployment-created"
    assert rig.flow(flow.id).state is FlowState.IN_PROGRESS


def test_environment_failure_strategy_overrides_the_service(store: Store) -> None:
    pipeline = Pipeline("p", [Environment("dev", ["smoke"], failure_strategy="PAUSE"), Environment("prod")])
    rig = Rig(store, service(pipeline=pipeline))  # STOP for the service
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)
    assert rig.flow(flow.id).state is FlowState.PAUSED


# --- §7, §13: JSON spellings round-trip -----------------------------------------------------


def test_every_hook_request_flow_and_history_entry_of_part_two_round_trips(store: Store) -> None:
    """§7/Part II: every entity, trigger and HookRequest round-trips through the
    converter unchanged, with camelCase keys and the contract's state spellings."""
    from flowfsm import converter

    gate = ApprovalPolicy(["alice"], expiry="1h")
    pipeline = Pipeline(
        "p",
        [
            Environment("dev", ["smoke"], failure_strategy="PAUSE"),
            Environment("prod", ["smoke"], approvals=gate, soak="1h"),
        ],
    )
    rig = Rig(store, service(pipeline=pipeline, failure_strategy="ROLLBACK", concurrency="queue"), freezes=[WEEKEND])
    flow = rig.create("1.0.0", actor="ci")[0]
    second = rig.create("1.1.0")[0]  # queued behind
    rig.engine.handle(PauseFlow(second.id, "bob", "wait"))
    rig.deploy(flow.id, 0, ResultStatus.FAILED)  # PAUSE
    dev = rig.flow(flow.id).deployments[0]
    rig.engine.handle(flowfsm.SkipPromotion(dev.id, dev.promotions[0].id, "alice", "flaky"))
    prod = rig.flow(flow.id).deployments[1]
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    rig.engine.handle(ApprovalGranted(prod.id, "alice"))  # held by the freeze
    rig.engine.handle(OverrideFreeze(prod.id, "alice", "hotfix"))
    rig.deploy(flow.id, 1, ResultStatus.FAILED)  # ROLLBACK
    assert rig.flow(flow.id).state is FlowState.FAILED
    assert {r.event for r in rig.emitter.requests} >= {
        HookEvent.FLOW_PAUSED,
        HookEvent.PROMOTION_SKIPPED,
        HookEvent.FLOW_RESUMED,
        HookEvent.APPROVAL_GRANTED,
        HookEvent.DEPLOYMENT_HELD,
        HookEvent.DEPLOYMENT_QUEUED,
        HookEvent.ROLLBACK_REQUESTED,
    }
    for request in rig.emitter.requests:
        data = converter.unstructure(request, flowfsm.HookRequest)
        assert converter.structure(data, flowfsm.HookRequest) == request
        assert data["event"] == request.event.value
    for flow_id in (flow.id, second.id):
        stored = rig.flow(flow_id)
        data = converter.unstructure(stored, Flow)
        assert converter.structure(data, Flow) == stored
        assert data["state"] in {s.value for s in FlowState}
        for entry in rig.engine.repository.history(flow_id):
            entry_data = converter.unstructure(entry, flowfsm.HistoryEntry)
            assert converter.structure(entry_data, flowfsm.HistoryEntry) == entry


def test_a_catalog_file_spells_the_new_policies_in_camel_case(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        """
[[services]]
id = "svc-api"
artifacts = ["com.acme:api"]
failureStrategy = "RETRY"
retry = { attempts = 3, backoff = "30s", then = "PAUSE" }
concurrency = "newest-wins"

[services.pipeline]
name = "default"

[[services.pipeline.environments]]
name = "prod"
promotions = ["smoke"]
failureStrategy = "PAUSE"
soak = "1h"
timeouts = { deploy = "30m", verify = "1h" }
approvals = { approvers = ["alice", "group:rm"], required = 2, allowAuthor = true, expiry = "24h" }

[[freezes]]
name = "weekend"
cron = "0 18 * * 5"
duration = "64h"
timezone = "UTC"
environments = ["prod"]
"""
    )
    catalog = Catalog.from_file(str(path))
    svc = catalog.get("svc-api")
    assert svc.failure_strategy == "RETRY" or getattr(svc.failure_strategy, "value", None) == "RETRY"
    (prod,) = svc.pipeline.environments
    assert prod.approvals is not None
    assert (prod.approvals.required, prod.approvals.allow_author) == (2, True)
    assert prod.soak == dt.timedelta(hours=1)
    assert svc.retry is not None
    assert svc.retry.attempts == 3


# --- §10, §11: more timing ------------------------------------------------------------------


def test_a_timer_fired_after_its_flow_moved_on_does_nothing(store: Store) -> None:
    env = Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m"))
    rig = Rig(store, service(pipeline=Pipeline("p", [env])))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    rig.clock.advance(minutes=10)
    history = rig.engine.repository.history(flow.id)
    assert rig.engine.handle(flowfsm.TimerFired(dev.id, "deploy")).duplicate
    assert rig.engine.repository.history(flow.id) == history
    assert rig.scheduler.run_once() == 0
    assert rig.flow(flow.id).state is FlowState.IN_PROGRESS


def test_a_deployment_announced_before_a_freeze_may_start_during_it(store: Store) -> None:
    rig = Rig(store, queue_service(), freezes=[WEEKEND])
    flow = rig.create("1.0.0")[0]  # Friday noon
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    rig.engine.handle(DeploymentStarted(flow.deployments[0].id))
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.STARTED


def test_soak_ended_before_the_promotions_passed_succeeds_on_the_last_result(store: Store) -> None:
    pipeline = Pipeline("p", [Environment("dev", ["smoke"], soak="1h")])
    rig = Rig(store, service(pipeline=pipeline))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    rig.clock.advance(hours=2)
    assert rig.scheduler.run_once() == 0  # soaked, but the check has not passed
    smoke = dev.promotions[0].id
    rig.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    assert rig.flow(flow.id).state is FlowState.SUCCESS
    (finished,) = rig.engine.explain(flow.id)
    assert finished.kind == "finished"


def test_a_result_for_a_later_attempt_than_there_has_been_is_refused(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    with pytest.raises(flowfsm.FlowFSMError):
        rig.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED, attempt=2)]))
    assert rig.flow(flow.id).deployments[0].promotions[0].state is PromotionState.PENDING


def test_an_early_skip_lets_the_deployment_succeed_when_it_completes(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(flowfsm.SkipPromotion(dev.id, dev.promotions[0].id, "alice", "cannot run in dev"))
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.SUCCESS


def test_retry_promotion_of_a_failed_flow_is_refused(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)
    assert rig.flow(flow.id).state is FlowState.FAILED
    dev = rig.flow(flow.id).deployments[0]
    with pytest.raises(InvalidTransition):
        rig.engine.handle(flowfsm.RetryPromotion(dev.id, dev.promotions[0].id, "alice"))
    with pytest.raises(InvalidTransition):
        rig.engine.handle(RetryDeployment(dev.id, "alice"))


def test_steering_payloads_name_who_and_why(store: Store) -> None:
    from flowfsm import converter

    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    rig.clear()
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    (request,) = rig.emitter.requests
    payload = converter.unstructure(request, flowfsm.HookRequest)["payload"]
    assert (payload["actor"], payload["reason"]) == ("alice", "look")
    assert {"artifact", "deployment", "service", "environment"} <= set(payload)


def test_an_environment_with_its_own_failure_strategy_round_trips_in_camel_case() -> None:
    """§13: catalog keys (and so payloads' environments) follow the camelCase form."""
    from flowfsm import converter

    env = Environment("prod", ["smoke"], failure_strategy="PAUSE", retry=RetryPolicy(attempts=2))
    data = converter.unstructure(env, Environment)
    assert data["failureStrategy"] == "PAUSE"
    assert "failure_strategy" not in data
    assert converter.structure(data, Environment) == env


def test_the_outbox_delivers_requests_of_an_environment_with_its_own_failure_strategy(store: Store) -> None:
    """§5: a crash between saving and delivering loses no HookRequest: each one the
    engine recorded can be claimed from the store's outbox."""
    pipeline = Pipeline("p", [Environment("dev", ["smoke"], failure_strategy="PAUSE")])
    repository: Any = store()
    engine = FlowEngine(Catalog([service(pipeline=pipeline)]), repository, None)  # the outbox keeps them
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows[0]
    claimed = repository.claim(10)
    assert [r.flow_id for r in claimed] == [flow.id]
    assert claimed[0].payload.environment.failure_strategy == "PAUSE"


# --- more interactions ----------------------------------------------------------------------


def test_retry_policy_asks_for_approval_again_after_a_rejection(store: Store) -> None:
    rig = Rig(store, approval_service(failure_strategy="RETRY", retry=RetryPolicy(attempts=2)))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    prod = rig.flow(flow.id).deployments[1]
    rig.clear()
    rig.engine.handle(ApprovalRejected(prod.id, "alice", reason="not yet"))
    assert rig.events() == ["approval-rejected", "deployment-retried", "approval-requested"]
    retried = rig.flow(flow.id).deployments[1]
    assert (retried.state, retried.attempt, retried.approvals) == (DeploymentState.AWAITING_APPROVAL, 2, ())
    # the rejection of the first attempt, delivered again, is a duplicate
    assert rig.engine.handle(ApprovalRejected(prod.id, "alice", reason="x", attempt=1)).duplicate


def test_an_approval_expires_while_the_flow_is_paused(store: Store) -> None:
    rig = Rig(store, approval_service())
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    rig.engine.handle(PauseFlow(flow.id, "alice", "wait"))
    rig.clock.advance(hours=1)
    assert rig.scheduler.run_once() == 1
    stored = rig.flow(flow.id)
    assert stored.state is FlowState.FAILED  # STOP: the expiry is a failure, pause or not
    assert stored.deployments[1].state is DeploymentState.FAILED


def test_the_same_approver_twice_counts_once(store: Store) -> None:
    gate = ApprovalPolicy(["alice", "bob", "group:rm"], required=2)
    pipeline = Pipeline("p", [Environment("prod", approvals=gate)])
    rig = Rig(store, service(pipeline=pipeline))
    flow = rig.create("1.0.0")[0]
    prod = flow.deployments[0]
    rig.engine.handle(ApprovalGranted(prod.id, "alice"))
    assert rig.engine.handle(ApprovalGranted(prod.id, "Alice ")).duplicate
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.AWAITING_APPROVAL
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "approval"
    assert "1 of 2" in waiting.text
    rig.engine.handle(ApprovalGranted(prod.id, "carol", ["rm"]))
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.NOT_STARTED


def test_an_override_lets_one_attempt_through_and_a_retry_is_held_again(store: Store) -> None:
    pipeline = Pipeline("p", [Environment("prod", ["smoke"])])
    rig = Rig(store, service(pipeline=pipeline, failure_strategy="PAUSE"), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    flow = rig.create("1.0.0")[0]
    prod = flow.deployments[0]
    rig.engine.handle(OverrideFreeze(prod.id, "alice", "hotfix"))
    rig.engine.handle(DeploymentStarted(prod.id))
    rig.engine.handle(DeploymentFailed(prod.id, "crash"))
    rig.clear()
    rig.engine.handle(RetryDeployment(prod.id, "alice"))
    assert rig.events()[-1] == "deployment-held"
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.HELD


def test_a_retry_due_while_paused_waits_for_the_resume(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="RETRY", retry=RetryPolicy(attempts=3, backoff="5m")))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    rig.clock.advance(minutes=5)
    rig.clear()
    rig.scheduler.run_once()
    assert "promotion-retried" not in rig.events()
    assert rig.flow(flow.id).deployments[0].promotions[0].state is PromotionState.FAILED
    rig.engine.handle(ResumeFlow(flow.id, "alice"))
    assert rig.events()[-2:] == ["flow-resumed", "promotion-retried"]
    assert rig.flow(flow.id).deployments[0].promotions[0].attempt == 2


def test_explain_lists_what_work_under_way_waits_for_under_a_pause(store: Store) -> None:
    env = Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m"))
    rig = Rig(store, service(pipeline=Pipeline("p", [env, Environment("prod")])))
    flow = rig.create("1.0.0")[0]
    rig.engine.handle(DeploymentStarted(flow.deployments[0].id))
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    kinds = [w.kind for w in rig.engine.explain(flow.id)]
    assert kinds == ["paused", "cd-finish"]


def test_explain_of_an_announced_deployment_is_cd_start_since_its_announcement(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "cd-start"
    assert waiting.since == T0
    assert waiting.deployment_id == flow.deployments[0].id


def test_explain_of_a_success_says_it_finished(store: Store) -> None:
    rig = Rig(store, service(pipeline=Pipeline("p", [Environment("dev", ["smoke"])])))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    (finished,) = rig.engine.explain(flow.id)
    assert finished.kind == "finished"
    assert finished.details["state"] == "success"


def test_a_paused_mid_check_flow_keeps_the_environment(store: Store) -> None:
    rig = Rig(store, queue_service(failure_strategy="PAUSE"))
    first, second = (rig.create(f"1.{n}.0")[0] for n in range(2))
    rig.deploy(first.id, 0, ResultStatus.FAILED)  # a failed check leaves the deployment completed
    assert rig.flow(first.id).state is FlowState.PAUSED
    assert rig.flow(second.id).deployments[0].state is DeploymentState.QUEUED
    dev = rig.flow(first.id).deployments[0]
    rig.engine.handle(flowfsm.SkipPromotion(dev.id, dev.promotions[0].id, "alice", "flaky"))
    assert rig.flow(first.id).state is FlowState.SUCCESS
    assert rig.flow(second.id).deployments[0].state is DeploymentState.NOT_STARTED


def payload_of(rig: Rig, event: HookEvent) -> dict[str, Any]:
    from flowfsm import converter

    (request,) = [r for r in rig.emitter.requests if r.event is event]
    data: dict[str, Any] = converter.unstructure(request, flowfsm.HookRequest)["payload"]
    return data


def test_held_queued_and_superseded_payloads_name_what_the_contract_asks(store: Store) -> None:
    rig = Rig(
        store,
        service(pipeline=Pipeline("p", [Environment("prod")]), concurrency="newest-wins"),
        freezes=[WEEKEND],
    )
    first = rig.create("1.0.0")[0]  # announced Friday noon
    rig.engine.handle(DeploymentStarted(first.deployments[0].id))
    second = rig.create("1.1.0")[0]
    queued = payload_of(rig, HookEvent.DEPLOYMENT_QUEUED)
    assert {"artifact", "deployment", "service", "environment"} <= set(queued)
    assert queued["deployment"]["id"] == second.deployments[0].id
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    rig.clear()
    third = rig.create("1.2.0")[0]
    held = payload_of(rig, HookEvent.DEPLOYMENT_HELD)
    assert held["window"] == "weekend"
    assert held["until"].startswith("2026-10-26T10:00:00")
    # In line behind the freeze, the newer flow supersedes the older one queued at once.
    assert rig.flow(second.id).state is FlowState.SUPERSEDED
    superseded = payload_of(rig, HookEvent.FLOW_SUPERSEDED)
    assert third.id in superseded["reason"]
    rig.engine.handle(DeploymentCompleted(first.deployments[0].id))  # first leaves prod
    rig.clock.now = WEEKEND_ENDS
    rig.clear()
    rig.scheduler.run_once()
    assert rig.flow(third.id).deployments[0].state is DeploymentState.NOT_STARTED
    assert rig.events(third.id) == ["deployment-created"]


def test_a_failure_in_a_flow_a_person_paused_keeps_the_pause_theirs(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="PAUSE"))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    rig.clear()
    rig.engine.handle(DeploymentFailed(dev.id, "crash"))
    assert rig.events() == ["deployment-failed"]  # no second flow-paused
    rig.clear()
    rig.engine.handle(RetryDeployment(dev.id, "bob"))
    assert "flow-resumed" not in rig.events()
    assert rig.flow(flow.id).state is FlowState.PAUSED
    rig.clear()
    rig.engine.handle(ResumeFlow(flow.id, "alice"))
    assert rig.events() == ["flow-resumed", "deployment-created"]


def test_abort_of_a_policy_paused_flow(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="PAUSE"))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)
    rig.clear()
    rig.engine.handle(AbortFlow(flow.id, "alice", "give up"))
    assert rig.events() == ["flow-aborted"]
    (finished,) = rig.engine.explain(flow.id)
    assert finished.details["state"] == "aborted"


def test_retry_then_pause_after_the_last_attempt(store: Store) -> None:
    rig = Rig(store, service(failure_strategy="RETRY", retry=RetryPolicy(attempts=2, then="PAUSE")))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0, ResultStatus.FAILED)  # attempt 1: retried at once
    dev = rig.flow(flow.id).deployments[0]
    assert dev.promotions[0].attempt == 2
    smoke = dev.promotions[0].id
    rig.clear()
    rig.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.FAILED)]))
    assert rig.events() == ["promotion-failed", "flow-paused"]
    assert rig.flow(flow.id).state is FlowState.PAUSED


def test_newest_wins_never_interrupts_a_verifying_flow(store: Store) -> None:
    rig = Rig(store, service(pipeline=Pipeline("p", [Environment("prod", ["smoke"])]), concurrency="newest-wins"))
    verifying = rig.create("1.0.0")[0]
    dev = verifying.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    waiting = rig.create("1.1.0")[0]
    newest = rig.create("1.2.0")[0]
    assert rig.flow(verifying.id).state is FlowState.IN_PROGRESS
    assert rig.flow(waiting.id).state is FlowState.SUPERSEDED
    assert rig.flow(newest.id).deployments[0].state is DeploymentState.QUEUED


def test_the_outcome_lists_every_flow_the_trigger_changed(store: Store) -> None:
    """§7: ``handle`` returns the flows it created or changed and the HookRequests it
    emitted: a trigger that frees an environment changes the flow it announces too."""
    rig = Rig(store, queue_service())
    first, second = (rig.create(f"1.{n}.0")[0] for n in range(2))
    dev = first.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    rig.clear()
    outcome = rig.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    assert {f.id for f in outcome.flows} == {first.id, second.id}
    assert list(outcome.hook_requests) == rig.emitter.requests
    assert [r.event.value for r in outcome.hook_requests if r.flow_id == second.id] == ["deployment-created"]
    (announced,) = [f for f in outcome.flows if f.id == second.id]
    assert announced.deployments[0].state is DeploymentState.NOT_STARTED


def test_the_hook_requests_ending_superseded_flows_are_in_the_outcome_of_the_release(store: Store) -> None:
    rig = Rig(store, service(pipeline=Pipeline("p", [Environment("prod", ["smoke"])]), concurrency="newest-wins"))
    deploying = rig.create("1.0.0")[0]
    rig.engine.handle(DeploymentStarted(deploying.deployments[0].id))
    waiting = rig.create("1.1.0")[0]
    rig.clear()
    outcome = rig.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.2.0")))
    (newest,) = outcome.flows  # §3.1: ArtifactCreated returns the artifact's flows
    assert newest.artifact.version == "1.2.0"
    assert list(outcome.hook_requests) == rig.emitter.requests  # the older flow's end included
    assert [r.flow_id for r in outcome.hook_requests if r.event is HookEvent.FLOW_SUPERSEDED] == [waiting.id]


def test_an_approved_flow_joins_the_line_behind_those_already_waiting(store: Store) -> None:
    """§11: approvals come first and do not occupy the environment; arrival order is
    the order flows started waiting for it, not the order they were created in."""
    gate = ApprovalPolicy(["alice"])
    rig = Rig(
        store, service(pipeline=Pipeline("p", [Environment("prod", ["smoke"], approvals=gate)]), concurrency="queue")
    )
    occupant, older, newer = (rig.create(f"1.{n}.0")[0] for n in range(3))
    rig.engine.handle(ApprovalGranted(occupant.deployments[0].id, "alice"))
    assert rig.flow(older.id).deployments[0].state is DeploymentState.AWAITING_APPROVAL  # not queued behind it
    rig.engine.handle(ApprovalGranted(newer.deployments[0].id, "alice"))
    rig.engine.handle(ApprovalGranted(older.deployments[0].id, "alice"))
    assert [rig.flow(f.id).deployments[0].state for f in (newer, older)] == [DeploymentState.QUEUED] * 2
    rig.deploy(occupant.id, 0)
    assert rig.flow(newer.id).deployments[0].state is DeploymentState.NOT_STARTED
    assert rig.flow(older.id).deployments[0].state is DeploymentState.QUEUED


def test_a_promotion_of_another_deployment_is_unknown_to_steering(store: Store) -> None:
    rig = Rig(store, service())
    flow = rig.create("1.0.0")[0]
    dev, prod = flow.deployments
    for trigger in (
        flowfsm.RetryPromotion(dev.id, prod.promotions[0].id, "alice"),
        flowfsm.SkipPromotion(dev.id, prod.promotions[0].id, "alice", "x"),
    ):
        with pytest.raises(flowfsm.UnknownPromotion):
            rig.engine.handle(trigger)


def test_timers_survive_a_restart(tmp_path: Path) -> None:
    """§10: durable timers are stored with their flow and fire after a restart."""
    path = str(tmp_path / "flows.db")
    env = Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m"))
    catalog = Catalog([service(pipeline=Pipeline("p", [env]))])
    clock = FakeClock(T0)
    with SQLiteRepository(path) as repository:
        engine = FlowEngine(catalog, repository, None, clock=clock)
        flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows[0]
        engine.handle(DeploymentStarted(flow.deployments[0].id))
    clock.advance(minutes=10)
    with SQLiteRepository(path) as repository:
        engine = FlowEngine(catalog, repository, None, clock=clock)
        assert Scheduler(repository, engine).run_once() == 1
        assert repository.get(flow.id).state is FlowState.FAILED


def test_a_soak_ending_while_paused_succeeds_the_deployment_and_holds_the_next(store: Store) -> None:
    pipeline = Pipeline("p", [Environment("dev", ["smoke"], soak="1h"), Environment("prod")])
    rig = Rig(store, service(pipeline=pipeline))
    flow = rig.create("1.0.0")[0]
    rig.deploy(flow.id, 0)
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    rig.clock.advance(hours=1)
    rig.clear()
    assert rig.scheduler.run_once() == 1
    assert rig.events() == ["deployment-succeeded"]
    assert rig.flow(flow.id).deployments[0].state is DeploymentState.SUCCESS
    rig.clear()
    rig.engine.handle(ResumeFlow(flow.id, "alice"))
    assert rig.events() == ["flow-resumed", "deployment-created"]


def test_a_verify_timeout_while_a_person_paused_the_flow_fails_it_under_stop(store: Store) -> None:
    env = Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(verify="1h"))
    rig = Rig(store, service(pipeline=Pipeline("p", [env])))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    rig.engine.handle(PauseFlow(flow.id, "alice", "look"))
    rig.clock.advance(hours=1)
    assert rig.scheduler.run_once() == 1
    assert rig.flow(flow.id).state is FlowState.FAILED


def test_failure_timeout_approval_and_supersede_payloads_round_trip(store: Store) -> None:
    from flowfsm import converter

    gate = ApprovalPolicy(["alice"], expiry="1h")
    pipeline = Pipeline(
        "p",
        [
            Environment("dev", ["smoke"], timeouts=flowfsm.Timeouts(deploy="10m", verify="10m")),
            Environment("prod", ["smoke"], approvals=gate),
        ],
    )
    rig = Rig(store, service(pipeline=pipeline, failure_strategy="RETRY", concurrency="newest-wins"))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentFailed(dev.id, "crash"))  # retried: attempt 2
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.clock.advance(minutes=10)
    rig.scheduler.run_once()  # deploy timeout: retried, attempt 3
    rig.deploy(flow.id, 0)
    rig.engine.handle(ApprovalRejected(flow.deployments[1].id, "alice", "not now"))  # retried: asks again
    rig.clock.advance(hours=1)
    rig.scheduler.run_once()  # expired: asks again, attempt 3
    prod = rig.flow(flow.id).deployments[1]
    assert (prod.state, prod.attempt) == (DeploymentState.AWAITING_APPROVAL, 3)
    other = rig.create("2.0.0")[0]
    rig.create("2.1.0")  # supersedes the flow not yet started
    assert rig.flow(other.id).state is FlowState.SUPERSEDED
    events = {r.event for r in rig.emitter.requests}
    assert {
        HookEvent.DEPLOYMENT_FAILED,
        HookEvent.DEPLOYMENT_RETRIED,
        HookEvent.APPROVAL_REJECTED,
        HookEvent.APPROVAL_EXPIRED,
        HookEvent.FLOW_SUPERSEDED,
    } <= events
    for request in rig.emitter.requests:
        data = converter.unstructure(request, flowfsm.HookRequest)
        assert converter.structure(data, flowfsm.HookRequest) == request


def test_explain_names_pending_promotions_with_a_retried_ones_attempt(store: Store) -> None:
    pipeline = Pipeline("p", [Environment("dev", ["smoke", "perf"], timeouts=flowfsm.Timeouts(verify="1h"))])
    rig = Rig(store, service(pipeline=pipeline, failure_strategy="RETRY"))
    flow = rig.create("1.0.0")[0]
    dev = flow.deployments[0]
    rig.engine.handle(DeploymentStarted(dev.id))
    rig.engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    rig.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.FAILED)]))
    (waiting,) = rig.engine.explain(flow.id)
    assert waiting.kind == "promotions"
    assert [(p["name"], p["attempt"]) for p in waiting.details["promotions"]] == [("smoke", 2), ("perf", 1)]
    assert waiting.until == T0 + dt.timedelta(hours=1)
    assert "'smoke'" in waiting.text
    assert "'perf'" in waiting.text


def test_newest_wins_never_announces_an_older_flow_a_freeze_held_with_a_newer_one(store: Store) -> None:
    """§11 newest-wins, as a CD user reads it: when a freeze ends only the newest held
    release is announced; the CD system is never told to deploy one already replaced."""
    prod = Pipeline("p", [Environment("prod")])
    rig = Rig(store, service(pipeline=prod, concurrency="newest-wins"), freezes=[WEEKEND])
    rig.clock.now = dt.datetime(2026, 10, 24, 9, 0, tzinfo=dt.UTC)
    older = rig.create("1.0.0")[0]
    rig.clock.advance(minutes=1)
    rig.create("1.1.0")
    rig.clock.now = WEEKEND_ENDS
    rig.scheduler.run_once()
    assert rig.flow(older.id).state is FlowState.SUPERSEDED
    assert "deployment-created" not in rig.events(older.id)
