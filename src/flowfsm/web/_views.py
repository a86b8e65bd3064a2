"""What each page shows, read from the engine and its repository: plain data for
the templates, so that the templates hold layout only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

import attrs

from flowfsm.diagrams import svg
from flowfsm.engine import FlowEngine
from flowfsm.errors import UnknownService, ValidationError, bounded
from flowfsm.explain import Waiting
from flowfsm.model import (
    ApprovalPolicy,
    Artifact,
    DeliveryState,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HistoryEntry,
    HookRecord,
    text_problem,
)
from flowfsm.web._security import Viewer, redacted

__all__ = ["ApprovalsPage", "FlowPage", "FlowsPage", "approvals_page", "flow_page", "flows_page", "parse_state"]

MAX_SCANNED: Final = 5_000
"""The most open flows the approvals page reads (newest first) to show a visitor
every deployment awaiting approval: no repository indexes them, and a page that
reads without end would be no page at all. Beyond it, the page says so."""

MAX_DELIVERIES: Final = 100
"""The most HookRequests a flow page lists (the newest): a flow steered for weeks can
have thousands, which ``flowfsm show ID --json`` lists in full."""


@attrs.frozen
class Filters:
    """The flows page's filters, as given (empty: no filter)."""

    service: str = ""
    state: str = ""
    artifact: str = ""
    page: int = 1

    def query(self, page: int) -> dict[str, str]:
        """The query string of ``page`` with these filters."""
        wanted = {"service": self.service, "state": self.state, "artifact": self.artifact}
        return {k: v for k, v in wanted.items() if v} | ({"page": str(page)} if page > 1 else {})


@attrs.frozen
class FlowsPage:
    filters: Filters
    flows: Sequence[Flow]
    has_next: bool
    services: Sequence[str]
    states: Sequence[str]


def parse_state(value: str) -> FlowState:
    """A state as typed (``inprogress`` is ``inProgress``), or ``ValidationError``."""
    for state in FlowState:
        if state.value.casefold() == value.casefold():
            return state
    allowed = ", ".join(s.value for s in FlowState)
    raise ValidationError("state", f"must be one of {allowed}")


def parse_filters(query: dict[str, str]) -> Filters:
    """The flows page's filters from its query string; ``ValidationError`` names a bad one."""
    for field in ("service", "state", "artifact", "page"):
        problem = text_problem(query.get(field, ""))
        if problem:
            raise ValidationError(field, problem)
    page_text = query.get("page", "1").strip() or "1"
    # ASCII digits only, and few: "²" is a digit to isdigit but not to int, and int reads at most 4300 digits
    if (
        not (page_text.isascii() and page_text.isdigit() and len(page_text) <= 7)
        or not 1 <= int(page_text) <= 1_000_000
    ):
        raise ValidationError("page", "must be a whole number from 1 to 1000000")
    return Filters(
        service=query.get("service", "").strip()[:200],
        state=query.get("state", "").strip()[:40],
        artifact=query.get("artifact", "").strip()[:400],
        page=int(page_text),
    )


def flows_page(engine: FlowEngine, filters: Filters, page_size: int) -> FlowsPage:
    """One page of flows, newest first, read through ``list_flows`` (the filter
    and paging the command line uses). An artifact filter names one artifact
    (``GROUP:NAME:VERSION``): its flows are found by their unique key, through the
    catalog's services that consume it."""
    state = parse_state(filters.state) if filters.state else None
    service = filters.service or None
    offset = (filters.page - 1) * page_size
    if filters.artifact:
        artifact = Artifact.parse(filters.artifact)
        repository = engine.repository
        found = [
            flow
            for s in engine.catalog.for_artifact(artifact.key)
            if service in (None, s.id)
            and (flow := repository.find_by_key(artifact.id, s.id)) is not None
            and state in (None, flow.state)
        ]
        found.sort(key=lambda f: f.created_at or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True)
        window = found[offset : offset + page_size + 1]
    else:
        window = engine.repository.list_flows(service_id=service, state=state, limit=page_size + 1, offset=offset)
    return FlowsPage(
        filters=filters,
        flows=window[:page_size],
        has_next=len(window) > page_size,
        services=[s.id for s in engine.catalog],
        states=[s.value for s in FlowState],
    )


