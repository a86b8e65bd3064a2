"""The seed note's walk-through, one test per step (SPEC §3)."""

from __future__ import annotations

import attrs
import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentPayload,
    DeploymentStarted,
    DeploymentState,
    Environment,
    Flow,
    FlowEngine,
    FlowState,
    HookEvent,
    HookRequest,
    InvalidTransition,
    Pipeline,
    PromotionCompleted,
    PromotionPayload,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Trigger,
    ValidationError,
)
from flowfsm.converter import from_json, to_json
from flowfsm.emitters import RecordingEmitter
from flowfsm.repositories import InMemoryRepository
from flowfsm.testing import SequentialIds, StepClock

from .conftest import api_service

API = Artifact("com.acme", "api", "1.4.0")


def events(requests: tuple[HookRequest, ...] | list[HookRequest]) -> list[tuple[str, str, str]]:
    return [(r.event.value, r.webhook_id, r.action.name) for r in requests]


def fanout(event: HookEvent) -> list[tuple[str, str, str]]:
    """What the test service's webhooks make of one event, in declared order."""
    hooks = [f"wh-{event.value}"] + (["wh-created-2"] if event is HookEvent.DEPLOYMENT_CREATED else [])
    return [(event.value, hook, action) for hook in hooks for action in ("a1", "a2")]


def passed(flow: Flow, env: int, promotion: int) -> PromotionCompleted:
    deployment = flow.deployments[env]
    pid = deployment.promotions[promotion].id
    return PromotionCompleted(deployment.id, pid, [PromotionResult(pid, ResultStatus.PASSED)])


def failed(flow: Flow, env: int, promotion: int) -> PromotionCompleted:
    deployment = flow.deployments[env]
    pid = deployment.promotions[promotion].id
    return PromotionCompleted(
        deployment.id,
        pid,
        [
            PromotionResult(pid, ResultStatus.PASSED, {"check": "latency"}),
            PromotionResult(pid, ResultStatus.FAILED, {"check": "errors", "rate": 0.2}),
        ],
    )


def create(engine: FlowEngine) -> Flow:
    return engine.handle(ArtifactCreated(API)).flows[0]


def through_completed(engine: FlowEngine, flow: Flow, env: int) -> None:
    engine.handle(DeploymentStarted(flow.deployments[env].id))
    engine.handle(DeploymentCompleted(flow.deployments[env].id))


def test_artifact_created_creates_a_flow_and_announces_the_first_deployment(
    engine: FlowEngine, repository: InMemoryRepository, emitter: RecordingEmitter
) -> None:
    outcome = engine.handle(ArtifactCreated(API))

    assert not outcome.duplicate
    (flow,) = outcome.flows
    assert flow.state is FlowState.IN_PROGRESS
    assert flow.artifact == API
    assert flow.service_id == "svc-api"
    assert [d.environment for d in flow.deployments] == ["dev", "staging", "prod"]
    assert all(d.state is DeploymentState.NOT_STARTED for d in flow.deployments)
    assert [[p.name for p in d.promotions] for d in flow.deployments] == [
        ["smoke"],
        ["smoke", "perf"],
        ["smoke", "perf"],
    ]
    assert all(p.state is PromotionState.PENDING for d in flow.deployments for p in d.promotions)
    assert repository.get(flow.id) == flow
    assert repository.find_by_key(API.id, "svc-api") == flow

    assert events(outcome.hook_requests) == fanout(HookEvent.DEPLOYMENT_CREATED)
    assert emitter.requests == list(outcome.hook_requests)
    for request in outcome.hook_requests:
        assert request.flow_id == flow.id
        assert request.payload == DeploymentPayload(
            API, flow.deployments[0], api_service().ref, Environment("dev", ["smoke"])
        )
    assert len({r.id for r in outcome.hook_requests}) == 4
    assert repository.count_pending() == 0  # delivered, so no longer in the outbox


def test_the_same_artifact_again_is_a_duplicate(engine: FlowEngine, emitter: RecordingEmitter) -> None:
    first = engine.handle(ArtifactCreated(API))
    emitter.clear()
    again = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.4.0")))
    assert again.duplicate
    assert again.flows == first.flows
    assert again.hook_requests == ()
    assert emitter.requests == []


def test_an_artifact_no_service_consumes_creates_nothing(
    engine: FlowEngine, repository: InMemoryRepository, emitter: RecordingEmitter
) -> None:
    outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "web", "2.0.0")))
    assert outcome.flows == ()
    assert outcome.hook_requests == ()
    assert not outcome.duplicate
    assert repository.list_flows() == []
    assert emitter.requests == []


