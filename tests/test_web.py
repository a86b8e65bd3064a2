"""The dashboard (flowfsm.web, SPEC §12) through Starlette's test client: pages,
filters and paging, escaping, secrets, read-only mode, the authorization hook,
CSRF, actions through the engine, refusals, live fragments and mounting."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from flowfsm import (
    ApprovalPolicy,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeliveryAttempt,
    DeploymentCompleted,
    DeploymentStarted,
    DeploymentState,
    Environment,
    Flow,
    FlowEngine,
    FlowState,
    FreezeWindow,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    ResumeFlow,
    Service,
    ValidationError,
)
from flowfsm.diagrams import svg
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository
from flowfsm.testing import SequentialIds
from flowfsm.web import Viewer, dashboard
from flowfsm.web._security import CsrfTokens

from .conftest import SECRET_KEYS, api_service


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def web_engine(clock: Clock) -> FlowEngine:
    return FlowEngine(
        Catalog([api_service(), api_service("svc-two")]),
        InMemoryRepository(),
        None,  # HookRequests stay in the outbox, with their delivery state
        clock=clock,
        id_factory=SequentialIds("x"),
    )


def by_header(request: Request) -> Viewer | None:
    user = request.headers.get("x-user")
    return Viewer(user, frozenset({"ops"})) if user else None


def start(engine: FlowEngine, version: str = "1.0") -> Flow:
    return engine.handle(ArtifactCreated(Artifact("com.acme", "api", version))).flows[0]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found[1]


def test_the_flows_page_lists_flows_newest_first_with_their_deployments(web_engine: FlowEngine) -> None:
    first, second = start(web_engine, "1.0"), start(web_engine, "2.0")
    web_engine.handle(DeploymentStarted(second.deployments[0].id))
    page = TestClient(dashboard(web_engine)).get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert text.index("com.acme:api:2.0") < text.index("com.acme:api:1.0")
    assert f'href="/flows/{first.id}"' in text
    assert 'title="dev: started"' in text
    assert "svc-two" in text  # both services consume the artifact: two flows each


def test_the_flows_page_filters_by_service_state_and_artifact(web_engine: FlowEngine) -> None:
    start(web_engine, "1.0")
    second = start(web_engine, "2.0")
    web_engine.handle(PauseFlow(second.id, "ops", reason="hold"))
    client = TestClient(dashboard(web_engine))

    def rows(**query: str) -> list[str]:
        page = client.get("/", params=query)
        assert page.status_code == 200, page.text
        return re.findall(r'<a href="/flows/([^"]+)">', page.text)

    assert len(rows()) == 4
    assert rows(service="svc-api", state="paused") == [second.id]
    assert rows(state="PAUSED") == [second.id]  # people do not type camel case
    assert len(rows(state="inProgress")) == 3
    by_artifact = rows(artifact="com.acme:api:2.0")
    assert second.id in by_artifact
    assert len(by_artifact) == 2
    assert rows(artifact="com.acme:api:2.0", service="svc-two") == [f for f in by_artifact if f != second.id]
    assert rows(artifact="com.acme:api:9.9") == []


def test_the_flows_page_is_paged(clock: Clock) -> None:
    engine = FlowEngine(Catalog([api_service()]), InMemoryRepository(), None, clock=clock)
    for i in range(5):
        start(engine, f"1.{i}")
    client = TestClient(dashboard(engine, page_size=2))
    first = client.get("/").text
    assert "com.acme:api:1.4" in first
    assert "com.acme:api:1.3" in first
    assert "com.acme:api:1.2" not in first
    assert 'rel="next" href="/?page=2"' in first
    assert 'rel="prev"' not in first
    last = client.get("/", params={"page": "3"}).text
    assert "com.acme:api:1.0" in last
    assert 'rel="next"' not in last
    assert 'rel="prev" href="/?page=2"' in last
    filtered = client.get("/", params={"state": "inProgress", "page": "2"}).text
    assert 'href="/?state=inProgress&amp;page=3"' in filtered


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"state": "sleeping"}, "state: must be one of"),
        ({"page": "0"}, "page: must be a whole number"),
        ({"page": "ten"}, "page: must be a whole number"),
        ({"page": "²"}, "page: must be a whole number"),  # a digit to str.isdigit, not to int
        ({"page": "1" * 5000}, "page: must be a whole number"),  # more digits than int() reads
        ({"artifact": "api-1.0"}, "artifact: expected GROUP:NAME:VERSION"),
        ({"service": "a\x00b"}, "service: contains NUL"),
    ],
)
def test_a_bad_filter_is_a_readable_message(web_engine: FlowEngine, query: dict[str, str], message: str) -> None:
    client = TestClient(dashboard(web_engine), raise_server_exceptions=False)
    for partial in ({}, {"partial": "1"}):  # a live region's URL, edited, is refused alike
        page = client.get("/", params=query | partial)
        assert page.status_code == 422
        assert message in page.text
        assert "Traceback" not in page.text


def test_the_flow_page_shows_timeline_history_explanation_diagrams_and_hook_requests(
    web_engine: FlowEngine,
) -> None:
    flow = start(web_engine)
    dev = flow.deployments[0]
    web_engine.handle(DeploymentStarted(dev.id))
    web_engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    web_engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    page = TestClient(dashboard(web_engine)).get(f"/flows/{flow.id}")
    assert page.status_code == 200
    text = page.text
    # timeline: deployments in pipeline order, each with its state and when it got there
    assert (
        text.index('id="deployment-dev"') < text.index('id="deployment-staging"') < text.index('id="deployment-prod"')
    )
    assert re.search(r'id="deployment-dev" data-state="success"', text)
    assert re.search(r'class="deployment current" id="deployment-staging" data-state="notStarted"', text)
    assert "started <time" in text
    # history: one row per entry, with its trigger and state changes
    history = text[text.index('id="history"') :]
    for trigger in ("ArtifactCreated", "DeploymentStarted", "DeploymentCompleted", "PromotionCompleted"):
        assert f"<strong>{trigger}</strong>" in history
    assert "deployment dev: started → completed" in history
    # explanation: what the engine says the flow waits for
    (waiting,) = web_engine.explain(flow.id)
    assert waiting.kind == "cd-start"
    assert waiting.text.replace("'", "&#39;") in text
    # diagrams: the current states highlighted (the flow's, the current deployment's)
    flow_diagram = text[text.index('id="diagram-flow"') : text.index('id="diagram-deployment"')]
    assert re.search(r'<rect class="current"[^>]*/><text[^>]*>inProgress</text>', flow_diagram)
    assert flow_diagram.count('class="current"') == 1
    deployment_diagram = text[text.index('id="diagram-deployment"') : text.index('id="h-hooks"')]
    assert re.search(r'<rect class="current"[^>]*/><text[^>]*>notStarted</text>', deployment_diagram)
    # HookRequests and their delivery
    records = web_engine.repository.hook_requests(flow.id)
    assert records
    hooks = text[text.index('id="hooks"') : text.index('id="h-history"')]
    assert hooks.count("<tr>") == len(records) + 1
    assert "deployment-created" in hooks
    assert "wh-deployment-created/a1" in hooks


def test_a_flow_page_lists_the_newest_hook_requests_only(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    for _ in range(30):
        web_engine.handle(PauseFlow(flow.id, "ann"))
        web_engine.handle(ResumeFlow(flow.id, "ann"))
    records = web_engine.repository.hook_requests(flow.id)
    assert len(records) > 100
    text = TestClient(dashboard(web_engine)).get(f"/flows/{flow.id}").text
    assert f"The newest 100 of {len(records)};" in text
    hooks = text[text.index('id="hooks"') : text.index('id="h-history"')]
    assert hooks.count("<tr>") == 101
    assert "flow-resumed" in hooks
    assert "deployment-created" not in hooks  # the first, and oldest


def test_a_delivery_shows_its_attempts_and_last_answer_without_secrets(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    repository = web_engine.repository
    request_id = repository.hook_requests(flow.id)[0].request.id
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    repository.record_attempt(request_id, DeliveryAttempt(when, status_code=503))
    error = "connect to https://bob:hunter2@hooks.example/x failed; key whsec_" + SECRET_KEYS[0]
    repository.record_attempt(request_id, DeliveryAttempt(when, error=error))
    text = TestClient(dashboard(web_engine)).get(f"/flows/{flow.id}").text
    assert "https://&lt;redacted&gt;@hooks.example/x failed" in text
    assert "hunter2" not in text
    assert "whsec_" not in text
    assert SECRET_KEYS[0] not in text


@pytest.mark.parametrize(
    "error",
    [
        "x" * 145 + " https://bob:hunter2@hooks.example/x",  # the credentials straddle the cut to 160 characters
        "connect to https://bob:p@ss-hunter2@hooks.example/x failed",  # a client reads up to the last @
    ],
    ids=["cut", "at-sign"],
)
def test_no_part_of_a_url_password_shows_in_a_delivery_error(web_engine: FlowEngine, error: str) -> None:
    flow = start(web_engine)
    repository = web_engine.repository
    request_id = repository.hook_requests(flow.id)[0].request.id
    repository.record_attempt(request_id, DeliveryAttempt(dt.datetime(2026, 3, 1, tzinfo=dt.UTC), error=error))
    text = TestClient(dashboard(web_engine)).get(f"/flows/{flow.id}").text
    assert "https://&lt;" in text  # redacted, then maybe cut
    assert "hunter" not in text
    assert "bob" not in text


def test_no_page_shows_a_webhook_secret_or_an_endpoint(web_engine: FlowEngine) -> None:
    """The catalog's actions have signing secrets and URLs: neither is on any page."""
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header))
    pages = [client.get(path, headers={"x-user": "ann"}).text for path in ("/", f"/flows/{flow.id}")]
    pages.append(client.get(f"/flows/{flow.id}", params={"partial": "1"}).text)
    for text in pages:
        assert "whsec_" not in text
        assert not any(key in text for key in SECRET_KEYS)
        assert "hooks.example" not in text


