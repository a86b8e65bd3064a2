"""The engine's inputs, and what ``FlowEngine.handle`` returns.

Triggers validate themselves when built, so malformed input fails where it is
made (or where ``flowfsm.converter`` structures it), naming the bad field.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, Final, TypeAlias

import attrs

from flowfsm.errors import ValidationError, shown
from flowfsm.lanes import LaneMove
from flowfsm.model import (
    Artifact,
    Flow,
    HistoryEntry,
    HookRequest,
    PromotionResult,
    Timer,
    TimerKind,
    _nonblank,
    attrs_repr,
    text_problem,
    timer_id,
)

__all__ = [
    "AbortFlow",
    "ApprovalGranted",
    "ApprovalRejected",
    "ArtifactCreated",
    "DeploymentCompleted",
    "DeploymentFailed",
    "DeploymentStarted",
    "Outcome",
    "OverrideFreeze",
    "PauseFlow",
    "PromotionCompleted",
    "ResumeFlow",
    "RetryDeployment",
    "RetryPromotion",
    "SkipPromotion",
    "TimerFired",
    "Trigger",
]


MAX_ACTOR: Final = 256
"""The longest ``actor`` a trigger takes, in characters."""
MAX_REASON: Final = 10_000
"""The longest ``reason`` a trigger takes, in characters: room for a short log excerpt."""


def _optional_text(limit: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(attribute.name, f"must be a non-blank string or None, got {shown(value)}")
        if len(value) > limit:
            raise ValidationError(attribute.name, f"is {len(value)} characters long; at most {limit} are allowed")
        problem = text_problem(value)
        if problem:
            raise ValidationError(attribute.name, problem)

    return check


def _required_text(name: str, limit: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    optional = _optional_text(limit)

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            raise ValidationError(name, "is required here" + (": who acted" if name == "actor" else ": why"))
        optional(instance, attribute, value)

    return check


@attrs.frozen(weakref_slot=False, repr=False)
class _Attributed:
    """What every trigger may carry (SPEC §8): who caused it and why. The embedding
    service vouches for ``actor``; flowfsm records both with the change (history)
    and names them in the payloads of what a person did."""

    __repr__ = attrs_repr

    actor: str | None = attrs.field(default=None, kw_only=True, validator=_optional_text(MAX_ACTOR))
    reason: str | None = attrs.field(default=None, kw_only=True, validator=_optional_text(MAX_REASON))


@attrs.frozen(weakref_slot=False, repr=False)
class ArtifactCreated(_Attributed):
    """CI published ``artifact``: a flow starts for each service consuming it.
    ``actor`` is the artifact's author, where known."""

    artifact: Artifact


@attrs.frozen(weakref_slot=False, repr=False)
class DeploymentStarted(_Attributed):
    deployment_id: str = attrs.field(validator=_nonblank)


@attrs.frozen(weakref_slot=False, repr=False)
class DeploymentCompleted(_Attributed):
    deployment_id: str = attrs.field(validator=_nonblank)


@attrs.frozen(weakref_slot=False, repr=False)
class DeploymentFailed(_Attributed):
    """The CD system reports that a started deployment failed, and why; the
    service's failure strategy decides what follows (``STOP``: the flow fails)."""

    deployment_id: str = attrs.field(validator=_nonblank)
    reason: str = attrs.field(validator=_required_text("reason", MAX_REASON))  # the CD system says why  # type: ignore[assignment]


def _results(value: Iterable[PromotionResult]) -> tuple[PromotionResult, ...]:
    return tuple(value)


