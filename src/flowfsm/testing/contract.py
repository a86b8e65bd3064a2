"""``RepositoryContract``: what every ``Repository`` must do, as a pytest suite.

Subclass it in a pytest module (the subclass's name starting with ``Test``)::

    from flowfsm.testing import RepositoryContract

    class TestMyRepository(RepositoryContract):
        def make_repository(self):
            return MyRepository(...)

Needs pytest.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator

import attrs
import pytest

from flowfsm.catalog import Catalog
from flowfsm.engine import FlowEngine
from flowfsm.errors import (
    ConcurrencyConflict,
    InvalidTransition,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    ValidationError,
)
from flowfsm.lanes import Lane, LaneMove, LaneStatus
from flowfsm.model import (
    Action,
    Artifact,
    DeliveryAttempt,
    DeliveryState,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    HistoryEntry,
    HookEvent,
    Pause,
    Pipeline,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Rollback,
    Service,
    StateChange,
    Timer,
    TimerKind,
    Webhook,
)
from flowfsm.protocols import Lanes, Repository
from flowfsm.testing import FakeClock, sample_flow, sample_hook_request
from flowfsm.triggers import ArtifactCreated, DeploymentCompleted, DeploymentStarted, PromotionCompleted

__all__ = ["LanesContract", "RepositoryContract"]


def _advanced(flow: Flow) -> Flow:
    """The next version of ``flow``, with its first deployment started."""
    first, *rest = flow.deployments
    started = attrs.evolve(first, state=DeploymentState.STARTED)
    return attrs.evolve(flow, version=flow.version + 1, deployments=(started, *rest))


def _renamed(flow: Flow, prefix: str) -> Flow:
    """``flow`` with ``prefix`` before every deployment and promotion id."""
    return attrs.evolve(
        flow,
        deployments=[
            attrs.evolve(d, id=prefix + d.id, promotions=[attrs.evolve(p, id=prefix + p.id) for p in d.promotions])
            for d in flow.deployments
        ],
    )


_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _timer(flow: Flow, index: int, kind: TimerKind, minutes: float) -> Timer:
    """A timer of ``flow``'s deployment ``index``, due ``minutes`` after ``_T0``."""
    return Timer(flow.id, flow.deployments[index].id, kind, _T0 + dt.timedelta(minutes=minutes))


def _entry(flow: Flow, seq: int, *changes: StateChange, requests: tuple[str, ...] = ()) -> HistoryEntry:
    """A history entry of ``flow``: a trigger's JSON with nested, non-ASCII data."""
    trigger = {"type": "DeploymentStarted", "deploymentId": flow.deployments[0].id, "reason": "déjà vu"}
    return HistoryEntry(
        flow.id,
        seq,
        _T0 + dt.timedelta(minutes=seq),
        {**trigger, "n": [seq, {"x": None}]},
        "ci",
        None,
        changes,
        requests,
    )


