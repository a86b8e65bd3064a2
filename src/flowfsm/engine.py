"""``FlowEngine.handle``: one trigger in, one atomic change out.

Data flows one way: the trigger names a flow; the engine loads it into a unit of
work (``flowfsm.work``), asks the machines (``flowfsm.machines``) to apply the
trigger — they hold every rule: guards, hook events, duplicates, follow-ups — and
hands each failure they declare to the service's failure strategy. It then turns
the recorded hook events into HookRequests, drafts one history entry per changed
flow (``flowfsm.history``), and commits the changed flows, their HookRequests (the
outbox) and their history together. Only then does it hand the HookRequests to the
emitter. Anything raised before the commit leaves the store as it was and emits
nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, ClassVar, Final

from flowfsm import approvals, history, lanes, machines
from flowfsm.catalog import check_policies, overridden_policies, unknown_strategy
from flowfsm.errors import (
    ConcurrencyConflict,
    InvalidTransition,
    UnknownPromotion,
    UnknownService,
    ValidationError,
    shown,
)
from flowfsm.explain import Queued, Waiting
from flowfsm.explain import explain as explain_flow
from flowfsm.model import (
    FINISHED,
    GATED,
    Artifact,
    Concurrency,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    FailurePayload,
    FailureStrategy,
    Flow,
    FlowState,
    HeldPayload,
    HistoryEntry,
    HookEvent,
    HookRequest,
    Payload,
    PromotionPayload,
    PromotionResult,
    PromotionState,
    ResultStatus,
    RollbackPayload,
    Service,
    SteeringPayload,
    TimeoutPayload,
    TimerKind,
    _make_deployment,
    _make_flow,
    _make_promotion,
    timer_id,
)
from flowfsm.protocols import FailureHandler, HookEmitter, Lanes, Repository, ServiceCatalog
from flowfsm.strategies import BUILTIN_STRATEGIES, FLOWFSM, Failure
from flowfsm.triggers import (
    AbortFlow,
    ApprovalGranted,
    ApprovalRejected,
    ArtifactCreated,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    Outcome,
    OverrideFreeze,
    PauseFlow,
    PromotionCompleted,
    ResumeFlow,
    RetryDeployment,
    RetryPromotion,
    SkipPromotion,
    TimerFired,
    Trigger,
)
from flowfsm.work import Draft, FlowDraft, Move, Note, Work

__all__ = ["Applier", "FlowEngine", "new_id", "utc_now"]

log = logging.getLogger("flowfsm.engine")


class _Ids:
    """The default id factory: a random 64-bit prefix per process and a counter.

    Ids look like ``3f9a0c2e7b1d4a65-17``: unique across processes and restarts (a
    fresh random prefix each time, and after every fork) and cheap, since the
    engine makes one per HookRequest, several per trigger: calling the factory runs
    C code only (``map`` over a counter; no Python frame, so threads sharing it
    cannot interleave).
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    @classmethod
    def reset(cls) -> None:
        prefix = os.urandom(8).hex() + "-"
        numbers = map(repr, itertools.count(1))
        # A static method of the class: ``new_id()`` calls the C iterator's __next__ directly.
        cls.__call__ = staticmethod(map(operator.add, itertools.repeat(prefix), numbers).__next__)  # type: ignore[method-assign,assignment]  # replaced per process

    def __call__(self) -> str:  # replaced by reset
        raise NotImplementedError


new_id: Final[Callable[[], str]] = _Ids()
"""The default id factory (see ``FlowEngine(id_factory=...)``)."""


_monotonic: Final = time.monotonic


def utc_now() -> dt.datetime:
    """The default clock: aware, in UTC."""
    return dt.datetime.now(dt.UTC)


Applier = Callable[[Any, Any], tuple[Outcome, list[Flow]]]
"""How an engine applies one trigger class: ``(engine, trigger) -> (outcome, flows to save)``."""


