"""Serving the dashboard on loopback and driving it with headless Chromium: the
helpers of tests/test_web_browser.py, and ``./dev screenshots``.

``python -m tests.web_browser DIR`` (what ``./dev screenshots`` runs) fills a
SQLite store with sample flows, serves the dashboard on 127.0.0.1 and saves a
screenshot of each main page in DIR (docs/images/ for the docs).

Chromium comes from the operating system's packages (``chromium`` and
``chromium-driver``): ``./dev test`` and ``.ci/run`` install them when missing.
A machine without them fails these tests with that message; they never skip.
"""

from __future__ import annotations

import datetime as dt
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.support.ui import WebDriverWait
from starlette.requests import Request

from flowfsm import (
    Action,
    ApprovalPolicy,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    Flow,
    FlowEngine,
    HookEvent,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    Webhook,
)
from flowfsm.repositories import SQLiteRepository
from flowfsm.testing import SequentialIds, StepClock
from flowfsm.web import Viewer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = (
    "Chromium is missing ({}): install it with `apt-get install chromium chromium-driver` "
    "(./dev test and .ci/run do, as root); the dashboard's browser tests never skip"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


WAIT = 15.0
"""The most seconds a browser step waits for the page to show what it expects."""


def visit(browser: webdriver.Chrome, url: str) -> None:
    """Open ``url`` and wait until its document is the one loaded (``get`` may return
    while the previous document is still shown)."""
    browser.get(url)
    WebDriverWait(browser, WAIT).until(
        lambda b: b.execute_script("return document.readyState === 'complete' && document.URL") == url
    )


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return MISSING.format(", ".join(absent)) if absent else None


@contextmanager
def chromium(width: int = 1280, height: int = 900, *, javascript: bool = True) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a new empty profile, driven through chromedriver
    (``javascript=False``: with scripts off, as some readers browse)."""
    problem = chromium_missing()
    if problem:
        raise RuntimeError(problem)
    with tempfile.TemporaryDirectory(prefix="flowfsm-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        if not javascript:
            options.add_argument("--blink-settings=scriptEnabled=false")
        driver = webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on 127.0.0.1 (a free port); its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", http="h11", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        ready = threading.Event()
        for _ in range(1000):  # up to 10 s for the server to listen
            if server.started:
                ready.set()
                break
            ready.wait(0.01)
        if not ready.is_set():
            raise RuntimeError("the dashboard's server did not start within 10 s")
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def by_cookie(request: Request) -> Viewer | None:
    """The tests' authorization hook: the viewer named by the ``user`` cookie (groups
    in ``groups``, comma-separated); none, read-only. A real service vouches for its
    users through its own sign-in; tests only need to be someone."""
    user = request.cookies.get("user")
    if not user:
        return None
    groups = request.cookies.get("groups", "")
    return Viewer(user, frozenset(g for g in groups.split(",") if g))


def sample_catalog() -> Catalog:
    """svc-api: dev → staging → prod, with checks in staging and prod and one webhook
    whose endpoint has a signing secret (which no page may show); svc-web: dev, then
    prod behind an approval by alice or a release manager."""
    return Catalog(
        [
            Service(
                "svc-api",
                artifacts=["com.acme:api"],
                pipeline=Pipeline(
                    "default",
                    [
                        Environment("dev", promotions=["smoke"]),
                        Environment("staging", promotions=["smoke", "perf"]),
                        Environment("prod", promotions=["smoke"]),
                    ],
                ),
                webhooks=[
                    Webhook(
                        "wh-deploy",
                        HookEvent.DEPLOYMENT_CREATED,
                        [
                            Action(
                                "deploy",
                                url="https://cd.example/deploy",
                                secret="whsec_c2FtcGxlLWRhc2hib2FyZC1zZWNyZXQ=",
                            )
                        ],
                    )
                ],
            ),
            Service(
                "svc-web",
                artifacts=["com.acme:web"],
                pipeline=Pipeline(
                    "default",
                    [
                        Environment("dev", promotions=["smoke"]),
                        Environment("prod", approvals=ApprovalPolicy(["alice", "group:release-managers"])),
                    ],
                ),
            ),
        ]
    )


def sample_engine(path: Path) -> FlowEngine:
    """An engine on a new SQLite store at ``path``, with a clock from 2026-01-01 and readable ids."""
    return FlowEngine(
        sample_catalog(),
        SQLiteRepository(path),
        None,
        clock=StepClock(dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC), dt.timedelta(seconds=7)),
        id_factory=SequentialIds("f"),
    )


def through(engine: FlowEngine, flow: Flow, environments: int) -> Flow:
    """Move ``flow`` through its first ``environments`` deployments, every check passing."""
    for deployment in flow.deployments[:environments]:
        engine.handle(DeploymentStarted(deployment.id))
        engine.handle(DeploymentCompleted(deployment.id))
        for promotion in deployment.promotions:
            result = PromotionResult(promotion.id, ResultStatus.PASSED, {"ms": 120})
            engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))
    return engine.repository.get(flow.id)


def populate(engine: FlowEngine) -> Flow:
    """A few flows in different states (com.acme:web:7.3.1 awaiting approval in prod);
    returns one waiting for its checks in staging."""
    flows = [engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"1.{i}.0"))).flows[0] for i in range(4)]
    through(engine, flows[0], 3)
    failed = through(engine, flows[1], 1)
    staging = failed.deployments[1]
    engine.handle(DeploymentStarted(staging.id))
    engine.handle(DeploymentCompleted(staging.id))
    engine.handle(
        PromotionCompleted(
            staging.id,
            staging.promotions[1].id,
            [PromotionResult(staging.promotions[1].id, ResultStatus.FAILED, {"p99": "840ms"})],
        )
    )
    engine.handle(PauseFlow(flows[2].id, "alice", reason="waiting for the database migration"))
    web = engine.handle(ArtifactCreated(Artifact("com.acme", "web", "7.3.1"), actor="carol")).flows[0]
    through(engine, web, 1)  # prod awaits approval
    waiting = through(engine, flows[3], 1)
    staging = waiting.deployments[1]
    engine.handle(DeploymentStarted(staging.id))
    engine.handle(DeploymentCompleted(staging.id))
    return engine.repository.get(waiting.id)


def screenshots(directory: Path) -> list[Path]:
    """Save a PNG of the flows page, a flow page and the approvals page (seen by
    alice) in ``directory``; their paths."""
    from flowfsm.web import dashboard

    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    with tempfile.TemporaryDirectory() as scratch:
        engine = sample_engine(Path(scratch) / "flows.db")
        flow = populate(engine)
        app = dashboard(engine, authorize=by_cookie, secret=b"screenshots-only-secret")
        with served(app) as base, chromium(1280, 1000) as browser:
            visit(browser, f"{base}/")
            browser.add_cookie({"name": "user", "value": "alice"})
            pages = (
                ("dashboard-flows.png", "/"),
                ("dashboard-flow.png", f"/flows/{flow.id}"),
                ("dashboard-approvals.png", "/approvals"),
            )
            for name, path in pages:
                browser.set_window_size(1280, 600)  # the page's own height, not the last one's
                visit(browser, base + path)
                height = browser.execute_script("return document.documentElement.scrollHeight")
                browser.set_window_size(1280, min(max(int(height) + 120, 600), 4000))
                target = directory / name
                browser.save_screenshot(str(target))
                saved.append(target)
        engine.repository.close()  # type: ignore[attr-defined]  # SQLiteRepository
    return saved


if __name__ == "__main__":
    for saved_path in screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")):
        print(saved_path)
