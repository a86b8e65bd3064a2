"""Failure strategies: what a failed promotion does to its deployment and flow.

A strategy is a ``FailureHandler`` (see ``flowfsm.protocols``) registered with the
engine under the name services use as ``failure_strategy``. It acts through
``PromotionFailure``, whose methods fire the state machines, so a strategy
cannot skip a guard or forget a hook event. ``STOP`` is built in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from flowfsm.machines import Step, fire
from flowfsm.model import Deployment, FailureStrategy, Flow, Promotion, PromotionResult, Service
from flowfsm.protocols import FailureHandler

__all__ = ["BUILTIN_STRATEGIES", "PromotionFailure", "Stop"]


class PromotionFailure:
    """A promotion that just failed, and the moves a strategy may make."""

    __slots__ = ("_promotion_id", "step")

    def __init__(self, step: Step, promotion: Promotion) -> None:
        self.step = step
        self._promotion_id = promotion.id

    @property
    def promotion(self) -> Promotion:
        """The failed promotion (its latest version: ``failed``)."""
        promotion = self.step.deployment.promotion(self._promotion_id)
        assert promotion is not None, "a deployment keeps its promotions"
        return promotion

    @property
    def flow(self) -> Flow:
        """The flow as this trigger has changed it so far."""
        return self.step.merged()

    @property
    def deployment(self) -> Deployment:
        """The promotion's deployment, as this trigger has changed it so far."""
        return self.step.deployment

    @property
    def service(self) -> Service:
        return self.step.service

    @property
    def result(self) -> PromotionResult | None:
        return self.step.result

    def fail_deployment(self) -> None:
        fire(self.step.deployment, "fail", self.step)

    def fail_flow(self) -> None:
        fire(self.step.flow, "fail", self.step)


class Stop:
    """``STOP``: the failed promotion fails its deployment, then the flow."""

    def on_promotion_failed(self, failure: PromotionFailure) -> None:
        failure.fail_deployment()
        failure.fail_flow()


BUILTIN_STRATEGIES: Final[Mapping[str, FailureHandler]] = {FailureStrategy.STOP.value: Stop()}
