"""Random trigger sequences against a small reference model of the contract.

The reference below is written from SPEC §2-4, §8 (``DeploymentFailed``) and §10
(timeouts and soak under ``STOP``) alone, as plain lists of state names and times;
it shares no code with the engine. Time moves only when a rule moves the fake
clock, and then a scheduler fires what is due. After every step the engine's outcome,
the HookRequests it emitted and the stored flows must match it, and the
invariants must hold.
"""

from __future__ import annotations

import datetime as dt
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
from flowfsm.converter import unstructure
from flowfsm.emitters import RecordingEmitter
from flowfsm.model import TimeoutPayload, Timeouts, TimerKind
from flowfsm.protocols import Repository
from flowfsm.repositories import InMemoryRepository
from flowfsm.scheduling import Scheduler
from flowfsm.testing import FakeClock, SequentialIds

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
    """Deployments the CD system reported failed, or that timed out before they
    completed (they never completed)."""
    started_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    completed_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    succeeded_at: dict[int, dt.datetime] = attrs.field(factory=dict)
    timed_out: bool = False
    """A deploy or verify timeout failed the flow."""

    def current(self) -> int | None:
        for i, state in enumerate(self.deployments):
            if state != "success":
                return i
        return None


# An expected result: an error type, "duplicate", or the list of (event, flow, deployment
# index, deployment state at the event) the trigger causes.
Expected = type[FlowFSMError] | str | list[tuple[HookEvent, RefFlow, int, str]]


Minutes = int | None


def minutes(n: Minutes) -> dt.timedelta | None:
    return None if n is None else dt.timedelta(minutes=n)


