"""Random trigger sequences against a small reference model of the contract.

The reference below is written from SPEC §2-4, §8 (``DeploymentFailed``, steering:
pause, resume, abort, retries and skips with their attempts, and the ``STOP``,
``PAUSE``, ``RETRY`` and ``ROLLBACK`` failure policies, overridden per environment:
a rollback names the newest other artifact whose flow of the service succeeded in
the environment, or none) and §10
(timeouts and soak) alone, as plain lists of state names and times; it shares no
code with the engine. Time moves only when a rule moves the fake clock, and then a
scheduler fires what is due. After every step the engine's outcome, the
HookRequests it emitted and the stored flows must match it, and the invariants must
hold: a paused flow begins nothing new, a finished flow (aborted included) never
moves again, and a retry never loses the earlier attempt's record. History (§9):
every accepted trigger appends one entry to the flow it changed (a round of timers,
one per timer that acted), numbered on from 1, with the trigger, its actor and reason
(``flowfsm`` for a timer), the reference's state changes and exactly the HookRequests
it created for that flow; duplicates and refusals append nothing; no entry is ever
rewritten, and every failure stays recorded in the entry of the step that failed it.

``RETRY`` with a backoff sets the deployment's durable ``retry`` timer (a later failure
sets it again); when the scheduler fires it, the deployment's failed items with
attempts left are retried as ``flowfsm`` (a paused flow's promotions wait for the
resume, which leaves to the timer those whose backoff has not ended). Every round
fires all flows' due timers in one order (due time, then id).

Approvals (§11): an environment may require 1 or 2 approvals from bob or the ops
group (carol, erin), the author refused unless allowed, with an optional expiry;
people (dave is no approver) approve and reject, authors publish. Invariants: no
deployment of a gated environment is announced or begun before enough distinct,
allowed approvals of its current attempt; ``NotAuthorized`` changes nothing; a flow
that ends cancels the request it made (``approval-cancelled``).
Freeze windows (§11): a catalog may have one window, every two hours from a drawn
minute for a drawn duration (UTC), covering one environment; the reference says
whether an environment is frozen by arithmetic alone. A deployment announced while
its environment is frozen is held (``deployment-held``) until the window ends, when
the scheduler announces it; ``OverrideFreeze`` lets one attempt through. Invariants:
no ``deployment-created`` for an environment while it is frozen, unless overridden;
once the scheduler has run, no deployment of a flow in progress is held past the
window's end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flowfsm import (
    AbortFlow,
    Action,
    ApprovalGranted,
    ApprovalPolicy,
    ApprovalRejected,
    Artifact,
    ArtifactCreated,
    Catalog,
    Deployment,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentPayload,
    DeploymentStarted,
    Environment,
    Flow,
    FlowEngine,
    FlowFSMError,
    FreezeWindow,
    HistoryEntry,
    HookEvent,
    InvalidTransition,
    NotAuthorized,
    Outcome,
    OverrideFreeze,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionPayload,
    PromotionResult,
    ResultStatus,
    ResumeFlow,
    RetryDeployment,
    RetryPolicy,
    RetryPromotion,
    RollbackPayload,
    Service,
    SkipPromotion,
    StateChange,
    SteeringPayload,
    Trigger,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    Webhook,
)
from flowfsm.converter import unstructure
from flowfsm.emitters import RecordingEmitter
from flowfsm.model import TimeoutPayload, Timeouts, TimerKind
from flowfsm.protocols import Lanes, Repository
from flowfsm.repositories import InMemoryRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock, SequentialIds

E = HookEvent


@attrs.define
class RefFlow:
    """A flow as the contract describes it: states by position, ids as created."""

    id: str
    service: Service
    deployment_ids: list[str]
    promotion_ids: list[list[str]]
    deployments: list[str]
    promotions: list[list[str]]
    state: str = "inProgress"
    reported_failed: set[int] = attrs.field(factory=set)
    """Deployments the CD system reported failed, or that timed out before they
    completed (they never completed)."""
    started_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    completed_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    succeeded_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    timed_out: bool = False
    """A deploy or verify timeout failed the flow."""
    deployment_attempts: list[int] = attrs.field(factory=list)
    promotion_attempts: list[list[int]] = attrs.field(factory=list)
    verify_from: dict[int, dt.datetime] = attrs.field(factory=dict)
    """When each deployment's verify timeout began: its completion, or its latest promotion retry."""
    pause_actor: str | None = None
    waiting: list[str] = attrs.field(factory=list)
    """The failed items a PAUSE policy waits on (each retried or skipped, it resumes)."""
    held: bool = False
    """A pause held back the next deployment's announcement."""
    failures: list[tuple[str, int, int, int, bool]] = attrs.field(factory=list)
    """Each failure of an item: its id, its attempt, the first and last number of the
    history entries made by the step that failed it (0 until the engine made them), and
    whether the item was still failed when the step ended (not retried at once)."""
    retry_due: dict[int, dt.datetime] = attrs.field(factory=dict)
    """When each deployment's RETRY backoff timer is due, until it fires."""
    artifact: Artifact | None = None
    rollback: tuple[str, frozenset[Artifact | None]] | None = None
    """The rollback ROLLBACK requested: its environment, and the artifacts it may
    name (the newest other success there; several only when they succeeded at once)."""
    # Approvals (SPEC §11):
    author: str | None = None
    """Who published the artifact (``ArtifactCreated``'s actor)."""
    approvals: dict[int, list[str]] = attrs.field(factory=dict)
    """Who approved each deployment's current attempt, in order."""
    requested_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    """When each deployment awaiting approval asked for it (its expiry runs from then)."""
    held_until: dict[int, dt.datetime] = attrs.field(factory=dict)
    """When the freeze holding each held deployment ends (its timer is due)."""
    overridden: set[int] = attrs.field(factory=set)
    """Deployments someone let through a freeze, at their current attempt."""

    def open(self) -> bool:
        return self.state in ("inProgress", "paused")

    def index(self) -> int:
        """The deployment a flow trigger acts for: the current one, else the last."""
        current = self.current()
        return len(self.deployments) - 1 if current is None else current

    def policy(self, d: int) -> tuple[str, RetryPolicy]:
        env = self.service.pipeline.environments[d]
        strategy = env.failure_strategy or self.service.failure_strategy
        return strategy, env.retry or self.service.retry or RetryPolicy()

    def current(self) -> int | None:
        for i, state in enumerate(self.deployments):
            if state != "success":
                return i
        return None

    def snapshot(self) -> Snapshot:
        return self.state, tuple(self.deployments), tuple(tuple(p) for p in self.promotions)

    def changes(self, before: Snapshot | None) -> list[StateChange]:
        """The state changes from ``before`` (None: the flow is new) to now, as SPEC §9
        lists them: each promotion before its deployment, the deployments before the flow."""
        state, deployments, promotions = self.snapshot()
        out: list[StateChange] = []
        for d, deployment in enumerate(deployments):
            for p, promotion in enumerate(promotions[d]):
                was = before[2][d][p] if before is not None else None
                if was != promotion:
                    out.append(StateChange("promotion", self.promotion_ids[d][p], was, promotion))
            was = before[1][d] if before is not None else None
            if was != deployment:
                out.append(StateChange("deployment", self.deployment_ids[d], was, deployment))
        if before is None or before[0] != state:
            out.append(StateChange("flow", self.id, before[0] if before is not None else None, state))
        return out


Snapshot = tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]]
"""A reference flow's states: the flow's, each deployment's, each promotion's."""

# An expected result: an error type, "duplicate", or the list of (event, flow, deployment
# index, deployment state at the event) the trigger causes.
Expected = type[FlowFSMError] | str | list[tuple[HookEvent, RefFlow, int, str]]
Out = list[tuple[HookEvent, RefFlow, int, str]]
FINISHED = ("success", "failed", "aborted", "superseded")
RETRIED = (E.PROMOTION_RETRIED, E.DEPLOYMENT_RETRIED)
STEERING = (
    E.FLOW_PAUSED,
    E.FLOW_RESUMED,
    E.FLOW_ABORTED,
    E.PROMOTION_RETRIED,
    E.PROMOTION_SKIPPED,
    E.DEPLOYMENT_RETRIED,
    E.ROLLBACK_REQUESTED,
    E.APPROVAL_GRANTED,
    E.APPROVAL_REJECTED,
    E.APPROVAL_EXPIRED,
    E.APPROVAL_CANCELLED,
    E.FREEZE_OVERRIDDEN,
)
APPROVERS = ("bob", "group:ops")
"""Who may approve a gated environment: bob, and the ops group (carol and erin)."""
PEOPLE: dict[str, tuple[str, ...]] = {"bob": (), "carol": ("ops",), "erin": ("ops",), "dave": ("dev",)}
"""Who may try to approve, and the groups each belongs to (dave is no approver)."""


Minutes = int | None


def minutes(n: Minutes) -> dt.timedelta | None:
    return None if n is None else dt.timedelta(minutes=n)


