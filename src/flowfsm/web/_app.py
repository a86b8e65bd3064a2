"""The dashboard's ASGI application: routes, rendering and actions.

Every page is rendered on the server (Jinja2, autoescaped: user data is text,
never markup) and reads without JavaScript; a few lines of plain JS
(``static/dashboard.js``) refresh the parts of a page marked ``data-live`` from
the same URL with ``?partial=1``, so a moving flow shows its moves without a
reload. Reads run in Starlette's thread pool, since repositories block.

Actions are forms that POST to the flow's URL. Each is refused (403, nothing
changed) unless ``authorize`` returns a viewer for the request and the form's
CSRF token was issued to that viewer; then it becomes one trigger with
``actor=viewer.actor`` through ``engine.handle``, so the engine's rules
(``InvalidTransition``, who may approve) and the history apply. A
``FlowFSMError`` is shown on the page with a 4xx status, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import inspect
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flowfsm.engine import FlowEngine
from flowfsm.errors import (
    ConcurrencyConflict,
    FlowFSMError,
    InvalidTransition,
    NotAuthorized,
    NotFound,
    RepositoryError,
    UnknownDeployment,
    UnknownFlow,
    ValidationError,
    bounded,
)
from flowfsm.model import text_problem
from flowfsm.triggers import (
    MAX_REASON,
    AbortFlow,
    ApprovalGranted,
    ApprovalRejected,
    OverrideFreeze,
    PauseFlow,
    ResumeFlow,
    RetryDeployment,
    RetryPromotion,
    SkipPromotion,
    Trigger,
)
from flowfsm.web._security import CsrfTokens, Viewer, redacted
from flowfsm.web._views import approvals_page, flow_page, flows_page, parse_filters

__all__ = ["Authorize", "dashboard"]

Authorize: TypeAlias = Callable[[Request], "Viewer | Awaitable[Viewer | None] | None"]
"""The embedding service's hook: the viewer it vouches for, or None (read-only)."""

_HEADERS: Final[Mapping[str, str]] = {
    # Scripts, styles and images from the dashboard only: injected markup could run nothing.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it: no clickjacking of a form
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages carry CSRF tokens and change as flows move
}

_DONE: Final[Mapping[str, str]] = {
    "approve": "Approval recorded.",
    "reject": "Rejection recorded.",
    "pause": "Flow paused.",
    "resume": "Flow resumed.",
    "abort": "Flow aborted.",
    "retry-promotion": "Promotion retried.",
    "skip-promotion": "Promotion skipped.",
    "retry-deployment": "Deployment retried.",
    "override-freeze": "Deployment let through the freeze.",
}
"""What the page says after each action succeeded (the redirect names the action)."""


def _status(error: FlowFSMError) -> int:
    """The HTTP status that says what kind of refusal ``error`` is."""
    if isinstance(error, NotAuthorized):
        return 403
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, InvalidTransition | ConcurrencyConflict):
        return 409
    if isinstance(error, ValidationError):
        return 422
    if isinstance(error, RepositoryError):
        return 503
    return 400


class _Form:
    """An action form's fields, each bounded; a blank one is None."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields

    def text(self, name: str) -> str | None:
        value = self._fields.get(name)
        if not isinstance(value, str) or not value.strip():
            return None
        if len(value) > MAX_REASON:  # the longest text a trigger takes
            raise ValidationError(name, f"is {len(value)} characters long; at most {MAX_REASON} are allowed")
        return value.strip()

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise ValidationError(name, "is required")
        return value


ActionBuilder: TypeAlias = Callable[[str, _Form, Viewer], Trigger]
"""How one action's form becomes its trigger: ``(flow id, form, viewer) -> trigger``."""

