"""Regression tests for defects once found in steering, failure policies, history
and explain, each stating the expected behaviour (SPEC §8-§9, docs/steering.md,
docs/history.md) in the case that broke it."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    Environment,
    FailureStrategy,
    Flow,
    FlowEngine,
    FlowState,
    HookEvent,
    InvalidTransition,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    PromotionState,
    ResultStatus,
    ResumeFlow,
    RetryPolicy,
    RetryPromotion,
    Service,
    SkipPromotion,
    Timeouts,
    ValidationError,
    Webhook,
)
from flowfsm.converter import from_json, to_json
from flowfsm.emitters import RecordingEmitter
from flowfsm.model import FailurePayload, Payload
from flowfsm.repositories import InMemoryRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock
from flowfsm.triggers import Trigger
from tests.test_cli import Cli, cli  # noqa: F401 - the fixture


class World:
    """One service (dev with the given promotions, then prod), every event subscribed."""

    def __init__(self, promotions: list[str], strategy: FailureStrategy, **env: Any) -> None:
        retry = env.pop("retry", None)
        svc = Service(
            "svc",
            ["com.acme:api"],
            Pipeline("p", [Environment("dev", promotions, **env), Environment("prod")]),
            failure_strategy=strategy,
            retry=retry,
            webhooks=[Webhook(f"wh-{e.value}", e, [Action("log")]) for e in HookEvent],
        )
        self.clock = FakeClock()
        self.emitter = RecordingEmitter()
        self.repository = InMemoryRepository()
        self.engine = FlowEngine(Catalog([svc]), self.repository, self.emitter, clock=self.clock)

    def completed(self) -> Flow:
        """A flow whose dev deployment completed: its promotions are pending."""
        (flow,) = self.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows
        dev = flow.deployments[0].id
        self.engine.handle(DeploymentStarted(dev))
        self.engine.handle(DeploymentCompleted(dev))
        self.emitter.requests.clear()
        return flow

    def fail(self, flow: Flow, index: int) -> None:
        dev = flow.deployments[0]
        promotion = dev.promotions[index].id
        self.engine.handle(PromotionCompleted(dev.id, promotion, [PromotionResult(promotion, ResultStatus.FAILED)]))

    def events(self) -> list[str]:
        seen = [r.event.value for r in self.emitter.requests]
        self.emitter.requests.clear()
        return seen

    def time_out(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        Scheduler(self.repository, self.engine, clock=self.clock).run_once()


# --- 1. a person's pause is lifted by a failure policy ----------------------------------


def test_retrying_a_failed_item_does_not_lift_a_persons_pause() -> None:
    """Alice pauses the flow; a check then fails under PAUSE; Bob retries the check.
    Alice's pause must still hold: only ResumeFlow lifts a pause a person made."""
    world = World(["smoke"], FailureStrategy.PAUSE)
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "investigating an incident"))
    world.fail(flow, 0)
    dev = flow.deployments[0]
    world.engine.handle(RetryPromotion(dev.id, dev.promotions[0].id, "bob", "flaky"))
    stored = world.repository.get(flow.id)
    assert stored.state is FlowState.PAUSED
    assert stored.pause is not None
    assert stored.pause.actor == "alice"


def test_a_policy_pause_on_a_persons_pause_waits_on_the_failure_and_the_person() -> None:
    """The person's pause stands, silently gains the failed item (no second
    flow-paused), refuses ResumeFlow until that item is decided, then resumes."""
    world = World(["smoke"], FailureStrategy.PAUSE)
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "investigating an incident"))
    world.events()
    world.fail(flow, 0)
    assert world.events() == ["promotion-failed"]
    smoke = flow.deployments[0].promotions[0].id
    stored = world.repository.get(flow.id)
    assert stored.pause is not None
    assert (stored.pause.actor, stored.pause.reason, stored.pause.failed) == (
        "alice",
        "investigating an incident",
        (smoke,),
    )
    with pytest.raises(InvalidTransition, match="retry or skip the failed item"):
        world.engine.handle(ResumeFlow(flow.id, "alice"))
    world.engine.handle(RetryPromotion(flow.deployments[0].id, smoke, "bob", "flaky"))
    assert world.events() == ["promotion-retried"]
    stored = world.repository.get(flow.id)
    assert stored.state is FlowState.PAUSED
    assert stored.pause is not None
    assert stored.pause.failed == ()
    world.engine.handle(ResumeFlow(flow.id, "alice", "incident over"))
    assert world.repository.get(flow.id).state is FlowState.IN_PROGRESS
    assert world.events() == ["flow-resumed"]


