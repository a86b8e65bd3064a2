"""Flows are immutable values: a trigger stores a new version, shares what it did not
change, and never alters a version anyone already holds."""

from __future__ import annotations

import gc
import weakref

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    DeploymentState,
    Flow,
    FlowEngine,
    FlowState,
    HookEvent,
    Promotion,
    PromotionCompleted,
    PromotionResult,
    PromotionState,
    ResultStatus,
)
from flowfsm.converter import unstructure
from flowfsm.emitters import RecordingEmitter
from flowfsm.errors import FlowFSMError
from flowfsm.model import _make_artifact, _make_deployment, _make_flow, _make_promotion
from flowfsm.repositories import InMemoryRepository
from flowfsm.testing import sample_flow

from .conftest import api_service
from .strategies import flows


def test_entities_refuse_changes_and_hold_tuples() -> None:
    flow = sample_flow()
    assert isinstance(flow.deployments, tuple)
    assert all(isinstance(d.promotions, tuple) for d in flow.deployments)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        flow.state = FlowState.FAILED  # type: ignore[misc]  # what the test is about
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        flow.deployments[0].state = DeploymentState.STARTED  # type: ignore[misc]  # what the test is about
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        flow.deployments[0].promotions[0].state = PromotionState.SUCCESS  # type: ignore[misc]  # what the test is about
    assert hash(flow) == hash(attrs.evolve(flow))


def test_a_trigger_shares_the_deployments_it_did_not_change(engine: FlowEngine) -> None:
    first = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.4.0"))).flows[0]
    started = engine.handle(DeploymentStarted(first.deployments[0].id)).flows[0]
    assert started.version == first.version + 1
    assert started.deployments[0] is not first.deployments[0]
    assert started.deployments[0].promotions is first.deployments[0].promotions
    assert all(a is b for a, b in zip(started.deployments[1:], first.deployments[1:], strict=True))
    assert first.deployments[0].state is DeploymentState.NOT_STARTED  # the old version is untouched
    assert engine.repository.get(first.id) is started  # the in-memory store keeps what it is given


def test_each_payload_holds_the_deployment_of_its_moment(engine: FlowEngine, emitter: RecordingEmitter) -> None:
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.4.0"))).flows[0]
    dev = flow.deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    engine.handle(DeploymentCompleted(dev.id))
    (smoke,) = dev.promotions
    engine.handle(PromotionCompleted(dev.id, smoke.id, [PromotionResult(smoke.id, ResultStatus.PASSED)]))
    seen = {r.event: r.payload.deployment for r in emitter.requests if r.payload.deployment.id == dev.id}
    assert seen[HookEvent.DEPLOYMENT_CREATED].state is DeploymentState.NOT_STARTED
    assert seen[HookEvent.DEPLOYMENT_STARTED].state is DeploymentState.STARTED
    assert seen[HookEvent.DEPLOYMENT_COMPLETED].state is DeploymentState.COMPLETED
    promoted = seen[HookEvent.PROMOTION_COMPLETED]
    assert (promoted.state, promoted.promotions[0].state) == (DeploymentState.COMPLETED, PromotionState.SUCCESS)
    assert seen[HookEvent.DEPLOYMENT_SUCCEEDED].state is DeploymentState.SUCCESS


@given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=30))
def test_no_trigger_changes_a_version_already_handed_out(moves: list[tuple[int, bool]]) -> None:
    """Random triggers, valid or not; every flow ever returned keeps its JSON form."""
    engine = FlowEngine(Catalog([api_service()]), InMemoryRepository(), None)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1"))).flows[0]
    handed_out: list[tuple[Flow, object]] = [(flow, unstructure(flow))]
    promotions: list[tuple[str, Promotion]] = [(d.id, p) for d in flow.deployments for p in d.promotions]
    for pick, passes in moves:
        deployments = flow.deployments
        if pick < 2 * len(deployments):
            deployment = deployments[pick // 2]
            trigger: object = (DeploymentCompleted if pick % 2 else DeploymentStarted)(deployment.id)
        else:
            deployment_id, promotion = promotions[pick % len(promotions)]
            status = ResultStatus.PASSED if passes else ResultStatus.FAILED
            trigger = PromotionCompleted(deployment_id, promotion.id, [PromotionResult(promotion.id, status)])
        try:
            outcome = engine.handle(trigger)  # type: ignore[arg-type]  # every kind of trigger, built above
        except FlowFSMError:  # refused triggers are part of the walk
            continue
        for returned in outcome.flows:
            handed_out.append((returned, unstructure(returned)))
        for earlier, form in handed_out:
            assert unstructure(earlier) == form
        stored = engine.repository.get(flow.id)
        assert stored.version == max(f.version for f, _ in handed_out)


@given(flows)
def test_trusted_constructors_build_equal_frozen_entities(flow: Flow) -> None:
    """``_make_flow`` and friends (the engine's and the SQL backends' fast path) build
    what the attrs constructors build, frozen alike."""
    rebuilt = _make_flow(
        flow.id,
        _make_artifact(flow.artifact.group, flow.artifact.name, flow.artifact.version),
        flow.service_id,
        tuple(
            _make_deployment(
                d.id, d.environment, tuple(_make_promotion(p.id, p.name, p.state) for p in d.promotions), d.state
            )
            for d in flow.deployments
        ),
        flow.state,
        flow.version,
        flow.created_at,
        flow.updated_at,
    )
    assert type(rebuilt) is Flow
    assert type(rebuilt.artifact) is Artifact
    assert rebuilt == flow
    assert hash(rebuilt) == hash(flow)
    assert repr(rebuilt) == repr(flow)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rebuilt.version = 0  # type: ignore[misc]  # what the test is about


def test_an_engine_goes_with_its_last_reference(catalog: Catalog) -> None:
    """No reference cycle keeps an engine, and with it its repository's flows, alive
    until the cyclic garbage collector happens to run."""
    engine = FlowEngine(catalog, InMemoryRepository(), RecordingEmitter())
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1"))).flows[0]
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    repository = weakref.ref(engine.repository)
    gone = weakref.ref(engine)
    gc.disable()
    try:
        del engine
        assert gone() is None
        assert repository() is None
    finally:
        gc.enable()
