"""The dashboard in a real browser: headless Chromium (the operating system's
package, driven by Selenium through chromedriver) against the dashboard served
by uvicorn on 127.0.0.1. Missing Chromium fails these tests, naming the fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from flowfsm import (
    DeploymentCompleted,
    DeploymentStarted,
    DeploymentState,
    FlowEngine,
    FlowState,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
)
from flowfsm.web import dashboard

from .web_browser import (
    WAIT,
    by_cookie,
    chromium,
    chromium_missing,
    populate,
    sample_engine,
    screenshots,
    served,
    visit,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    problem = chromium_missing()
    if problem:
        pytest.fail(problem)
    with chromium() as driver:
        yield driver


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[FlowEngine]:
    engine = sample_engine(tmp_path / "flows.db")
    yield engine
    engine.repository.close()  # type: ignore[attr-defined]  # SQLiteRepository


@pytest.fixture
def base(engine: FlowEngine) -> Iterator[str]:
    with served(dashboard(engine, authorize=by_cookie, poll_interval=0.2)) as url:
        yield url


def sign_in(browser: webdriver.Chrome, base: str, user: str | None, groups: str = "") -> None:
    visit(browser, f"{base}/static/dashboard.css")  # cookies belong to the server's origin
    browser.delete_all_cookies()
    if user:
        browser.add_cookie({"name": "user", "value": user})
    if groups:
        browser.add_cookie({"name": "groups", "value": groups})


def text_of(browser: webdriver.Chrome, element_id: str) -> str:
    """The element's text, read in one script: the page may swap the element at any moment."""
    text = browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : ''", element_id
    )
    return str(text)


def test_the_flows_page_leads_to_a_flow(browser: webdriver.Chrome, engine: FlowEngine, base: str) -> None:
    waiting = populate(engine)
    sign_in(browser, base, None)
    visit(browser, f"{base}/")
    assert browser.title == "Flows · flowfsm"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.flows tbody tr")
    assert len(rows) == 5
    assert [r.text.split()[0] for r in rows][:2] == ["com.acme:web:7.3.1", "com.acme:api:1.3.0"]  # newest first
    assert text_of(browser, "viewer") == "Read-only"
    browser.find_element(By.LINK_TEXT, waiting.artifact.id).click()
    WebDriverWait(browser, WAIT).until(lambda b: b.current_url.endswith(f"/flows/{waiting.id}"))
    assert text_of(browser, "artifact") == "com.acme:api:1.3.0"
    assert "completed" in text_of(browser, "deployment-staging")
    assert "Waiting for the promotions" in text_of(browser, "explain")
    assert browser.find_elements(By.CSS_SELECTOR, "#diagram-flow rect.current")
    assert not browser.find_elements(By.CSS_SELECTOR, "form[method=post]")  # read-only: no forms


def test_a_filter_narrows_the_flows(browser: webdriver.Chrome, engine: FlowEngine, base: str) -> None:
    populate(engine)
    sign_in(browser, base, None)
    visit(browser, f"{base}/")
    browser.find_element(By.CSS_SELECTOR, "select[name=state] option[value='']")
    browser.find_element(By.XPATH, "//select[@name='state']/option[text()='paused']").click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    WebDriverWait(browser, WAIT).until(lambda b: "state=paused" in b.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "table.flows tbody tr")
    assert [r.text.split()[0] for r in rows] == ["com.acme:api:1.2.0"]


def test_an_allowed_viewer_acts_and_the_history_names_them(
    browser: webdriver.Chrome, engine: FlowEngine, base: str
) -> None:
    flow = populate(engine)
    sign_in(browser, base, "alice")
    visit(browser, f"{base}/flows/{flow.id}")
    assert text_of(browser, "viewer") == "alice"
    pause = browser.find_element(By.CSS_SELECTOR, "form.action-pause")
    pause.find_element(By.NAME, "reason").send_keys("hold for the release notes")
    pause.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, WAIT).until(lambda b: "done=pause" in b.current_url)
    assert "Flow paused." in browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert text_of(browser, "flow-state") == "paused"
    assert engine.repository.get(flow.id).state is FlowState.PAUSED
    last = engine.repository.history(flow.id)[-1]
    assert (last.actor, last.reason) == ("alice", "hold for the release notes")
    assert "hold for the release notes" in text_of(browser, "history")


def test_a_read_only_viewer_has_no_forms_and_a_forged_post_is_refused(
    browser: webdriver.Chrome, engine: FlowEngine, base: str
) -> None:
    flow = populate(engine)
    sign_in(browser, base, "alice")
    visit(browser, f"{base}/flows/{flow.id}")
    assert browser.find_elements(By.CSS_SELECTOR, "form.action-abort")
    sign_in(browser, base, None)  # signed out, with alice's page still in hand
    visit(browser, f"{base}/flows/{flow.id}")
    assert not browser.find_elements(By.CSS_SELECTOR, "form[method=post]")
    script = """
        const done = arguments[arguments.length - 1];
        const body = new URLSearchParams({action: "abort", csrf: "forged"});
        fetch(arguments[0], {method: "POST", body}).then(r => done(r.status), () => done(0));
    """
    assert browser.execute_async_script(script, f"{base}/flows/{flow.id}") == 403
    assert engine.repository.get(flow.id).state is FlowState.IN_PROGRESS