ACTIONS: Final[dict[str, ActionBuilder]] = {
    "approve": lambda _, f, v: ApprovalGranted(f.required("deployment_id"), v.actor, v.groups, reason=f.text("reason")),
    "reject": lambda _, f, v: ApprovalRejected(
        f.required("deployment_id"), v.actor, f.required("reason"), groups=v.groups
    ),
    "pause": lambda flow_id, f, v: PauseFlow(flow_id, v.actor, f.text("reason")),
    "resume": lambda flow_id, f, v: ResumeFlow(flow_id, v.actor, f.text("reason")),
    "abort": lambda flow_id, f, v: AbortFlow(flow_id, v.actor, f.text("reason")),
    "retry-promotion": lambda _, f, v: RetryPromotion(
        f.required("deployment_id"), f.required("promotion_id"), v.actor, f.text("reason")
    ),
    "skip-promotion": lambda _, f, v: SkipPromotion(
        f.required("deployment_id"), f.required("promotion_id"), v.actor, f.required("reason")
    ),
    "retry-deployment": lambda _, f, v: RetryDeployment(f.required("deployment_id"), v.actor, f.text("reason")),
    "override-freeze": lambda _, f, v: OverrideFreeze(f.required("deployment_id"), v.actor, f.required("reason")),
}
"""Each action a form may name, and its trigger."""


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flowfsm.web", "templates"),
        autoescape=True,  # every value is text unless a template says otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["path"] = lambda value: quote(str(value), safe="")
    environment.filters["redacted"] = lambda value: redacted(str(value))
    environment.filters["when"] = _when
    environment.filters["query"] = urlencode
    return environment


def _base(request: Request) -> str:
    """The path the dashboard is mounted at ("" at the root): its links start with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _when(value: dt.datetime | None) -> str:
    """A time as the pages show it: UTC, to the second."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dashboard(
    engine: FlowEngine,
    *,
    authorize: Authorize | None = None,
    secret: bytes | str | None = None,
    title: str = "flowfsm",
    page_size: int = 50,
    poll_interval: float = 1.0,
    csrf_max_age: dt.timedelta = dt.timedelta(hours=8),
) -> Starlette:
    """The dashboard of ``engine``'s flows, as an ASGI application to mount or serve.

    ``authorize(request)`` (sync or async) returns the ``Viewer`` the embedding
    service vouches for, or None: that request is read-only. Without it the whole
    dashboard is read-only. To refuse a request even a look, the hook raises
    ``starlette.exceptions.HTTPException`` (401 or 403). ``secret`` keys the CSRF
    tokens: give the same one (16 bytes or more) to every process serving the
    dashboard; by default each process draws its own, so a form is good only on
    the process that served it. ``poll_interval`` is how often, in seconds, an
    open page looks for changes. Times come from the engine's clock.
    """
    if not 1 <= page_size <= 1000:
        raise ValidationError("page_size", "must be from 1 to 1000")
    if not 0.1 <= poll_interval <= 3600:  # NaN too
        raise ValidationError("poll_interval", "must be from 0.1 to 3600 seconds")
    key = secret.encode() if isinstance(secret, str) else secret
    if key is not None and len(key) < 16:
        raise ValidationError("secret", "must be at least 16 bytes long")
    tokens = CsrfTokens(key or secrets.token_bytes(32), csrf_max_age)
    pages = _Dashboard(
        engine, authorize=authorize, tokens=tokens, title=title, page_size=page_size, poll_interval=poll_interval
    )
    static = StaticFiles(packages=[("flowfsm.web", "static")])
    routes = [
        Route("/", pages.flows, name="flows"),
        Route("/flows/{flow_id:path}", pages.flow, methods=["GET", "POST"], name="flow"),
        Route("/approvals", pages.approvals, name="approvals"),
        Mount("/static", static, name="static"),
    ]
    return Starlette(routes=routes)


