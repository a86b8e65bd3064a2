"""Core benchmarks: the engine's cost per trigger, at scale, in memory and at import."""

from __future__ import annotations

import enum
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

from transitions import EventData, Machine

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Environment,
    FlowEngine,
    HookEvent,
    HookRequest,
    PauseFlow,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    ResumeFlow,
    RetryPromotion,
    Service,
    SkipPromotion,
    Webhook,
)
from flowfsm.machines import CallablesMachine
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository

from .report import Report

TRIGGERS_PER_FLOW = 13  # 1 created + 3 × (started + completed) + 6 promotions
STEERED_TRIGGERS_PER_FLOW = TRIGGERS_PER_FLOW + 6  # + 2 failed results, 2 retries, a pause, a resume


SEED_EVENTS = (
    HookEvent.DEPLOYMENT_CREATED,
    HookEvent.DEPLOYMENT_STARTED,
    HookEvent.DEPLOYMENT_COMPLETED,
    HookEvent.PROMOTION_COMPLETED,
)


def bench_catalog(events: tuple[HookEvent, ...] = tuple(HookEvent), failure_strategy: str = "STOP") -> Catalog:
    """3 environments × 2 promotions; each of ``events`` has 2 webhooks × 2 actions."""
    webhooks = [
        Webhook(
            f"wh-{event.value}-{w}",
            event,
            [Action(f"a{a}", url=f"https://h.example/{w}/{a}") for a in (1, 2)],
        )
        for event in events
        for w in (1, 2)
    ]
    environments = [Environment(name, ["smoke", "perf"]) for name in ("dev", "staging", "prod")]
    return Catalog(
        [
            Service(
                "svc",
                artifacts=["com.acme:api"],
                pipeline=Pipeline("p", environments),
                webhooks=webhooks,
                failure_strategy=failure_strategy,
            )
        ]
    )


class Discard:
    """An emitter that accepts and forgets: the engine's own cost, no consumer's."""

    def emit(self, request: HookRequest) -> None:
        pass


class Versions:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0

    def __call__(self) -> Artifact:
        self.n += 1
        return Artifact("com.acme", "api", f"{self.prefix}.{self.n}")


def full_flow(engine: FlowEngine, artifact: Artifact) -> None:
    flow = engine.handle(ArtifactCreated(artifact)).flows[0]
    for deployment in flow.deployments:
        engine.handle(DeploymentStarted(deployment.id))
        engine.handle(DeploymentCompleted(deployment.id))
        for promotion in deployment.promotions:
            result = PromotionResult(promotion.id, ResultStatus.PASSED)
            engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))


def steered_flow(engine: FlowEngine, artifact: Artifact, *, skip: bool = False) -> str:
    """The full flow, steered (on a catalog whose failure policy is ``PAUSE``): the
    first promotion fails twice, the policy pausing the flow and a person retrying it
    each time (which resumes the flow), and a person pauses and resumes the flow
    before the second environment starts. ``STEERED_TRIGGERS_PER_FLOW`` triggers;
    with ``skip``, one more: the last environment's first promotion fails and a
    person skips it. Returns the flow's id."""
    flow = engine.handle(ArtifactCreated(artifact)).flows[0]
    last = len(flow.deployments) - 1
    for d, deployment in enumerate(flow.deployments):
        if d == 1:
            engine.handle(PauseFlow(flow.id, "alice", "release freeze"))
            engine.handle(ResumeFlow(flow.id, "alice", "freeze over"))
        engine.handle(DeploymentStarted(deployment.id))
        engine.handle(DeploymentCompleted(deployment.id))
        for p, promotion in enumerate(deployment.promotions):
            if d == p == 0:
                failed = PromotionResult(promotion.id, ResultStatus.FAILED)
                for _ in range(2):
                    engine.handle(PromotionCompleted(deployment.id, promotion.id, [failed]))
                    engine.handle(RetryPromotion(deployment.id, promotion.id, "alice", "flaky"))
            if skip and d == last and p == 0:
                failed = PromotionResult(promotion.id, ResultStatus.FAILED)
                engine.handle(PromotionCompleted(deployment.id, promotion.id, [failed]))
                engine.handle(SkipPromotion(deployment.id, promotion.id, "alice", "known flaky"))
                continue
            result = PromotionResult(promotion.id, ResultStatus.PASSED)
            engine.handle(PromotionCompleted(deployment.id, promotion.id, [result]))
    return flow.id


