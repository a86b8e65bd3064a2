"""The domain: what a CD flow is made of, as attrs classes and enums.

Everything here is frozen except what is built on every step and handed on at
once. The three stateful entities (``Flow``, ``Deployment``, ``Promotion``) are
immutable values: a trigger makes new versions of the parts it changes and shares
the rest, so a repository can hand out what it stores, and a HookRequest's
payload can hold the deployment exactly as it was at its event, without copying
either. (The state machines in ``flowfsm.machines`` work on a draft of an entity
and publish the result as its next version.) Payloads are frozen too: the
HookRequests of one event share one payload, so an emitter must not be able to
change a sibling request's. HookRequests themselves are built several times a
trigger and never kept by the engine, so they are plain slotted attrs classes.

Enum values are the JSON spellings of the contract (``notStarted``,
``deployment-created``), so the values *are* the wire format.
"""

from __future__ import annotations

import codecs
import datetime as dt
import enum
import errno
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NoReturn, TypeAlias, TypeVar, cast

import attrs

from flowfsm.durations import parse_duration
from flowfsm.errors import ValidationError, shown
from flowfsm.freezes import Freeze, FreezeWindow, frozen

__all__ = [
    "FINISHED",
    "GATED",
    "GROUP_PREFIX",
    "Action",
    "ActionRef",
    "ApprovalPolicy",
    "Artifact",
    "Concurrency",
    "DeliveryAttempt",
    "DeliveryState",
    "Deployment",
    "DeploymentPayload",
    "DeploymentState",
    "Environment",
    "FailurePayload",
    "FailureStrategy",
    "Flow",
    "FlowState",
    "HeldPayload",
    "HistoryEntry",
    "HookEvent",
    "HookRecord",
    "HookRequest",
    "Pause",
    "Payload",
    "Pipeline",
    "Promotion",
    "PromotionPayload",
    "PromotionResult",
    "PromotionState",
    "ResultStatus",
    "RetryPolicy",
    "Rollback",
    "RollbackPayload",
    "Service",
    "ServiceRef",
    "StateChange",
    "SteeringPayload",
    "TimeoutPayload",
    "Timeouts",
    "Timer",
    "TimerKind",
]


class FlowState(enum.Enum):
    IN_PROGRESS = "inProgress"
    SUCCESS = "success"
    FAILED = "failed"
    PAUSED = "paused"
    """Reversible: facts about work under way are recorded, nothing new begins."""
    ABORTED = "aborted"
    SUPERSEDED = "superseded"

    __hash__ = object.__hash__  # members are singletons; skip Enum's Python-level hash

    @property
    def finished(self) -> bool:
        """Terminal: nothing moves the flow again, and its timers are cancelled."""
        return self in FINISHED


FINISHED: Final = frozenset({FlowState.SUCCESS, FlowState.FAILED, FlowState.ABORTED, FlowState.SUPERSEDED})
"""The terminal flow states (``FlowState.finished``; a set, for the hot paths)."""


class DeploymentState(enum.Enum):
    """Where a deployment is. Its gates (SPEC §11) come before ``notStarted``'s
    announcement: a deployment reaching its environment may wait for approvals
    (``awaitingApproval``), for a freeze window to end (``held``), or for its
    environment to free (``queued``); it is announced (``deployment-created``) in
    ``notStarted`` once every gate lets it through, and only then can it start."""

    NOT_STARTED = "notStarted"
    STARTED = "started"
    COMPLETED = "completed"
    SUCCESS = "success"
    FAILED = "failed"
    AWAITING_APPROVAL = "awaitingApproval"
    """Its environment requires approvals and it has not all it needs (``approval-requested``)."""
    HELD = "held"
    """A freeze window covers its environment (``deployment-held``, announced when the window ends)."""
    QUEUED = "queued"
    """Its environment is occupied under ``queue`` or ``newest-wins`` (``deployment-queued``)."""

    __hash__ = object.__hash__  # members are singletons; skip Enum's Python-level hash


GATED: Final = frozenset({DeploymentState.AWAITING_APPROVAL, DeploymentState.HELD, DeploymentState.QUEUED})
"""The states of a deployment waiting at a gate (SPEC §11): not yet announced."""


