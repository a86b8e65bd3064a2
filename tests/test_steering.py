"""Steering a flow and failure policies (SPEC §8, docs/steering.md), on every backend.

Each scenario runs on the in-memory, SQLite and PostgreSQL repositories; tests move
a fake clock and never sleep.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from flowfsm import (
    AbortFlow,
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
    HookEvent,
    HookRequest,
    InvalidTransition,
    Pause,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    PromotionState,
    ResultStatus,
    ResumeFlow,
    RetryDeployment,
    RetryPolicy,
    RetryPromotion,
    Rollback,
    RollbackPayload,
    Service,
    SkipPromotion,
    SteeringPayload,
    Timeouts,
    TimerKind,
    ValidationError,
)
from flowfsm.catalog import Catalog as CatalogClass
from flowfsm.converter import from_json, structure, to_json, unstructure
from flowfsm.emitters import RecordingEmitter
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository, SQLiteRepository
from flowfsm.repositories._common import flow_body, flow_from_body
from flowfsm.scheduling import Scheduler
from flowfsm.strategies import Failure, Stop
from flowfsm.testing import FakeClock, SequentialIds
from flowfsm.triggers import TimerFired, Trigger
from tests.conftest import two_actions

ARTIFACT = Artifact("com.acme", "api", "1.0.0")


def service(strategy: str = "STOP", *, retry: RetryPolicy | None = None, **dev: Any) -> Service:
    """dev (smoke, perf) → prod (smoke), a webhook on every event."""
    return Service(
        "svc",
        ["com.acme:api"],
        Pipeline("p", [Environment("dev", ["smoke", "perf"], **dev), Environment("prod", ["smoke"])]),
        failure_strategy=strategy,
        retry=retry,
        webhooks=[two_actions(f"wh-{e.value}", e) for e in HookEvent],
    )


@pytest.fixture
def store(make_repository: Callable[[], Repository]) -> Callable[[], Repository]:
    """A factory of repositories sharing one store (conftest's ``make_repository``)."""
    return make_repository


class World:
    """An engine and a scheduler on one store, with a fake clock."""

    def __init__(self, make: Callable[[], Repository], svc: Service | None = None, **engine: Any) -> None:
        self.clock = FakeClock()
        self.repository: Repository = make()
        self.emitter = RecordingEmitter()
        self.engine = FlowEngine(
            Catalog([svc or service()]),
            self.repository,
            self.emitter,
            clock=self.clock,
            id_factory=SequentialIds(),
            **engine,
        )
        self.scheduler = Scheduler(self.repository, self.engine, clock=self.clock)

    def start(self, artifact: Artifact = ARTIFACT) -> Flow:
        (flow,) = self.engine.handle(ArtifactCreated(artifact)).flows
        return flow

    def get(self, flow: Flow) -> Flow:
        return self.repository.get(flow.id)

    def events(self) -> list[str]:
        """The events emitted so far (each once: each has two actions), then forgets them."""
        seen = [r.event.value for r in self.emitter.requests if r.action.name == "a1"]
        self.emitter.requests.clear()
        return seen

    def requests(self, event: HookEvent) -> list[HookRequest]:
        return [r for r in self.emitter.requests if r.event is event and r.action.name == "a1"]

    def deploy(self, flow: Flow, index: int) -> None:
        deployment_id = self.get(flow).deployments[index].id
        self.engine.handle(DeploymentStarted(deployment_id))
        self.engine.handle(DeploymentCompleted(deployment_id))

    def result(self, flow: Flow, index: int, name: str, status: ResultStatus, **kwargs: Any) -> Any:
        deployment = self.get(flow).deployments[index]
        (promotion,) = [p for p in deployment.promotions if p.name == name]
        result = PromotionResult(promotion.id, status, **kwargs)
        return self.engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))

    def passes(self, flow: Flow, index: int) -> None:
        for promotion in self.get(flow).deployments[index].promotions:
            if promotion.state is PromotionState.PENDING:
                self.result(flow, index, promotion.name, ResultStatus.PASSED)

    def promotion_id(self, flow: Flow, index: int, name: str) -> str:
        (promotion,) = [p for p in self.get(flow).deployments[index].promotions if p.name == name]
        return promotion.id

    def unchanged(self, flow: Flow, trigger: Trigger) -> None:
        """``trigger`` is a duplicate: nothing changes, nothing is emitted."""
        before, sent = self.get(flow), len(self.emitter.requests)
        assert self.engine.handle(trigger).duplicate
        assert self.get(flow) == before
        assert len(self.emitter.requests) == sent

    def refused(self, flow: Flow, trigger: Trigger, *words: str) -> InvalidTransition:
        """``trigger`` is refused, naming why; the store is as it was."""
        before, sent = self.get(flow), len(self.emitter.requests)
        with pytest.raises(InvalidTransition) as refused:
            self.engine.handle(trigger)
        for word in words:
            assert word in str(refused.value)
        assert self.get(flow) == before
        assert len(self.emitter.requests) == sent
        return refused.value