def test_user_data_is_escaped_everywhere(web_engine: FlowEngine) -> None:
    flow = start(web_engine, "1.0<script>alert(1)</script>")
    web_engine.handle(PauseFlow(flow.id, "<b>mallory</b>", reason='"><img src=x onerror=alert(2)>'))
    client = TestClient(dashboard(web_engine))
    for text in (
        client.get("/").text,
        client.get(f"/flows/{flow.id}").text,
        client.get(f"/flows/{flow.id}", params={"partial": "1"}).text,
        client.get("/", params={"artifact": "a:b:<i>x</i>"}).text,
    ):
        assert "<script>alert" not in text
        assert "<img src=x" not in text
        assert "<b>mallory" not in text
        assert "<i>x</i>" not in text
    page = client.get(f"/flows/{flow.id}").text
    assert "com.acme:api:1.0&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;mallory&lt;/b&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page


def test_every_page_forbids_scripts_from_elsewhere(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    page = TestClient(dashboard(web_engine)).get(f"/flows/{flow.id}")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"  # what browsers without frame-ancestors read
    assert "<script>" not in page.text  # the one script is a file; inline ones would be blocked


def test_a_flow_id_no_store_can_hold_is_an_unknown_flow_on_every_store(
    backend: Repository,  # the same pages on every store (the fixture is in conftest)
    clock: Clock,
) -> None:
    """PostgreSQL refuses NUL in text: asked for such a flow, it must still say "unknown flow", not fail."""
    engine = FlowEngine(Catalog([api_service()]), backend, None, clock=clock, id_factory=SequentialIds("n"))
    flow = start(engine)
    client = TestClient(dashboard(engine, authorize=by_header), raise_server_exceptions=False)
    page = client.get("/flows/a%00b")
    assert page.status_code == 404, page.text
    assert "unknown flow" in page.text
    token = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    for data in ({"action": "pause"}, {"action": "retry-deployment", "deployment_id": "n-2"}):
        acted = client.post("/flows/a%00b", data={"csrf": token, **data}, headers={"x-user": "ann"})
        assert acted.status_code == 404, acted.text


def test_an_unknown_flow_is_a_404_page(web_engine: FlowEngine) -> None:
    page = TestClient(dashboard(web_engine)).get("/flows/nope<x>")
    assert page.status_code == 404
    assert "unknown flow &#39;nope&lt;x&gt;&#39;" in page.text


def test_without_a_hook_the_dashboard_is_read_only(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine))
    page = client.get(f"/flows/{flow.id}")
    assert '<form method="post"' not in page.text
    assert "Read-only" in page.text
    refused = client.post(f"/flows/{flow.id}", data={"action": "abort", "csrf": "x"})
    assert refused.status_code == 403
    assert "read-only" in refused.text
    assert web_engine.repository.get(flow.id) == flow
    assert len(web_engine.repository.history(flow.id)) == 1


