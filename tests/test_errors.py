"""Bad input and repeats (SPEC §4): a typed error naming what is wrong, nothing lost."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    ConcurrencyConflict,
    DeploymentCompleted,
    DeploymentStarted,
    DeploymentState,
    Environment,
    Failure,
    FailureKind,
    Flow,
    FlowEngine,
    FlowFSMError,
    FlowState,
    HookEvent,
    HookRequest,
    InvalidTransition,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Trigger,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    UnknownService,
    ValidationError,
    Webhook,
)
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.repositories import InMemoryRepository

from .conftest import api_service
from .test_walkthrough import API, create, failed, passed, through_completed

Rejects = Callable[[Trigger, type[FlowFSMError]], FlowFSMError]


def snapshot(repository: InMemoryRepository) -> tuple[list[Flow], int]:
    return repository.list_flows(limit=1000), repository.count_pending()


@pytest.fixture
def rejects(engine: FlowEngine, repository: InMemoryRepository, emitter: RecordingEmitter) -> Rejects:
    """Handle a trigger that must fail; check it changed and emitted nothing."""

    def check(trigger: Trigger, error: type[FlowFSMError]) -> FlowFSMError:
        before = snapshot(repository)
        sent = len(emitter.requests)
        with pytest.raises(error) as caught:
            engine.handle(trigger)
        assert snapshot(repository) == before
        assert len(emitter.requests) == sent
        return caught.value

    return check


def test_unknown_deployment(rejects: Rejects) -> None:
    error = rejects(DeploymentStarted("no-such-deployment"), UnknownDeployment)
    assert isinstance(error, UnknownDeployment)
    assert error.deployment_id == "no-such-deployment"
    assert "no-such-deployment" in str(error)


def test_unknown_promotion_and_a_promotion_of_another_deployment(engine: FlowEngine, rejects: Rejects) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    d1 = flow.deployments[0]
    error = rejects(PromotionCompleted(d1.id, "nope", [PromotionResult("nope", ResultStatus.PASSED)]), UnknownPromotion)
    assert isinstance(error, UnknownPromotion)
    assert (error.deployment_id, error.promotion_id) == (d1.id, "nope")
    other = flow.deployments[1].promotions[0].id
    rejects(PromotionCompleted(d1.id, other, [PromotionResult(other, ResultStatus.PASSED)]), UnknownPromotion)


def test_starting_a_deployment_that_is_not_current(engine: FlowEngine, rejects: Rejects) -> None:
    flow = create(engine)
    error = rejects(DeploymentStarted(flow.deployments[1].id), InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert (error.entity, error.entity_id, error.state, error.trigger) == (
        "deployment",
        flow.deployments[1].id,
        "notStarted",
        "start",
    )
    assert "current" in error.reason


def test_completing_a_deployment_that_was_not_started(engine: FlowEngine, rejects: Rejects) -> None:
    flow = create(engine)
    error = rejects(DeploymentCompleted(flow.deployments[0].id), InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert (error.state, error.trigger) == ("notStarted", "complete")
    assert "'started'" in error.reason


def test_a_promotion_result_before_its_deployment_completed(engine: FlowEngine, rejects: Rejects) -> None:
    flow = create(engine)
    rejects(passed(flow, 0, 0), InvalidTransition)
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    error = rejects(passed(flow, 0, 0), InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert error.entity == "promotion"
    assert error.reason == "its deployment has not completed"


def test_nothing_moves_a_finished_flow(
    engine: FlowEngine,
    repository: InMemoryRepository,
    rejects: Rejects,
) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(passed(flow, 0, 0))
    through_completed(engine, flow, 1)
    engine.handle(failed(flow, 1, 0))
    assert repository.get(flow.id).state is FlowState.FAILED
    rejects(passed(flow, 1, 1), InvalidTransition)  # the other promotion of the failed deployment
    rejects(failed(flow, 1, 1), InvalidTransition)
    error = rejects(DeploymentStarted(flow.deployments[2].id), InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert "finished" in error.reason or "current" in error.reason
    rejects(DeploymentCompleted(flow.deployments[2].id), InvalidTransition)


def test_a_result_contradicting_the_recorded_one(engine: FlowEngine, rejects: Rejects) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(passed(flow, 0, 0))
    error = rejects(failed(flow, 0, 0), InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert (error.entity, error.state, error.trigger, error.reason) == (
        "promotion",
        "success",
        "fail",
        "it already passed",
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda f: DeploymentStarted(f.deployments[0].id),
        lambda f: DeploymentCompleted(f.deployments[0].id),
        lambda f: passed(f, 0, 0),
    ],
    ids=["started", "completed", "promotion-passed"],
)
def test_repeated_triggers_are_acknowledged_as_duplicates(
    engine: FlowEngine,
    repository: InMemoryRepository,
    emitter: RecordingEmitter,
    make: Callable[[Flow], DeploymentStarted | DeploymentCompleted | PromotionCompleted],
) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(passed(flow, 0, 0))
    before = snapshot(repository)
    sent = len(emitter.requests)
    outcome = engine.handle(make(flow))
    assert outcome.duplicate
    assert outcome.hook_requests == ()
    assert outcome.flows == (repository.get(flow.id),)
    assert snapshot(repository) == before
    assert len(emitter.requests) == sent


def test_a_repeated_failure_is_a_duplicate(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    through_completed(engine, flow, 0)
    engine.handle(failed(flow, 0, 0))
    before = snapshot(repository)
    assert engine.handle(failed(flow, 0, 0)).duplicate
    assert engine.handle(DeploymentStarted(flow.deployments[0].id)).duplicate
    assert snapshot(repository) == before


def test_malformed_triggers_name_the_field() -> None:
    with pytest.raises(ValidationError) as empty:
        PromotionCompleted("d", "p", [])
    assert empty.value.field == "results"
    with pytest.raises(ValidationError) as other:
        PromotionCompleted("d", "p", [PromotionResult("p", "passed"), PromotionResult("q", "passed")])
    assert other.value.field == "results[1].promotion_id"
    with pytest.raises(ValidationError) as blank:
        Artifact("com.acme", " ", "1.0")
    assert blank.value.field == "name"
    with pytest.raises(ValidationError) as status:
        PromotionResult("p", "maybe")
    assert status.value.field == "result_status"
    with pytest.raises(ValidationError) as deployment:
        DeploymentStarted("")
    assert deployment.value.field == "deployment_id"
    with pytest.raises(ValidationError):
        Artifact.parse("com.acme:api")


def test_malformed_catalogs_name_the_field() -> None:
    with pytest.raises(ValidationError) as duplicate_env:
        Pipeline("p", [Environment("dev"), Environment("dev")])
    assert duplicate_env.value.field == "environments"
    assert "'dev'" in str(duplicate_env.value)
    with pytest.raises(ValidationError) as unknown_event:
        Webhook("wh", "deployment-exploded", [])  # an event name as a config file spells it
    assert unknown_event.value.field == "event"
    with pytest.raises(ValidationError) as no_envs:
        Pipeline("p", [])
    assert no_envs.value.field == "environments"
    with pytest.raises(ValidationError) as bad_key:
        api_service(artifacts=["com.acme"])
    assert bad_key.value.field == "artifacts[0]"
    with pytest.raises(ValidationError) as duplicate_service:
        Catalog([api_service(), api_service()])
    assert duplicate_service.value.field == "services[1].id"


def test_an_unknown_failure_strategy_is_refused_up_front(repository: InMemoryRepository) -> None:
    catalog = Catalog([api_service(failure_strategy="RETRY_TWICE")])
    with pytest.raises(ValidationError) as error:
        FlowEngine(catalog, repository, None)
    assert error.value.field == "failure_strategy"
    assert "RETRY_TWICE" in str(error.value)


def test_a_flow_whose_service_left_the_catalog(engine: FlowEngine, repository: InMemoryRepository) -> None:
    flow = create(engine)
    other = FlowEngine(Catalog([api_service("svc-new")]), repository, None)
    with pytest.raises(UnknownService) as error:
        other.handle(DeploymentStarted(flow.deployments[0].id))
    assert error.value.service_id == "svc-api"


def test_a_failing_emitter_leaves_requests_pending(
    catalog: Catalog, repository: InMemoryRepository, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[HookRequest] = []

    def flaky(request: HookRequest) -> None:
        if len(seen) == 2:
            raise ConnectionError("receiver down")
        seen.append(request)

    engine = FlowEngine(catalog, repository, CallbackEmitter(flaky))
    with caplog.at_level(logging.WARNING, logger="flowfsm.engine"):
        outcome = engine.handle(ArtifactCreated(API))
    assert len(outcome.hook_requests) == 4  # the trigger was applied all the same
    assert repository.get(outcome.flows[0].id) == outcome.flows[0]
    assert repository.count_pending() == 2
    assert [r.id for r in repository.claim(10)] == [r.id for r in outcome.hook_requests[2:]]
    assert "2 left pending" in caplog.text


def test_no_emitter_leaves_everything_in_the_outbox(catalog: Catalog, repository: InMemoryRepository) -> None:
    engine = FlowEngine(catalog, repository, None)
    outcome = engine.handle(ArtifactCreated(API))
    assert repository.claim(10) == list(outcome.hook_requests)


class Conflicting(InMemoryRepository):
    """Loses the compare-and-set race ``losses`` times, as if another engine won."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses = losses

    def commit(self, flows: Sequence[Flow], hook_requests: Sequence[HookRequest] = (), **kwargs: Any) -> None:
        if self.losses:
            self.losses -= 1
            raise ConcurrencyConflict(flows[0].id, flows[0].version)
        super().commit(flows, hook_requests, **kwargs)


