"""Time in a flow: a deployment that takes too long times out under STOP, and a
soak keeps prod waiting after staging's checks have passed.

A fake clock stands in for the wall clock, and the scheduler runs one round at a
time, so the example shows what happens at each moment without waiting.

Run: python examples/timeouts_and_soak.py
"""

from __future__ import annotations

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    DeploymentState,
    Environment,
    FlowEngine,
    FlowState,
    HookEvent,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    Timeouts,
    Webhook,
)
from flowfsm.converter import unstructure
from flowfsm.emitters import RecordingEmitter
from flowfsm.repositories import SQLiteRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock

catalog = Catalog(
    [
        Service(
            "svc-api",
            artifacts=["com.acme:api"],
            pipeline=Pipeline(
                "default",
                [
                    Environment("staging", ["smoke"], timeouts=Timeouts(deploy="30m", verify="1h"), soak="2h"),
                    Environment("prod", ["smoke"], timeouts=Timeouts(deploy="30m")),
                ],
            ),
            webhooks=[Webhook(f"log-{e.value}", e, [Action("log", url="https://log.example/cd")]) for e in HookEvent],
        )
    ]
)


def main() -> None:
    clock = FakeClock()
    emitter = RecordingEmitter()
    repository = SQLiteRepository(":memory:")
    engine = FlowEngine(catalog, repository, emitter, clock=clock)
    scheduler = Scheduler(repository, engine)  # the engine's clock says what is due

    def moment(label: str) -> None:
        print(f"[+{clock.now - start}] {label}")
        if not emitter.requests:
            print("    (no events)")
        for request in emitter.requests:
            reason = unstructure(request.payload).get("reason")
            print(f"    {request.event.value}{f' (reason: {reason})' if reason else ''}")
        emitter.clear()

    start = clock.now
    # 1. Version 1.0.0 reaches staging, which never reports "completed".
    late = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows[0]
    engine.handle(DeploymentStarted(late.deployments[0].id))
    emitter.clear()
    clock.advance(minutes=29)
    scheduler.run_once()
    moment("1.0.0 started in staging; 29 minutes on, nothing is due")
    clock.advance(minutes=1)
    scheduler.run_once()
    moment("30 minutes: staging's deploy timeout fails it, and STOP fails the flow")
    assert repository.get(late.id).state is FlowState.FAILED

    # 2. Version 1.1.0 passes staging's checks at once, but staging soaks for two hours.
    start = clock.now
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.1.0"))).flows[0]
    staging = flow.deployments[0]
    engine.handle(DeploymentStarted(staging.id))
    engine.handle(DeploymentCompleted(staging.id))
    smoke = staging.promotions[0]
    engine.handle(PromotionCompleted(staging.id, smoke.id, [PromotionResult(smoke.id, ResultStatus.PASSED)]))
    emitter.clear()
    clock.advance(minutes=90)
    scheduler.run_once()
    moment("1.1.0 passed staging's smoke test; 90 minutes on, it still soaks")
    assert repository.get(flow.id).deployments[0].state is DeploymentState.COMPLETED
    clock.advance(minutes=30)
    scheduler.run_once()
    moment("2 hours: the soak is over, staging succeeds and prod is announced")
    assert repository.get(flow.id).deployments[0].state is DeploymentState.SUCCESS
    repository.close()


if __name__ == "__main__":
    main()