def catalogs() -> st.SearchStrategy[Catalog]:
    promotions = st.lists(st.sampled_from(["smoke", "perf", "sec"]), max_size=2, unique=True)
    durations = st.sampled_from([None, None, 10, 30])  # minutes, or none
    environments = st.lists(
        st.tuples(st.sampled_from(["dev", "qa", "staging", "prod"]), promotions, durations, durations, durations),
        min_size=1,
        max_size=3,
        unique_by=lambda e: e[0],
    )
    webhook_plan = st.lists(st.tuples(st.sampled_from(list(E)), st.integers(1, 2)), max_size=6)

    def service(
        i: int, envs: list[tuple[str, list[str], Minutes, Minutes, Minutes]], plan: list[tuple[HookEvent, int]]
    ) -> Service:
        webhooks = [
            Webhook(f"wh{j}", event, [Action(f"act{k}", url=f"https://h.example/{j}/{k}") for k in range(n)])
            for j, (event, n) in enumerate(plan)
        ]
        pipeline = Pipeline(
            "p",
            [
                Environment(
                    name,
                    proms,
                    timeouts=Timeouts(minutes(deploy), minutes(verify)) if deploy or verify else None,
                    soak=minutes(soak),
                )
                for name, proms, deploy, verify, soak in envs
            ],
        )
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
        self.clock = FakeClock()
        self.engine = FlowEngine(catalog, self.repository, self.emitter, clock=self.clock, id_factory=SequentialIds())
        # One claim takes every due timer (a run has far fewer), so one round fires
        # what the reference expires; batching has its own tests in test_time.py.
        self.scheduler = Scheduler(self.repository, self.engine, batch=1000)

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

    def _environment(self, flow: RefFlow, d: int) -> Environment:
        return flow.service.pipeline.environments[d]

    def _advance(self, flow: RefFlow, d: int, out: list[tuple[HookEvent, RefFlow, int, str]]) -> None:
        soak = self._environment(flow, d).soak
        soaked = soak is None or self.clock.now >= flow.completed_at[d] + soak
        if all(p == "success" for p in flow.promotions[d]) and soaked:
            flow.deployments[d] = "success"
            flow.succeeded_at[d] = self.clock.now
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
        assert isinstance(trigger, DeploymentStarted | DeploymentCompleted | DeploymentFailed | PromotionCompleted)
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
            flow.started_at[d] = self.clock.now
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
            flow.completed_at[d] = self.clock.now
            out.append((E.DEPLOYMENT_COMPLETED, flow, d, "completed"))
            self._advance(flow, d, out)
            return out
        assert isinstance(trigger, PromotionCompleted)  # the scheduler's triggers are checked in time_passes
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

    def expire(self) -> dict[str, list[tuple[HookEvent, RefFlow, int, str]]]:
        """What the timers due now do to each flow (SPEC §10, under ``STOP``): a
        deploy timeout fails a started deployment; a verify timeout fails each
        pending promotion of a completed one; a soak over lets a deployment whose
        promotions all passed succeed."""
        now, expected = self.clock.now, {}
        for flow in self.flows.values():
            d = flow.current()
            if flow.state != "inProgress" or d is None:
                continue
            timeouts, state = self._environment(flow, d).timeouts or Timeouts(), flow.deployments[d]
            out: list[tuple[HookEvent, RefFlow, int, str]] = []
            pending = [i for i, p in enumerate(flow.promotions[d]) if p == "pending"]
            if state == "started" and timeouts.deploy and now >= flow.started_at[d] + timeouts.deploy:
                out += [(E.DEPLOYMENT_FAILED, flow, d, "failed")]
                flow.reported_failed.add(d)  # failed before completing, as if reported
            elif state == "completed" and pending and timeouts.verify and now >= flow.completed_at[d] + timeouts.verify:
                for i in pending:
                    flow.promotions[d][i] = "failed"
                out += [(E.PROMOTION_FAILED, flow, d, "completed")] * len(pending)
                out += [(E.DEPLOYMENT_FAILED, flow, d, "failed")]
            elif state == "completed":
                self._advance(flow, d, out)
            if out and out[-1][0] is E.DEPLOYMENT_FAILED:
                flow.deployments[d] = flow.state = "failed"
                flow.timed_out = True
                out.append((E.FLOW_FAILED, flow, d, "failed"))
            if out:
                expected[flow.id] = out
        return expected

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
            if not pending:  # it soaks: let the soak pass
                self.time_passes(30, schedule=True)
                return
            pid = data.draw(st.sampled_from(pending))
            status = ResultStatus.FAILED if fail == 0 else ResultStatus.PASSED
            self.run(PromotionCompleted(deployment_id, pid, [PromotionResult(pid, status)]))

    @precondition(lambda self: hasattr(self, "clock"))
    @rule(by=st.sampled_from([1, 9, 10, 29, 30, 45, 120]), schedule=st.booleans())
    def time_passes(self, by: int, schedule: bool) -> None:
        """The clock moves ``by`` minutes; then (or later) a scheduler fires what is due."""
        self.clock.advance(minutes=by)
        if not schedule:
            return
        sent = len(self.emitter.requests)
        expected = self.expire()
        assert self.scheduler.run_once() == len(expected)
        emitted = self.emitter.requests[sent:]
        for flow_id, events in expected.items():
            rows = [
                (
                    r.event,
                    r.webhook_id,
                    r.action.name,
                    r.flow_id,
                    r.payload.deployment.id,
                    r.payload.deployment.state.value,
                )
                for r in emitted
                if r.flow_id == flow_id
            ]
            assert rows == self.fanout(events)
        assert {r.flow_id for r in emitted} <= set(expected)
        for request in emitted:  # a timeout says so; a soak is no timeout
            timed_out = request.event is not E.DEPLOYMENT_SUCCEEDED and request.event is not E.DEPLOYMENT_CREATED
            timed_out = timed_out and request.event is not E.FLOW_SUCCEEDED
            if isinstance(request.payload, DeploymentPayload):
                assert isinstance(request.payload, TimeoutPayload) == timed_out
                assert unstructure(request.payload).get("reason") == ("timeout" if timed_out else None)
            else:
                assert request.payload.promotion_result.details == {"reason": "timeout"}
        self.last = None

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
            assert (flow.state.value == "failed") == (any_failed or bool(ref.reported_failed) or ref.timed_out)
        assert self.repository.count_pending() == 0
        assert len(self.repository.list_flows(limit=10_000)) == len(self.flows)

    @invariant()
    def timers_are_those_the_flows_wait_for(self) -> None:
        """Each stored timer is of a flow in progress, about its current deployment,
        of a kind its state waits for, due when its environment says; and a
        deployment that waits for a timeout or a soak has its timer."""
        if not hasattr(self, "repository"):
            return
        for ref in self.flows.values():
            stored = {(t.deployment_id, t.kind): t.due for t in self.repository.timers(ref.id)}
            d = ref.current()
            if ref.state != "inProgress" or d is None:
                assert stored == {}
                continue
            environment, state, deployment_id = self._environment(ref, d), ref.deployments[d], ref.deployment_ids[d]
            timeouts = environment.timeouts or Timeouts()
            assert {i for i, _ in stored} <= {deployment_id}
            wanted: dict[TimerKind, dt.datetime] = {}
            if state == "started" and timeouts.deploy:
                wanted[TimerKind.DEPLOY] = ref.started_at[d] + timeouts.deploy
            if state == "completed":
                if timeouts.verify:
                    wanted[TimerKind.VERIFY] = ref.completed_at[d] + timeouts.verify
                if environment.soak:
                    wanted[TimerKind.SOAK] = ref.completed_at[d] + environment.soak
            for (_, kind), due in stored.items():
                assert wanted.get(kind) == due, (kind, due, wanted)
            pending = "pending" in ref.promotions[d]
            for kind, due in wanted.items():
                # Until it fires: a verify timer only matters while a promotion is pending.
                if due > self.clock.now and (kind is not TimerKind.VERIFY or pending):
                    assert (deployment_id, kind) in stored, kind


TestEngineAgainstReference = EngineAgainstReference.TestCase
