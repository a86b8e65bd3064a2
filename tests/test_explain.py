"""Explain (SPEC §9): what a flow waits for, one kind at a time, as data and a sentence."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

from flowfsm import (
    AbortFlow,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    Environment,
    Flow,
    FlowEngine,
    FlowState,
    HistoryEntry,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    ResumeFlow,
    RetryDeployment,
    RetryPolicy,
    RetryPromotion,
    Service,
    SkipPromotion,
    StateChange,
    Timeouts,
)
from flowfsm import explain as explaining
from flowfsm.converter import unstructure
from flowfsm.explain import Situation, Waiting
from flowfsm.repositories import InMemoryRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock

from .test_cli import Cli

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def service(**dev: object) -> Service:
    environments = [Environment("dev", ["smoke", "perf"], **dev), Environment("prod")]  # type: ignore[arg-type]
    return Service("svc", ["g:a"], Pipeline("p", environments))


class World:
    def __init__(self, **dev: object) -> None:
        self.clock = FakeClock(T0)
        self.engine = FlowEngine(Catalog([service(**dev)]), InMemoryRepository(), None, clock=self.clock)
        self.flow: Flow = self.engine.handle(ArtifactCreated(Artifact("g", "a", "1"))).flows[0]
        self.dev = self.flow.deployments[0]

    def explain(self) -> tuple[Waiting, ...]:
        return self.engine.explain(self.flow.id)

    def complete(self) -> None:
        self.engine.handle(DeploymentStarted(self.dev.id))
        self.clock.advance(minutes=5)
        self.engine.handle(DeploymentCompleted(self.dev.id))

    def promote(self, index: int, status: ResultStatus = ResultStatus.PASSED) -> None:
        promotion = self.dev.promotions[index]
        self.engine.handle(PromotionCompleted(self.dev.id, promotion.id, [PromotionResult(promotion.id, status)]))


def test_a_new_flow_waits_for_the_cd_system_to_start_it() -> None:
    world = World()
    (item,) = world.explain()
    assert (item.kind, item.deployment_id, item.environment, item.since) == ("cd-start", world.dev.id, "dev", T0)
    assert (
        item.text == "Waiting for the CD system to start the deployment to 'dev', announced at 2026-01-01 00:00:00 UTC."
    )


def test_a_started_deployment_waits_to_finish_until_its_timeout() -> None:
    world = World(timeouts=Timeouts(deploy="30m"))
    world.clock.advance(minutes=1)
    world.engine.handle(DeploymentStarted(world.dev.id))
    (item,) = world.explain()
    started = T0 + dt.timedelta(minutes=1)
    assert (item.kind, item.since, item.until) == ("cd-finish", started, started + dt.timedelta(minutes=30))
    assert item.text == (
        "Waiting for the CD system to finish the deployment to 'dev', started at 2026-01-01 00:01:00 UTC;"
        " it times out at 2026-01-01 00:31:00 UTC."
    )
    assert World().explain()[0].until is None  # no timeout: no end of its own


def test_a_completed_deployment_waits_for_its_pending_promotions() -> None:
    world = World(timeouts=Timeouts(verify="1h"))
    world.complete()
    (item,) = world.explain()
    completed = T0 + dt.timedelta(minutes=5)
    assert (item.kind, item.since, item.until) == ("promotions", completed, completed + dt.timedelta(hours=1))
    assert [p["name"] for p in item.details["promotions"]] == ["smoke", "perf"]
    assert "promotions 'smoke', 'perf' of 'dev'" in item.text
    world.promote(0)
    (item,) = world.explain()
    assert item.details["promotions"] == [{"name": "perf", "id": world.dev.promotions[1].id, "attempt": 1}]
    assert item.text.startswith("Waiting for the promotion 'perf' of 'dev', deployed at 2026-01-01 00:05:00 UTC")


def test_a_passed_deployment_soaks_until_its_soak_ends() -> None:
    world = World(soak="2h")
    world.complete()
    world.promote(0)
    world.promote(1)
    (item,) = world.explain()
    assert (item.kind, item.environment, item.until) == ("soak", "dev", T0 + dt.timedelta(minutes=5, hours=2))
    assert item.text == "Soaking in 'dev' until 2026-01-01 02:05:00 UTC."


def test_the_next_deployment_was_announced_when_the_one_before_succeeded() -> None:
    world = World()
    world.complete()
    world.clock.advance(minutes=7)
    world.promote(0)
    world.promote(1)
    (item,) = world.explain()
    prod = world.flow.deployments[1]
    assert (item.kind, item.deployment_id, item.since) == ("cd-start", prod.id, T0 + dt.timedelta(minutes=12))


@pytest.mark.parametrize(("status", "how"), [(ResultStatus.PASSED, "succeeded"), (ResultStatus.FAILED, "failed")])
def test_a_finished_flow_says_how(status: ResultStatus, how: str) -> None:
    world = World()
    world.complete()
    world.promote(0, status)
    if status is ResultStatus.PASSED:
        world.promote(1)
        prod = world.flow.deployments[1]
        world.engine.handle(DeploymentStarted(prod.id))
        world.clock.advance(minutes=1)
        world.engine.handle(DeploymentCompleted(prod.id))
    (item,) = world.explain()
    where = "prod" if status is ResultStatus.PASSED else "dev"
    assert (item.kind, item.environment, item.details) == (
        "finished",
        where,
        {"state": status.value.replace("passed", "success")},
    )
    assert item.since == T0 + dt.timedelta(minutes=6 if status is ResultStatus.PASSED else 5)
    assert item.text == f"Finished: the flow {how} at {explaining.at(item.since)}, in '{where}'."


def test_a_failed_deployment_finishes_the_flow_with_stop() -> None:
    world = World()
    world.engine.handle(DeploymentStarted(world.dev.id))
    world.engine.handle(DeploymentFailed(world.dev.id, "image pull failed"))
    assert [i.kind for i in world.explain()] == ["finished"]


def test_a_new_reason_is_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    def weekend(situation: Situation) -> Iterable[Waiting]:
        if situation.flow.state.value == "inProgress":
            yield Waiting("freeze", "Frozen until Monday.", until=T0 + dt.timedelta(days=2))

    monkeypatch.setattr(explaining, "REASONS", [*explaining.REASONS, weekend])
    assert [i.kind for i in World().explain()] == ["cd-start", "freeze"]


def test_an_explanation_is_json_with_camel_case_keys() -> None:
    world = World()
    data = unstructure(world.explain()[0])
    assert data == {
        "kind": "cd-start",
        "text": data["text"],
        "deploymentId": world.dev.id,
        "environment": "dev",
        "since": T0.isoformat(),
        "until": None,
        "details": {},
    }


def test_an_unknown_flow_is_unknown_flow() -> None:
    from flowfsm import UnknownFlow

    with pytest.raises(UnknownFlow):
        World().engine.explain("nope")


def test_flowfsm_explain_prints_the_sentences_or_json(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.json("artifact-created", "com.acme:api:4.0.0")["flows"][0]
    dev = flow["deployments"][0]
    cli.json("deployment-started", dev["id"])
    (item,) = cli.json("explain", flow["id"])
    assert (item["kind"], item["deploymentId"]) == ("cd-finish", dev["id"])
    done = cli("explain", flow["id"])
    assert done.stdout.startswith("cd-finish  Waiting for the CD system to finish the deployment to 'dev', started at ")
    gone = cli("explain", "nope")
    assert (gone.returncode, gone.stderr) == (1, "error: no flow, deployment or artifact 'nope' in the store\n")


def test_a_retried_promotion_is_named_with_its_attempt() -> None:
    """From the second attempt on, the sentence names a promotion's attempt; the data always carries it."""
    world = World(failure_strategy="PAUSE")
    world.complete()
    smoke, perf = world.dev.promotions
    world.clock.advance(minutes=1)
    world.promote(0, ResultStatus.FAILED)  # PAUSE: a person retries the check
    world.engine.handle(RetryPromotion(world.dev.id, smoke.id, "alice", "flaky"))
    (item,) = world.explain()
    assert item.details["promotions"] == [
        {"name": "smoke", "id": smoke.id, "attempt": 2},
        {"name": "perf", "id": perf.id, "attempt": 1},
    ]
    assert item.text == (
        "Waiting for the promotions 'smoke' (attempt 2), 'perf' of 'dev', deployed at 2026-01-01 00:05:00 UTC."
    )


