"""HookRequests and their payloads are values: no emitter, and no caller, can change
what another request sends or what the outbox holds."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
from typing import Any

import attrs
import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    FlowEngine,
    HookEvent,
    HookRequest,
    PromotionCompleted,
    PromotionPayload,
    PromotionResult,
    ResultStatus,
)
from flowfsm.converter import from_json, to_json
from flowfsm.emitters import CallbackEmitter
from flowfsm.repositories import InMemoryRepository

from .conftest import api_service

DETAILS: dict[str, Any] = {"k": {"n": 1}, "runs": [1, 2, {"deep": True}], "note": "ok"}


def promotion_requests(emit: Any) -> tuple[InMemoryRepository, list[HookRequest], dict[str, Any]]:
    """A passed dev smoke check with DETAILS, delivered inline through ``emit``."""
    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([api_service()]), repository, CallbackEmitter(emit))
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0]
    dev = flow.deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    given = copy.deepcopy(DETAILS)
    outcome = engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED, given)]))
    completed = [r for r in outcome.hook_requests if r.event is HookEvent.PROMOTION_COMPLETED]
    return repository, completed, given


def details_of(request: HookRequest) -> Any:
    assert isinstance(request.payload, PromotionPayload)
    return request.payload.promotion_result.details


CHANGES = [
    lambda d: d.__setitem__("evil", 1),
    lambda d: d["k"].__setitem__("n", 999),
    lambda d: d["runs"].append(3),
    lambda d: d["runs"][2].update(deep=False),
    lambda d: d.pop("note"),
    lambda d: d.clear(),
]


@pytest.mark.parametrize("change", CHANGES)
def test_an_emitter_cannot_change_what_its_siblings_send(change: Any) -> None:
    seen: list[str] = []
    refused: list[TypeError] = []

    def meddle(request: HookRequest) -> None:
        if request.event is HookEvent.PROMOTION_COMPLETED:
            seen.append(json.dumps(details_of(request), sort_keys=True))
            try:
                change(details_of(request))
            except TypeError as e:
                refused.append(e)

    _, completed, _ = promotion_requests(meddle)
    assert len(completed) == 2  # two actions: siblings sharing one payload
    assert seen == [json.dumps(DETAILS, sort_keys=True)] * 2
    assert len(refused) == 2
    assert "read-only" in str(refused[0])
    assert [details_of(r) for r in completed] == [DETAILS, DETAILS]


@pytest.mark.parametrize("change", CHANGES)
def test_an_emitter_cannot_change_what_waits_in_the_outbox(change: Any) -> None:
    """An emitter meddles, then fails: what the dispatcher will send is unchanged."""

    def meddle_and_fail(request: HookRequest) -> None:
        if request.event is HookEvent.PROMOTION_COMPLETED:
            with contextlib.suppress(TypeError):
                change(details_of(request))
            raise ConnectionError("receiver down")

    repository, completed, _ = promotion_requests(meddle_and_fail)
    pending = [r for r in repository.claim(100) if r.event is HookEvent.PROMOTION_COMPLETED]
    assert [r.id for r in pending] == [r.id for r in completed]
    assert [details_of(r) for r in pending] == [DETAILS, DETAILS]


def test_a_payload_cannot_be_changed() -> None:
    _, (request, sibling), _ = promotion_requests(lambda request: None)
    assert request.payload is sibling.payload  # one event, one payload object
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.payload.promotion_result = None  # type: ignore[misc, union-attr]  # the point: it is frozen
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.payload.deployment = None  # type: ignore[misc, assignment]  # the point: it is frozen


def test_the_callers_dict_is_copied_not_kept() -> None:
    _, (request, _), given = promotion_requests(lambda request: None)
    given["k"]["n"] = 999
    given["evil"] = True
    assert details_of(request) == DETAILS


def test_frozen_details_read_as_json_and_copy_as_values() -> None:
    result = PromotionResult("p1", ResultStatus.PASSED, DETAILS)
    assert result.details == DETAILS
    assert json.loads(json.dumps(result.details)) == DETAILS
    assert from_json(to_json(result, PromotionResult), PromotionResult) == result
    assert copy.copy(result.details) == DETAILS
    assert copy.deepcopy(result.details) == DETAILS
    assert pickle.loads(pickle.dumps(result)) == result
    assert PromotionResult("p1", ResultStatus.PASSED).details == {}
    assert isinstance(dict(result.details), dict)  # a plain copy to change is one call away
