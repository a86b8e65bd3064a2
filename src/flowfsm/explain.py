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
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HistoryEntry,
    PromotionState,
    Service,
    Timer,
    TimerKind,
    _frozen_json,
    attrs_repr,
)

__all__ = ["REASONS", "Situation", "Waiting", "explain"]


def _no_details(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _frozen_json(value or {})


@attrs.frozen(weakref_slot=False, repr=False)
class Waiting:
    """One thing a flow waits for (or that it is finished).

    ``kind`` is a short stable word (``cd-start``, ``cd-finish``, ``promotions``,
    ``soak``, ``finished``, …) and ``text`` one plain sentence. ``deployment_id``
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
class Situation:
    """What a reason reads: the flow, its service (None if the catalog no longer has
    it), its pending timers and its history (oldest first)."""

    __repr__ = attrs_repr

    flow: Flow
    service: Service | None
    timers: tuple[Timer, ...]
    history: tuple[HistoryEntry, ...]

    @property
    def current(self) -> Deployment | None:
        """The flow's current deployment: the first that has not succeeded."""
        return self.flow.current_deployment()

    def since(self, entity_id: str, state: str) -> dt.datetime | None:
        """When the entity last entered ``state``, by the history (None: unrecorded)."""
        for entry in reversed(self.history):
            for change in entry.changes:
                if change.id == entity_id and change.to == state:
                    return entry.at
        return None

    def timer(self, deployment_id: str, kind: TimerKind) -> Timer | None:
        for timer in self.timers:
            if timer.deployment_id == deployment_id and timer.kind is kind:
                return timer
        return None

    def announced(self, deployment: Deployment) -> dt.datetime | None:
        """When ``deployment`` became the one to start: the flow's creation for the
        first, the success of the one before it for the others."""
        index = self.flow.deployments.index(deployment)
        if index == 0:
            return self.since(deployment.id, DeploymentState.NOT_STARTED.value) or self.flow.created_at
        return self.since(self.flow.deployments[index - 1].id, DeploymentState.SUCCESS.value)


Reason = Callable[[Situation], Iterable[Waiting]]
"""One reason to wait: what it finds in a situation (usually nothing, or one item)."""


def at(when: dt.datetime | None) -> str:
    """A time as the sentences write it: UTC, to the second."""
    return "an unrecorded time" if when is None else when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _active(situation: Situation) -> Deployment | None:
    """The current deployment of a flow in progress, or None."""
    return situation.current if situation.flow.state is FlowState.IN_PROGRESS else None


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
    deployment = _active(situation)
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
    deployment = _active(situation)
    if deployment is None or deployment.state is not DeploymentState.COMPLETED:
        return
    pending = [p for p in deployment.promotions if p.state is PromotionState.PENDING]
    if not pending:
        return
    # Attempts, where promotions count them (``attempt``, 1-based): named from the second on.
    attempts = [getattr(p, "attempt", None) for p in pending]
    names = ", ".join(
        f"{p.name!r}" + (f" (attempt {n})" if isinstance(n, int) and n > 1 else "")
        for p, n in zip(pending, attempts, strict=True)
    )
    since = situation.since(deployment.id, DeploymentState.COMPLETED.value)
    timeout = situation.timer(deployment.id, TimerKind.VERIFY)
    until = timeout.due if timeout is not None else None
    deadline = f"; they time out at {at(until)}" if until is not None else ""
    listed = [
        {"name": p.name, "id": p.id} | ({"attempt": n} if isinstance(n, int) else {})
        for p, n in zip(pending, attempts, strict=True)
    ]
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


def soak(situation: Situation) -> Iterable[Waiting]:
    deployment = _active(situation)
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


_ONGOING: Final = frozenset({"inProgress", "paused"})
"""The flow states (spellings) a flow can leave; every other one is final."""
_HOW: Final = {"success": "succeeded", "failed": "failed", "aborted": "was aborted", "superseded": "was superseded"}


def finished(situation: Situation) -> Iterable[Waiting]:
    flow = situation.flow
    state = flow.state.value
    if state in _ONGOING:
        return
    how = _HOW.get(state, f"ended {state!r}")
    when = situation.since(flow.id, flow.state.value) or flow.updated_at
    last = next((d for d in reversed(flow.deployments) if d.state is not DeploymentState.NOT_STARTED), None)
    yield Waiting(
        "finished",
        f"Finished: the flow {how} at {at(when)}" + (f", in {last.environment!r}." if last else "."),
        last.id if last else None,
        last.environment if last else None,
        when,
        details={"state": state},
    )


REASONS: list[Reason] = [finished, cd_start, cd_finish, promotions, soak]
"""Every reason to wait, in the order an explanation lists them. Append one to add a kind."""


def explain(
    flow: Flow, service: Service | None, timers: Sequence[Timer], history: Sequence[HistoryEntry]
) -> tuple[Waiting, ...]:
    """What ``flow`` waits for: every reason's findings, in ``REASONS`` order."""
    situation = Situation(flow, service, tuple(timers), tuple(history))
    return tuple(item for reason in REASONS for item in reason(situation))