def per_trigger_engine(
    engine: FlowEngine, versions: Versions, flows: int, workload: Callable[[FlowEngine, Artifact], object] = full_flow
) -> float:
    triggers = STEERED_TRIGGERS_PER_FLOW if workload is steered_flow else TRIGGERS_PER_FLOW
    start = time.perf_counter()
    for _ in range(flows):
        workload(engine, versions())
    return (time.perf_counter() - start) / (flows * triggers)


class _S(enum.Enum):
    A = "a"
    B = "b"


class _Model:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _S.A


_BARE = Machine(
    model=None,
    states=_S,
    initial=_S.A,
    transitions=[
        {"trigger": "go", "source": _S.A, "dest": _S.B},
        {"trigger": "back", "source": _S.B, "dest": _S.A},
    ],
    auto_transitions=False,
)


def per_trigger_bare(n: int, machine: Machine = _BARE, **kwargs: object) -> float:
    model, go, back = _Model(), machine.events["go"].trigger, machine.events["back"].trigger
    start = time.perf_counter()
    for _ in range(n // 2):
        go(model, **kwargs)
        back(model, **kwargs)
    return (time.perf_counter() - start) / n


def _passes(event: EventData) -> bool:
    return True


def _after(event: EventData) -> None:
    pass


def flowfsm_shaped(cls: type[Machine]) -> Machine:
    """The bare machine with what each flowfsm transition has: two guards, one callback."""
    return cls(
        model=None,
        states=_S,
        initial=_S.A,
        transitions=[
            {"trigger": name, "source": source, "dest": dest, "conditions": [_passes, _passes], "after": [_after]}
            for name, source, dest in (("go", _S.A, _S.B), ("back", _S.B, _S.A))
        ],
        send_event=True,
        auto_transitions=False,
    )


def engine_with(
    stored: int, prefix: str, events: tuple[HookEvent, ...] = tuple(HookEvent), failure_strategy: str = "STOP"
) -> tuple[FlowEngine, Versions]:
    engine = FlowEngine(bench_catalog(events, failure_strategy), InMemoryRepository(), Discard())
    fill = Versions(f"fill-{prefix}")
    for _ in range(stored):
        engine.handle(ArtifactCreated(fill()))
    return engine, Versions(prefix)


def interleaved(rounds: int, *runs: Callable[[], float]) -> list[float]:
    """Median of each run over ``rounds`` rounds, the runs taking turns."""
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            samples[i].append(run())
    return [statistics.median(s) for s in samples]


def bytes_per_flow(repository: Repository, flows: int) -> float:
    engine = FlowEngine(bench_catalog(), repository, Discard())
    versions = Versions("mem")
    artifacts = [versions() for _ in range(flows)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for artifact in artifacts:
        engine.handle(ArtifactCreated(artifact))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / flows


def import_seconds(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out)


def steering(report: Report, rounds: int, flows: int) -> None:
    """A steered flow's cost a trigger against a plain flow's, on one catalog (policy ``PAUSE``)."""
    plain, plain_versions = engine_with(0, "plain", failure_strategy="PAUSE")
    steered, steered_versions = engine_with(0, "steered", failure_strategy="PAUSE")
    full_flow(plain, plain_versions())
    steered_flow(steered, steered_versions())
    at_plain, at_steered = interleaved(
        rounds,
        lambda: per_trigger_engine(plain, plain_versions, flows),
        lambda: per_trigger_engine(steered, steered_versions, flows, steered_flow),
    )
    report.ratio(
        "steered flow trigger vs plain flow trigger",
        at_steered,
        at_plain,
        "≤ 1.3×",
        at_steered / at_plain <= 1.3,
        unit="µs",
        scale=1e6,
        note=f"a promotion failed and retried twice, a pause and a resume: {STEERED_TRIGGERS_PER_FLOW} triggers"
        f" a flow against {TRIGGERS_PER_FLOW}; webhooks on all events; policy PAUSE",
    )


def run(report: Report, quick: bool) -> None:
    report.section("core (in memory)")
    rounds = 5 if quick else 15
    flows_per_round = 20 if quick else 60

    engine, versions = engine_with(0, "speed")
    seed_engine, seed_versions = engine_with(0, "seed", SEED_EVENTS)
    quiet_engine, quiet_versions = engine_with(0, "quiet", ())
    for warm, warm_versions in (
        (engine, versions),
        (seed_engine, seed_versions),
        (quiet_engine, quiet_versions),
    ):
        full_flow(warm, warm_versions())
    bare, every, seed, quiet = interleaved(
        rounds,
        lambda: per_trigger_bare(2000),
        lambda: per_trigger_engine(engine, versions, flows_per_round),
        lambda: per_trigger_engine(seed_engine, seed_versions, flows_per_round),
        lambda: per_trigger_engine(quiet_engine, quiet_versions, flows_per_round),
    )
    report.ratio(
        "engine trigger vs bare transitions trigger",
        every,
        bare,
        "≤ 3×",
        every / bare <= 3,
        unit="µs",
        scale=1e6,
        note="full flows of 3 envs × 2 promotions; 2 webhooks × 2 actions on all 9 events: 76 HookRequests",
    )
    report.ratio(
        "the same, webhooks on the 4 seed events only",
        seed,
        bare,
        "≤ 3×",
        seed / bare <= 3,
        unit="µs",
        scale=1e6,
        note="deployment-created/started/completed, promotion-completed (60 HookRequests a flow)",
    )
    report.ratio("the same, no webhooks at all", quiet, bare, "(context)", None, unit="µs", scale=1e6)
    steering(report, rounds, flows_per_round)
    stock_machine, callables_machine = flowfsm_shaped(Machine), flowfsm_shaped(CallablesMachine)
    on_stock, on_ours = interleaved(
        rounds,
        lambda: per_trigger_bare(2000, stock_machine, step=None),
        lambda: per_trigger_bare(2000, callables_machine, step=None),
    )
    report.ratio(
        "an event with 2 guards and a callback: CallablesMachine vs Machine",
        on_ours,
        on_stock,
        "(context)",
        None,
        unit="µs",
        scale=1e6,
        note="flowfsm's machines are CallablesMachines (flowfsm.machines)",
    )

    big_n = 20_000 if quick else 100_000
    small, small_versions = engine_with(1_000, "small")
    big, big_versions = engine_with(big_n, "big")
    at_small, at_big = interleaved(
        rounds,
        lambda: per_trigger_engine(small, small_versions, flows_per_round),
        lambda: per_trigger_engine(big, big_versions, flows_per_round),
    )
    report.ratio(
        f"engine trigger with {big_n:,} flows stored vs 1,000",
        at_big,
        at_small,
        "≤ 1.2×",
        at_big / at_small <= 1.2,
        unit="µs",
        scale=1e6,
    )

    per_flow = bytes_per_flow(InMemoryRepository(), 2_000 if quick else 10_000)
    report.value("bytes per stored flow (in memory)", per_flow, "≤ 4 KiB", per_flow <= 4096, unit="B")

    base, ours, full = interleaved(
        3 if quick else 9,
        lambda: import_seconds("import transitions, attrs, cattrs"),
        lambda: import_seconds("import flowfsm"),
        lambda: import_seconds("import flowfsm, flowfsm.converter"),
    )
    report.ratio(
        "import flowfsm vs transitions+attrs+cattrs",
        ours,
        base,
        "≤ 1.3×",
        ours / base <= 1.3,
        unit="ms",
        scale=1e3,
    )
    report.ratio(
        "import flowfsm + its converter (cattrs) vs the same",
        full,
        base,
        "(context)",
        None,
        unit="ms",
        scale=1e3,
    )
