"""One trigger's unit of work: every flow it touches, in their latest versions.

Entities are immutable, so a trigger never changes what it loaded: the machines
move a ``Draft`` of an entity and publish the result as the entity's next version
on the ``FlowDraft`` of its flow. A ``Work`` holds the ``FlowDraft`` of every flow
the trigger opened (a trigger may change any deployment and promotion of its flow,
and more than one flow), the hook events caused so far, in order, and the failures
waiting for their failure strategy. The engine saves every changed flow and the
HookRequests of those events in one commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from flowfsm.lanes import IN_LINE, LaneBook
from flowfsm.model import (
    FINISHED,
    ActionRef,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HookEvent,
    Pause,
    Promotion,
    PromotionResult,
    PromotionState,
    Rollback,
    Service,
    Timer,
    TimerKind,
    _make_deployment,
    _make_flow,
    _make_promotion,
    timer_id,
)

if TYPE_CHECKING:
    from flowfsm.machines import FailureKind, Guard, Rule

__all__ = ["FLOWFSM", "STEERING_EVENTS", "Draft", "FlowDraft", "Note", "PendingFailure", "RecordedEvent", "Work"]

FLOWFSM: Final = "flowfsm"
"""The actor of what flowfsm does itself: a failure policy's moves, a timer."""

_SUCCESS = DeploymentState.SUCCESS
_PAUSED = FlowState.PAUSED
_PENDING = PromotionState.PENDING
_FREEZE = TimerKind.FREEZE

STEERING_EVENTS: Final = frozenset(
    {
        HookEvent.FLOW_PAUSED,
        HookEvent.FLOW_RESUMED,
        HookEvent.FLOW_ABORTED,
        HookEvent.PROMOTION_RETRIED,
        HookEvent.PROMOTION_SKIPPED,
        HookEvent.DEPLOYMENT_RETRIED,
        HookEvent.ROLLBACK_REQUESTED,
        HookEvent.FLOW_SUPERSEDED,
        # approvals (SPEC §11): who approved, rejected, or ended the flow that asked; flowfsm for an expiry
        HookEvent.APPROVAL_GRANTED,
        HookEvent.APPROVAL_REJECTED,
        HookEvent.APPROVAL_EXPIRED,
        HookEvent.APPROVAL_CANCELLED,
        HookEvent.FREEZE_OVERRIDDEN,
    }
)
"""Events whose payloads say who acted and why (``SteeringPayload``)."""


class Note:
    """Who caused a steering event and why, as it was recorded, and the promotion it is about."""

    __slots__ = ("actor", "promotion_id", "reason")

    def __init__(self, actor: str | None, reason: str | None, promotion_id: str | None) -> None:
        self.actor = actor
        self.reason = reason
        self.promotion_id = promotion_id


_NO_TIMERS: dict[str, Timer] = {}
_NO_CHANGES: dict[str, Timer | None] = {}
# Shared by every unwatched Work, and never written: timers are set and cancelled
# only in a watched one (``Work.clock`` runs only once ``now`` is set).

RecordedEvent = tuple[
    HookEvent, "FlowDraft", Deployment, PromotionResult | Note | None, tuple[tuple[str, ActionRef], ...]
]
"""(event, its flow, the deployment version of its moment, the promotion result it
reports (a steering event: its ``Note``), its (webhook id, action) subscribers)."""

PendingFailure = tuple["FailureKind", "FlowDraft", int, str]
"""(what failed, its flow, the position of its deployment, the id of what failed)."""

Move = tuple[
    str, str, "FlowState | DeploymentState | PromotionState | None", "FlowState | DeploymentState | PromotionState"
]
"""One state change, as published: (entity, id, from, to); ``from`` None for a new entity."""