@attrs.frozen(weakref_slot=False, repr=False)
class PromotionCompleted(_Attributed):
    """The results of one promotion's checks; the promotion failed if any failed."""

    deployment_id: str = attrs.field(validator=_nonblank)
    promotion_id: str = attrs.field(validator=_nonblank)
    results: tuple[PromotionResult, ...] = attrs.field(converter=_results)

    def __attrs_post_init__(self) -> None:
        if not self.results:
            raise ValidationError("results", "at least one promotion result is required")
        for i, result in enumerate(self.results):
            if not isinstance(result, PromotionResult):
                raise ValidationError(f"results[{i}]", f"expected a PromotionResult, got {result!r}")
            if result.promotion_id != self.promotion_id:
                raise ValidationError(
                    f"results[{i}].promotion_id",
                    f"{result.promotion_id!r} is not the promotion {self.promotion_id!r}",
                )
            attempt = result.attempt
            if attempt is not None and (type(attempt) is not int or attempt < 1):
                raise ValidationError(f"results[{i}].attempt", f"must be a whole number from 1, got {shown(attempt)}")


def _timer_kind(value: object) -> TimerKind:
    if isinstance(value, TimerKind):
        return value
    try:
        return TimerKind(value)
    except ValueError:
        allowed = ", ".join(repr(k.value) for k in TimerKind)
        raise ValidationError("kind", f"{value!r} is not one of {allowed}") from None


@attrs.frozen(weakref_slot=False, repr=False)
class TimerFired(_Attributed):
    """A deployment's timer of ``kind`` is due (``flowfsm.scheduling.Scheduler``
    sends it; flowfsm itself is its actor). It does nothing (a duplicate) unless the
    timer is still set, due, and the deployment still waits for it."""

    deployment_id: str = attrs.field(validator=_nonblank)
    kind: TimerKind = attrs.field(converter=_timer_kind)
    actor: str | None = attrs.field(default="flowfsm", kw_only=True, validator=_optional_text(MAX_ACTOR))

    @property
    def timer_id(self) -> str:
        return timer_id(self.deployment_id, self.kind)


# --- steering (SPEC §8): a person acts, so ``actor`` is required -------------------------


_ACTOR: Final = _required_text("actor", MAX_ACTOR)
"""A person acts: ``actor`` is required, positional after the trigger's ids."""
_REASON: Final = _optional_text(MAX_REASON)


@attrs.frozen(weakref_slot=False, repr=False)
class PauseFlow(_Attributed):
    """A person pauses a flow: work under way is still recorded, nothing new begins."""

    flow_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str | None = attrs.field(default=None, validator=_REASON)


@attrs.frozen(weakref_slot=False, repr=False)
class ResumeFlow(_Attributed):
    """A person resumes a paused flow; what the pause held is announced. A flow its
    failure policy paused resumes only once its failed item is retried or skipped."""

    flow_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str | None = attrs.field(default=None, validator=_REASON)


@attrs.frozen(weakref_slot=False, repr=False)
class AbortFlow(_Attributed):
    """A person ends a flow for good: it never moves again, its timers are cancelled."""

    flow_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str | None = attrs.field(default=None, validator=_REASON)


@attrs.frozen(weakref_slot=False, repr=False)
class RetryPromotion(_Attributed):
    """A person retries a failed promotion: pending again, at its next attempt."""

    deployment_id: str = attrs.field(validator=_nonblank)
    promotion_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str | None = attrs.field(default=None, validator=_REASON)


@attrs.frozen(weakref_slot=False, repr=False)
class SkipPromotion(_Attributed):
    """A person lets a pending or failed promotion pass unchecked, and must say why."""

    deployment_id: str = attrs.field(validator=_nonblank)
    promotion_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str = attrs.field(validator=_required_text("reason", MAX_REASON))


@attrs.frozen(weakref_slot=False, repr=False)
class RetryDeployment(_Attributed):
    """A person retries a failed deployment: announced again, at its next attempt."""

    deployment_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str | None = attrs.field(default=None, validator=_REASON)


# --- gates (SPEC §11): a person approves, rejects, or lets a deployment through a freeze ---


MAX_GROUPS: Final = 1000
"""The most groups an approver's trigger names: each is stored in its history entry.
An embedding service whose people belong to more passes those the gates name."""


