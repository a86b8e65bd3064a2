"""``FlowEngine.handle``: one trigger in, one atomic change out.

Data flows one way: the trigger names a flow; the engine loads a copy from the
repository, fires the state machines on it (their callbacks record the hook
events), turns those events into HookRequests, and commits the flow and its
HookRequests together (the outbox). Only then does it hand the HookRequests to
the emitter. Anything raised before the commit leaves the store as it was and
emits nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from flowfsm.catalog import unknown_strategy
from flowfsm.errors import ConcurrencyConflict, InvalidTransition, UnknownPromotion, ValidationError
from flowfsm.machines import Step, fire, may
from flowfsm.model import (
    Artifact,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    HookEvent,
    HookRequest,
    PromotionPayload,
    PromotionState,
    ResultStatus,
    Service,
    make_deployment,
    make_flow,
    make_promotion,
)
from flowfsm.protocols import FailureHandler, HookEmitter, Repository, ServiceCatalog
from flowfsm.strategies import BUILTIN_STRATEGIES, PromotionFailure
from flowfsm.triggers import (
    ArtifactCreated,
    DeploymentCompleted,
    DeploymentStarted,
    Outcome,
    PromotionCompleted,
    Trigger,
)

__all__ = ["FlowEngine", "new_id", "utc_now"]

log = logging.getLogger("flowfsm.engine")

# A deployment in one of these states has been started (or completed) already.
_STARTED: Final = frozenset(DeploymentState) - {DeploymentState.NOT_STARTED}
_COMPLETED: Final = _STARTED - {DeploymentState.STARTED}


class _Ids:
    """The default id factory: a random 64-bit prefix per process and a counter.

    Ids look like ``3f9a0c2e7b1d4a65-17``: unique across processes and restarts (a
    fresh random prefix each time, and after every fork) and cheap, since the
    engine makes one per HookRequest, several per trigger: the counter is turned
    into text by C code (``map``), with no formatting in Python.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        prefix = os.urandom(8).hex() + "-"
        # Builtin functions (repr, operator.add), which C calls faster than the str type
        # or a bound __add__: about a quarter cheaper an id. All of it runs in C, with
        # no Python frame, so threads sharing the source cannot interleave.
        numbers = map(repr, itertools.count(1))
        self.next: Callable[[], str] = map(operator.add, itertools.repeat(prefix), numbers).__next__
        """The id source itself, a C function: the engine takes it once a trigger,
        rather than calling through ``__call__`` for every HookRequest."""

    def __call__(self) -> str:
        return self.next()


new_id: Final[Callable[[], str]] = _Ids()
"""The default id factory (see ``FlowEngine(id_factory=...)``)."""


def utc_now() -> dt.datetime:
    """The default clock."""
    return dt.datetime.now(dt.UTC)


