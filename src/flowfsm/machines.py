"""The rules of flows, deployments and promotions: one declaration per machine.

Each machine is declared once, below, as a list of ``Rule``s. A rule is one
transition: its trigger, source and destination states, its guards (each with the
reason it gives when it refuses and its label in the diagrams), the hook events it
causes (none, one or several), the follow-ups it tries next, whether it is a
failure for the failure strategy, and how a repeat of it is recognised (a
duplicate) or contradicted. Adding a state or a transition is an edit of these
declarations (and their tests); the engine asks the machines and keeps no rules of
its own.

From each declaration a ``transitions`` machine is built once, at import, and
holds no models: ``fire`` applies one of its events to a ``Draft`` of an entity
(see ``flowfsm.work``) through the shared ``Event.trigger(draft)``. The guards are
the machine's ``conditions``; one ``after`` callback per rule publishes the draft
as the entity's next version, records the rule's hook events, hands a failure to
the unit of work, and tries the rule's follow-ups. A refused trigger leaves everything
as it was, and the guard that refused it names the reason. Follow-ups, refused more
often than not, first ask ``may``, which reads the same declaration; a property test
holds its answer to firing's, for every machine, state and trigger.

The machines are ``CallablesMachine``s: ``transitions``' own ``Machine``,
customised through its extension points (``state_cls``, ``transition_cls``,
``condition_cls``, ``callbacks``, ``get_state``) to call each callback as it is,
without resolving it by name or logging a line for it, to name each state once, and
to find a state by its enum member without spelling it. Same
transitions, same callbacks in the same order (a property test holds it to
``Machine``); an event costs about a third less. Diagrams are drawn from the
declarations by ``flowfsm.diagrams``.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Final, cast

import attrs
from transitions import EventData, Machine, MachineError
from transitions.core import Condition, State, Transition

from flowfsm.errors import InvalidTransition
from flowfsm.model import (
    Concurrency,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HookEvent,
    Promotion,
    PromotionState,
    TimerKind,
    timer_id,
)
from flowfsm.work import Draft, FlowDraft

__all__ = [
    "ADMISSION",
    "DECLARATIONS",
    "DEPLOYMENT",
    "FLOW",
    "MACHINES",
    "PROMOTION",
    "CallablesMachine",
    "Declaration",
    "FailureKind",
    "Guard",
    "Held",
    "Next",
    "Rule",
    "Withdrawn",
    "admit",
    "apply",
    "attempt",
    "created",
    "fire",
    "may",
]


class FailureKind(enum.StrEnum):
    """What failed, as the failure strategy is told (SPEC §8: any of these)."""

    PROMOTION = "promotion"
    DEPLOYMENT = "deployment"
    APPROVAL = "approval"
    TIMEOUT = "timeout"


# --- the vocabulary of the declarations -----------------------------------------------


@attrs.frozen
class Guard:
    """A condition of a transition: ``test`` reads the draft; ``reason`` says why it
    refuses (``InvalidTransition.reason``); ``label`` names it in the diagrams."""

    test: Callable[[Draft], bool]
    reason: str
    label: str


@attrs.frozen
class Next:
    """The flow's next deployment (its current one, the first in pipeline order that
    has not succeeded), if there is one, is announced: ``admit`` passes it through
    its gates (SPEC §11, ``ADMISSION``), which record ``event``
    (``deployment-created``) or the gate it waits at."""

    event: HookEvent


@attrs.frozen
class Held(Next):
    """A hook event about the flow's next deployment that a pause held back,
    recorded only if the pause the flow just left held one (see ``FlowDraft.hold``)."""


@attrs.frozen
class Withdrawn:
    """A hook event about the flow's deployment awaiting approval, recorded only if
    one does: the flow ends, and the approval request it made is withdrawn."""

    event: HookEvent


WITHDRAWN: Final = Withdrawn(HookEvent.APPROVAL_CANCELLED)
"""The last event of every rule that ends a flow short of success (fail, abort,
supersede): an approval request still open is cancelled (``approval-cancelled``)."""


Effect = HookEvent | Next | Withdrawn
"""A hook event a rule causes: about its own deployment (a ``HookEvent``; a flow's
events describe the deployment that ended it), or about the next one (``Next``;
while the flow is paused, held for the resume: ``Held``), or about an approval
request the flow's end withdraws (``Withdrawn``)."""

Test = Callable[[Draft], bool]


def always(_: Draft) -> bool:
    """A repeat recognised by the state alone."""
    return True


