"""One artifact, two services: each consumer gets its own flow.

Run: python examples/two_services.py
"""

from __future__ import annotations

from flowfsm import Artifact, ArtifactCreated, Catalog, Environment, FlowEngine, Pipeline, Service
from flowfsm.emitters import RecordingEmitter
from flowfsm.repositories import InMemoryRepository

pipeline = Pipeline("default", [Environment("dev", ["smoke"]), Environment("prod", ["smoke"])])
catalog = Catalog(
    [
        Service("svc-api", artifacts=["com.acme:core"], pipeline=pipeline),
        Service("svc-worker", artifacts=["com.acme:core", "com.acme:jobs"], pipeline=pipeline),
        Service("svc-web", artifacts=["com.acme:web"], pipeline=pipeline),
    ]
)


def main() -> None:
    engine = FlowEngine(catalog, InMemoryRepository(), RecordingEmitter())
    outcome = engine.handle(ArtifactCreated(Artifact("com.acme", "core", "3.1.0")))
    assert [f.service_id for f in outcome.flows] == ["svc-api", "svc-worker"]
    for flow in outcome.flows:
        print(f"{flow.service_id}: flow {flow.id} ({flow.state.value})")
    again = engine.handle(ArtifactCreated(Artifact("com.acme", "core", "3.1.0")))
    assert again.duplicate
    assert again.flows == outcome.flows
    print("published again: duplicate, the same two flows")


if __name__ == "__main__":
    main()