# --- triggers: their fields, their JSON ---------------------------------------------------


def test_operator_triggers_take_their_fields_in_the_spec_order() -> None:
    assert PauseFlow("f", "alice", "lunch") == PauseFlow("f", actor="alice", reason="lunch")
    assert ResumeFlow("f", "alice").reason is None
    assert AbortFlow("f", "alice", "bad build").actor == "alice"
    assert RetryPromotion("d", "p", "alice") == RetryPromotion("d", "p", actor="alice", reason=None)
    assert SkipPromotion("d", "p", "alice", "flaky check").reason == "flaky check"
    assert RetryDeployment("d", "alice", "node restarted").deployment_id == "d"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: PauseFlow("f", None), "actor"),  # type: ignore[arg-type]  # what the test is about
        (lambda: ResumeFlow("f", " "), "actor"),
        (lambda: AbortFlow("f", None, "why"), "actor"),  # type: ignore[arg-type]  # what the test is about
        (lambda: RetryPromotion("d", "p", None), "actor"),  # type: ignore[arg-type]  # what the test is about
        (lambda: RetryDeployment("d", None), "actor"),  # type: ignore[arg-type]  # what the test is about
        (lambda: SkipPromotion("d", "p", "alice", None), "reason"),  # type: ignore[arg-type]  # what the test is about
        (lambda: SkipPromotion("d", "p", "alice", ""), "reason"),
        (lambda: PauseFlow("", "alice"), "flow_id"),
    ],
)
def test_operator_triggers_require_an_actor_and_skip_a_reason(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make()
    assert refused.value.field == field


@pytest.mark.parametrize(
    "trigger",
    [
        PauseFlow("f", "alice"),
        PauseFlow("f", "alice", "lunch"),
        ResumeFlow("f", "alice", "back"),
        AbortFlow("f", "alice"),
        RetryPromotion("d", "p", "alice"),
        SkipPromotion("d", "p", "alice", "flaky"),
        RetryDeployment("d", "alice", "again"),
    ],
)
def test_operator_triggers_round_trip_as_json(trigger: Trigger) -> None:
    text = to_json(trigger, Trigger)
    assert json.loads(text)["type"] == type(trigger).__name__
    assert from_json(text, Trigger) == trigger


def test_new_states_and_events_have_the_spec_spellings() -> None:
    assert [FlowState.PAUSED.value, FlowState.ABORTED.value, FlowState.SUPERSEDED.value] == [
        "paused",
        "aborted",
        "superseded",
    ]
    assert PromotionState.SKIPPED.value == "skipped"
    assert {e.value for e in HookEvent} >= {
        "flow-paused",
        "flow-resumed",
        "flow-aborted",
        "promotion-retried",
        "promotion-skipped",
        "deployment-retried",
        "rollback-requested",
        "flow-superseded",
    }
    assert [s.value for s in FailureStrategy] == ["STOP", "RETRY", "PAUSE", "ROLLBACK"]
    assert TimerKind.RETRY.value == "retry"


def test_a_steered_flow_and_its_payloads_round_trip() -> None:
    flow = Flow(
        "f",
        ARTIFACT,
        "svc",
        [],
        FlowState.PAUSED,
        3,
        pause=Pause("flowfsm", "promotion 'smoke' failed", ["p1"], held=True),
        rollback=Rollback("dev", Artifact("com.acme", "api", "0.9.0")),
    )
    assert structure(unstructure(flow), Flow) == flow
    assert unstructure(flow)["pause"] == {
        "actor": "flowfsm",
        "reason": "promotion 'smoke' failed",
        "failed": ["p1"],
        "held": True,
    }


# --- storage: attempts, pauses and rollbacks in every backend ----------------------------


def test_a_body_without_steering_is_written_as_before() -> None:
    flow = Flow("f", ARTIFACT, "svc", [], FlowState.IN_PROGRESS, 1)
    assert json.loads(flow_body(flow))[0] == 2  # format 2: what an earlier flowfsm reads


def test_a_body_written_before_attempts_reads_as_attempt_1() -> None:
    old = json.dumps(
        [2, "f", "g", "n", "1", "svc", "inProgress", None, None, [["d", "dev", "failed", [["p", "smoke", "failed"]]]]]
    )
    flow = flow_from_body(old, 4)
    assert flow.deployments[0].attempt == 1
    assert flow.deployments[0].promotions[0].attempt == 1
    assert flow.pause is None
    assert flow.rollback is None


def test_a_sqlite_store_written_by_this_flowfsm_still_opens(tmp_path: Path) -> None:
    """Retried and paused flows are stored, closed, and read back by a new connection."""
    path = tmp_path / "flows.db"
    world = World(lambda: SQLiteRepository(path), service("PAUSE"))
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    world.engine.handle(RetryPromotion(flow.deployments[0].id, world.promotion_id(flow, 0, "smoke"), "alice"))
    world.engine.handle(PauseFlow(flow.id, "bob", "maintenance"))
    stored = world.get(flow)
    world.repository.close()  # type: ignore[attr-defined]  # the SQLite backend closes
    with sqlite3.connect(path) as db:
        (body,) = db.execute("SELECT body FROM flows WHERE id = ?", (flow.id,)).fetchone()
    assert json.loads(body)[0] == 3
    reopened = SQLiteRepository(path)
    try:
        again = reopened.get(flow.id)
    finally:
        reopened.close()
    assert again == stored
    assert again.deployments[0].promotions[0].attempt == 2
    assert again.pause == Pause("bob", "maintenance")


def test_attempts_pauses_and_rollbacks_are_stored(store: Callable[[], Repository]) -> None:
    world = World(store, service("ROLLBACK"))
    old = world.start(Artifact("com.acme", "api", "0.9.0"))
    world.deploy(old, 0)
    world.passes(old, 0)
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    assert world.get(flow).rollback == Rollback("dev", Artifact("com.acme", "api", "0.9.0"))
    fresh = world.start(Artifact("com.acme", "api", "1.1.0"))
    world.engine.handle(DeploymentStarted(fresh.deployments[0].id))
    world.engine.handle(DeploymentFailed(fresh.deployments[0].id, "crash"))
    assert world.get(fresh).state is FlowState.FAILED


# --- pause, resume, abort ------------------------------------------------------------------


def test_a_paused_flow_records_work_under_way_and_begins_nothing_new(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.engine.handle(DeploymentStarted(flow.deployments[0].id))
    world.events()
    outcome = world.engine.handle(PauseFlow(flow.id, "alice", "release freeze"))
    assert outcome.flows[0].state is FlowState.PAUSED
    assert world.events() == ["flow-paused"]
    world.unchanged(flow, PauseFlow(flow.id, "alice", "release freeze"))
    world.engine.handle(DeploymentCompleted(flow.deployments[0].id))  # a fact: recorded
    world.passes(flow, 0)
    assert world.get(flow).deployments[0].state is DeploymentState.SUCCESS
    assert "deployment-created" not in world.events()  # the next deployment is held
    error = world.refused(flow, DeploymentStarted(flow.deployments[1].id), "paused")
    assert (error.entity, error.entity_id) == ("deployment", flow.deployments[1].id)
    world.engine.handle(ResumeFlow(flow.id, "alice", "freeze over"))
    assert world.events() == ["flow-resumed", "deployment-created"]
    assert world.get(flow).state is FlowState.IN_PROGRESS
    assert world.get(flow).pause is None
    world.unchanged(flow, ResumeFlow(flow.id, "alice"))
    world.engine.handle(DeploymentStarted(flow.deployments[1].id))
    assert world.events() == ["deployment-started"]


def test_steering_payloads_name_the_actor_and_the_reason(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.engine.handle(PauseFlow(flow.id, "alice", "release freeze"))
    (request,) = world.requests(HookEvent.FLOW_PAUSED)
    payload = request.payload
    assert isinstance(payload, SteeringPayload)
    assert (payload.actor, payload.reason, payload.deployment.id) == ("alice", "release freeze", flow.deployments[0].id)
    assert structure(unstructure(request), HookRequest) == request


def test_resume_announces_nothing_when_nothing_was_held(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.events()
    world.engine.handle(PauseFlow(flow.id, "alice"))
    world.engine.handle(ResumeFlow(flow.id, "alice"))
    assert world.events() == ["flow-paused", "flow-resumed"]  # dev was announced when the flow began


def test_a_flow_whose_last_deployment_succeeds_while_paused_succeeds_on_resume(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.deploy(flow, 0)
    world.passes(flow, 0)
    world.deploy(flow, 1)
    world.engine.handle(PauseFlow(flow.id, "alice"))
    world.passes(flow, 1)
    assert world.get(flow).state is FlowState.PAUSED
    world.events()
    world.engine.handle(ResumeFlow(flow.id, "alice"))
    assert world.events() == ["flow-resumed", "flow-succeeded"]
    assert world.get(flow).state is FlowState.SUCCESS


def test_an_aborted_flow_never_moves_again_and_loses_its_timers(store: Callable[[], Repository]) -> None:
    world = World(store, service(timeouts=Timeouts(deploy="30m")))
    flow = world.start()
    world.engine.handle(DeploymentStarted(flow.deployments[0].id))
    assert world.repository.timers(flow.id)
    world.events()
    world.engine.handle(AbortFlow(flow.id, "alice", "wrong artifact"))
    assert world.events() == ["flow-aborted"]
    assert world.get(flow).state is FlowState.ABORTED
    assert world.repository.timers(flow.id) == []
    world.unchanged(flow, AbortFlow(flow.id, "bob"))
    world.refused(flow, DeploymentCompleted(flow.deployments[0].id), "finished")
    world.refused(flow, PauseFlow(flow.id, "alice"), "aborted")
    world.unchanged(flow, ResumeFlow(flow.id, "alice"))  # not paused: nothing to resume
    world.clock.advance(hours=1)
    world.scheduler.run_once()
    assert world.get(flow).state is FlowState.ABORTED


def test_a_paused_flow_can_be_aborted_and_a_finished_one_cannot(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.engine.handle(PauseFlow(flow.id, "alice"))
    world.engine.handle(AbortFlow(flow.id, "alice"))
    assert world.get(flow).state is FlowState.ABORTED
    assert world.get(flow).pause is None
    done = world.start(Artifact("com.acme", "api", "2.0.0"))
    for index in (0, 1):
        world.deploy(done, index)
        world.passes(done, index)
    world.refused(done, AbortFlow(done.id, "alice"), "already succeeded")


# --- retries, skips, attempts -----------------------------------------------------------


def test_a_person_retries_a_failed_deployment_of_a_paused_flow(store: Callable[[], Repository]) -> None:
    world = World(store, service("PAUSE"))
    flow = world.start()
    deployment_id = flow.deployments[0].id
    world.engine.handle(DeploymentStarted(deployment_id))
    world.events()
    world.engine.handle(DeploymentFailed(deployment_id, "image pull failed"))
    assert world.events() == ["deployment-failed", "flow-paused"]
    stored = world.get(flow)
    assert stored.state is FlowState.PAUSED
    assert stored.pause == Pause("flowfsm", "image pull failed", [deployment_id])
    world.refused(flow, ResumeFlow(flow.id, "alice"), "failure policy", "retry or skip")
    world.engine.handle(RetryDeployment(deployment_id, "alice", "registry back"))
    assert world.events() == ["deployment-retried", "flow-resumed", "deployment-created"]
    retried = world.get(flow).deployments[0]
    assert (retried.state, retried.attempt) == (DeploymentState.NOT_STARTED, 2)
    assert [p.attempt for p in retried.promotions] == [2, 2]
    world.unchanged(flow, RetryDeployment(deployment_id, "alice", "registry back"))
    world.deploy(flow, 0)
    world.passes(flow, 0)
    assert world.get(flow).deployments[0].state is DeploymentState.SUCCESS


def test_skipping_the_failed_promotion_resumes_a_paused_flow(store: Callable[[], Repository]) -> None:
    world = World(store, service("PAUSE"))
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "perf", ResultStatus.PASSED)
    world.events()
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    assert world.events() == ["promotion-failed", "flow-paused"]
    assert world.get(flow).deployments[0].state is DeploymentState.COMPLETED  # the failure stays recorded
    smoke = world.promotion_id(flow, 0, "smoke")
    world.engine.handle(SkipPromotion(flow.deployments[0].id, smoke, "alice", "known flaky"))
    (skipped,) = world.requests(HookEvent.PROMOTION_SKIPPED)
    assert world.events() == [
        "promotion-skipped",
        "deployment-succeeded",
        "flow-resumed",
        "deployment-created",
    ]
    assert isinstance(skipped.payload, SteeringPayload)
    assert skipped.payload.promotion is not None
    assert skipped.payload.promotion.state is PromotionState.SKIPPED
    assert (skipped.payload.actor, skipped.payload.reason) == ("alice", "known flaky")
    world.unchanged(flow, SkipPromotion(flow.deployments[0].id, smoke, "alice", "known flaky"))
    world.refused(flow, RetryPromotion(flow.deployments[0].id, smoke, "alice"), "skipped")


def test_a_retried_promotion_ignores_stale_results(store: Callable[[], Repository]) -> None:
    world = World(store, service("PAUSE"))
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED, attempt=1)
    smoke = world.promotion_id(flow, 0, "smoke")
    world.engine.handle(RetryPromotion(flow.deployments[0].id, smoke, "alice", "rerun"))
    assert world.get(flow).state is FlowState.IN_PROGRESS
    promotion = world.get(flow).deployments[0].promotions[0]
    assert (promotion.state, promotion.attempt) == (PromotionState.PENDING, 2)
    before = world.get(flow)
    assert world.result(flow, 0, "smoke", ResultStatus.FAILED, attempt=1).duplicate  # stale
    assert world.get(flow) == before
    world.refused(
        flow,
        PromotionCompleted(flow.deployments[0].id, smoke, [PromotionResult(smoke, ResultStatus.PASSED, attempt=3)]),
        "attempt 3",
    )
    world.result(flow, 0, "smoke", ResultStatus.PASSED, attempt=2)
    assert world.get(flow).deployments[0].promotions[0].state is PromotionState.SUCCESS
    world.unchanged(flow, RetryPromotion(flow.deployments[0].id, smoke, "alice", "rerun"))


def test_retries_and_skips_that_contradict_the_record_are_refused(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    deployment_id = flow.deployments[0].id
    smoke = world.promotion_id(flow, 0, "smoke")
    world.refused(flow, RetryDeployment(deployment_id, "alice"), "has not failed")
    world.refused(flow, RetryPromotion(deployment_id, smoke, "alice"), "has not failed")
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.PASSED)
    world.refused(flow, RetryPromotion(deployment_id, smoke, "alice"), "already passed")
    world.refused(flow, SkipPromotion(deployment_id, smoke, "alice", "why not"), "already passed")
    world.result(flow, 0, "perf", ResultStatus.FAILED)  # STOP: the flow fails
    world.refused(flow, RetryDeployment(deployment_id, "alice"), "finished")


def test_a_skipped_promotion_counts_as_passed_before_its_deployment_completes(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.engine.handle(
        SkipPromotion(flow.deployments[0].id, world.promotion_id(flow, 0, "perf"), "alice", "no perf env")
    )
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.PASSED)
    assert world.get(flow).deployments[0].state is DeploymentState.SUCCESS
    assert world.result(flow, 0, "perf", ResultStatus.FAILED).duplicate  # a late result for a skipped check


# --- failure policies -------------------------------------------------------------------


def test_retry_with_a_backoff_retries_through_a_durable_timer(store: Callable[[], Repository]) -> None:
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=2, backoff="5m")))
    flow = world.start()
    world.deploy(flow, 0)
    world.events()
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    assert world.events() == ["promotion-failed"]
    deployment_id = flow.deployments[0].id
    (timer,) = [t for t in world.repository.timers(flow.id) if t.kind is TimerKind.RETRY]
    assert timer.due == world.clock.now + dt.timedelta(minutes=5)
    world.clock.advance(minutes=4)
    world.scheduler.run_once()
    assert world.get(flow).deployments[0].promotions[0].state is PromotionState.FAILED  # not yet
    world.clock.advance(minutes=1)
    world.scheduler.run_once()
    assert world.events() == ["promotion-retried"]
    promotion = world.get(flow).deployments[0].promotions[0]
    assert (promotion.state, promotion.attempt) == (PromotionState.PENDING, 2)
    assert world.engine.handle(TimerFired(deployment_id, TimerKind.RETRY)).duplicate  # a stale timer
    world.result(flow, 0, "smoke", ResultStatus.FAILED)  # the last attempt: then STOP
    assert world.get(flow).state is FlowState.FAILED
    assert world.repository.timers(flow.id) == []


def test_retry_without_a_backoff_retries_at_once_as_flowfsm(store: Callable[[], Repository]) -> None:
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=3)))
    flow = world.start()
    deployment_id = flow.deployments[0].id
    world.engine.handle(DeploymentStarted(deployment_id))
    world.events()
    world.engine.handle(DeploymentFailed(deployment_id, "node lost"))
    assert world.events() == ["deployment-failed", "deployment-retried", "deployment-created"]
    world.engine.handle(DeploymentStarted(deployment_id))
    world.engine.handle(DeploymentFailed(deployment_id, "node lost"))
    world.events()
    assert world.get(flow).deployments[0].attempt == 3
    world.engine.handle(DeploymentStarted(deployment_id))
    world.engine.handle(DeploymentFailed(deployment_id, "node lost"))
    assert world.events() == ["deployment-started", "deployment-failed", "flow-failed"]
    assert world.get(flow).state is FlowState.FAILED