def test_a_request_the_hook_refuses_is_read_only(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header))
    allowed = client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text
    assert 'value="pause"' in allowed
    token = csrf_of(allowed)
    anonymous = client.get(f"/flows/{flow.id}")
    assert '<form method="post"' not in anonymous.text
    refused = client.post(f"/flows/{flow.id}", data={"action": "pause", "csrf": token})
    assert refused.status_code == 403
    assert "not signed in" in refused.text
    assert web_engine.repository.get(flow.id).state is FlowState.IN_PROGRESS


def test_an_action_is_a_trigger_with_the_viewer_as_actor(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header))
    token = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    done = client.post(
        f"/flows/{flow.id}",
        data={"action": "pause", "csrf": token, "reason": "freeze for the audit"},
        headers={"x-user": "ann"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/flows/{flow.id}?done=pause"
    assert web_engine.repository.get(flow.id).state is FlowState.PAUSED
    entry = web_engine.repository.history(flow.id)[-1]
    assert (entry.trigger["type"], entry.actor, entry.reason) == ("PauseFlow", "ann", "freeze for the audit")
    after = client.get(done.headers["location"], headers={"x-user": "ann"}).text
    assert "Flow paused." in after
    assert 'value="resume"' in after


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: {},
        lambda token: {"csrf": ""},
        lambda token: {"csrf": token + "x"},
        lambda token: {"csrf": "1." + token.split(".", 1)[1]},
        lambda token: {"csrf": "not a token"},
        lambda token: {"csrf": token + "é"},  # hmac.compare_digest takes ASCII text only
        lambda token: {"csrf": "²" + token},  # a digit to str.isdigit, not to int
    ],
    ids=["missing", "empty", "altered", "other-time", "garbage", "non-ascii-mac", "non-ascii-time"],
)
def test_a_form_without_its_csrf_token_changes_nothing(
    web_engine: FlowEngine, forge: Callable[[str], dict[str, str]]
) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header), raise_server_exceptions=False)
    token = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    refused = client.post(f"/flows/{flow.id}", data={"action": "abort", **forge(token)}, headers={"x-user": "ann"})
    assert refused.status_code == 403
    assert "nothing was changed" in refused.text
    assert web_engine.repository.get(flow.id) == flow