@attrs.frozen
class Gate:
    """One deployment awaiting approval, and what its environment's policy asks."""

    flow: Flow
    deployment: Deployment
    policy: ApprovalPolicy
    refusal: str | None
    """Why the viewer may not approve it (the policy's words), or None: they may."""

    @property
    def mine(self) -> bool:
        """Whether the viewer approved it already."""
        return self.refusal == _APPROVED


_APPROVED: Final = "you approved it already"


@attrs.frozen
class ApprovalsPage:
    gates: Sequence[Gate]
    scanned: int
    complete: bool
    """Whether every open flow was read (else: the newest ``MAX_SCANNED``)."""


def gate_of(engine: FlowEngine, flow: Flow, deployment: Deployment, viewer: Viewer | None) -> Gate | None:
    """The approval gate ``deployment`` waits at, with the policy's verdict on the
    viewer (``ApprovalPolicy.refusal``, as the engine asks it); None if it waits at none."""
    if deployment.state is not DeploymentState.AWAITING_APPROVAL:
        return None
    try:
        environment = engine.catalog.get(flow.service_id).pipeline.environment(deployment.environment)
    except UnknownService:  # the catalog no longer has the service: nobody can say who may approve
        return None
    policy = environment.approvals if environment is not None else None
    if policy is None:
        return None
    if viewer is None:
        refusal: str | None = "not signed in"
    elif viewer.actor in deployment.approvals:
        refusal = _APPROVED
    else:
        refusal = policy.refusal(viewer.actor, viewer.groups, flow.author)
    return Gate(flow, deployment, policy, refusal)


def approvals_page(engine: FlowEngine, viewer: Viewer | None) -> ApprovalsPage:
    """For a viewer, what waits for them: ``FlowEngine.approvals_for`` (the engine's
    own rule). For a visitor, every gate of an open flow (in progress or paused),
    newest flow first, reading at most ``MAX_SCANNED`` flows."""
    if viewer is not None:
        found = engine.approvals_for(viewer.actor, viewer.groups)
        gates = [Gate(a.flow, a.deployment, a.policy, None) for a in found]
        return ApprovalsPage(gates, len(gates), complete=True)
    gates, scanned = [], 0
    for state in (FlowState.IN_PROGRESS, FlowState.PAUSED):
        offset, page = 0, 500
        while scanned < MAX_SCANNED:
            flows = engine.repository.list_flows(state=state, limit=min(page, MAX_SCANNED - scanned), offset=offset)
            for flow in flows:
                current = flow.current_deployment()
                gate = gate_of(engine, flow, current, None) if current is not None else None
                if gate is not None:
                    gates.append(gate)
            scanned += len(flows)
            offset += len(flows)
            if len(flows) < page:
                break
    gates.sort(key=lambda g: g.flow.created_at or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True)
    return ApprovalsPage(gates, scanned, complete=scanned < MAX_SCANNED)


@attrs.frozen
class Change:
    entity: str
    name: str
    from_: str | None
    to: str


@attrs.frozen
class Step:
    """One history entry as the page lists it."""

    seq: int
    at: dt.datetime
    trigger: str
    actor: str | None
    reason: str | None
    changes: Sequence[Change]
    hook_requests: int


@attrs.frozen
class Delivery:
    """One HookRequest and its delivery, without its payload or its endpoint's URL."""

    id: str
    created_at: dt.datetime
    event: str
    environment: str
    target: str
    state: str
    attempts: int
    last: str


@attrs.frozen
class Diagram:
    entity: str
    caption: str
    svg: str


@attrs.frozen
class FlowPage:
    flow: Flow
    waiting: Sequence[Waiting]
    deployments: Sequence[tuple[Deployment, Sequence[tuple[str, dt.datetime]]]]
    current_id: str | None
    steps: Sequence[Step]
    deliveries: Sequence[Delivery]
    older_deliveries: int
    diagrams: Sequence[Diagram]
    finished: bool
    gate: Gate | None
    """The approval gate its current deployment waits at, if any."""