def test_retry_payloads_name_flowfsm_and_the_failure(store: Callable[[], Repository]) -> None:
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=2)))
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    (request,) = world.requests(HookEvent.PROMOTION_RETRIED)
    payload = request.payload
    assert isinstance(payload, SteeringPayload)
    assert (payload.actor, payload.reason) == ("flowfsm", "promotion 'smoke' failed")
    assert payload.promotion is not None
    assert payload.promotion.attempt == 2


def test_retry_then_pause_and_an_environment_override(store: Callable[[], Repository]) -> None:
    svc = service(
        "STOP",
        failure_strategy="RETRY",
        retry=RetryPolicy(attempts=2, then="PAUSE"),
    )
    world = World(store, svc)
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    assert world.get(flow).deployments[0].promotions[0].attempt == 2
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    stored = world.get(flow)
    assert stored.state is FlowState.PAUSED
    assert stored.pause is not None
    assert stored.pause.actor == "flowfsm"
    world.engine.handle(SkipPromotion(flow.deployments[0].id, world.promotion_id(flow, 0, "smoke"), "alice", "flaky"))
    world.passes(flow, 0)
    world.deploy(flow, 1)
    world.result(flow, 1, "smoke", ResultStatus.FAILED)  # prod: the service's own STOP
    assert world.get(flow).state is FlowState.FAILED