@attrs.frozen
class Rule:
    """One transition of one machine, with everything that follows from it."""

    trigger: str
    source: enum.Enum
    dest: enum.Enum
    guards: tuple[Guard, ...] = ()
    events: tuple[Effect, ...] = ()
    """The hook events the transition causes, recorded in this order."""
    then: tuple[tuple[str, str], ...] = ()
    """Follow-ups: (``"deployment"`` or ``"flow"``, trigger) of the entity's own
    deployment or flow, each fired if its guards allow, in order."""
    failure: FailureKind | None = None
    """The transition is a failure: the unit of work hands it to the failure strategy."""
    repeats: Mapping[enum.Enum, Test] = attrs.field(factory=dict)
    """The trigger is a duplicate of this transition when the entity is in one of
    these states and the test holds (``always``: the state says it)."""
    contradicts: Mapping[enum.Enum, str] = attrs.field(factory=dict)
    """States where the trigger contradicts what is recorded, and the reason given."""
    cancels: tuple[TimerKind, ...] = ()
    """Timers of the deployment the transition cancels (before it sets ``timers``)."""
    timers: tuple[TimerKind, ...] = ()
    """Timers of the deployment the transition sets, each if its environment gives
    the duration (``Environment.timer``); a due timer sends ``TimerFired``."""
    shares: tuple[TimerKind, ...] = ()
    """Timers of ``timers`` that stand as set while another promotion of the
    deployment is pending: a deadline it shares is never moved later."""
    again: bool = False
    """The transition begins the entity's next attempt (``attempt`` + 1; a
    deployment's promotions begin theirs, pending again)."""


@attrs.frozen
class Declaration:
    """One machine: the entity it moves, its states, and its rules."""

    entity: str
    states: type[enum.Enum]
    initial: enum.Enum
    rules: tuple[Rule, ...]
    publish: Callable[..., None]
    """``FlowDraft.publish_*``: (flow, draft), and ``again=True`` for a rule's next attempt."""
    created: tuple[Effect, ...] = ()
    """The hook events the entity's creation causes."""


# --- guards: each reads the draft -------------------------------------------------------


_PAUSED: Final = FlowState.PAUSED
_AWAITING_APPROVAL: Final = DeploymentState.AWAITING_APPROVAL


_OPEN: Final = frozenset({FlowState.IN_PROGRESS, FlowState.PAUSED})


def _flow_open(draft: Draft) -> bool:
    return draft.flow.state in _OPEN


def _flow_not_paused(draft: Draft) -> bool:
    return draft.flow.state is not _PAUSED


def _not_held_by_policy(draft: Draft) -> bool:
    pause = draft.flow.pause
    return pause is None or not pause.failed


def _deployment_not_failed(draft: Draft) -> bool:
    return draft.deployment.state is not DeploymentState.FAILED


def _is_current(draft: Draft) -> bool:
    return draft.flow.current() == draft.index


def _all_promotions_succeeded(draft: Draft) -> bool:
    for promotion in draft.deployment.promotions:
        state = promotion.state
        if state is not _PASSED and state is not _SKIPPED:  # skipped counts as passed
            return False
    return True


def _deployment_completed(draft: Draft) -> bool:
    return draft.deployment.state is DeploymentState.COMPLETED


def _all_deployments_succeeded(draft: Draft) -> bool:
    return draft.flow.current() is None


def _soaked(draft: Draft) -> bool:
    """The deployment's soak is over: its soak timer is not set, or is due (the time
    is read only for a pipeline with timers; see ``Work.watch``)."""
    work = draft.flow.work
    now = work.now
    if now is None:
        return True
    timer = work.timer(timer_id(draft.entity.id, TimerKind.SOAK))
    return timer is None or timer.due <= now


def _needs_approval(draft: Draft) -> bool:
    """The deployment's environment requires more approvals than it has."""
    deployment = draft.deployment
    environment = draft.flow.service.pipeline.environment(deployment.environment)
    policy = environment.approvals if environment is not None else None
    return policy is not None and len(deployment.approvals) < policy.required


def _frozen(draft: Draft) -> bool:
    """A freeze window covers the deployment's environment now, and no one let it
    through (the time is read for a service a window covers; see ``Service.timed``)."""
    deployment, flow = draft.deployment, draft.flow
    now = flow.work.now
    if now is None or deployment.override is not None or not flow.service.freezes:
        return False
    return flow.service.freeze(deployment.environment, now) is not None


def _overridden(draft: Draft) -> bool:
    """Someone let the deployment through a freeze (an override repeated: a duplicate)."""
    return draft.deployment.override is not None


