"""Why a flow waits (SPEC §9, "Explain"): ``FlowEngine.explain(flow_id)``.

An explanation is data: a tuple of ``Waiting`` items, each a stable ``kind``, one
plain sentence (``text``) and the facts it rests on. Each kind is one small
function of a ``Situation`` (the flow, its service, its pending timers and its
history) in ``REASONS``; a new reason to wait is one more function there, and
the ``Waiting`` class does not change: what is particular to a kind goes in its
``details``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from flowfsm.model import (
    Concurrency,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HistoryEntry,
    Promotion,
    PromotionState,
    Service,
    Timer,
    TimerKind,
    _frozen_json,
    attrs_repr,
)
from flowfsm.work import FLOWFSM

__all__ = ["REASONS", "Queued", "Situation", "Waiting", "explain"]


def _no_details(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _frozen_json(value or {})


@attrs.frozen(weakref_slot=False, repr=False)
class Waiting:
    """One thing a flow waits for (or that it is finished).

    ``kind`` is a short stable word (``cd-start``, ``cd-finish``, ``promotions``,
    ``soak``, ``backoff``, ``paused``, ``approval``, ``finished``, …) and ``text`` one plain sentence. ``deployment_id``
    and ``environment`` name the deployment it is about, ``since`` when the wait
    began and ``until`` when it ends on its own (a timeout, a soak), where known;
    ``details`` holds what only its kind has, as read-only JSON.
    """

    __repr__ = attrs_repr

    kind: str
    text: str
    deployment_id: str | None = None
    environment: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    details: Mapping[str, Any] = attrs.field(default=None, converter=_no_details, hash=False)


@attrs.frozen(weakref_slot=False, repr=False)
class Queued:
    """Where a queued deployment stands in its environment's line (SPEC §11), as the
    repository's lanes say: the flow occupying the environment (None: none now)
    and its deployment's state there, and the deployment's place (1: next)."""

    __repr__ = attrs_repr

    occupant: str | None
    occupant_state: DeploymentState | None
    place: int | None


@attrs.frozen(weakref_slot=False, repr=False)
class Situation:
    """What a reason reads: the flow, its service (None if the catalog no longer has
    it), its pending timers and its history (oldest first)."""

    __repr__ = attrs_repr

    flow: Flow
    service: Service | None
    timers: tuple[Timer, ...]
    history: tuple[HistoryEntry, ...]
    queued: Queued | None = None
    """Its current deployment's place in line, if it is queued, or the environment's
    occupant, if a freeze holds it (read by the engine)."""

    @property
    def current(self) -> Deployment | None:
        """The flow's current deployment: the first that has not succeeded."""
        return self.flow.current_deployment()

    def since(self, entity_id: str, state: str) -> dt.datetime | None:
        """When the entity last entered ``state``, by the history (None: unrecorded)."""
        entry = self.entered(entity_id, state)
        return entry.at if entry is not None else None

    def entered(self, entity_id: str, state: str) -> HistoryEntry | None:
        """The history entry in which the entity last entered ``state`` (None: unrecorded)."""
        for entry in reversed(self.history):
            for change in entry.changes:
                if change.id == entity_id and change.to == state:
                    return entry
        return None

    def timer(self, deployment_id: str, kind: TimerKind) -> Timer | None:
        for timer in self.timers:
            if timer.deployment_id == deployment_id and timer.kind is kind:
                return timer
        return None

    def announced(self, deployment: Deployment) -> dt.datetime | None:
        """When ``deployment`` was last announced (``deployment-created``), by the
        history: the latest step that made it (its creation, or a retry: to
        ``notStarted``), made it the next (the one before it succeeded), or let a
        held announcement go (the flow resumed). Unrecorded: the flow's creation for
        the first deployment, else None."""
        index = self.flow.deployments.index(deployment)
        previous = self.flow.deployments[index - 1].id if index > 0 else None
        announced = self.flow.created_at if index == 0 else None
        paused = held = False
        for entry in self.history:  # oldest first: a pause holds what it meets
            for change in entry.changes:
                if (change.id == deployment.id and change.to == _NOT_STARTED) or (
                    change.id == previous and change.to == _SUCCESS
                ):
                    held = paused
                    if not paused:
                        announced = entry.at
                elif change.id == self.flow.id and change.to == _PAUSED:
                    paused = True
                elif change.id == self.flow.id and change.from_ == _PAUSED:
                    paused = False
                    if held:
                        announced, held = entry.at, False
        return announced


