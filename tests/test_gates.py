"""The gates together (SPEC §11, docs/gates.md): approvals, then freeze windows, then
the queue, at each announcement — on every backend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from flowfsm import (
    ApprovalGranted,
    ApprovalPolicy,
    ArtifactCreated,
    Catalog,
    DeploymentState,
    Environment,
    FlowEngine,
    HookEvent,
    Pipeline,
    Service,
)
from flowfsm.emitters import RecordingEmitter
from flowfsm.model import Flow
from flowfsm.protocols import Repository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock, SequentialIds
from tests.conftest import two_actions
from tests.test_freezes import ARTIFACT, FREEZE_ENDS, FREEZE_STARTS, FRIDAY_NOON, World, weekend


class Gated(World):
    """The weekend freeze on prod, and prod needs alice's approval."""

    def __init__(self, repository: Repository) -> None:
        self.clock = FakeClock(FRIDAY_NOON)
        self.repository = repository
        self.emitter = RecordingEmitter()
        pipeline = Pipeline(
            "p", [Environment("dev", ["smoke"]), Environment("prod", ["smoke"], approvals=ApprovalPolicy(["alice"]))]
        )
        webhooks = [two_actions(f"wh-{e.value}", e) for e in HookEvent]
        self.catalog = Catalog([Service("svc", ["com.acme:api"], pipeline, webhooks=webhooks)], freezes=[weekend()])
        self.engine = FlowEngine(self.catalog, repository, self.emitter, clock=self.clock, id_factory=SequentialIds())
        self.scheduler = Scheduler(repository, self.engine, clock=self.clock)

    def to_prod(self) -> Flow:
        (flow,) = self.engine.handle(ArtifactCreated(ARTIFACT, actor="bob")).flows
        self.deploy(flow, 0)
        return self.flow(flow)


def test_an_approval_given_during_a_freeze_is_held_until_the_window_ends(
    make_repository: Callable[[], Repository],
) -> None:
    world = Gated(make_repository())
    world.clock.now = FREEZE_STARTS + dt.timedelta(hours=1)
    flow = world.to_prod()
    prod = flow.deployments[1]
    # Approvals come first: the freeze does not stop people approving.
    assert prod.state is DeploymentState.AWAITING_APPROVAL
    assert world.events()[-1] is HookEvent.APPROVAL_REQUESTED
    assert [w.kind for w in world.engine.explain(flow.id)] == ["approval"]
    world.emitter.clear()
    world.engine.handle(ApprovalGranted(prod.id, "alice"))
    # The gate that follows holds it: held until the window ends, not announced.
    assert world.flow(flow).deployments[1].state is DeploymentState.HELD
    assert world.events() == [HookEvent.APPROVAL_GRANTED, HookEvent.DEPLOYMENT_HELD]
    assert [w.kind for w in world.engine.explain(flow.id)] == ["freeze"]
    (timer,) = world.repository.timers(flow.id)
    assert timer.due == FREEZE_ENDS
    world.emitter.clear()
    world.clock.now = FREEZE_ENDS
    assert world.scheduler.run_once() == 1
    assert world.flow(flow).deployments[1].state is DeploymentState.NOT_STARTED
    assert world.flow(flow).deployments[1].approvals == ("alice",)
    assert world.events() == [HookEvent.DEPLOYMENT_CREATED]


def test_an_approval_given_after_the_window_announces_at_once(make_repository: Callable[[], Repository]) -> None:
    world = Gated(make_repository())
    world.clock.now = FREEZE_STARTS + dt.timedelta(hours=1)
    flow = world.to_prod()
    world.clock.now = FREEZE_ENDS + dt.timedelta(hours=1)
    assert world.scheduler.run_once() == 0  # no freeze timer: it waited for approval, not the window
    world.emitter.clear()
    world.engine.handle(ApprovalGranted(flow.deployments[1].id, "alice"))
    assert world.flow(flow).deployments[1].state is DeploymentState.NOT_STARTED
    assert world.events() == [HookEvent.APPROVAL_GRANTED, HookEvent.DEPLOYMENT_CREATED]