def _lane_taken(draft: Draft) -> bool:
    """Its service runs one flow at a time in the environment (``queue``,
    ``newest-wins``), and another flow occupies it there or waits for it ahead of
    this one (``flowfsm.lanes``: arrival order, no flow jumps the line)."""
    flow = draft.flow
    book = flow.work.lanes
    if book is None or flow.service.concurrency is Concurrency.PARALLEL:
        return False  # the engine gives every work of a queued service its lanes
    service_id, environment = flow.service.id, draft.deployment.environment
    return book.occupant(service_id, environment, other_than=flow.id) is not None or book.ahead(flow, draft.index)


_PASSED: Final = PromotionState.SUCCESS
_SKIPPED: Final = PromotionState.SKIPPED

FLOW_OPEN: Final = Guard(_flow_open, "the flow is finished", "flow not finished")
"""Every transition's first guard: nothing moves a finished flow (one ``inProgress``
or ``paused`` is not finished)."""
NOT_PAUSED: Final = Guard(_flow_not_paused, "the flow is paused", "flow not paused")
"""Nothing new begins while the flow is paused."""
NOT_HELD_BY_POLICY: Final = Guard(
    _not_held_by_policy,
    "its failure policy waits on a failed item: retry or skip the failed item first, or abort the flow",
    "not paused by a failure policy",
)
DEPLOYMENT_NOT_FAILED: Final = Guard(
    _deployment_not_failed, "its deployment failed: retry the deployment", "deployment not failed"
)
IS_CURRENT: Final = Guard(_is_current, "it is not the flow's current deployment", "current deployment")
ALL_PROMOTIONS_SUCCEEDED: Final = Guard(
    _all_promotions_succeeded, "not every promotion has succeeded", "all promotions success"
)
DEPLOYMENT_COMPLETED: Final = Guard(_deployment_completed, "its deployment has not completed", "deployment completed")
ALL_DEPLOYMENTS_SUCCEEDED: Final = Guard(
    _all_deployments_succeeded, "not every deployment has succeeded", "all deployments success"
)
SOAKED: Final = Guard(_soaked, "its soak time has not passed", "soaked")
NEEDS_APPROVAL: Final = Guard(_needs_approval, "it has every approval it needs", "needs approval")
FROZEN: Final = Guard(_frozen, "no freeze window covers its environment", "frozen")
LANE_TAKEN: Final = Guard(_lane_taken, "its environment is free", "environment occupied")


# --- tests of repeats -------------------------------------------------------------------


def _completed_before_failing(draft: Draft) -> bool:
    """A failed deployment had completed if a promotion of it failed: it fails from
    ``started`` (the CD system says so) with none failed (pending, or skipped by a
    person), and from ``completed`` only once a promotion has failed."""
    return any(p.state is PromotionState.FAILED for p in draft.entity.promotions)


def _failed_before_completing(draft: Draft) -> bool:
    return not _completed_before_failing(draft)


def _retried(draft: Draft) -> bool:
    """A retry arriving again: the entity is at a later attempt already."""
    return bool(draft.entity.attempt > 1)


# --- the declarations -------------------------------------------------------------------

_F, _D, _P, _E = FlowState, DeploymentState, PromotionState, HookEvent
_T = TimerKind
_EVERY_TIMER: Final = (_T.DEPLOY, _T.VERIFY, _T.SOAK)

_GATES: Final = (_D.AWAITING_APPROVAL, _D.HELD, _D.QUEUED)
_AT_A_GATE_RETRIED: Final[Mapping[enum.Enum, Test]] = dict.fromkeys(_GATES, _retried)
"""A deployment retried and now waiting at a gate: an earlier report delivered again repeats."""

_ENDED: Final[Mapping[enum.Enum, str]] = {
    _F.SUCCESS: "it already succeeded",
    _F.FAILED: "it already failed",
    _F.SUPERSEDED: "a newer flow superseded it",
}