def test_a_csrf_token_is_the_viewers_own_and_expires(web_engine: FlowEngine, clock: Clock) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header, csrf_max_age=dt.timedelta(hours=1)))
    anns = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    as_bob = client.post(f"/flows/{flow.id}", data={"action": "abort", "csrf": anns}, headers={"x-user": "bob"})
    assert as_bob.status_code == 403
    clock.now += dt.timedelta(hours=1, seconds=1)
    late = client.post(f"/flows/{flow.id}", data={"action": "abort", "csrf": anns}, headers={"x-user": "ann"})
    assert late.status_code == 403
    assert web_engine.repository.get(flow.id) == flow
    fresh = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    done = client.post(
        f"/flows/{flow.id}", data={"action": "abort", "csrf": fresh}, headers={"x-user": "ann"}, follow_redirects=False
    )
    assert done.status_code == 303
    assert web_engine.repository.get(flow.id).state is FlowState.ABORTED


def test_a_page_refreshed_in_place_keeps_its_tokens(web_engine: FlowEngine, clock: Clock) -> None:
    """The live regions replace what changed: a token renewed every second would redraw them every second."""
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header))

    def fragment() -> str:
        return client.get(f"/flows/{flow.id}", params={"partial": "1"}, headers={"x-user": "ann"}).text

    before = fragment()
    clock.now += dt.timedelta(seconds=5)
    assert fragment() == before
    clock.now += dt.timedelta(minutes=10)
    assert csrf_of(fragment()) != csrf_of(before)


