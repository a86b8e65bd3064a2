"""A worker process for the fault tests: handles a fixed stream of triggers.

    python -m tests.workers --sqlite PATH | --postgres DSN --schema S
                            --artifacts N [--order K] [--log FILE] [--progress]

The stream is a plan per artifact — every flow through dev → staging → prod, some
failing a promotion, with rejected triggers mixed in — interleaved across
artifacts; ``--order`` rotates which artifact goes first, so several workers
handle the same flows in different orders. Every HookRequest the engine emits is
appended to ``--log``. A worker restarted from the top finds its earlier work
recorded: those triggers are duplicates.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    ConcurrencyConflict,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    Flow,
    FlowEngine,
    HookEvent,
    HookRequest,
    InvalidTransition,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    RepositoryError,
    ResultStatus,
    Service,
    Trigger,
    UnknownDeployment,
    Webhook,
)
from flowfsm.emitters import CallbackEmitter
from flowfsm.protocols import HookEmitter, Repository

PIPELINE = Pipeline(
    "default",
    [Environment("dev", ["smoke"]), Environment("staging", ["smoke", "perf"]), Environment("prod")],
)
CATALOG = Catalog(
    [
        Service(
            service_id,
            artifacts=["com.acme:api"],
            pipeline=PIPELINE,
            webhooks=[Webhook(f"wh-{e.value}", e, [Action("a1"), Action("a2")]) for e in HookEvent],
        )
        for service_id in ("svc-a", "svc-b")
    ]
)

# A step: ("created",) | (kind, service, environment index[, promotion, status])
Step = tuple[Any, ...]


def plan(i: int) -> list[Step]:
    """Artifact ``i``'s triggers, in order; every third fails svc-b in staging."""
    steps: list[Step] = [("created",)]
    for service in CATALOG:
        for e, env in enumerate(PIPELINE.environments):
            steps.append(("start", service.id, e))
            if e + 1 < len(PIPELINE.environments):
                steps.append(("complete", service.id, e + 1))  # rejected: not started
            steps.append(("complete", service.id, e))
            steps.append(("start", "unknown", 0))  # rejected: unknown deployment
            failing = i % 3 == 2 and service.id == "svc-b" and env.name == "staging"
            for promotion in env.promotions:
                status = ResultStatus.FAILED if failing and promotion == "perf" else ResultStatus.PASSED
                steps.append(("promotion", service.id, e, promotion, status))
            if failing:
                break
    return steps


def artifact(i: int) -> Artifact:
    return Artifact("com.acme", "api", f"1.{i}.0")


def stream(artifacts: int, order: int = 0, window: int = 4) -> Iterator[tuple[int, Step]]:
    """All plans, ``window`` artifacts at a time taking turns, starting at ``order``."""
    ids = [(order + k) % artifacts for k in range(artifacts)]
    for start in range(0, artifacts, window):
        plans = {i: plan(i) for i in ids[start : start + window]}
        longest = max(len(p) for p in plans.values())
        for s in range(longest):
            for i, steps in plans.items():
                if s < len(steps):
                    yield i, steps[s]


def trigger(step: Step, flows: dict[str, Flow]) -> Trigger:
    kind = step[0]
    if kind == "start" and step[1] == "unknown":
        return DeploymentStarted("no-such-deployment")
    deployment = flows[step[1]].deployments[step[2]]
    if kind == "start":
        return DeploymentStarted(deployment.id)
    if kind == "complete":
        return DeploymentCompleted(deployment.id)
    promotion = next(p for p in deployment.promotions if p.name == step[3])
    return PromotionCompleted(deployment.id, promotion.id, [PromotionResult(promotion.id, step[4])])


REJECTED = (InvalidTransition, UnknownDeployment)


def run(engine: FlowEngine, artifacts: int, order: int = 0, progress: bool = False) -> None:
    """Handle the stream; retry what a concurrent writer made fail; stop on anything else.
    With ``progress``, print the number of each step as it begins."""
    flows: dict[int, dict[str, Flow]] = {}
    for n, (i, step) in enumerate(stream(artifacts, order)):
        if progress:
            print(n, flush=True)
        for attempt in range(200):
            try:
                if step[0] == "created":
                    outcome = engine.handle(ArtifactCreated(artifact(i)))
                    flows[i] = {f.service_id: f for f in outcome.flows}
                else:
                    engine.handle(trigger(step, flows[i]))
            except REJECTED:
                if (step[0] == "start" and step[1] != "unknown") or step[0] == "promotion":
                    raise  # a valid step must not be refused
            except (ConcurrencyConflict, RepositoryError):
                time.sleep(0.002 * (attempt + 1))
                continue
            break
        else:
            raise RuntimeError(f"step {step} of artifact {i} kept failing")


def open_store(args: argparse.Namespace) -> Repository:
    from flowfsm.repositories import PostgresRepository, SQLiteRepository

    if args.sqlite:
        return SQLiteRepository(args.sqlite, timeout=10)
    return PostgresRepository(args.postgres, schema=args.schema, max_size=2)


def log_emitter(path: str) -> HookEmitter:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(request: HookRequest) -> None:
        os.write(fd, f"{request.id}\n".encode())

    return CallbackEmitter(append)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sqlite")
    parser.add_argument("--postgres")
    parser.add_argument("--schema", default="flowfsm")
    parser.add_argument("--artifacts", type=int, required=True)
    parser.add_argument("--order", type=int, default=0)
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("--progress", action="store_true", help="print each step's number")
    args = parser.parse_args()
    repository = open_store(args)
    # A short lease: what a killed worker was delivering comes free for the dispatcher soon.
    engine = FlowEngine(CATALOG, repository, log_emitter(args.log), max_attempts=3, lease=1.0)
    print("ready", flush=True)
    run(engine, args.artifacts, args.order, args.progress)
    print("done", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