# --- 2. history loses a failure that a policy undid in the same trigger -----------------


def test_history_records_a_promotion_failure_retried_at_once() -> None:
    """SPEC §9: an entry holds each state change the trigger made. RETRY without a
    backoff fails and retries the promotion in one trigger; its entry has no change."""
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3))
    flow = world.completed()
    world.fail(flow, 0)
    assert world.events() == ["promotion-failed", "promotion-retried"]
    entry = world.repository.history(flow.id)[-1]
    assert entry.trigger["type"] == "PromotionCompleted"
    assert ("promotion", "pending", "failed") in [(c.entity, c.from_, c.to) for c in entry.changes]


def test_history_records_a_deployment_failure_retried_at_once() -> None:
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3))
    (flow,) = world.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows
    dev = flow.deployments[0].id
    world.engine.handle(DeploymentStarted(dev))
    world.engine.handle(DeploymentFailed(dev, "image pull failed"))
    entry = world.repository.history(flow.id)[-1]
    assert ("deployment", "started", "failed") in [(c.entity, c.from_, c.to) for c in entry.changes]


# --- 3. one verify timeout retries a promotion of the flow it fails ---------------------


def test_a_timeout_that_fails_the_flow_retries_no_promotion() -> None:
    """RETRY(attempts=2), dev (a, b): b failed once (attempt 2). The verify timeout
    fails a (attempt 1: retried) then b (last attempt: STOP). The flow fails, yet a
    is `pending` again and `promotion-retried` went out for a flow that is over."""
    world = World(["a", "b"], FailureStrategy.RETRY, retry=RetryPolicy(2), timeouts=Timeouts(verify="10m"))
    flow = world.completed()
    world.fail(flow, 1)
    world.events()
    world.time_out(minutes=11)
    stored = world.repository.get(flow.id)
    assert stored.state is FlowState.FAILED
    assert "promotion-retried" not in world.events()
    assert PromotionState.PENDING not in [p.state for p in stored.deployments[0].promotions]


# --- 4. one pause, two flow-paused events ------------------------------------------------


def test_one_verify_timeout_pauses_the_flow_once() -> None:
    world = World(["smoke", "perf"], FailureStrategy.PAUSE, timeouts=Timeouts(verify="10m"))
    flow = world.completed()
    world.time_out(minutes=11)
    assert world.repository.get(flow.id).state is FlowState.PAUSED
    assert world.events().count("flow-paused") == 1


# --- 5. explain says nothing about a paused flow or a backoff ---------------------------


def test_explain_says_who_paused_a_flow_and_why() -> None:
    world = World(["smoke"], FailureStrategy.STOP)
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "release freeze"))
    kinds = [w.kind for w in world.engine.explain(flow.id)]
    assert "paused" in kinds


def test_explain_says_a_policy_paused_flow_waits_for_a_person() -> None:
    world = World(["smoke"], FailureStrategy.PAUSE)
    flow = world.completed()
    world.fail(flow, 0)
    assert world.repository.get(flow.id).state is FlowState.PAUSED
    assert "paused" in [w.kind for w in world.engine.explain(flow.id)]


