"""One engine process of the lanes race (tests/test_lanes.py): it releases its own
artifacts of one ``queue`` service and, meanwhile, drives whichever flow occupies
the environment through its deployment, as the CD system would, until every flow of
every process has succeeded. Run as ``python -m tests.lane_racer DSN SCHEMA INDEX
FLOWS TOTAL``."""

from __future__ import annotations

import contextlib
import sys
import time

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    FlowEngine,
    FlowFSMError,
    FlowState,
    HookEvent,
    Pipeline,
    Service,
    Webhook,
)
from flowfsm.repositories import PostgresRepository

EVENTS = (HookEvent.DEPLOYMENT_CREATED, HookEvent.DEPLOYMENT_SUCCEEDED, HookEvent.DEPLOYMENT_QUEUED)
SERVICE = Service(
    "svc",
    artifacts=["com.acme:api"],
    pipeline=Pipeline("p", [Environment("prod")]),
    webhooks=[Webhook(e.value, e, [Action("a", url="https://hooks.example/")]) for e in EVENTS],
    concurrency="queue",
)


def main() -> None:
    dsn, schema, index, flows, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    repository = PostgresRepository(dsn, schema=schema, max_size=2)
    engine = FlowEngine(Catalog([SERVICE]), repository, None, max_attempts=50)
    released, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline:
        if released < flows:
            try:
                engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"{index}.{released}")))
                released += 1
            except FlowFSMError:  # a conflict that kept coming: try again
                pass
        occupant = repository.lane("svc", "prod").occupant
        if occupant is not None:
            (deployment,) = repository.get(occupant).deployments
            for trigger in (DeploymentStarted(deployment.id), DeploymentCompleted(deployment.id)):
                with contextlib.suppress(FlowFSMError):  # another process moved it first
                    engine.handle(trigger)
        elif released == flows and len(repository.list_flows(state=FlowState.SUCCESS, limit=total)) == total:
            break
    repository.close()


if __name__ == "__main__":
    main()