def test_a_lost_race_is_retried_then_surfaced(catalog: Catalog) -> None:
    repository = Conflicting(losses=2)
    emitter = RecordingEmitter()
    engine = FlowEngine(catalog, repository, emitter, max_attempts=3)
    outcome = engine.handle(ArtifactCreated(API))
    assert repository.get(outcome.flows[0].id) == outcome.flows[0]
    assert emitter.requests == list(outcome.hook_requests)

    repository.losses = 3
    flow = outcome.flows[0]
    with pytest.raises(ConcurrencyConflict):
        engine.handle(DeploymentStarted(flow.deployments[0].id))
    assert repository.get(flow.id) == flow


def test_a_custom_failure_strategy_plugs_in(catalog: Catalog, repository: InMemoryRepository) -> None:
    calls: list[Failure] = []

    seen: list[tuple[object, ...]] = []

    class StopAndPage:
        def on_failure(self, failure: Failure) -> None:
            calls.append(failure)
            assert failure.promotion is not None
            seen.append((failure.promotion.state, failure.deployment.state, failure.flow.deployments[0].state))
            failure.fail_deployment()
            seen.append((failure.deployment.state, failure.flow.deployments[0].state, failure.flow.state))
            failure.fail_flow()
            seen.append((failure.flow.state,))

    service = api_service(failure_strategy="PAGE")
    engine = FlowEngine(Catalog([service]), repository, RecordingEmitter(), strategies={"PAGE": StopAndPage()})
    flow = create(engine)
    through_completed(engine, flow, 0)
    outcome = engine.handle(failed(flow, 0, 0))
    (failure,) = calls
    assert failure.service is engine.catalog.get("svc-api")
    assert failure.promotion is not None
    assert failure.promotion.id == failure.failed_id == flow.deployments[0].promotions[0].id
    assert (failure.kind, failure.flow_id, failure.deployment_id) == (
        FailureKind.PROMOTION,
        flow.id,
        flow.deployments[0].id,
    )
    assert failure.reason == "promotion 'smoke' failed"
    assert failure.result is not None
    assert failure.result.result_status is ResultStatus.FAILED
    assert outcome.flows[0].state is FlowState.FAILED
    assert outcome.hook_requests[-1].event is HookEvent.FLOW_FAILED
    # The strategy sees each move it makes: the latest versions, not the loaded ones.
    assert seen == [
        (PromotionState.FAILED, DeploymentState.COMPLETED, DeploymentState.COMPLETED),
        (DeploymentState.FAILED, DeploymentState.FAILED, FlowState.IN_PROGRESS),
        (FlowState.FAILED,),
    ]