def test_explain_names_a_retry_backoff_and_its_end() -> None:
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3, backoff="5m"))
    flow = world.completed()
    world.fail(flow, 0)
    backoff = [w for w in world.engine.explain(flow.id) if w.kind == "backoff"]
    assert [w.until for w in backoff] == [world.clock.now + dt.timedelta(minutes=5)]


def test_a_retried_promotion_no_other_check_waits_on_gets_a_whole_verify_timeout() -> None:
    """verify = 10m: `b` passes at 1m; `a` fails at 9m and RETRY retries it. No other
    check waits on the deployment's timeout: `a`'s attempt 2 has until 19m."""
    world = World(["a", "b"], FailureStrategy.RETRY, retry=RetryPolicy(3), timeouts=Timeouts(verify="10m"))
    flow = world.completed()
    dev = flow.deployments[0]
    b = dev.promotions[1].id
    world.clock.advance(minutes=1)
    world.engine.handle(PromotionCompleted(dev.id, b, [PromotionResult(b, ResultStatus.PASSED)]))
    world.clock.advance(minutes=8)
    world.fail(flow, 0)
    world.events()
    world.time_out(minutes=9)  # 18m
    assert world.events() == []
    world.time_out(minutes=2)  # 20m
    assert world.events() == ["promotion-failed", "promotion-retried"]
    (a, _) = world.repository.get(flow.id).deployments[0].promotions
    assert (a.state, a.attempt) == (PromotionState.PENDING, 3)


def test_a_deployment_failure_delivered_again_after_its_retry_is_a_duplicate() -> None:
    """RETRY retried the failed deployment at once (notStarted, attempt 2); the CD
    system's DeploymentFailed arrives again: it repeats what is recorded."""
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3))
    (flow,) = world.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows
    dev = flow.deployments[0].id
    world.engine.handle(DeploymentStarted(dev))
    world.engine.handle(DeploymentFailed(dev, "image pull failed"))
    world.events()
    assert world.engine.handle(DeploymentFailed(dev, "image pull failed")).duplicate
    assert world.events() == []
    (deployment, _) = world.repository.get(flow.id).deployments
    assert (deployment.state.value, deployment.attempt) == ("notStarted", 2)


# --- a CD-reported failure's reason in the payloads ------------------------------------


def test_a_cd_reported_failure_names_its_reason_in_the_failure_payloads() -> None:
    """deployment-failed and flow-failed say why, as a timeout's say `timeout`; what
    a policy announces after (RETRY's deployment-created) is a plain payload."""
    world = World(["smoke"], FailureStrategy.STOP)
    (flow,) = world.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows
    dev = flow.deployments[0].id
    world.engine.handle(DeploymentStarted(dev))
    world.emitter.requests.clear()
    world.engine.handle(DeploymentFailed(dev, "image pull failed"))
    failed = {r.event.value: r.payload for r in world.emitter.requests}
    assert sorted(failed) == ["deployment-failed", "flow-failed"]
    for request in world.emitter.requests:
        assert isinstance(request.payload, FailurePayload)
        assert request.payload.reason == "image pull failed"
        assert type(request.payload) is FailurePayload  # not a timeout's
        data = json.loads(to_json(request.payload, Payload))
        assert data["reason"] == "image pull failed"
        assert from_json(to_json(request.payload, Payload), Payload) == request.payload


def test_a_policys_announcement_after_a_cd_reported_failure_is_plain() -> None:
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3))
    (flow,) = world.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows
    dev = flow.deployments[0].id
    world.engine.handle(DeploymentStarted(dev))
    world.emitter.requests.clear()
    world.engine.handle(DeploymentFailed(dev, "image pull failed"))
    kinds = {r.event.value: type(r.payload).__name__ for r in world.emitter.requests}
    assert kinds == {
        "deployment-failed": "FailurePayload",
        "deployment-retried": "SteeringPayload",
        "deployment-created": "DeploymentPayload",
    }


# --- 6. input bounds and types ---------------------------------------------------------


