"""Failure strategies: what a failure does to its deployment and flow.

A failure of any kind — a promotion failed, a deployment failed, later an approval
rejected or a timeout — reaches the strategy as one value, a ``Failure``: what
failed (``kind``), where (the flow, deployment and failed item), and why
(``reason``, and the promotion result when there is one). A strategy is a
``FailureHandler`` (see ``flowfsm.protocols``) registered with the engine under the
name services use as ``failure_strategy``. It acts only through the ``Failure``'s
moves, which fire the state machines, so a strategy cannot skip a guard or forget a
hook event. ``STOP`` is built in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from flowfsm.machines import FailureKind, fire
from flowfsm.model import (
    Deployment,
    DeploymentState,
    FailureStrategy,
    Flow,
    FlowState,
    Promotion,
    PromotionResult,
    Service,
)
from flowfsm.protocols import FailureHandler
from flowfsm.work import FlowDraft

__all__ = ["BUILTIN_STRATEGIES", "Failure", "FailureKind", "Stop"]


class Failure:
    """A failure, and the moves a strategy may make about it.

    ``kind``, ``flow_id``, ``deployment_id``, ``failed_id`` (the id of what failed:
    the promotion or the deployment) and ``reason`` describe it; ``flow`` and
    ``deployment`` show the latest versions, including the strategy's own moves.
    """

    __slots__ = ("_flow", "_index", "failed_id", "kind", "reason")

    def __init__(self, kind: FailureKind, flow: FlowDraft, index: int, failed_id: str, reason: str) -> None:
        self.kind = kind
        self._flow = flow
        self._index = index
        self.failed_id = failed_id
        self.reason = reason

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

    # --- moves: each fires a machine -------------------------------------------------

    def fail_deployment(self) -> None:
        """A completed deployment fails (``deployment-failed``)."""
        fire(self._flow.deployment(self._index), "reject")

    def fail_flow(self) -> None:
        """The flow fails (``flow-failed``)."""
        fire(self._flow.draft(self._index), "fail")


class Stop:
    """``STOP``: the deployment fails (if the failure has not failed it already),
    then the flow (if an earlier failure of the same trigger has not: a verify
    timeout fails every pending promotion at once)."""

    def on_failure(self, failure: Failure) -> None:
        if failure.deployment.state is not DeploymentState.FAILED:
            failure.fail_deployment()
        if failure.flow_state is FlowState.IN_PROGRESS:
            failure.fail_flow()


BUILTIN_STRATEGIES: Final[Mapping[str, FailureHandler]] = {FailureStrategy.STOP.value: Stop()}