_NOT_STARTED: Final = DeploymentState.NOT_STARTED.value
_SUCCESS: Final = DeploymentState.SUCCESS.value
_PAUSED: Final = FlowState.PAUSED.value


Reason = Callable[[Situation], Iterable[Waiting]]
"""One reason to wait: what it finds in a situation (usually nothing, or one item)."""


def at(when: dt.datetime | None) -> str:
    """A time as the sentences write it: UTC, to the second."""
    return "an unrecorded time" if when is None else when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _active(situation: Situation) -> Deployment | None:
    """The current deployment of a flow in progress, or None."""
    return situation.current if situation.flow.state is FlowState.IN_PROGRESS else None


def _under_way(situation: Situation) -> Deployment | None:
    """The current deployment of a flow in progress or paused, or None: a pause stops
    anything new, not the facts about work under way (SPEC §8), so what that work
    waits for still shows under a pause."""
    return situation.current if situation.flow.state.value in _ONGOING else None


def cd_start(situation: Situation) -> Iterable[Waiting]:
    deployment = _active(situation)
    if deployment is None or deployment.state is not DeploymentState.NOT_STARTED:
        return
    since = situation.announced(deployment)
    yield Waiting(
        "cd-start",
        f"Waiting for the CD system to start the deployment to {deployment.environment!r}, announced at {at(since)}.",
        deployment.id,
        deployment.environment,
        since,
    )


def cd_finish(situation: Situation) -> Iterable[Waiting]:
    deployment = _under_way(situation)
    if deployment is None or deployment.state is not DeploymentState.STARTED:
        return
    since = situation.since(deployment.id, DeploymentState.STARTED.value)
    timeout = situation.timer(deployment.id, TimerKind.DEPLOY)
    until = timeout.due if timeout is not None else None
    deadline = f"; it times out at {at(until)}" if until is not None else ""
    yield Waiting(
        "cd-finish",
        f"Waiting for the CD system to finish the deployment to {deployment.environment!r},"
        f" started at {at(since)}{deadline}.",
        deployment.id,
        deployment.environment,
        since,
        until,
    )


def promotions(situation: Situation) -> Iterable[Waiting]:
    deployment = _under_way(situation)
    if deployment is None or deployment.state is not DeploymentState.COMPLETED:
        return
    pending = [p for p in deployment.promotions if p.state is PromotionState.PENDING]
    if not pending:
        return
    names = ", ".join(_promotion(p) for p in pending)
    since = situation.since(deployment.id, DeploymentState.COMPLETED.value)
    timeout = situation.timer(deployment.id, TimerKind.VERIFY)
    until = timeout.due if timeout is not None else None
    deadline = f"; they time out at {at(until)}" if until is not None else ""
    listed = [{"name": p.name, "id": p.id, "attempt": p.attempt} for p in pending]
    yield Waiting(
        "promotions",
        f"Waiting for the promotion{'s' if len(pending) > 1 else ''} {names} of {deployment.environment!r},"
        f" deployed at {at(since)}{deadline}.",
        deployment.id,
        deployment.environment,
        since,
        until,
        {"promotions": listed},
    )


def _promotion(promotion: Promotion) -> str:
    """A promotion by name, with its attempt from the second on (a retry's)."""
    return f"{promotion.name!r}" + (f" (attempt {promotion.attempt})" if promotion.attempt > 1 else "")


