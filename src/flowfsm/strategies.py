"""Failure strategies: what a failure does to its deployment and flow.

A failure of any kind — a promotion failed, a deployment failed, later an approval
rejected or a timeout — reaches the strategy as one value, a ``Failure``: what
failed (``kind``), where (the flow, deployment and failed item), and why
(``reason``, and the promotion result when there is one). A strategy is a
``FailureHandler`` (see ``flowfsm.protocols``) registered with the engine under the
name services use as ``failure_strategy`` (or an environment overrides it with).
It acts only through the ``Failure``'s moves, which fire the state machines, so a
strategy cannot skip a guard or forget a hook event. Built in: ``STOP``, ``RETRY``
(attempts, a backoff through a durable timer, then another strategy), ``PAUSE``
(guided failure: a person retries, skips or aborts) and ``ROLLBACK`` (``STOP``, then
``rollback-requested``). What a policy does itself is recorded with actor ``flowfsm``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from flowfsm import model
from flowfsm.machines import FailureKind, fire, may
from flowfsm.model import (
    FINISHED,
    Artifact,
    Deployment,
    DeploymentState,
    FailureStrategy,
    Flow,
    FlowState,
    HookEvent,
    Promotion,
    PromotionResult,
    RetryPolicy,
    Service,
    Timer,
    TimerKind,
)
from flowfsm.protocols import FailureHandler
from flowfsm.work import FLOWFSM, FlowDraft

__all__ = [
    "BUILTIN_STRATEGIES",
    "FLOWFSM",
    "Failure",
    "FailureKind",
    "PauseStrategy",
    "RetryStrategy",
    "RollbackStrategy",
    "Stop",
]

LastSuccess = Callable[..., Artifact | None]
"""``Repository.last_success(service_id, environment, *, excluding=artifact_id)``."""


class Failure:
    """A failure, and the moves a strategy may make about it.

    ``kind``, ``flow_id``, ``deployment_id``, ``failed_id`` (the id of what failed:
    the promotion or the deployment) and ``reason`` describe it; ``flow`` and
    ``deployment`` show the latest versions, including the strategy's own moves.
    """

    __slots__ = ("_flow", "_index", "_last_success", "_retries", "_strategies", "failed_id", "kind", "reason")

    def __init__(
        self,
        kind: FailureKind,
        flow: FlowDraft,
        index: int,
        failed_id: str,
        reason: str,
        *,
        strategies: Mapping[str, FailureHandler] | None = None,
        last_success: LastSuccess | None = None,
        retries: list[Callable[[], None]] | None = None,
    ) -> None:
        self.kind = kind
        self._flow = flow
        self._index = index
        self.failed_id = failed_id
        self.reason = reason
        self._strategies = strategies or BUILTIN_STRATEGIES
        self._last_success = last_success
        self._retries = retries
        """Where ``retry`` leaves its move until every failure of the trigger is
        decided (the engine's); None: at once."""

    def __repr__(self) -> str:
        return f"Failure({self.kind.value}, {self.failed_id!r} of flow {self.flow_id!r}: {self.reason!r})"

    @property
    def flow_id(self) -> str:
        return self._flow.id

    @property
    def deployment_id(self) -> str:
        return self.deployment.id

    @property
    def flow(self) -> Flow:
        """The flow as this trigger has changed it so far."""
        return self._flow.flow()

    @property
    def flow_state(self) -> FlowState:
        """The flow's state as this trigger has changed it so far."""
        return self._flow.state

    @property
    def deployment(self) -> Deployment:
        """The failed item's deployment, as this trigger has changed it so far."""
        return self._flow.deployments[self._index]

    @property
    def promotion(self) -> Promotion | None:
        """The failed promotion (a promotion's failure), in its latest version, else None."""
        for promotion in self.deployment.promotions:
            if promotion.id == self.failed_id:
                return promotion
        return None

    @property
    def service(self) -> Service:
        return self._flow.service

    @property
    def result(self) -> PromotionResult | None:
        """The promotion result that failed (a promotion's failure), else None."""
        return self._flow.work.result if self.kind is FailureKind.PROMOTION else None

    @property
    def policy(self) -> tuple[str, RetryPolicy]:
        """(the failure strategy, the retry policy) of the failed item's environment."""
        return self._flow.service.policy(self.deployment.environment)

    @property
    def attempt(self) -> int:
        """The attempt of what failed (the promotion, or the deployment)."""
        promotion = self.promotion
        return promotion.attempt if promotion is not None else self.deployment.attempt

    @contextmanager
    def _acting(self) -> Iterator[None]:
        """What the policy records, it records as flowfsm, for the failure's reason."""
        work = self._flow.work
        saved = work.actor, work.reason, work.subject
        work.actor, work.reason = FLOWFSM, self.reason
        work.subject = self.failed_id if self.promotion is not None else None
        try:
            yield
        finally:
            work.actor, work.reason, work.subject = saved

    # --- moves: each fires a machine -------------------------------------------------

    def fail_deployment(self) -> None:
        """A completed deployment fails (``deployment-failed``)."""
        fire(self._flow.deployment(self._index), "reject")

    def fail_flow(self) -> None:
        """The flow fails (``flow-failed``)."""
        fire(self._flow.draft(self._index), "fail")

    def decide_by(self, strategy: str) -> None:
        """Hand the failure to another strategy (``RETRY``'s ``then``)."""
        self._strategies[strategy].on_failure(self)

    def retry(self) -> None:
        """Retry what failed: a promotion pending again (``promotion-retried``), or a
        deployment announced again (``deployment-retried``, ``deployment-created``).

        Made once every failure of the trigger is decided, and only if none of them
        ended the flow: a flow that failed retries nothing. A promotion of a paused
        flow is not begun: it is retried when the flow resumes (a deployment is, its
        announcement held for the resume)."""
        if self._retries is None:
            self._retry_now()
        else:
            self._retries.append(self._retry_now)

    def _retry_now(self) -> None:
        flow, index = self._flow, self._index
        if flow.state in FINISHED:
            return
        with self._acting():
            if self.promotion is not None:
                draft = flow.promotion(index, self.failed_id)
                if flow.state is not FlowState.PAUSED and draft is not None and may(draft, "retry"):
                    fire(draft, "retry")
            else:
                deployment = flow.deployment(index)
                if may(deployment, "retry"):
                    fire(deployment, "retry")

    def retry_later(self, backoff: dt.timedelta) -> None:
        """Retry what failed once ``backoff`` has passed: the deployment's durable
        ``retry`` timer, set again (a later failure replaces an earlier one's)."""
        work = self._flow.work
        now = work.now
        if now is None:  # pragma: no cover - the engine gives a failure's work the time
            raise RuntimeError("a retry's backoff needs the time of the trigger")
        timer = Timer(self.flow_id, self.deployment_id, TimerKind.RETRY, now + backoff)
        work.timers[timer.id] = timer

    def pause(self) -> None:
        """Pause the flow on this failure (``flow-paused``, naming it): a person must
        retry or skip what failed, or abort the flow."""
        flow = self._flow
        with self._acting():
            fire(flow.draft(self._index), "hold")
        flow.paused_by(FLOWFSM, self.reason, self.failed_id)

    def request_rollback(self) -> None:
        """Ask to return the environment to the newest other artifact whose flow of
        this service succeeded there (``rollback-requested``; none: it says so)."""
        flow = self._flow
        environment = self.deployment.environment
        artifact = flow.loaded.artifact
        if self._last_success is None:  # pragma: no cover - the engine refuses ROLLBACK without it
            raise RuntimeError("ROLLBACK needs a repository with last_success")
        target = self._last_success(flow.service.id, environment, excluding=artifact.id)
        flow.rolled_back(model.Rollback(environment, target))
        with self._acting():
            flow.work.record(HookEvent.ROLLBACK_REQUESTED, flow, self._index)


class Stop:
    """``STOP``: the deployment fails (if the failure has not failed it already),
    then the flow (if an earlier failure of the same trigger has not: a verify
    timeout fails every pending promotion at once)."""

    def on_failure(self, failure: Failure) -> None:
        if failure.deployment.state is not DeploymentState.FAILED:
            failure.fail_deployment()
        if failure.flow_state not in FINISHED:  # in progress, or paused by a person
            failure.fail_flow()


class RetryStrategy:
    """``RETRY``: retry what failed, after the policy's backoff, until its attempts are
    spent; a failure of the last attempt goes to the policy's ``then`` (``STOP``)."""

    def on_failure(self, failure: Failure) -> None:
        if failure.flow_state in FINISHED:  # an earlier failure of the trigger ended the flow
            return
        _, policy = failure.policy
        if failure.attempt >= policy.attempts:
            failure.decide_by(policy.then)
        elif policy.backoff:
            failure.retry_later(policy.backoff)
        else:
            failure.retry()


class PauseStrategy:
    """``PAUSE`` (guided failure): the failure stays recorded (a failed promotion leaves
    its deployment completed) and the flow pauses until a person decides."""

    def on_failure(self, failure: Failure) -> None:
        if failure.flow_state not in FINISHED:  # an earlier failure of the trigger may have ended it
            failure.pause()


class RollbackStrategy:
    """``ROLLBACK``: as ``STOP``, then ``rollback-requested`` — unless an approval was
    rejected or expired: nothing was deployed there, so there is nothing to undo."""

    def on_failure(self, failure: Failure) -> None:
        if failure.flow_state in FINISHED:  # an earlier failure of the trigger ended the flow
            return
        Stop().on_failure(failure)
        if failure.kind is not FailureKind.APPROVAL:
            failure.request_rollback()


BUILTIN_STRATEGIES: Final[Mapping[str, FailureHandler]] = {
    FailureStrategy.STOP.value: Stop(),
    FailureStrategy.RETRY.value: RetryStrategy(),
    FailureStrategy.PAUSE.value: PauseStrategy(),
    FailureStrategy.ROLLBACK.value: RollbackStrategy(),
}