FLOW: Final = Declaration(
    "flow",
    FlowState,
    _F.IN_PROGRESS,
    (
        Rule("succeed", _F.IN_PROGRESS, _F.SUCCESS, (ALL_DEPLOYMENTS_SUCCEEDED,), (_E.FLOW_SUCCEEDED,)),
        Rule("fail", _F.IN_PROGRESS, _F.FAILED, (), (_E.FLOW_FAILED, WITHDRAWN)),
        Rule("fail", _F.PAUSED, _F.FAILED, (), (_E.FLOW_FAILED, WITHDRAWN)),
        # A person steers (PauseFlow, ResumeFlow, AbortFlow):
        Rule("pause", _F.IN_PROGRESS, _F.PAUSED, (), (_E.FLOW_PAUSED,), repeats={_F.PAUSED: always}),
        Rule(
            "resume",
            _F.PAUSED,
            _F.IN_PROGRESS,
            (NOT_HELD_BY_POLICY,),
            (_E.FLOW_RESUMED, Held(_E.DEPLOYMENT_CREATED)),
            then=(("flow", "succeed"),),
            # Not paused: nothing to resume, whatever the flow did since (a resume, redelivered).
            repeats=dict.fromkeys((_F.IN_PROGRESS, _F.SUCCESS, _F.FAILED, _F.ABORTED, _F.SUPERSEDED), always),
        ),
        Rule(
            "abort",
            _F.IN_PROGRESS,
            _F.ABORTED,
            (),
            (_E.FLOW_ABORTED, WITHDRAWN),
            repeats={_F.ABORTED: always},
            contradicts=_ENDED,
        ),
        Rule("abort", _F.PAUSED, _F.ABORTED, (), (_E.FLOW_ABORTED, WITHDRAWN)),
        # Environment concurrency (SPEC §11): a newer flow of a newest-wins service ends it (the engine decides).
        Rule("supersede", _F.IN_PROGRESS, _F.SUPERSEDED, (), (_E.FLOW_SUPERSEDED, WITHDRAWN)),
        Rule("supersede", _F.PAUSED, _F.SUPERSEDED, (), (_E.FLOW_SUPERSEDED, WITHDRAWN)),
        # A failure policy's moves: PAUSE holds the flow; retrying or skipping what failed releases it.
        Rule("hold", _F.IN_PROGRESS, _F.PAUSED, (), (_E.FLOW_PAUSED,)),
        Rule("hold", _F.PAUSED, _F.PAUSED),  # paused already: one pause, one flow-paused
        Rule(
            "release",
            _F.PAUSED,
            _F.IN_PROGRESS,
            (),
            (_E.FLOW_RESUMED, Held(_E.DEPLOYMENT_CREATED)),
            then=(("flow", "succeed"),),
        ),
    ),
    FlowDraft.publish_flow,
    created=(Next(_E.DEPLOYMENT_CREATED),),
)