def test_rollback_stops_then_names_the_artifact_to_return_to(store: Callable[[], Repository]) -> None:
    world = World(store, service("ROLLBACK"))
    first = world.start(Artifact("com.acme", "api", "0.8.0"))
    world.deploy(first, 0)
    world.passes(first, 0)
    second = world.start(Artifact("com.acme", "api", "0.9.0"))
    world.deploy(second, 0)
    world.clock.advance(minutes=1)
    world.passes(second, 0)
    flow = world.start()
    world.deploy(flow, 0)
    world.events()
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    assert world.events() == ["promotion-failed", "deployment-failed", "flow-failed", "rollback-requested"]


def test_rollback_payload_names_the_environment_and_artifact(store: Callable[[], Repository]) -> None:
    world = World(store, service("ROLLBACK"))
    first = world.start(Artifact("com.acme", "api", "0.9.0"))
    world.deploy(first, 0)
    world.passes(first, 0)
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    (request,) = world.requests(HookEvent.ROLLBACK_REQUESTED)
    payload = request.payload
    assert isinstance(payload, RollbackPayload)
    assert payload.environment.name == "dev"
    assert payload.rollback_to == Artifact("com.acme", "api", "0.9.0")
    assert payload.actor == "flowfsm"
    assert structure(unstructure(request), HookRequest) == request
    assert world.get(flow).rollback == Rollback("dev", Artifact("com.acme", "api", "0.9.0"))