def soak(situation: Situation) -> Iterable[Waiting]:
    deployment = _under_way(situation)
    if deployment is None or deployment.state is not DeploymentState.COMPLETED:
        return
    timer = situation.timer(deployment.id, TimerKind.SOAK)
    if timer is None:
        return
    since = situation.since(deployment.id, DeploymentState.COMPLETED.value)
    yield Waiting(
        "soak",
        f"Soaking in {deployment.environment!r} until {at(timer.due)}.",
        deployment.id,
        deployment.environment,
        since,
        timer.due,
    )


def backoff(situation: Situation) -> Iterable[Waiting]:
    """A ``RETRY`` policy's backoff: what its timer will retry, at which attempt, and when."""
    deployment = _under_way(situation)
    timer = situation.timer(deployment.id, TimerKind.RETRY) if deployment is not None else None
    if deployment is None or timer is None:
        return
    retried, again = _to_retry(situation, deployment)
    if not retried and not again:  # nothing left to retry: the timer will fire as a duplicate
        return
    parts, failed, listed = [], [], []
    if retried:
        names = ", ".join(f"{p.name!r} (attempt {p.attempt + 1})" for p in retried)
        parts.append(f"the promotion{'s' if len(retried) > 1 else ''} {names} of {deployment.environment!r}")
        failed += [situation.since(p.id, PromotionState.FAILED.value) for p in retried]
        listed += [{"entity": "promotion", "name": p.name, "id": p.id, "attempt": p.attempt + 1} for p in retried]
    if again:
        parts.append(f"the deployment to {deployment.environment!r} (attempt {deployment.attempt + 1})")
        failed.append(situation.since(deployment.id, DeploymentState.FAILED.value))
        listed.append({"entity": "deployment", "id": deployment.id, "attempt": deployment.attempt + 1})
    since = max((when for when in failed if when is not None), default=None)
    yield Waiting(
        "backoff",
        f"Waiting until {at(timer.due)} to retry {' and '.join(parts)}, which failed at {at(since)}.",
        deployment.id,
        deployment.environment,
        since,
        timer.due,
        {"retry": listed},
    )


def _to_retry(situation: Situation, deployment: Deployment) -> tuple[list[Promotion], bool]:
    """What a deployment's retry timer will retry when due: its failed promotions, and
    whether the deployment itself, that have attempts left (by its environment's retry
    policy; without the service, every failed one) and no policy's pause waits on."""
    service, pause = situation.service, situation.flow.pause
    limit = service.policy(deployment.environment)[1].attempts if service is not None else None
    waited_on = pause.failed if pause is not None else ()

    def left(item: Promotion | Deployment) -> bool:
        return (limit is None or item.attempt < limit) and item.id not in waited_on

    retried = [p for p in deployment.promotions if p.state is PromotionState.FAILED and left(p)]
    return retried, deployment.state is DeploymentState.FAILED and left(deployment)


def freeze(situation: Situation) -> Iterable[Waiting]:
    """A deployment held by a freeze window: which window (as the gate saw it when it
    held the deployment), and until when (its timer: the end of the freeze)."""
    deployment = _under_way(situation)
    if deployment is None or deployment.state is not DeploymentState.HELD:
        return
    since = situation.since(deployment.id, DeploymentState.HELD.value)
    timer = situation.timer(deployment.id, TimerKind.FREEZE)
    until = timer.due if timer is not None else None
    service = situation.service
    held = service.freeze(deployment.environment, since) if service is not None and since is not None else None
    window = held.window if held is not None else None
    by = f"freeze window {window!r}" if window is not None else "a freeze window"
    queued = situation.queued or Queued(None, None, None)
    occupant = queued.occupant
    then = "it is announced then"
    if service is not None and service.concurrency is not Concurrency.PARALLEL:  # a queue decides then
        now = ""
        if occupant is not None:
            doing = _OCCUPYING.get(queued.occupant_state, "occupying it") if queued.occupant_state else "occupying it"
            now = f" (flow {occupant} occupies it now: {doing})"
        then = f"then it is announced if {deployment.environment!r} is free{now}, else queued"
    yield Waiting(
        "freeze",
        f"The deployment to {deployment.environment!r} is held by {by} until {at(until)}; {then}.",
        deployment.id,
        deployment.environment,
        since,
        until,
        {"window": window, "behind": occupant},
    )