def test_an_approver_approves_and_a_viewer_the_policy_does_not_name_is_refused(
    browser: webdriver.Chrome, engine: FlowEngine, base: str
) -> None:
    populate(engine)
    (web,) = engine.repository.list_flows(service_id="svc-web")
    prod = web.deployments[1]
    assert prod.state is DeploymentState.AWAITING_APPROVAL
    # bob is no approver: his approvals page is empty; the flow page's button is refused by the engine
    sign_in(browser, base, "bob", "developers")
    visit(browser, f"{base}/approvals")
    assert "Nothing waits for your approval." in text_of(browser, "approvals")
    visit(browser, f"{base}/flows/{web.id}")
    assert "0 of 1" in text_of(browser, "gate")
    browser.find_element(By.CSS_SELECTOR, "#gate form.action-approve button").click()
    WebDriverWait(browser, WAIT).until(lambda b: text_of(b, "error"))
    refusal = text_of(browser, "error")
    assert "'bob' may not act on deployment" in refusal
    assert "not among the approvers" in refusal
    assert engine.repository.get(web.id).deployments[1].state is DeploymentState.AWAITING_APPROVAL
    # dave is a release manager: the approvals page offers him the gate, and his approval passes it
    sign_in(browser, base, "dave", "release-managers")
    visit(browser, f"{base}/approvals")
    browser.find_element(By.CSS_SELECTOR, f"[id='gate-{prod.id}'] form.action-approve button").click()
    WebDriverWait(browser, WAIT).until(lambda b: "done=approve" in b.current_url)
    assert "Approval recorded." in browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert "Nothing waits for your approval." in text_of(browser, "approvals")
    approved = engine.repository.get(web.id).deployments[1]
    assert approved.state is DeploymentState.NOT_STARTED
    assert approved.approvals == ("dave",)
    last = engine.repository.history(web.id)[-1]
    assert (last.trigger["type"], last.actor) == ("ApprovalGranted", "dave")


def test_the_flow_page_follows_the_flow_without_a_reload(
    browser: webdriver.Chrome, engine: FlowEngine, base: str
) -> None:
    flow = populate(engine)
    sign_in(browser, base, None)
    visit(browser, f"{base}/flows/{flow.id}")
    browser.execute_script("window.stillThisPage = true")  # a reload or a navigation would lose it
    staging = flow.deployments[1]
    assert "completed" in text_of(browser, "deployment-staging")
    for promotion in staging.promotions:
        result = PromotionResult(promotion.id, ResultStatus.PASSED)
        engine.handle(PromotionCompleted(staging.id, promotion.id, [result]))
    WebDriverWait(browser, WAIT).until(lambda b: "success" in text_of(b, "deployment-staging"))
    assert "current" in text_of(browser, "deployment-prod")
    prod = flow.deployments[2]
    engine.handle(DeploymentStarted(prod.id))
    WebDriverWait(browser, WAIT).until(lambda b: "started" in text_of(b, "deployment-prod"))
    engine.handle(DeploymentCompleted(prod.id))
    smoke = prod.promotions[0].id
    engine.handle(PromotionCompleted(prod.id, smoke, [PromotionResult(smoke, ResultStatus.PASSED)]))
    WebDriverWait(browser, WAIT).until(lambda b: text_of(b, "flow-state") == "success")
    assert "finished" in text_of(browser, "explain")
    assert "PromotionCompleted" in text_of(browser, "history")
    assert browser.execute_script("return window.stillThisPage") is True


def test_without_javascript_the_pages_read_and_the_forms_work(engine: FlowEngine) -> None:
    flow = populate(engine)
    app = dashboard(engine, authorize=by_cookie, poll_interval=0.2)
    asked: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        asked.append(scope.get("query_string", b"").decode())
        await app(scope, receive, send)

    with served(counting) as base, chromium(javascript=False) as plain:
        sign_in(plain, base, "alice")
        visit(plain, f"{base}/")
        assert "com.acme:api:1.3.0" in text_of_plain(plain, "flows")
        visit(plain, f"{base}/flows/{flow.id}")
        assert "Waiting for the promotions" in text_of_plain(plain, "explain")
        assert "completed" in text_of_plain(plain, "deployment-staging")
        pause = plain.find_element(By.CSS_SELECTOR, "form.action-pause")
        pause.find_element(By.NAME, "reason").send_keys("no scripts needed")
        pause.find_element(By.TAG_NAME, "button").click()
        WebDriverWait(plain, WAIT).until(lambda b: "done=pause" in b.current_url)
        assert text_of_plain(plain, "flow-state") == "paused"
    assert engine.repository.history(flow.id)[-1].reason == "no scripts needed"
    assert asked
    assert not [q for q in asked if "partial=1" in q]  # no script ran: nothing polled


def text_of_plain(browser: webdriver.Chrome, element_id: str) -> str:
    """The element's text, through the driver (the page swaps nothing without scripts)."""
    return str(browser.find_element(By.ID, element_id).text)


def test_the_screenshots_command_saves_the_main_pages(tmp_path: Path) -> None:
    saved = screenshots(tmp_path)
    assert [p.name for p in saved] == ["dashboard-flows.png", "dashboard-flow.png", "dashboard-approvals.png"]
    for path in saved:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000


def test_a_machine_without_chromium_is_told_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from . import web_browser

    monkeypatch.setattr(web_browser, "CHROMIUM", tmp_path / "chromium")
    problem = web_browser.chromium_missing()
    assert problem is not None
    assert str(tmp_path / "chromium") in problem
    assert "apt-get install chromium chromium-driver" in problem
    with pytest.raises(RuntimeError, match="never skip"), web_browser.chromium():
        pass  # pragma: no cover - chromium() refuses before it yields