def test_one_artifact_reaching_two_services_starts_two_flows() -> None:
    catalog = Catalog([api_service("svc-api"), api_service("svc-worker"), api_service("svc-other", artifacts=["x:y"])])
    emitter = RecordingEmitter()
    engine = FlowEngine(catalog, InMemoryRepository(), emitter, id_factory=SequentialIds())
    outcome = engine.handle(ArtifactCreated(API))
    assert [f.service_id for f in outcome.flows] == ["svc-api", "svc-worker"]
    assert outcome.flows[0].id != outcome.flows[1].id
    assert events(outcome.hook_requests) == fanout(HookEvent.DEPLOYMENT_CREATED) * 2
    assert [r.flow_id for r in outcome.hook_requests] == [outcome.flows[0].id] * 4 + [outcome.flows[1].id] * 4
    assert [r.payload.service.id for r in outcome.hook_requests] == ["svc-api"] * 4 + ["svc-worker"] * 4


def test_deployment_started(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    d1 = flow.deployments[0]
    outcome = engine.handle(DeploymentStarted(d1.id))
    stored = repository.get(flow.id)
    assert stored.deployments[0].state is DeploymentState.STARTED
    assert outcome.flows == (stored,)
    assert events(outcome.hook_requests) == fanout(HookEvent.DEPLOYMENT_STARTED)
    payload = outcome.hook_requests[0].payload
    assert isinstance(payload, DeploymentPayload)
    assert payload.deployment.id == d1.id
    assert payload.deployment.state is DeploymentState.STARTED
    assert payload.environment.name == "dev"
    assert payload.artifact == API


def test_deployment_completed(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    outcome = engine.handle(DeploymentCompleted(flow.deployments[0].id))
    assert repository.get(flow.id).deployments[0].state is DeploymentState.COMPLETED
    assert events(outcome.hook_requests) == fanout(HookEvent.DEPLOYMENT_COMPLETED)
    assert outcome.hook_requests[0].payload.deployment.state is DeploymentState.COMPLETED


def test_a_passed_promotion_that_is_not_the_last(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(passed(flow, 0, 0))
    through_completed(engine, flow, 1)
    outcome = engine.handle(passed(flow, 1, 0))
    stored = repository.get(flow.id)
    assert [p.state for p in stored.deployments[1].promotions] == [
        PromotionState.SUCCESS,
        PromotionState.PENDING,
    ]
    assert stored.deployments[1].state is DeploymentState.COMPLETED
    assert events(outcome.hook_requests) == fanout(HookEvent.PROMOTION_COMPLETED)
    payload = outcome.hook_requests[0].payload
    assert isinstance(payload, PromotionPayload)
    assert payload.promotion_result.promotion_id == flow.deployments[1].promotions[0].id
    assert payload.promotion_result.result_status is ResultStatus.PASSED
    assert payload.deployment.id == flow.deployments[1].id


def test_the_last_promotion_succeeds_the_deployment_and_creates_the_next(
    engine: FlowEngine, repository: InMemoryRepository
) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    outcome = engine.handle(passed(flow, 0, 0))
    stored = repository.get(flow.id)
    assert stored.deployments[0].state is DeploymentState.SUCCESS
    assert stored.deployments[1].state is DeploymentState.NOT_STARTED
    assert stored.state is FlowState.IN_PROGRESS
    assert events(outcome.hook_requests) == (
        fanout(HookEvent.PROMOTION_COMPLETED)
        + fanout(HookEvent.DEPLOYMENT_SUCCEEDED)
        + fanout(HookEvent.DEPLOYMENT_CREATED)
    )
    # The next deployment's announcement names D2 and E2, not D1 and E1.
    created = [r for r in outcome.hook_requests if r.event is HookEvent.DEPLOYMENT_CREATED]
    for request in created:
        payload = request.payload
        assert isinstance(payload, DeploymentPayload)
        assert payload.deployment.id == flow.deployments[1].id
        assert payload.deployment.state is DeploymentState.NOT_STARTED
        assert payload.environment == Environment("staging", ["smoke", "perf"])
    succeeded = [r for r in outcome.hook_requests if r.event is HookEvent.DEPLOYMENT_SUCCEEDED]
    assert succeeded[0].payload.deployment.id == flow.deployments[0].id
    assert succeeded[0].payload.deployment.state is DeploymentState.SUCCESS


def test_the_last_deployment_succeeds_the_flow(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    for env, count in enumerate((1, 2, 2)):
        through_completed(engine, flow, env)
        for promotion in range(count):
            outcome = engine.handle(passed(flow, env, promotion))
    stored = repository.get(flow.id)
    assert stored.state is FlowState.SUCCESS
    assert all(d.state is DeploymentState.SUCCESS for d in stored.deployments)
    assert events(outcome.hook_requests) == (
        fanout(HookEvent.PROMOTION_COMPLETED)
        + fanout(HookEvent.DEPLOYMENT_SUCCEEDED)
        + fanout(HookEvent.FLOW_SUCCEEDED)
    )
    assert outcome.hook_requests[-1].payload.deployment.id == flow.deployments[2].id


def test_an_environment_without_promotions_succeeds_on_completion() -> None:
    service = api_service(pipeline=Pipeline("p", [Environment("dev"), Environment("prod", promotions=["smoke"])]))
    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([service]), repository, RecordingEmitter())
    flow = create(engine)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    outcome = engine.handle(DeploymentCompleted(flow.deployments[0].id))
    assert events(outcome.hook_requests) == (
        fanout(HookEvent.DEPLOYMENT_COMPLETED)
        + fanout(HookEvent.DEPLOYMENT_SUCCEEDED)
        + fanout(HookEvent.DEPLOYMENT_CREATED)
    )
    assert outcome.hook_requests[-1].payload.deployment.id == flow.deployments[1].id
    stored = repository.get(flow.id)
    assert stored.deployments[0].state is DeploymentState.SUCCESS

    only = api_service("svc-solo", artifacts=["com.acme:solo"], pipeline=Pipeline("p", [Environment("dev")]))
    solo_engine = FlowEngine(Catalog([only]), repository, RecordingEmitter())
    solo = solo_engine.handle(ArtifactCreated(Artifact("com.acme", "solo", "1"))).flows[0]
    solo_engine.handle(DeploymentStarted(solo.deployments[0].id))
    done = solo_engine.handle(DeploymentCompleted(solo.deployments[0].id))
    assert done.flows[0].state is FlowState.SUCCESS
    assert events(done.hook_requests)[-2:] == fanout(HookEvent.FLOW_SUCCEEDED)


def test_a_failed_promotion_under_stop_fails_the_deployment_and_the_flow(
    engine: FlowEngine, repository: InMemoryRepository
) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(passed(flow, 0, 0))
    through_completed(engine, flow, 1)
    outcome = engine.handle(failed(flow, 1, 1))
    stored = repository.get(flow.id)
    assert stored.state is FlowState.FAILED
    assert stored.deployments[1].state is DeploymentState.FAILED
    assert [p.state for p in stored.deployments[1].promotions] == [
        PromotionState.PENDING,
        PromotionState.FAILED,
    ]
    assert stored.deployments[2].state is DeploymentState.NOT_STARTED
    assert events(outcome.hook_requests) == (
        fanout(HookEvent.PROMOTION_FAILED) + fanout(HookEvent.DEPLOYMENT_FAILED) + fanout(HookEvent.FLOW_FAILED)
    )
    payload = outcome.hook_requests[0].payload
    assert isinstance(payload, PromotionPayload)
    assert payload.promotion_result.result_status is ResultStatus.FAILED
    assert payload.promotion_result.details == {"check": "errors", "rate": 0.2}
    assert outcome.hook_requests[-1].payload.deployment.state is DeploymentState.FAILED


def test_same_inputs_give_the_same_hook_requests() -> None:
    def run() -> list[HookRequest]:
        emitter = RecordingEmitter()
        engine = FlowEngine(
            Catalog([api_service()]),
            InMemoryRepository(),
            emitter,
            clock=StepClock(),
            id_factory=SequentialIds(),
        )
        flow = create(engine)
        through_completed(engine, flow, 0)
        engine.handle(passed(flow, 0, 0))
        return emitter.requests

    assert run() == run()


@pytest.mark.parametrize("step", range(4))
def test_secrets_never_reach_payloads_reprs_or_json(engine: FlowEngine, emitter: RecordingEmitter, step: int) -> None:
    flow = create(engine)
    triggers: list[Trigger] = [
        DeploymentStarted(flow.deployments[0].id),
        DeploymentCompleted(flow.deployments[0].id),
        passed(flow, 0, 0),
    ]
    for trigger in triggers[:step]:
        engine.handle(trigger)
    assert emitter.requests
    for request in emitter.requests:
        assert "whsec_" not in repr(request)
        assert "whsec_" not in to_json(request)
    assert "whsec_" not in repr(api_service())


# --- DeploymentFailed (SPEC §8): the first trigger of Part II ------------------------


def test_a_failed_deployment_fails_the_flow_with_stop(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    outcome = engine.handle(DeploymentFailed(flow.deployments[0].id, "image pull failed"))
    assert events(outcome.hook_requests) == fanout(HookEvent.DEPLOYMENT_FAILED) + fanout(HookEvent.FLOW_FAILED)
    (saved,) = outcome.flows
    assert saved.state is FlowState.FAILED
    assert [d.state for d in saved.deployments] == [DeploymentState.FAILED] + [DeploymentState.NOT_STARTED] * 2
    assert [p.state for p in saved.deployments[0].promotions] == [PromotionState.PENDING]
    assert repository.get(flow.id) == saved
    assert {r.payload.deployment.state for r in outcome.hook_requests} == {DeploymentState.FAILED}


def test_a_failed_deployment_reported_again_is_a_duplicate(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    engine.handle(DeploymentFailed(flow.deployments[0].id, "image pull failed"))
    before = repository.get(flow.id)
    for again in (DeploymentFailed(flow.deployments[0].id, "other words"), DeploymentStarted(flow.deployments[0].id)):
        outcome = engine.handle(again)
        assert outcome.duplicate
        assert outcome.hook_requests == ()
        assert repository.get(flow.id) == before


@pytest.mark.parametrize("setup", ["none", "completed", "succeeded", "promotion-failed"])
def test_a_deployment_failed_contradicting_the_record_is_refused(
    engine: FlowEngine, repository: InMemoryRepository, setup: str
) -> None:
    flow = create(engine)
    dev = flow.deployments[0]
    if setup != "none":
        through_completed(engine, flow, 0)
    if setup == "succeeded":
        engine.handle(passed(flow, 0, 0))
    if setup == "promotion-failed":
        engine.handle(failed(flow, 0, 0))
    before = repository.get(flow.id)
    with pytest.raises(InvalidTransition) as caught:
        engine.handle(DeploymentFailed(dev.id, "too late"))
    reasons = {
        "none": "only a 'started' deployment can fail",
        "completed": "it already completed",
        "succeeded": "it already completed",
        "promotion-failed": "it completed, then failed its promotions",
    }
    assert (caught.value.entity, caught.value.entity_id, caught.value.trigger) == ("deployment", dev.id, "fail")
    assert caught.value.reason == reasons[setup]
    assert repository.get(flow.id) == before


def test_completed_after_a_reported_failure_contradicts_it(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    engine.handle(DeploymentFailed(flow.deployments[0].id, "crashed"))
    before = repository.get(flow.id)
    with pytest.raises(InvalidTransition) as caught:
        engine.handle(DeploymentCompleted(flow.deployments[0].id))
    assert (caught.value.state, caught.value.trigger) == ("failed", "complete")
    assert caught.value.reason == "the CD system reported it failed"
    assert repository.get(flow.id) == before


def test_completed_redelivered_after_a_stop_on_a_failed_promotion_is_a_duplicate(
    engine: FlowEngine, repository: InMemoryRepository
) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(failed(flow, 0, 0))
    before = repository.get(flow.id)
    outcome = engine.handle(DeploymentCompleted(flow.deployments[0].id))
    assert outcome.duplicate
    assert repository.get(flow.id) == before


def test_deployment_failed_has_a_json_form() -> None:
    trigger = DeploymentFailed("d-1", "image pull failed")
    text = to_json(trigger, Trigger)
    assert text == '{"deploymentId": "d-1", "reason": "image pull failed", "type": "DeploymentFailed"}'
    assert from_json(text, Trigger) == trigger
    with pytest.raises(ValidationError, match="reason"):
        DeploymentFailed("d-1", " ")


def test_an_emitter_cannot_change_the_payload_sibling_requests_share(engine: FlowEngine) -> None:
    """The HookRequests of one event share one payload object, so it is frozen."""
    first, second, *_ = engine.handle(ArtifactCreated(API)).hook_requests
    assert first.payload is second.payload
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.payload.deployment = second.payload.deployment  # type: ignore[misc]  # what the test checks
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.payload.environment = first.payload.environment  # type: ignore[misc, union-attr]  # likewise
