"""A failed promotion under the STOP strategy fails the deployment and the flow.

Run: python examples/failed_promotion.py
"""

from __future__ import annotations

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    FailureStrategy,
    FlowEngine,
    FlowState,
    HookEvent,
    InvalidTransition,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    Webhook,
)
from flowfsm.emitters import RecordingEmitter
from flowfsm.repositories import InMemoryRepository

catalog = Catalog(
    [
        Service(
            "svc-api",
            artifacts=["com.acme:api"],
            pipeline=Pipeline("default", [Environment("dev", ["smoke", "perf"]), Environment("prod", ["smoke"])]),
            failure_strategy=FailureStrategy.STOP,
            webhooks=[
                Webhook("pager", HookEvent.PROMOTION_FAILED, [Action("page", url="https://pager.example/alert")]),
                Webhook("chat", HookEvent.FLOW_FAILED, [Action("tell", url="https://chat.example/hook")]),
            ],
        )
    ]
)


def main() -> None:
    emitter = RecordingEmitter()
    engine = FlowEngine(catalog, InMemoryRepository(), emitter)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "2.0.0"))).flows[0]
    dev = flow.deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    engine.handle(DeploymentCompleted(dev.id))
    perf = dev.promotions[1]
    outcome = engine.handle(
        PromotionCompleted(
            dev.id,
            perf.id,
            [PromotionResult(perf.id, ResultStatus.FAILED, {"p99_ms": 840, "budget_ms": 300})],
        )
    )
    failed = outcome.flows[0]
    assert failed.state is FlowState.FAILED
    print(f"flow {failed.id}: {failed.state.value}; dev: {failed.deployments[0].state.value}")
    for request in outcome.hook_requests:
        print(f"{request.event.value:18} → {request.webhook_id}/{request.action.name}")
    try:
        engine.handle(DeploymentStarted(flow.deployments[1].id))
    except InvalidTransition as e:
        print(f"refused: {e}")


if __name__ == "__main__":
    main()
