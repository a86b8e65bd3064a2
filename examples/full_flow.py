"""A full flow: one artifact through dev → staging → prod, every promotion passing.

Run: python examples/full_flow.py
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
    FlowEngine,
    FlowState,
    HookEvent,
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
            pipeline=Pipeline(
                "default",
                [
                    Environment("dev", promotions=["smoke"]),
                    Environment("staging", promotions=["smoke", "perf"]),
                    Environment("prod", promotions=["smoke"]),
                ],
            ),
            webhooks=[
                Webhook(
                    "deployer",
                    HookEvent.DEPLOYMENT_CREATED,
                    [Action("deploy", url="https://cd.example/deploy")],
                ),
                Webhook(
                    "checks",
                    HookEvent.DEPLOYMENT_COMPLETED,
                    [Action("run-checks", url="https://ci.example/checks")],
                ),
                Webhook("chat", HookEvent.FLOW_SUCCEEDED, [Action("announce", url="https://chat.example/hook")]),
            ],
        )
    ]
)


def main() -> None:
    emitter = RecordingEmitter()
    engine = FlowEngine(catalog, InMemoryRepository(), emitter)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.4.0"))).flows[0]
    for deployment in flow.deployments:
        engine.handle(DeploymentStarted(deployment.id))
        engine.handle(DeploymentCompleted(deployment.id))
        for promotion in deployment.promotions:
            result = PromotionResult(promotion.id, ResultStatus.PASSED)
            engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))
    final = engine.repository.get(flow.id)
    assert final.state is FlowState.SUCCESS
    for request in emitter.requests:
        print(
            f"{request.event.value:22} → {request.webhook_id}/{request.action.name}"
            f"  ({request.payload.deployment.environment})"
        )
    print(f"flow {final.id}: {final.state.value}")


if __name__ == "__main__":
    main()
