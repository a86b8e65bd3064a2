"""The unit of work spans a whole flow, and more than one flow, saved in one commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    Flow,
    FlowEngine,
    FlowState,
    HookEvent,
    HookRequest,
    Outcome,
)
from flowfsm.engine import Applier
from flowfsm.machines import fire
from flowfsm.model import _slots
from flowfsm.repositories import InMemoryRepository
from flowfsm.testing import SequentialIds, StepClock
from flowfsm.work import Work

from .conftest import api_service


@attrs.frozen
class EndFlows:
    """A trigger ending several flows at once (as superseding will, SPEC §11)."""

    flow_ids: tuple[str, ...]


class Counting(InMemoryRepository):
    def __init__(self) -> None:
        super().__init__()
        self.commits: list[list[str]] = []

    def commit(self, flows: Sequence[Flow], hook_requests: Sequence[HookRequest] = (), **kwargs: Any) -> None:
        self.commits.append([f.id for f in flows])
        super().commit(flows, hook_requests, **kwargs)


class EndingEngine(FlowEngine):
    def _on_end_flows(self, trigger: EndFlows) -> tuple[Outcome, list[Flow]]:
        work = Work()
        for flow_id in trigger.flow_ids:
            flow = self.repository.get(flow_id)
            fire(work.open(flow, self.catalog.get(flow.service_id)).draft(0), "fail")
        return self.outcome(work, applied=True)

    APPLIERS: ClassVar[Mapping[type, Applier]] = {**FlowEngine.APPLIERS, EndFlows: _on_end_flows}


def test_a_trigger_may_change_several_flows_in_one_commit() -> None:
    repository = Counting()
    catalog = Catalog([api_service("a"), api_service("b")])
    engine = EndingEngine(catalog, repository, None, clock=StepClock(), id_factory=SequentialIds())
    first, second = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1"))).flows
    repository.commits.clear()
    outcome = engine.handle(EndFlows((first.id, second.id)))  # type: ignore[arg-type]  # this engine's own trigger
    assert repository.commits == [[first.id, second.id]]
    assert [(f.id, f.state, f.version) for f in outcome.flows] == [
        (first.id, FlowState.FAILED, 2),
        (second.id, FlowState.FAILED, 2),
    ]
    assert [(r.flow_id, r.event) for r in outcome.hook_requests if r.webhook_id == "wh-flow-failed"][::2] == [
        (first.id, HookEvent.FLOW_FAILED),
        (second.id, HookEvent.FLOW_FAILED),
    ]
    assert [repository.get(f.id).state for f in (first, second)] == [FlowState.FAILED] * 2


def test_a_trigger_may_change_any_deployment_of_its_flow() -> None:
    """A unit of work reaches every deployment, not only the one a trigger names."""
    flow = (
        FlowEngine(Catalog([api_service()]), InMemoryRepository(), None)
        .handle(ArtifactCreated(Artifact("com.acme", "api", "1")))
        .flows[0]
    )
    draft = Work().open(flow, api_service())
    fire(draft.deployment(0), "start")
    fire(draft.deployment(0), "complete")
    assert draft.current() == 0
    assert [d.state.value for d in draft.flow().deployments] == ["completed", "notStarted", "notStarted"]
    assert draft.index(flow.deployments[2].id) == 2
    assert draft.index("nope") is None
    later = draft.flow()
    assert (later.id, later.version, later.created_at, later.updated_at) == (
        flow.id,
        flow.version,
        flow.created_at,
        flow.updated_at,
    )
    assert draft.work.open(flow, api_service()) is draft  # one draft per flow in a unit of work


def test_the_trusted_constructors_check_their_fields_for_real() -> None:
    """Not an ``assert``: ``python -O`` keeps the check."""

    @attrs.frozen
    class Two:
        a: int
        b: int

    with pytest.raises(TypeError, match=r"Two has the fields \('a', 'b'\), not \('a',\)"):
        _slots(Two, "a")
    assert len(_slots(Two, "a", "b")) == 2


def test_a_trigger_leaves_no_reference_cycle_behind() -> None:
    """Each FlowDraft refers to its Work: the engine closes the unit of work, so the
    garbage collector has nothing of a trigger's to collect."""
    import gc

    engine = FlowEngine(Catalog([api_service()]), InMemoryRepository(), None)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1"))).flows[0]
    gc.collect()
    gc.disable()
    try:
        from flowfsm import DeploymentStarted

        engine.handle(DeploymentStarted(flow.deployments[0].id))
        engine.handle(DeploymentStarted(flow.deployments[0].id))  # a duplicate too
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", "2")))
        assert gc.collect() == 0
    finally:
        gc.enable()