DEPLOYMENT: Final = Declaration(
    "deployment",
    DeploymentState,
    _D.NOT_STARTED,
    (
        # Its gates (SPEC §11), when the deployment is announced (``Next``): the first of
        # these rules whose guards pass is taken, in this order (``ADMISSION``); if none
        # does, nothing holds it, and the announcement's event is recorded (``admit``).
        Rule(
            "request_approval",
            _D.NOT_STARTED,
            _D.AWAITING_APPROVAL,
            (NEEDS_APPROVAL,),
            (_E.APPROVAL_REQUESTED,),
            timers=(_T.APPROVAL,),  # its expiry, if the policy has one
        ),
        Rule("freeze", _D.NOT_STARTED, _D.HELD, (FROZEN,), (_E.DEPLOYMENT_HELD,), timers=(_T.FREEZE,)),
        Rule("enqueue", _D.NOT_STARTED, _D.QUEUED, (LANE_TAKEN,), (_E.DEPLOYMENT_QUEUED,)),
        # Approvals (SPEC §11). ApprovalGranted records the approval first (the engine
        # authorizes it; ``FlowDraft.approved_by``); the last one needed opens the gate,
        # and the deployment is announced again, through the gates that follow.
        # Given while the flow is paused, it is recorded; the announcement waits for the resume.
        Rule("approve", _D.AWAITING_APPROVAL, _D.AWAITING_APPROVAL, (NEEDS_APPROVAL,), (_E.APPROVAL_GRANTED,)),
        Rule(
            "approve",
            _D.AWAITING_APPROVAL,
            _D.NOT_STARTED,
            (),
            (_E.APPROVAL_GRANTED, Next(_E.DEPLOYMENT_CREATED)),
            cancels=(_T.APPROVAL,),
        ),
        # ApprovalRejected, and the request's expiry: failures for the failure policy.
        Rule(
            "reject",
            _D.AWAITING_APPROVAL,
            _D.FAILED,
            (),
            (_E.APPROVAL_REJECTED,),
            failure=FailureKind.APPROVAL,
            cancels=(_T.APPROVAL,),
        ),
        Rule(
            "expire",
            _D.AWAITING_APPROVAL,
            _D.FAILED,
            (),
            (_E.APPROVAL_EXPIRED,),
            failure=FailureKind.APPROVAL,
            cancels=(_T.APPROVAL,),
        ),
        # Its environment freed and its turn came (the engine dequeues it): through its gates again.
        Rule("dequeue", _D.QUEUED, _D.NOT_STARTED, (), (Next(_E.DEPLOYMENT_CREATED),)),
        Rule(
            "start",
            _D.NOT_STARTED,
            _D.STARTED,
            (IS_CURRENT, NOT_PAUSED),
            (_E.DEPLOYMENT_STARTED,),
            # Duplicates reach back: a late "started" after any later state says nothing new.
            # At a gate it is refused, retried or not: it may not be a redelivery (an attempt
            # whose approval was refused never started), and a start past a gate must be heard.
            repeats={_D.STARTED: always, _D.COMPLETED: always, _D.SUCCESS: always, _D.FAILED: always},
            contradicts={
                _D.AWAITING_APPROVAL: "it awaits approval",
                _D.HELD: "a freeze window holds it: it is announced when the window ends",
                _D.QUEUED: "it is queued: another flow occupies its environment",
            },
            timers=(_T.DEPLOY,),
        ),
        Rule(
            "complete",
            _D.STARTED,
            _D.COMPLETED,
            (),
            (_E.DEPLOYMENT_COMPLETED,),
            then=(("deployment", "succeed"),),
            repeats={_D.COMPLETED: always, _D.SUCCESS: always, _D.FAILED: _completed_before_failing},
            contradicts={_D.FAILED: "the CD system reported it failed"},
            cancels=(_T.DEPLOY,),
            timers=(_T.VERIFY, _T.SOAK),
        ),
        Rule(
            "fail",  # the CD system reports the deployment failed
            _D.STARTED,
            _D.FAILED,
            (),
            (_E.DEPLOYMENT_FAILED,),
            failure=FailureKind.DEPLOYMENT,
            # Not started since a retry (announced, or waiting at a gate): a failure reported
            # before the retry, delivered again.
            repeats={_D.FAILED: _failed_before_completing, _D.NOT_STARTED: _retried, **_AT_A_GATE_RETRIED},
            contradicts={
                _D.COMPLETED: "it already completed",
                _D.SUCCESS: "it already completed",
                _D.FAILED: "it completed, then failed its promotions",
            },
            cancels=_EVERY_TIMER,
        ),
        Rule(
            "time_out",  # its deploy timeout passed before it completed
            _D.STARTED,
            _D.FAILED,
            (),
            (_E.DEPLOYMENT_FAILED,),
            failure=FailureKind.TIMEOUT,
            repeats={_D.COMPLETED: always, _D.SUCCESS: always, _D.FAILED: always},
            cancels=_EVERY_TIMER,
        ),
        Rule(
            "succeed",
            _D.COMPLETED,
            _D.SUCCESS,
            (ALL_PROMOTIONS_SUCCEEDED, SOAKED),
            (_E.DEPLOYMENT_SUCCEEDED, Next(_E.DEPLOYMENT_CREATED)),
            then=(("flow", "succeed"),),
            cancels=(_T.VERIFY, _T.SOAK),
        ),
        # A freeze ends (its timer), or a person lets the deployment through (OverrideFreeze):
        # announced again, through the gates after the freeze.
        # (The fired timer is cancelled by its firing: the admission may set it again.)
        Rule("thaw", _D.HELD, _D.NOT_STARTED, (), (Next(_E.DEPLOYMENT_CREATED),)),
        Rule(
            "override_freeze",
            _D.HELD,
            _D.NOT_STARTED,
            (),
            (_E.FREEZE_OVERRIDDEN, Next(_E.DEPLOYMENT_CREATED)),
            # Let through already (this attempt): the override, delivered again. Else nothing holds it.
            repeats=dict.fromkeys((s for s in _D if s is not _D.HELD), _overridden),
            contradicts=dict.fromkeys((s for s in _D if s is not _D.HELD), "no freeze window holds it"),
            cancels=(_T.FREEZE,),
        ),
        # A failure strategy's move:
        Rule("reject", _D.COMPLETED, _D.FAILED, (), (_E.DEPLOYMENT_FAILED,), cancels=_EVERY_TIMER),
        # RetryDeployment, or RETRY's move: the next attempt, announced again (held while paused).
        Rule(
            "retry",
            _D.FAILED,
            _D.NOT_STARTED,
            (),
            (_E.DEPLOYMENT_RETRIED, Next(_E.DEPLOYMENT_CREATED)),
            repeats={
                _D.NOT_STARTED: _retried,
                _D.STARTED: _retried,
                _D.COMPLETED: _retried,
                _D.SUCCESS: _retried,
                **_AT_A_GATE_RETRIED,  # the retry, waiting at a gate
            },
            contradicts={
                _D.NOT_STARTED: "it has not failed",
                _D.STARTED: "it has not failed",
                _D.COMPLETED: "it has not failed",
                _D.SUCCESS: "it already succeeded",
            },
            again=True,
        ),
    ),
    FlowDraft.publish_deployment,
)