def test_rollback_with_nothing_to_return_to_says_so(store: Callable[[], Repository]) -> None:
    world = World(store, service("ROLLBACK"))
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)
    (request,) = world.requests(HookEvent.ROLLBACK_REQUESTED)
    assert isinstance(request.payload, RollbackPayload)
    assert request.payload.rollback_to is None
    assert unstructure(request.payload)["rollbackTo"] is None
    assert world.get(flow).rollback == Rollback("dev", None)


# --- a custom strategy sees every kind of failure -----------------------------------------


class Counting:
    """A user's strategy: it records each failure's kind and what failed, then stops."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def on_failure(self, failure: Failure) -> None:
        self.seen.append((failure.kind.value, failure.failed_id, failure.attempt))
        Stop().on_failure(failure)


def test_a_custom_strategy_works_with_every_failure_kind(store: Callable[[], Repository]) -> None:
    counting = Counting()
    svc = service("MINE", timeouts=Timeouts(deploy="30m", verify="1h"))
    world = World(store, svc, strategies={"MINE": counting})
    promotion = world.start(Artifact("com.acme", "api", "1"))
    world.deploy(promotion, 0)
    world.result(promotion, 0, "smoke", ResultStatus.FAILED)
    deployment = world.start(Artifact("com.acme", "api", "2"))
    world.engine.handle(DeploymentStarted(deployment.deployments[0].id))
    world.engine.handle(DeploymentFailed(deployment.deployments[0].id, "crash"))
    deploy_timeout = world.start(Artifact("com.acme", "api", "3"))
    world.engine.handle(DeploymentStarted(deploy_timeout.deployments[0].id))
    world.clock.advance(minutes=31)
    world.scheduler.run_once()
    verify_timeout = world.start(Artifact("com.acme", "api", "4"))
    world.deploy(verify_timeout, 0)
    world.clock.advance(minutes=61)
    world.scheduler.run_once()
    kinds = [kind for kind, _, _ in counting.seen]
    assert kinds == ["promotion", "deployment", "timeout", "timeout", "timeout"]
    assert [attempt for _, _, attempt in counting.seen] == [1, 1, 1, 1, 1]
    for flow in (promotion, deployment, deploy_timeout, verify_timeout):
        assert world.get(flow).state is FlowState.FAILED


@pytest.mark.parametrize("strategy", ["RETRY", "PAUSE", "ROLLBACK"])
def test_every_builtin_policy_takes_a_timeout(store: Callable[[], Repository], strategy: str) -> None:
    world = World(store, service(strategy, retry=RetryPolicy(attempts=2), timeouts=Timeouts(deploy="30m")))
    flow = world.start()
    world.engine.handle(DeploymentStarted(flow.deployments[0].id))
    world.clock.advance(minutes=31)
    world.scheduler.run_once()
    stored = world.get(flow)
    expected = {
        "RETRY": (FlowState.IN_PROGRESS, DeploymentState.NOT_STARTED, 2),
        "PAUSE": (FlowState.PAUSED, DeploymentState.FAILED, 1),
        "ROLLBACK": (FlowState.FAILED, DeploymentState.FAILED, 1),
    }[strategy]
    assert (stored.state, stored.deployments[0].state, stored.deployments[0].attempt) == expected


# --- the catalog ---------------------------------------------------------------------------


def test_a_catalog_file_sets_policies_per_service_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        """
[[services]]
id = "svc"
artifacts = ["com.acme:api"]
failureStrategy = "RETRY"
retry = { attempts = 3, backoff = "30s", then = "PAUSE" }