def catalogs() -> st.SearchStrategy[Catalog]:
    promotions = st.lists(st.sampled_from(["smoke", "perf", "sec"]), max_size=2, unique=True)
    durations = st.sampled_from([None, None, 10, 30])  # minutes, or none
    gates = st.one_of(
        st.none(),
        st.none(),
        st.builds(
            ApprovalPolicy,
            st.just(APPROVERS),
            required=st.integers(1, 2),
            allow_author=st.booleans(),
            expiry=st.sampled_from([None, dt.timedelta(minutes=30)]),
        ),
    )
    environments = st.lists(
        st.tuples(
            st.sampled_from(["dev", "qa", "staging", "prod"]), promotions, durations, durations, durations, gates
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda e: e[0],
    )
    webhook_plan = st.lists(st.tuples(st.sampled_from(list(E)), st.integers(1, 2)), max_size=6)
    strategies = st.sampled_from(["STOP", "STOP", "PAUSE", "RETRY", "ROLLBACK"])
    retries = st.one_of(
        st.none(),
        st.builds(
            RetryPolicy,
            attempts=st.integers(1, 3),
            backoff=st.sampled_from([None, None, dt.timedelta(minutes=10), dt.timedelta(minutes=30)]),
            then=st.sampled_from(["STOP", "PAUSE", "ROLLBACK"]),
        ),
    )
    overrides = st.sampled_from([None, None, None, "STOP", "PAUSE", "RETRY", "ROLLBACK"])

    def service(  # noqa: PLR0917 - what a drawn service is made of, as st.builds passes it
        i: int,
        envs: list[tuple[str, list[str], Minutes, Minutes, Minutes, ApprovalPolicy | None]],
        plan: list[tuple[HookEvent, int]],
        strategy: str,
        retry: RetryPolicy | None,
        override: str | None,
    ) -> Service:
        webhooks = [
            Webhook(f"wh{j}", event, [Action(f"act{k}", url=f"https://h.example/{j}/{k}") for k in range(n)])
            for j, (event, n) in enumerate(plan)
        ]
        pipeline = Pipeline(
            "p",
            [
                Environment(
                    name,
                    proms,
                    timeouts=Timeouts(minutes(deploy), minutes(verify)) if deploy or verify else None,
                    soak=minutes(soak),
                    failure_strategy=override if j == len(envs) - 1 else None,  # the last environment's own
                    approvals=gate,
                )
                for j, (name, proms, deploy, verify, soak, gate) in enumerate(envs)
            ],
        )
        return Service(
            f"svc{i}",
            artifacts=["com.acme:api"],
            pipeline=pipeline,
            webhooks=webhooks,
            failure_strategy=strategy,
            retry=retry,
        )

    one = st.builds(service, st.just(0), environments, webhook_plan, strategies, retries, overrides)
    other = st.builds(service, st.just(1), environments, webhook_plan, strategies, retries, overrides)
    two = st.builds(lambda a, b: [a, b], one, other)
    return st.builds(_frozen_catalog, st.one_of(one.map(lambda s: [s]), two), windows())


# --- freeze windows (§11) ------------------------------------------------------------------

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Where the fake clock starts (``FakeClock()``)."""
EVERY = dt.timedelta(hours=2)

Window = tuple[int, int, int] | None
"""A drawn freeze window: (environment, by position in the first service's pipeline;
the minute past every even hour it starts; its duration in minutes), or none."""


def windows() -> st.SearchStrategy[Window]:
    return st.one_of(
        st.none(), st.tuples(st.integers(0, 2), st.sampled_from([0, 15, 40]), st.sampled_from([20, 45, 90]))
    )


def _frozen_catalog(services: list[Service], window: Window) -> Catalog:
    if window is None:
        return Catalog(services)
    at, minute, duration = window
    environments = services[0].pipeline.environments
    name = environments[at % len(environments)].name
    return Catalog(services, freezes=[FreezeWindow("w", [name], f"{duration}m", "UTC", cron=f"{minute} */2 * * *")])


def freeze_end(catalog: Catalog, environment: str, now: dt.datetime) -> dt.datetime | None:
    """When the catalog's window holding ``environment`` at ``now`` ends, or None: by
    arithmetic on the drawn schedule, not the engine's recurrence libraries."""
    if not catalog.freezes:
        return None
    (window,) = catalog.freezes
    if environment not in window.environments:
        return None
    assert window.cron is not None
    first = EPOCH + dt.timedelta(minutes=int(window.cron.split()[0]))
    start = first + ((now - first) // EVERY) * EVERY
    end = start + window.duration
    return end if start <= now < end else None


class EngineAgainstReference(RuleBasedStateMachine):
    """Drives one engine; subclasses may swap the repository."""

    def make_repository(self) -> Repository:
        return InMemoryRepository()

    def __init__(self) -> None:
        super().__init__()
        self.flows: dict[tuple[str, str], RefFlow] = {}
        self.last: tuple[Trigger, Expected] | None = None
        self.finished: dict[str, Flow] = {}
        self.attempts: dict[str, int] = {}
        self.histories: dict[str, tuple[HistoryEntry, ...]] = {}
        """Each flow's history as last read: a step only ever appends to it."""
        self.successes: dict[tuple[str, str], list[tuple[dt.datetime, Artifact]]] = {}
        """Each artifact whose flow succeeded in an environment, by service and
        environment, when it did: what ROLLBACK returns to."""

    @initialize(catalog=catalogs())
    def setup(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.deferred: list[tuple[RefFlow, int, int | None]] = []
        """RETRY's retries of the trigger, made once all its failures are decided."""
        self.emitter = RecordingEmitter()
        self.repository = self.make_repository()
        self.clock = FakeClock()
        self.engine = FlowEngine(catalog, self.repository, self.emitter, clock=self.clock, id_factory=SequentialIds())
        # One claim takes every due timer (a run has far fewer), so one round fires
        # what the reference expires; batching has its own tests in test_time.py.
        self.scheduler = Scheduler(self.repository, self.engine, batch=1000)

    def teardown(self) -> None:
        close: Callable[[], None] | None = getattr(getattr(self, "repository", None), "close", None)
        if close is not None:
            close()

    # --- the reference -----------------------------------------------------------------

    def _locate(self, deployment_id: str) -> tuple[RefFlow, int] | None:
        for flow in self.flows.values():
            if deployment_id in flow.deployment_ids:
                return flow, flow.deployment_ids.index(deployment_id)
        return None

    def _environment(self, flow: RefFlow, d: int) -> Environment:
        return flow.service.pipeline.environments[d]

    def _announce(self, flow: RefFlow, out: Out) -> None:
        """The next deployment is announced, or held while the flow is paused."""
        following = flow.current()
        if following is None:
            return
        if flow.state == "paused":
            flow.held = True
            return
        self._admit(flow, following, out)

    def _admit(self, flow: RefFlow, d: int, out: Out) -> None:
        """An announcement passes the deployment's gates, in order: an approval gate
        short of approvals asks for them (its expiry runs from now); a freeze window
        holds it until the window ends, unless someone let this attempt through;
        else it is announced."""
        gate = self._environment(flow, d).approvals
        if gate is not None and len(flow.approvals.get(d, [])) < gate.required:
            flow.deployments[d] = "awaitingApproval"
            flow.requested_at[d] = self.clock.now
            out.append((E.APPROVAL_REQUESTED, flow, d, "awaitingApproval"))
            return
        until = freeze_end(self.catalog, self._environment(flow, d).name, self.clock.now)
        if until is not None and d not in flow.overridden:  # held until the window ends
            flow.deployments[d] = "held"
            flow.held_until[d] = until
            out.append((E.DEPLOYMENT_HELD, flow, d, "held"))
            return
        out.append((E.DEPLOYMENT_CREATED, flow, d, flow.deployments[d]))

    def _withdrawn(self, flow: RefFlow, out: Out) -> None:
        """The flow ended: a request for approval still open is cancelled."""
        for d, state in enumerate(flow.deployments):
            if state == "awaitingApproval":
                out.append((E.APPROVAL_CANCELLED, flow, d, state))

    def _advance(self, flow: RefFlow, d: int, out: Out) -> None:
        """A completed deployment succeeds once every promotion passed (or was
        skipped) and its soak is over; a flow in progress then succeeds with its last."""
        if flow.deployments[d] != "completed" or not flow.open():
            return
        soak = self._environment(flow, d).soak
        soaked = soak is None or self.clock.now >= flow.completed_at[d] + soak
        if all(p in ("success", "skipped") for p in flow.promotions[d]) and soaked:
            flow.deployments[d] = "success"
            flow.succeeded_at[d] = self.clock.now
            where = (flow.service.id, self._environment(flow, d).name)
            assert flow.artifact is not None
            self.successes.setdefault(where, []).append((self.clock.now, flow.artifact))
            out.append((E.DEPLOYMENT_SUCCEEDED, flow, d, "success"))
            self._announce(flow, out)
            self._succeed(flow, d, out)

    def _succeed(self, flow: RefFlow, d: int, out: Out) -> None:
        if flow.state == "inProgress" and flow.current() is None:
            flow.state = "success"
            flow.retry_due.clear()  # a finished flow loses its timers
            out.append((E.FLOW_SUCCEEDED, flow, d, flow.deployments[d]))

    def _resume(self, flow: RefFlow, d: int, out: Out) -> None:
        """The flow leaves its pause (a person resumed it, or its failed items were
        dealt with): it announces what the pause held, and may succeed."""
        flow.state, flow.pause_actor, flow.waiting = "inProgress", None, []
        out.append((E.FLOW_RESUMED, flow, d, flow.deployments[d]))
        if flow.held:
            flow.held = False
            self._announce(flow, out)
        self._succeed(flow, d, out)
        for i in range(len(flow.deployments)):  # RETRY's retries the pause held back
            name, retry = flow.policy(i)
            if name != "RETRY" or flow.deployments[i] != "completed":
                continue
            if flow.retry_due.get(i, self.clock.now) > self.clock.now:  # its backoff's timer retries it
                continue
            for p, state in enumerate(flow.promotions[i]):
                if state == "failed" and flow.promotion_attempts[i][p] < retry.attempts:
                    self._retry_promotion(flow, i, p, out)

    def _end(self, flow: RefFlow, state: str) -> None:
        flow.state, flow.pause_actor, flow.waiting, flow.held = state, None, [], False
        flow.retry_due.clear()  # a finished flow loses its timers

    def _retry_promotion(self, flow: RefFlow, d: int, p: int, out: Out) -> None:
        """Pending again at its next attempt, with its own verify timeout, unless
        another pending promotion shares the deployment's timer still set."""
        others = any(s == "pending" for i, s in enumerate(flow.promotions[d]) if i != p)
        deployment_id = flow.deployment_ids[d]  # the timers before the trigger: expect() runs first
        set_ = any(
            t.deployment_id == deployment_id and t.kind is TimerKind.VERIFY for t in self.repository.timers(flow.id)
        )
        flow.promotions[d][p] = "pending"
        flow.promotion_attempts[d][p] += 1
        if not (others and set_):
            flow.verify_from[d] = self.clock.now
        out.append((E.PROMOTION_RETRIED, flow, d, flow.deployments[d]))

    def _retry_deployment(self, flow: RefFlow, d: int, out: Out) -> None:
        flow.deployments[d] = "notStarted"
        flow.deployment_attempts[d] += 1
        flow.promotions[d] = ["pending"] * len(flow.promotions[d])
        flow.promotion_attempts[d] = [a + 1 for a in flow.promotion_attempts[d]]
        flow.reported_failed.discard(d)
        flow.approvals.pop(d, None)  # each attempt is approved anew
        flow.overridden.discard(d)  # an override lets one attempt through
        out.append((E.DEPLOYMENT_RETRIED, flow, d, "notStarted"))
        self._announce(flow, out)

    def _settle(self, flow: RefFlow, d: int, item: str, out: Out) -> None:
        """A failed item was retried or skipped: a policy's pause waiting on it alone
        ends (a person's stands, for ResumeFlow)."""
        if item in flow.waiting:
            flow.waiting.remove(item)
            if not flow.waiting and flow.state == "paused" and flow.pause_actor == "flowfsm":
                self._resume(flow, d, out)

    def _retries(self, out: Out) -> None:
        """RETRY's retries, once every failure of the trigger is decided: none in a
        flow one of them ended; a paused flow's promotions wait for the resume."""
        deferred, self.deferred = self.deferred, []
        for flow, d, p in deferred:
            if not flow.open():
                continue
            if p is None:
                if flow.deployments[d] == "failed":
                    self._retry_deployment(flow, d, out)
            elif flow.state != "paused" and flow.promotions[d][p] == "failed" and flow.deployments[d] == "completed":
                self._retry_promotion(flow, d, p, out)

    def _fail(  # noqa: PLR0912, PLR0917 - one branch per policy; the failure, then how it is decided
        self, flow: RefFlow, d: int, p: int | None, out: Out, strategy: str | None = None, approval: bool = False
    ) -> None:
        """A failure of the promotion ``p`` (None: of the deployment) of deployment
        ``d``, decided by its environment's policy (or ``strategy``, RETRY's then);
        ``approval``: a rejection or an expiry, which ROLLBACK does not roll back."""
        name, retry = flow.policy(d)
        if strategy is None:  # the failure itself (not RETRY's then deciding it again): history keeps it
            item = flow.promotion_ids[d][p] if p is not None else flow.deployment_ids[d]
            attempt = flow.promotion_attempts[d][p] if p is not None else flow.deployment_attempts[d]
            flow.failures.append((item, attempt, 0, 0, False))
        name = strategy or name
        if name == "ROLLBACK":  # as STOP, then rollback-requested (nothing once the flow ended)
            if not flow.open():
                return
            self._fail(flow, d, p, out, "STOP")
            if not approval:  # nothing was deployed: nothing to undo
                self._request_rollback(flow, d, out)
            return
        if name == "STOP":
            if flow.deployments[d] != "failed":
                flow.deployments[d] = "failed"
                out.append((E.DEPLOYMENT_FAILED, flow, d, "failed"))
            if flow.open():
                self._end(flow, "failed")
                out.append((E.FLOW_FAILED, flow, d, "failed"))
                self._withdrawn(flow, out)
            return
        if not flow.open():  # an earlier failure of the same trigger ended it
            return
        item = flow.promotion_ids[d][p] if p is not None else flow.deployment_ids[d]
        if name == "PAUSE":  # one pause, one flow-paused; a person's pause stays theirs
            if flow.state != "paused":
                flow.state, flow.pause_actor = "paused", "flowfsm"
                out.append((E.FLOW_PAUSED, flow, d, flow.deployments[d]))
            flow.waiting.append(item)
            return
        assert name == "RETRY"
        attempt = flow.promotion_attempts[d][p] if p is not None else flow.deployment_attempts[d]
        if attempt >= retry.attempts:
            self._fail(flow, d, p, out, retry.then, approval)
        elif retry.backoff:  # the deployment's retry timer, set again
            flow.retry_due[d] = self.clock.now + retry.backoff
        else:
            self.deferred.append((flow, d, p))

    def _retry_due(self, flow: RefFlow, d: int, out: Out) -> None:
        """A backoff's timer fired: the deployment's failed items with attempts left
        are retried; a paused flow's promotions wait for its resume."""
        _, retry = flow.policy(d)
        if flow.state != "paused" and flow.deployments[d] == "completed":
            for p, state in enumerate(flow.promotions[d]):
                if state == "failed" and flow.promotion_attempts[d][p] < retry.attempts:
                    self._retry_promotion(flow, d, p, out)
        if flow.deployments[d] == "failed" and flow.deployment_attempts[d] < retry.attempts:
            self._retry_deployment(flow, d, out)

    def _request_rollback(self, flow: RefFlow, d: int, out: Out) -> None:
        """The newest other artifact whose flow of this service succeeded in the
        failed deployment's environment (successes at the same instant: any of them)."""
        environment = self._environment(flow, d).name
        others = [(at, a) for at, a in self.successes.get((flow.service.id, environment), []) if a != flow.artifact]
        newest = max((at for at, _ in others), default=None)
        flow.rollback = (environment, frozenset(a for at, a in others if at == newest) or frozenset([None]))
        out.append((E.ROLLBACK_REQUESTED, flow, d, flow.deployments[d]))

    def expect(self, trigger: Trigger) -> Expected:  # noqa: PLR0911, PLR0912 - one branch per rule of SPEC §3-4, §8
        """Apply ``trigger`` to the reference; return what the engine must do."""
        out: Out = []
        if isinstance(trigger, ArtifactCreated):
            return "artifact"  # handled in the rule: it needs the engine's new ids
        if isinstance(trigger, PauseFlow | ResumeFlow | AbortFlow):
            return self.expect_flow(trigger)
        if isinstance(trigger, ApprovalGranted | ApprovalRejected):
            return self.expect_approval(trigger)
        if isinstance(trigger, OverrideFreeze):
            return self.expect_override(trigger)
        assert isinstance(
            trigger,
            DeploymentStarted
            | DeploymentCompleted
            | DeploymentFailed
            | PromotionCompleted
            | RetryPromotion
            | SkipPromotion
            | RetryDeployment,
        )
        found = self._locate(trigger.deployment_id)
        if found is None:
            return UnknownDeployment
        flow, d = found
        state = flow.deployments[d]
        if isinstance(trigger, DeploymentStarted):
            if state == "awaitingApproval":
                return InvalidTransition  # it awaits approval
            if state == "held":
                return InvalidTransition  # a freeze window holds it
            if state != "notStarted":
                return "duplicate"
            if flow.state != "inProgress" or flow.current() != d:
                return InvalidTransition  # finished, not its turn, or paused
            flow.deployments[d] = "started"
            flow.started_at[d] = self.clock.now
            return [(E.DEPLOYMENT_STARTED, flow, d, "started")]
        if isinstance(trigger, DeploymentFailed):
            if (state == "failed" and d in flow.reported_failed) or (
                state in ("notStarted", "held", "awaitingApproval", "queued") and flow.deployment_attempts[d] > 1
            ):
                return "duplicate"  # reported, or reported before the retry that began this attempt
            if state != "started" or not flow.open():
                return InvalidTransition  # not started, or it completed
            flow.deployments[d] = "failed"
            flow.reported_failed.add(d)
            out.append((E.DEPLOYMENT_FAILED, flow, d, "failed"))
            self._fail(flow, d, None, out)
            self._retries(out)
            return out
        if isinstance(trigger, DeploymentCompleted):
            if state in ("completed", "success") or (state == "failed" and d not in flow.reported_failed):
                return "duplicate"
            if state in ("notStarted", "held", "failed", "awaitingApproval") or not flow.open():
                return InvalidTransition  # not started, reported failed, or the flow ended
            flow.deployments[d] = "completed"
            flow.completed_at[d] = flow.verify_from[d] = self.clock.now
            out.append((E.DEPLOYMENT_COMPLETED, flow, d, "completed"))
            self._advance(flow, d, out)
            return out
        if isinstance(trigger, RetryDeployment):
            if state != "failed":
                return "duplicate" if flow.deployment_attempts[d] > 1 else InvalidTransition
            if not flow.open():
                return InvalidTransition
            self._retry_deployment(flow, d, out)
            self._settle(flow, d, trigger.deployment_id, out)
            return out
        if trigger.promotion_id not in flow.promotion_ids[d]:
            return UnknownPromotion
        p = flow.promotion_ids[d].index(trigger.promotion_id)
        promotion, attempt = flow.promotions[d][p], flow.promotion_attempts[d][p]
        if isinstance(trigger, RetryPromotion):
            if promotion in ("pending", "success"):
                return "duplicate" if attempt > 1 else InvalidTransition
            if promotion != "failed" or not flow.open() or state != "completed":
                return InvalidTransition  # skipped, the flow ended, or its deployment is not completed
            self._retry_promotion(flow, d, p, out)
            self._settle(flow, d, trigger.promotion_id, out)
            return out
        if isinstance(trigger, SkipPromotion):
            if promotion == "skipped":
                return "duplicate"
            if promotion == "success" or not flow.open() or state == "failed":
                return InvalidTransition
            flow.promotions[d][p] = "skipped"
            out.append((E.PROMOTION_SKIPPED, flow, d, state))
            self._advance(flow, d, out)
            self._settle(flow, d, trigger.promotion_id, out)
            return out
        for result in trigger.results:  # a result naming another attempt
            if result.attempt is not None and result.attempt != attempt:
                return "duplicate" if result.attempt < attempt else InvalidTransition
        fails = any(r.result_status is ResultStatus.FAILED for r in trigger.results)
        wanted = "failed" if fails else "success"
        if promotion in (wanted, "skipped"):
            return "duplicate"
        if promotion != "pending" or not flow.open() or state != "completed":
            return InvalidTransition
        flow.promotions[d][p] = wanted
        if fails:
            out.append((E.PROMOTION_FAILED, flow, d, "completed"))
            self._fail(flow, d, p, out)
            self._retries(out)
            return out
        out.append((E.PROMOTION_COMPLETED, flow, d, "completed"))
        self._advance(flow, d, out)
        return out

    def expect_override(self, trigger: OverrideFreeze) -> Expected:
        """A held deployment is let through (this attempt): freeze-overridden, then
        announced; again, a duplicate; a deployment no window holds, refused."""
        found = self._locate(trigger.deployment_id)
        if found is None:
            return UnknownDeployment
        flow, d = found
        if flow.deployments[d] != "held":
            return "duplicate" if d in flow.overridden else InvalidTransition
        if not flow.open():
            return InvalidTransition
        out: Out = []
        flow.overridden.add(d)
        flow.deployments[d] = "notStarted"
        del flow.held_until[d]
        out.append((E.FREEZE_OVERRIDDEN, flow, d, "notStarted"))
        self._announce(flow, out)
        return out

    def expect_flow(self, trigger: PauseFlow | ResumeFlow | AbortFlow) -> Expected:  # noqa: PLR0911 - one per rule of §8
        flows = [f for f in self.flows.values() if f.id == trigger.flow_id]
        if not flows:
            return UnknownFlow
        (flow,) = flows
        d, out = flow.index(), cast(Out, [])
        if isinstance(trigger, PauseFlow):
            if flow.state == "paused":
                return "duplicate"
            if flow.state != "inProgress":
                return InvalidTransition
            flow.state, flow.pause_actor = "paused", trigger.actor
            return [(E.FLOW_PAUSED, flow, d, flow.deployments[d])]
        if isinstance(trigger, ResumeFlow):
            if flow.state != "paused":
                return "duplicate"  # nothing to resume, whatever the flow did since
            if flow.waiting:
                return InvalidTransition  # its policy waits on a failed item
            self._resume(flow, d, out)
            return out
        if flow.state == "aborted":
            return "duplicate"
        if not flow.open():
            return InvalidTransition
        self._end(flow, "aborted")
        out.append((E.FLOW_ABORTED, flow, d, flow.deployments[d]))
        self._withdrawn(flow, out)
        return out

    def expect_approval(self, trigger: ApprovalGranted | ApprovalRejected) -> Expected:  # noqa: PLR0911 - one per rule of §11
        """SPEC §11: a repeat is a duplicate (the same person approving this attempt
        again; a rejection of a failed deployment); one not awaiting approval is
        refused; someone not allowed gets ``NotAuthorized`` (the author may reject);
        a finished flow refuses; the last approval needed announces the deployment,
        a rejection is a failure for the failure policy."""
        found = self._locate(trigger.deployment_id)
        if found is None:
            return UnknownDeployment
        flow, d = found
        state, given = flow.deployments[d], flow.approvals.setdefault(d, [])
        granted = isinstance(trigger, ApprovalGranted)
        if (granted and trigger.actor in given) or (not granted and state == "failed"):
            return "duplicate"
        if state != "awaitingApproval":
            return InvalidTransition
        gate = self._environment(flow, d).approvals
        assert gate is not None
        listed = trigger.actor in gate.approvers or any(f"group:{g}" in gate.approvers for g in trigger.groups)
        if not listed or (granted and trigger.actor == flow.author and not gate.allow_author):
            return NotAuthorized
        if not flow.open():
            return InvalidTransition
        out: Out = []
        if not granted:
            flow.deployments[d] = "failed"
            flow.reported_failed.add(d)  # it failed before it completed
            flow.requested_at.pop(d, None)
            out.append((E.APPROVAL_REJECTED, flow, d, "failed"))
            self._fail(flow, d, None, out, approval=True)
            self._retries(out)
            return out
        given.append(trigger.actor)
        if len(given) < gate.required:
            return [(E.APPROVAL_GRANTED, flow, d, "awaitingApproval")]
        flow.deployments[d] = "notStarted"
        flow.requested_at.pop(d, None)
        out.append((E.APPROVAL_GRANTED, flow, d, "notStarted"))
        self._announce(flow, out)
        return out

    def expire(self) -> tuple[dict[str, Out], int]:
        """What the timers due now do to each flow (SPEC §10), fired in the order of
        their due time, then id: a deploy timeout fails a started deployment; a verify
        timeout fails each pending promotion of a completed one; each failure then goes
        to its policy; a soak over lets a deployment whose promotions all passed
        succeed; a backoff's timer retries what failed. Also how many timers acted."""
        now, acted = self.clock.now, 0
        expected: dict[str, Out] = {}
        self.backoffs_acted: set[str] = set()
        self.expiries_acted: set[str] = set()
        fired: set[str] = set()
        while True:  # all flows' due timers in one order: a rollback sees the successes before it
            due = [
                (*t, flow)
                for flow in self.flows.values()
                if flow.open()
                for t in self._timers_of(flow)
                if t[0] <= now and t[1] not in fired
            ]
            if not due:
                break
            _, timer, kind, d, flow = min(due, key=lambda t: (t[0], t[1]))
            fired.add(timer)
            step: Out = []
            self._fire(flow, kind, d, step)
            if step and kind is TimerKind.RETRY:
                self.backoffs_acted.add(flow.id)
            if step or kind is TimerKind.FREEZE:  # a freeze's end moves its deployment, announced or held by a pause
                acted += 1
                expected.setdefault(flow.id, []).extend(step)
        return expected, acted

    def _timers_of(self, flow: RefFlow) -> list[tuple[dt.datetime, str, TimerKind, int]]:
        """The timers the reference says the flow has: (due, id, kind, deployment)."""
        timers = [
            (due, f"{flow.deployment_ids[i]}/{TimerKind.RETRY.value}", TimerKind.RETRY, i)
            for i, due in flow.retry_due.items()
        ]
        d = flow.current()
        if d is None:
            return timers
        timeouts, environment, state = (
            self._environment(flow, d).timeouts or Timeouts(),
            self._environment(flow, d),
            flow.deployments[d],
        )
        wanted: list[tuple[TimerKind, dt.datetime]] = []
        if state == "started" and timeouts.deploy:
            wanted.append((TimerKind.DEPLOY, flow.started_at[d] + timeouts.deploy))
        if state == "completed" and timeouts.verify:
            wanted.append((TimerKind.VERIFY, flow.verify_from[d] + timeouts.verify))
        if state == "completed" and environment.soak:
            wanted.append((TimerKind.SOAK, flow.completed_at[d] + environment.soak))
        if state == "awaitingApproval" and environment.approvals is not None and environment.approvals.expiry:
            wanted.append((TimerKind.APPROVAL, flow.requested_at[d] + environment.approvals.expiry))
        if state == "held":
            wanted.append((TimerKind.FREEZE, flow.held_until[d]))
        return timers + [(due, f"{flow.deployment_ids[d]}/{kind.value}", kind, d) for kind, due in wanted]

    def _fire(self, flow: RefFlow, kind: TimerKind, d: int, out: Out) -> None:
        if kind is TimerKind.FREEZE:  # the window ended: announced, or held by the next
            flow.deployments[d] = "notStarted"
            del flow.held_until[d]
            self._announce(flow, out)
            return
        if kind is TimerKind.RETRY:
            del flow.retry_due[d]
            self._retry_due(flow, d, out)
            return
        pending = [i for i, p in enumerate(flow.promotions[d]) if p == "pending"]
        if kind is TimerKind.APPROVAL:  # the request expired: a failure, as flowfsm
            flow.deployments[d] = "failed"
            flow.reported_failed.add(d)
            del flow.requested_at[d]
            self.expiries_acted.add(flow.id)
            out.append((E.APPROVAL_EXPIRED, flow, d, "failed"))
            self._fail(flow, d, None, out, approval=True)
            self._retries(out)
        elif kind is TimerKind.DEPLOY:
            flow.deployments[d] = "failed"
            flow.reported_failed.add(d)  # failed before completing, as if reported
            flow.timed_out = True
            out.append((E.DEPLOYMENT_FAILED, flow, d, "failed"))
            self._fail(flow, d, None, out)
            self._retries(out)
        elif kind is TimerKind.VERIFY and pending:
            flow.timed_out = True
            for i in pending:
                flow.promotions[d][i] = "failed"
            out += [(E.PROMOTION_FAILED, flow, d, "completed")] * len(pending)
            for i in pending:
                self._fail(flow, d, i, out)
            self._retries(out)
        elif kind is TimerKind.SOAK:
            self._advance(flow, d, out)

    def fanout(self, expected: list[tuple[HookEvent, RefFlow, int, str]]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for event, flow, d, state in expected:
            for webhook in flow.service.webhooks:
                if webhook.event is event:
                    rows.extend(
                        (event, webhook.id, a.name, flow.id, flow.deployment_ids[d], state) for a in webhook.actions
                    )
        return rows

    # --- driving the engine ------------------------------------------------------------

    def run(self, trigger: Trigger) -> None:
        sent = len(self.emitter.requests)
        if isinstance(trigger, ArtifactCreated):
            self.run_artifact(trigger, sent)
            return
        before = self.repository.list_flows(limit=10_000)
        paused = {f.id for f in self.flows.values() if f.state == "paused"}
        states = {f.id: f.snapshot() for f in self.flows.values()}
        expected = self.expect(trigger)
        self.last = (trigger, expected)
        self.begins_nothing_new(paused, sent)
        if isinstance(expected, type):
            with pytest.raises(FlowFSMError) as caught:
                self.engine.handle(trigger)
            assert type(caught.value) is expected, (caught.value, expected)
            assert self.repository.list_flows(limit=10_000) == before
            assert len(self.emitter.requests) == sent
            self.check_history(states, trigger, set(), sent)
            return
        outcome = self.engine.handle(trigger)
        if expected == "duplicate":
            assert outcome.duplicate
            assert outcome.hook_requests == ()
            assert self.repository.list_flows(limit=10_000) == before
            self.check_history(states, trigger, set(), sent)
        else:
            assert isinstance(expected, list)
            assert not outcome.duplicate
            self.check_requests(outcome, self.fanout(expected))
            changed = {flow.id for _, flow, _, _ in expected}
            assert len(changed) == 1  # a trigger about a deployment or a flow changes that flow alone
            self.check_history(states, trigger, changed, sent)
        assert self.emitter.requests[sent:] == list(outcome.hook_requests)
        self.begins_nothing_new(paused, sent)
        self.announces_nothing_frozen(sent)

    def check_history(self, states: dict[str, Snapshot], trigger: Trigger | None, changed: set[str], sent: int) -> None:
        """SPEC §9: a step appends exactly one entry to each flow it changed (for a round
        of timers, one or more: one per timer that did something), numbered on from the
        flow's last, and none to any other flow; no entry is ever rewritten. An entry
        records the trigger's JSON, its actor and reason (``flowfsm`` for a timer), each
        state change the reference made, and exactly the HookRequests the step created
        for that flow. The failures of the step are recorded in the entries it made."""
        emitted = self.emitter.requests[sent:]
        for ref in self.flows.values():
            stored = tuple(self.repository.history(ref.id))
            known = self.histories.get(ref.id, ())
            assert stored[: len(known)] == known, "an earlier entry was rewritten or lost"
            new = stored[len(known) :]
            assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
            self.histories[ref.id] = stored
            if ref.id not in changed:
                assert new == (), (trigger, new)
                continue
            assert stored[-1].seq == self.repository.get(ref.id).version
            assert all(e.flow_id == ref.id and e.at == self.clock.now for e in new)
            ids = [r.id for r in emitted if r.flow_id == ref.id]
            before = states.get(ref.id)
            if trigger is None:  # a round of timers
                assert new
                assert all((e.actor, e.reason, e.trigger["type"]) == ("flowfsm", None, "TimerFired") for e in new)
                assert [i for e in new for i in e.hook_request_ids] == ids
                self.replays(ref, before, [c for e in new for c in e.changes])
            else:
                assert len(new) == 1, (trigger, new)
                (entry,) = new
                assert entry.trigger == unstructure(trigger, Trigger)
                assert (entry.actor, entry.reason) == (trigger.actor, trigger.reason)
                assert list(entry.hook_request_ids) == ids
                if before is None:  # a creation: every entity from nothing, in SPEC order
                    assert list(entry.changes) == ref.changes(before)
                else:  # each move in order: from where the last left it to where the reference is
                    self.replays(ref, before, list(entry.changes))
            first, last, now = len(known) + 1, len(stored), dict(self.states_by_id(ref, ref.snapshot()))
            ref.failures = [
                (i, a, first, last, now[i] == "failed") if not lo else (i, a, lo, hi, shown)
                for i, a, lo, hi, shown in ref.failures
            ]

    def replays(self, ref: RefFlow, before: Snapshot | None, changes: list[StateChange]) -> None:
        """``changes``, applied one after another from ``before``, each starting where
        the one before it left its entity and each a real move, end in the
        reference's states: history records every step, in order, and nothing else."""
        replayed = dict(self.states_by_id(ref, before))
        for change in changes:
            assert replayed.get(change.id) == change.from_, change
            assert change.from_ != change.to, change
            replayed[change.id] = change.to
        assert replayed == dict(self.states_by_id(ref, ref.snapshot()))

    @staticmethod
    def states_by_id(ref: RefFlow, snapshot: Snapshot | None) -> list[tuple[str, str]]:
        if snapshot is None:
            return []
        state, deployments, promotions = snapshot
        pairs = [(ref.id, state), *zip(ref.deployment_ids, deployments, strict=True)]
        pairs += [pair for d, pids in enumerate(ref.promotion_ids) for pair in zip(pids, promotions[d], strict=True)]
        return pairs

    def announces_nothing_frozen(self, sent: int) -> None:
        """No deployment-created for an environment while it is frozen, unless someone
        let that deployment through."""
        for request in self.emitter.requests[sent:]:
            if request.event is not E.DEPLOYMENT_CREATED:
                continue
            deployment = request.payload.deployment
            frozen = freeze_end(self.catalog, deployment.environment, self.clock.now) is not None
            assert not frozen or deployment.override is not None, request

    def begins_nothing_new(self, paused: set[str], sent: int) -> None:
        """A flow paused before and after a step started and announced nothing in it."""
        still = {f.id for f in self.flows.values() if f.state == "paused"} & paused
        for request in self.emitter.requests[sent:]:
            if request.flow_id in still:
                assert request.event not in (E.DEPLOYMENT_STARTED, E.DEPLOYMENT_CREATED), request.event

    def run_artifact(self, trigger: ArtifactCreated, sent: int) -> None:
        outcome = self.engine.handle(trigger)
        services = self.catalog.for_artifact(trigger.artifact.key)
        assert [f.service_id for f in outcome.flows] == [s.id for s in services]
        expected: list[tuple[HookEvent, RefFlow, int, str]] = []
        for service, flow in zip(services, outcome.flows, strict=True):
            key = (trigger.artifact.id, service.id)
            if key in self.flows:
                assert self.flows[key].id == flow.id
                continue
            ref = RefFlow(
                flow.id,
                service,
                [d.id for d in flow.deployments],
                [[p.id for p in d.promotions] for d in flow.deployments],
                ["notStarted"] * len(service.pipeline.environments),
                [["pending"] * len(env.promotions) for env in service.pipeline.environments],
                deployment_attempts=[1] * len(service.pipeline.environments),
                promotion_attempts=[[1] * len(env.promotions) for env in service.pipeline.environments],
                artifact=trigger.artifact,
                author=trigger.actor,
            )
            self.flows[key] = ref
            self._announce(ref, expected)
        assert outcome.duplicate == (bool(services) and not expected)
        self.check_requests(outcome, self.fanout(expected))
        self.check_history({}, trigger, {flow.id for _, flow, _, _ in expected}, sent)
        assert self.emitter.requests[sent:] == list(outcome.hook_requests)
        self.announces_nothing_frozen(sent)
        self.last = (trigger, "duplicate" if services else [])

    def check_requests(self, outcome: Outcome, rows: list[tuple[Any, ...]]) -> None:
        actual = [
            (
                r.event,
                r.webhook_id,
                r.action.name,
                r.flow_id,
                r.payload.deployment.id,
                r.payload.deployment.state.value,
            )
            for r in outcome.hook_requests
        ]
        assert actual == rows
        for request in outcome.hook_requests:
            if request.event in (E.PROMOTION_COMPLETED, E.PROMOTION_FAILED):
                assert isinstance(request.payload, PromotionPayload)
            else:
                assert isinstance(request.payload, DeploymentPayload)
                assert request.payload.environment.name == request.payload.deployment.environment
                steering = request.event in STEERING
                assert isinstance(request.payload, SteeringPayload) == steering
                if isinstance(request.payload, SteeringPayload):  # who acted: a person, or flowfsm for a policy
                    assert request.payload.actor in ("alice", "flowfsm", *PEOPLE)
                if request.event is E.ROLLBACK_REQUESTED:  # it names what the flow records
                    assert isinstance(request.payload, RollbackPayload)
                    assert request.payload.actor == "flowfsm"
                    stored = self.repository.get(request.flow_id).rollback
                    assert stored is not None
                    assert request.payload.rollback_to == stored.artifact

    # --- rules: valid, invalid, unknown and repeated triggers ----------------------------

    @rule(name=st.sampled_from(["api", "api", "web"]), version=st.sampled_from(["1", "2", "3"]))
    def artifact_created(self, name: str, version: str) -> None:
        self.run(ArtifactCreated(Artifact("com.acme", name, version)))

    def _deployment_id(self, data: st.DataObject) -> str:
        ids = [d for f in self.flows.values() for d in f.deployment_ids]
        return data.draw(st.sampled_from([*ids, "unknown-deployment"]) if ids else st.just("unknown-deployment"))

    @rule(data=st.data())
    def deployment_started(self, data: st.DataObject) -> None:
        self.run(DeploymentStarted(self._deployment_id(data)))

    @rule(data=st.data())
    def deployment_completed(self, data: st.DataObject) -> None:
        self.run(DeploymentCompleted(self._deployment_id(data)))

    @rule(data=st.data(), reason=st.sampled_from(["timeout", "image pull failed"]))
    def deployment_failed(self, data: st.DataObject, reason: str) -> None:
        self.run(DeploymentFailed(self._deployment_id(data), reason))

    @precondition(lambda self: any(any(f.promotion_ids) for f in self.flows.values()))
    @rule(data=st.data(), statuses=st.lists(st.sampled_from(ResultStatus), min_size=1, max_size=3))
    def promotion_completed(self, data: st.DataObject, statuses: list[ResultStatus]) -> None:
        pairs = [
            (flow.deployment_ids[d], pid)
            for flow in self.flows.values()
            for d, pids in enumerate(flow.promotion_ids)
            for pid in pids
        ]
        deployment_id, promotion_id = data.draw(st.sampled_from(pairs))
        if data.draw(st.booleans(), label="mismatch") and len(pairs) > 1:
            # A promotion named against some other deployment (or an unknown one).
            deployment_id = data.draw(st.sampled_from([d for d, _ in pairs] + ["unknown-deployment"]))
        attempt = data.draw(st.sampled_from([None, None, 1, 2, 3]), label="attempt")  # stale, current or ahead
        results = [PromotionResult(promotion_id, status, attempt=attempt) for status in statuses]
        self.run(PromotionCompleted(deployment_id, promotion_id, results))

    # --- steering: a person acts ----------------------------------------------------------

    def _flow_id(self, data: st.DataObject) -> str:
        ids = [f.id for f in self.flows.values()]
        return data.draw(st.sampled_from([*ids, "unknown-flow"]) if ids else st.just("unknown-flow"))

    @rule(data=st.data(), reason=st.sampled_from([None, "release freeze"]))
    def pause_flow(self, data: st.DataObject, reason: str | None) -> None:
        self.run(PauseFlow(self._flow_id(data), "alice", reason))

    @rule(data=st.data())
    def resume_flow(self, data: st.DataObject) -> None:
        self.run(ResumeFlow(self._flow_id(data), "alice"))

    @rule(data=st.data())
    def abort_flow(self, data: st.DataObject) -> None:
        self.run(AbortFlow(self._flow_id(data), "alice", "wrong build"))

    @rule(data=st.data())
    def retry_deployment(self, data: st.DataObject) -> None:
        self.run(RetryDeployment(self._deployment_id(data), "alice"))

    @precondition(lambda self: any(any(f.promotion_ids) for f in self.flows.values()))
    @rule(data=st.data(), skip=st.booleans())
    def retry_or_skip_promotion(self, data: st.DataObject, skip: bool) -> None:
        pairs = [
            (flow.deployment_ids[d], pid)
            for flow in self.flows.values()
            for d, pids in enumerate(flow.promotion_ids)
            for pid in pids
        ]
        deployment_id, promotion_id = data.draw(st.sampled_from(pairs))
        if skip:
            self.run(SkipPromotion(deployment_id, promotion_id, "alice", "known flaky"))
        else:
            self.run(RetryPromotion(deployment_id, promotion_id, "alice"))

    @precondition(lambda self: any("held" in f.deployments for f in self.flows.values()))
    @rule(data=st.data(), any_deployment=st.booleans())
    def override_freeze(self, data: st.DataObject, any_deployment: bool) -> None:
        held = [f.deployment_ids[d] for f in self.flows.values() for d, s in enumerate(f.deployments) if s == "held"]
        deployment_id = self._deployment_id(data) if any_deployment else data.draw(st.sampled_from(held))
        self.run(OverrideFreeze(deployment_id, "alice", "hotfix"))

    @precondition(lambda self: any(f.state == "paused" for f in self.flows.values()))
    @rule(data=st.data(), skip=st.booleans())
    def unpause(self, data: st.DataObject, skip: bool) -> None:
        """What a person does about a paused flow, so runs go on past pauses: resume
        it, or retry (or skip) the failed item its policy waits on."""
        flow = data.draw(st.sampled_from([f for f in self.flows.values() if f.state == "paused"]))
        if not flow.waiting:
            self.run(ResumeFlow(flow.id, "alice"))
            return
        item = flow.waiting[0]
        if item in flow.deployment_ids:
            self.run(RetryDeployment(item, "alice"))
            return
        d = next(i for i, pids in enumerate(flow.promotion_ids) if item in pids)
        deployment_id = flow.deployment_ids[d]
        self.run(
            SkipPromotion(deployment_id, item, "alice", "flaky")
            if skip
            else RetryPromotion(deployment_id, item, "alice")
        )

    @precondition(lambda self: any(f.state == "inProgress" for f in self.flows.values()))
    @rule(data=st.data(), fail=st.integers(0, 9))
    def progress(self, data: st.DataObject, fail: int) -> None:
        """The next valid trigger of a flow in progress, so runs reach deep states."""
        flow = data.draw(st.sampled_from([f for f in self.flows.values() if f.state == "inProgress"]))
        d = flow.current()
        assert d is not None
        deployment_id = flow.deployment_ids[d]
        state = flow.deployments[d]
        if d in flow.retry_due and fail % 2:  # a RETRY policy's backoff retries it (or a person does)
            self.time_passes(30, schedule=True)
        elif state == "failed":  # a person retries it
            self.run(RetryDeployment(deployment_id, "alice"))
        elif state == "completed" and "failed" in flow.promotions[d]:
            pid = flow.promotion_ids[d][flow.promotions[d].index("failed")]
            self.run(RetryPromotion(deployment_id, pid, "alice"))
        elif state == "awaitingApproval":  # the next allowed person approves (fail 0: someone rejects)
            self.progress_approval(flow, d, fail == 0)
        elif state == "held":  # the window ends, or a person lets it through
            if fail % 2:
                self.time_passes(90, schedule=True)
            else:
                self.run(OverrideFreeze(deployment_id, "alice", "hotfix"))
        elif state == "notStarted":
            self.run(DeploymentStarted(deployment_id))
        elif state == "started":
            self.run(DeploymentFailed(deployment_id, "boom") if fail == 0 else DeploymentCompleted(deployment_id))
        else:
            pending = [pid for pid, s in zip(flow.promotion_ids[d], flow.promotions[d], strict=True) if s == "pending"]
            if not pending:  # it soaks: let the soak pass
                self.time_passes(30, schedule=True)
                return
            pid = data.draw(st.sampled_from(pending))
            status = ResultStatus.FAILED if fail == 0 else ResultStatus.PASSED
            self.run(PromotionCompleted(deployment_id, pid, [PromotionResult(pid, status)]))

    # Twice more: rules are drawn alike, and the refusals, pauses and aborts around a
    # flow would otherwise end most runs before a promotion fails or is retried.
    @precondition(lambda self: any(f.state == "inProgress" for f in self.flows.values()))
    @rule(data=st.data(), fail=st.integers(0, 3))
    def progress_more(self, data: st.DataObject, fail: int) -> None:
        self.progress(data, fail)

    @precondition(lambda self: any(f.state == "inProgress" for f in self.flows.values()))
    @rule(data=st.data(), fail=st.integers(0, 3))
    def progress_again(self, data: st.DataObject, fail: int) -> None:
        self.progress(data, fail)

    # --- approvals (SPEC §11): people approve and reject; authors publish -------------------

    @rule(version=st.sampled_from(["1", "2", "3"]), author=st.sampled_from(["bob", "carol"]))
    def artifact_created_by(self, version: str, author: str) -> None:
        """An artifact whose author is an approver: a gate refuses their approval unless it allows the author."""
        self.run(ArtifactCreated(Artifact("com.acme", "api", version), actor=author))

    @precondition(lambda self: bool(self.flows))
    @rule(data=st.data(), person=st.sampled_from(sorted(PEOPLE)), reject=st.integers(0, 5))
    def approval(self, data: st.DataObject, person: str, reject: int) -> None:
        """Someone (allowed or not, the author perhaps) approves or rejects a deployment
        awaiting approval (most often), or any other (refused, or a repeat)."""
        awaiting = [f.deployment_ids[d] for f in self.flows.values() for d in f.requested_at]
        deployment_id = data.draw(st.sampled_from(awaiting)) if awaiting and reject else self._deployment_id(data)
        groups = PEOPLE[person]
        if reject == 0:
            self.run(ApprovalRejected(deployment_id, person, "not now", groups=groups))
        else:
            self.run(ApprovalGranted(deployment_id, person, groups))

    def progress_approval(self, flow: RefFlow, d: int, reject: bool) -> None:
        """The first allowed person who has not approved approves (or rejects)."""
        gate = self._environment(flow, d).approvals
        assert gate is not None
        given = flow.approvals.get(d, [])
        allowed = [p for p in ("bob", "carol", "erin") if p != flow.author or gate.allow_author]
        person = next((p for p in allowed if p not in given), "bob")
        deployment_id = flow.deployment_ids[d]
        if reject:
            self.run(ApprovalRejected(deployment_id, person, "not now", groups=PEOPLE[person]))
        else:
            self.run(ApprovalGranted(deployment_id, person, PEOPLE[person]))

    @invariant()
    def no_announcement_before_enough_approvals(self) -> None:
        """SPEC §11, item 6: no deployment of a gated environment is announced or begun
        before enough distinct, allowed approvals (of its current attempt); each person once."""
        if not hasattr(self, "repository"):
            return
        for request in self.emitter.requests:
            if request.event is E.DEPLOYMENT_CREATED:
                flow = self.repository.get(request.flow_id)
                self.enough_approvals(flow, request.payload.deployment)
        for ref in self.flows.values():
            flow = self.repository.get(ref.id)
            assert flow.author == ref.author
            assert {i: list(d.approvals) for i, d in enumerate(flow.deployments) if d.approvals} == {
                i: given for i, given in ref.approvals.items() if given
            }
            for deployment in flow.deployments:
                if deployment.state.value in ("started", "completed", "success"):
                    self.enough_approvals(flow, deployment)

    def enough_approvals(self, flow: Flow, deployment: Deployment) -> None:
        environment = self.catalog.get(flow.service_id).pipeline.environment(deployment.environment)
        gate = environment.approvals if environment is not None else None
        given = deployment.approvals
        assert len(set(given)) == len(given), given
        if gate is None:
            return
        assert len(given) >= gate.required, (deployment, gate)
        for person in given:
            assert gate.refusal(person, PEOPLE[person], flow.author) is None, (person, flow.author, gate)

    @precondition(lambda self: hasattr(self, "clock"))
    @rule(by=st.sampled_from([1, 9, 10, 29, 30, 45, 120]), schedule=st.booleans())
    def time_passes(self, by: int, schedule: bool) -> None:
        """The clock moves ``by`` minutes; then (or later) a scheduler fires what is due."""
        self.clock.advance(minutes=by)
        if not schedule:
            return
        sent = len(self.emitter.requests)
        paused = {f.id for f in self.flows.values() if f.state == "paused"}
        states = {f.id: f.snapshot() for f in self.flows.values()}
        expected, acted = self.expire()
        assert self.scheduler.run_once() == acted
        self.begins_nothing_new(paused, sent)
        self.announces_nothing_frozen(sent)
        for ref in self.flows.values():  # the scheduler ran: no window that ended still holds
            stored = self.repository.get(ref.id)
            for deployment in stored.deployments:
                if ref.state == "inProgress" and deployment.state.value == "held":
                    frozen = freeze_end(self.catalog, deployment.environment, self.clock.now)
                    assert frozen is not None, deployment
        self.check_history(states, None, set(expected), sent)
        emitted = self.emitter.requests[sent:]
        for flow_id, events in expected.items():
            rows = [
                (
                    r.event,
                    r.webhook_id,
                    r.action.name,
                    r.flow_id,
                    r.payload.deployment.id,
                    r.payload.deployment.state.value,
                )
                for r in emitted
                if r.flow_id == flow_id
            ]
            assert rows == self.fanout(events)
        assert {r.flow_id for r in emitted} <= set(expected)
        for request in emitted:  # a timeout says so in the failures it caused; a soak is no timeout
            if request.flow_id in self.expiries_acted:  # an approval expired: what follows says so
                reason = unstructure(request.payload).get("reason")
                assert reason is None or reason.startswith("approval expired: "), request
                assert not isinstance(request.payload, TimeoutPayload)
                if request.event in (E.APPROVAL_EXPIRED, E.FLOW_FAILED) or isinstance(request.payload, SteeringPayload):
                    assert reason is not None, request
                if isinstance(request.payload, SteeringPayload):
                    assert request.payload.actor == "flowfsm"
                continue
            timed_out = request.event in (E.DEPLOYMENT_FAILED, E.FLOW_FAILED)
            if isinstance(request.payload, SteeringPayload):  # a policy acted on the timeout, or a backoff ended
                said = (request.payload.actor, request.payload.reason)
                backoff = request.event in RETRIED and request.flow_id in self.backoffs_acted
                assert said == ("flowfsm", "timeout") or (backoff and said == ("flowfsm", None)), said
            elif isinstance(request.payload, DeploymentPayload):
                assert isinstance(request.payload, TimeoutPayload) == timed_out
                assert unstructure(request.payload).get("reason") == ("timeout" if timed_out else None)
            else:
                assert request.payload.promotion_result.details == {"reason": "timeout"}
        self.last = None

    @precondition(lambda self: self.last is not None)
    @rule()
    def repeat_last(self) -> None:
        assert self.last is not None
        trigger, before = self.last
        sent = len(self.emitter.requests)
        self.run(trigger)
        assert self.last is not None
        # A failure its policy retried at once left the item at a new attempt, which a
        # report naming no attempt cannot tell from its own: the repeat is what the
        # reference says of it (refused, or a failure of the new attempt), checked by run.
        by_policy = not isinstance(trigger, RetryPromotion | RetryDeployment)
        retried = by_policy and isinstance(before, list) and any(e in RETRIED for e, *_ in before)
        if isinstance(before, list) and not isinstance(trigger, ArtifactCreated) and not retried:
            assert self.last[1] == "duplicate"  # an applied trigger, delivered again
            assert len(self.emitter.requests) == sent

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def stored_flows_match_the_reference(self) -> None:
        if not hasattr(self, "repository"):
            return
        for ref in self.flows.values():
            flow = self.repository.get(ref.id)
            states = [d.state.value for d in flow.deployments]
            assert states == ref.deployments
            assert [[p.state.value for p in d.promotions] for d in flow.deployments] == ref.promotions
            assert flow.state.value == ref.state
            assert [d.attempt for d in flow.deployments] == ref.deployment_attempts
            assert [[p.attempt for p in d.promotions] for d in flow.deployments] == ref.promotion_attempts
            if ref.state == "paused":
                assert flow.pause is not None
                assert (flow.pause.actor, list(flow.pause.failed), flow.pause.held) == (
                    ref.pause_actor,
                    ref.waiting,
                    ref.held,
                )
            else:
                assert flow.pause is None
            if ref.rollback is None:
                assert flow.rollback is None
            else:  # the environment that failed, and the newest other success there
                assert flow.rollback is not None
                assert flow.rollback.environment == ref.rollback[0]
                assert flow.rollback.artifact in ref.rollback[1], (flow.rollback, ref.rollback)
            # Deployments succeed in pipeline order: the successes are a prefix.
            succeeded = states.count("success")
            assert states[:succeeded] == ["success"] * succeeded
            assert sum(s in ("started", "completed") for s in states) <= 1
            assert flow.state.value != "success" or all(s == "success" for s in states)
            if all(s == "success" for s in states):  # a pause may hold the flow's success
                assert flow.state.value in ("success", "paused", "aborted")
        assert self.repository.count_pending() == 0
        assert len(self.repository.list_flows(limit=10_000)) == len(self.flows)

    @invariant()
    def finished_flows_never_move_and_retries_keep_their_attempts(self) -> None:
        """A finished flow (aborted included) is stored exactly as when it finished;
        an attempt never goes back, so a retry never overwrites the earlier attempt's."""
        if not hasattr(self, "repository"):
            return
        for ref in self.flows.values():
            flow = self.repository.get(ref.id)
            if ref.state in FINISHED:
                assert self.finished.setdefault(ref.id, flow) == flow
            for d in flow.deployments:
                for entity_id, attempt in [(d.id, d.attempt), *((p.id, p.attempt) for p in d.promotions)]:
                    assert attempt >= self.attempts.get(entity_id, 1)
                    self.attempts[entity_id] = attempt

    @invariant()
    def history_keeps_every_failure(self) -> None:
        """A retry never loses the earlier attempt's record: every failure the reference
        saw stays in the history, as the item's change to ``failed`` in the entries of
        the step that failed it — a policy's retry within the same step included."""
        if not hasattr(self, "repository"):
            return
        for ref in self.flows.values():
            stored = self.repository.history(ref.id)
            for item, attempt, first, last, _ in ref.failures:
                assert first, (item, attempt)  # every step's failures were placed
                entries = stored[first - 1 : last]
                assert any(c.id == item and c.to == "failed" for e in entries for c in e.changes), (item, attempt)

    @invariant()
    def timers_are_those_the_flows_wait_for(self) -> None:
        """Each stored timer is of a flow in progress or paused, about its current deployment,
        of a kind its state waits for, due when its environment says; and a
        deployment that waits for a timeout or a soak has its timer."""
        if not hasattr(self, "repository"):
            return
        for ref in self.flows.values():
            stored = {(t.deployment_id, t.kind): t.due for t in self.repository.timers(ref.id)}
            # A backoff's timer, of any deployment, until it fires (a stale one included).
            backoffs = {(ref.deployment_ids[i], TimerKind.RETRY): due for i, due in ref.retry_due.items()}
            assert {k: v for k, v in stored.items() if k[1] is TimerKind.RETRY} == backoffs
            stored = {k: v for k, v in stored.items() if k[1] is not TimerKind.RETRY}
            d = ref.current()
            gate = self._environment(ref, d).approvals if d is not None else None
            if ref.open() and d is not None and ref.deployments[d] == "awaitingApproval" and gate and gate.expiry:
                expiry = (ref.deployment_ids[d], TimerKind.APPROVAL)
                assert stored.pop(expiry, None) == ref.requested_at[d] + gate.expiry  # set until it fires
            assert all(kind is not TimerKind.APPROVAL for _, kind in stored)
            if not ref.open() or d is None:  # a paused flow keeps its timers
                assert stored == {}
                continue
            environment, state, deployment_id = self._environment(ref, d), ref.deployments[d], ref.deployment_ids[d]
            timeouts = environment.timeouts or Timeouts()
            assert {i for i, _ in stored} <= {deployment_id}
            wanted: dict[TimerKind, dt.datetime] = {}
            if state == "started" and timeouts.deploy:
                wanted[TimerKind.DEPLOY] = ref.started_at[d] + timeouts.deploy
            if state == "held":
                wanted[TimerKind.FREEZE] = ref.held_until[d]
            if state == "completed":
                if timeouts.verify:
                    wanted[TimerKind.VERIFY] = ref.verify_from[d] + timeouts.verify
                if environment.soak:
                    wanted[TimerKind.SOAK] = ref.completed_at[d] + environment.soak
            for (_, kind), due in stored.items():
                assert wanted.get(kind) == due, (kind, due, wanted)
            pending = "pending" in ref.promotions[d]
            for kind, due in wanted.items():
                # Until it fires: a verify timer only matters while a promotion is pending.
                if due > self.clock.now and (kind is not TimerKind.VERIFY or pending):
                    assert (deployment_id, kind) in stored, kind


TestEngineAgainstReference = EngineAgainstReference.TestCase


# --- environment concurrency (SPEC §11): queue and newest-wins against their own reference ---
#
# A reference of its own, from SPEC §11 and docs/gates.md alone: each lane's occupant
# and its line are kept as plain lists, moved as the contract says, never read from
# the engine. A catalog has one ``queue`` and one ``newest-wins`` service consuming the
# same artifacts; the rules drive flows through announcements, deployments, checks,
# failures (STOP or PAUSE), pauses, retries, skips and aborts. After every step the
# stored flows and lanes must match the reference, and the invariants of the issue
# must hold: at most one active flow per (service, environment); no flow succeeds with
# a promotion neither passed nor skipped; a superseded flow was older than the flow
# that superseded it; the waiting order is arrival order.

LANE_EVENTS = (E.DEPLOYMENT_CREATED, E.DEPLOYMENT_QUEUED, E.FLOW_SUPERSEDED)


@attrs.define
class LaneFlow:
    """A flow of the lanes reference: states by position, its creation order."""

    id: str
    service: Service
    order: int
    deployment_ids: list[str]
    promotion_ids: list[list[str]]
    deployments: list[str]
    promotions: list[list[str]]
    state: str = "inProgress"
    pause_actor: str | None = None
    waiting: list[str] = attrs.field(factory=list)
    held: bool = False
    events: list[HookEvent] = attrs.field(factory=list)
    superseded_by: str | None = None

    def open(self) -> bool:
        return self.state in ("inProgress", "paused")

    def current(self) -> int | None:
        return next((i for i, s in enumerate(self.deployments) if s != "success"), None)

    def environment(self, d: int) -> str:
        return self.service.pipeline.environments[d].name


def lane_catalogs() -> st.SearchStrategy[Catalog]:
    environments = st.lists(
        st.tuples(st.sampled_from(["dev", "staging", "prod"]), st.integers(0, 1)),
        min_size=1,
        max_size=3,
        unique_by=lambda e: e[0],
    )

    def service(concurrency: str, envs: list[tuple[str, int]], strategy: str) -> Service:
        return Service(
            concurrency,
            artifacts=["com.acme:api"],
            pipeline=Pipeline("p", [Environment(name, ["smoke"][:n]) for name, n in envs]),
            webhooks=[Webhook(e.value, e, [Action("a", url="https://h.example/")]) for e in LANE_EVENTS],
            failure_strategy=strategy,
            concurrency=concurrency,
        )

    strategies = st.sampled_from(["STOP", "PAUSE"])
    queue = st.builds(service, st.just("queue"), environments, strategies)
    newest = st.builds(service, st.just("newest-wins"), environments, strategies)
    return st.builds(lambda a, b: Catalog([a, b]), queue, newest)


class LanesAgainstReference(RuleBasedStateMachine):
    """Drives one engine through queued and newest-wins services; subclasses may swap the repository."""

    def make_repository(self) -> Repository:
        return InMemoryRepository()

    @initialize(catalog=lane_catalogs())
    def setup(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.repository = self.make_repository()
        self.clock = FakeClock()
        self.emitter = RecordingEmitter()
        self.engine = FlowEngine(catalog, self.repository, self.emitter, clock=self.clock, id_factory=SequentialIds())
        self.flows: list[LaneFlow] = []
        self.lanes: dict[tuple[str, str], tuple[str | None, list[str]]] = {}
        self.freed: list[tuple[str, str]] = []
        self.versions = 0

    def teardown(self) -> None:
        close: Callable[[], None] | None = getattr(getattr(self, "repository", None), "close", None)
        if close is not None:
            close()

    # --- the reference -------------------------------------------------------------------

    def _flow(self, flow_id: str) -> LaneFlow:
        return next(f for f in self.flows if f.id == flow_id)

    def _lane(self, flow: LaneFlow, d: int) -> tuple[str, str]:
        return (flow.service.id, flow.environment(d))

    def _occupant(self, lane: tuple[str, str]) -> str | None:
        return self.lanes.get(lane, (None, []))[0]

    def _line(self, lane: tuple[str, str]) -> list[str]:
        return self.lanes.setdefault(lane, (None, []))[1]

    def _set_occupant(self, lane: tuple[str, str], flow_id: str | None) -> None:
        self.lanes[lane] = (flow_id, self._line(lane))

    def _announce(self, flow: LaneFlow, turn: bool = False) -> None:
        """The flow's next deployment reaches its environment: held by a pause, or
        through the queue gate (``turn``: the first of the line, whose turn came)."""
        d = flow.current()
        if d is None:
            return
        if flow.state == "paused":
            flow.held = True
            return
        lane = self._lane(flow, d)
        occupant, line = self._occupant(lane), self._line(lane)
        if (occupant is not None and occupant != flow.id) or (not turn and [f for f in line if f != flow.id]):
            flow.deployments[d] = "queued"
            line.append(flow.id)
            flow.events.append(E.DEPLOYMENT_QUEUED)
            if flow.service.concurrency.value == "newest-wins":
                self._newest_wins(flow, d)
            return
        self._set_occupant(lane, flow.id)
        flow.events.append(E.DEPLOYMENT_CREATED)

    def _newest_wins(self, flow: LaneFlow, d: int) -> None:
        lane = self._lane(flow, d)
        rivals = [self._flow(i) for i in [self._occupant(lane), *self._line(lane)] if i is not None and i != flow.id]
        newer = [r for r in rivals if r.order > flow.order]
        if newer:
            self._supersede(flow, max(newer, key=lambda r: r.order))
            return
        for older in [f for f in self.flows if f.service is flow.service and f.open() and f.order < flow.order]:
            waits_here = "queued" in [s for i, s in enumerate(older.deployments) if older.environment(i) == lane[1]]
            if waits_here or older.deployments[0] in ("notStarted", "queued"):
                self._supersede(older, flow)

    def _supersede(self, older: LaneFlow, newer: LaneFlow) -> None:
        older.superseded_by = newer.id
        older.events.append(E.FLOW_SUPERSEDED)
        self._end(older, "superseded")

    def _leave(self, flow: LaneFlow, d: int) -> None:
        """The flow's deployment ``d`` stops occupying or waiting for its environment."""
        lane = self._lane(flow, d)
        if flow.id in self._line(lane):
            self._line(lane).remove(flow.id)
        if self._occupant(lane) == flow.id:
            self._set_occupant(lane, None)
            self.freed.append(lane)

    def _end(self, flow: LaneFlow, state: str) -> None:
        for d in range(len(flow.deployments)):
            self._leave(flow, d)
        flow.state, flow.pause_actor, flow.waiting, flow.held = state, None, [], False

    def _settle_lanes(self) -> None:
        """At the end of the trigger: each freed lane announces its waiting flows, in
        arrival order, until one takes it (a paused one is held, and the next goes)."""
        for lane in self.freed:
            line = self._line(lane)
            while self._occupant(lane) is None and line:
                head = self._flow(line.pop(0))
                d = next(i for i, s in enumerate(head.deployments) if s == "queued")
                head.deployments[d] = "notStarted"
                self._announce(head, turn=True)
        self.freed = []

    def _deployment_succeeds(self, flow: LaneFlow, d: int) -> None:
        if flow.deployments[d] != "completed" or not all(p in ("success", "skipped") for p in flow.promotions[d]):
            return
        flow.deployments[d] = "success"
        self._leave(flow, d)
        self._announce(flow)
        if flow.state == "inProgress" and flow.current() is None:
            flow.state = "success"

    def _fails(self, flow: LaneFlow, d: int, item: str) -> None:
        """A failure, decided by the service's policy: STOP ends the flow, PAUSE holds it."""
        if flow.service.failure_strategy == "STOP":
            flow.deployments[d] = "failed"
            self._leave(flow, d)
            self._end(flow, "failed")
            return
        if flow.state != "paused":
            flow.state, flow.pause_actor = "paused", "flowfsm"
        flow.waiting.append(item)

    def _settle(self, flow: LaneFlow, item: str) -> None:
        if item in flow.waiting:
            flow.waiting.remove(item)
            if not flow.waiting and flow.pause_actor == "flowfsm":
                self._resume(flow)

    def _resume(self, flow: LaneFlow) -> None:
        flow.state, flow.pause_actor = "inProgress", None
        if flow.held:
            flow.held = False
            self._announce(flow)
        if flow.current() is None:
            flow.state = "success"

    # --- driving the engine ----------------------------------------------------------------

    def _run(self, trigger: Trigger, refused: type[FlowFSMError] | None = None) -> None:
        sent = len(self.emitter.requests)
        if refused is not None:
            with pytest.raises(refused):
                self.engine.handle(trigger)
        else:
            assert not self.engine.handle(trigger).duplicate
        self._settle_lanes()
        for flow in self.flows:
            new = [r.event for r in self.emitter.requests[sent:] if r.flow_id == flow.id]
            assert len(new) <= len(flow.events)
            assert new == flow.events[len(flow.events) - len(new) :]
        self.sent = {f.id: [r.event for r in self.emitter.requests if r.flow_id == f.id] for f in self.flows}

    @rule()
    def artifact_created(self) -> None:
        self.versions += 1
        self.clock.advance(minutes=1)  # each artifact newer than the last
        trigger = ArtifactCreated(Artifact("com.acme", "api", str(self.versions)))
        sent = len(self.emitter.requests)
        outcome = self.engine.handle(trigger)
        for service, stored in zip(self.catalog, outcome.flows, strict=True):
            flow = LaneFlow(
                stored.id,
                service,
                len(self.flows),
                [d.id for d in stored.deployments],
                [[p.id for p in d.promotions] for d in stored.deployments],
                ["notStarted"] * len(stored.deployments),
                [["pending"] * len(d.promotions) for d in stored.deployments],
            )
            self.flows.append(flow)
            self._announce(flow)
        self._settle_lanes()
        for flow in self.flows:
            assert [r.event for r in self.emitter.requests if r.flow_id == flow.id] == flow.events
        assert len(self.emitter.requests) >= sent

    def _draw(self, data: st.DataObject, wanted: Callable[[LaneFlow], bool]) -> LaneFlow | None:
        flows = [f for f in self.flows if wanted(f)]
        return data.draw(st.sampled_from(flows)) if flows else None

    @rule(data=st.data())
    def start_a_queued_deployment(self, data: st.DataObject) -> None:
        flow = self._draw(data, lambda f: f.open() and "queued" in f.deployments)
        if flow is not None:
            self._run(DeploymentStarted(flow.deployment_ids[flow.deployments.index("queued")]), InvalidTransition)

    @rule(data=st.data(), fail=st.integers(0, 5))
    def progress(self, data: st.DataObject, fail: int) -> None:
        """The next step of a flow in progress, as the CD system and the checks report it."""
        flow = self._draw(data, lambda f: f.state == "inProgress" and f.current() is not None)
        if flow is None:
            return
        d = flow.current()
        assert d is not None
        state, deployment_id = flow.deployments[d], flow.deployment_ids[d]
        if state == "notStarted":
            flow.deployments[d] = "started"
            self._run(DeploymentStarted(deployment_id))
        elif state == "started" and fail == 0:
            flow.deployments[d] = "failed"
            self._leave(flow, d)
            self._fails(flow, d, deployment_id)
            self._run(DeploymentFailed(deployment_id, "boom"))
        elif state == "started":
            flow.deployments[d] = "completed"
            self._deployment_succeeds(flow, d)
            self._run(DeploymentCompleted(deployment_id))
        elif state == "completed" and "pending" in flow.promotions[d]:
            p = flow.promotions[d].index("pending")
            promotion_id = flow.promotion_ids[d][p]
            status = ResultStatus.FAILED if fail == 0 else ResultStatus.PASSED
            flow.promotions[d][p] = "failed" if fail == 0 else "success"
            if fail == 0:
                self._fails(flow, d, promotion_id)
            else:
                self._deployment_succeeds(flow, d)
            self._run(PromotionCompleted(deployment_id, promotion_id, [PromotionResult(promotion_id, status)]))

    @rule(data=st.data())
    def deal_with_a_failure(self, data: st.DataObject) -> None:
        """A person retries a failed deployment, or skips a failed check, of a flow its policy paused."""
        flow = self._draw(data, lambda f: f.state == "paused" and bool(f.waiting))
        if flow is None:
            return
        item = flow.waiting[0]
        if item in flow.deployment_ids:
            d = flow.deployment_ids.index(item)
            flow.deployments[d] = "notStarted"
            flow.promotions[d] = ["pending"] * len(flow.promotions[d])
            self._announce(flow)
            self._settle(flow, item)
            self._run(RetryDeployment(item, "alice"))
            return
        d = next(i for i, ids in enumerate(flow.promotion_ids) if item in ids)
        flow.promotions[d][flow.promotion_ids[d].index(item)] = "skipped"
        self._deployment_succeeds(flow, d)
        self._settle(flow, item)
        self._run(SkipPromotion(flow.deployment_ids[d], item, "alice", "flaky"))

    @rule(data=st.data())
    def pause_or_resume(self, data: st.DataObject) -> None:
        flow = self._draw(data, lambda f: f.state == "inProgress" or (f.state == "paused" and not f.waiting))
        if flow is None:
            return
        if flow.state == "inProgress":
            flow.state, flow.pause_actor = "paused", "alice"
            self._run(PauseFlow(flow.id, "alice"))
        else:
            self._resume(flow)
            self._run(ResumeFlow(flow.id, "alice"))

    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        flow = self._draw(data, LaneFlow.open)
        if flow is not None:
            self._end(flow, "aborted")
            self._run(AbortFlow(flow.id, "alice"))

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def stored_flows_and_lanes_match_the_reference(self) -> None:
        if not hasattr(self, "repository"):
            return
        for ref in self.flows:
            flow = self.repository.get(ref.id)
            assert flow.state.value == ref.state
            assert [d.state.value for d in flow.deployments] == ref.deployments
            assert [[p.state.value for p in d.promotions] for d in flow.deployments] == ref.promotions
            assert [r.event for r in self.emitter.requests if r.flow_id == ref.id] == ref.events
        lanes = self.repository
        assert isinstance(lanes, Lanes)
        for service in self.catalog:
            for environment in service.pipeline.environments:
                stored = lanes.lane(service.id, environment.name, limit=1000)
                occupant, line = self.lanes.get((service.id, environment.name), (None, []))
                assert (stored.occupant, list(stored.waiting)) == (occupant, line)  # the line in arrival order

    @invariant()
    def at_most_one_active_flow_per_environment(self) -> None:
        if not hasattr(self, "repository"):
            return
        for service in self.catalog:
            for environment in service.pipeline.environments:
                active = []
                for flow in self.repository.list_flows(service_id=service.id, limit=10_000):
                    if flow.state.value not in ("inProgress", "paused"):
                        continue
                    current = flow.current_deployment()
                    if current is None or current.environment != environment.name:
                        continue
                    held = flow.pause is not None and flow.pause.held
                    if current.state.value in ("started", "completed") or (
                        current.state.value == "notStarted" and not held
                    ):
                        active.append(flow.id)
                assert len(active) <= 1, (service.id, environment.name, active)

    @invariant()
    def no_flow_succeeds_with_a_check_neither_passed_nor_skipped(self) -> None:
        if not hasattr(self, "repository"):
            return
        for flow in self.repository.list_flows(limit=10_000):
            if flow.state.value == "success":
                assert all(p.state.value in ("success", "skipped") for d in flow.deployments for p in d.promotions)

    @invariant()
    def a_superseded_flow_was_older_than_the_flow_that_superseded_it(self) -> None:
        if not hasattr(self, "repository"):
            return
        for request in self.emitter.requests:
            if request.event is E.FLOW_SUPERSEDED:
                assert isinstance(request.payload, SteeringPayload)
                assert request.payload.reason is not None
                newer = self._flow(request.payload.reason.split()[3])
                older = self._flow(request.flow_id)
                assert older.order < newer.order
                assert older.superseded_by == newer.id


TestLanesAgainstReference = LanesAgainstReference.TestCase