def _groups(value: object) -> frozenset[str]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):  # not its letters, nor its keys
        raise ValidationError("groups", f"expected a collection of group names, got {shown(value)}")
    names = list(itertools.islice(value, MAX_GROUPS + 1))
    if len(names) > MAX_GROUPS:
        count = len(value) if isinstance(value, Sized) else f"more than {MAX_GROUPS}"
        raise ValidationError("groups", f"at most {MAX_GROUPS} groups, got {count}")
    for group in names:
        if not isinstance(group, str) or not group.strip():  # before hashing: a list is no name
            raise ValidationError("groups", f"a group name must be a non-blank string, got {shown(group)}")
        if len(group) > MAX_ACTOR:
            raise ValidationError("groups", f"a group name is at most {MAX_ACTOR} characters long")
        problem = text_problem(group)
        if problem:
            raise ValidationError("groups", problem)
    return frozenset(names)


def _answered(_: object, __: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 1):  # int() reads true as 1
        raise ValidationError("attempt", f"must be a whole number from 1, got {shown(value)}")


@attrs.frozen(weakref_slot=False, repr=False)
class ApprovalGranted(_Attributed):
    """``actor`` approves the deployment; ``groups`` are the groups the embedding
    service vouches they belong to. One approval per person counts. ``attempt``,
    if given, is the deployment's attempt the approval answers (its
    ``approval-requested`` says which): one for an earlier attempt is stale."""

    deployment_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    groups: frozenset[str] = attrs.field(default=frozenset(), converter=_groups)
    reason: str | None = attrs.field(default=None, kw_only=True, validator=_REASON)
    attempt: int | None = attrs.field(default=None, kw_only=True, validator=_answered)


@attrs.frozen(weakref_slot=False, repr=False)
class ApprovalRejected(_Attributed):
    """``actor`` rejects the deployment, and says why: a failure for the failure
    strategy. ``attempt`` as for ``ApprovalGranted``."""

    deployment_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str = attrs.field(validator=_required_text("reason", MAX_REASON))
    groups: frozenset[str] = attrs.field(default=frozenset(), kw_only=True, converter=_groups)
    attempt: int | None = attrs.field(default=None, kw_only=True, validator=_answered)


@attrs.frozen(weakref_slot=False, repr=False)
class OverrideFreeze(_Attributed):
    """``actor`` lets one deployment held by a freeze window through, and says why."""

    deployment_id: str = attrs.field(validator=_nonblank)
    actor: str = attrs.field(validator=_ACTOR)
    reason: str = attrs.field(validator=_required_text("reason", MAX_REASON))


Trigger: TypeAlias = (
    ArtifactCreated
    | DeploymentStarted
    | DeploymentCompleted
    | PromotionCompleted
    | DeploymentFailed
    | TimerFired
    | PauseFlow
    | ResumeFlow
    | AbortFlow
    | RetryPromotion
    | SkipPromotion
    | RetryDeployment
    | ApprovalGranted
    | ApprovalRejected
    | OverrideFreeze
)


@attrs.define(weakref_slot=False, repr=False)
class Outcome:
    """What one trigger did: the flows it created or changed (for ArtifactCreated,
    new or existing), the HookRequests it emitted, and whether it was a duplicate
    (already recorded: nothing changed, nothing emitted)."""

    __repr__ = attrs_repr

    flows: tuple[Flow, ...] = ()
    hook_requests: tuple[HookRequest, ...] = ()
    duplicate: bool = False
    timers: tuple[Timer, ...] = ()
    """Timers the trigger set (committed with its flows)."""
    cancelled: tuple[str, ...] = ()
    """Ids of the timers the trigger cancelled."""
    history: tuple[HistoryEntry, ...] = ()
    """The history entries the trigger added, one per flow it changed (committed with them)."""
    lanes: tuple[LaneMove, ...] = ()
    """The flows' changes of place in the lanes of their environments (SPEC §11; committed with them)."""