class Work:
    """What one trigger has done so far; ``open`` adds a flow to it."""

    __slots__ = (
        "actor",
        "events",
        "failures",
        "flows",
        "lanes",
        "now",
        "pending",
        "reason",
        "result",
        "subject",
        "timed_out",
        "timers",
    )

    def __init__(
        self, *, result: PromotionResult | None = None, reason: str | None = None, actor: str | None = None
    ) -> None:
        self.flows: dict[str, FlowDraft] = {}
        self.events: list[RecordedEvent] = []
        self.failures: list[PendingFailure] = []
        """Failures the machines declared, waiting for their failure strategy."""
        self.result = result
        """The promotion result the trigger reports, carried by promotion events."""
        self.reason = reason
        """Why, as the trigger says (a reported failure's reason)."""
        self.actor = actor
        """Who, as the trigger says (``flowfsm`` while a failure policy acts)."""
        self.subject: str | None = None
        """The promotion a steering trigger is about, for its events' payloads."""
        self.timed_out = False
        """A timer's timeout caused this work: its events say ``timeout``."""
        # Time, given only to the work of a flow whose pipeline has timeouts or a soak
        # (``watch``): the others share the empty mappings below and never write them.
        self.now: dt.datetime | None = None
        """The time of the trigger."""
        self.pending: dict[str, Timer] = _NO_TIMERS
        """The timers of the watched flows as stored, by id."""
        self.timers: dict[str, Timer | None] = _NO_CHANGES
        """The timers this work sets (a ``Timer``) or cancels (None), by id."""
        self.lanes: LaneBook | None = None
        """The lanes it reads, given by the engine to the work of a queued service (SPEC §11)."""

    def watch(self, now: dt.datetime, timers: Iterable[Timer]) -> None:
        """Give the work the time and the stored timers of its flows, for the
        machines' timed rules and guards."""
        self.now = now
        if self.pending is _NO_TIMERS:
            self.pending, self.timers = {}, {}
        self.pending.update((t.id, t) for t in timers)

    def timer(self, timer_id: str) -> Timer | None:
        """The timer ``timer_id`` as this work leaves it (set, cancelled: None, or as stored)."""
        timers = self.timers
        return timers[timer_id] if timer_id in timers else self.pending.get(timer_id)

    def clock(self, rule: Rule, flow: FlowDraft, index: int) -> None:
        """Cancel, then set, the timers ``rule`` names for the flow's deployment
        ``index`` (each set only if its environment gives its duration)."""
        now = self.now
        if now is None:  # an untimed pipeline
            return
        deployment = flow.deployments[index]
        for kind in rule.cancels:
            self.timers[timer_id(deployment.id, kind)] = None
        environment = flow.service.pipeline.environment(deployment.environment)
        if environment is None:  # the catalog changed since the flow began
            return
        for kind in rule.timers:
            if kind is _FREEZE:  # due when the freeze holding the deployment ends, not after a duration
                freeze = flow.service.freeze(deployment.environment, now)
                if freeze is not None:
                    self.timers[timer_id(deployment.id, kind)] = Timer(flow.id, deployment.id, kind, freeze.until)
                continue
            duration = environment.timer(kind)
            if duration is None or (
                kind in rule.shares and _shared(self.timer(timer_id(deployment.id, kind)), deployment)
            ):
                continue
            timer = Timer(flow.id, deployment.id, kind, now + duration)
            self.timers[timer.id] = timer

    def timer_changes(self) -> tuple[tuple[Timer, ...], tuple[str, ...]]:
        """(the timers to set, the ids of those to cancel), for the commit; nothing
        is set for a flow this work finished (its timers all go)."""
        finished = {draft.id for draft in self.flows.values() if draft.state in FINISHED}
        timers = tuple(t for t in self.timers.values() if t is not None and t.flow_id not in finished)
        return timers, tuple(i for i, t in self.timers.items() if t is None)

    def open(self, flow: Flow, service: Service) -> FlowDraft:
        """The flow's draft in this unit of work (the same one if opened before)."""
        draft = self.flows.get(flow.id)
        if draft is None:
            draft = self.flows[flow.id] = FlowDraft(self, flow, service)
        return draft

    def close(self) -> None:
        """Let go of the flows and events: each ``FlowDraft`` refers to its ``Work``,
        so an open one is a reference cycle, left to the garbage collector. The engine
        closes a unit of work once it has its outcome. Its lanes refer to it too."""
        self.flows = {}
        self.events = []
        self.lanes = None

    def changed(self) -> list[FlowDraft]:
        """The flows whose state, deployments or promotions this work changed."""
        return [draft for draft in self.flows.values() if draft.changed]

    def record(self, event: HookEvent, flow: FlowDraft, index: int) -> None:
        """Record a hook event about the flow's deployment ``index`` as it is now,
        if some webhook subscribes to it."""
        if subscribers := flow.service.subscribers(event):
            note = Note(self.actor, self.reason, self.subject) if event in STEERING_EVENTS else self.result
            self.events.append((event, flow, flow.deployments[index], note, subscribers))


