"""Test helpers that users need too: a recording emitter, deterministic clocks and
ids, sample entities, and ``RepositoryContract``, the test suite every
repository backend must pass (flowfsm runs it against its own backends).

To check your own backend, subclass it in a pytest module::

    from flowfsm.testing import RepositoryContract

    class TestMyRepository(RepositoryContract):
        def make_repository(self):
            return MyRepository(...)

This module imports pytest, so it needs the ``dev`` extra (or pytest) installed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.errors import ConcurrencyConflict, UnknownDeployment, UnknownFlow, ValidationError
from flowfsm.model import (
    ActionRef,
    Artifact,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    HookEvent,
    HookRequest,
    Promotion,
    ServiceRef,
)
from flowfsm.protocols import Repository

__all__ = [
    "CallbackEmitter",
    "RecordingEmitter",
    "RepositoryContract",
    "SequentialIds",
    "StepClock",
    "sample_flow",
    "sample_hook_request",
]


class SequentialIds:
    """An id factory giving ``prefix-1``, ``prefix-2``, ...: readable, repeatable."""

    def __init__(self, prefix: str = "id") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


class StepClock:
    """A clock that starts at ``start`` and moves ``step`` forward on every call."""

    def __init__(
        self,
        start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        step: dt.timedelta = dt.timedelta(seconds=1),
    ) -> None:
        self._now = start
        self._step = step

    def __call__(self) -> dt.datetime:
        now = self._now
        self._now += self._step
        return now


def sample_flow(
    n: int = 1,
    *,
    service_id: str = "svc",
    environments: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("dev", ("smoke",)),
        ("prod", ("smoke", "perf")),
    ),
    version: int = 1,
) -> Flow:
    """A new flow with ids derived from ``n``, ready to ``commit`` as version 1."""
    flow_id = f"flow-{n}-{service_id}"
    deployments = [
        Deployment(f"{flow_id}.{env}", env, [Promotion(f"{flow_id}.{env}.{p}", p) for p in promotions])
        for env, promotions in environments
    ]
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n)
    return Flow(
        flow_id,
        Artifact("com.acme", "api", f"1.{n}.0"),
        service_id,
        deployments,
        version=version,
        created_at=created,
        updated_at=created,
    )


def sample_hook_request(flow: Flow, n: int = 1) -> HookRequest:
    """A deployment-created HookRequest for ``flow``'s first deployment."""
    deployment = flow.deployments[0]
    return HookRequest(
        f"{flow.id}.hr-{n}",
        flow.id,
        "wh",
        ActionRef("notify", "http://127.0.0.1/hook"),
        HookEvent.DEPLOYMENT_CREATED,
        DeploymentPayload(
            flow.artifact,
            deployment.copy(),
            ServiceRef(flow.service_id, "default", "STOP"),
            Environment(deployment.environment, [p.name for p in deployment.promotions]),
        ),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
    )


def _advanced(flow: Flow) -> Flow:
    """The next version of ``flow``, with its first deployment started."""
    changed = flow.copy()
    changed.version += 1
    changed.deployments[0].state = DeploymentState.STARTED
    return changed