def _names(flow: Flow) -> dict[str, str]:
    """What the page calls each part of ``flow``: a deployment by its environment,
    a promotion as ``environment/name``."""
    names = {flow.id: "flow"}
    for deployment in flow.deployments:
        names[deployment.id] = deployment.environment
        for promotion in deployment.promotions:
            names[promotion.id] = f"{deployment.environment}/{promotion.name}"
    return names


def _steps(flow: Flow, entries: Sequence[HistoryEntry]) -> list[Step]:
    names = _names(flow)
    return [
        Step(
            seq=entry.seq,
            at=entry.at,
            trigger=str(entry.trigger.get("type", "?")),
            actor=entry.actor,
            reason=entry.reason,
            changes=[Change(c.entity, names.get(c.id, c.id), c.from_, c.to) for c in entry.changes],
            hook_requests=len(entry.hook_request_ids),
        )
        for entry in entries
    ]


def _deliveries(records: Sequence[HookRecord]) -> list[Delivery]:
    shown = []
    for record in records:
        request = record.request
        last = record.attempts[-1] if record.attempts else None
        if last is None:
            answer = "delivered at once" if record.state is DeliveryState.DELIVERED else ""
        elif last.status_code is not None:
            answer = f"HTTP {last.status_code}"
        else:
            answer = bounded(redacted(last.error or "no answer"), 160)  # redacted whole: a cut can hide a URL's "@"
        deployment = getattr(request.payload, "deployment", None)
        shown.append(
            Delivery(
                id=request.id,
                created_at=request.created_at,
                event=request.event.value,
                environment=deployment.environment if deployment is not None else "",
                target=f"{request.webhook_id}/{request.action.name}",
                state=record.state.value,
                attempts=len(record.attempts),
                last=answer,
            )
        )
    return shown


def _reached(flow: Flow, entries: Sequence[HistoryEntry]) -> dict[str, list[tuple[str, dt.datetime]]]:
    """For each deployment id: each state it entered, and when, oldest first."""
    reached: dict[str, list[tuple[str, dt.datetime]]] = {d.id: [] for d in flow.deployments}
    for entry in entries:
        for change in entry.changes:
            if change.id in reached:
                reached[change.id].append((change.to, entry.at))
    return reached


def _diagrams(flow: Flow, current: Deployment | None) -> list[Diagram]:
    """The three machines, each with the flow's states in it highlighted: the flow's,
    its current deployment's (the last one once none is left) and that deployment's
    promotions'."""
    shown = current or (flow.deployments[-1] if flow.deployments else None)
    diagrams = [
        Diagram("flow", f"Flow: {flow.state.value}", svg("flow", highlight={flow.state.value}, marker_id="a-f"))
    ]
    if shown is not None:
        diagrams.append(
            Diagram(
                "deployment",
                f"Deployment to {shown.environment}: {shown.state.value}",
                svg("deployment", highlight={shown.state.value}, marker_id="a-d"),
            )
        )
        if shown.promotions:
            states = ", ".join(f"{p.name}: {p.state.value}" for p in shown.promotions)
            diagrams.append(
                Diagram(
                    "promotion",
                    f"Promotions in {shown.environment}: {states}",
                    svg("promotion", highlight={p.state.value for p in shown.promotions}, marker_id="a-p"),
                )
            )
    return diagrams


def flow_page(engine: FlowEngine, flow_id: str, viewer: Viewer | None = None) -> FlowPage:
    """Everything the flow page shows; ``UnknownFlow`` if there is no such flow."""
    repository = engine.repository
    flow = repository.get(flow_id)
    entries = repository.history(flow.id)
    current = flow.current_deployment()
    reached = _reached(flow, entries)
    records = repository.hook_requests(flow.id)
    return FlowPage(
        flow=flow,
        waiting=engine.explain(flow.id),
        deployments=[(d, reached[d.id]) for d in flow.deployments],
        current_id=current.id if current is not None and not flow.state.finished else None,
        steps=_steps(flow, entries),
        deliveries=_deliveries(records[-MAX_DELIVERIES:]),
        older_deliveries=max(0, len(records) - MAX_DELIVERIES),
        diagrams=_diagrams(flow, current),
        finished=flow.state.finished,
        gate=gate_of(engine, flow, current, viewer) if current is not None else None,
    )