def test_a_flow_paused_by_a_person_says_by_whom_why_and_what_it_holds() -> None:
    world = World()
    world.clock.advance(minutes=3)
    world.engine.handle(PauseFlow(world.flow.id, "alice", "release freeze"))
    (item,) = world.explain()  # no cd-start: the deployment cannot start while paused
    assert (item.kind, item.deployment_id, item.since, item.until) == (
        "paused",
        world.dev.id,
        T0 + dt.timedelta(minutes=3),
        None,
    )
    assert item.details == {"actor": "alice", "reason": "release freeze", "failed": []}
    assert item.text == (
        "Paused by 'alice' at 2026-01-01 00:03:00 UTC: release freeze. It goes on when it is resumed."
        " The deployment to 'dev' cannot start until then."
    )
    world.engine.handle(ResumeFlow(world.flow.id, "alice"))
    assert [i.kind for i in world.explain()] == ["cd-start"]


def test_a_paused_flow_still_shows_the_work_under_way() -> None:
    """A pause stops what is new, not the facts about work under way: a started
    deployment still finishes, pending promotions still report (docs/decisions.md)."""
    world = World(timeouts=Timeouts(deploy="30m"))
    world.engine.handle(DeploymentStarted(world.dev.id))
    world.engine.handle(PauseFlow(world.flow.id, "alice"))
    paused, finishing = world.explain()
    assert (paused.kind, finishing.kind, finishing.until) == ("paused", "cd-finish", T0 + dt.timedelta(minutes=30))
    assert paused.text == "Paused by 'alice' at 2026-01-01 00:00:00 UTC. It goes on when it is resumed."
    world.clock.advance(minutes=5)
    world.engine.handle(DeploymentCompleted(world.dev.id))
    assert [i.kind for i in world.explain()] == ["paused", "promotions"]