class RepositoryContract:
    """What every ``Repository`` must do. Subclass and implement ``make_repository``;
    the subclass's name must start with ``Test`` for pytest to collect it."""

    keeps_delivered = True
    """False for a backend that forgets delivered HookRequests (the in-memory one)."""

    def make_repository(self) -> Repository:
        raise NotImplementedError

    @pytest.fixture
    def repo(self) -> Iterator[Repository]:
        repository = self.make_repository()
        yield repository
        close: Callable[[], None] | None = getattr(repository, "close", None)
        if close is not None:
            close()

    # --- flows -----------------------------------------------------------------------

    def test_get_returns_the_committed_flow(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        assert repo.get(flow.id) == flow

    def test_a_steered_flow_is_stored_whole(self, repo: Repository) -> None:
        """Attempts, a pause and a rollback are kept, and go when a version drops them."""
        flow = sample_flow()
        first, *rest = flow.deployments
        retried = attrs.evolve(
            first,
            state=DeploymentState.COMPLETED,
            attempt=3,
            promotions=[attrs.evolve(p, state=PromotionState.FAILED, attempt=2) for p in first.promotions],
        )
        steered = attrs.evolve(
            flow,
            deployments=(retried, *rest),
            state=FlowState.PAUSED,
            pause=Pause("flowfsm", "promotion 'smoke' failed", [p.id for p in retried.promotions], held=True),
            rollback=Rollback("dev", Artifact("com.acme", "api", "0.9.0")),
        )
        repo.commit([steered])
        assert repo.get(flow.id) == steered
        resumed = attrs.evolve(steered, version=2, state=FlowState.IN_PROGRESS, pause=None, rollback=None)
        repo.commit([resumed])
        assert repo.get(flow.id) == resumed
        assert repo.get(flow.id).deployments[0].promotions[0].attempt == 2

    def test_a_gated_flow_is_stored_whole(self, repo: Repository) -> None:
        """The artifact's author and a deployment's approvals (SPEC §11) are kept."""
        flow = sample_flow()
        first, *rest = flow.deployments
        awaiting = attrs.evolve(first, state=DeploymentState.AWAITING_APPROVAL, approvals=("alice", "carol"))
        gated = attrs.evolve(flow, deployments=(awaiting, *rest), author="bob")
        repo.commit([gated])
        assert repo.get(flow.id) == gated
        approved = attrs.evolve(gated, version=2, deployments=(attrs.evolve(awaiting, attempt=2, approvals=()), *rest))
        repo.commit([approved])
        assert repo.get(flow.id) == approved
        assert repo.get(flow.id).author == "bob"

    def test_unknown_ids_raise_typed_errors(self, repo: Repository) -> None:
        with pytest.raises(UnknownFlow) as flow_error:
            repo.get("nope")
        assert flow_error.value.flow_id == "nope"
        with pytest.raises(UnknownDeployment) as deployment_error:
            repo.find_by_deployment("nope")
        assert deployment_error.value.deployment_id == "nope"
        assert repo.find_by_key("com.acme:api:9", "svc") is None

    def test_returned_flows_are_immutable(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        loaded = repo.get(flow.id)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            loaded.state = FlowState.FAILED  # type: ignore[misc]  # what the test is about
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            loaded.deployments[0].state = DeploymentState.FAILED  # type: ignore[misc]  # what the test is about
        assert isinstance(loaded.deployments, tuple)
        assert isinstance(loaded.deployments[0].promotions, tuple)
        assert repo.get(flow.id) == flow

    def test_lookups_by_deployment_promotion_and_key(self, repo: Repository) -> None:
        first, second = sample_flow(1), sample_flow(2)
        repo.commit([first, second])
        for deployment in second.deployments:
            assert repo.find_by_deployment(deployment.id) == second
            for promotion in deployment.promotions:
                assert repo.find_by_promotion(promotion.id) == second
        with pytest.raises(UnknownPromotion) as unknown:
            repo.find_by_promotion("nope")
        assert unknown.value.promotion_id == "nope"
        assert repo.find_by_key(first.artifact.id, first.service_id) == first
        assert repo.find_by_key(first.artifact.id, "other") is None

    def test_update_is_compare_and_set_on_version(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        newer = _advanced(flow)
        repo.commit([newer])
        assert repo.get(flow.id) == newer
        stale = attrs.evolve(_advanced(flow), state=FlowState.FAILED)  # from version 1 again: 2 is taken
        with pytest.raises(ConcurrencyConflict) as conflict:
            repo.commit([stale])
        assert conflict.value.flow_id == flow.id
        assert repo.get(flow.id) == newer
        skipping = attrs.evolve(newer, version=newer.version + 2)
        with pytest.raises(ConcurrencyConflict):
            repo.commit([skipping])
        with pytest.raises(ConcurrencyConflict):
            repo.commit([_advanced(sample_flow(7))])  # an update of a flow never stored

    def test_key_and_id_are_unique(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        same_key = attrs.evolve(_renamed(sample_flow(), "x"), id="another-id")
        with pytest.raises(ConcurrencyConflict):
            repo.commit([same_key])
        same_id = attrs.evolve(_renamed(sample_flow(), "y"), artifact=Artifact("com.acme", "api", "9.9.9"))
        with pytest.raises(ConcurrencyConflict):
            repo.commit([same_id])
        assert repo.list_flows() == [flow]

    def test_commit_is_all_or_nothing(self, repo: Repository) -> None:
        flow = sample_flow(1)
        repo.commit([flow])
        fresh = sample_flow(2)
        stale = attrs.evolve(_advanced(flow), version=5)
        with pytest.raises(ConcurrencyConflict):
            repo.commit([fresh, stale], [sample_hook_request(fresh)])
        with pytest.raises(UnknownFlow):
            repo.get(fresh.id)
        with pytest.raises(UnknownDeployment):
            repo.find_by_deployment(fresh.deployments[0].id)
        assert repo.count_pending() == 0
        assert repo.get(flow.id) == flow
        # A lone flow's lost race takes its HookRequests with it too: an update...
        with pytest.raises(ConcurrencyConflict):
            repo.commit([stale], [sample_hook_request(stale)])
        # ...and a new flow whose key is taken, with its deployments and promotions.
        taken = attrs.evolve(_renamed(sample_flow(1), "taken"), id="another-id")
        with pytest.raises(ConcurrencyConflict):
            repo.commit([taken], [sample_hook_request(taken)])
        with pytest.raises(UnknownDeployment):
            repo.find_by_deployment(taken.deployments[0].id)
        assert repo.count_pending() == 0
        assert repo.hook_requests(flow.id) == []
        assert repo.get(flow.id) == flow

    def test_list_flows_newest_first_filtered_and_paged(self, repo: Repository) -> None:
        flows = [sample_flow(n, service_id="a" if n % 2 else "b") for n in range(1, 8)]
        for flow in flows:
            repo.commit([flow])
        failed = attrs.evolve(_advanced(flows[2]), state=FlowState.FAILED)
        repo.commit([failed])
        ids = [f.id for f in repo.list_flows()]
        assert ids == [f.id for f in reversed(flows)]
        assert [f.id for f in repo.list_flows(service_id="a")] == [f.id for f in reversed(flows) if f.service_id == "a"]
        assert [f.id for f in repo.list_flows(state=FlowState.FAILED)] == [failed.id]
        assert [f.id for f in repo.list_flows(service_id="b", state=FlowState.FAILED)] == []
        assert [f.id for f in repo.list_flows(limit=2, offset=1)] == ids[1:3]
        assert repo.list_flows(offset=100) == []
        with pytest.raises(ValidationError):
            repo.list_flows(limit=0)

    # --- outbox ----------------------------------------------------------------------

    def test_outbox_claim_deliver_release(self, repo: Repository) -> None:
        flow = sample_flow()
        requests = [sample_hook_request(flow, n) for n in range(1, 4)]
        repo.commit([flow], requests)
        assert repo.count_pending() == 3
        claimed = repo.claim(10)
        assert claimed == requests
        assert repo.claim(10) == []  # leased to the first claim
        repo.release([requests[1].id, requests[2].id])
        repo.mark_delivered([requests[0].id])
        assert repo.count_pending() == 2
        assert repo.claim(10) == requests[1:]
        repo.mark_delivered([r.id for r in requests])
        repo.mark_delivered([requests[0].id])  # again: harmless
        assert repo.count_pending() == 0
        assert repo.claim(10) == []

    def test_claim_keeps_each_flows_order(self, repo: Repository) -> None:
        first, second = sample_flow(1), sample_flow(2)
        a = [sample_hook_request(first, n) for n in (1, 2)]
        b = [sample_hook_request(second, n) for n in (1, 2)]
        repo.commit([first], a[:1])
        repo.commit([second], b)
        repo.commit([_advanced(first)], a[1:])
        assert repo.claim(1) == [a[0]]
        # a[1] waits while a[0] is leased, so the second flow comes next.
        assert repo.claim(10) == b
        repo.mark_delivered([a[0].id])
        assert repo.claim(10) == [a[1]]

    def test_a_held_flow_does_not_block_the_others(self, repo: Repository) -> None:
        first, second = sample_flow(1), sample_flow(2)
        queue = [sample_hook_request(first, n) for n in range(1, 6)]
        repo.commit([first], queue)
        repo.commit([second], [sample_hook_request(second)])
        assert repo.claim(1) == queue[:1]
        # The next oldest requests wait behind the first; the other flow's goes ahead.
        assert repo.claim(1) == [sample_hook_request(second)]

    def test_hook_requests_keep_the_delivery_log(self, repo: Repository) -> None:
        flow = sample_flow()
        requests = [sample_hook_request(flow, n) for n in range(1, 4)]
        repo.commit([flow], requests)
        repo.mark_delivered([requests[0].id])
        records = repo.hook_requests(flow.id)
        if self.keeps_delivered:
            assert [r.request for r in records] == requests
            assert records[0].delivered_at is not None
        else:
            assert [r.request for r in records] == requests[1:]
        assert [r.delivered_at for r in records[-2:]] == [None, None]
        assert repo.hook_requests("another-flow") == []

    def test_the_delivery_log_records_attempts_and_the_dead(self, repo: Repository) -> None:
        flow = sample_flow()
        first, second, third = (sample_hook_request(flow, n) for n in range(1, 4))
        repo.commit([flow], [first, second, third])
        now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
        assert repo.record_attempt(first.id, DeliveryAttempt(now, 503, "unavailable", 0.25)) == 1
        assert repo.record_attempt(first.id, DeliveryAttempt(now, None, "timed out", 15.0)) == 2
        repo.mark_dead([first.id])
        assert repo.count_pending() == 2
        (dead,) = repo.dead_requests()
        assert dead.request == first
        assert dead.state is DeliveryState.DEAD
        assert [(a.status_code, a.error) for a in dead.attempts] == [(503, "unavailable"), (None, "timed out")]
        # A dead request does not hold its flow back.
        assert repo.claim(10) == [second, third]
        repo.mark_delivered([second.id, third.id])
        repo.requeue([first.id])
        assert repo.dead_requests() == []
        assert repo.claim(10) == [first]
        states = {r.request.id: r.state for r in repo.hook_requests(flow.id)}
        assert states[first.id] is DeliveryState.PENDING
        if self.keeps_delivered:
            assert states[second.id] is DeliveryState.DELIVERED

    def test_release_with_a_delay_is_a_backoff(self, repo: Repository) -> None:
        flow = sample_flow()
        request = sample_hook_request(flow)
        repo.commit([flow], [request])
        assert repo.claim(10) == [request]
        repo.release([request.id], delay=1.0)
        assert repo.claim(10) == []
        time.sleep(1.2)
        assert repo.claim(10) == [request]

    def test_endpoints_can_be_disabled_and_enabled(self, repo: Repository) -> None:
        assert repo.disabled_endpoints() == frozenset()
        repo.disable_endpoint("https://gone.example/hook")
        repo.disable_endpoint("https://gone.example/hook")
        assert repo.disabled_endpoints() == {"https://gone.example/hook"}
        repo.enable_endpoint("https://gone.example/hook")
        assert repo.disabled_endpoints() == frozenset()

    def test_requeue_leaves_what_is_not_dead_alone(self, repo: Repository) -> None:
        flow = sample_flow()
        leased, delivered = sample_hook_request(flow, 1), sample_hook_request(flow, 2)
        repo.commit([flow], [leased, delivered])
        assert repo.claim(10) == [leased, delivered]
        repo.mark_delivered([delivered.id])
        repo.requeue([leased.id, delivered.id])
        # Still leased to the first claim: a second one would deliver the flow twice at once.
        assert repo.claim(10) == []
        assert repo.count_pending() == 1
        states = {r.request.id: r.state for r in repo.hook_requests(flow.id)}
        assert states[leased.id] is DeliveryState.PENDING
        if self.keeps_delivered:
            assert states[delivered.id] is DeliveryState.DELIVERED

    def test_renew_extends_a_lease_and_never_shortens_it(self, repo: Repository) -> None:
        flow, other = sample_flow(1), sample_flow(2)
        request, backing_off = sample_hook_request(flow), sample_hook_request(other)
        repo.commit([flow], [request])
        repo.commit([other], [backing_off])
        assert repo.claim(10, lease=0.0) == [request, backing_off]  # a lease that has already ended
        repo.release([backing_off.id], delay=3600.0)
        repo.renew([request.id], lease=3600.0)
        assert repo.claim(10) == []  # held again, with no time passing
        repo.renew([request.id, backing_off.id], lease=0.0)
        assert repo.claim(10) == []  # a renewal never shortens a lease or a backoff
        repo.mark_dead([request.id])
        repo.renew([request.id], lease=3600.0)  # only pending requests are renewed
        repo.requeue([request.id])
        assert repo.claim(10) == [request]
        repo.renew(["no-such-request"], lease=60.0)

    def test_leases_and_delays_are_bounded(self, repo: Repository) -> None:
        flow = sample_flow()
        request = sample_hook_request(flow)
        repo.commit([flow], [request], lease=float("inf"))
        assert repo.claim(10) == []
        for delay in (99_999_999_999.0, float("9" * 400), float("inf"), 10**400):  # any Retry-After, unchecked
            repo.release([request.id], delay=delay)
            assert repo.claim(10) == []
            assert repo.count_pending() == 1
        repo.release([request.id], delay=-5.0)  # no wait
        assert repo.claim(10, lease=float("inf")) == [request]
        repo.renew([request.id], lease=float("inf"))
        with pytest.raises(ValidationError) as error:
            repo.release([request.id], delay=float("nan"))
        assert error.value.field == "delay"
        with pytest.raises(ValidationError):
            repo.claim(10, lease=float("nan"))
        assert repo.claim(10) == []  # the refused calls changed nothing
        assert repo.count_pending() == 1

    def test_waiting_flows_are_those_with_an_earlier_pending_request(self, repo: Repository) -> None:
        first, second = sample_flow(1), sample_flow(2)
        a1, a2, a3 = (sample_hook_request(first, n) for n in (1, 2, 3))
        b1 = sample_hook_request(second)
        repo.commit([first], [a1])
        assert repo.waiting_flows([a1.id]) == frozenset()
        assert repo.claim(10) == [a1]  # leased: a dispatcher is on it
        repo.commit([_advanced(first)], [a2, a3], lease=30.0)
        repo.commit([second], [b1], lease=30.0)
        assert repo.waiting_flows([a2.id, a3.id]) == {first.id}
        assert repo.waiting_flows([b1.id, a3.id]) == {first.id}
        assert repo.waiting_flows([b1.id]) == frozenset()
        repo.release([a1.id], delay=3600.0)  # backing off: still ahead of a2
        assert repo.waiting_flows([a2.id]) == {first.id}
        repo.mark_dead([a1.id])  # dead requests hold nothing back
        assert repo.waiting_flows([a2.id, a3.id]) == frozenset()
        repo.requeue([a1.id])
        assert repo.waiting_flows([a3.id]) == {first.id}
        repo.mark_delivered([a1.id])
        assert repo.waiting_flows([a2.id, a3.id]) == frozenset()
        assert repo.waiting_flows([a3.id]) == {first.id}  # a2 is pending before it
        assert repo.waiting_flows(["no-such-request"]) == frozenset()

    def test_leases_expire(self, repo: Repository) -> None:
        flow = sample_flow()
        request = sample_hook_request(flow)
        repo.commit([flow], [request], lease=1.0)
        assert repo.claim(10) == []  # the committer delivers it first
        time.sleep(1.2)
        assert repo.claim(10, lease=1.0) == [request]
        assert repo.claim(10) == []
        time.sleep(1.2)
        assert repo.claim(10) == [request]  # never delivered: offered again

    # --- timers ----------------------------------------------------------------------

    def test_timers_are_committed_with_their_flow(self, repo: Repository) -> None:
        flow = sample_flow()
        deploy, soak = _timer(flow, 0, TimerKind.DEPLOY, 30), _timer(flow, 0, TimerKind.SOAK, 10)
        repo.commit([flow], timers=[deploy, soak])
        assert repo.timers(flow.id) == [soak, deploy]  # soonest first
        # A lost race saves none of its timers, nor its cancellations.
        later = _timer(flow, 1, TimerKind.VERIFY, 5)
        with pytest.raises(ConcurrencyConflict):
            repo.commit([attrs.evolve(_advanced(flow), version=7)], timers=[later], cancel=[deploy.id])
        assert repo.timers(flow.id) == [soak, deploy]
        # Setting a timer of the same id replaces it; cancelling one removes it.
        moved = _timer(flow, 0, TimerKind.DEPLOY, 60)
        repo.commit([_advanced(flow)], timers=[moved], cancel=[soak.id, "no-such-timer"])
        assert repo.timers(flow.id) == [moved]
        assert repo.timers("no-such-flow") == []

    def test_a_finished_flow_loses_its_timers(self, repo: Repository) -> None:
        flow, other = sample_flow(1), sample_flow(2)
        repo.commit([flow, other], timers=[_timer(flow, 0, TimerKind.DEPLOY, 1), _timer(other, 0, TimerKind.DEPLOY, 1)])
        repo.commit([attrs.evolve(_advanced(flow), state=FlowState.FAILED)])
        assert repo.timers(flow.id) == []
        assert repo.claim_due(_T0 + dt.timedelta(hours=1)) == [_timer(other, 0, TimerKind.DEPLOY, 1)]

    def test_claim_due_leases_due_timers_soonest_first(self, repo: Repository) -> None:
        flow = sample_flow()
        timers = [_timer(flow, 0, TimerKind.DEPLOY, 3), _timer(flow, 1, TimerKind.DEPLOY, 1)]
        late = _timer(flow, 0, TimerKind.SOAK, 60)
        repo.commit([flow], timers=[*timers, late])
        now = _T0 + dt.timedelta(minutes=5)
        assert repo.claim_due(now - dt.timedelta(minutes=5)) == []  # nothing due yet
        assert repo.claim_due(now, limit=1) == [timers[1]]
        assert repo.claim_due(now) == [timers[0]]  # the first is leased
        assert repo.claim_due(now) == []
        repo.release_timers([timers[1].id])
        assert repo.claim_due(now) == [timers[1]]
        repo.complete_timers([timers[1], timers[0]])
        assert repo.timers(flow.id) == [late]
        assert repo.claim_due(now + dt.timedelta(hours=1), lease=0.05) == [late]
        time.sleep(0.1)  # a real-time lease (not a timeout of flowfsm's clock): it ends
        assert repo.claim_due(now + dt.timedelta(hours=1)) == [late]

    def test_completing_a_timer_set_again_since_keeps_it(self, repo: Repository) -> None:
        flow = sample_flow()
        first = _timer(flow, 0, TimerKind.DEPLOY, 1)
        repo.commit([flow], timers=[first])
        (claimed,) = repo.claim_due(_T0 + dt.timedelta(minutes=1))
        again = _timer(flow, 0, TimerKind.DEPLOY, 90)
        repo.commit([_advanced(flow)], timers=[again])
        repo.complete_timers([claimed])
        assert repo.timers(flow.id) == [again]

    # --- history ---------------------------------------------------------------------

    def test_history_is_committed_with_its_flow_and_returned_in_order(self, repo: Repository) -> None:
        flow, other = sample_flow(1), sample_flow(2)
        created = _entry(flow, 1, StateChange("flow", flow.id, None, "inProgress"))
        repo.commit([flow, other], history=[created, _entry(other, 1)])
        started = _advanced(flow)
        change = StateChange("deployment", flow.deployments[0].id, "notStarted", "started")
        second = _entry(flow, 2, change, requests=(f"{flow.id}.hr-1",))
        repo.commit([started], [sample_hook_request(started)], history=[second])
        assert repo.history(flow.id) == [created, second]
        assert repo.history(flow.id)[1].changes[0].from_ == "notStarted"
        assert repo.history(other.id) == [_entry(other, 1)]
        assert repo.history("no-such-flow") == []

    def test_a_failed_commit_writes_no_history(self, repo: Repository) -> None:
        flow = sample_flow(1)
        repo.commit([flow], history=[_entry(flow, 1)])
        fresh = sample_flow(2)
        stale = attrs.evolve(_advanced(flow), version=5)
        with pytest.raises(ConcurrencyConflict):  # one flow of two lost its race
            repo.commit([fresh, stale], history=[_entry(fresh, 1), _entry(stale, 5)])
        with pytest.raises(ConcurrencyConflict):  # a lone flow's lost race
            repo.commit([stale], history=[_entry(stale, 5)])
        assert repo.history(flow.id) == [_entry(flow, 1)]
        assert repo.history(fresh.id) == []

    def test_the_engine_records_one_entry_per_accepted_change(self, repo: Repository) -> None:
        """End to end: creation is entry 1; a duplicate and a refused trigger add
        nothing; each entry holds the trigger, its state changes and HookRequests."""
        hook = Webhook("wh", HookEvent.DEPLOYMENT_CREATED, [Action("notify", url="http://127.0.0.1/hook")])
        service = Service("svc", ["g:a"], Pipeline("p", [Environment("dev", ["smoke"])]), webhooks=[hook])
        clock = FakeClock()
        engine = FlowEngine(Catalog([service]), repo, None, clock=clock)
        (flow,) = engine.handle(ArtifactCreated(Artifact("g", "a", "1"), actor="alice")).flows
        dev = flow.deployments[0]
        (smoke,) = dev.promotions
        clock.advance(minutes=1)
        engine.handle(DeploymentStarted(dev.id, actor="cd", reason="rollout"))
        assert engine.handle(DeploymentStarted(dev.id)).duplicate
        passed = PromotionResult(smoke.id, ResultStatus.PASSED)
        with pytest.raises(InvalidTransition):  # before the deployment completed
            engine.handle(PromotionCompleted(dev.id, smoke.id, [passed]))
        engine.handle(DeploymentCompleted(dev.id))
        engine.handle(PromotionCompleted(dev.id, smoke.id, [passed]))
        entries = repo.history(flow.id)
        assert [e.seq for e in entries] == [1, 2, 3, 4] == list(range(1, repo.get(flow.id).version + 1))
        assert [e.trigger["type"] for e in entries] == [
            "ArtifactCreated",
            "DeploymentStarted",
            "DeploymentCompleted",
            "PromotionCompleted",
        ]
        created, started, _, promoted = entries
        assert (created.actor, created.reason, started.actor, started.reason) == ("alice", None, "cd", "rollout")
        assert started.at - created.at == dt.timedelta(minutes=1)
        assert created.changes == (
            StateChange("promotion", smoke.id, None, "pending"),
            StateChange("deployment", dev.id, None, "notStarted"),
            StateChange("flow", flow.id, None, "inProgress"),
        )
        assert len(created.hook_request_ids) == 1
        assert created.hook_request_ids == tuple(r.request.id for r in repo.hook_requests(flow.id))
        assert started.changes == (StateChange("deployment", dev.id, "notStarted", "started"),)
        assert started.hook_request_ids == ()
        assert promoted.changes == (
            StateChange("promotion", smoke.id, "pending", "success"),
            StateChange("deployment", dev.id, "completed", "success"),
            StateChange("flow", flow.id, "inProgress", "success"),
        )
        assert promoted.trigger["results"][0]["resultStatus"] == "passed"
        assert repo.last_success("svc", "dev") == Artifact("g", "a", "1")  # the rollback index, kept by commit

    # --- the rollback index -------------------------------------------------------------

    def test_last_success_is_the_newest_other_artifact_that_succeeded_there(self, repo: Repository) -> None:
        def succeeded(flow: Flow, *indexes: int, version: int) -> Flow:
            deployments = [
                attrs.evolve(d, state=DeploymentState.SUCCESS) if i in indexes else d
                for i, d in enumerate(flow.deployments)
            ]
            return attrs.evolve(flow, version=version, deployments=deployments, updated_at=_T0)

        first, second, other = sample_flow(1), sample_flow(2), sample_flow(3, service_id="other")
        first, second, other = (_renamed(f, f"{f.id}.") for f in (first, second, other))
        assert repo.last_success("svc", "dev") is None
        repo.commit([first, second, other])
        repo.commit([succeeded(first, 0, version=2)])
        assert repo.last_success("svc", "dev") == first.artifact
        assert repo.last_success("svc", "dev", excluding=first.artifact.id) is None
        repo.commit([succeeded(second, 0, version=2), succeeded(other, 0, 1, version=2)])
        assert repo.last_success("svc", "dev") == second.artifact
        assert repo.last_success("svc", "dev", excluding=second.artifact.id) == first.artifact
        # Saved success again (a later version): still recorded once, where it was.
        repo.commit([succeeded(first, 0, 1, version=3)])
        assert repo.last_success("svc", "dev") == second.artifact
        assert repo.last_success("svc", "prod") == first.artifact
        assert repo.last_success("other", "prod") == other.artifact
        assert repo.last_success("svc", "staging") is None
        assert repo.last_success("nobody", "dev") is None

    def test_a_failed_commit_records_no_success(self, repo: Repository) -> None:
        flow, fresh = sample_flow(1), _renamed(sample_flow(2), "fresh.")
        repo.commit([flow])
        done = attrs.evolve(
            fresh, deployments=[attrs.evolve(fresh.deployments[0], state=DeploymentState.SUCCESS), fresh.deployments[1]]
        )
        with pytest.raises(ConcurrencyConflict):
            repo.commit([done, attrs.evolve(_advanced(flow), version=5)])
        assert repo.last_success("svc", "dev") is None


def _move(flow: Flow, to: LaneStatus | None, environment: str = "dev") -> LaneMove:
    return LaneMove(flow.service_id, environment, flow.id, to)


_OCCUPIES, _WAITS = LaneStatus.OCCUPIES, LaneStatus.WAITS


class LanesContract:
    """What a repository that keeps lanes (``flowfsm.protocols.Lanes``: the
    ``queue`` and ``newest-wins`` services of SPEC §11) must do. Mix it into a
    ``RepositoryContract`` subclass of such a backend."""

    def test_a_lane_is_empty_until_a_flow_takes_it(self, repo: Repository) -> None:
        lanes = _lanes(repo)
        assert lanes.lane("svc", "dev") == Lane("svc", "dev")
        a = sample_flow(1)
        lanes.commit([a], lanes=[_move(a, _OCCUPIES)])
        assert lanes.lane("svc", "dev") == Lane("svc", "dev", a.id)
        assert lanes.lane("svc", "prod") == Lane("svc", "prod")
        assert lanes.lane_place("svc", "dev", a.id) is None

    def test_the_line_keeps_arrival_order_and_lists_its_first_flows(self, repo: Repository) -> None:
        lanes = _lanes(repo)
        a, b, c, d = (sample_flow(n) for n in (1, 2, 3, 4))
        lanes.commit([a], lanes=[_move(a, _OCCUPIES)])
        for flow in (c, b, d):  # arrival order, not the flows' own order
            lanes.commit([flow], lanes=[_move(flow, _WAITS)])
        assert lanes.lane("svc", "dev", limit=2) == Lane("svc", "dev", a.id, (c.id, b.id), more=True)
        assert lanes.lane("svc", "dev", limit=3) == Lane("svc", "dev", a.id, (c.id, b.id, d.id), more=False)
        assert [lanes.lane_place("svc", "dev", f.id) for f in (c, b, d)] == [1, 2, 3]
        # The occupant leaves and the first waiting flow takes the lane, in one commit.
        freed, taken = attrs.evolve(a, version=2), attrs.evolve(c, version=2)
        lanes.commit([freed, taken], lanes=[_move(a, None), _move(c, _OCCUPIES)])
        assert lanes.lane("svc", "dev") == Lane("svc", "dev", c.id, (b.id, d.id))
        assert lanes.lane_place("svc", "dev", d.id) == 2
        # One that comes back waits at the end again.
        lanes.commit([attrs.evolve(b, version=2)], lanes=[_move(b, None)])
        lanes.commit([attrs.evolve(b, version=3)], lanes=[_move(b, _WAITS)])
        assert lanes.lane("svc", "dev").waiting == (d.id, b.id)

    def test_a_second_occupant_is_a_conflict_and_saves_nothing(self, repo: Repository) -> None:
        lanes = _lanes(repo)
        a, b = sample_flow(1), sample_flow(2)
        lanes.commit([a], lanes=[_move(a, _OCCUPIES)])
        with pytest.raises(ConcurrencyConflict):
            lanes.commit([b], [sample_hook_request(b)], lanes=[_move(b, _OCCUPIES)])
        with pytest.raises(UnknownFlow):
            repo.get(b.id)
        assert repo.count_pending() == 0
        assert lanes.lane("svc", "dev") == Lane("svc", "dev", a.id)

    def test_waiting_for_a_lane_no_one_occupies_is_a_conflict(self, repo: Repository) -> None:
        lanes = _lanes(repo)
        a = sample_flow(1)
        repo.commit([a])
        with pytest.raises(ConcurrencyConflict):
            lanes.commit([attrs.evolve(a, version=2)], lanes=[_move(a, _WAITS)])
        assert repo.get(a.id).version == 1
        assert lanes.lane("svc", "dev") == Lane("svc", "dev")

    def test_leaving_a_lane_others_wait_for_free_is_a_conflict(self, repo: Repository) -> None:
        lanes = _lanes(repo)
        a, b = sample_flow(1), sample_flow(2)
        lanes.commit([a], lanes=[_move(a, _OCCUPIES)])
        lanes.commit([b], lanes=[_move(b, _WAITS)])
        with pytest.raises(ConcurrencyConflict):
            lanes.commit([attrs.evolve(a, version=2)], lanes=[_move(a, None)])
        assert repo.get(a.id).version == 1
        assert lanes.lane("svc", "dev") == Lane("svc", "dev", a.id, (b.id,))

    def test_lanes_of_services_and_environments_are_apart(self, repo: Repository) -> None:
        lanes = _lanes(repo)
        a, b = sample_flow(1), sample_flow(2, service_id="other")
        lanes.commit([a, b], lanes=[_move(a, _OCCUPIES), _move(b, _OCCUPIES), _move(a, _OCCUPIES, "prod")])
        assert lanes.lane("svc", "dev").occupant == a.id
        assert lanes.lane("other", "dev").occupant == b.id
        assert lanes.lane("svc", "prod").occupant == a.id


def _lanes(repo: Repository) -> Lanes:
    assert isinstance(repo, Lanes), f"{type(repo).__name__} keeps no lanes"
    return repo