def test_tokens_from_another_dashboard_secret_are_refused() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ann = Viewer("ann")
    ours, theirs = CsrfTokens(b"k" * 32, dt.timedelta(hours=1)), CsrfTokens(b"j" * 32, dt.timedelta(hours=1))
    assert ours.valid(ours.issue(ann, now), ann, now)
    assert not ours.valid(theirs.issue(ann, now), ann, now)
    assert not ours.valid(ours.issue(ann, now + dt.timedelta(minutes=20)), ann, now)  # issued in the future


def dev_ids(flow: Flow) -> dict[str, str]:
    dev = flow.deployments[0]
    return {"deployment_id": dev.id, "promotion_id": dev.promotions[0].id}


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (lambda f: {"action": "retry-deployment", **dev_ids(f)}, 409, "cannot retry deployment"),
        (lambda f: {"action": "skip-promotion", **dev_ids(f)}, 422, "reason: is required"),
        (
            lambda f: {"action": "retry-deployment", "deployment_id": "no<pe>"},
            404,
            "unknown deployment &#39;no&lt;pe&gt;&#39;",
        ),
        (lambda f: {"action": "explode"}, 422, "not an action this dashboard knows"),
        (lambda f: {"action": "pause", "reason": "r" * 10_001}, 422, "reason: is 10001 characters long"),
    ],
    ids=["invalid-transition", "missing-reason", "unknown-deployment", "unknown-action", "too-long"],
)
def test_a_refused_action_is_a_message_on_the_page(
    web_engine: FlowEngine, data: Callable[[Flow], dict[str, str]], status: int, message: str
) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=by_header))
    token = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    refused = client.post(f"/flows/{flow.id}", data={"csrf": token, **data(flow)}, headers={"x-user": "ann"})
    assert refused.status_code == status, refused.text
    assert message in refused.text
    assert "Traceback" not in refused.text
    assert web_engine.repository.get(flow.id) == flow


def test_a_form_acts_on_its_own_flows_deployments_only(web_engine: FlowEngine) -> None:
    flow, other = start(web_engine, "1.0"), start(web_engine, "2.0")
    client = TestClient(dashboard(web_engine, authorize=by_header))
    token = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text)
    elsewhere = other.deployments[0].id
    refused = client.post(
        f"/flows/{flow.id}",
        data={"csrf": token, "action": "retry-deployment", "deployment_id": elsewhere},
        headers={"x-user": "ann"},
    )
    assert refused.status_code == 404
    assert web_engine.repository.get(other.id) == other