def test_a_flow_paused_by_its_policy_names_the_failed_promotion_to_retry_or_skip() -> None:
    world = World(failure_strategy="PAUSE")
    world.complete()
    smoke = world.dev.promotions[0]
    world.clock.advance(minutes=2)
    world.promote(0, ResultStatus.FAILED)
    paused, pending = world.explain()
    assert (paused.kind, paused.deployment_id, paused.since) == ("paused", world.dev.id, T0 + dt.timedelta(minutes=7))
    assert paused.text == (
        "Paused by its failure policy at 2026-01-01 00:07:00 UTC: promotion 'smoke' failed."
        " To go on, retry or skip the promotion 'smoke' of 'dev'; or abort the flow."
    )
    assert paused.details["actor"] == "flowfsm"
    assert paused.details["failed"] == [
        {
            "entity": "promotion",
            "id": smoke.id,
            "name": "smoke",
            "environment": "dev",
            "deploymentId": world.dev.id,
            "attempt": 1,
        }
    ]
    assert (pending.kind, [p["name"] for p in pending.details["promotions"]]) == ("promotions", ["perf"])
    world.engine.handle(SkipPromotion(world.dev.id, smoke.id, "alice", "known flaky"))
    assert [i.kind for i in world.explain()] == ["promotions"]


def test_a_flow_paused_by_its_policy_names_the_failed_deployment_to_retry() -> None:
    world = World(failure_strategy="PAUSE")
    world.engine.handle(DeploymentStarted(world.dev.id))
    world.engine.handle(DeploymentFailed(world.dev.id, "image pull failed"))
    (item,) = world.explain()
    assert item.text == (
        "Paused by its failure policy at 2026-01-01 00:00:00 UTC: image pull failed."
        " To go on, retry the deployment to 'dev'; or abort the flow."
    )
    assert item.details["failed"] == [{"entity": "deployment", "id": world.dev.id, "environment": "dev"}]
    world.engine.handle(RetryDeployment(world.dev.id, "alice"))
    assert [i.kind for i in world.explain()] == ["cd-start"]


def test_a_failure_under_a_persons_pause_leaves_the_pause_theirs() -> None:
    """The pause stays the person's (docs/steering.md): the explanation names them, the
    failed item to settle, and that the flow then waits to be resumed."""
    world = World(failure_strategy="PAUSE")
    world.complete()
    world.engine.handle(PauseFlow(world.flow.id, "alice", "release freeze"))
    world.clock.advance(minutes=2)
    world.promote(0, ResultStatus.FAILED)
    paused, _ = world.explain()
    assert paused.details["actor"] == "alice"
    assert paused.text == (
        "Paused by 'alice' at 2026-01-01 00:05:00 UTC: release freeze."
        " To go on, retry or skip the promotion 'smoke' of 'dev', then resume it; or abort the flow."
    )
    smoke = world.dev.promotions[0]
    world.engine.handle(SkipPromotion(world.dev.id, smoke.id, "alice", "known flaky"))
    (paused, _) = world.explain()
    assert paused.text.startswith("Paused by 'alice' at 2026-01-01 00:05:00 UTC: release freeze. It goes on when")