[services.pipeline]
name = "p"

[[services.pipeline.environments]]
name = "dev"
promotions = ["smoke"]

[[services.pipeline.environments]]
name = "prod"
promotions = ["smoke"]
failureStrategy = "PAUSE"
"""
    )
    (svc,) = CatalogClass.from_file(file)
    assert svc.retry == RetryPolicy(attempts=3, backoff=dt.timedelta(seconds=30), then="PAUSE")
    assert svc.policy("dev") == ("RETRY", svc.retry)
    assert svc.policy("prod")[0] == "PAUSE"
    assert unstructure(svc)["retry"] == {"attempts": 3, "backoff": "30s", "then": "PAUSE"}


@pytest.mark.parametrize(
    ("retry", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 101}, "attempts"),
        ({"attempts": -1}, "attempts"),
        ({"backoff": "soon"}, "backoff"),
        ({"then": "RETRY"}, "then"),
    ],
)
def test_a_bad_retry_policy_names_its_field(retry: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        structure(retry, RetryPolicy)
    assert field in refused.value.field


def test_an_unknown_then_or_environment_strategy_is_refused_up_front() -> None:
    with pytest.raises(ValidationError) as refused:
        FlowEngine(Catalog([service("RETRY", retry=RetryPolicy(then="LATER"))]), InMemoryRepository(), None)
    assert "LATER" in refused.value.message
    with pytest.raises(ValidationError) as refused:
        FlowEngine(Catalog([service(failure_strategy="SOMETIMES")]), InMemoryRepository(), None)
    assert "SOMETIMES" in refused.value.message


# --- policies meeting pauses, timeouts and each other ----------------------------------------


def test_stop_fails_a_flow_a_person_paused(store: Callable[[], Repository]) -> None:
    world = World(store)
    flow = world.start()
    world.engine.handle(DeploymentStarted(flow.deployments[0].id))
    world.engine.handle(PauseFlow(flow.id, "alice"))
    world.engine.handle(DeploymentFailed(flow.deployments[0].id, "crash"))  # a fact about work under way
    stored = world.get(flow)
    assert (stored.state, stored.pause) == (FlowState.FAILED, None)


def test_a_retried_promotion_gets_its_own_verify_timeout(store: Callable[[], Repository]) -> None:
    """Once no other check waits on the deployment's verify timeout (perf passed)."""
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=2), timeouts=Timeouts(verify="1h")))
    flow = world.start()
    world.deploy(flow, 0)
    world.clock.advance(minutes=30)
    world.result(flow, 0, "perf", ResultStatus.PASSED)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)  # retried at once, attempt 2
    (verify,) = [t for t in world.repository.timers(flow.id) if t.kind is TimerKind.VERIFY]
    assert verify.due == world.clock.now + dt.timedelta(hours=1)


