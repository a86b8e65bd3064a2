"""Approvals (SPEC §11): what an approval gate costs a flow, a trigger.

The same flow (3 environments × 2 promotions, webhooks on every event) runs on a
catalog whose staging and prod each require one approval, and on the same catalog
without them; the gated flow has two more triggers (the approvals), and its
announcements pass the gate. Measured a trigger, the two taking turns.
"""

from __future__ import annotations

import datetime as dt

import attrs

from flowfsm import (
    ApprovalGranted,
    ApprovalPolicy,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    FlowEngine,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
)
from flowfsm.repositories import InMemoryRepository

from .core import TRIGGERS_PER_FLOW, Discard, Versions, bench_catalog, full_flow, interleaved, per_trigger_engine
from .report import Report

GATED = ("staging", "prod")
GATED_TRIGGERS_PER_FLOW = TRIGGERS_PER_FLOW + len(GATED)  # + one approval each


def gated_catalog(expiry: dt.timedelta | None = None) -> Catalog:
    """``bench_catalog()``, its staging and prod each requiring one approval (alice or a release manager)."""
    (service,) = bench_catalog()
    policy = ApprovalPolicy(["alice", "group:release-managers"], expiry=expiry)
    environments = [attrs.evolve(e, approvals=policy) if e.name in GATED else e for e in service.pipeline.environments]
    return Catalog([attrs.evolve(service, pipeline=attrs.evolve(service.pipeline, environments=environments))])


def gated_flow(engine: FlowEngine, artifact: Artifact) -> None:
    """``full_flow``, a person approving each gated environment's deployment before it starts."""
    flow = engine.handle(ArtifactCreated(artifact, actor="bob")).flows[0]
    for deployment in flow.deployments:
        if deployment.environment in GATED:
            engine.handle(ApprovalGranted(deployment.id, "carol", ["release-managers"]))
        engine.handle(DeploymentStarted(deployment.id))
        engine.handle(DeploymentCompleted(deployment.id))
        for promotion in deployment.promotions:
            result = PromotionResult(promotion.id, ResultStatus.PASSED)
            engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))


def _per_trigger(engine: FlowEngine, versions: Versions, flows: int) -> float:
    return per_trigger_engine(engine, versions, flows, gated_flow) * TRIGGERS_PER_FLOW / GATED_TRIGGERS_PER_FLOW


def run(report: Report, quick: bool) -> None:
    report.section("approvals (in memory)")
    rounds = 5 if quick else 15
    flows = 20 if quick else 60
    plain = FlowEngine(bench_catalog(), InMemoryRepository(), Discard())
    gated = FlowEngine(gated_catalog(), InMemoryRepository(), Discard())
    expiring = FlowEngine(gated_catalog(dt.timedelta(hours=24)), InMemoryRepository(), Discard())
    versions = {name: Versions(name) for name in ("plain", "gated", "expiring")}
    full_flow(plain, versions["plain"]())
    gated_flow(gated, versions["gated"]())
    gated_flow(expiring, versions["expiring"]())
    at_plain, at_gated, at_expiring = interleaved(
        rounds,
        lambda: per_trigger_engine(plain, versions["plain"], flows),
        lambda: _per_trigger(gated, versions["gated"], flows),
        lambda: _per_trigger(expiring, versions["expiring"], flows),
    )
    report.ratio(
        "gated flow trigger vs the same flow without approvals",
        at_gated,
        at_plain,
        "≤ 1.2×",
        at_gated / at_plain <= 1.2,
        unit="µs",
        scale=1e6,
        note=f"staging and prod each need one approval: {GATED_TRIGGERS_PER_FLOW} triggers a flow against"
        f" {TRIGGERS_PER_FLOW}; webhooks on all events",
    )
    report.ratio(
        "the same, each request expiring after 24h (a durable timer)",
        at_expiring,
        at_plain,
        "≤ 1.2×",
        at_expiring / at_plain <= 1.2,
        unit="µs",
        scale=1e6,
        note="the pipeline has timers: each trigger reads the flow's timers, each request sets one",
    )
