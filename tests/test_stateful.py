"""Random trigger sequences against a small reference model of the contract.

The reference below is written from SPEC §2-4 and §8 (``DeploymentFailed``) alone, as plain lists of state
names; it shares no code with the engine. After every step the engine's outcome,
the HookRequests it emitted and the stored flows must match it, and the
invariants must hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentPayload,
    DeploymentStarted,
    Environment,
    FlowEngine,
    FlowFSMError,
    HookEvent,
    InvalidTransition,
    Outcome,
    Pipeline,
    PromotionCompleted,
    PromotionPayload,
    PromotionResult,
    ResultStatus,
    Service,
    Trigger,
    UnknownDeployment,
    UnknownPromotion,
    Webhook,
)
from flowfsm.emitters import RecordingEmitter
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository
from flowfsm.testing import SequentialIds, StepClock

E = HookEvent


@attrs.define
class RefFlow:
    """A flow as the contract describes it: states by position, ids as created."""

    id: str
    service: Service
    deployment_ids: list[str]
    promotion_ids: list[list[str]]
    deployments: list[str]
    promotions: list[list[str]]
    state: str = "inProgress"
    reported_failed: set[int] = attrs.field(factory=set)
    """Deployments the CD system reported failed (they never completed)."""

    def current(self) -> int | None:
        for i, state in enumerate(self.deployments):
            if state != "success":
                return i
        return None


# An expected result: an error type, "duplicate", or the list of (event, flow, deployment
# index, deployment state at the event) the trigger causes.
Expected = type[FlowFSMError] | str | list[tuple[HookEvent, RefFlow, int, str]]


def catalogs() -> st.SearchStrategy[Catalog]:
    promotions = st.lists(st.sampled_from(["smoke", "perf", "sec"]), max_size=2, unique=True)
    environments = st.lists(
        st.tuples(st.sampled_from(["dev", "qa", "staging", "prod"]), promotions),
        min_size=1,
        max_size=3,
        unique_by=lambda e: e[0],
    )
    webhook_plan = st.lists(st.tuples(st.sampled_from(list(E)), st.integers(1, 2)), max_size=6)

    def service(i: int, envs: list[tuple[str, list[str]]], plan: list[tuple[HookEvent, int]]) -> Service:
        webhooks = [
            Webhook(f"wh{j}", event, [Action(f"act{k}", url=f"https://h.example/{j}/{k}") for k in range(n)])
            for j, (event, n) in enumerate(plan)
        ]
        pipeline = Pipeline("p", [Environment(name, proms) for name, proms in envs])
        return Service(f"svc{i}", artifacts=["com.acme:api"], pipeline=pipeline, webhooks=webhooks)

    one = st.builds(service, st.just(0), environments, webhook_plan)
    two = st.builds(lambda a, b: [a, b], one, st.builds(service, st.just(1), environments, webhook_plan))
    return st.one_of(one.map(lambda s: [s]), two).map(Catalog)


class EngineAgainstReference(RuleBasedStateMachine):
    """Drives one engine; subclasses may swap the repository."""

    def make_repository(self) -> Repository:
        return InMemoryRepository()

    def __init__(self) -> None:
        super().__init__()
        self.flows: dict[tuple[str, str], RefFlow] = {}
        self.last: tuple[Trigger, Expected] | None = None

    @initialize(catalog=catalogs())
    def setup(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.emitter = RecordingEmitter()
        self.repository = self.make_repository()
        self.engine = FlowEngine(catalog, self.repository, self.emitter, clock=StepClock(), id_factory=SequentialIds())

    def teardown(self) -> None:
        close: Callable[[], None] | None = getattr(getattr(self, "repository", None), "close", None)
        if close is not None:
            close()

    # --- the reference -----------------------------------------------------------------

    def _locate(self, deployment_id: str) -> tuple[RefFlow, int] | None:
        for flow in self.flows.values():
            if deployment_id in flow.deployment_ids:
                return flow, flow.deployment_ids.index(deployment_id)
        return None

    def _advance(self, flow: RefFlow, d: int, out: list[tuple[HookEvent, RefFlow, int, str]]) -> None:
        if all(p == "success" for p in flow.promotions[d]):
            flow.deployments[d] = "success"
            out.append((E.DEPLOYMENT_SUCCEEDED, flow, d, "success"))
            following = flow.current()
            if following is None:
                flow.state = "success"
                out.append((E.FLOW_SUCCEEDED, flow, d, "success"))
            else:
                out.append((E.DEPLOYMENT_CREATED, flow, following, "notStarted"))

    def expect(self, trigger: Trigger) -> Expected:  # noqa: PLR0911, PLR0912 - one branch per rule of SPEC §3-4, §8
        """Apply ``trigger`` to the reference; return what the engine must do."""
        out: list[tuple[HookEvent, RefFlow, int, str]] = []
        if isinstance(trigger, ArtifactCreated):
            return "artifact"  # handled in the rule: it needs the engine's new ids
        found = self._locate(trigger.deployment_id)
        if found is None:
            return UnknownDeployment
        flow, d = found
        state = flow.deployments[d]
        if isinstance(trigger, DeploymentStarted):
            if state != "notStarted":
                return "duplicate"
            if flow.state != "inProgress" or flow.current() != d:
                return InvalidTransition
            flow.deployments[d] = "started"
            return [(E.DEPLOYMENT_STARTED, flow, d, "started")]
        if isinstance(trigger, DeploymentFailed):
            if state == "failed" and d in flow.reported_failed:
                return "duplicate"
            if state != "started" or flow.state != "inProgress":
                return InvalidTransition  # not started, or it completed
            flow.deployments[d] = "failed"
            flow.reported_failed.add(d)
            flow.state = "failed"  # STOP
            return [(E.DEPLOYMENT_FAILED, flow, d, "failed"), (E.FLOW_FAILED, flow, d, "failed")]
        if isinstance(trigger, DeploymentCompleted):
            if state in ("completed", "success") or (state == "failed" and d not in flow.reported_failed):
                return "duplicate"
            if state in ("notStarted", "failed"):
                return InvalidTransition  # not started, or reported failed
            flow.deployments[d] = "completed"
            out.append((E.DEPLOYMENT_COMPLETED, flow, d, "completed"))
            self._advance(flow, d, out)
            return out
        if trigger.promotion_id not in flow.promotion_ids[d]:
            return UnknownPromotion
        p = flow.promotion_ids[d].index(trigger.promotion_id)
        fails = any(r.result_status is ResultStatus.FAILED for r in trigger.results)
        wanted = "failed" if fails else "success"
        if flow.promotions[d][p] == wanted:
            return "duplicate"
        if flow.promotions[d][p] != "pending" or flow.state != "inProgress" or state != "completed":
            return InvalidTransition
        flow.promotions[d][p] = wanted
        if fails:
            flow.deployments[d] = "failed"
            flow.state = "failed"
            return [
                (E.PROMOTION_FAILED, flow, d, "completed"),
                (E.DEPLOYMENT_FAILED, flow, d, "failed"),
                (E.FLOW_FAILED, flow, d, "failed"),
            ]
        out.append((E.PROMOTION_COMPLETED, flow, d, "completed"))
        self._advance(flow, d, out)
        return out

    def fanout(self, expected: list[tuple[HookEvent, RefFlow, int, str]]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for event, flow, d, state in expected:
            for webhook in flow.service.webhooks:
                if webhook.event is event:
                    rows.extend(
                        (event, webhook.id, a.name, flow.id, flow.deployment_ids[d], state) for a in webhook.actions
                    )
        return rows

    # --- driving the engine ------------------------------------------------------------

    def run(self, trigger: Trigger) -> None:
        sent = len(self.emitter.requests)
        if isinstance(trigger, ArtifactCreated):
            self.run_artifact(trigger, sent)
            return
        before = self.repository.list_flows(limit=10_000)
        expected = self.expect(trigger)
        self.last = (trigger, expected)
        if isinstance(expected, type):
            with pytest.raises(FlowFSMError) as caught:
                self.engine.handle(trigger)
            assert type(caught.value) is expected, (caught.value, expected)
            assert self.repository.list_flows(limit=10_000) == before
            assert len(self.emitter.requests) == sent
            return
        outcome = self.engine.handle(trigger)
        if expected == "duplicate":
            assert outcome.duplicate
            assert outcome.hook_requests == ()
            assert self.repository.list_flows(limit=10_000) == before
        else:
            assert isinstance(expected, list)
            assert not outcome.duplicate
            self.check_requests(outcome, self.fanout(expected))
        assert self.emitter.requests[sent:] == list(outcome.hook_requests)

    def run_artifact(self, trigger: ArtifactCreated, sent: int) -> None:
        outcome = self.engine.handle(trigger)
        services = self.catalog.for_artifact(trigger.artifact.key)
        assert [f.service_id for f in outcome.flows] == [s.id for s in services]
        expected: list[tuple[HookEvent, RefFlow, int, str]] = []
        for service, flow in zip(services, outcome.flows, strict=True):
            key = (trigger.artifact.id, service.id)
            if key in self.flows:
                assert self.flows[key].id == flow.id
                continue
            ref = RefFlow(
                flow.id,
                service,
                [d.id for d in flow.deployments],
                [[p.id for p in d.promotions] for d in flow.deployments],
                ["notStarted"] * len(service.pipeline.environments),
                [["pending"] * len(env.promotions) for env in service.pipeline.environments],
            )
            self.flows[key] = ref
            expected.append((E.DEPLOYMENT_CREATED, ref, 0, "notStarted"))
        assert outcome.duplicate == (bool(services) and not expected)
        self.check_requests(outcome, self.fanout(expected))
        assert self.emitter.requests[sent:] == list(outcome.hook_requests)
        self.last = (trigger, "duplicate" if services else [])

    def check_requests(self, outcome: Outcome, rows: list[tuple[Any, ...]]) -> None:
        actual = [
            (
                r.event,
                r.webhook_id,
                r.action.name,
                r.flow_id,
                r.payload.deployment.id,
                r.payload.deployment.state.value,
            )
            for r in outcome.hook_requests
        ]
        assert actual == rows
        for request in outcome.hook_requests:
            if request.event in (E.PROMOTION_COMPLETED, E.PROMOTION_FAILED):
                assert isinstance(request.payload, PromotionPayload)
            else:
                assert isinstance(request.payload, DeploymentPayload)
                assert request.payload.environment.name == request.payload.deployment.environment

    # --- rules: valid, invalid, unknown and repeated triggers ----------------------------

    @rule(name=st.sampled_from(["api", "api", "web"]), version=st.sampled_from(["1", "2", "3"]))
    def artifact_created(self, name: str, version: str) -> None:
        self.run(ArtifactCreated(Artifact("com.acme", name, version)))

    def _deployment_id(self, data: st.DataObject) -> str:
        ids = [d for f in self.flows.values() for d in f.deployment_ids]
        return data.draw(st.sampled_from([*ids, "unknown-deployment"]) if ids else st.just("unknown-deployment"))

    @rule(data=st.data())
    def deployment_started(self, data: st.DataObject) -> None:
        self.run(DeploymentStarted(self._deployment_id(data)))

    @rule(data=st.data())
    def deployment_completed(self, data: st.DataObject) -> None:
        self.run(DeploymentCompleted(self._deployment_id(data)))

    @rule(data=st.data(), reason=st.sampled_from(["timeout", "image pull failed"]))
    def deployment_failed(self, data: st.DataObject, reason: str) -> None:
        self.run(DeploymentFailed(self._deployment_id(data), reason))

    @precondition(lambda self: any(any(f.promotion_ids) for f in self.flows.values()))
    @rule(data=st.data(), statuses=st.lists(st.sampled_from(ResultStatus), min_size=1, max_size=3))
    def promotion_completed(self, data: st.DataObject, statuses: list[ResultStatus]) -> None:
        pairs = [
            (flow.deployment_ids[d], pid)
            for flow in self.flows.values()
            for d, pids in enumerate(flow.promotion_ids)
            for pid in pids
        ]
        deployment_id, promotion_id = data.draw(st.sampled_from(pairs))
        if data.draw(st.booleans(), label="mismatch") and len(pairs) > 1:
            # A promotion named against some other deployment (or an unknown one).
            deployment_id = data.draw(st.sampled_from([d for d, _ in pairs] + ["unknown-deployment"]))
        results = [PromotionResult(promotion_id, status) for status in statuses]
        self.run(PromotionCompleted(deployment_id, promotion_id, results))

    @precondition(lambda self: any(f.state == "inProgress" for f in self.flows.values()))
    @rule(data=st.data(), fail=st.integers(0, 9))
    def progress(self, data: st.DataObject, fail: int) -> None:
        """The next valid trigger of a flow in progress, so runs reach deep states."""
        flow = data.draw(st.sampled_from([f for f in self.flows.values() if f.state == "inProgress"]))
        d = flow.current()
        assert d is not None
        deployment_id = flow.deployment_ids[d]
        state = flow.deployments[d]
        if state == "notStarted":
            self.run(DeploymentStarted(deployment_id))
        elif state == "started":
            self.run(DeploymentFailed(deployment_id, "boom") if fail == 0 else DeploymentCompleted(deployment_id))
        else:
            pending = [pid for pid, s in zip(flow.promotion_ids[d], flow.promotions[d], strict=True) if s == "pending"]
            pid = data.draw(st.sampled_from(pending))
            status = ResultStatus.FAILED if fail == 0 else ResultStatus.PASSED
            self.run(PromotionCompleted(deployment_id, pid, [PromotionResult(pid, status)]))

    @precondition(lambda self: self.last is not None)
    @rule()
    def repeat_last(self) -> None:
        assert self.last is not None
        trigger, before = self.last
        sent = len(self.emitter.requests)
        self.run(trigger)
        assert self.last is not None
        if isinstance(before, list) and not isinstance(trigger, ArtifactCreated):
            assert self.last[1] == "duplicate"  # an applied trigger, delivered again
            assert len(self.emitter.requests) == sent

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def stored_flows_match_the_reference(self) -> None:
        if not hasattr(self, "repository"):
            return
        for ref in self.flows.values():
            flow = self.repository.get(ref.id)
            states = [d.state.value for d in flow.deployments]
            assert states == ref.deployments
            assert [[p.state.value for p in d.promotions] for d in flow.deployments] == ref.promotions
            assert flow.state.value == ref.state
            # Deployments succeed in pipeline order: the successes are a prefix.
            succeeded = states.count("success")
            assert states[:succeeded] == ["success"] * succeeded
            assert sum(s in ("started", "completed") for s in states) <= 1
            assert (flow.state.value == "success") == all(s == "success" for s in states)
            any_failed = any(p.state.value == "failed" for d in flow.deployments for p in d.promotions)
            assert (flow.state.value == "failed") == (any_failed or bool(ref.reported_failed))
        assert self.repository.count_pending() == 0
        assert len(self.repository.list_flows(limit=10_000)) == len(self.flows)


TestEngineAgainstReference = EngineAgainstReference.TestCase