PROMOTION: Final = Declaration(
    "promotion",
    PromotionState,
    _P.PENDING,
    (
        Rule(
            "succeed",
            _P.PENDING,
            _P.SUCCESS,
            (DEPLOYMENT_COMPLETED,),
            (_E.PROMOTION_COMPLETED,),
            then=(("deployment", "succeed"),),
            repeats={_P.SUCCESS: always, _P.SKIPPED: always},
            contradicts={_P.FAILED: "it already failed"},
        ),
        Rule(
            "fail",
            _P.PENDING,
            _P.FAILED,
            (DEPLOYMENT_COMPLETED,),
            (_E.PROMOTION_FAILED,),
            failure=FailureKind.PROMOTION,
            repeats={_P.FAILED: always, _P.SKIPPED: always},
            contradicts={_P.SUCCESS: "it already passed"},
        ),
        Rule(
            "time_out",  # its deployment's verify timeout passed while it was pending
            _P.PENDING,
            _P.FAILED,
            (DEPLOYMENT_COMPLETED,),
            (_E.PROMOTION_FAILED,),
            failure=FailureKind.TIMEOUT,
            repeats={_P.SUCCESS: always, _P.FAILED: always, _P.SKIPPED: always},
        ),
        # RetryPromotion, or RETRY's move: the next attempt (stale results of earlier ones are duplicates).
        Rule(
            "retry",
            _P.FAILED,
            _P.PENDING,
            (DEPLOYMENT_COMPLETED,),
            (_E.PROMOTION_RETRIED,),
            repeats={_P.PENDING: _retried, _P.SUCCESS: _retried},
            # The new attempt has its own verify timeout, unless another check waits on the deployment's.
            timers=(_T.VERIFY,),
            shares=(_T.VERIFY,),
            contradicts={
                _P.PENDING: "it has not failed",
                _P.SUCCESS: "it already passed",
                _P.SKIPPED: "it was skipped",
            },
            again=True,
        ),
        # SkipPromotion: a person lets it pass (it counts as passed).
        Rule(
            "skip",
            _P.PENDING,
            _P.SKIPPED,
            (DEPLOYMENT_NOT_FAILED,),
            (_E.PROMOTION_SKIPPED,),
            then=(("deployment", "succeed"),),
            repeats={_P.SKIPPED: always},
            contradicts={_P.SUCCESS: "it already passed"},
        ),
        Rule(
            "skip",
            _P.FAILED,
            _P.SKIPPED,
            (DEPLOYMENT_NOT_FAILED,),
            (_E.PROMOTION_SKIPPED,),
            then=(("deployment", "succeed"),),
        ),
    ),
    FlowDraft.publish_promotion,
)

ADMISSION: Final = ("request_approval", "freeze", "enqueue")
"""The gates of an announcement, in order (SPEC §11; docs/gates.md): a deployment
announced takes the first of these triggers whose guards pass, and is announced
(``deployment-created``) if none does (``admit``)."""

DECLARATIONS: Final[dict[str, Declaration]] = {d.entity: d for d in (FLOW, DEPLOYMENT, PROMOTION)}


# --- CallablesMachine: transitions' Machine, calling callables directly -----------------