def test_a_deployment_failed_reason_is_bounded_like_every_reason() -> None:
    """CHANGELOG: every trigger's reason is at most 10,000 characters; DeploymentFailed
    takes any length, which then lands in history, payloads and the flow's pause."""
    with pytest.raises(ValidationError) as refused:
        DeploymentFailed("d", "r" * 10_001)
    assert refused.value.field == "reason"


@pytest.mark.parametrize("attempt", ["true", "false", "1.0", '"1"'])
def test_a_json_result_attempt_of_true_is_refused(attempt: str) -> None:
    text = (
        '{"type": "PromotionCompleted", "deploymentId": "d", "promotionId": "p",'
        f' "results": [{{"promotionId": "p", "resultStatus": "passed", "attempt": {attempt}}}]}}'
    )
    with pytest.raises(ValidationError) as refused:
        from_json(text, Trigger)
    assert refused.value.field.endswith("results[0].attempt")
    assert "whole number" in str(refused.value)


def test_a_json_result_attempt_of_a_whole_number_is_taken() -> None:
    text = (
        '{"type": "PromotionCompleted", "deploymentId": "d", "promotionId": "p",'
        ' "results": [{"promotionId": "p", "resultStatus": "passed", "attempt": 2}]}'
    )
    trigger = from_json(text, Trigger)
    assert isinstance(trigger, PromotionCompleted)
    assert trigger.results[0].attempt == 2


# --- 7. the CLI writes terminal escape sequences: fixed, see tests/test_cli_review.py --


# --- 8. a paused flow begins a new check ------------------------------------------------


def test_a_retry_backoff_ending_while_paused_begins_no_new_check() -> None:
    """SPEC §8: while paused, facts are recorded but nothing new begins. A failed
    deployment's retry holds its announcement until the resume; a failed promotion's
    retry is sent at once (`promotion-retried`: the check runner starts attempt 2)."""
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3, backoff="5m"))
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "investigating an incident"))
    world.fail(flow, 0)  # a fact about work under way: recorded
    world.events()
    world.time_out(minutes=6)  # the backoff ends while the flow is still paused
    assert world.repository.get(flow.id).state is FlowState.PAUSED
    assert "promotion-retried" not in world.events()


@pytest.mark.parametrize("backoff", [None, "5m"])
def test_a_retry_held_by_a_pause_begins_when_the_flow_resumes(backoff: str | None) -> None:
    """RETRY in a flow a person paused: the failed check stays failed (no
    promotion-retried), and begins its next attempt once the flow resumes."""
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3, backoff=backoff))
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "investigating an incident"))
    world.fail(flow, 0)
    world.time_out(minutes=6)
    assert world.events() == ["flow-paused", "promotion-failed"]
    (smoke,) = world.repository.get(flow.id).deployments[0].promotions
    assert (smoke.state, smoke.attempt) == (PromotionState.FAILED, 1)
    world.engine.handle(ResumeFlow(flow.id, "alice"))
    assert world.events() == ["flow-resumed", "promotion-retried"]
    (smoke,) = world.repository.get(flow.id).deployments[0].promotions
    assert (smoke.state, smoke.attempt) == (PromotionState.PENDING, 2)


def test_a_resume_before_the_backoff_ends_leaves_the_retry_to_its_timer() -> None:
    world = World(["smoke"], FailureStrategy.RETRY, retry=RetryPolicy(3, backoff="5m"))
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "investigating an incident"))
    world.fail(flow, 0)
    world.clock.advance(minutes=2)
    world.engine.handle(ResumeFlow(flow.id, "alice"))
    assert world.events() == ["flow-paused", "promotion-failed", "flow-resumed"]
    world.time_out(minutes=4)
    assert world.events() == ["promotion-retried"]
    (smoke,) = world.repository.get(flow.id).deployments[0].promotions
    assert (smoke.state, smoke.attempt) == (PromotionState.PENDING, 2)