def test_a_retry_backoff_names_what_it_retries_at_which_attempt_and_until_when() -> None:
    world = World(failure_strategy="RETRY", retry=RetryPolicy(attempts=3, backoff="10m"))
    world.complete()
    smoke = world.dev.promotions[0]
    world.clock.advance(minutes=1)
    world.promote(0, ResultStatus.FAILED)
    pending, waiting = world.explain()
    failed = T0 + dt.timedelta(minutes=6)
    assert (pending.kind, [p["name"] for p in pending.details["promotions"]]) == ("promotions", ["perf"])
    assert (waiting.kind, waiting.deployment_id, waiting.since, waiting.until) == (
        "backoff",
        world.dev.id,
        failed,
        failed + dt.timedelta(minutes=10),
    )
    assert waiting.details == {"retry": [{"entity": "promotion", "name": "smoke", "id": smoke.id, "attempt": 2}]}
    assert waiting.text == (
        "Waiting until 2026-01-01 00:16:00 UTC to retry the promotion 'smoke' (attempt 2) of 'dev',"
        " which failed at 2026-01-01 00:06:00 UTC."
    )
    world.clock.advance(minutes=10)
    Scheduler(world.engine.repository, world.engine).run_once()
    (item,) = world.explain()
    assert item.details["promotions"][0] == {"name": "smoke", "id": smoke.id, "attempt": 2}


def test_a_deployment_retry_backoff_names_the_deployment() -> None:
    world = World(failure_strategy="RETRY", retry=RetryPolicy(attempts=2, backoff="1m"))
    world.engine.handle(DeploymentStarted(world.dev.id))
    world.engine.handle(DeploymentFailed(world.dev.id, "image pull failed"))
    (item,) = world.explain()
    assert (item.kind, item.until) == ("backoff", T0 + dt.timedelta(minutes=1))
    assert item.details == {"retry": [{"entity": "deployment", "id": world.dev.id, "attempt": 2}]}
    assert item.text.startswith("Waiting until 2026-01-01 00:01:00 UTC to retry the deployment to 'dev' (attempt 2),")


def test_an_aborted_flow_says_by_whom_and_why() -> None:
    world = World()
    world.engine.handle(DeploymentStarted(world.dev.id))
    world.clock.advance(minutes=4)
    world.engine.handle(AbortFlow(world.flow.id, "bob", "wrong build"))
    (item,) = world.explain()
    assert (item.kind, item.environment, item.since) == ("finished", "dev", T0 + dt.timedelta(minutes=4))
    assert item.details == {"state": "aborted", "actor": "bob", "reason": "wrong build"}
    assert item.text == "Finished: the flow was aborted by 'bob' at 2026-01-01 00:04:00 UTC, in 'dev': wrong build."


def test_a_superseded_flow_says_so_and_by_what_when_the_history_says() -> None:
    world = World()
    flow = attrs.evolve(world.engine.repository.get(world.flow.id), state=FlowState.SUPERSEDED)
    entry = HistoryEntry(
        flow.id,
        2,
        T0 + dt.timedelta(hours=1),
        {"type": "ArtifactCreated"},
        "ci",
        "a newer flow superseded it",
        [StateChange("flow", flow.id, "inProgress", "superseded")],
        (),
    )
    (item,) = explaining.explain(flow, None, (), (entry,))
    assert item.details == {"state": "superseded", "actor": "ci", "reason": "a newer flow superseded it"}
    assert item.text == (
        "Finished: the flow was superseded by 'ci' at 2026-01-01 01:00:00 UTC: a newer flow superseded it."
    )
    (bare,) = explaining.explain(flow, None, (), ())  # no history: no one to name
    assert bare.text == f"Finished: the flow was superseded at {explaining.at(flow.updated_at)}."


def test_flowfsm_explain_shows_a_pause(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.json("artifact-created", "com.acme:api:4.0.0")["flows"][0]
    cli("pause", flow["id"], "--actor", "alice", "--reason", "release freeze")
    shown = cli("explain", flow["id"])
    assert shown.stdout.startswith("paused  Paused by 'alice' at ")
    assert "release freeze. It goes on when it is resumed." in shown.stdout
