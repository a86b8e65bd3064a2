"""Every entity, trigger and HookRequest survives JSON and back unchanged (SPEC §7)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Deployment,
    DeploymentStarted,
    DeploymentState,
    Flow,
    HookRequest,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    Trigger,
    ValidationError,
)
from flowfsm.converter import from_json, hook_requests_json, structure, to_json, unstructure

from . import strategies as s


def round_trip(value: Any, as_type: Any) -> Any:
    return from_json(to_json(value, as_type), as_type)


@given(s.flows)
def test_flows_round_trip(flow: Flow) -> None:
    assert round_trip(flow, Flow) == flow


@given(s.hook_requests)
def test_hook_requests_round_trip(request: HookRequest) -> None:
    assert round_trip(request, HookRequest) == request


@given(st.lists(s.hook_requests, max_size=4), st.data())
def test_outbox_json_equals_the_converters(requests: list[HookRequest], data: st.DataObject) -> None:
    if requests:  # HookRequests of one event share their payload object
        shared = data.draw(st.sampled_from(requests)).payload
        for request in data.draw(st.lists(st.sampled_from(requests), max_size=3)):
            request.payload = shared
    texts = hook_requests_json(requests)
    assert [json.loads(t) for t in texts] == [unstructure(r) for r in requests]
    assert [from_json(t, HookRequest) for t in texts] == requests


@given(s.triggers)
def test_triggers_round_trip_with_their_type_tag(trigger: Trigger) -> None:
    data = json.loads(to_json(trigger, Trigger))
    assert data["type"] == type(trigger).__name__
    assert round_trip(trigger, Trigger) == trigger
    assert round_trip(trigger, type(trigger)) == trigger


@given(s.services)
def test_services_round_trip(service: Service) -> None:
    again = round_trip(service, Service)
    assert again == service
    assert again.ref == service.ref
    for webhook in service.webhooks:
        assert again.subscribers(webhook.event) == service.subscribers(webhook.event)


@given(st.one_of(s.artifacts, s.deployments, s.results, s.pipelines, s.webhooks, s.environments))
def test_parts_round_trip(value: Any) -> None:
    assert round_trip(value, type(value)) == value


def test_keys_are_camel_case_and_states_use_the_contract_spelling() -> None:
    deployment = Deployment("d1", "dev", [], DeploymentState.NOT_STARTED)
    assert unstructure(deployment) == {
        "id": "d1",
        "environment": "dev",
        "promotions": [],
        "state": "notStarted",
    }
    trigger = PromotionCompleted("d1", "p1", [PromotionResult("p1", ResultStatus.PASSED)])
    assert unstructure(trigger, Trigger) == {
        "type": "PromotionCompleted",
        "deploymentId": "d1",
        "promotionId": "p1",
        "results": [{"promotionId": "p1", "resultStatus": "passed", "details": {}}],
    }


def test_structuring_validates_like_constructing() -> None:
    with pytest.raises(ValidationError) as empty:
        structure({"type": "PromotionCompleted", "deploymentId": "d", "promotionId": "p", "results": []}, Trigger)
    assert empty.value.field == "$.results"
    bad_status = {"promotionId": "p", "resultStatus": "maybe", "details": {}}
    with pytest.raises(ValidationError) as status:
        structure({"deploymentId": "d", "promotionId": "p", "results": [bad_status]}, PromotionCompleted)
    assert status.value.field == "$.results[0].resultStatus"
    with pytest.raises(ValidationError) as extra:
        structure({"deploymentId": "d", "colour": "red"}, DeploymentStarted)
    assert "colour" in str(extra.value)
    with pytest.raises(ValidationError) as missing:
        structure({"artifact": {"group": "g", "name": "n"}}, ArtifactCreated)
    assert missing.value.field == "$.artifact.version"
    with pytest.raises(ValidationError) as tag:
        structure({"type": "Nope"}, Trigger)
    assert tag.value.field.startswith("$")
    assert structure({"artifact": {"group": "g", "name": "n", "version": "1"}}, ArtifactCreated) == ArtifactCreated(
        Artifact("g", "n", "1")
    )