def test_a_retried_promotion_shares_the_verify_timeout_another_waits_on(store: Callable[[], Repository]) -> None:
    """perf is still pending: smoke's retry leaves the deadline where it was."""
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=2), timeouts=Timeouts(verify="1h")))
    flow = world.start()
    world.deploy(flow, 0)
    completed = world.clock.now
    world.clock.advance(minutes=30)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)  # retried at once, attempt 2
    (verify,) = [t for t in world.repository.timers(flow.id) if t.kind is TimerKind.VERIFY]
    assert verify.due == completed + dt.timedelta(hours=1)


def test_a_timeout_failing_two_promotions_decides_each_once(store: Callable[[], Repository]) -> None:
    """The first failure's last attempt stops the flow; the second, still with an
    attempt left, finds the flow finished and changes nothing more."""
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=2), timeouts=Timeouts(verify="1h")))
    flow = world.start()
    world.deploy(flow, 0)
    world.result(flow, 0, "smoke", ResultStatus.FAILED)  # smoke: attempt 2, pending again
    world.events()
    world.clock.advance(minutes=61)
    world.scheduler.run_once()
    assert world.events() == ["promotion-failed", "promotion-failed", "deployment-failed", "flow-failed"]
    stored = world.get(flow)
    assert stored.state is FlowState.FAILED
    assert [p.attempt for p in stored.deployments[0].promotions] == [2, 1]


def test_only_the_failure_a_timeout_caused_says_timeout(store: Callable[[], Repository]) -> None:
    world = World(store, service("RETRY", retry=RetryPolicy(attempts=2), timeouts=Timeouts(deploy="30m")))
    flow = world.start()
    world.engine.handle(DeploymentStarted(flow.deployments[0].id))
    world.emitter.requests.clear()
    world.clock.advance(minutes=31)
    world.scheduler.run_once()
    kinds = {r.event.value: type(r.payload).__name__ for r in world.emitter.requests}
    assert kinds == {
        "deployment-failed": "TimeoutPayload",
        "deployment-retried": "SteeringPayload",
        "deployment-created": "DeploymentPayload",
    }


