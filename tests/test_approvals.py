"""Approvals (SPEC §11, docs/gates.md), on every backend: N-of-M with groups, the
author, expiry through the timers, rejection under each failure policy, and a flow
that ends while it awaits approval. Tests move a fake clock and never sleep."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from flowfsm import (
    AbortFlow,
    ApprovalGranted,
    ApprovalPolicy,
    ApprovalRejected,
    Artifact,
    ArtifactCreated,
    Catalog,
    CatalogError,
    DeploymentStarted,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    HookEvent,
    NotAuthorized,
    PauseFlow,
    Pipeline,
    ResumeFlow,
    RetryDeployment,
    RetryPolicy,
    Service,
    SteeringPayload,
    TimerKind,
    ValidationError,
)
from flowfsm.converter import from_json, structure, to_json, unstructure
from flowfsm.protocols import Repository
from flowfsm.repositories._common import flow_body, flow_from_body
from flowfsm.testing import sample_flow
from flowfsm.triggers import MAX_GROUPS, TimerFired, Trigger
from tests.conftest import two_actions
from tests.test_steering import World, store  # noqa: F401 - the fixture

ARTIFACT = Artifact("com.acme", "api", "1.0.0")
APPROVERS = ("alice", "bob", "group:release-managers")


def gated(strategy: str = "STOP", *, retry: RetryPolicy | None = None, **policy: Any) -> Service:
    """dev (smoke) → prod (smoke), prod gated: by default 2 approvals from alice, bob
    or a release manager; a webhook on every event."""
    approvals = ApprovalPolicy(policy.pop("approvers", APPROVERS), required=policy.pop("required", 2), **policy)
    return Service(
        "svc",
        ["com.acme:api"],
        Pipeline("p", [Environment("dev", ["smoke"]), Environment("prod", ["smoke"], approvals=approvals)]),
        failure_strategy=strategy,
        retry=retry,
        webhooks=[two_actions(f"wh-{e.value}", e) for e in HookEvent],
    )


def at_prod(world: World, author: str | None = None) -> tuple[Flow, str]:
    """A flow whose dev deployment succeeded: its prod deployment awaits approval."""
    (flow,) = world.engine.handle(ArtifactCreated(ARTIFACT, actor=author)).flows
    world.deploy(flow, 0)
    world.passes(flow, 0)
    world.events()
    prod = world.get(flow).deployments[1]
    assert prod.state is DeploymentState.AWAITING_APPROVAL
    return flow, prod.id


def payload_of(world: World, event: HookEvent) -> SteeringPayload:
    (request,) = world.requests(event)
    assert isinstance(request.payload, SteeringPayload)
    return request.payload


def test_two_of_three_with_a_group(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated())
    (flow,) = world.engine.handle(ArtifactCreated(ARTIFACT)).flows
    world.deploy(flow, 0)
    world.passes(flow, 0)
    assert world.events()[-2:] == ["deployment-succeeded", "approval-requested"]  # not deployment-created
    prod = world.get(flow).deployments[1].id
    world.refused(flow, DeploymentStarted(prod), "awaits approval")

    world.engine.handle(ApprovalGranted(prod, "alice", reason="looks good"))
    assert world.get(flow).deployments[1].state is DeploymentState.AWAITING_APPROVAL
    payload = payload_of(world, HookEvent.APPROVAL_GRANTED)
    assert (payload.actor, payload.reason) == ("alice", "looks good")
    assert world.events() == ["approval-granted"]
    world.unchanged(flow, ApprovalGranted(prod, "alice"))  # one approval per person

    world.engine.handle(ApprovalGranted(prod, "carol", ["release-managers"]))
    assert payload_of(world, HookEvent.APPROVAL_GRANTED).actor == "carol"
    assert world.events() == ["approval-granted", "deployment-created"]
    stored = world.get(flow).deployments[1]
    assert (stored.state, stored.approvals) == (DeploymentState.NOT_STARTED, ("alice", "carol"))
    world.unchanged(flow, ApprovalGranted(prod, "carol", ["release-managers"]))  # redelivered after the gate opened
    world.refused(flow, ApprovalGranted(prod, "bob"), "does not await approval")  # a third, too late
    world.engine.handle(DeploymentStarted(prod))
    assert world.get(flow).deployments[1].state is DeploymentState.STARTED
    changes = [c for entry in world.repository.history(flow.id) for c in entry.changes if c.id == prod]
    assert [(c.from_, c.to) for c in changes] == [
        (None, "notStarted"),
        ("notStarted", "awaitingApproval"),
        ("awaitingApproval", "notStarted"),
        ("notStarted", "started"),
    ]


def test_someone_not_allowed_gets_not_authorized_and_nothing_changes(
    store: Callable[[], Repository],  # noqa: F811 - the fixture
) -> None:
    world = World(store, gated())
    flow, prod = at_prod(world)
    before, history = world.get(flow), world.repository.history(flow.id)
    for trigger in (
        ApprovalGranted(prod, "dave"),
        ApprovalGranted(prod, "dave", ["developers"]),
        ApprovalRejected(prod, "dave", "no"),
    ):
        with pytest.raises(NotAuthorized) as refused:
            world.engine.handle(trigger)
        assert "'dave'" in str(refused.value)
        assert "not among the approvers" in str(refused.value)
    assert world.get(flow) == before
    assert world.repository.history(flow.id) == history
    assert world.events() == []


def test_the_author_may_not_approve_unless_allowed(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(required=1))
    flow, prod = at_prod(world, author="alice")
    assert world.get(flow).author == "alice"  # stored with the flow, on every backend
    before = world.get(flow)
    with pytest.raises(NotAuthorized) as refused:
        world.engine.handle(ApprovalGranted(prod, "alice"))
    assert "author" in str(refused.value)
    assert world.get(flow) == before
    assert [a.deployment.id for a in world.engine.approvals_for("alice")] == []
    assert [a.deployment.id for a in world.engine.approvals_for("bob")] == [prod]
    world.engine.handle(ApprovalGranted(prod, "bob"))
    assert world.events() == ["approval-granted", "deployment-created"]


def test_the_author_may_approve_where_allowed(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    own = World(store, gated(required=1, allow_author=True))
    (mine,) = own.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "2.0.0"), actor="bob")).flows
    own.deploy(mine, 0)
    own.passes(mine, 0)
    own.events()
    prod = own.get(mine).deployments[1].id
    own.engine.handle(ApprovalGranted(prod, "bob"))
    assert own.events() == ["approval-granted", "deployment-created"]


def test_the_author_may_reject_their_own_release(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated())
    flow, prod = at_prod(world, author="alice")
    world.engine.handle(ApprovalRejected(prod, "alice", "found a bug"))
    assert world.get(flow).state is FlowState.FAILED


def test_an_approval_request_expires_through_its_timer(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(expiry="24h"))
    flow, prod = at_prod(world)
    (timer,) = world.repository.timers(flow.id)
    assert (timer.kind, timer.due) == (TimerKind.APPROVAL, world.clock.now + dt.timedelta(hours=24))
    world.engine.handle(ApprovalGranted(prod, "alice"))
    (item,) = [w for w in world.engine.explain(flow.id) if w.kind == "approval"]
    assert item.until == timer.due
    assert "1 of 2, from alice or bob or group:release-managers (alice approved)" in item.text
    world.events()
    world.clock.advance(hours=23, minutes=59)
    assert world.scheduler.run_once() == 0
    assert world.get(flow).deployments[1].state is DeploymentState.AWAITING_APPROVAL
    world.clock.advance(minutes=1)
    assert world.scheduler.run_once() == 1
    (request,) = world.requests(HookEvent.FLOW_FAILED)
    assert "approval expired: 1 of 2 approvals within 1d" in str(request.payload)
    assert payload_of(world, HookEvent.APPROVAL_EXPIRED).actor == "flowfsm"
    assert world.events() == ["approval-expired", "flow-failed"]
    stored = world.get(flow)
    assert (stored.state, stored.deployments[1].state) == (FlowState.FAILED, DeploymentState.FAILED)
    (entry,) = [e for e in world.repository.history(flow.id) if e.trigger.get("type") == "TimerFired"]
    assert entry.actor == "flowfsm"
    world.refused(flow, ApprovalGranted(prod, "bob"), "does not await approval")


def test_an_approval_timer_of_an_opened_gate_is_cancelled_and_a_stale_one_does_nothing(
    store: Callable[[], Repository],  # noqa: F811 - the fixture
) -> None:
    world = World(store, gated(required=1, expiry="1h"))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalGranted(prod, "bob"))
    assert world.repository.timers(flow.id) == []
    world.clock.advance(hours=2)
    assert world.engine.handle(TimerFired(prod, TimerKind.APPROVAL)).duplicate
    assert world.get(flow).deployments[1].state is DeploymentState.NOT_STARTED


def test_a_rejection_under_stop_fails_the_flow(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(expiry="1h"))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalGranted(prod, "alice"))
    world.events()
    world.engine.handle(ApprovalRejected(prod, "bob", "the change window is closed"))
    payload = payload_of(world, HookEvent.APPROVAL_REJECTED)
    assert (payload.actor, payload.reason) == ("bob", "the change window is closed")
    assert world.events() == ["approval-rejected", "flow-failed"]
    stored = world.get(flow)
    assert (stored.state, stored.deployments[1].state) == (FlowState.FAILED, DeploymentState.FAILED)
    assert world.repository.timers(flow.id) == []
    world.unchanged(flow, ApprovalRejected(prod, "bob", "the change window is closed"))  # redelivered


def test_a_rejection_under_retry_asks_again_with_approvals_cleared(
    store: Callable[[], Repository],  # noqa: F811 - the fixture
) -> None:
    world = World(store, gated("RETRY", retry=RetryPolicy(attempts=2)))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalGranted(prod, "alice"))
    world.events()
    world.engine.handle(ApprovalRejected(prod, "bob", "wait for the fix"))
    assert world.events() == ["approval-rejected", "deployment-retried", "approval-requested"]
    stored = world.get(flow).deployments[1]
    assert (stored.state, stored.attempt, stored.approvals) == (DeploymentState.AWAITING_APPROVAL, 2, ())
    world.unchanged(flow, RetryDeployment(prod, "carol"))  # retried already
    world.engine.handle(ApprovalGranted(prod, "alice"))  # her approval counts again, for the new attempt
    world.engine.handle(ApprovalRejected(prod, "bob", "still broken"))  # the last attempt: then STOP
    assert world.events() == ["approval-granted", "approval-rejected", "flow-failed"]
    assert world.get(flow).state is FlowState.FAILED


def test_a_rejection_under_pause_waits_for_a_person_and_a_retry_asks_again(
    store: Callable[[], Repository],  # noqa: F811 - the fixture
) -> None:
    world = World(store, gated("PAUSE"))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalRejected(prod, "bob", "not today"))
    assert world.events() == ["approval-rejected", "flow-paused"]
    assert world.get(flow).state is FlowState.PAUSED
    world.engine.handle(RetryDeployment(prod, "carol", "today after all"))
    assert world.events() == ["deployment-retried", "flow-resumed", "approval-requested"]
    stored = world.get(flow)
    assert (stored.state, stored.deployments[1].state) == (FlowState.IN_PROGRESS, DeploymentState.AWAITING_APPROVAL)


def test_a_rejection_under_rollback_requests_no_rollback(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated("ROLLBACK"))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalRejected(prod, "bob", "no"))
    assert world.events() == ["approval-rejected", "flow-failed"]  # nothing was deployed: nothing to undo
    assert world.get(flow).rollback is None


def test_an_abort_while_awaiting_approval_cancels_the_request(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(expiry="1h"))
    flow, prod = at_prod(world)
    world.engine.handle(AbortFlow(flow.id, "carol", "superseded by 1.0.1"))
    payload = payload_of(world, HookEvent.APPROVAL_CANCELLED)
    assert (payload.actor, payload.reason, payload.deployment.id) == ("carol", "superseded by 1.0.1", prod)
    assert world.events() == ["flow-aborted", "approval-cancelled"]
    assert world.repository.timers(flow.id) == []
    world.refused(flow, ApprovalGranted(prod, "alice"), "the flow is finished")
    assert world.engine.approvals_for("alice") == []


def test_an_abort_elsewhere_cancels_nothing(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated())
    (flow,) = world.engine.handle(ArtifactCreated(ARTIFACT)).flows
    world.events()
    world.engine.handle(AbortFlow(flow.id, "carol"))
    assert world.events() == ["flow-aborted"]


def test_approvals_given_while_paused_are_recorded_and_announced_on_resume(
    store: Callable[[], Repository],  # noqa: F811 - the fixture
) -> None:
    world = World(store, gated())
    flow, prod = at_prod(world)
    world.engine.handle(PauseFlow(flow.id, "carol", "incident"))
    world.engine.handle(ApprovalGranted(prod, "alice"))
    world.engine.handle(ApprovalGranted(prod, "bob"))
    assert world.events() == ["flow-paused", "approval-granted", "approval-granted"]  # not announced: paused
    stored = world.get(flow)
    assert (stored.state, stored.deployments[1].state) == (FlowState.PAUSED, DeploymentState.NOT_STARTED)
    world.refused(flow, DeploymentStarted(prod), "the flow is paused")
    world.engine.handle(ResumeFlow(flow.id, "carol"))
    assert world.events() == ["flow-resumed", "deployment-created"]


def test_approving_where_no_approval_is_awaited_is_refused(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated())
    (flow,) = world.engine.handle(ArtifactCreated(ARTIFACT)).flows
    dev = flow.deployments[0].id
    world.refused(flow, ApprovalGranted(dev, "alice"), "does not await approval")
    world.refused(flow, ApprovalRejected(dev, "alice", "no"), "does not await approval")


def test_approvals_for_lists_what_a_viewer_may_approve(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated())
    flow, prod = at_prod(world, author="erin")
    (other,) = world.engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.1.0"))).flows  # in dev: nothing
    assert [(a.flow.id, a.deployment.id, a.missing) for a in world.engine.approvals_for("alice")] == [
        (flow.id, prod, 2)
    ]
    assert [a.deployment.id for a in world.engine.approvals_for("carol", ["release-managers"])] == [prod]
    assert world.engine.approvals_for("carol", ["developers"]) == []
    world.engine.handle(ApprovalGranted(prod, "alice"))
    assert world.engine.approvals_for("alice") == []  # approved already
    (waiting,) = world.engine.approvals_for("bob")
    assert (waiting.deployment.approvals, waiting.missing, waiting.policy.required) == (("alice",), 1, 2)
    assert other.id != flow.id


# --- the stored author: a store written before approvals still loads ---------------------


def test_the_author_is_stored_in_format_4_and_older_bodies_load_without_one() -> None:
    flow = sample_flow(1)
    plain = flow_body(flow)
    assert plain.startswith("[2,")  # no author: as before, which earlier flowfsm reads
    assert flow_from_body(plain, 1).author is None
    authored = attrs.evolve(flow, author="alice")
    body = flow_body(authored)
    assert body.startswith("[4,")  # a gate reads it: refused by a flowfsm that knows no gates
    assert flow_from_body(body, 1) == authored
    retried = attrs.evolve(flow, deployments=[attrs.evolve(flow.deployments[0], attempt=2), *flow.deployments[1:]])
    assert flow_from_body(flow_body(retried), 1).author is None  # format 3, as written before
    assert structure(unstructure(authored), Flow) == authored
    assert "author" not in unstructure(flow)  # unset: the JSON reads as before


# --- the catalog: approvals under an environment, every bad value named by file and path ---

_ENVIRONMENT = "$.services[0].pipeline.environments[0].approvals"
_BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"approvers": []}, "approvers", "name at least one"),
    ({"approvers": "alice"}, "approvers", "expected a list"),
    ({"required": 2}, "approvers", "required key missing"),
    ({"approvers": ["alice"], "required": 0}, "required", "from 1 to 100"),
    ({"approvers": ["alice"], "required": True}, "required", "from 1 to 100"),
    ({"approvers": ["alice"], "required": 1.5}, "required", "from 1 to 100"),
    ({"approvers": ["alice", "bob"], "required": 3}, "required", "can never come from the 2 people"),
    ({"approvers": ["alice"], "allowAuthor": "false"}, "allowAuthor", "bool"),
    ({"approvers": ["alice"], "allowAuthor": 1}, "allowAuthor", "bool"),
    ({"approvers": ["alice"], "expiry": "soon"}, "expiry", "is not a duration"),
    ({"approvers": ["alice"], "expiry": "0s"}, "expiry", "more than zero"),
    ({"approvers": ["alice", "alice"]}, "approvers[1]", "listed twice"),
    ({"approvers": ["group:"]}, "approvers[0]", "group:NAME"),
    ({"approvers": [" alice"]}, "approvers[0]", "space"),
    ({"approvers": ["alice"], "requried": 2}, "", "unknown key(s) 'requried'"),
]


def _catalog(approvals: Any) -> dict[str, Any]:
    environment = {"name": "prod", "approvals": approvals}
    return {
        "services": [
            {"id": "svc", "artifacts": ["com.acme:api"], "pipeline": {"name": "p", "environments": [environment]}}
        ]
    }


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
@pytest.mark.parametrize(("approvals", "field", "words"), _BAD)
def test_a_bad_approval_policy_is_refused_naming_the_file_and_path(
    tmp_path: Path, suffix: str, approvals: dict[str, Any], field: str, words: str
) -> None:
    path = tmp_path / f"catalog{suffix}"
    data = _catalog(approvals)
    if suffix == ".json":
        path.write_text(json.dumps(data))
    elif suffix == ".yaml":
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(_toml(data["services"][0], approvals))
    with pytest.raises(CatalogError) as refused:
        Catalog.from_file(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: {_ENVIRONMENT}{'.' + field if field else ''}:"), message
    assert words in message


def _toml(service: dict[str, Any], approvals: dict[str, Any]) -> str:
    lines = [
        "[[services]]",
        f"id = {json.dumps(service['id'])}",
        'artifacts = ["com.acme:api"]',
        "[services.pipeline]",
        'name = "p"',
        "[[services.pipeline.environments]]",
        'name = "prod"',
        "[services.pipeline.environments.approvals]",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in approvals.items()]
    return "\n".join(lines) + "\n"


def test_a_good_approval_policy_loads_from_each_format(tmp_path: Path) -> None:
    approvals = {"approvers": ["alice", "group:release-managers"], "required": 2, "allowAuthor": True, "expiry": "24h"}
    expected = ApprovalPolicy(("alice", "group:release-managers"), 2, True, dt.timedelta(hours=24))
    for suffix in (".json", ".toml", ".yaml"):
        path = tmp_path / f"catalog{suffix}"
        data = _catalog(approvals)
        if suffix == ".json":
            path.write_text(json.dumps(data))
        elif suffix == ".yaml":
            path.write_text(yaml.safe_dump(data))
        else:
            path.write_text(_toml(data["services"][0], approvals))
        (environment,) = Catalog.from_file(path).get("svc").pipeline.environments
        assert environment.approvals == expected


def test_a_gate_on_the_first_environment_holds_the_new_flow(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    policy = ApprovalPolicy(["alice"], expiry="1h")
    svc = Service(
        "svc",
        ["com.acme:api"],
        Pipeline("p", [Environment("prod", approvals=policy)]),
        webhooks=[two_actions(f"wh-{e.value}", e) for e in HookEvent],
    )
    world = World(store, svc)
    (flow,) = world.engine.handle(ArtifactCreated(ARTIFACT, actor="bob")).flows
    assert world.events() == ["approval-requested"]
    stored = world.get(flow)
    assert stored == flow
    assert (stored.deployments[0].state, stored.author) == (DeploymentState.AWAITING_APPROVAL, "bob")
    assert [t.kind for t in world.repository.timers(flow.id)] == [TimerKind.APPROVAL]
    (entry,) = world.repository.history(flow.id)
    assert [(c.entity, c.from_, c.to) for c in entry.changes] == [
        ("deployment", None, "awaitingApproval"),
        ("flow", None, "inProgress"),
    ]
    world.refused(flow, DeploymentStarted(flow.deployments[0].id), "awaits approval")


@pytest.mark.parametrize("groups", ['"release-managers"', '{"release-managers": true}', "[1]", '[""]'])
def test_groups_in_json_are_a_list_of_names(groups: str) -> None:
    text = f'{{"type": "ApprovalGranted", "deploymentId": "d", "actor": "carol", "groups": {groups}}}'
    with pytest.raises(ValidationError) as refused:
        from_json(text, Trigger)
    assert refused.value.field == "$.groups"


def test_triggers_of_approvals_round_trip_as_json() -> None:
    for trigger in (
        ApprovalGranted("d", "carol", ["release-managers", "ops"], reason="ok"),
        ApprovalGranted("d", "alice"),
        ApprovalRejected("d", "bob", "not today", groups=["ops"]),
    ):
        text = to_json(trigger, Trigger)
        assert from_json(text, Trigger) == trigger
    assert json.loads(to_json(ApprovalGranted("d", "carol", ["b", "a"]), Trigger))["groups"] == ["a", "b"]


def test_explain_names_who_may_approve_also_while_paused(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(expiry="2h"))
    flow, prod = at_prod(world, author="bob")
    requested = world.clock.now
    world.clock.advance(minutes=5)
    world.engine.handle(ApprovalGranted(prod, "carol", ["release-managers"]))
    world.engine.handle(PauseFlow(flow.id, "erin", "incident"))
    items = {w.kind: w for w in world.engine.explain(flow.id)}
    assert set(items) == {"paused", "approval"}  # approvals are still given while paused
    waiting = items["approval"]
    assert waiting.text == (
        "Awaiting approval for 'prod': 1 of 2, from alice or bob or group:release-managers"
        " (carol approved; not 'bob', the artifact's author);"
        f" requested at {requested:%Y-%m-%d %H:%M:%S} UTC; it expires at 2026-01-01 02:00:00 UTC."
    )
    assert (waiting.deployment_id, waiting.since, waiting.until) == (prod, requested, requested + dt.timedelta(hours=2))
    assert dict(waiting.details) == {
        "approvals": ["carol"],
        "required": 2,
        "approvers": list(APPROVERS),
        "author": "bob",
    }


# --- who is who: one person, however their name is spelled (docs/decisions.md) ------------

ALICE_SPELLINGS = (
    "Alice",  # case
    "ALICE",
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth letters (NFKC)
    "alice ",  # a trailing space
    "ali\u200bce",  # a zero-width space
)


def test_one_person_approves_once_however_their_name_is_spelled(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(approvers=("group:release-managers",)))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalGranted(prod, "alice", ["release-managers"]))
    world.events()
    for spelling in ALICE_SPELLINGS:
        world.unchanged(flow, ApprovalGranted(prod, spelling, ["release-managers"]))
    world.engine.handle(ApprovalGranted(prod, "jos\u00e9", ["release-managers"]))  # é composed (NFC)
    assert world.events() == ["approval-granted", "deployment-created"]
    stored = world.get(flow).deployments[1]
    assert stored.approvals == ("alice", "jos\u00e9")


def test_the_same_person_in_two_unicode_forms_counts_once(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(approvers=("group:release-managers",)))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalGranted(prod, "jos\u00e9", ["release-managers"]))  # é composed (NFC)
    world.unchanged(flow, ApprovalGranted(prod, "jose\u0301", ["release-managers"]))  # e + combining accent (NFD)
    assert world.get(flow).deployments[1].approvals == ("jos\u00e9",)


def test_the_author_may_not_approve_under_another_spelling(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(required=1))
    flow, prod = at_prod(world, author="alice")
    before, history = world.get(flow), world.repository.history(flow.id)
    for spelling in ALICE_SPELLINGS:
        with pytest.raises(NotAuthorized) as refused:
            world.engine.handle(ApprovalGranted(prod, spelling, ["release-managers"]))
        assert "the artifact's author may not approve it" in str(refused.value)
        assert world.engine.approvals_for(spelling, ["release-managers"]) == []
    assert world.get(flow) == before
    assert world.repository.history(flow.id) == history
    assert world.events() == []


def test_a_person_named_like_a_group_is_not_its_member(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated(required=1))
    flow, prod = at_prod(world)
    before = world.get(flow)
    with pytest.raises(NotAuthorized) as refused:
        world.engine.handle(ApprovalGranted(prod, "group:release-managers"))
    assert "not among the approvers" in str(refused.value)
    assert world.engine.approvals_for("group:release-managers") == []
    assert world.get(flow) == before


def test_a_group_is_named_as_the_catalog_names_it_or_without_its_prefix(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated())
    flow, prod = at_prod(world)
    assert [a.deployment.id for a in world.engine.approvals_for("carol", ["group:release-managers"])] == [prod]
    world.engine.handle(ApprovalGranted(prod, "carol", ["group:release-managers"]))
    world.engine.handle(ApprovalGranted(prod, "dave", ["Release-Managers"]))
    assert world.events() == ["approval-granted", "approval-granted", "deployment-created"]
    assert world.get(flow).deployments[1].approvals == ("carol", "dave")


@pytest.mark.parametrize(
    ("approvers", "field"),
    [
        (["alice", "Alice"], "approvers[1]"),
        (["alice", "ali\u200bce"], "approvers[1]"),
        (["group:ops", "group:OPS"], "approvers[1]"),
        (["group: ops"], "approvers[0]"),
        ({"alice": 1}, "approvers"),
    ],
)
def test_a_policy_names_each_approver_once_in_one_spelling(approvers: Any, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ApprovalPolicy(approvers)
    assert refused.value.field == field


# --- an approval or rejection names the attempt it answers ---------------------------------


def test_an_answer_naming_an_earlier_attempt_is_stale_after_a_retry(store: Callable[[], Repository]) -> None:  # noqa: F811 - the fixture
    world = World(store, gated("RETRY", retry=RetryPolicy(attempts=3)))
    flow, prod = at_prod(world)
    world.engine.handle(ApprovalRejected(prod, "alice", "not today", attempt=1))
    assert world.events() == ["approval-rejected", "deployment-retried", "approval-requested"]
    assert world.get(flow).deployments[1].attempt == 2
    world.unchanged(flow, ApprovalRejected(prod, "alice", "not today", attempt=1))  # delivered again: stale
    world.unchanged(flow, ApprovalGranted(prod, "bob", attempt=1))  # given to the request RETRY replaced
    assert world.get(flow).deployments[1].approvals == ()
    refused = world.refused(flow, ApprovalGranted(prod, "bob", attempt=3), "attempt 3", "attempt 2")
    assert refused.trigger == "approve"
    world.engine.handle(ApprovalGranted(prod, "bob", attempt=2))
    world.engine.handle(ApprovalGranted(prod, "alice"))  # naming no attempt: the current one
    assert world.events() == ["approval-granted", "approval-granted", "deployment-created"]
    history = world.repository.history(flow.id)
    assert dict(history[-2].trigger)["attempt"] == 2
    assert "attempt" not in dict(history[-1].trigger)


@pytest.mark.parametrize("attempt", ["true", "0", "1.5", '"2"'])
def test_an_answer_names_its_attempt_as_a_whole_number(attempt: str) -> None:
    for kind, extra in (("ApprovalGranted", ""), ("ApprovalRejected", ', "reason": "no"')):
        text = f'{{"type": "{kind}", "deploymentId": "d", "actor": "carol", "attempt": {attempt}{extra}}}'
        with pytest.raises(ValidationError) as refused:
            from_json(text, Trigger)
        assert refused.value.field == "$.attempt"


def test_answers_naming_their_attempt_round_trip_as_json() -> None:
    for trigger in (
        ApprovalGranted("d", "carol", ["ops"], reason="ok", attempt=2),
        ApprovalRejected("d", "bob", "not today", attempt=3),
    ):
        assert from_json(to_json(trigger, Trigger), Trigger) == trigger


@pytest.mark.parametrize("groups", ["[[1]]", '[{"a": 1}]'])
def test_a_group_that_is_not_a_name_is_refused_naming_groups(groups: str) -> None:
    text = f'{{"type": "ApprovalRejected", "deploymentId": "d", "actor": "carol", "reason": "no", "groups": {groups}}}'
    with pytest.raises(ValidationError) as refused:
        from_json(text, Trigger)
    assert refused.value.field == "$.groups"
    with pytest.raises(ValidationError) as refused:
        ApprovalGranted("d", "carol", json.loads(groups))
    assert refused.value.field == "groups"


def test_an_approver_names_at_most_max_groups() -> None:
    assert len(ApprovalGranted("d", "carol", [f"g{i}" for i in range(MAX_GROUPS)]).groups) == MAX_GROUPS
    with pytest.raises(ValidationError) as refused:
        ApprovalGranted("d", "carol", [f"g{i}" for i in range(MAX_GROUPS + 1)])
    assert (refused.value.field, str(refused.value)) == (
        "groups",
        f"groups: at most {MAX_GROUPS} groups, got {MAX_GROUPS + 1}",
    )