class _State(State):
    """Names itself once: ``transitions`` asks a state its name and value several
    times a trigger, as properties, and an enum member's ``name`` is a slow property
    too. Here both are plain attributes, set once (they shadow ``State``'s
    read-only properties)."""

    name: str = ""  # an attribute, where State has a read-only property
    value: str | enum.Enum = ""  # the same

    def __init__(self, name: str | enum.Enum, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self.name = name.name if isinstance(name, enum.Enum) else name
        self.value = name

    def enter(self, event_data: EventData) -> None:
        for callback in self.on_enter:
            callback(event_data)  # type: ignore[operator]  # a CallablesMachine's callbacks are callables

    def exit(self, event_data: EventData) -> None:
        for callback in self.on_exit:
            callback(event_data)  # type: ignore[operator]  # a CallablesMachine's callbacks are callables


class _Condition(Condition):
    def check(self, event_data: EventData) -> bool:
        return self.func(event_data) == self.target  # type: ignore[operator]  # callables only, as above


class _Transition(Transition):
    condition_cls = _Condition


class CallablesMachine(Machine):
    """A ``transitions.Machine`` whose callbacks and conditions are all callables
    taking the ``EventData`` (``send_event=True``): each is called as it is, with no
    lookup by name and no log line of its own."""

    state_cls = _State
    transition_cls = _Transition

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.send_event:
            raise TypeError("a CallablesMachine passes the EventData to its callbacks: send_event=True")
        for callback in _declared_callbacks(self):
            if not callable(callback):
                raise TypeError(f"a CallablesMachine takes callables only, not {callback!r}")
        self._by_member: dict[object, State] = {
            state.value: state
            for state in self.states.values()
            if isinstance(state.value, enum.Enum) and not isinstance(state.value, str)
        }
        """The states named by members of an enum (not a ``str`` enum: its members equal strings)."""

    def callbacks(self, funcs: Iterable[Any], event_data: EventData) -> None:
        for func in funcs:
            func(event_data)

    def get_state(self, state: str | enum.Enum) -> State:
        """The state of that name or enum member. ``transitions`` asks five times an
        event, twice with the model's enum member, whose ``name`` is a slow property:
        members are found by identity, names in ``states``; anything else (a state
        added later, one unknown: ``ValueError``) as ``Machine`` finds it."""
        found = self._by_member.get(state)
        if found is None and type(state) is str:
            found = self.states.get(state)
        return found if found is not None else super().get_state(state)


def _declared_callbacks(machine: Machine) -> Iterator[object]:
    """Every callback and condition a machine was declared with."""
    yield from itertools.chain(
        machine.prepare_event,
        machine.before_state_change,
        machine.after_state_change,
        machine.finalize_event,
        machine.on_exception,
        machine.on_final,
    )
    for state in machine.states.values():
        yield from itertools.chain(state.on_enter, state.on_exit)
    for event in machine.events.values():
        for transitions in event.transitions.values():
            for t in transitions:
                yield from itertools.chain(t.prepare, t.before, t.after, (c.func for c in t.conditions))


# --- building the machines from the declarations ------------------------------------------


def _check(guards: tuple[Guard, ...], event: EventData) -> bool:
    """A rule's guards as one ``transitions`` condition (bound with ``partial``),
    asked in order; the first to refuse names itself on the draft. One condition per
    rule, not one per guard: a guard costs a function call, not a ``transitions``
    condition, so a guard added for a feature few catalogs use costs the others
    next to nothing."""
    draft: Draft = event.model  # type: ignore[assignment]  # the models of flowfsm machines are Drafts
    for guard in guards:
        if not guard.test(draft):
            draft.refused = guard
            return False
    return True


def _after(rule: Rule, publish: Callable[[FlowDraft, Draft], None], clocked: bool, event: EventData) -> None:
    """A rule's ``after`` callback (bound with ``partial``): publish the draft, record
    the rule's events, hand on its failure, set and cancel its timers (``clocked``:
    it has some; only a pipeline with timers gives the work a time), try its
    follow-ups."""
    draft: Draft = event.model  # type: ignore[assignment]  # the models of flowfsm machines are Drafts
    flow = draft.flow
    publish(flow, draft)
    _record(rule.events, flow, draft.index)
    if rule.failure is not None:
        flow.work.failures.append((rule.failure, flow, draft.index, draft.entity.id))
    if clocked and flow.work.now is not None:
        flow.work.clock(rule, flow, draft.index)
    for kind, trigger in rule.then:
        attempt(flow.deployment(draft.index) if kind == "deployment" else flow.draft(draft.index), trigger)


def _record(effects: tuple[Effect, ...], flow: FlowDraft, index: int) -> None:
    record = flow.work.record
    for effect in effects:
        if isinstance(effect, Next):
            if type(effect) is Held:
                if not flow.released:
                    continue
                flow.released = False
            following = flow.current()
            if following is None:
                continue
            if flow.state is _PAUSED:  # nothing new begins: announced when the flow resumes
                flow.hold()
            else:
                admit(flow.deployment(following), effect.event)
        elif isinstance(effect, Withdrawn):
            for i, deployment in enumerate(flow.deployments):
                if deployment.state is _AWAITING_APPROVAL:
                    record(effect.event, flow, i)
        else:
            record(effect, flow, index)


def _build(
    declaration: Declaration,
) -> Machine:  # pragma: no mutate block - runs at import, before mutants
    return CallablesMachine(
        model=None,
        states=declaration.states,
        initial=declaration.initial,
        transitions=[
            {
                "trigger": rule.trigger,
                "source": rule.source,
                "dest": rule.dest,
                "conditions": [partial(_check, (FLOW_OPEN, *rule.guards))],
                "after": [
                    partial(
                        _after,
                        rule,
                        partial(declaration.publish, again=True) if rule.again else declaration.publish,
                        bool(rule.timers or rule.cancels),
                    )
                ],
            }
            for rule in declaration.rules
        ],
        send_event=True,
        auto_transitions=False,
    )


MACHINES: Final[dict[str, Machine]] = {name: _build(d) for name, d in DECLARATIONS.items()}

_KINDS: Final[dict[type, str]] = {Flow: "flow", Deployment: "deployment", Promotion: "promotion"}


def _kind(draft: Draft) -> str:
    return _KINDS[type(draft.entity)]


_EVENTS: Final = {  # (entity class, trigger) -> the shared machine's Event.trigger
    (cls, name): event.trigger for cls, kind in _KINDS.items() for name, event in MACHINES[kind].events.items()
}
_RULES: Final = {  # (entity class, trigger) -> its rules
    (cls, trigger): tuple(r for r in DECLARATIONS[kind].rules if r.trigger == trigger)
    for cls, kind in _KINDS.items()
    for trigger in MACHINES[kind].events
}
_GUARDS: Final = {  # (entity class, trigger) -> (rule, the tests of its guards, in order)
    key: tuple((rule, tuple(g.test for g in (FLOW_OPEN, *rule.guards))) for rule in rules)
    for key, rules in _RULES.items()
}


# --- asking the machines ------------------------------------------------------------------


def fire(draft: Draft, trigger: str) -> None:
    """Apply ``trigger`` to the draft's entity, publishing its next version on the
    draft's flow, or raise ``InvalidTransition`` saying why not (nothing changed)."""
    try:
        applied = _EVENTS[type(draft.entity), trigger](draft)
    except MachineError:
        raise _not_from_here(draft, trigger) from None
    if not applied:  # transitions refuses only when a condition does, which names itself
        raise _invalid(draft, trigger, cast(Guard, draft.refused).reason)


def admit(draft: Draft, event: HookEvent) -> None:
    """Pass an announced deployment through its gates: fire the first trigger of
    ``ADMISSION`` that ``may`` allows; if none does and it is ``notStarted`` in an
    open flow, nothing holds it: record ``event`` (``deployment-created``). Its state
    does not change, so no ``transitions`` event is fired for it. Asked gate by
    gate, so ``transitions`` tries one transition, not every gate's."""
    for trigger in ADMISSION:
        if may(draft, trigger):
            fire(draft, trigger)
            return
    if draft.state is DeploymentState.NOT_STARTED and _flow_open(draft):
        draft.flow.work.record(event, draft.flow, draft.index)


def attempt(draft: Draft, trigger: str) -> None:
    """Fire ``trigger`` if ``may`` says it would apply. For follow-ups, which are
    refused more often than not: asking the guards costs far less than a refused
    ``transitions`` event."""
    if may(draft, trigger):
        fire(draft, trigger)


def may(draft: Draft, trigger: str) -> bool:
    """Whether ``fire`` would apply ``trigger`` now: a rule of it leaves the entity's
    state and all its guards pass — the guards ``transitions`` asks, in its order (a
    property test holds the two answers together, for every machine, state and
    trigger)."""
    state = draft.state
    for rule, tests in _GUARDS[type(draft.entity), trigger]:  # noqa: SIM110 - no generator: follow-ups ask on most triggers
        if rule.source is state and _passes(tests, draft):
            return True  # the first rule that passes is the one transitions takes
    return False


def _passes(tests: tuple[Test, ...], draft: Draft) -> bool:
    for test in tests:  # noqa: SIM110 - no generator: follow-ups ask on most triggers
        if not test(draft):
            return False
    return True


def apply(draft: Draft, trigger: str) -> bool:
    """A trigger reported from outside: False if it repeats what is recorded (a
    duplicate), ``InvalidTransition`` if it contradicts it, else fired (True).

    Repeats are asked first, so a redelivered report on a finished flow is still a
    duplicate.
    """
    state = draft.state
    rules = _RULES[type(draft.entity), trigger]
    for rule in rules:
        repeats = rule.repeats.get(state)
        if repeats is not None and repeats(draft):
            return False
    for rule in rules:
        reason = rule.contradicts.get(state)
        if reason is not None:
            raise _invalid(draft, trigger, reason)
    fire(draft, trigger)
    return True


def created(flow: FlowDraft) -> None:
    """Record the hook events a new flow's creation causes (about its first deployment)."""
    _record(FLOW.created, flow, 0)


def _invalid(draft: Draft, trigger: str, reason: str) -> InvalidTransition:
    """The refusal, naming the entity in its latest state (a refused draft's)."""
    return InvalidTransition(_kind(draft), draft.entity.id, draft.state.value, trigger, reason)


def _not_from_here(draft: Draft, trigger: str) -> InvalidTransition:
    sources = " or ".join(repr(r.source.value) for r in _RULES[type(draft.entity), trigger])
    kind = _kind(draft)
    return _invalid(draft, trigger, f"only a {sources} {kind} can {trigger}")