def test_settling_a_policy_pause_begins_the_retries_it_held() -> None:
    """RETRY(2, then PAUSE): `a` fails its last attempt and the policy pauses the flow;
    `b` then fails its first (held); skipping `a` resumes the flow and retries `b`."""
    world = World(["a", "b"], FailureStrategy.RETRY, retry=RetryPolicy(2, then=FailureStrategy.PAUSE))
    flow = world.completed()
    world.fail(flow, 0)
    world.fail(flow, 0)
    world.fail(flow, 1)
    assert world.events() == [
        "promotion-failed",
        "promotion-retried",
        "promotion-failed",
        "flow-paused",
        "promotion-failed",
    ]
    dev = flow.deployments[0]
    world.engine.handle(SkipPromotion(dev.id, dev.promotions[0].id, "bob", "known flaky"))
    assert world.events() == ["promotion-skipped", "flow-resumed", "promotion-retried"]
    stored = world.repository.get(flow.id)
    assert stored.state is FlowState.IN_PROGRESS
    assert [(p.state, p.attempt) for p in stored.deployments[0].promotions] == [
        (PromotionState.SKIPPED, 2),
        (PromotionState.PENDING, 2),
    ]


# --- 9. explain dates an announcement from the wrong moment -----------------------------


def test_explain_dates_an_announcement_held_by_a_pause_from_the_resume() -> None:
    """prod's deployment-created goes out when the flow resumes (and again when a
    person retries it); explain says it was announced when dev succeeded."""
    world = World(["smoke"], FailureStrategy.STOP)
    flow = world.completed()
    world.engine.handle(PauseFlow(flow.id, "alice", "freeze"))
    world.clock.advance(minutes=10)
    dev = flow.deployments[0]
    smoke = dev.promotions[0].id
    world.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    world.clock.advance(hours=2)
    world.emitter.requests.clear()
    world.engine.handle(ResumeFlow(flow.id, "alice"))
    (created,) = [r for r in world.emitter.requests if r.event is HookEvent.DEPLOYMENT_CREATED]
    (waiting,) = world.engine.explain(flow.id)
    assert waiting.kind == "cd-start"
    assert waiting.since == created.created_at


def test_a_pause_after_the_announcement_does_not_move_its_time() -> None:
    """A resume dates an announcement only if the pause held it back."""
    world = World(["smoke"], FailureStrategy.STOP)
    flow = world.completed()
    dev = flow.deployments[0]
    smoke = dev.promotions[0].id
    world.engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    announced = world.clock.now
    world.clock.advance(minutes=10)
    world.engine.handle(PauseFlow(flow.id, "alice", "freeze"))
    world.clock.advance(hours=2)
    world.engine.handle(ResumeFlow(flow.id, "alice"))
    (waiting,) = world.engine.explain(flow.id)
    assert waiting.kind == "cd-start"
    assert waiting.since == announced


# --- 10. show takes only a flow id: fixed, see tests/test_cli_review.py -------------


# --- 11. a retry extends the verify timeout of the other promotions ---------------------


def test_retrying_one_promotion_does_not_extend_anothers_verify_timeout() -> None:
    """verify = 10m. At 9m `a` fails and RETRY retries it while `b`, pending since
    0m, still waits: `a`'s new attempt shares the deployment's pending verify
    timeout, which `b` must still meet at 10m (a reset to 19m would let `b` wait
    past its limit, and every retry of `a` would push it again). Timed out, `b` is
    retried by RETRY: attempt 2."""
    world = World(["a", "b"], FailureStrategy.RETRY, retry=RetryPolicy(3), timeouts=Timeouts(verify="10m"))
    flow = world.completed()
    world.clock.advance(minutes=9)
    world.fail(flow, 0)
    world.time_out(minutes=2)  # 11m
    (_, b) = world.repository.get(flow.id).deployments[0].promotions
    assert b.attempt == 2  # timed out at 10m, then retried by RETRY
