"""The demo: two releases of com.acme:api on the embedded SQLite store.

1.4.0 passes every check through dev → staging → prod; 1.5.0 fails its perf check
in staging and stops there. Every trigger, state change and HookRequest is printed
as it happens; at the end the store is reopened to show the flows survived.

Run: python examples/demo.py [--db PATH]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Flow,
    FlowEngine,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Trigger,
)
from flowfsm.emitters import CallbackEmitter
from flowfsm.model import HookRequest
from flowfsm.repositories import SQLiteRepository

CATALOG = Path(__file__).with_name("catalog.toml")


def states(flow: Flow) -> dict[str, str]:
    found = {"flow": flow.state.value}
    for d in flow.deployments:
        found[d.environment] = d.state.value
        for p in d.promotions:
            found[f"{d.environment}.{p.name}"] = p.state.value
    return found


class Demo:
    def __init__(self, db: Path) -> None:
        self.repository = SQLiteRepository(db)
        self.sent: list[HookRequest] = []
        self.engine = FlowEngine(Catalog.from_file(CATALOG), self.repository, CallbackEmitter(self.sent.append))
        self.seen: dict[str, dict[str, str]] = {}

    def handle(self, trigger: Trigger, label: str) -> Flow:
        print(f"  ▶ {label}")
        outcome = self.engine.handle(trigger)
        flow = outcome.flows[0]
        now, before = states(flow), self.seen.get(flow.id, {})
        for name, state in now.items():
            if before.get(name) != state:
                print(f"      {name}: {before.get(name, '—')} → {state}")
        self.seen[flow.id] = now
        for request in self.sent:
            where = request.payload.deployment.environment
            print(f"      ↳ hook {request.event.value:21} {request.webhook_id}/{request.action.name} ({where})")
        self.sent.clear()
        return flow

    def release(self, version: str, failing: str | None = None) -> Flow:
        print(f"\ncom.acme:api:{version}")
        flow = self.handle(ArtifactCreated(Artifact("com.acme", "api", version)), "artifact created")
        for deployment in flow.deployments:
            env = deployment.environment
            self.handle(DeploymentStarted(deployment.id), f"{env}: deployment started")
            self.handle(DeploymentCompleted(deployment.id), f"{env}: deployment completed")
            for promotion in deployment.promotions:
                check = f"{env}.{promotion.name}"
                status = ResultStatus.FAILED if check == failing else ResultStatus.PASSED
                result = PromotionResult(promotion.id, status)
                flow = self.handle(
                    PromotionCompleted(deployment.id, promotion.id, [result]), f"{check}: {status.value}"
                )
                if status is ResultStatus.FAILED:
                    return flow
        return flow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="SQLite file (default: a new temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "flowfsm-demo.db"
        print(f"store: {db} (SQLite)")
        demo = Demo(db)
        demo.release("1.4.0")
        demo.release("1.5.0", failing="staging.perf")
        demo.repository.close()

        print("\nreopened the store:")
        with SQLiteRepository(db) as store:
            for flow in reversed(store.list_flows()):
                trail = " → ".join(f"{d.environment}:{d.state.value}" for d in flow.deployments)
                print(f"  {flow.artifact.id:22} {flow.state.value:8} {trail}")
            print(f"  HookRequests pending delivery: {store.count_pending()}")


if __name__ == "__main__":
    main()