class FlowEngine:
    """Applies triggers to flows.

    ``emitter=None`` leaves every HookRequest in the outbox for a dispatcher
    (``flowfsm.dispatch``) to deliver; otherwise the engine delivers them right
    after the commit, and any it could not deliver stay pending.
    """

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
        for service in catalog:  # fail now, not on the first failed promotion
            self._strategy(service)

    def handle(self, trigger: Trigger) -> Outcome:
        """Apply one trigger atomically and return what it did."""
        apply = _APPLIERS.get(type(trigger)) or _applier(trigger)
        for attempt in range(1, self._max_attempts + 1):
            outcome, changed = apply(self, trigger)
            if not changed:
                return outcome
            try:
                self.repository.commit(changed, outcome.hook_requests, lease=self._lease)
            except ConcurrencyConflict:
                if attempt == self._max_attempts:
                    raise
                log.debug("concurrent change, retrying %s (attempt %d)", type(trigger).__name__, attempt)
                continue
            if outcome.hook_requests and self.emitter is not None:
                self._deliver(self.emitter, outcome.hook_requests)
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    # --- applying triggers: reads only; returns the outcome and the flows to save ---

    def _on_artifact_created(self, trigger: ArtifactCreated) -> tuple[Outcome, list[Flow]]:
        return self._artifact_created(trigger.artifact)

    def _on_deployment_started(self, trigger: DeploymentStarted) -> tuple[Outcome, list[Flow]]:
        step = self._step(trigger.deployment_id)
        return self._outcome(step, self._deployment_started(step))

    def _on_deployment_completed(self, trigger: DeploymentCompleted) -> tuple[Outcome, list[Flow]]:
        step = self._step(trigger.deployment_id)
        return self._outcome(step, self._deployment_completed(step))

    def _on_promotion_completed(self, trigger: PromotionCompleted) -> tuple[Outcome, list[Flow]]:
        step = self._step(trigger.deployment_id)
        return self._outcome(step, self._promotion_completed(step, trigger))

    def _step(self, deployment_id: str) -> Step:
        flow = self.repository.find_by_deployment(deployment_id)
        for i, deployment in enumerate(flow.deployments):
            if deployment.id == deployment_id:
                return Step(flow, self.catalog.get(flow.service_id), i)
        # A repository that returned the wrong flow.
        raise ValidationError("deployment_id", f"flow {flow.id!r} has no {deployment_id!r}")

    def _outcome(self, step: Step, applied: bool) -> tuple[Outcome, list[Flow]]:
        """The next version of the step's flow and its HookRequests, or a duplicate."""
        flow = step.flow
        if not applied:
            return Outcome((flow,), (), duplicate=True), []
        now = self._clock()
        saved = step.merged(version=flow.version + 1, updated_at=now)
        return Outcome((saved,), self._hook_requests(step, now)), [saved]

    def _artifact_created(self, artifact: Artifact) -> tuple[Outcome, list[Flow]]:
        if not isinstance(artifact, Artifact):
            raise ValidationError("artifact", f"expected an Artifact, got {artifact!r}")
        services = self.catalog.for_artifact(artifact.key)
        flows: list[Flow] = []
        created: list[Flow] = []
        requests: list[HookRequest] = []
        now = self._clock()
        for service in services:
            existing = self.repository.find_by_key(artifact.id, service.id)
            if existing is not None:
                flows.append(existing)
                continue
            self._strategy(service)
            flow = self._new_flow(artifact, service, now)
            step = Step(flow, service, 0)
            step.record(HookEvent.DEPLOYMENT_CREATED)
            requests += self._hook_requests(step, now)
            flows.append(flow)
            created.append(flow)
        duplicate = bool(flows) and not created
        return Outcome(tuple(flows), tuple(requests), duplicate), created

    def _new_flow(self, artifact: Artifact, service: Service, now: dt.datetime) -> Flow:
        # Trusted constructors: the ids are fresh, the names come from the validated catalog.
        new_id, deployments = self._new_id, []
        for env in service.pipeline.environments:
            deployment_id = new_id()
            promotions = tuple([make_promotion(new_id(), name, PromotionState.PENDING) for name in env.promotions])
            deployments.append(make_deployment(deployment_id, env.name, promotions, DeploymentState.NOT_STARTED))
        return make_flow(new_id(), artifact, service.id, tuple(deployments), FlowState.IN_PROGRESS, 1, now, now)

    def _deployment_started(self, step: Step) -> bool:
        if step.deployment.state in _STARTED:
            return False  # already recorded: a duplicate
        fire(step.deployment, "start", step)
        return True

    def _deployment_completed(self, step: Step) -> bool:
        if step.deployment.state in _COMPLETED:
            return False
        fire(step.deployment, "complete", step)
        self._advance(step)
        return True

    def _promotion_completed(self, step: Step, trigger: PromotionCompleted) -> bool:
        promotion = step.deployment.promotion(trigger.promotion_id)
        if promotion is None:
            raise UnknownPromotion(trigger.deployment_id, trigger.promotion_id)
        failed = [r for r in trigger.results if r.result_status is ResultStatus.FAILED]
        wanted = PromotionState.FAILED if failed else PromotionState.SUCCESS
        if promotion.state is wanted:
            return False  # the same verdict again
        if promotion.state is not PromotionState.PENDING:
            raise InvalidTransition(
                "promotion",
                promotion.id,
                promotion.state.value,
                "fail" if failed else "succeed",
                f"it already {'passed' if promotion.state is PromotionState.SUCCESS else 'failed'}",
            )
        step.result = failed[0] if failed else trigger.results[0]
        if failed:
            fire(promotion, "fail", step)
            strategy = self._strategy(step.service)
            strategy.on_promotion_failed(PromotionFailure(step, promotion))
        else:
            fire(promotion, "succeed", step)
            self._advance(step)
        return True

    def _advance(self, step: Step) -> None:
        """After a completion or a passed promotion: succeed the deployment if its
        guard allows, then create the next deployment or succeed the flow."""
        if not may(step.deployment, "succeed", step):
            return
        fire(step.deployment, "succeed", step)
        following = step.current_deployment()
        if following is None:
            fire(step.flow, "succeed", step)
        else:
            step.record(HookEvent.DEPLOYMENT_CREATED, following)

    def _strategy(self, service: Service) -> FailureHandler:
        try:
            return self._strategies[service.failure_strategy]
        except KeyError:
            raise unknown_strategy(service, self._strategies, self.catalog) from None

    # --- hook requests -------------------------------------------------------------

    def _hook_requests(self, step: Step, now: dt.datetime) -> tuple[HookRequest, ...]:
        """One HookRequest per subscribed webhook action per event, in declared order."""
        flow, service, new_id = step.flow, step.service, self._new_id
        if type(new_id) is _Ids:  # the default: its C source, taken now (a fork replaces it)
            new_id = new_id.next
        flow_id, artifact, ref = flow.id, flow.artifact, service.ref
        requests: list[HookRequest] = []
        for event, deployment, result, subscribers in step.events:
            payload: DeploymentPayload | PromotionPayload
            if result is not None and (event is HookEvent.PROMOTION_COMPLETED or event is HookEvent.PROMOTION_FAILED):
                payload = PromotionPayload(artifact, deployment, ref, result)
            else:
                environment = service.pipeline.environment(deployment.environment) or _environment(deployment)
                payload = DeploymentPayload(artifact, deployment, ref, environment)
            requests += [
                HookRequest(new_id(), flow_id, webhook_id, action, event, payload, now)
                for webhook_id, action in subscribers
            ]
        return tuple(requests)

    def _deliver(self, emitter: HookEmitter, requests: Sequence[HookRequest]) -> None:
        """Hand committed HookRequests to the emitter, in order; what fails stays pending.

        They are leased to this engine (the commit's ``lease``), so no dispatcher
        sends them meanwhile. Only what may go now goes: the new requests of a flow
        with an earlier one still pending (waiting for a retry, or held by a
        dispatcher) are released at once and wait behind it for a dispatcher.
        """
        try:
            waiting = self.repository.waiting_flows([r.id for r in requests])
            if waiting:
                self.repository.release([r.id for r in requests if r.flow_id in waiting])
                requests = [r for r in requests if r.flow_id not in waiting]
        except Exception:  # the trigger is committed: its requests wait for a dispatcher
            log.warning(
                "could not check the outbox; %d hook request(s) left for the dispatcher", len(requests), exc_info=True
            )
            return
        if not requests:
            return
        emit, sent = emitter.emit, 0
        try:
            for request in requests:
                emit(request)
                sent += 1
        except Exception:
            log.warning(
                "emitter failed on hook request %s; %d left pending for the dispatcher",
                requests[sent].id,
                len(requests) - sent,
                exc_info=True,
            )
            self.repository.release([r.id for r in requests[sent:]])
        finally:
            if sent:
                self.repository.mark_delivered([r.id for r in requests[:sent]])


_Applier = Callable[[FlowEngine, Any], tuple[Outcome, list[Flow]]]
# By class, not bound to an engine: bound methods kept on the engine would make a
# reference cycle, and an engine (with its repository) would wait for the cyclic
# garbage collector instead of going when its last reference does.
_APPLIERS: Final[dict[type, _Applier]] = {
    ArtifactCreated: FlowEngine._on_artifact_created,
    DeploymentStarted: FlowEngine._on_deployment_started,
    DeploymentCompleted: FlowEngine._on_deployment_completed,
    PromotionCompleted: FlowEngine._on_promotion_completed,
}


def _applier(trigger: object) -> _Applier:
    """The applier of a trigger class's subclass, or a clear error for a non-trigger."""
    for kind, apply in _APPLIERS.items():
        if isinstance(trigger, kind):
            return apply
    raise ValidationError("trigger", f"not a trigger: {trigger!r}")


def _environment(deployment: Deployment) -> Environment:
    """The catalog changed since the flow began: describe the environment as the flow has it."""
    return Environment(deployment.environment, [p.name for p in deployment.promotions])