def test_steering_buttons_follow_the_flows_state(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    dev = flow.deployments[0]
    web_engine.handle(DeploymentStarted(dev.id))
    web_engine.handle(DeploymentCompleted(dev.id))
    smoke = dev.promotions[0].id
    client = TestClient(dashboard(web_engine, authorize=by_header))
    text = client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text
    assert 'value="skip-promotion"' in text
    assert 'value="retry-promotion"' not in text
    web_engine.handle(PromotionCompleted(dev.id, smoke, [PromotionResult(smoke, ResultStatus.FAILED)]))
    text = client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text
    assert '<form method="post"' not in text  # failed: finished, nothing left to steer


def test_the_live_fragment_follows_the_flow(web_engine: FlowEngine) -> None:
    flow = start(web_engine)
    client = TestClient(dashboard(web_engine))
    page = client.get(f"/flows/{flow.id}").text
    assert f'data-live="/flows/{flow.id}?partial=1"' in page
    before = client.get(f"/flows/{flow.id}", params={"partial": "1"}).text
    assert "<html" not in before
    assert 'data-state="notStarted"' in before
    web_engine.handle(DeploymentStarted(flow.deployments[0].id))
    after = client.get(f"/flows/{flow.id}", params={"partial": "1"}).text
    assert re.search(r'id="deployment-dev" data-state="started"', after)
    flows = client.get("/", params={"partial": "1", "state": "inProgress"}).text
    assert "<html" not in flows
    assert 'title="dev: started"' in flows
    assert 'data-live="/?state=inProgress&amp;partial=1"' in client.get("/", params={"state": "inProgress"}).text


def test_an_async_hook_works_too(web_engine: FlowEngine) -> None:
    async def authorize(request: Request) -> Viewer | None:
        return Viewer("ann") if request.headers.get("x-user") == "ann" else None

    flow = start(web_engine)
    client = TestClient(dashboard(web_engine, authorize=authorize))
    assert 'Signed in as <strong id="viewer">ann</strong>' in client.get("/", headers={"x-user": "ann"}).text
    assert "Read-only" in client.get(f"/flows/{flow.id}").text


@pytest.mark.parametrize("answer", ["ann", ("ann", {"ops"}), {"actor": "ann"}], ids=["str", "tuple", "dict"])
def test_a_hook_answering_something_else_than_a_viewer_is_a_flowfsm_error_and_acts_for_nobody(
    web_engine: FlowEngine, answer: object
) -> None:
    flow = start(web_engine)
    token = CsrfTokens(b"k" * 32, dt.timedelta(hours=1)).issue(Viewer("ann"), web_engine.clock())
    app = dashboard(web_engine, authorize=lambda _: answer, secret=b"k" * 32)  # type: ignore[arg-type,return-value]  # the mistake under test
    with pytest.raises(ValidationError, match="authorize: must return a Viewer or None"):
        TestClient(app).get("/")
    refused = TestClient(app, raise_server_exceptions=False).post(
        f"/flows/{flow.id}", data={"action": "abort", "csrf": token}
    )
    assert refused.status_code == 500
    assert "Traceback" not in refused.text
    assert web_engine.repository.get(flow.id) == flow


def mounted_in_starlette(engine: FlowEngine) -> Any:
    return Starlette(routes=[Mount("/ops/flows", dashboard(engine, authorize=by_header))])


def mounted_in_fastapi(engine: FlowEngine) -> Any:
    app = FastAPI()
    app.mount("/ops/flows", dashboard(engine, authorize=by_header))
    return app


@pytest.mark.parametrize("host", [mounted_in_starlette, mounted_in_fastapi], ids=["starlette", "fastapi"])
def test_mounted_under_a_path_every_link_and_form_keeps_it(
    web_engine: FlowEngine, host: Callable[[FlowEngine], Any]
) -> None:
    flow = start(web_engine)
    client = TestClient(host(web_engine))
    flows = client.get("/ops/flows/")
    assert flows.status_code == 200
    assert f'href="/ops/flows/flows/{flow.id}"' in flows.text
    assert 'href="/ops/flows/static/dashboard.css"' in flows.text
    assert client.get("/ops/flows/static/dashboard.js").status_code == 200
    page = client.get(f"/ops/flows/flows/{flow.id}", headers={"x-user": "ann"}).text
    assert f'action="/ops/flows/flows/{flow.id}"' in page
    done = client.post(
        f"/ops/flows/flows/{flow.id}",
        data={"action": "pause", "csrf": csrf_of(page)},
        headers={"x-user": "ann"},
        follow_redirects=False,
    )
    assert done.headers["location"] == f"/ops/flows/flows/{flow.id}?done=pause"


def test_the_dashboard_refuses_bad_settings(web_engine: FlowEngine) -> None:
    with pytest.raises(ValidationError, match="secret"):
        dashboard(web_engine, secret="short")
    with pytest.raises(ValidationError, match="page_size"):
        dashboard(web_engine, page_size=0)
    with pytest.raises(ValidationError, match="poll_interval"):
        dashboard(web_engine, poll_interval=float("nan"))
    with pytest.raises(ValidationError, match="actor"):
        Viewer(" ")
    with pytest.raises(ValidationError, match="groups"):
        Viewer("ann", "ops")  # a lone name: a mistake, not the groups o, p and s


def test_the_svg_diagram_highlights_the_states_named() -> None:
    drawn = svg("deployment", highlight={"started"}, marker_id="m1")
    assert re.findall(r'<rect class="current"[^>]*/><text[^>]*>(\w+)</text>', drawn) == ["started"]
    assert 'id="m1"' in drawn
    assert "url(#arrow)" not in drawn
    assert 'class="current"' not in svg("deployment")


def test_importing_flowfsm_loads_no_web_framework() -> None:
    code = "import sys, flowfsm; print(sorted(m for m in ('starlette', 'jinja2', 'uvicorn') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def gated_engine(clock: Clock) -> FlowEngine:
    """dev, then prod behind an approval gate: 2 approvals from alice or group ops."""
    gate = ApprovalPolicy(["alice", "group:ops"], required=2)
    service = Service(
        "svc-gated",
        artifacts=["com.acme:api"],
        pipeline=Pipeline("default", [Environment("dev"), Environment("prod", approvals=gate)]),
    )
    return FlowEngine(Catalog([service]), InMemoryRepository(), None, clock=clock, id_factory=SequentialIds("g"))


def awaiting(engine: FlowEngine, version: str = "1.0", author: str = "carol") -> Flow:
    """A flow whose prod deployment awaits approval."""
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", version), actor=author)).flows[0]
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    engine.handle(DeploymentCompleted(flow.deployments[0].id))
    flow = engine.repository.get(flow.id)
    assert flow.deployments[1].state is DeploymentState.AWAITING_APPROVAL
    return flow


def viewer_of_headers(request: Request) -> Viewer | None:
    user = request.headers.get("x-user")
    groups = request.headers.get("x-groups", "")
    return Viewer(user, frozenset(g for g in groups.split(",") if g)) if user else None


@pytest.mark.parametrize(
    ("headers", "listed"),
    [
        ({"x-user": "alice"}, True),
        ({"x-user": "dave", "x-groups": "ops"}, True),
        ({"x-user": "bob", "x-groups": "dev"}, False),
        ({"x-user": "carol", "x-groups": "ops"}, False),  # the artifact's author
    ],
    ids=["named", "in-group", "not-named", "author"],
)
def test_the_approvals_page_lists_what_the_viewer_may_approve(
    clock: Clock, headers: dict[str, str], listed: bool
) -> None:
    engine = gated_engine(clock)
    flow = awaiting(engine)
    engine.handle(ArtifactCreated(Artifact("com.acme", "api", "0.9")))  # in dev: waits for no approval
    prod = flow.deployments[1]
    page = TestClient(dashboard(engine, authorize=viewer_of_headers)).get("/approvals", headers=headers)
    assert page.status_code == 200
    assert (f'id="gate-{prod.id}"' in page.text) is listed
    assert ('value="approve"' in page.text) is listed
    assert "com.acme:api:0.9" not in page.text
    if not listed:
        assert "Nothing waits for your approval." in page.text


def test_the_approvals_page_shows_every_gate_read_only_to_a_visitor(clock: Clock) -> None:
    engine = gated_engine(clock)
    first, second = awaiting(engine, "1.0"), awaiting(engine, "2.0")
    text = TestClient(dashboard(engine, authorize=viewer_of_headers)).get("/approvals").text
    assert text.index(f'id="gate-{second.deployments[1].id}"') < text.index(f'id="gate-{first.deployments[1].id}"')
    assert "0 of 2" in text
    assert "alice, group:ops; not the artifact's author" in text
    assert "by carol" in text
    assert '<form method="post"' not in text


def test_the_flow_page_shows_the_gate_and_who_may_pass_it(clock: Clock) -> None:
    engine = gated_engine(clock)
    flow = awaiting(engine)
    client = TestClient(dashboard(engine, authorize=viewer_of_headers))
    text = client.get(f"/flows/{flow.id}", headers={"x-user": "bob"}).text
    gate = text[text.index('id="gate"') :]
    assert "Awaiting approval: 0 of 2." in gate
    assert "May approve: alice, group:ops" in gate
    assert "You may not approve this: not among the approvers of this environment." in gate
    assert 'value="approve"' in gate  # the engine decides, and says why not
    assert 'class="state state-awaitingApproval"' in text


def test_approvals_are_triggers_with_the_viewers_groups(clock: Clock) -> None:
    engine = gated_engine(clock)
    flow = awaiting(engine)
    prod = flow.deployments[1]
    client = TestClient(dashboard(engine, authorize=viewer_of_headers))
    for headers in ({"x-user": "alice"}, {"x-user": "dave", "x-groups": "ops"}):
        token = csrf_of(client.get("/approvals", headers=headers).text)
        done = client.post(
            f"/flows/{flow.id}",
            data={"action": "approve", "deployment_id": prod.id, "csrf": token, "next": "approvals"},
            headers=headers,
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/approvals?done=approve"
    passed = engine.repository.get(flow.id).deployments[1]
    assert passed.approvals == ("alice", "dave")
    assert passed.state is DeploymentState.NOT_STARTED
    entries = engine.repository.history(flow.id)[-2:]
    assert [(e.trigger["type"], e.actor) for e in entries] == [
        ("ApprovalGranted", "alice"),
        ("ApprovalGranted", "dave"),
    ]
    assert entries[1].trigger["groups"] == ["ops"]


def test_an_approval_the_policy_refuses_changes_nothing_and_says_why(clock: Clock) -> None:
    engine = gated_engine(clock)
    flow = awaiting(engine)
    client = TestClient(dashboard(engine, authorize=viewer_of_headers))
    for headers in ({"x-user": "bob", "x-groups": "dev"}, {"x-user": "carol", "x-groups": "ops"}):
        token = csrf_of(client.get(f"/flows/{flow.id}", headers=headers).text)
        refused = client.post(
            f"/flows/{flow.id}",
            data={"action": "approve", "deployment_id": flow.deployments[1].id, "csrf": token},
            headers=headers,
        )
        assert refused.status_code == 403
        assert f"&#39;{headers['x-user']}&#39; may not act on deployment" in refused.text
    assert engine.repository.get(flow.id) == flow


def test_a_rejection_needs_a_reason_and_is_a_failure(clock: Clock) -> None:
    engine = gated_engine(clock)
    flow = awaiting(engine)
    prod = flow.deployments[1]
    client = TestClient(dashboard(engine, authorize=viewer_of_headers))
    token = csrf_of(client.get(f"/flows/{flow.id}", headers={"x-user": "alice"}).text)
    form = {"action": "reject", "deployment_id": prod.id, "csrf": token}
    bare = client.post(f"/flows/{flow.id}", data=form, headers={"x-user": "alice"})
    assert bare.status_code == 422
    assert "reason: is required" in bare.text
    assert engine.repository.get(flow.id) == flow
    done = client.post(f"/flows/{flow.id}", data={**form, "reason": "no change window"}, headers={"x-user": "alice"})
    assert done.status_code == 200
    rejected = engine.repository.get(flow.id)
    assert rejected.deployments[1].state is DeploymentState.FAILED
    assert rejected.state is FlowState.FAILED
    last = engine.repository.history(flow.id)[-1]
    assert (last.trigger["type"], last.actor, last.reason) == ("ApprovalRejected", "alice", "no change window")


def test_a_held_deployment_can_be_let_through_the_freeze_with_a_reason(clock: Clock) -> None:
    always = FreezeWindow("all-day", ["prod"], "24h", "UTC", cron="0 0 * * *")
    service = Service(
        "svc-frozen",
        artifacts=["com.acme:api"],
        pipeline=Pipeline("default", [Environment("dev"), Environment("prod")]),
    )
    engine = FlowEngine(Catalog([service], freezes=[always]), InMemoryRepository(), None, clock=clock)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0]
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    engine.handle(DeploymentCompleted(flow.deployments[0].id))
    prod = engine.repository.get(flow.id).deployments[1]
    assert prod.state is DeploymentState.HELD
    client = TestClient(dashboard(engine, authorize=by_header))
    page = client.get(f"/flows/{flow.id}", headers={"x-user": "ann"}).text
    assert 'value="override-freeze"' in page
    form = {"action": "override-freeze", "deployment_id": prod.id, "csrf": csrf_of(page)}
    bare = client.post(f"/flows/{flow.id}", data=form, headers={"x-user": "ann"})
    assert bare.status_code == 422
    assert "reason: is required" in bare.text
    done = client.post(f"/flows/{flow.id}", data={**form, "reason": "hotfix"}, headers={"x-user": "ann"})
    assert done.status_code == 200
    assert "Deployment let through the freeze." in done.text
    assert engine.repository.get(flow.id).deployments[1].state is DeploymentState.NOT_STARTED
    last = engine.repository.history(flow.id)[-1]
    assert (last.trigger["type"], last.actor, last.reason) == ("OverrideFreeze", "ann", "hotfix")