def test_a_deployment_that_failed_with_a_skipped_check_knows_it_never_completed(
    store: Callable[[], Repository],
) -> None:
    world = World(store, service("PAUSE"))
    flow = world.start()
    deployment_id = flow.deployments[0].id
    world.engine.handle(SkipPromotion(deployment_id, world.promotion_id(flow, 0, "perf"), "alice", "no perf env"))
    world.engine.handle(DeploymentStarted(deployment_id))
    world.engine.handle(DeploymentFailed(deployment_id, "crash"))
    world.unchanged(flow, DeploymentFailed(deployment_id, "crash"))  # the same report, again
    world.refused(flow, DeploymentCompleted(deployment_id), "reported it failed")


def test_an_unknown_environment_policy_names_its_key_in_the_file(tmp_path: Path) -> None:
    from flowfsm import CatalogError
    from flowfsm.strategies import BUILTIN_STRATEGIES

    file = tmp_path / "c.toml"
    file.write_text(
        """
[[services]]
id = "svc"
artifacts = ["com.acme:api"]
retry = { then = "PAGE" }
pipeline = { name = "p", environments = [{ name = "dev" }, { name = "prod", failureStrategy = "HOPE" }] }
"""
    )
    with pytest.raises(CatalogError) as refused:
        CatalogClass.from_file(file, strategies=BUILTIN_STRATEGIES)
    assert (refused.value.path, "'PAGE'" in refused.value.message) == ("$.services[0].retry.then", True)
    file.write_text(file.read_text().replace('retry = { then = "PAGE" }\n', ""))
    with pytest.raises(CatalogError) as refused:
        CatalogClass.from_file(file, strategies=BUILTIN_STRATEGIES)
    assert refused.value.path == "$.services[0].pipeline.environments[1].failureStrategy"
    assert "'HOPE'" in refused.value.message


@pytest.mark.parametrize("attempt", [0, -1, True, "2"])
def test_a_result_naming_a_bad_attempt_is_refused(attempt: object) -> None:
    result = PromotionResult("p", ResultStatus.PASSED, attempt=attempt)  # type: ignore[arg-type]  # what the test is about
    with pytest.raises(ValidationError) as refused:
        PromotionCompleted("d", "p", [result])
    assert refused.value.field == "results[0].attempt"
    with pytest.raises(ValidationError) as structured:
        structure(
            {
                "deploymentId": "d",
                "promotionId": "p",
                "results": [{"promotionId": "p", "resultStatus": "passed", "attempt": 0}],
                "type": "PromotionCompleted",
            },
            Trigger,
        )
    assert structured.value.field == "$.results[0].attempt"


def test_resuming_a_persons_pause_over_a_failed_item_names_the_item_not_the_policy() -> None:
    """A failure under a person's pause leaves the pause theirs; ResumeFlow waits for the
    failed item, and its refusal says that, not that the policy paused the flow."""
    service = Service("svc", ["com.acme:api"], Pipeline("p", [Environment("dev", ["smoke"])]), failure_strategy="PAUSE")
    engine = FlowEngine(Catalog([service]), InMemoryRepository(), None)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0]
    dev = flow.deployments[0]
    smoke = dev.promotions[0].id
    engine.handle(DeploymentStarted(dev.id))
    engine.handle(DeploymentCompleted(dev.id))
    engine.handle(PauseFlow(flow.id, "alice", "release freeze"))
    engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.FAILED)]))
    with pytest.raises(InvalidTransition) as refused:
        engine.handle(ResumeFlow(flow.id, "alice"))
    assert (
        refused.value.reason
        == "its failure policy waits on a failed item: retry or skip the failed item first, or abort the flow"
    )


class _NoRollbackIndex:
    """A repository without ``last_success``: every role but the rollback index."""

    def __init__(self) -> None:
        self._repository = InMemoryRepository()

    def __getattr__(self, name: str) -> Any:
        if name == "last_success":
            raise AttributeError(name)
        return getattr(self._repository, name)


def test_rollback_needs_a_repository_with_last_success_and_nothing_else_does() -> None:
    """docs/steering.md: an engine refuses a catalog using ROLLBACK over a repository
    that does not answer ``last_success``, when it is built; other policies
    run on it, failures included."""
    pipeline = Pipeline("p", [Environment("dev"), Environment("prod", failure_strategy="ROLLBACK")])
    service = Service("svc", ["com.acme:api"], pipeline)
    with pytest.raises(ValidationError) as refused:
        FlowEngine(Catalog([service]), cast(Any, _NoRollbackIndex()), None)
    assert refused.value.field == "failure_strategy"
    assert "'ROLLBACK'" in str(refused.value)
    assert "last_success" in str(refused.value)

    stopping = Service("svc", ["com.acme:api"], Pipeline("p", [Environment("dev")]))
    engine = FlowEngine(Catalog([stopping]), cast(Any, _NoRollbackIndex()), None)
    dev = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0].deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    assert engine.handle(DeploymentFailed(dev.id, "image pull failed")).flows[0].state is FlowState.FAILED