class FlowEngine:
    """Applies triggers to flows.

    ``emitter=None`` leaves every HookRequest in the outbox for a dispatcher
    (``flowfsm.dispatch``) to deliver; otherwise the engine delivers them right
    after the commit, leased to itself for ``lease`` seconds so that a dispatcher
    does not deliver them too, and any it could not deliver stay pending.
    """

    APPLIERS: ClassVar[Mapping[type, Applier]]
    """Trigger class → its applier. Functions of the class, not bound to an engine:
    bound methods kept on the engine would make a reference cycle, and an engine
    (with its repository) would wait for the cyclic garbage collector instead of
    going when its last reference does. A subclass adds its own triggers here."""

    def __init__(
        self,
        catalog: ServiceCatalog,
        repository: Repository,
        emitter: HookEmitter | None,
        *,
        strategies: Mapping[str, FailureHandler] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        id_factory: Callable[[], str] = new_id,
        max_attempts: int = 5,
        lease: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise ValidationError("max_attempts", "must be at least 1")
        self.catalog = catalog
        self.repository = repository
        self.emitter = emitter
        self._strategies = {**BUILTIN_STRATEGIES, **(strategies or {})}
        self._clock = clock
        self._new_id = id_factory
        self._max_attempts = max_attempts
        self._lease = lease if emitter is not None else 0.0
        self._lanes_of: object = None
        self._lanes_kept: Lanes | None = None
        self._clear: set[tuple[int, str]] = set()
        """Lanes of ``parallel`` services (by the service's ``id``) read empty: none comes back."""
        self._all_clear: set[int] = set()
        """The ``parallel`` services (by ``id``) whose lanes all read empty: their work needs none."""
        self._checked: dict[int, Service] = {}
        """The services whose policies were checked, by ``id`` (each kept, so its id stays its)."""
        for service in catalog:  # fail now, not on the first failure
            self._check_policies(service)

    @property
    def _lanes(self) -> Lanes | None:
        """The repository, if it keeps lanes (a ``queue`` or ``newest-wins`` service
        needs them): asked once per repository (one may be given to the engine later)."""
        repository = self.repository
        if repository is not self._lanes_of:
            self._lanes_of = repository
            self._lanes_kept = repository if isinstance(repository, Lanes) else None
        return self._lanes_kept

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        """The engine's clock: the time of record of its triggers (and of timers)."""
        return self._clock

    def handle(self, trigger: Trigger) -> Outcome:
        """Apply one trigger atomically and return what it did."""
        apply, attempt = self._applier(trigger), 1
        while True:
            outcome, changed = apply(self, trigger)
            if not changed:
                return outcome
            history.attribute(outcome.history, trigger)
            try:
                if (
                    outcome.timers or outcome.cancelled or outcome.lanes
                ):  # keywords a repository without them never sees
                    self._commit_timed(changed, outcome)
                else:
                    self.repository.commit(changed, outcome.hook_requests, lease=self._lease, history=outcome.history)
                break
            except ConcurrencyConflict:
                if attempt >= self._max_attempts:
                    raise
                log.debug("concurrent change, retrying %s (attempt %d)", type(trigger).__name__, attempt)
                attempt += 1
        if outcome.hook_requests and self.emitter is not None:
            self._deliver(self.emitter, outcome.hook_requests)
        return outcome

    def explain(self, flow_id: str) -> tuple[Waiting, ...]:
        """What the flow waits for, or how it finished (``flowfsm.explain``): a reading,
        from the flow, its timers and its history as stored; ``UnknownFlow`` if none."""
        repository = self.repository
        flow = repository.get(flow_id)
        try:
            service: Service | None = self.catalog.get(flow.service_id)
        except UnknownService:  # the catalog no longer has it: the flow still explains itself
            service = None
        queued = self._queued(flow)
        return explain_flow(flow, service, repository.timers(flow_id), repository.history(flow_id), queued=queued)

    def _queued(self, flow: Flow) -> Queued | None:
        """Where the flow's current deployment stands in its environment's line, if it is
        queued, or who occupies the environment it will be announced to, if a freeze holds it."""
        current, store = flow.current_deployment(), self._lanes
        if current is None or current.state not in lanes.IN_LINE or store is None:
            return None
        environment = current.environment
        occupant = store.lane(flow.service_id, environment, limit=1).occupant
        state = None
        if occupant is not None:
            for deployment in self.repository.get(occupant).deployments:
                if deployment.environment == environment:
                    state = deployment.state
        return Queued(occupant, state, store.lane_place(flow.service_id, environment, flow.id))

    def _commit_timed(self, changed: list[Flow], outcome: Outcome) -> None:
        if outcome.lanes:
            self._lane_store().commit(
                changed,
                outcome.hook_requests,
                lease=self._lease,
                timers=outcome.timers,
                cancel=outcome.cancelled,
                history=outcome.history,
                lanes=outcome.lanes,
            )
            return
        self.repository.commit(
            changed,
            outcome.hook_requests,
            lease=self._lease,
            timers=outcome.timers,
            cancel=outcome.cancelled,
            history=outcome.history,
        )

    # --- applying triggers: reads only; returns the outcome and the flows to save ---

    def _on_artifact_created(self, trigger: ArtifactCreated) -> tuple[Outcome, list[Flow]]:
        artifact = trigger.artifact
        if not isinstance(artifact, Artifact):
            raise ValidationError("artifact", f"expected an Artifact, got {artifact!r}")
        work, now = Work(), self._clock()
        flows: list[Flow] = []
        created: list[Flow] = []
        for service in self.catalog.for_artifact(artifact.key):
            existing = self.repository.find_by_key(artifact.id, service.id)
            if existing is not None:
                flows.append(existing)
                continue
            self._check_policies(service)
            flow = self._new_flow(artifact, service, now, trigger.actor)
            if service.timed and work.now is None:  # its first deployment's gate may read the time or set a timer
                work.watch(now, ())
            draft = work.open(flow, service)
            self._lanes_for(work, service)
            machines.created(draft)
            flows.append(flow)
            created.append(flow)
        duplicate = bool(flows) and not created
        new = frozenset(f.id for f in created)
        if work.lanes is not None:
            self._settle_lanes(work)
        # A new flow is saved as its gates left it; a flow a new one superseded, as a next version.
        saved = [_as_admitted(flow, work.flows[flow.id]) for flow in created]
        others = [draft for draft in work.changed() if draft.id not in new]
        saved += [draft.flow(version=draft.loaded.version + 1, updated_at=now) for draft in others]
        requests = self._hook_requests(work, now)
        lane_moves = tuple(lanes.lane_moves(work, new)) if work.lanes is not None else ()
        timers = work.timer_changes() if work.timers else None  # a gate's (an approval's expiry, a freeze's end)
        book = work.lanes
        work.close()
        latest = {flow.id: flow for flow in saved}
        outcome = Outcome(tuple(latest.get(flow.id, flow) for flow in flows), requests, duplicate)
        if timers is not None:
            outcome.timers, outcome.cancelled = timers
        if created:
            moves: list[Sequence[Move] | None] = [None] * len(created)
            moves += [draft.moves for draft in others]
            outcome.history = history.draft(moves, saved, requests, now)
            outcome.lanes = lane_moves
            if book is not None and book.superseded:
                _credit(book, outcome.history, new)
        return outcome, saved

    def _on_deployment_started(self, trigger: DeploymentStarted) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_deployment(trigger.deployment_id)
        return self.outcome(work, machines.apply(draft, "start"))

    def _on_deployment_completed(self, trigger: DeploymentCompleted) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_deployment(trigger.deployment_id)
        return self.outcome(work, machines.apply(draft, "complete"))

    def _on_deployment_failed(self, trigger: DeploymentFailed) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_deployment(trigger.deployment_id, reason=trigger.reason)
        return self.outcome(work, machines.apply(draft, "fail"))

    def _on_promotion_completed(self, trigger: PromotionCompleted) -> tuple[Outcome, list[Flow]]:
        failed = [r for r in trigger.results if r.result_status is ResultStatus.FAILED]
        result = failed[0] if failed else trigger.results[0]
        work, deployment = self.open_deployment(trigger.deployment_id, result=result)
        draft = deployment.flow.promotion(deployment.index, trigger.promotion_id)
        if draft is None:
            raise UnknownPromotion(trigger.deployment_id, trigger.promotion_id)
        for reported in trigger.results:
            if reported.attempt is not None and reported.attempt != draft.entity.attempt:
                return self.outcome(work, _stale(draft, reported.attempt))
        return self.outcome(work, machines.apply(draft, "fail" if failed else "succeed"))

    # --- steering: a person acts (SPEC §8) --------------------------------------------

    def _on_pause_flow(self, trigger: PauseFlow) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_flow(trigger.flow_id, actor=trigger.actor, reason=trigger.reason)
        applied = machines.apply(draft, "pause")
        if applied:
            draft.flow.paused_by(trigger.actor, trigger.reason)
        return self.outcome(work, applied)

    def _on_resume_flow(self, trigger: ResumeFlow) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_flow(trigger.flow_id, actor=trigger.actor, reason=trigger.reason)
        applied = machines.apply(draft, "resume")
        if applied:
            self._retry_held(draft.flow)
        return self.outcome(work, applied)

    def _on_abort_flow(self, trigger: AbortFlow) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_flow(trigger.flow_id, actor=trigger.actor, reason=trigger.reason)
        return self.outcome(work, machines.apply(draft, "abort"))

    def _on_retry_promotion(self, trigger: RetryPromotion) -> tuple[Outcome, list[Flow]]:
        return self._steer_promotion(trigger.deployment_id, trigger.promotion_id, "retry", trigger)

    def _on_skip_promotion(self, trigger: SkipPromotion) -> tuple[Outcome, list[Flow]]:
        return self._steer_promotion(trigger.deployment_id, trigger.promotion_id, "skip", trigger)

    def _steer_promotion(
        self, deployment_id: str, promotion_id: str, move: str, trigger: RetryPromotion | SkipPromotion
    ) -> tuple[Outcome, list[Flow]]:
        work, deployment = self.open_deployment(deployment_id, reason=trigger.reason, actor=trigger.actor)
        draft = deployment.flow.promotion(deployment.index, promotion_id)
        if draft is None:
            raise UnknownPromotion(deployment_id, promotion_id)
        work.subject = promotion_id
        applied = machines.apply(draft, move)
        if applied and _settle(draft.flow, deployment.index, promotion_id):
            self._retry_held(draft.flow)
        return self.outcome(work, applied)

    def _on_retry_deployment(self, trigger: RetryDeployment) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_deployment(trigger.deployment_id, reason=trigger.reason, actor=trigger.actor)
        applied = machines.apply(draft, "retry")
        if applied and _settle(draft.flow, draft.index, trigger.deployment_id):
            self._retry_held(draft.flow)
        return self.outcome(work, applied)

    # --- approvals: a person approves or rejects (SPEC §11; flowfsm.approvals) -------------

    def _on_approval_granted(self, trigger: ApprovalGranted) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_deployment(trigger.deployment_id, reason=trigger.reason, actor=trigger.actor)
        return self.outcome(work, approvals.approve(draft, trigger.actor, trigger.groups, trigger.attempt))

    def _on_approval_rejected(self, trigger: ApprovalRejected) -> tuple[Outcome, list[Flow]]:
        work, draft = self.open_deployment(trigger.deployment_id, reason=trigger.reason, actor=trigger.actor)
        return self.outcome(work, approvals.reject(draft, trigger.actor, trigger.groups, trigger.attempt))

    def approvals_for(self, actor: str, groups: Iterable[str] = ()) -> list[approvals.AwaitingApproval]:
        """The deployments awaiting an approval ``actor`` (in ``groups``) may give
        now, newest flow first (``flowfsm.approvals.approvals_for``): a dashboard's
        "waiting for you". The embedding service vouches for the actor and groups."""
        return list(approvals.approvals_for(self.repository, self.catalog, actor, groups))

    # --- freezes: a person lets a held deployment through (SPEC §11; flowfsm.freezes) ---------

    def _on_override_freeze(self, trigger: OverrideFreeze) -> tuple[Outcome, list[Flow]]:
        """A person lets a deployment held by a freeze through (this attempt of it):
        ``freeze-overridden``, then it is announced, through the gates after the freeze."""
        work, draft = self.open_deployment(
            trigger.deployment_id, reason=trigger.reason, actor=trigger.actor, timed=True
        )
        if draft.state is DeploymentState.HELD:
            draft.flow.let_through(draft, trigger.actor)
        return self.outcome(work, machines.apply(draft, "override_freeze"))

    def _retry_held(self, flow: FlowDraft) -> None:
        """The flow resumed: ``RETRY`` begins the retries its pause held back — each
        failed promotion with attempts left whose deployment has no backoff still
        to wait (that timer retries it) — as flowfsm, after ``flow-resumed``."""
        if flow.state is not FlowState.IN_PROGRESS:
            return
        work = flow.work
        if work.now is None:  # a backoff's timer may still be set
            work.watch(self._clock(), self.repository.timers(flow.id))
        saved = work.actor, work.reason, work.subject
        work.actor, work.reason = FLOWFSM, None
        for index, deployment in enumerate(flow.deployments):
            strategy, policy = flow.service.policy(deployment.environment)
            backoff = work.timer(timer_id(deployment.id, TimerKind.RETRY))
            if strategy != _RETRY or (backoff is not None and work.now is not None and backoff.due > work.now):
                continue
            for promotion in deployment.promotions:
                draft = flow.promotion(index, promotion.id)
                if draft is not None and promotion.attempt < policy.attempts and machines.may(draft, "retry"):
                    work.subject = promotion.id
                    machines.fire(draft, "retry")
        work.actor, work.reason, work.subject = saved

    def open_flow(self, flow_id: str, *, actor: str | None, reason: str | None) -> tuple[Work, Draft]:
        """A unit of work holding the flow, and a draft of the flow acting for its
        current deployment (its last, once all succeeded): flow events describe it."""
        flow = self.repository.get(flow_id)
        work = Work(reason=reason, actor=actor)
        service = self.catalog.get(flow.service_id)
        draft = work.open(flow, service)
        self._lanes_for(work, service)
        if service.timed:
            work.watch(self._clock(), self.repository.timers(flow.id))
        current = draft.current()
        return work, draft.draft(len(draft.deployments) - 1 if current is None else current)

    def _on_timer_fired(self, trigger: TimerFired) -> tuple[Outcome, list[Flow]]:
        """A due timer: a duplicate unless it is still set as claimed and due, and its
        deployment still waits for it — the machines' rules say (``time_out`` of a
        started deployment, of each pending promotion of a completed one; the soak
        guard of ``succeed``). Its own cancellation is committed with what it did."""
        work, draft = self.open_deployment(trigger.deployment_id, timed=True)
        timer, now = work.pending.get(trigger.timer_id), work.now
        if timer is None or now is None or timer.due > now:
            return self.outcome(work, False)
        work.timers[timer.id] = None
        return self.outcome(work, _ON_TIMER[trigger.kind](draft, trigger))

    def open_deployment(
        self,
        deployment_id: str,
        *,
        result: PromotionResult | None = None,
        reason: str | None = None,
        actor: str | None = None,
        timed: bool = False,
    ) -> tuple[Work, Draft]:
        """A unit of work holding the deployment's flow, and a draft of the deployment
        to apply a trigger to (``flowfsm.machines.apply``); then ``outcome``. When
        the flow's pipeline has timers (or ``timed``), the work also gets the time
        and the flow's stored timers."""
        flow = self.repository.find_by_deployment(deployment_id)
        work = Work(result=result, reason=reason, actor=actor)
        service = self.catalog.get(flow.service_id)
        draft = work.open(flow, service)
        self._lanes_for(work, service)
        if timed or service.timed:
            work.watch(self._clock(), self.repository.timers(flow.id))
        index = draft.index(deployment_id)
        if index is None:  # a repository that returned the wrong flow
            raise ValidationError("deployment_id", f"flow {flow.id!r} has no {deployment_id!r}")
        return work, draft.deployment(index)

    def outcome(self, work: Work, applied: bool) -> tuple[Outcome, list[Flow]]:
        """What a trigger applied to ``work`` did (``applied``: it was not a duplicate),
        and the flows to save: the failure strategies decide the failures, then every
        changed flow gets its next version, and the hook events their HookRequests."""
        if not applied:
            outcome = Outcome(tuple(draft.loaded for draft in work.flows.values()), duplicate=True)
            work.close()
            return outcome, []
        self._decide(work)
        if work.lanes is not None:
            self._settle_lanes(work)
        now = self._clock()
        drafts = work.changed()
        saved = [draft.flow(version=draft.loaded.version + 1, updated_at=now) for draft in drafts]
        outcome = Outcome(tuple(saved), self._hook_requests(work, now))
        outcome.history = history.draft([draft.moves for draft in drafts], saved, outcome.hook_requests, now)
        if work.lanes is not None and work.lanes.superseded:
            _credit(work.lanes, outcome.history, set(itertools.islice(work.flows, 1)))
        if work.timers:
            outcome.timers, outcome.cancelled = work.timer_changes()
        if work.lanes is not None:
            outcome.lanes = tuple(lanes.lane_moves(work))
        work.close()
        return outcome, saved

    def _decide(self, work: Work) -> None:
        """Hand each failure the machines declared to its service's strategy, in order
        (a strategy's moves may declare more)."""
        failures = work.failures
        if not failures:
            return
        repository = self.repository
        if work.now is None:  # a policy may set a timer (RETRY's backoff)
            work.watch(self._clock(), [t for flow_id in work.flows for t in repository.timers(flow_id)])
        strategies, last_success = self._strategies, getattr(repository, "last_success", None)  # ROLLBACK's alone
        retries: list[Callable[[], None]] = []  # made once all are decided (``Failure.retry``)
        while failures or retries:
            if not failures:
                retries.pop(0)()
                continue
            kind, flow, index, failed_id = failures.pop(0)
            reason = work.reason or _why(flow, index, failed_id)
            strategy, _ = flow.service.policy(flow.deployments[index].environment)
            failure = Failure(
                kind, flow, index, failed_id, reason, strategies=strategies, last_success=last_success, retries=retries
            )
            self._strategies[strategy].on_failure(failure)

    # --- environment concurrency (SPEC §11) -------------------------------------------

    def _lane_store(self) -> Lanes:
        """The repository's lanes; a ``ValidationError`` if it keeps none (a repository
        given to the engine after it checked its services: ``_check_policies``)."""
        store = self._lanes
        if store is None:
            raise ValidationError(
                "concurrency", f"{type(self.repository).__name__} keeps no lanes (flowfsm.protocols.Lanes)"
            )
        return store

    def _lanes_for(self, work: Work, service: Service) -> None:
        """Give the work the lanes, if the service runs one flow at a time per environment,
        or was made ``parallel`` and may have flows left in a lane (``_drain``)."""
        if work.lanes is not None or self._lanes is None or id(service) in self._all_clear:
            return
        if service.concurrency is _PARALLEL and all(
            (id(service), env.name) in self._clear for env in service.pipeline.environments
        ):
            self._all_clear.add(id(service))
            return
        work.lanes = lanes.LaneBook(self._lanes, work)

    def _settle_lanes(self, work: Work) -> None:
        """After the trigger and its failure policies, in the same unit of work: each
        flow that started waiting under ``newest-wins`` ends the older ones it
        supersedes (or is ended by a newer one); each lane a flow left free
        announces its next waiting flow, through its gates again (one a gate keeps,
        a freeze, or a pause, lets the next one try), until the lanes settle."""
        book = work.lanes
        if book is None:
            return
        handled, tried = 0, set[str]()
        while True:
            if handled < len(book.started_waiting):
                flow, index = book.started_waiting[handled]
                handled += 1
                if flow.service.concurrency is _NEWEST_WINS and flow.deployments[index].state in lanes.IN_LINE:
                    self._newest_wins(work, flow, index)
                continue
            for service, environment in lanes.freed(work):
                service_id = service.id
                if service.concurrency is _PARALLEL:
                    if self._drained(book, service, environment):
                        continue
                elif book.occupant(service_id, environment) is not None:
                    continue
                head = next((f for f in book.waiting(service_id, environment) if f not in tried), None)
                if head is not None:
                    tried.add(head)
                    self._dequeue(work, head, service_id, environment)
                    break
            else:
                return

    def _drained(self, book: lanes.LaneBook, service: Service, environment: str) -> bool:
        """A lane of a service made ``parallel`` (a catalog changed it): the flows left
        waiting in it are each announced in turn, as nothing holds them now; a lane
        read empty is not read again (nothing joins a lane of a ``parallel`` service)."""
        key = (id(service), environment)
        if key in self._clear:
            return True
        lane = book.stored(service.id, environment)
        if lane.occupant is None and not lane.waiting:
            self._clear.add(key)
            return True
        return False

    def _open(self, work: Work, flow_id: str, service: Service) -> FlowDraft:
        """The flow in the work, opened from the repository if the work has not yet
        (with its timers and the time, if its gates or timers read them)."""
        draft = work.flows.get(flow_id)
        if draft is not None:
            return draft
        draft = work.open(self.repository.get(flow_id), service)
        if service.timed:
            work.watch(work.now or self._clock(), self.repository.timers(flow_id))
        return draft

    def _dequeue(self, work: Work, flow_id: str, service_id: str, environment: str) -> None:
        flow = self._open(work, flow_id, self.catalog.get(service_id))
        for index, deployment in enumerate(flow.deployments):
            if deployment.environment == environment and deployment.state is _QUEUED:
                machines.fire(flow.deployment(index), "dequeue")

    def _newest_wins(self, work: Work, flow: FlowDraft, index: int) -> None:
        """``flow`` just started waiting for the environment of its deployment
        ``index``: a newer flow occupying it or waiting for it supersedes it (an older
        artifact never follows a newer one); else it supersedes every older flow of
        the service that waits there (at any gate) or has not started its first
        deployment. "Newer": created later; at the same instant, the one that came
        to the environment later. Flows deploying or verifying are left alone."""
        service, environment = flow.service, flow.deployments[index].environment
        book, created = work.lanes, _created(flow)
        if book is None:
            return
        rivals = [book.occupant(service.id, environment, other_than=flow.id), *book.waiting(service.id, environment)]
        newest: FlowDraft | None = None
        for rival_id in rivals:
            if rival_id is None or rival_id == flow.id:
                continue
            rival = self._open(work, rival_id, service)
            if _created(rival) > created and (newest is None or _created(rival) > _created(newest)):
                newest = rival
        if newest is not None:
            _supersede(flow, newest)
            return
        for stored in self._open_flows(service.id):
            older = self._open(work, stored.id, service)
            if older.id == flow.id or older.state in FINISHED or _created(older) > created:
                continue
            waits_here = any(d.environment == environment and d.state in GATED for d in older.deployments)
            first = older.deployments[0].state if older.deployments else None
            if waits_here or first is _NOT_STARTED or first in GATED:
                _supersede(older, flow)

    def _open_flows(self, service_id: str) -> list[Flow]:
        """The service's flows in progress or paused, as stored (every page)."""
        from flowfsm.repositories._common import MAX_PAGE  # not with the engine: the SQL backends' module loads cattrs

        found: list[Flow] = []
        for state in (FlowState.IN_PROGRESS, FlowState.PAUSED):
            offset = 0
            while True:
                page = self.repository.list_flows(service_id=service_id, state=state, limit=MAX_PAGE, offset=offset)
                found += page
                if len(page) < MAX_PAGE:
                    break
                offset += MAX_PAGE
        return found

    def _new_flow(self, artifact: Artifact, service: Service, now: dt.datetime, author: str | None = None) -> Flow:
        # Trusted constructors: the ids are fresh, the names come from the validated catalog.
        new_id, deployments = self._new_id, []
        for env in service.pipeline.environments:
            deployment_id = new_id()
            promotions = tuple([_make_promotion(new_id(), name, PromotionState.PENDING) for name in env.promotions])
            deployments.append(_make_deployment(deployment_id, env.name, promotions, DeploymentState.NOT_STARTED))
        return _make_flow(
            new_id(), artifact, service.id, tuple(deployments), FlowState.IN_PROGRESS, 1, now, now, author=author
        )

    def _applier(self, trigger: object) -> Applier:
        """The applier of the trigger's class (or of the class it subclasses), or a
        clear error for a non-trigger."""
        appliers = self.APPLIERS
        apply = appliers.get(type(trigger))
        if apply is not None:
            return apply
        for kind, apply in appliers.items():
            if isinstance(trigger, kind):
                return apply
        raise ValidationError("trigger", f"not a trigger: {trigger!r}")

    def _strategy(self, service: Service) -> FailureHandler:
        try:
            return self._strategies[service.failure_strategy]
        except KeyError:
            raise unknown_strategy(service, self._strategies, self.catalog) from None

    def _check_policies(self, service: Service) -> None:
        """Every failure strategy the service may use is known (``check_policies``),
        and ``ROLLBACK`` has the repository lookup it needs; a ``queue`` or
        ``newest-wins`` service has a repository that keeps lanes: once per service
        (a catalog may hand out a new one at any time)."""
        if id(service) in self._checked:
            return
        check_policies(service, self._strategies, self.catalog)
        if getattr(self.repository, "last_success", None) is None:
            named = {service.failure_strategy, *(name for _, _, name in overridden_policies(service))}
            if _ROLLBACK in named:
                raise ValidationError(
                    "failure_strategy",
                    f"service {shown(service.id)} uses {_ROLLBACK!r}, and {type(self.repository).__name__}"
                    " has no last_success (flowfsm.protocols.FlowHistory), the rollback index it reads",
                )
        if service.concurrency is not _PARALLEL and self._lanes is None:
            raise ValidationError(
                "concurrency",
                f"service {shown(service.id)} runs {service.concurrency.value!r}, and"
                f" {type(self.repository).__name__} keeps no lanes (flowfsm.protocols.Lanes)",
            )
        self._checked[id(service)] = service

    # --- hook requests -------------------------------------------------------------

    def _hook_requests(self, work: Work, now: dt.datetime) -> tuple[HookRequest, ...]:
        """One HookRequest per subscribed webhook action per event, in recorded order."""
        new_id = self._new_id
        requests: list[HookRequest] = []
        make = TimeoutPayload if work.timed_out else DeploymentPayload
        for event, flow, deployment, result, subscribers in work.events:
            payload: Payload
            service = flow.service
            if result is not None and (event is HookEvent.PROMOTION_COMPLETED or event is HookEvent.PROMOTION_FAILED):
                payload = PromotionPayload(flow.loaded.artifact, deployment, service.ref, result)  # type: ignore[arg-type]  # a promotion event's result is the trigger's, never a steering Note
            else:
                environment = service.pipeline.environment(deployment.environment) or _environment(deployment)
                if type(result) is Note:  # a steering event: who acted, and why
                    payload = _steering_payload(event, flow, deployment, environment, result)
                elif event is HookEvent.DEPLOYMENT_HELD:
                    payload = _held_payload(flow, deployment, environment)
                elif event not in _TIMED_OUT:
                    # A failure says why in the events it caused (not in what a policy announces after).
                    payload = DeploymentPayload(flow.loaded.artifact, deployment, service.ref, environment)
                elif make is TimeoutPayload or work.reason is None:
                    payload = make(flow.loaded.artifact, deployment, service.ref, environment)
                else:  # the reason the trigger gave (the CD system's, for DeploymentFailed)
                    payload = FailurePayload(flow.loaded.artifact, deployment, service.ref, environment, work.reason)
            flow_id = flow.id
            requests += [
                HookRequest(new_id(), flow_id, webhook_id, action, event, payload, now)
                for webhook_id, action in subscribers
            ]
        return tuple(requests)

    def _deliver(self, emitter: HookEmitter, requests: Sequence[HookRequest]) -> None:
        """Hand committed HookRequests to the emitter, in order; what fails stays pending.

        They are leased to this engine (the commit's ``lease``), so no dispatcher
        sends them meanwhile; with a slow emitter, the engine renews the lease
        between two requests once a third of it has passed, so the lease must
        outlast one request's delivery. A lease is real time, as the repository
        measures it, not the engine's (injectable) clock of record. Only what may go now
        goes: the new requests of a flow with an earlier one still pending (waiting
        for a retry, or held by a dispatcher) are released at once and wait behind
        it for a dispatcher. The trigger is committed already, so nothing here
        raises: trouble is logged, and what is left is the dispatcher's. An interrupt
        (``KeyboardInterrupt``, any ``BaseException``) goes on up, once what was sent
        is recorded and the rest released, so that neither waits out the lease.
        """
        repository = self.repository
        ids = [r.id for r in requests]
        try:
            waiting = repository.waiting_flows(ids)
            if waiting:
                repository.release([r.id for r in requests if r.flow_id in waiting])
                requests = [r for r in requests if r.flow_id not in waiting]
                ids = [r.id for r in requests]
        except Exception:  # the trigger is committed: its requests wait for a dispatcher
            log.warning(
                "could not check the outbox; %d hook request(s) left for the dispatcher", len(requests), exc_info=True
            )
            return
        if not requests:
            return
        lease, emit, sent = self._lease, emitter.emit, 0
        renew_at = _monotonic() + lease / 3
        try:
            for request in requests:
                if _monotonic() >= renew_at:  # a slow emitter: keep them all leased until they are recorded
                    repository.renew(ids, lease=lease)
                    renew_at = _monotonic() + lease / 3
                emit(request)
                sent += 1
        except Exception:  # any emitter failure leaves the rest to the dispatcher
            log.warning(
                "emitter failed on hook request %s; %d left pending for the dispatcher",
                requests[sent].id,
                len(requests) - sent,
                exc_info=True,
            )
            _logged(repository.release, ids[sent:])
        except BaseException:  # interrupted (Ctrl-C): recorded as below, then it goes on up
            _logged(repository.release, ids[sent:])
            if sent:
                _logged(repository.mark_delivered, ids[:sent])
            raise
        if sent:
            _logged(repository.mark_delivered, ids[:sent])


def _logged(record: Callable[[list[str]], object], ids: list[str]) -> None:
    """Record what inline delivery did; a failure only costs a second delivery by a
    dispatcher once the lease ends (receivers deduplicate by id), so it is logged."""
    try:
        record(ids)
    except Exception:  # see the docstring
        log.warning("could not record inline delivery of %d hook request(s)", len(ids), exc_info=True)


FlowEngine.APPLIERS = {
    ArtifactCreated: FlowEngine._on_artifact_created,
    DeploymentStarted: FlowEngine._on_deployment_started,
    DeploymentCompleted: FlowEngine._on_deployment_completed,
    DeploymentFailed: FlowEngine._on_deployment_failed,
    PromotionCompleted: FlowEngine._on_promotion_completed,
    TimerFired: FlowEngine._on_timer_fired,
    PauseFlow: FlowEngine._on_pause_flow,
    ResumeFlow: FlowEngine._on_resume_flow,
    AbortFlow: FlowEngine._on_abort_flow,
    RetryPromotion: FlowEngine._on_retry_promotion,
    SkipPromotion: FlowEngine._on_skip_promotion,
    RetryDeployment: FlowEngine._on_retry_deployment,
    ApprovalGranted: FlowEngine._on_approval_granted,
    ApprovalRejected: FlowEngine._on_approval_rejected,
    OverrideFreeze: FlowEngine._on_override_freeze,
}


_TIMED_OUT: Final = frozenset({HookEvent.DEPLOYMENT_FAILED, HookEvent.FLOW_FAILED})
"""The events of a failure: their payloads say why (``timeout``, or the trigger's reason)."""


_RETRY: Final = FailureStrategy.RETRY.value
_ROLLBACK: Final = FailureStrategy.ROLLBACK.value
_PARALLEL: Final = Concurrency.PARALLEL
_NEWEST_WINS: Final = Concurrency.NEWEST_WINS
_QUEUED: Final = DeploymentState.QUEUED
_NOT_STARTED: Final = DeploymentState.NOT_STARTED


def _as_admitted(flow: Flow, draft: FlowDraft) -> Flow:
    """A new flow as its first deployment's gates left it: the very flow made, if
    they let it through (the usual case), else the draft's version of it."""
    if draft.state is flow.state and all(
        d.state is made.state for d, made in zip(draft.deployments, flow.deployments, strict=True)
    ):
        return flow
    return draft.flow()


_LONG_AGO: Final = dt.datetime.min.replace(tzinfo=dt.UTC)


def _created(flow: FlowDraft) -> dt.datetime:
    """When the flow was created; one built without the time counts as the oldest."""
    created = flow.loaded.created_at
    return _LONG_AGO if created is None else created


def _credit(book: lanes.LaneBook, entries: Sequence[HistoryEntry], own: AbstractSet[str]) -> None:
    """The history of each flow a newer one superseded says so, as flowfsm's act, but
    for the trigger's own flows (``own``), whose entries hold what the trigger did."""
    reasons = {flow_id: why for flow_id, why in book.superseded.items() if flow_id not in own}
    history.credit(entries, reasons, FLOWFSM)


def _supersede(older: FlowDraft, newer: FlowDraft) -> None:
    """``newer`` supersedes ``older`` (``flow-superseded``, by flowfsm, naming the newer flow)."""
    work = older.work
    saved = work.actor, work.reason, work.subject
    work.actor, work.subject = FLOWFSM, None
    work.reason = f"superseded by flow {newer.id} (artifact {newer.loaded.artifact.id})"
    if work.lanes is not None:
        work.lanes.superseded[older.id] = work.reason
    current = older.current()
    machines.fire(older.draft(len(older.deployments) - 1 if current is None else current), "supersede")
    work.actor, work.reason, work.subject = saved


def _stale(draft: Draft, attempt: int) -> bool:
    """A result naming another attempt than the promotion's: an earlier one's is
    stale (a duplicate: False); a later one's cannot be (``InvalidTransition``)."""
    promotion = draft.entity
    if attempt < promotion.attempt:
        return False
    reason = f"the result reports attempt {attempt}; the promotion is at attempt {promotion.attempt}"
    raise InvalidTransition("promotion", promotion.id, promotion.state.value, "complete", reason)


def _settle(flow: FlowDraft, index: int, item_id: str) -> bool:
    """A failed item was retried or skipped: if the flow's failure policy paused it
    waiting on that item (and no other), the flow resumes (``flow-resumed``; True)."""
    if flow.settled(item_id) and flow.state is FlowState.PAUSED:
        machines.fire(flow.draft(index), "release")
        return True
    return False


def _retry_due(draft: Draft) -> bool:
    """A deployment's retry backoff passed: retry each of its failed items that has
    attempts left (none: a stale timer, a duplicate). As flowfsm. A paused flow
    begins no check: its promotions are retried when it resumes (``_retry_held``)."""
    flow, index = draft.flow, draft.index
    deployment = draft.deployment
    _, policy = flow.service.policy(deployment.environment)
    work, applied = flow.work, False
    paused = flow.state is FlowState.PAUSED
    for promotion in deployment.promotions:
        pending = flow.promotion(index, promotion.id)
        if (
            not paused
            and pending is not None
            and promotion.attempt < policy.attempts
            and machines.may(pending, "retry")
        ):
            work.subject = promotion.id
            machines.fire(pending, "retry")
            applied = True
    work.subject = None
    if deployment.attempt < policy.attempts and machines.may(draft, "retry"):
        machines.fire(draft, "retry")
        applied = True
    return applied


def _retry_now(draft: Draft, trigger: TimerFired) -> bool:
    """A retry's backoff ended (``_retry_due``), as flowfsm."""
    draft.flow.work.actor = trigger.actor
    return _retry_due(draft)


def _expire(draft: Draft, _: TimerFired) -> bool:
    """An approval request's expiry (``flowfsm.approvals.expire``)."""
    return approvals.expire(draft)


def _thaw(draft: Draft, trigger: TimerFired) -> bool:
    """The freeze ended: the held deployment is announced, through the gates again."""
    draft.flow.work.actor = trigger.actor
    return _fired_if_allowed(draft, "thaw")


def _soaked(draft: Draft, _: TimerFired) -> bool:
    """The soak ended: the deployment succeeds if its promotions passed."""
    return _fired_if_allowed(draft, "succeed")


def _deploy_timed_out(draft: Draft, _: TimerFired) -> bool:
    """The deploy timeout passed: a started deployment fails (``timeout``)."""
    work = draft.flow.work
    work.timed_out, work.reason = True, "timeout"
    return machines.apply(draft, "time_out")


def _verify_timed_out(draft: Draft, _: TimerFired) -> bool:
    """The verify timeout passed: each promotion still pending fails (``timeout``)."""
    flow, index = draft.flow, draft.index
    work = flow.work
    work.timed_out, work.reason = True, "timeout"
    applied = False
    for promotion in draft.deployment.promotions:
        pending = flow.promotion(index, promotion.id)
        if pending is not None and machines.may(pending, "time_out"):
            work.result = PromotionResult(promotion.id, ResultStatus.FAILED, {"reason": "timeout"})
            machines.fire(pending, "time_out")
            applied = True
    return applied


def _fired_if_allowed(draft: Draft, trigger: str) -> bool:
    applied = machines.may(draft, trigger)
    if applied:
        machines.fire(draft, trigger)
    return applied


_ON_TIMER: Final[Mapping[TimerKind, Callable[[Draft, TimerFired], bool]]] = {
    TimerKind.DEPLOY: _deploy_timed_out,
    TimerKind.VERIFY: _verify_timed_out,
    TimerKind.SOAK: _soaked,
    TimerKind.RETRY: _retry_now,
    TimerKind.APPROVAL: _expire,
    TimerKind.FREEZE: _thaw,
}
"""What a due timer of each kind does to its deployment (True: something changed;
False: a stale timer, a duplicate). A new timer kind adds its line here."""


def _steering_payload(
    event: HookEvent, flow: FlowDraft, deployment: Deployment, environment: Environment, note: Note
) -> SteeringPayload:
    promotion = deployment.promotion(note.promotion_id) if note.promotion_id is not None else None
    artifact, service = flow.loaded.artifact, flow.service.ref
    if event is HookEvent.ROLLBACK_REQUESTED:
        target = flow.rollback.artifact if flow.rollback is not None else None
        return RollbackPayload(artifact, deployment, service, environment, note.actor, note.reason, promotion, target)
    return SteeringPayload(artifact, deployment, service, environment, note.actor, note.reason, promotion)


def _held_payload(flow: FlowDraft, deployment: Deployment, environment: Environment) -> DeploymentPayload:
    """``deployment-held``'s payload: the freeze holding the deployment, as the gate saw it."""
    now = flow.work.now
    freeze = flow.service.freeze(deployment.environment, now) if now is not None else None
    artifact, service = flow.loaded.artifact, flow.service.ref
    if freeze is None:  # pragma: no cover - the gate holds a deployment only when a freeze is in force now
        return DeploymentPayload(artifact, deployment, service, environment)
    return HeldPayload(artifact, deployment, service, environment, freeze.window, freeze.until)


def _why(flow: FlowDraft, index: int, failed_id: str) -> str:
    """A failure's reason when the trigger gave none: what failed, by name."""
    deployment = flow.deployments[index]
    for promotion in deployment.promotions:
        if promotion.id == failed_id:
            return f"promotion {promotion.name!r} failed"
    return f"deployment to {deployment.environment!r} failed"


def _environment(deployment: Deployment) -> Environment:
    """The catalog changed since the flow began: describe the environment as the flow has it."""
    return Environment(deployment.environment, [p.name for p in deployment.promotions])
