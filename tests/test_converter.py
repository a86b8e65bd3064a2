"""Every entity, trigger and HookRequest survives JSON and back unchanged (SPEC §7)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, get_args

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Deployment,
    DeploymentFailed,
    DeploymentStarted,
    DeploymentState,
    Flow,
    FlowFSMError,
    HookRequest,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    TimerFired,
    Trigger,
    ValidationError,
)
from flowfsm.converter import from_json, hook_requests_json, structure, to_json, unstructure
from flowfsm.triggers import MAX_ACTOR, MAX_REASON

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
        sharing = data.draw(st.sets(st.sampled_from(range(len(requests))), max_size=3))
        requests = [attrs.evolve(r, payload=shared) if i in sharing else r for i, r in enumerate(requests)]
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


# --- any input: a trigger, or a FlowFSMError naming where; never anything else ---

odd_text = st.text(max_size=6) | st.sampled_from(["\x00", "a\ud800", "\udcff", "[/x]", ":package:", ""])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text  # floats: NaN and infinities too
huge = st.builds(pow, st.just(10), st.just(5000))  # more digits than Python writes by default


def nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4), max_leaves=12
    )


json_ish = nested(scalars | huge)
trigger_keys = st.sampled_from(
    [
        "type",
        "artifact",
        "group",
        "name",
        "version",
        "deploymentId",
        "promotionId",
        "results",
        "resultStatus",
        "details",
    ]
)
trigger_tags = st.sampled_from(["ArtifactCreated", "DeploymentStarted", "DeploymentCompleted", "PromotionCompleted"])
# Nearly-triggers: the right keys and tags, with anything as values, at any depth.


def trigger_like(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        values | trigger_tags | st.just("passed"),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(trigger_keys, inner, max_size=5),
        max_leaves=16,
    )


PYTHON_INTERNALS = ("Error(", "object has no attribute", "object is not", "KeyError", "TypeError", "sys.")


def outcome(make: Callable[[], Any]) -> Any:
    """What ``make`` returns, or the FlowFSMError it raises (anything else fails the test)."""
    try:
        return make()
    except FlowFSMError as e:
        return e


@given(st.one_of(json_ish, trigger_like(json_ish), s.triggers.map(lambda t: unstructure(t, Trigger))))
def test_structuring_any_json_gives_a_trigger_or_a_validation_error(data: Any) -> None:
    result = outcome(lambda: structure(data, Trigger))
    if isinstance(result, FlowFSMError):
        assert isinstance(result, ValidationError)
        assert result.field.startswith("$")
        assert len(str(result)) < 500
        assert not any(internal in result.message for internal in PYTHON_INTERNALS), result.message
    else:
        assert isinstance(result, get_args(Trigger))  # one of the triggers, whichever the data named
        text = to_json(result, Trigger)  # what parses can be written back, as UTF-8 every backend stores
        assert "\\u0000" not in text
        text.encode("utf-8")
        assert from_json(text, Trigger) == result


@given(st.text() | st.binary() | st.just("1" * 5000) | st.builds(json.dumps, trigger_like(nested(scalars))))
def test_parsing_any_text_gives_a_trigger_or_a_validation_error(text: str | bytes) -> None:
    result = outcome(lambda: from_json(text, Trigger))
    assert isinstance(result, ValidationError | Trigger)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("{", "$", "not JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        (b"\xff", "$", "not UTF-8 (byte 1)"),
        ("[" * 100_000, "$", "nested too deeply to read"),
        ("1" * 5000, "$", "a number has too many digits to read"),
        ('{"type": "DeploymentStarted", "deploymentId": NaN}', "$", "not JSON: NaN is not a JSON number"),
        ("{}", "$.type", "required key missing: one of 'ArtifactCreated', 'DeploymentStarted',"),
        ('{"type": "Nope"}', "$.type", "'Nope' is not one of 'ArtifactCreated', 'DeploymentStarted',"),
        ("[1, 2]", "$", "expected a JSON object, got [1, 2]"),
        ('{"type": "ArtifactCreated", "artifact": "g:n:v"}', "$.artifact", "expected a JSON object, got 'g:n:v'"),
        ('{"type": "PromotionCompleted", "deploymentId": "d", "promotionId": "p", "results": "r"}', "$.results", ""),
        # One key twice: parsers differ on which wins, so a checking proxy and flowfsm could read two triggers.
        (
            '{"type": "DeploymentStarted", "deploymentId": "d1", "deploymentId": "d2"}',
            "$",
            "duplicate key 'deploymentId'",
        ),
        ('{"type": "DeploymentStarted", "type": "AbortFlow", "deploymentId": "d"}', "$", "duplicate key 'type'"),
        ('{"results": [{"details": {"a": 1, "a": 2}}]}', "$", "duplicate key 'a'"),
    ],
)
def test_bad_json_names_the_field_and_no_python_internals(text: str | bytes, field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        from_json(text, Trigger)
    assert caught.value.field == field
    assert caught.value.message.startswith(message)
    for internal in PYTHON_INTERNALS:
        assert internal not in str(caught.value)


def test_actor_and_reason_are_optional_keys_of_every_trigger() -> None:
    """Unset, they are left out of the JSON (a trigger reads as before they existed);
    set, they round-trip under their own names. A timer's actor is flowfsm."""
    plain = DeploymentStarted("d1")
    assert json.loads(to_json(plain, Trigger)) == {"type": "DeploymentStarted", "deploymentId": "d1"}
    steered = DeploymentStarted("d1", actor="alice", reason="hotfix window")
    data = unstructure(steered, Trigger)
    assert data == {"type": "DeploymentStarted", "deploymentId": "d1", "actor": "alice", "reason": "hotfix window"}
    assert structure(data, Trigger) == steered
    timer = structure({"type": "TimerFired", "deploymentId": "d1", "kind": "soak"}, Trigger)
    assert isinstance(timer, TimerFired)
    assert timer.actor == "flowfsm"
    failed = from_json('{"type": "DeploymentFailed", "deploymentId": "d1", "reason": "oom", "actor": "ci"}', Trigger)
    assert failed == DeploymentFailed("d1", "oom", actor="ci")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("actor", "   ", "non-blank"),
        ("actor", 7, "string"),
        ("actor", "a" * (MAX_ACTOR + 1), f"at most {MAX_ACTOR}"),
        ("reason", "r" * (MAX_REASON + 1), f"at most {MAX_REASON}"),
        ("reason", "nul\x00", "NUL"),
    ],
)
def test_a_bad_actor_or_reason_is_refused_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        structure({"type": "DeploymentCompleted", "deploymentId": "d1", field: value}, Trigger)
    assert caught.value.field.endswith(field)
    assert message in str(caught.value)
    assert "r" * 100 not in str(caught.value)  # a long value is not echoed whole