class PromotionState(enum.Enum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Terminal, set by a person; counts as passed for its deployment."""

    __hash__ = object.__hash__  # members are singletons; skip Enum's Python-level hash


class ResultStatus(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"

    __hash__ = object.__hash__  # members are singletons; skip Enum's Python-level hash


class HookEvent(enum.Enum):
    """What a webhook subscribes to. The value is the event's name on the wire."""

    DEPLOYMENT_CREATED = "deployment-created"
    DEPLOYMENT_STARTED = "deployment-started"
    DEPLOYMENT_COMPLETED = "deployment-completed"
    PROMOTION_COMPLETED = "promotion-completed"
    DEPLOYMENT_SUCCEEDED = "deployment-succeeded"
    DEPLOYMENT_FAILED = "deployment-failed"
    PROMOTION_FAILED = "promotion-failed"
    FLOW_SUCCEEDED = "flow-succeeded"
    FLOW_FAILED = "flow-failed"
    FLOW_PAUSED = "flow-paused"
    FLOW_RESUMED = "flow-resumed"
    FLOW_ABORTED = "flow-aborted"
    PROMOTION_RETRIED = "promotion-retried"
    PROMOTION_SKIPPED = "promotion-skipped"
    DEPLOYMENT_RETRIED = "deployment-retried"
    ROLLBACK_REQUESTED = "rollback-requested"
    FLOW_SUPERSEDED = "flow-superseded"
    APPROVAL_REQUESTED = "approval-requested"
    APPROVAL_GRANTED = "approval-granted"
    APPROVAL_REJECTED = "approval-rejected"
    APPROVAL_EXPIRED = "approval-expired"
    APPROVAL_CANCELLED = "approval-cancelled"
    DEPLOYMENT_QUEUED = "deployment-queued"
    DEPLOYMENT_HELD = "deployment-held"
    FREEZE_OVERRIDDEN = "freeze-overridden"

    __hash__ = object.__hash__  # members are singletons; skip Enum's Python-level hash


class Concurrency(enum.StrEnum):
    """How many flows of one service may be active in one environment (SPEC §11)."""

    PARALLEL = "parallel"
    """Any number (Part I)."""
    QUEUE = "queue"
    """One at a time; the others wait in arrival order (``deployment-queued``)."""
    NEWEST_WINS = "newest-wins"
    """``queue``, where a flow that starts waiting supersedes older ones that have not begun."""


class FailureStrategy(enum.StrEnum):
    """The built-in failure strategies. A service names its strategy by this value
    (a plain string for strategies registered with the engine)."""

    STOP = "STOP"
    RETRY = "RETRY"
    PAUSE = "PAUSE"
    ROLLBACK = "ROLLBACK"


# --- helpers ------------------------------------------------------------------------


def attrs_repr(self: Any) -> str:
    """The ``repr`` of every flowfsm attrs class, written once: attrs would compile one
    per class at import, a noticeable share of ``import flowfsm``."""
    shown = ", ".join(f"{a.name}={getattr(self, a.name)!r}" for a in attrs.fields(type(self)) if a.repr)
    return f"{type(self).__name__}({shown})"


def text_problem(value: str) -> str | None:
    """What makes ``value`` unfit to store, or None: every backend must take it alike.

    PostgreSQL refuses NUL in text and JSON, and no backend can encode a lone
    surrogate (what undecodable bytes become in Python) as UTF-8; refusing both
    where input enters keeps the backends in agreement."""
    if "\x00" in value:
        return "contains NUL (\\u0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (not UTF-8, e.g. undecodable bytes)"
    return None


def _nonblank(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(attribute.name, f"must be a non-blank string, got {shown(value)}")
    if "\x00" in value or not value.isascii():  # the common case, ASCII without NUL, needs no more
        problem = text_problem(value)
        if problem:
            raise ValidationError(attribute.name, problem)


MAX_JSON_DEPTH = 100
"""How deep result details may nest: deeper data is refused when a result is made,
not when its JSON is written after the trigger has been applied."""


_Where = tuple[object, "_Where"] | None
"""A place in nested JSON, built only as deep as it is walked: (key or index, parent)."""


def _where(place: _Where) -> str:
    keys: list[str] = []
    while place is not None:
        key, place = place
        keys.append(f"[{key}]" if isinstance(key, int) else f"[{shown(key, 30)}]")
    text = "".join(reversed(keys))
    return text if len(text) <= 120 else text[:119] + "…"


_INFINITY = float("inf")


def _flat(value: dict[object, object]) -> bool:
    """True for the usual details, one object of plain strings and numbers, with no
    problem to find: ``check_json`` walks only what is nested or suspect."""
    for key, inner in value.items():
        if not isinstance(key, str) or "\x00" in key or not key.isascii():
            return False
        if isinstance(inner, str):
            if "\x00" in inner or not inner.isascii():
                return False
        elif isinstance(inner, int):  # and bool
            if inner.bit_length() > 10_000:
                return False
        elif isinstance(inner, float):
            if not -_INFINITY < inner < _INFINITY:  # false for NaN too
                return False
        elif inner is not None:
            return False
    return True


def check_json(field: str, value: object) -> None:  # noqa: PLR0912 - one branch per JSON kind
    """Refuse ``value`` unless it is JSON every backend stores alike: objects with
    string keys, lists, strings (see ``text_problem``), finite numbers, booleans and
    null, nested at most ``MAX_JSON_DEPTH`` deep. Iterative, so depth cannot crash it;
    where a problem is, is worked out only when there is one (details come with every
    result, so the walk must stay cheap)."""
    if type(value) is dict and _flat(value):
        return
    stack: list[tuple[object, int, _Where]] = [(value, 0, None)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth, place = pop()
        problem: str | None = None
        if isinstance(item, str):
            if "\x00" in item or not item.isascii():
                problem = text_problem(item)
                problem = problem and f"has a string that {problem}"
        elif item is None or (isinstance(item, (bool, float)) and math.isfinite(item)):
            continue
        elif isinstance(item, int):
            if item.bit_length() > 10_000:  # past ~3000 digits: can JSON still write it?
                try:
                    int.__repr__(item)
                except ValueError:
                    problem = "has an integer with too many digits to write as JSON"
        elif isinstance(item, float):
            problem = f"has {item!r}, which is not a JSON number"
        elif isinstance(item, (dict, list, tuple)):
            if depth >= MAX_JSON_DEPTH:
                problem = f"is nested more than {MAX_JSON_DEPTH} deep"
            elif isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        problem = f"has the key {shown(key)}; JSON keys are strings"
                        break
                    if "\x00" in key or not key.isascii():
                        problem = text_problem(key)
                        if problem:
                            problem = f"has a key that {problem}"
                            break
                    push((inner, depth + 1, (key, place)))
            else:
                for index, inner in enumerate(item):
                    push((inner, depth + 1, (index, place)))
        else:
            problem = f"has a value of type {type(item).__name__}, which is not JSON"
        if problem:
            at = f" (at {_where(place)})" if place is not None else ""
            raise ValidationError(field, problem + at)


E = TypeVar("E", bound=enum.Enum)


def _member(enum_cls: type[E], field: str, value: object) -> E:
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_cls)
        raise ValidationError(field, f"{shown(value)} is not one of {allowed}") from None


def _hook_event(value: object) -> HookEvent:
    return _member(HookEvent, "event", value)


def _result_status(value: object) -> ResultStatus:
    return _member(ResultStatus, "result_status", value)


def _strategy_name(value: str) -> str:
    return value.value if isinstance(value, FailureStrategy) else value  # a member becomes its plain name


def _unique(field: str, names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValidationError(field, f"duplicate {what} {shown(name)}")
        seen.add(name)


_ARTICLE: Final = {str: "a string"}


def _tuple_of(field: str, item: type[Any], value: object) -> tuple[Any, ...]:
    """``value``, a list (any iterable) of ``item``, as a tuple. A string, bytes or a
    mapping is refused, as the file loader refuses them: neither a string's letters
    nor a mapping's keys are what anyone means by a list."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ValidationError(field, f"expected a list, got {shown(value)}")
    items = tuple(value)
    for i, element in enumerate(items):
        if not isinstance(element, item):
            expected = _ARTICLE.get(item) or f"{'an' if item.__name__[0] in 'AEIOU' else 'a'} {item.__name__}"
            raise ValidationError(f"{field}[{i}]", f"expected {expected}, got {shown(element)}")
    return items


# One converter per list field: attrs' converters do not know their field's name.
def _promotion_names(value: Iterable[str]) -> tuple[str, ...]:
    return _tuple_of("promotions", str, value)


def _environments(value: Iterable[Environment]) -> tuple[Environment, ...]:
    return _tuple_of("environments", Environment, value)


def _actions(value: Iterable[Action]) -> tuple[Action, ...]:
    return _tuple_of("actions", Action, value)


def _artifacts(value: Iterable[str]) -> tuple[str, ...]:
    return _tuple_of("artifacts", str, value)


def _webhooks(value: Iterable[Webhook]) -> tuple[Webhook, ...]:
    return _tuple_of("webhooks", Webhook, value)


def _pipeline(_: object, __: object, value: Pipeline) -> None:
    if not isinstance(value, Pipeline):
        raise ValidationError("pipeline", f"expected a Pipeline, got {shown(value)}")


# --- configuration ------------------------------------------------------------------


MAX_ARTIFACT_PART: Final = 256
"""The longest ``group``, ``name`` or ``version`` an artifact takes, in characters:
room for any registry's coordinates, and a bound on what CI's input makes flowfsm
store, index and send in every payload."""


def _artifact_part(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    _nonblank(instance, attribute, value)
    length = len(cast(str, value))  # a string: _nonblank checked it
    if length > MAX_ARTIFACT_PART:
        raise ValidationError(attribute.name, f"is {length} characters long; at most {MAX_ARTIFACT_PART} are allowed")


@attrs.frozen(weakref_slot=False, repr=False)
class Artifact:
    """What CI published. ``key`` (``group:name``) selects services; ``id`` adds the
    version and, with the service id, identifies a flow."""

    __repr__ = attrs_repr

    group: str = attrs.field(validator=_artifact_part)
    name: str = attrs.field(validator=_artifact_part)
    version: str = attrs.field(validator=_artifact_part)

    @property
    def key(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def id(self) -> str:
        return f"{self.group}:{self.name}:{self.version}"

    @classmethod
    def parse(cls, text: str) -> Artifact:
        """``"group:name:version"`` → Artifact (for command lines and logs)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValidationError("artifact", f"expected GROUP:NAME:VERSION, got {shown(text)}")
        try:
            return cls(*parts)
        except ValidationError as e:
            raise ValidationError(f"artifact.{e.field}", e.message) from None


def _deploy(value: object) -> dt.timedelta | None:
    return None if value is None else parse_duration(value, "deploy")


def _verify(value: object) -> dt.timedelta | None:
    return None if value is None else parse_duration(value, "verify")


def _soak(value: object) -> dt.timedelta | None:
    return None if value is None else parse_duration(value, "soak")


def _backoff(value: object) -> dt.timedelta | None:
    return None if value is None else parse_duration(value, "backoff")


MAX_ATTEMPTS: Final = 100
"""The most attempts a retry policy may give one promotion or deployment."""


def _attempts(_: object, __: object, value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_ATTEMPTS:
        raise ValidationError("attempts", f"must be a whole number from 1 to {MAX_ATTEMPTS}, got {shown(value)}")


def _then(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    _nonblank(_, attribute, value)
    if value == FailureStrategy.RETRY.value:
        raise ValidationError("then", "what follows the last attempt cannot be RETRY again")


@attrs.frozen(weakref_slot=False, repr=False)
class RetryPolicy:
    """``RETRY``'s settings: ``attempts`` in all (the first included), the ``backoff``
    to wait before each retry (None: retry at once), and the strategy that ``then``
    decides a failure of the last attempt (``STOP`` by default)."""

    __repr__ = attrs_repr

    attempts: int = attrs.field(default=3, validator=_attempts)
    backoff: dt.timedelta | None = attrs.field(default=None, converter=_backoff)
    then: str = attrs.field(default="STOP", converter=_strategy_name, validator=_then)


_DEFAULT_RETRY: Final = RetryPolicy()


def _retry(value: RetryPolicy | None) -> RetryPolicy | None:
    if value is None or isinstance(value, RetryPolicy):
        return value
    raise ValidationError("retry", f"expected a RetryPolicy, got {shown(value)}")


def _optional_strategy(_: object, attribute: attrs.Attribute[str], value: str | None) -> None:
    if value is not None:
        _nonblank(_, attribute, value)


def _optional_strategy_name(value: str | None) -> str | None:
    return None if value is None else _strategy_name(value)


@attrs.frozen(weakref_slot=False, repr=False)
class Timeouts:
    """How long an environment's deployment may take (see ``docs/time.md``):
    ``deploy`` from started to completed, ``verify`` from completed until every
    promotion is decided. Each is a duration (``"30m"``, ``"PT1H"``) or None (no limit)."""

    __repr__ = attrs_repr

    deploy: dt.timedelta | None = attrs.field(default=None, converter=_deploy)
    verify: dt.timedelta | None = attrs.field(default=None, converter=_verify)


def _timeouts(value: Timeouts | None) -> Timeouts | None:
    if value is None or isinstance(value, Timeouts):
        return value
    raise ValidationError("timeouts", f"expected Timeouts, got {shown(value)}")


def _expiry(value: object) -> dt.timedelta | None:
    return None if value is None else parse_duration(value, "expiry")


MAX_APPROVALS: Final = 100
"""The most approvals an environment may require."""


def _required(_: object, __: object, value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_APPROVALS:
        raise ValidationError("required", f"must be a whole number from 1 to {MAX_APPROVALS}, got {shown(value)}")


def _flag(_: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if type(value) is not bool:  # "false" would read as true
        raise ValidationError(attribute.name, f"must be true or false (a bool), got {shown(value)}")


def _approvers(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):  # not its letters, nor its keys
        raise ValidationError("approvers", f"expected a list of names and group:NAME, got {shown(value)}")
    approvers = tuple(value)
    if not approvers:
        raise ValidationError("approvers", "name at least one person or group:NAME who may approve")
    for i, approver in enumerate(approvers):
        if not isinstance(approver, str) or not approver.strip() or approver.strip() == GROUP_PREFIX:
            raise ValidationError(f"approvers[{i}]", f"must be a name or group:NAME, got {shown(approver)}")
        problem = text_problem(approver)
        if problem:
            raise ValidationError(f"approvers[{i}]", problem)
    return approvers


GROUP_PREFIX: Final = "group:"
"""How an approver names a group rather than a person (``group:release-managers``)."""


def same_name(name: str) -> str:
    """The form in which approvers' names are compared, people's and groups' alike:
    NFKC, case-folded, without invisible format characters (zero-width, bidi) or
    surrounding space. Two spellings a reader takes for one name are one person, so
    ``Alice`` cannot add a second approval to ``alice``'s, nor approve ``alice``'s
    own artifact. Names are stored as given; only comparisons use this form."""
    if name.isascii():  # the usual name: no compatibility forms, no format characters
        return name.lower().strip()
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return "".join([c for c in folded if unicodedata.category(c) != "Cf"]).strip()


def group_name(group: str) -> str:
    """A group as passed by the embedding service, compared as ``same_name``; its
    ``group:`` prefix, if it copied the catalog's spelling, is dropped."""
    return same_name(group.removeprefix(GROUP_PREFIX))


@attrs.frozen(weakref_slot=False, repr=False)
class ApprovalPolicy:
    """An environment's approval gate (SPEC §11): ``required`` approvals, each from a
    different person among ``approvers`` (people, or ``group:NAME``); the artifact's
    author (``ArtifactCreated(..., actor=...)``) may approve only if
    ``allow_author``; an ``expiry`` (None: none) after which a request still open
    expires, a failure for the failure strategy. flowfsm authorizes; the embedding
    service authenticates (it vouches for the actor and the groups it passes)."""

    __repr__ = attrs_repr

    approvers: tuple[str, ...] = attrs.field(converter=_approvers)
    required: int = attrs.field(default=1, validator=_required)
    allow_author: bool = attrs.field(default=False, validator=_flag)
    expiry: dt.timedelta | None = attrs.field(default=None, converter=_expiry)

    def __attrs_post_init__(self) -> None:
        people = [a for a in self.approvers if not a.startswith(GROUP_PREFIX)]
        seen: set[tuple[bool, str]] = set()
        for i, approver in enumerate(self.approvers):
            name = approver.removeprefix(GROUP_PREFIX)
            if name != name.strip():
                raise ValidationError(f"approvers[{i}]", f"must not begin or end with a space, got {shown(approver)}")
            key = (approver.startswith(GROUP_PREFIX), same_name(name))
            if not key[1]:  # nothing but invisible characters
                raise ValidationError(f"approvers[{i}]", f"must be a name or group:NAME, got {shown(approver)}")
            if key in seen:  # Alice and alice are one person
                raise ValidationError(f"approvers[{i}]", f"{shown(approver)} is listed twice")
            seen.add(key)
        if len(people) == len(self.approvers) and self.required > len(people):
            # Only people are listed: more approvals than people could never be given.
            raise ValidationError(
                "required", f"{self.required} approvals can never come from the {len(people)} people listed"
            )

    def refusal(self, actor: str, groups: Iterable[str], author: str | None) -> str | None:
        """Why ``actor`` (a member of ``groups``) may not approve, or None if they may.
        Names compare as ``same_name``; a person is matched against the people
        listed, never against a ``group:`` entry."""
        who = same_name(actor)
        if author is not None and who == same_name(author) and not self.allow_author:
            return "the artifact's author may not approve it"
        people, teams = set[str](), set[str]()
        for approver in self.approvers:
            if approver.startswith(GROUP_PREFIX):
                teams.add(same_name(approver.removeprefix(GROUP_PREFIX)))
            else:
                people.add(same_name(approver))
        if who in people or any(group_name(g) in teams for g in groups):
            return None
        return "not among the approvers of this environment"


def approved(actor: str, approvals: Iterable[str]) -> bool:
    """Whether ``actor`` is among ``approvals`` (who approved a deployment), as
    ``same_name`` compares: one approval per person, however spelled."""
    who = same_name(actor)
    return any(same_name(a) == who for a in approvals)


def _approval_policy(value: ApprovalPolicy | None) -> ApprovalPolicy | None:
    if value is None or isinstance(value, ApprovalPolicy):
        return value
    raise ValidationError("approvals", f"expected an ApprovalPolicy, got {shown(value)}")


@attrs.frozen(weakref_slot=False, repr=False)
class Environment:
    """One stage of a pipeline and the promotion checks it must pass; optionally
    its ``timeouts`` and its ``soak`` (how long a completed deployment waits before
    it succeeds, however soon its promotions pass)."""

    __repr__ = attrs_repr

    name: str = attrs.field(validator=_nonblank)
    promotions: tuple[str, ...] = attrs.field(default=(), converter=_promotion_names)
    timeouts: Timeouts | None = attrs.field(default=None, converter=_timeouts)
    soak: dt.timedelta | None = attrs.field(default=None, converter=_soak)
    failure_strategy: str | None = attrs.field(
        default=None, converter=_optional_strategy_name, validator=_optional_strategy
    )
    """The service's failure strategy, overridden here (None: the service's)."""
    retry: RetryPolicy | None = attrs.field(default=None, converter=_retry)
    """The service's retry policy, overridden here (None: the service's)."""
    approvals: ApprovalPolicy | None = attrs.field(default=None, converter=_approval_policy)
    """The approvals a deployment here needs before it is announced (None: none)."""

    def timer(self, kind: TimerKind) -> dt.timedelta | None:
        """The duration of the environment's timer of ``kind``, or None (not set;
        a retry's backoff is its failure policy's, not the environment's)."""
        if kind is TimerKind.SOAK:
            return self.soak
        if kind is TimerKind.RETRY or kind is TimerKind.FREEZE:  # a freeze's timer is due when it ends
            return None
        if kind is TimerKind.APPROVAL:
            return self.approvals.expiry if self.approvals is not None else None
        timeouts = self.timeouts
        if timeouts is None:
            return None
        return timeouts.deploy if kind is TimerKind.DEPLOY else timeouts.verify

    def __attrs_post_init__(self) -> None:
        for i, promotion in enumerate(self.promotions):
            if not isinstance(promotion, str) or not promotion.strip():
                raise ValidationError(f"promotions[{i}]", f"must be a non-blank string, got {shown(promotion)}")
            problem = text_problem(promotion)
            if problem:
                raise ValidationError(f"promotions[{i}]", problem)
        _unique("promotions", self.promotions, "promotion")


@attrs.frozen(weakref_slot=False, repr=False)
class Pipeline:
    __repr__ = attrs_repr

    name: str = attrs.field(validator=_nonblank)
    environments: tuple[Environment, ...] = attrs.field(converter=_environments)
    _by_name: Mapping[str, Environment] = attrs.field(init=False, repr=False, eq=False, alias="_by_name")
    timed: bool = attrs.field(init=False, repr=False, eq=False)
    """Whether any environment has a timeout, a soak or an approval expiry: only
    then do triggers read and set timers."""

    def __attrs_post_init__(self) -> None:
        if not self.environments:
            raise ValidationError("environments", "a pipeline needs at least one environment")
        _unique("environments", (e.name for e in self.environments), "environment")
        object.__setattr__(self, "_by_name", {e.name: e for e in self.environments})
        object.__setattr__(
            self, "timed", any(e.timeouts or e.soak or e.timer(TimerKind.APPROVAL) for e in self.environments)
        )

    def environment(self, name: str) -> Environment | None:
        """The environment called ``name``, or None."""
        return self._by_name.get(name)


@attrs.frozen(weakref_slot=False, repr=False)
class ActionRef:
    """An action as a HookRequest names it: everything but the secret, and whether it
    had one (``signed``), so a request made signed is never sent unsigned."""

    __repr__ = attrs_repr

    name: str
    url: str | None = None
    signed: bool = False


_URL_EXPECTED: Final = "expected an http:// or https:// URL with a host"
MAX_URL_LENGTH: Final = 2048
"""The longest action URL accepted (a webhook URL is far shorter; many servers refuse longer)."""
_DNS_LABEL: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _url(_: object, __: object, value: str | None) -> None:
    """A URL the HTTP emitter can call as it is: http(s), a well-formed host (a DNS
    name, an IPv4 address or a bracketed IPv6 one), a port in 1-65535, no
    credentials (they would show wherever the URL does: the action's secret signs
    instead), no whitespace or control characters."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError("url", f"{_URL_EXPECTED}, got {shown(value)}")
    if len(value) > MAX_URL_LENGTH:
        raise ValidationError("url", f"is longer than {MAX_URL_LENGTH} characters")
    odd = next((i for i, c in enumerate(value) if not c.isprintable() or c.isspace()), None)
    if odd is not None:  # the value is not shown: what follows a space may be anything, a secret too
        raise ValidationError("url", f"must not contain whitespace or control characters (one at character {odd + 1})")
    scheme, sep, rest = value.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not sep or scheme.lower() not in ("http", "https") or not netloc:
        raise ValidationError("url", f"{_URL_EXPECTED}, got {shown(value)}")
    if "@" in netloc:  # the value is not shown: it holds a password
        raise ValidationError("url", "must not contain credentials (user:password@); the action's secret signs")
    if netloc.startswith("["):  # an IPv6 address, then perhaps a port
        host, bracket, port = netloc.partition("]")
        host += bracket
        if not bracket or (port and not port.startswith(":")):
            raise ValidationError("url", f"expected [IPv6 address] or [IPv6 address]:port, got {shown(netloc)}")
        sep_port, port = port[:1], port[1:]
    else:
        host, sep_port, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if sep_port and not port:
        raise ValidationError("url", "port must be a number from 1 to 65535, got nothing after ':'")
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ValidationError("url", f"port must be a number from 1 to 65535, got {shown(port)}")
    if not _is_host(host):
        raise ValidationError("url", f"{shown(host)} is not a host name or an IP address (IPv6 in brackets)")


def _is_host(host: str) -> bool:
    import ipaddress  # only catalogs with URLs need it

    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    name = host.lower().removesuffix(".")
    if not name.isascii() or any(label.startswith("xn--") for label in name.split(".")):
        ascii_name = _idna(name)
        if ascii_name is None:
            return False
        name = ascii_name
    labels = name.split(".")
    last = labels[-1]
    if last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])):
        # URL parsers read such a host as an IPv4 address in one of its odd forms
        # (2130706433, 0x7f.1, 127.1, 0177.0.0.1), which filters miss: only the plain
        # dotted quad is accepted.
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
        return True
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def _idna(name: str) -> str | None:
    """``name`` in ASCII as the HTTP client will send it, or None if it cannot be.
    The ``idna`` package (IDNA 2008, which httpx uses) when installed; else Python's
    codec, refusing a name it would silently change (full-width letters), as httpx does.
    An ASCII name with an ``xn--`` label is checked too: it must be a valid A-label."""
    try:
        import idna
    except ImportError:  # pragma: no cover - installed with the http extra, as in the tests
        if unicodedata.normalize("NFKC", name) != name:
            return None
        try:
            return name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    try:
        return str(idna.encode(name).decode("ascii"))
    except idna.IDNAError:
        return None


_SECRET_FORMAT: Final = "expected whsec_ and base64 of at least 16 bytes, space-separated"
_SECRET_FILE_LIMIT: Final = 64 * 1024
_ENV_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def _secret_problem(value: str) -> str | None:
    """What is wrong with a secret's text, never showing it; None if nothing."""
    import base64  # only catalogs with secrets need it

    parts = value.split()
    for part in parts:
        try:
            ok = part.startswith("whsec_") and len(base64.b64decode(part[6:], validate=True)) >= 16
        except ValueError:
            ok = False
        if not ok:
            return _SECRET_FORMAT
    return None if parts else _SECRET_FORMAT


def _resolve_secret(value: str | Mapping[str, str] | None) -> str | None:
    """A secret as written, or the one a reference names: ``{"env": "NAME"}`` (an
    environment variable) or ``{"file": "PATH"}`` (a file's text, outer whitespace
    removed), read now. Errors name the reference, never a secret."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, Mapping):  # the value is not shown: it may be the secret itself
        raise ValidationError(
            "secret", f"expected a string or a reference (env: NAME or file: PATH), got a {type(value).__name__}"
        )
    if len(value) != 1 or next(iter(value)) not in ("env", "file"):
        # other keys are counted, not shown: `secret: {hunter2}` in YAML is a key
        known = [repr(key) for key in value if key in ("env", "file")]
        others = len(value) - len(known)
        got = ", ".join(known + ([f"{others} other key{'s' * (others > 1)}"] if others else [])) or "none"
        raise ValidationError("secret", f"a reference has one key, 'env' or 'file', got {got}")
    ((kind, name),) = value.items()
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise ValidationError("secret", f"{kind!r} must name a {'variable' if kind == 'env' else 'file'}")
    if kind == "env":  # a name in the usual shape is shown; anything else may be a secret put there
        where = f"environment variable {shown(name) if _ENV_NAME.fullmatch(name) else '<redacted>'}"
    else:
        where = f"secret file {shown(name)}"
    text = os.environ.get(name) if kind == "env" else _read_secret_file(name, where)
    if text is None:
        raise ValidationError("secret", f"{where} is not set")
    text = text.strip()
    if not text:
        raise ValidationError("secret", f"{where} is empty")
    problem = _secret_problem(text)
    if problem:
        raise ValidationError("secret", f"{where}: {problem}")
    return text


def read_regular_file(path: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the regular file at ``path`` (so a caller can
    tell a file over ``limit``), a leading UTF-8 byte order mark removed. Anything
    else (a FIFO, a device such as ``/dev/zero``, a socket, a folder) raises
    ``OSError`` before a byte is read; the open itself never blocks (``O_NONBLOCK``:
    a FIFO without a writer would wait forever). One rule for catalog and secret files."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
            raise OSError(errno.EINVAL, f"not a regular file ({kind})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as file:
            fd = -1  # the file object owns it now
            data = file.read(limit + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    return data.removeprefix(codecs.BOM_UTF8)


def _read_secret_file(path: str, where: str) -> str:
    try:
        data = read_regular_file(path, _SECRET_FILE_LIMIT)
    except OSError as e:
        raise ValidationError("secret", f"cannot read {where}: {e.strerror or type(e).__name__}") from None
    if len(data) > _SECRET_FILE_LIMIT:
        raise ValidationError("secret", f"{where} is larger than {_SECRET_FILE_LIMIT // 1024} KiB")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValidationError("secret", f"{where} is not UTF-8 text") from None


def _secret(_: object, __: object, value: str | None) -> None:
    if value is None:
        return
    problem = _secret_problem(value) if isinstance(value, str) else _SECRET_FORMAT
    if problem:  # never echo a secret, even a malformed one
        raise ValidationError("secret", problem)


@attrs.frozen(weakref_slot=False, repr=False)
class Action:
    """What a webhook calls. ``secret`` signs HTTP deliveries (Standard Webhooks
    ``whsec_...``; several, space-separated, while rotating) and is never shown."""

    __repr__ = attrs_repr

    name: str = attrs.field(validator=_nonblank)
    url: str | None = attrs.field(default=None, validator=_url)
    secret: str | None = attrs.field(default=None, repr=False, converter=_resolve_secret, validator=_secret)

    @property
    def ref(self) -> ActionRef:
        return ActionRef(self.name, self.url, self.secret is not None)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The active signing secrets (one, or several while rotating)."""
        return tuple(self.secret.split()) if self.secret else ()


@attrs.frozen(weakref_slot=False, repr=False)
class Webhook:
    __repr__ = attrs_repr

    id: str = attrs.field(validator=_nonblank)
    event: HookEvent = attrs.field(converter=_hook_event)
    actions: tuple[Action, ...] = attrs.field(converter=_actions)

    def __attrs_post_init__(self) -> None:
        if not self.actions:
            raise ValidationError("actions", f"webhook {shown(self.id)} needs at least one action")
        _unique("actions", (a.name for a in self.actions), "action")


@attrs.frozen(weakref_slot=False, repr=False)
class ServiceRef:
    """A service as payloads show it: no webhooks, so no secrets."""

    __repr__ = attrs_repr

    id: str
    pipeline: str
    failure_strategy: str


def _artifact_keys(_: object, __: object, value: tuple[str, ...]) -> None:
    for i, key in enumerate(value):
        group, sep, name = key.partition(":") if isinstance(key, str) else ("", "", "")
        if not (sep and group.strip() and name.strip()) or ":" in name:
            raise ValidationError(f"artifacts[{i}]", f"expected GROUP:NAME, got {shown(key)}")


def _concurrency(value: object) -> Concurrency:
    if isinstance(value, Concurrency):
        return value
    try:
        return Concurrency(value)  # type: ignore[arg-type]  # any other value is refused below
    except ValueError:
        allowed = ", ".join(repr(c.value) for c in Concurrency)
        raise ValidationError("concurrency", f"must be one of {allowed}, got {shown(value)}") from None


def _freeze_windows(value: Iterable[FreezeWindow]) -> tuple[FreezeWindow, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValidationError("freezes", f"expected a list of FreezeWindow, got {shown(value)}")
    windows = tuple(value)
    for i, window in enumerate(windows):
        if not isinstance(window, FreezeWindow):
            raise ValidationError(f"freezes[{i}]", f"expected a FreezeWindow, got {shown(window)}")
    return windows


@attrs.frozen(weakref_slot=False, repr=False)
class Service:
    """A consumer of artifacts: what it consumes, where it deploys, who to tell."""

    __repr__ = attrs_repr

    id: str = attrs.field(validator=_nonblank)
    artifacts: tuple[str, ...] = attrs.field(converter=_artifacts, validator=_artifact_keys)
    pipeline: Pipeline = attrs.field(validator=_pipeline)
    failure_strategy: str = attrs.field(
        default=FailureStrategy.STOP.value, converter=_strategy_name, validator=_nonblank
    )
    webhooks: tuple[Webhook, ...] = attrs.field(default=(), converter=_webhooks)
    retry: RetryPolicy | None = attrs.field(default=None, converter=_retry)
    """``RETRY``'s settings (None: ``RetryPolicy()``), overridable per environment."""
    concurrency: Concurrency = attrs.field(default=Concurrency.PARALLEL, converter=_concurrency)
    """How many of the service's flows may be active in one environment at once."""
    freezes: tuple[FreezeWindow, ...] = attrs.field(default=(), kw_only=True, converter=_freeze_windows)
    """The freeze windows covering some of its environments (``Catalog(freezes=...)``
    gives each service those that cover it); not part of its JSON form: a catalog
    file declares its windows once, at the top."""
    # Derived once: the engine asks "who subscribes to this event?" on every step.
    _subscribers: Mapping[HookEvent, tuple[tuple[str, ActionRef], ...]] = attrs.field(
        init=False, repr=False, eq=False, alias="_subscribers"
    )
    _ref: ServiceRef = attrs.field(init=False, repr=False, eq=False, alias="_ref")

    def __attrs_post_init__(self) -> None:
        _unique("webhooks", (w.id for w in self.webhooks), "webhook")
        subscribers: dict[HookEvent, list[tuple[str, ActionRef]]] = {}
        for webhook in self.webhooks:
            targets = subscribers.setdefault(webhook.event, [])
            targets.extend((webhook.id, action.ref) for action in webhook.actions)
        object.__setattr__(self, "_subscribers", {e: tuple(t) for e, t in subscribers.items()})
        object.__setattr__(self, "_ref", ServiceRef(self.id, self.pipeline.name, self.failure_strategy))

    def policy(self, environment: str) -> tuple[str, RetryPolicy]:
        """(the failure strategy, the retry policy) of the environment ``environment``:
        its own where it sets them, else the service's."""
        env = self.pipeline.environment(environment)
        strategy = (env and env.failure_strategy) or self.failure_strategy
        return strategy, (env and env.retry) or self.retry or _DEFAULT_RETRY

    def subscribers(self, event: HookEvent) -> tuple[tuple[str, ActionRef], ...]:
        """(webhook id, action) pairs for ``event``, in declared order."""
        return self._subscribers.get(event, ())

    @property
    def ref(self) -> ServiceRef:
        return self._ref

    @property
    def timed(self) -> bool:
        """Whether its triggers read the time: its pipeline has timers, or a freeze
        window covers it (the gates ask whether it is frozen now)."""
        return self.pipeline.timed or bool(self.freezes)

    def freeze(self, environment: str, at: dt.datetime) -> Freeze | None:
        """The freeze in force in its environment ``environment`` at ``at``, or None."""
        if not self.freezes:
            return None
        return frozen([w for w in self.freezes if w.covers(self.id, environment)], at)

    def action(self, webhook_id: str, action_name: str) -> Action | None:
        """The configured action (with its secret), for emitters that sign."""
        for webhook in self.webhooks:
            if webhook.id == webhook_id:
                for action in webhook.actions:
                    if action.name == action_name:
                        return action
        return None


# --- the stateful entities ----------------------------------------------------------


def _promotions(value: Iterable[Promotion]) -> tuple[Promotion, ...]:
    return tuple(value)


def _deployments(value: Iterable[Deployment]) -> tuple[Deployment, ...]:
    return tuple(value)


@attrs.frozen(weakref_slot=False, repr=False)
class Promotion:
    __repr__ = attrs_repr

    id: str
    name: str
    state: PromotionState = PromotionState.PENDING
    attempt: int = 1
    """Which attempt the promotion is at (1-based; a retry adds one)."""


def _approved(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(weakref_slot=False, repr=False)
class Deployment:
    """One environment of one flow; ``environment`` is the environment's name."""

    __repr__ = attrs_repr

    id: str
    environment: str
    promotions: tuple[Promotion, ...] = attrs.field(default=(), converter=_promotions)
    state: DeploymentState = DeploymentState.NOT_STARTED
    attempt: int = 1
    """Which attempt the deployment is at (1-based; a retry adds one)."""
    approvals: tuple[str, ...] = attrs.field(default=(), converter=_approved)
    """Who approved it, in order: one person each (``ApprovalPolicy``)."""
    override: str | None = None
    """Who let it through a freeze window (``OverrideFreeze``), if anyone did."""

    def promotion(self, promotion_id: str) -> Promotion | None:
        for promotion in self.promotions:
            if promotion.id == promotion_id:
                return promotion
        return None


def _failed_ids(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(weakref_slot=False, repr=False)
class Pause:
    """Why a flow is paused: who paused it (``flowfsm`` for a failure policy), why,
    the failed items a policy waits on (each must be retried or skipped: until then
    ``ResumeFlow`` is refused), and whether an announcement (``deployment-created``)
    is held for the resume."""

    __repr__ = attrs_repr

    actor: str
    reason: str | None = None
    failed: tuple[str, ...] = attrs.field(default=(), converter=_failed_ids)
    held: bool = False


@attrs.frozen(weakref_slot=False, repr=False)
class Rollback:
    """What ``ROLLBACK`` asked for: the environment, and the artifact to return to
    (None: no other artifact of the service succeeded there)."""

    __repr__ = attrs_repr

    environment: str
    artifact: Artifact | None = None


@attrs.frozen(weakref_slot=False, repr=False)
class Flow:
    """One artifact travelling through one service's pipeline: the aggregate.

    ``version`` counts saves, for optimistic concurrency; a flow not yet stored
    has version 0. Like its deployments and promotions, a flow never changes: the
    engine stores a new version (``attrs.evolve`` makes one by hand).
    """

    __repr__ = attrs_repr

    id: str
    artifact: Artifact
    service_id: str
    deployments: tuple[Deployment, ...] = attrs.field(converter=_deployments)
    state: FlowState = FlowState.IN_PROGRESS
    version: int = 0
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    pause: Pause | None = None
    """Why the flow is paused (only while it is)."""
    rollback: Rollback | None = None
    """The rollback its failure policy requested, if any."""
    author: str | None = None
    """Who published the artifact (``ArtifactCreated(..., actor=...)``), if told:
    an approval gate refuses them unless it allows the author (``ApprovalPolicy``)."""

    @property
    def key(self) -> tuple[str, str]:
        """The flow's unique key: (artifact id, service id)."""
        return (self.artifact.id, self.service_id)

    def current_deployment(self) -> Deployment | None:
        """The first deployment, in pipeline order, that has not succeeded."""
        for deployment in self.deployments:
            if deployment.state is not DeploymentState.SUCCESS:
                return deployment
        return None

    def deployment(self, deployment_id: str) -> Deployment | None:
        for deployment in self.deployments:
            if deployment.id == deployment_id:
                return deployment
        return None


# --- trusted constructors (private) -------------------------------------------------
# For values that are already valid and of the right types: the next versions the
# engine makes and the rows flowfsm stored itself, several a trigger. They fill the
# slots directly, skipping the converters and the frozen ``__setattr__`` of attrs'
# ``__init__`` (a quarter of its cost); a property test holds them equal to it.
# Private: a third-party backend builds its entities with the classes themselves,
# whose checks catch what its own decoding gets wrong.

_new = object.__new__


def _slots(cls: type, *names: str) -> tuple[Callable[[Any, Any], None], ...]:
    """The setters of ``cls``'s slots ``names``, which must be all its fields, in order."""
    fields = tuple(f.name for f in attrs.fields(cls))
    if names != fields:  # a field added to the class and not here would be left unset
        raise TypeError(f"{cls.__name__} has the fields {fields}, not {names}")
    return tuple(getattr(cls, name).__set__ for name in names)


_a_group, _a_name, _a_version = _slots(Artifact, "group", "name", "version")
_p_id, _p_name, _p_state, _p_attempt = _slots(Promotion, "id", "name", "state", "attempt")
_d_id, _d_environment, _d_promotions, _d_state, _d_attempt, _d_approvals, _d_override = _slots(
    Deployment, "id", "environment", "promotions", "state", "attempt", "approvals", "override"
)
(
    _f_id,
    _f_artifact,
    _f_service_id,
    _f_deployments,
    _f_state,
    _f_version,
    _f_created,
    _f_updated,
    _f_pause,
    _f_rollback,
    _f_author,
) = _slots(
    Flow,
    "id",
    "artifact",
    "service_id",
    "deployments",
    "state",
    "version",
    "created_at",
    "updated_at",
    "pause",
    "rollback",
    "author",
)


def _make_artifact(group: str, name: str, version: str) -> Artifact:
    """An artifact as a backend stored it: unchecked, so that one stored before a
    check was added (a longer part than ``MAX_ARTIFACT_PART``) still reads."""
    artifact = _new(Artifact)
    _a_group(artifact, group)
    _a_name(artifact, name)
    _a_version(artifact, version)
    return artifact


def _make_promotion(id: str, name: str, state: PromotionState, attempt: int = 1) -> Promotion:
    promotion = _new(Promotion)
    _p_id(promotion, id)
    _p_name(promotion, name)
    _p_state(promotion, state)
    _p_attempt(promotion, attempt)
    return promotion


def _make_deployment(  # noqa: PLR0917 - positional, one a field, like the class's own __init__
    id: str,
    environment: str,
    promotions: tuple[Promotion, ...],
    state: DeploymentState,
    attempt: int = 1,
    approvals: tuple[str, ...] = (),
    override: str | None = None,
) -> Deployment:
    deployment = _new(Deployment)
    _d_id(deployment, id)
    _d_environment(deployment, environment)
    _d_promotions(deployment, promotions)
    _d_state(deployment, state)
    _d_attempt(deployment, attempt)
    _d_approvals(deployment, approvals)
    _d_override(deployment, override)
    return deployment


def _make_flow(  # noqa: PLR0917 - positional, one a field, like the class's own __init__
    id: str,
    artifact: Artifact,
    service_id: str,
    deployments: tuple[Deployment, ...],
    state: FlowState,
    version: int,
    created_at: dt.datetime | None,
    updated_at: dt.datetime | None,
    pause: Pause | None = None,
    rollback: Rollback | None = None,
    author: str | None = None,
) -> Flow:
    flow = _new(Flow)
    _f_id(flow, id)
    _f_artifact(flow, artifact)
    _f_service_id(flow, service_id)
    _f_deployments(flow, deployments)
    _f_state(flow, state)
    _f_version(flow, version)
    _f_created(flow, created_at)
    _f_updated(flow, updated_at)
    _f_pause(flow, pause)
    _f_rollback(flow, rollback)
    _f_author(flow, author)
    return flow


# --- results and hook requests ------------------------------------------------------


class FrozenDict(dict[str, Any]):
    """A read-only ``dict``: a result's details, which every HookRequest of its event
    shares, so that no emitter can change what its siblings send. A ``dict`` still,
    so it equals one, and ``json`` and ``cattrs`` write it as one."""

    __slots__ = ()

    def _refuse(self, *_: object, **__: object) -> NoReturn:
        raise TypeError("details are read-only: make a new PromotionResult to change them")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, Any]]]:
        return FrozenDict, (dict(self),)


class FrozenList(list[Any]):
    """A read-only ``list``, the arrays inside a result's details (see ``FrozenDict``)."""

    __slots__ = ()

    def _refuse(self, *_: object, **__: object) -> NoReturn:
        raise TypeError("details are read-only: make a new PromotionResult to change them")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse

    def __reduce__(self) -> tuple[type[FrozenList], tuple[list[Any]]]:
        return FrozenList, (list(self),)


_NO_DETAILS: Final = FrozenDict()


def _frozen(value: Any) -> Any:
    """``value`` (checked JSON, so at most ``MAX_JSON_DEPTH`` deep) with every object
    and array read-only; strings, numbers, booleans and null are already."""
    if isinstance(value, dict):
        return FrozenDict({key: _frozen(inner) for key, inner in value.items()})
    if isinstance(value, list | tuple):
        return FrozenList([_frozen(inner) for inner in value])
    return value


def _details_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return _NO_DETAILS
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ValidationError("details", f"expected a mapping (a JSON object), got {shown(value)}")
    details = dict(value)  # a copy: what the caller does to its own dict later changes nothing here
    check_json("details", details)
    return _frozen(details)  # type: ignore[no-any-return]


@attrs.frozen(weakref_slot=False, repr=False)
class PromotionResult:
    """One check's verdict for a promotion; ``details`` is free-form JSON."""

    __repr__ = attrs_repr

    promotion_id: str = attrs.field(validator=_nonblank)
    result_status: ResultStatus = attrs.field(converter=_result_status)
    details: Mapping[str, Any] = attrs.field(default=None, converter=_details_dict, hash=False)
    attempt: int | None = attrs.field(default=None, kw_only=True)
    """The promotion attempt the result reports, if the checker says: one for an
    earlier attempt than the promotion's current one is stale (a duplicate).
    ``PromotionCompleted`` checks it (a whole number from 1), with the rest of its
    results: no validator call on every result that names none."""


@attrs.frozen(weakref_slot=False, repr=False)
class DeploymentPayload:
    """Payload of deployment-* and flow-* events: A, D, S, E of the contract."""

    __repr__ = attrs_repr

    artifact: Artifact
    deployment: Deployment
    service: ServiceRef
    environment: Environment


@attrs.frozen(weakref_slot=False, repr=False)
class FailurePayload(DeploymentPayload):
    """The payload of ``deployment-failed`` and ``flow-failed`` when the trigger that
    failed them said why (the CD system's ``DeploymentFailed.reason``): a
    ``DeploymentPayload`` with that ``reason``. Its own class, so that the payloads
    of every other event keep their form and their cost."""

    __repr__ = attrs_repr

    reason: str


@attrs.frozen(weakref_slot=False, repr=False)
class TimeoutPayload(FailurePayload):
    """The payload of the deployment-* and flow-* events a timeout caused: a
    ``FailurePayload`` whose ``reason`` is ``timeout``."""

    __repr__ = attrs_repr

    reason: str = "timeout"


@attrs.frozen(weakref_slot=False, repr=False)
class HeldPayload(DeploymentPayload):
    """The payload of ``deployment-held``: a ``DeploymentPayload`` naming the freeze
    ``window`` that holds the deployment and when the freeze ends (``until``, UTC):
    it is announced then."""

    __repr__ = attrs_repr

    window: str
    until: dt.datetime


@attrs.frozen(weakref_slot=False, repr=False)
class PromotionPayload:
    """Payload of promotion-* events: A, D, S, PR of the contract."""

    __repr__ = attrs_repr

    artifact: Artifact
    deployment: Deployment
    service: ServiceRef
    promotion_result: PromotionResult


@attrs.frozen(weakref_slot=False, repr=False)
class SteeringPayload(DeploymentPayload):
    """The payload of steering events (``flow-paused``, ``promotion-retried``, …): a
    ``DeploymentPayload`` that names who acted (``flowfsm`` for a failure policy or
    a timer) and why, and the promotion it is about, if any."""

    __repr__ = attrs_repr

    actor: str | None = None
    reason: str | None = None
    promotion: Promotion | None = None


@attrs.frozen(weakref_slot=False, repr=False)
class RollbackPayload(SteeringPayload):
    """The payload of ``rollback-requested``: the artifact to return to in the
    payload's environment (``rollback_to``; None: there is none)."""

    __repr__ = attrs_repr

    rollback_to: Artifact | None = None


Payload: TypeAlias = DeploymentPayload | PromotionPayload
"""(A ``FailurePayload``, ``TimeoutPayload``, ``SteeringPayload`` or ``RollbackPayload`` is a ``DeploymentPayload``.)"""


@attrs.define(weakref_slot=False, repr=False)
class HookRequest:
    """One call of one webhook action about one event, as handed to the emitter."""

    __repr__ = attrs_repr

    id: str
    flow_id: str
    webhook_id: str
    action: ActionRef
    event: HookEvent
    payload: Payload
    created_at: dt.datetime


class DeliveryState(enum.Enum):
    """Where a HookRequest is in the outbox."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"

    __hash__ = object.__hash__  # members are singletons; skip Enum's Python-level hash


@attrs.frozen(weakref_slot=False, repr=False)
class DeliveryAttempt:
    """One try at delivering a HookRequest: when, the answer (or the error), how long."""

    __repr__ = attrs_repr

    at: dt.datetime
    status_code: int | None = None
    error: str | None = None
    duration: float = 0.0


@attrs.define(weakref_slot=False, repr=False)
class HookRecord:
    """A HookRequest as the outbox keeps it, with its delivery log."""

    __repr__ = attrs_repr

    request: HookRequest
    state: DeliveryState = DeliveryState.PENDING
    delivered_at: dt.datetime | None = None
    attempts: tuple[DeliveryAttempt, ...] = ()


class TimerKind(enum.Enum):
    """What a timer is for: an environment's ``deploy`` or ``verify`` timeout, its
    ``soak``, or a failure policy's ``retry`` backoff."""

    DEPLOY = "deploy"
    VERIFY = "verify"
    SOAK = "soak"
    RETRY = "retry"
    """The backoff of ``RETRY``: when due, the deployment's failed items are retried."""
    APPROVAL = "approval"
    """An approval request's expiry: when due, a deployment still awaiting approval expires."""
    FREEZE = "freeze"
    """The end of the freeze window holding a deployment: when due, it is announced."""


@attrs.frozen(weakref_slot=False, repr=False)
class Timer:
    """A durable timer: stored with its flow, in the same transaction, it fires once
    ``due`` has passed (``flowfsm.scheduling``). It is about one deployment; its
    id says which and what for, so setting it again replaces it."""

    __repr__ = attrs_repr

    flow_id: str
    deployment_id: str
    kind: TimerKind
    due: dt.datetime

    @property
    def id(self) -> str:
        return timer_id(self.deployment_id, self.kind)


def timer_id(deployment_id: str, kind: TimerKind) -> str:
    """The id of the deployment's timer of ``kind``."""
    return f"{deployment_id}/{kind.value}"


# --- history ------------------------------------------------------------------------


@attrs.frozen(weakref_slot=False, repr=False)
class StateChange:
    """One state change a trigger made: which entity (``"flow"``, ``"deployment"``
    or ``"promotion"``), its id, and its state before and after, in the contract's
    spellings (``from_`` is None when the trigger created the entity; JSON ``from``)."""

    __repr__ = attrs_repr

    entity: str
    id: str
    from_: str | None
    to: str


def _frozen_json(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """``value``, JSON, read-only all the way down: ``_frozen``, with the strings that
    make up most of a trigger's JSON passed over without a call (once per trigger)."""
    if type(value) is FrozenDict:
        return value
    return FrozenDict({k: v if type(v) is str else _frozen_value(v) for k, v in value.items()})


def _frozen_value(value: Any) -> Any:
    if type(value) is dict:
        return FrozenDict({k: v if type(v) is str else _frozen_value(v) for k, v in value.items()})
    if type(value) is list:
        return FrozenList([v if type(v) is str else _frozen_value(v) for v in value])
    return _frozen(value)  # anything else: numbers, None, tuples, subclasses


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _changes(value: Iterable[StateChange]) -> tuple[StateChange, ...]:
    return tuple(value)


@attrs.frozen(weakref_slot=False, repr=False)
class HistoryEntry:
    """What one trigger did to one flow (SPEC §9), appended in the commit of the change.

    ``seq`` counts the flow's entries from 1; it is the flow's version after the
    change (a flow is created at version 1, and every change saves the next one).
    ``trigger`` is the trigger's JSON form (``flowfsm.converter.unstructure(trigger,
    Trigger)``, read-only); ``actor`` and ``reason`` are the trigger's (``flowfsm``
    for a timer); ``changes`` lists each state change, every promotion before its
    deployment and the deployments before the flow, the order in which a change
    spreads; ``hook_request_ids`` names the HookRequests the change emitted.
    """

    __repr__ = attrs_repr

    flow_id: str
    seq: int
    at: dt.datetime
    trigger: Mapping[str, Any] = attrs.field(converter=_frozen_json, hash=False)
    actor: str | None
    reason: str | None
    changes: Sequence[StateChange] = attrs.field(converter=_changes)
    hook_request_ids: tuple[str, ...] = attrs.field(converter=_strings)


_c_entity, _c_id, _c_from, _c_to = _slots(StateChange, "entity", "id", "from_", "to")
(_h_flow_id, _h_seq, _h_at, _h_trigger, _h_actor, _h_reason, _h_changes, _h_hook_request_ids) = _slots(
    HistoryEntry, "flow_id", "seq", "at", "trigger", "actor", "reason", "changes", "hook_request_ids"
)
_NO_TRIGGER: Final = FrozenDict()


def _make_state_change(entity: str, id: str, from_: str | None, to: str) -> StateChange:
    change = _new(StateChange)
    _c_entity(change, entity)
    _c_id(change, id)
    _c_from(change, from_)
    _c_to(change, to)
    return change


def _make_history_entry(
    flow_id: str, seq: int, at: dt.datetime, changes: Sequence[StateChange], hook_request_ids: tuple[str, ...]
) -> HistoryEntry:
    """A trusted constructor (see ``_make_flow``) for the engine's draft of an entry:
    the trigger's part comes from ``_attribute_history_entry`` before anyone sees it."""
    entry = _new(HistoryEntry)
    _h_flow_id(entry, flow_id)
    _h_seq(entry, seq)
    _h_at(entry, at)
    _h_trigger(entry, _NO_TRIGGER)
    _h_actor(entry, None)
    _h_reason(entry, None)
    _h_changes(entry, changes)
    _h_hook_request_ids(entry, hook_request_ids)
    return entry


def _attribute_history_entry(
    entry: HistoryEntry, trigger: Mapping[str, Any], actor: str | None, reason: str | None
) -> None:
    """Give an entry ``_make_history_entry`` drafted its trigger's JSON (read-only,
    shared by the entries of one trigger), actor and reason."""
    _h_trigger(entry, trigger)
    _h_actor(entry, actor)
    _h_reason(entry, reason)