def _shared(timer: Timer | None, deployment: Deployment) -> bool:
    """The deployment's timer is set and another of its promotions waits on it (the
    one that moved is pending too): it stands, as ``Rule.shares`` says."""
    return timer is not None and sum(p.state is _PENDING for p in deployment.promotions) > 1


class FlowDraft:
    """One flow of a unit of work: its latest state and deployments."""

    __slots__ = (
        "changed",
        "deployments",
        "loaded",
        "moves",
        "pause",
        "released",
        "rollback",
        "service",
        "state",
        "work",
    )

    def __init__(self, work: Work, flow: Flow, service: Service) -> None:
        self.work = work
        self.loaded = flow
        self.service = service
        self.state = flow.state
        self.deployments = list(flow.deployments)
        self.changed = False
        self.moves: list[Move] = []
        """Each state change published, in order: what the flow's history records."""
        self.pause = flow.pause
        self.rollback = flow.rollback
        self.released = False
        """The flow just left a pause that held an announcement (see ``hold``)."""

    @property
    def id(self) -> str:
        return self.loaded.id

    def index(self, deployment_id: str) -> int | None:
        """The position of the deployment ``deployment_id`` in the flow, or None."""
        for i, deployment in enumerate(self.deployments):
            if deployment.id == deployment_id:
                return i
        return None

    def current(self) -> int | None:
        """The position of the first deployment, in pipeline order, that has not succeeded."""
        for i, deployment in enumerate(self.deployments):
            if deployment.state is not _SUCCESS:
                return i
        return None

    def flow(self, *, version: int | None = None, updated_at: dt.datetime | None = None) -> Flow:
        """The flow as this work has changed it so far, with what is given changed too."""
        flow = self.loaded
        return _make_flow(
            flow.id,
            flow.artifact,
            flow.service_id,
            tuple(self.deployments),
            self.state,
            flow.version if version is None else version,
            flow.created_at,
            flow.updated_at if updated_at is None else updated_at,
            self.pause,
            self.rollback,
            flow.author,
        )

    # --- drafts of the flow and its parts -----------------------------------------

    def draft(self, index: int) -> Draft:
        """A draft of the flow itself, for its machine, acting for its deployment
        ``index``: flow events (``flow-failed``, ``flow-succeeded``) describe that
        deployment, as the one that ended the flow. Its entity is the flow as loaded
        (the machine reads and moves the draft's ``state``, the flow's latest): a new
        version of the whole flow for each follow-up would cost more than the rule."""
        draft = Draft(self.loaded, self, index)
        draft.state = self.state
        return draft

    def deployment(self, index: int) -> Draft:
        return Draft(self.deployments[index], self, index)

    def promotion(self, index: int, promotion_id: str) -> Draft | None:
        for promotion in self.deployments[index].promotions:
            if promotion.id == promotion_id:
                return Draft(promotion, self, index)
        return None

    # --- publishing drafts: each makes the entity's next version --------------------

    def publish_flow(self, draft: Draft) -> None:
        state = draft.state
        if state is not _PAUSED and self.pause is not None:  # leaving a pause: it ends, with what it held
            self.released = self.pause.held
            self.pause = None
        if state is not self.state:
            self.moves.append(("flow", self.loaded.id, self.state, state))
        self.state = state
        self.changed = True

    def publish_deployment(self, draft: Draft, again: bool = False) -> None:
        """The deployment's next version (``again``: its next attempt, its promotions
        pending again, each at its next attempt too, and its approvals cleared: each
        attempt is approved anew)."""
        d: Deployment = draft.entity
        promotions, attempt, approvals = d.promotions, d.attempt, d.approvals
        moves, was = self.moves, self.deployments[draft.index].state
        if draft.state is not was:
            moves.append(("deployment", d.id, was, draft.state))
            if draft.state in IN_LINE and self.work.lanes is not None:  # newest-wins acts on it
                self.work.lanes.started_waiting.append((self, draft.index))
        if again:
            moves += [("promotion", p.id, p.state, _PENDING) for p in promotions if p.state is not _PENDING]
            promotions = tuple([_make_promotion(p.id, p.name, _PENDING, p.attempt + 1) for p in promotions])
            attempt += 1
            approvals = ()
        override = d.override if not again else None  # an override lets one attempt through a freeze
        self.deployments[draft.index] = _make_deployment(
            d.id, d.environment, promotions, draft.state, attempt, approvals, override
        )
        self.changed = True

    def approved_by(self, index: int, actor: str) -> Draft:
        """Record ``actor``'s approval on the deployment ``index`` (before its
        ``approve`` rule, whose guard counts it); a draft of the new version."""
        d = self.deployments[index]
        self.deployments[index] = _make_deployment(
            d.id, d.environment, d.promotions, d.state, d.attempt, (*d.approvals, actor), d.override
        )
        self.changed = True
        return self.deployment(index)

    def let_through(self, draft: Draft, actor: str) -> None:
        """``actor`` lets the deployment (``draft``) through a freeze window: recorded
        on it before it is announced again, for the gates to read."""
        d: Deployment = draft.entity
        draft.entity = _make_deployment(d.id, d.environment, d.promotions, d.state, d.attempt, d.approvals, actor)
        self.deployments[draft.index] = draft.entity
        self.changed = True

    def publish_promotion(self, draft: Draft, again: bool = False) -> None:
        promotion: Promotion = draft.entity
        attempt = promotion.attempt + 1 if again else promotion.attempt
        if draft.state is not promotion.state:
            self.moves.append(("promotion", promotion.id, promotion.state, draft.state))
        published = _make_promotion(promotion.id, promotion.name, draft.state, attempt)
        d = self.deployments[draft.index]
        promotions = tuple([published if p.id == promotion.id else p for p in d.promotions])
        self.deployments[draft.index] = _make_deployment(
            d.id, d.environment, promotions, d.state, d.attempt, d.approvals, d.override
        )
        self.changed = True

    # --- pauses -----------------------------------------------------------------------

    def paused_by(self, actor: str, reason: str | None, failed: str | None = None) -> None:
        """Record why the (now paused) flow is paused; a policy's pause adds the
        failed item it waits on to those of an earlier pause, and leaves a person's
        pause theirs: only ``ResumeFlow`` lifts it (see ``settled``)."""
        pause = self.pause
        held = pause is not None and pause.held
        waiting = pause.failed if pause is not None else ()
        if failed is not None:
            waiting = (*waiting, failed)
            if pause is not None and pause.actor != FLOWFSM:  # a person paused it first
                actor, reason = pause.actor, pause.reason
        self.pause = Pause(actor, reason, waiting, held)
        self.changed = True

    def hold(self) -> None:
        """A paused flow holds its next announcement until it resumes."""
        pause = self.pause
        if pause is None:  # paused within this trigger, its cause not yet recorded
            self.pause = Pause(FLOWFSM, None, (), True)
        elif not pause.held:
            self.pause = Pause(pause.actor, pause.reason, pause.failed, True)
        self.changed = True

    def settled(self, item_id: str) -> bool:
        """The failed item ``item_id`` was retried or skipped: True if the flow's
        policy pause waited on it and now on nothing more (the flow may resume). A
        pause a person made stands: it waits on nothing more, for ``ResumeFlow``."""
        pause = self.pause
        if pause is None or item_id not in pause.failed:
            return False
        left = tuple(i for i in pause.failed if i != item_id)
        self.pause = Pause(pause.actor, pause.reason, left, pause.held)
        self.changed = True
        return not left and pause.actor == FLOWFSM

    def rolled_back(self, rollback: Rollback) -> None:
        self.rollback = rollback
        self.changed = True


class Draft:
    """An entity while a machine moves it: ``transitions`` sets ``state`` here.

    ``flow`` is the entity's flow in the unit of work and ``index`` the position of
    its deployment (for a flow: the deployment the work acts on); guards read them.
    ``refused`` is the guard that refused the last trigger, for the error's reason.
    """

    __slots__ = ("entity", "flow", "index", "refused", "state")

    def __init__(self, entity: Flow | Deployment | Promotion, flow: FlowDraft, index: int) -> None:
        self.entity: Any = entity
        self.state: Any = entity.state
        self.flow = flow
        self.index = index
        self.refused: Guard | None = None

    @property
    def deployment(self) -> Deployment:
        """The latest version of the deployment the entity belongs to (or is)."""
        return self.flow.deployments[self.index]