class RepositoryContract:
    """What every ``Repository`` must do. Subclass and implement ``make_repository``;
    the subclass's name must start with ``Test`` for pytest to collect it."""

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

    def test_unknown_ids_raise_typed_errors(self, repo: Repository) -> None:
        with pytest.raises(UnknownFlow) as flow_error:
            repo.get("nope")
        assert flow_error.value.flow_id == "nope"
        with pytest.raises(UnknownDeployment) as deployment_error:
            repo.find_by_deployment("nope")
        assert deployment_error.value.deployment_id == "nope"
        assert repo.find_by_key("com.acme:api:9", "svc") is None

    def test_returned_flows_are_copies(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        flow.state = FlowState.FAILED  # the caller's object after commit
        loaded = repo.get(flow.id)
        loaded.deployments[0].state = DeploymentState.FAILED
        loaded.deployments[0].promotions.clear()
        again = repo.get(flow.id)
        assert again.state is FlowState.IN_PROGRESS
        assert again.deployments[0].state is DeploymentState.NOT_STARTED
        assert len(again.deployments[0].promotions) == 1

    def test_lookups_by_deployment_and_key(self, repo: Repository) -> None:
        first, second = sample_flow(1), sample_flow(2)
        repo.commit([first, second])
        for deployment in second.deployments:
            assert repo.find_by_deployment(deployment.id) == second
        assert repo.find_by_key(first.artifact.id, first.service_id) == first
        assert repo.find_by_key(first.artifact.id, "other") is None

    def test_update_is_compare_and_set_on_version(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        newer = _advanced(flow)
        repo.commit([newer])
        assert repo.get(flow.id) == newer
        stale = _advanced(flow)  # built from version 1 again: version 2 is taken
        stale.state = FlowState.FAILED
        with pytest.raises(ConcurrencyConflict) as conflict:
            repo.commit([stale])
        assert conflict.value.flow_id == flow.id
        assert repo.get(flow.id) == newer
        skipping = newer.copy()
        skipping.version += 2
        with pytest.raises(ConcurrencyConflict):
            repo.commit([skipping])
        with pytest.raises(ConcurrencyConflict):
            repo.commit([_advanced(sample_flow(7))])  # an update of a flow never stored

    def test_key_and_id_are_unique(self, repo: Repository) -> None:
        flow = sample_flow()
        repo.commit([flow])
        same_key = sample_flow()
        same_key.id = "another-id"
        for deployment in same_key.deployments:
            deployment.id = "x" + deployment.id
            for promotion in deployment.promotions:
                promotion.id = "x" + promotion.id
        with pytest.raises(ConcurrencyConflict):
            repo.commit([same_key])
        same_id = sample_flow()
        same_id.artifact = Artifact("com.acme", "api", "9.9.9")
        for deployment in same_id.deployments:
            deployment.id = "y" + deployment.id
            for promotion in deployment.promotions:
                promotion.id = "y" + promotion.id
        with pytest.raises(ConcurrencyConflict):
            repo.commit([same_id])
        assert repo.list_flows() == [flow]

    def test_commit_is_all_or_nothing(self, repo: Repository) -> None:
        flow = sample_flow(1)
        repo.commit([flow])
        fresh = sample_flow(2)
        stale = _advanced(flow)
        stale.version = 5
        with pytest.raises(ConcurrencyConflict):
            repo.commit([fresh, stale], [sample_hook_request(fresh)])
        with pytest.raises(UnknownFlow):
            repo.get(fresh.id)
        with pytest.raises(UnknownDeployment):
            repo.find_by_deployment(fresh.deployments[0].id)
        assert repo.count_pending() == 0
        assert repo.get(flow.id) == flow

    def test_list_flows_newest_first_filtered_and_paged(self, repo: Repository) -> None:
        flows = [sample_flow(n, service_id="a" if n % 2 else "b") for n in range(1, 8)]
        for flow in flows:
            repo.commit([flow])
        failed = _advanced(flows[2])
        failed.state = FlowState.FAILED
        repo.commit([failed])
        ids = [f.id for f in repo.list_flows()]
        assert ids == [f.id for f in reversed(flows)]
        assert [f.id for f in repo.list_flows(service_id="a")] == [
            f.id for f in reversed(flows) if f.service_id == "a"
        ]
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

    def test_leases_expire(self, repo: Repository) -> None:
        flow = sample_flow()
        request = sample_hook_request(flow)
        repo.commit([flow], [request], lease=0.2)
        assert repo.claim(10) == []  # the committer delivers it first
        time.sleep(0.3)
        assert repo.claim(10, lease=0.2) == [request]
        assert repo.claim(10) == []
        time.sleep(0.3)
        assert repo.claim(10) == [request]  # never delivered: offered again