def paused(situation: Situation) -> Iterable[Waiting]:
    """A paused flow: by whom, why, since when, and what ends the pause — a person's
    ``ResumeFlow``, or, when its failure policy paused it, a retry or skip of each
    failed item it waits on (or aborting the flow)."""
    flow = situation.flow
    if flow.state is not FlowState.PAUSED:
        return
    pause = flow.pause
    actor = pause.actor if pause is not None else None
    reason = pause.reason if pause is not None else None
    waited_on = [_failed_item(flow, item_id) for item_id in (pause.failed if pause is not None else ())]
    since = situation.since(flow.id, FlowState.PAUSED.value)
    current = situation.current
    held = current is not None and current.state is DeploymentState.NOT_STARTED
    why = f": {reason}" if reason else ""
    by_policy = actor == FLOWFSM  # a failure under a person's pause leaves the pause theirs
    by = " by its failure policy" if by_policy else f" by {actor!r}" if actor else ""
    if waited_on:
        resume = "" if by_policy else ", then resume it"
        then = f" To go on, {'; '.join(_settling(item) for item in waited_on)}{resume}; or abort the flow."
    else:
        then = " It goes on when it is resumed."
    holding = f" The deployment to {current.environment!r} cannot start until then." if current and held else ""
    yield Waiting(
        "paused",
        f"Paused{by} at {at(since)}{why}.{then}{holding}",
        current.id if current is not None else None,
        current.environment if current is not None else None,
        since,
        details={"actor": actor, "reason": reason, "failed": waited_on},
    )


def _failed_item(flow: Flow, item_id: str) -> dict[str, Any]:
    """A failed item a policy's pause waits on, as an explanation names it."""
    for deployment in flow.deployments:
        if deployment.id == item_id:
            return {"entity": "deployment", "id": item_id, "environment": deployment.environment}
        promotion = deployment.promotion(item_id)
        if promotion is not None:
            return {
                "entity": "promotion",
                "id": item_id,
                "name": promotion.name,
                "environment": deployment.environment,
                "deploymentId": deployment.id,
                "attempt": promotion.attempt,
            }
    return {"entity": "unknown", "id": item_id}  # not the engine's flow: named by its id alone


def _settling(item: Mapping[str, Any]) -> str:
    """What a person does about one failed item a pause waits on."""
    if item["entity"] == "promotion":
        return f"retry or skip the promotion {item['name']!r} of {item['environment']!r}"
    if item["entity"] == "deployment":
        return f"retry the deployment to {item['environment']!r}"
    return f"retry or skip {item['id']!r}"


_ONGOING: Final = frozenset({"inProgress", "paused"})
"""The flow states (spellings) a flow can leave; every other one is final."""
_HOW: Final = {"success": "succeeded", "failed": "failed", "aborted": "was aborted", "superseded": "was superseded"}
_STEERED: Final = frozenset({"aborted", "superseded"})
"""The ends someone chose (a person, a newer flow): the sentence says who, by the history."""


def finished(situation: Situation) -> Iterable[Waiting]:
    """A finished flow: how, when, where, and, from the history entry that ended it,
    who ended it (an abort, a supersession) and why (any end but success)."""
    flow = situation.flow
    state = flow.state.value
    if state in _ONGOING:
        return
    how = _HOW.get(state, f"ended {state!r}")
    entry = situation.entered(flow.id, state)
    when = entry.at if entry is not None else flow.updated_at
    actor = entry.actor if entry is not None and state in _STEERED else None
    reason = entry.reason if entry is not None and state != "success" else None
    last = next((d for d in reversed(flow.deployments) if d.state is not DeploymentState.NOT_STARTED), None)
    where = f", in {last.environment!r}" if last else ""
    by = f" by {actor!r}" if actor else ""
    why = f": {reason}" if reason else ""
    yield Waiting(
        "finished",
        f"Finished: the flow {how}{by} at {at(when)}{where}{why}.",
        last.id if last else None,
        last.environment if last else None,
        when,
        details={"state": state} | ({"actor": actor} if actor else {}) | ({"reason": reason} if reason else {}),
    )