class _Dashboard:
    """The pages of one dashboard: each public method is an endpoint."""

    def __init__(
        self,
        engine: FlowEngine,
        *,
        authorize: Authorize | None,
        tokens: CsrfTokens,
        title: str,
        page_size: int,
        poll_interval: float,
    ) -> None:
        self.engine = engine
        self.authorize = authorize
        self.tokens = tokens
        self.title = title
        self.page_size = page_size
        self.poll_ms = int(poll_interval * 1000)
        self.templates = _templates()

    async def viewer(self, request: Request) -> Viewer | None:
        """Who the embedding service says is looking; None: read-only."""
        if self.authorize is None:
            return None
        found = self.authorize(request)
        if inspect.isawaitable(found):
            found = await found
        if found is not None and not isinstance(found, Viewer):
            # the embedding service's mistake: every request fails closed (500), none acts as nobody knows whom
            raise ValidationError("authorize", f"must return a Viewer or None, not {bounded(type(found).__name__, 80)}")
        return found

    def render(self, request: Request, name: str, viewer: Viewer | None, status: int = 200, **values: Any) -> Response:
        """A page, or with ``?partial=1`` its ``live`` block alone (what the page's script refreshes)."""
        template = self.templates.get_template(name)
        context = {
            "title": self.title,
            "base": _base(request),
            "viewer": viewer,
            "can_act": viewer is not None,
            "csrf": self.tokens.issue(viewer, self.engine.clock()) if viewer is not None else "",
            "poll_ms": self.poll_ms,
            "done": _DONE.get(request.query_params.get("done", "")),
            **values,
        }
        # A refusal is the whole page: the live block needs the data a refusal has not got.
        if status < 400 and request.query_params.get("partial") == "1" and "live" in template.blocks:
            body = "".join(template.blocks["live"](template.new_context(context)))
        else:
            body = template.render(context)
        return HTMLResponse(body, status_code=status, headers=dict(_HEADERS))

    def refusal(self, request: Request, viewer: Viewer | None, status: int, message: str) -> Response:
        return self.render(request, "error.html", viewer, status, message=message)

    async def flows(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        try:
            filters = parse_filters(dict(request.query_params))
            page = await run_in_threadpool(flows_page, self.engine, filters, self.page_size)
        except FlowFSMError as e:
            return self.render(request, "flows.html", viewer, _status(e), page=None, error=str(e))
        return self.render(request, "flows.html", viewer, page=page, error=None)

    async def approvals(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        try:
            page = await run_in_threadpool(approvals_page, self.engine, viewer)
        except FlowFSMError as e:
            return self.refusal(request, viewer, _status(e), str(e))
        return self.render(request, "approvals.html", viewer, page=page)

    async def flow(self, request: Request) -> Response:
        flow_id = request.path_params["flow_id"]
        if text_problem(flow_id) is not None:  # no store can hold it (PostgreSQL refuses NUL): no such flow
            return self.refusal(request, await self.viewer(request), 404, str(UnknownFlow(flow_id)))
        if request.method == "POST":
            return await self.act(request)
        return await self.show_flow(request, await self.viewer(request))

    async def show_flow(
        self, request: Request, viewer: Viewer | None, error: str | None = None, status: int = 200
    ) -> Response:
        try:
            page = await run_in_threadpool(flow_page, self.engine, request.path_params["flow_id"], viewer)
        except FlowFSMError as e:
            return self.refusal(request, viewer, _status(e), str(e))
        return self.render(request, "flow.html", viewer, status, page=page, error=error)

    async def act(self, request: Request) -> Response:
        """One action's form: refused (403, nothing changed) without a viewer or a
        valid CSRF token; else its trigger, with the viewer as actor."""
        viewer = await self.viewer(request)
        if viewer is None:
            why = "This dashboard is read-only." if self.authorize is None else "You may not act here: not signed in."
            return self.refusal(request, None, 403, why)
        form = await request.form(max_files=0, max_fields=20)
        token = form.get("csrf")
        if not isinstance(token, str) or not self.tokens.valid(token, viewer, self.engine.clock()):
            message = (
                "The form has expired or did not come from this dashboard: nothing was changed. "
                "Reload the page and try again."
            )
            return self.refusal(request, viewer, 403, message)
        flow_id = request.path_params["flow_id"]
        name = form.get("action")
        build = ACTIONS.get(name) if isinstance(name, str) else None
        if build is None:
            return self.refusal(request, viewer, 422, "action: not an action this dashboard knows")
        try:
            await run_in_threadpool(self.apply, flow_id, build, _Form(form), viewer)
        except FlowFSMError as e:
            return await self.show_flow(request, viewer, str(e), _status(e))
        back = f"{_base(request)}/flows/{quote(flow_id, safe='')}"
        if form.get("next") == "approvals":  # a fixed place, never a URL from the form
            back = f"{_base(request)}/approvals"
        return RedirectResponse(f"{back}?{urlencode({'done': name})}", status_code=303)

    def apply(self, flow_id: str, build: ActionBuilder, form: _Form, viewer: Viewer) -> None:
        """The action's trigger, through the engine; a form acts on its own flow's deployments only."""
        deployment_id = form.text("deployment_id")
        if deployment_id is not None and self.engine.repository.get(flow_id).deployment(deployment_id) is None:
            raise UnknownDeployment(deployment_id)
        self.engine.handle(build(flow_id, form, viewer))
