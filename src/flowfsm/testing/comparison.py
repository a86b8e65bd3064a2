"""``RepositoryStateMachine``: a backend driven side by side with the in-memory
reference by Hypothesis::

    TestMyMachine = RepositoryStateMachine.for_repository(lambda: MyRepository(...)).TestCase

Needs Hypothesis (and pytest to collect the test case).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flowfsm.catalog import Catalog
from flowfsm.engine import FlowEngine
from flowfsm.errors import FlowFSMError
from flowfsm.model import (
    Action,
    Artifact,
    Deployment,
    DeploymentState,
    Environment,
    FlowState,
    HookEvent,
    Pipeline,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Service,
    Webhook,
)
from flowfsm.protocols import Repository
from flowfsm.repositories.memory import InMemoryRepository
from flowfsm.testing import SequentialIds, StepClock
from flowfsm.triggers import ArtifactCreated, DeploymentCompleted, DeploymentStarted, PromotionCompleted, Trigger

__all__ = ["RepositoryStateMachine"]


def _comparison_catalog() -> Catalog:
    """Two services on one artifact, webhooks with two actions on every event."""
    webhooks = [
        Webhook(f"wh-{event.value}", event, [Action("a1", url="http://127.0.0.1/1"), Action("a2")])
        for event in HookEvent
    ]
    return Catalog(
        [
            Service(
                "svc-a",
                artifacts=["com.acme:api"],
                pipeline=Pipeline("p", [Environment("dev", ["smoke", "perf"]), Environment("prod", ["smoke"])]),
                webhooks=webhooks,
            ),
            Service(
                "svc-b",
                artifacts=["com.acme:api"],
                pipeline=Pipeline("p", [Environment("dev"), Environment("prod", ["smoke"])]),
                webhooks=webhooks[:3],
            ),
        ]
    )


class RepositoryStateMachine(RuleBasedStateMachine):
    """Drives two engines side by side with the same random triggers: one on the
    repository under test, one on ``InMemoryRepository`` as the reference, with the
    same ids and clock. After every step both must have answered alike and stored
    the same flows and the same pending outbox.

    ``TestMine = RepositoryStateMachine.for_repository(make_repository).TestCase``
    """

    def make_repository(self) -> Repository:
        raise NotImplementedError

    @classmethod
    def for_repository(cls, make: Callable[[], Repository]) -> type[RepositoryStateMachine]:
        return type(f"{cls.__name__}For", (cls,), {"make_repository": lambda self: make()})

    def __init__(self) -> None:
        super().__init__()
        catalog = _comparison_catalog()
        self.repository = self.make_repository()
        self.reference = InMemoryRepository()
        self.engine = FlowEngine(catalog, self.repository, None, clock=StepClock(), id_factory=SequentialIds())
        self.reference_engine = FlowEngine(catalog, self.reference, None, clock=StepClock(), id_factory=SequentialIds())

    def teardown(self) -> None:
        close: Callable[[], None] | None = getattr(self.repository, "close", None)
        if close is not None:
            close()

    def _both(self, trigger: Trigger) -> None:
        try:
            expected = self.reference_engine.handle(trigger)
        except FlowFSMError as e:
            with pytest.raises(type(e)):
                self.engine.handle(trigger)
            return
        assert self.engine.handle(trigger) == expected

    def _deployments(self) -> list[Deployment]:
        return [d for f in self.reference.list_flows(limit=1000) for d in f.deployments]

    @rule(version=st.sampled_from(["1", "2", "3"]))
    def artifact_created(self, version: str) -> None:
        self._both(ArtifactCreated(Artifact("com.acme", "api", version)))

    @rule(data=st.data(), complete=st.booleans())
    def deployment_trigger(self, data: st.DataObject, complete: bool) -> None:
        ids = [d.id for d in self._deployments()] + ["unknown-deployment"]
        deployment_id = data.draw(st.sampled_from(ids))
        self._both(DeploymentCompleted(deployment_id) if complete else DeploymentStarted(deployment_id))

    @precondition(lambda self: any(d.promotions for d in self._deployments()))
    @rule(data=st.data(), status=st.sampled_from(ResultStatus))
    def promotion_completed(self, data: st.DataObject, status: ResultStatus) -> None:
        pairs = [(d.id, p.id) for d in self._deployments() for p in d.promotions]
        deployment_id, promotion_id = data.draw(st.sampled_from(pairs))
        self._both(PromotionCompleted(deployment_id, promotion_id, [PromotionResult(promotion_id, status)]))

    @precondition(lambda self: bool(self.reference.list_flows(state=FlowState.IN_PROGRESS)))
    @rule(data=st.data(), passes=st.integers(0, 5))
    def progress(self, data: st.DataObject, passes: int) -> None:
        """The next valid trigger of a flow in progress, so runs reach deep states."""
        flow = data.draw(st.sampled_from(self.reference.list_flows(state=FlowState.IN_PROGRESS)))
        current = flow.current_deployment()
        assert current is not None
        if current.state is DeploymentState.NOT_STARTED:
            self._both(DeploymentStarted(current.id))
        elif current.state is DeploymentState.STARTED:
            self._both(DeploymentCompleted(current.id))
        else:
            promotion = next(p for p in current.promotions if p.state is PromotionState.PENDING)
            status = ResultStatus.PASSED if passes else ResultStatus.FAILED
            self._both(PromotionCompleted(current.id, promotion.id, [PromotionResult(promotion.id, status)]))

    @rule(limit=st.integers(1, 8), deliver=st.booleans())
    def dispatch(self, limit: int, deliver: bool) -> None:
        claimed = self.repository.claim(limit, lease=60)
        assert claimed == self.reference.claim(limit, lease=60)
        ids = [r.id for r in claimed]
        # A claim hands out the leading run of each flow's pending requests: none waits.
        assert self.repository.waiting_flows(ids) == self.reference.waiting_flows(ids) == frozenset()
        for repository in (self.repository, self.reference):
            if deliver:
                repository.mark_delivered(ids)
            else:
                repository.release(ids)

    @invariant()
    def stores_agree(self) -> None:
        flows = self.reference.list_flows(limit=1000)
        assert self.repository.list_flows(limit=1000) == flows
        for flow in flows:
            assert self.repository.get(flow.id) == flow
            pending = [r.request for r in self.repository.hook_requests(flow.id) if r.delivered_at is None]
            assert pending == [r.request for r in self.reference.hook_requests(flow.id)]
            assert self.repository.history(flow.id) == self.reference.history(flow.id)
        assert self.repository.count_pending() == self.reference.count_pending()
        for service in ("svc-a", "svc-b"):
            for environment in ("dev", "prod"):
                expected = self.reference.last_success(service, environment)
                assert self.repository.last_success(service, environment) == expected
                if expected is not None:
                    other = self.reference.last_success(service, environment, excluding=expected.id)
                    assert self.repository.last_success(service, environment, excluding=expected.id) == other