def approval(situation: Situation) -> Iterable[Waiting]:
    """A deployment awaiting approval (SPEC §11): k of n, who may approve (not the
    artifact's author, unless allowed), who approved, since and until when."""
    deployment = _under_way(situation)  # approvals are still given while the flow is paused
    if deployment is None or deployment.state is not DeploymentState.AWAITING_APPROVAL:
        return
    service = situation.service
    environment = service.pipeline.environment(deployment.environment) if service is not None else None
    policy = environment.approvals if environment is not None else None
    given, author = deployment.approvals, situation.flow.author
    since = situation.since(deployment.id, DeploymentState.AWAITING_APPROVAL.value)
    timer = situation.timer(deployment.id, TimerKind.APPROVAL)
    until = timer.due if timer is not None else None
    if policy is None:  # the catalog no longer says: anyone's approval opens it
        count, who, details = f"{len(given)} given", "", {}
    else:
        count, who = f"{len(given)} of {policy.required}", f", from {' or '.join(policy.approvers)}"
        details = {"required": policy.required, "approvers": list(policy.approvers)}
    notes = [f"{', '.join(given)} approved"] if given else []
    if policy is not None and author is not None and not policy.allow_author:
        notes.append(f"not {author!r}, the artifact's author")
    approved = f" ({'; '.join(notes)})" if notes else ""
    deadline = f"; it expires at {at(until)}" if until is not None else ""
    yield Waiting(
        "approval",
        f"Awaiting approval for {deployment.environment!r}: {count}{who}{approved};"
        f" requested at {at(since)}{deadline}.",
        deployment.id,
        deployment.environment,
        since,
        until,
        {"approvals": list(given), **details} | ({"author": author} if author is not None else {}),
    )


def queue(situation: Situation) -> Iterable[Waiting]:
    """A deployment queued for an occupied environment (SPEC §11): behind which flow,
    doing what there, and its place in line."""
    deployment = _under_way(situation)
    if deployment is None or deployment.state is not DeploymentState.QUEUED:
        return
    queued = situation.queued or Queued(None, None, None)
    behind = ""
    if queued.occupant is not None:
        doing = _OCCUPYING.get(queued.occupant_state, "occupying it") if queued.occupant_state else "occupying it"
        behind = f" behind flow {queued.occupant} ({doing})"
    place = f", {_ordinal(queued.place)} in line" if queued.place is not None else ""
    since = situation.since(deployment.id, DeploymentState.QUEUED.value)
    yield Waiting(
        "queue",
        f"Queued for {deployment.environment!r}{behind}{place}, since {at(since)}.",
        deployment.id,
        deployment.environment,
        since,
        details={"behind": queued.occupant, "place": queued.place},
    )


_OCCUPYING: Final = {
    DeploymentState.NOT_STARTED: "announced, not yet started",
    DeploymentState.STARTED: "deploying",
    DeploymentState.COMPLETED: "verifying",
}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


REASONS: list[Reason] = [finished, paused, approval, freeze, queue, cd_start, cd_finish, promotions, soak, backoff]
"""Every reason to wait, in the order an explanation lists them. Append one to add a kind."""


def explain(
    flow: Flow,
    service: Service | None,
    timers: Sequence[Timer],
    history: Sequence[HistoryEntry],
    *,
    queued: Queued | None = None,
) -> tuple[Waiting, ...]:
    """What ``flow`` waits for: every reason's findings, in ``REASONS`` order."""
    situation = Situation(flow, service, tuple(timers), tuple(history), queued)
    return tuple(item for reason in REASONS for item in reason(situation))
