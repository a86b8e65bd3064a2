"""Explain (SPEC §9): what a flow waits for, one kind at a time, as data and a sentence."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    Environment,
    Flow,
    FlowEngine,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    Timeouts,
)
from flowfsm import explain as explaining
from flowfsm.converter import unstructure
from flowfsm.explain import Situation, Waiting
from flowfsm.repositories import InMemoryRepository
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


def test_promotions_name_their_attempt_where_promotions_count_them() -> None:
    """Promotions gain an ``attempt`` with retries (SPEC §8): from the second, the
    sentence names it, and the data carries it whenever there is one."""
    import attrs

    from flowfsm import DeploymentState, Promotion

    @attrs.frozen(weakref_slot=False)
    class Attempted(Promotion):
        attempt: int = 1

    world = World()
    world.complete()
    flow = world.engine.repository.get(world.flow.id)
    dev = flow.deployments[0]
    smoke, perf = dev.promotions
    retried = (Attempted(smoke.id, smoke.name, smoke.state, 2), Attempted(perf.id, perf.name, perf.state))
    flow = attrs.evolve(flow, deployments=[attrs.evolve(dev, promotions=retried), *flow.deployments[1:]])
    assert flow.deployments[0].state is DeploymentState.COMPLETED
    (item,) = explaining.explain(flow, None, (), ())
    assert item.details["promotions"] == [
        {"name": "smoke", "id": smoke.id, "attempt": 2},
        {"name": "perf", "id": perf.id, "attempt": 1},
    ]
    assert "promotions 'smoke' (attempt 2), 'perf' of 'dev', deployed at an unrecorded time" in item.text