def test_a_strategy_cannot_skip_the_machines(catalog: Catalog, repository: InMemoryRepository) -> None:
    class Confused:
        def on_failure(self, failure: Failure) -> None:
            failure.fail_deployment()
            failure.fail_deployment()  # twice: the machine refuses

    engine = FlowEngine(Catalog([api_service(failure_strategy="X")]), repository, None, strategies={"X": Confused()})
    flow = create(engine)
    through_completed(engine, flow, 0)
    before = snapshot(repository)
    with pytest.raises(InvalidTransition):
        engine.handle(failed(flow, 0, 0))
    assert snapshot(repository) == before


def test_every_error_has_one_root() -> None:
    for error in (ValidationError, UnknownDeployment, InvalidTransition, ConcurrencyConflict, UnknownService):
        assert issubclass(error, FlowFSMError)


class Opaque:
    """Not JSON."""


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"seen": {1, 2}}, "has a value of type set, which is not JSON (at ['seen'])"),
        ({"raw": b"\x00"}, "has a value of type bytes, which is not JSON (at ['raw'])"),
        ({"who": Opaque()}, "has a value of type Opaque, which is not JSON (at ['who'])"),
        ({"p99": float("nan")}, "has nan, which is not a JSON number (at ['p99'])"),
        ({"runs": [1.0, float("-inf")]}, "has -inf, which is not a JSON number (at ['runs'][1])"),
        ({"big": 10**5000}, "has an integer with too many digits to write as JSON (at ['big'])"),
        ({7: "x"}, "has the key 7; JSON keys are strings"),
        ({"log": "a\x00b"}, "has a string that contains NUL (\\u0000) (at ['log'])"),
        ({"k\ud800": 1}, "has a key that contains a lone surrogate (not UTF-8, e.g. undecodable bytes)"),
        ("passed", "expected a mapping (a JSON object), got 'passed'"),
    ],
)
def test_result_details_must_be_json_every_backend_stores(details: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PromotionResult("p", ResultStatus.PASSED, details)  # type: ignore[arg-type]  # wrong on purpose
    assert caught.value.field == "details"
    assert caught.value.message == message


def test_result_details_nested_too_deep_are_refused_without_recursion() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(100_000):
        inner["a"] = inner = {}
    with pytest.raises(ValidationError) as caught:
        PromotionResult("p", ResultStatus.PASSED, deep)
    assert caught.value.field == "details"
    assert caught.value.message.startswith("is nested more than 100 deep (at ['a']['a']")
    assert len(str(caught.value)) < 200
    fine: dict[str, object] = {"list": [[["x", 1, 2.5, None, True]]], "tuple": (1, 2)}
    # Kept as JSON holds it, read-only: arrays are lists, whatever sequence they came as.
    assert PromotionResult("p", ResultStatus.PASSED, fine).details == {**fine, "tuple": [1, 2]}


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Artifact("com.acme", "api", "1.0\x00"), "version"),
        (lambda: Artifact("com.acme\udcff", "api", "1.0"), "group"),
        (lambda: Artifact.parse("com.acme:a\x00pi:1.0"), "artifact.name"),
        (lambda: DeploymentStarted("d\x00"), "deployment_id"),
        (lambda: DeploymentCompleted("\ud800"), "deployment_id"),
        (lambda: PromotionCompleted("d", "p\x00", []), "promotion_id"),
        (lambda: PromotionResult("p\udfff", ResultStatus.PASSED), "promotion_id"),
        (lambda: Environment("dev", promotions=["smo\x00ke"]), "promotions[0]"),
    ],
)
def test_nul_and_lone_surrogates_are_refused_where_text_enters(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make()
    assert caught.value.field == field
    assert caught.value.message.startswith(("contains NUL", "contains a lone surrogate"))


def test_error_messages_stay_small_whatever_the_input() -> None:
    with pytest.raises(ValidationError) as long:
        Artifact.parse("x" * 1_000_000)
    assert len(str(long.value)) < 150
    with pytest.raises(ValidationError) as blank:
        DeploymentStarted(" " * 1_000_000)
    assert len(str(blank.value)) < 150


def _errors_naming(text: str) -> list[FlowFSMError]:
    return [
        UnknownFlow(text),
        UnknownDeployment(text),
        UnknownPromotion(text, text),
        UnknownService(text),
        InvalidTransition(text, text, text, text, text),
        ConcurrencyConflict(text, 2**80),
    ]


@given(st.text(max_size=20) | st.builds(lambda c, n: c * n, st.characters(), st.integers(0, 300_000)))
def test_an_error_message_is_bounded_whatever_the_ids(text: str) -> None:
    for error in _errors_naming(text):
        assert len(str(error)) <= 500, type(error).__name__


def test_an_error_message_names_a_normal_id_as_before() -> None:
    assert [str(e) for e in _errors_naming("d-1")] == [
        "unknown flow 'd-1'",
        "unknown deployment 'd-1'",
        "unknown promotion 'd-1' in deployment 'd-1'",
        "unknown service 'd-1'",
        "cannot d-1 d-1 'd-1' in state 'd-1': d-1",
        "flow 'd-1' changed concurrently (saving version 1208925819614629174706176)",
    ]
    assert str(ConcurrencyConflict("f", 3)) == "flow 'f' changed concurrently (saving version 3)"
