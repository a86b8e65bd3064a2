"""Test helpers that users need too: a recording emitter, deterministic clocks and
ids, sample entities, and ``RepositoryContract``, the test suite every
repository backend must pass (flowfsm runs it against its own backends).

To check your own backend, subclass it in a pytest module::

    from flowfsm.testing import RepositoryContract

    class TestMyRepository(RepositoryContract):
        def make_repository(self):
            return MyRepository(...)

and ``RepositoryStateMachine``, the same backend driven side by side with the
in-memory reference by Hypothesis::

    TestMyMachine = RepositoryStateMachine.for_repository(lambda: MyRepository(...)).TestCase

This module imports pytest and Hypothesis, so it needs the ``dev`` extra.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flowfsm.catalog import Catalog
from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.engine import FlowEngine
from flowfsm.errors import (
    ConcurrencyConflict,
    FlowFSMError,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    ValidationError,
)
from flowfsm.model import (
    Action,
    ActionRef,
    Artifact,
    DeliveryAttempt,
    DeliveryState,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    HookEvent,
    HookRequest,
    Pipeline,
    Promotion,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Service,
    ServiceRef,
    Webhook,
)
from flowfsm.protocols import Repository
from flowfsm.repositories.memory import InMemoryRepository
from flowfsm.triggers import (
    ArtifactCreated,
    DeploymentCompleted,
    DeploymentStarted,
    PromotionCompleted,
    Trigger,
)

__all__ = [
    "CallbackEmitter",
    "RecordingEmitter",
    "RepositoryContract",
    "RepositoryStateMachine",
    "SequentialIds",
    "StepClock",
    "TemporaryPostgres",
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


# Run by a TemporaryPostgres's watchdog process: wait for the end of the pipe from
# the process that started the server, which comes when that process exits however
# it exits (a signal, a crash, or closing it), then stop the server and remove its
# directory. Nothing to do if the process did that itself.
_WATCHDOG = """
import json, shutil, subprocess, sys
stop, directory = json.loads(sys.argv[1])
sys.stdin.buffer.read()
subprocess.run(stop, capture_output=True, timeout=120, check=False)
shutil.rmtree(directory, ignore_errors=True)
"""


class TemporaryPostgres:
    """A throwaway PostgreSQL server on 127.0.0.1, for tests and benchmarks.

    ``with TemporaryPostgres() as pg: PostgresRepository(pg.dsn)``. It runs
    ``initdb`` and ``pg_ctl`` (found on ``PATH`` or under ``/usr/lib/postgresql``)
    in a temporary directory on a free port — as the ``postgres`` user when run
    as root, since PostgreSQL refuses to run as root — and removes everything on
    exit. A small watchdog process does the same if the process that started the
    server ends first without exiting the context: killed by a signal, say, which
    skips ``__exit__``. ``durable=False`` (the default) turns off fsync: fast, and
    what it commits still survives the server being killed, though not the machine.
    """

    def __init__(self, *, durable: bool = False, bin_dir: str | None = None) -> None:
        found = bin_dir or self.find_bin_dir()
        if found is None:
            raise FileNotFoundError("PostgreSQL's initdb and pg_ctl were not found")
        self.bin_dir = found
        self.durable = durable
        self.port = 0
        self.dsn = ""
        self._dir = ""
        self._watchdog: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_bin_dir() -> str | None:
        """Where ``initdb`` and ``pg_ctl`` are, or None."""
        on_path = shutil.which("initdb")
        if on_path and shutil.which("pg_ctl"):
            return os.path.dirname(os.path.realpath(on_path))
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        return os.path.dirname(versions[-1]) if versions else None

    def _command(self, *args: str) -> list[str]:
        command = [os.path.join(self.bin_dir, args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, *args: str) -> None:
        done = subprocess.run(self._command(*args), capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def __enter__(self) -> TemporaryPostgres:
        self._dir = tempfile.mkdtemp(prefix="flowfsm-pg-")
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        data = os.path.join(self._dir, "data")
        try:
            self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
            self._watch(data)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            self.start()
        except BaseException:
            self.__exit__()
            raise
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5"
        return self

    def _watch(self, data: str) -> None:
        stop = self._command("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, json.dumps([stop, self._dir])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # out of the way of signals sent to this process's group
        )

    def stop(self) -> None:
        """Stop the server now (its files stay until ``__exit__``)."""
        self._run("pg_ctl", "-D", os.path.join(self._dir, "data"), "-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start the server (again, after ``stop``: same port, same data)."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self._dir} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        data, log = os.path.join(self._dir, "data"), os.path.join(self._dir, "server.log")
        self._run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start")

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped, or never started
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            if self._watchdog is not None:
                self._close_watchdog(self._watchdog)
                self._watchdog = None

    @staticmethod
    def _close_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
        """End of the pipe: the watchdog finds nothing left to do and exits. A child
        this process forked may still hold the pipe; then the watchdog waits for it,
        and this does not."""
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=10)


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
            deployment,
            ServiceRef(flow.service_id, "default", "STOP"),
            Environment(deployment.environment, [p.name for p in deployment.promotions]),
        ),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
    )


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


def _comparison_catalog() -> Catalog:
    """Two services on one artifact, webhooks with two actions on every event."""
    webhooks = [
        Webhook(f"wh-{event.value}", event, [Action("a1", url="http://127.0.0.1/1"), Action("a2")])
        for event in HookEvent
    ]
    return Catalog(
        [
            Service(
                "svc-a",
                artifacts=["com.acme:api"],
                pipeline=Pipeline("p", [Environment("dev", ["smoke", "perf"]), Environment("prod", ["smoke"])]),
                webhooks=webhooks,
            ),
            Service(
                "svc-b",
                artifacts=["com.acme:api"],
                pipeline=Pipeline("p", [Environment("dev"), Environment("prod", ["smoke"])]),
                webhooks=webhooks[:3],
            ),
        ]
    )


class RepositoryStateMachine(RuleBasedStateMachine):
    """Drives two engines side by side with the same random triggers: one on the
    repository under test, one on ``InMemoryRepository`` as the reference, with the
    same ids and clock. After every step both must have answered alike and stored
    the same flows and the same pending outbox.

    ``TestMine = RepositoryStateMachine.for_repository(make_repository).TestCase``
    """

    def make_repository(self) -> Repository:
        raise NotImplementedError

    @classmethod
    def for_repository(cls, make: Callable[[], Repository]) -> type[RepositoryStateMachine]:
        return type(f"{cls.__name__}For", (cls,), {"make_repository": lambda self: make()})

    def __init__(self) -> None:
        super().__init__()
        catalog = _comparison_catalog()
        self.repository = self.make_repository()
        self.reference = InMemoryRepository()
        self.engine = FlowEngine(catalog, self.repository, None, clock=StepClock(), id_factory=SequentialIds())
        self.reference_engine = FlowEngine(catalog, self.reference, None, clock=StepClock(), id_factory=SequentialIds())

    def teardown(self) -> None:
        close: Callable[[], None] | None = getattr(self.repository, "close", None)
        if close is not None:
            close()

    def _both(self, trigger: Trigger) -> None:
        try:
            expected = self.reference_engine.handle(trigger)
        except FlowFSMError as e:
            with pytest.raises(type(e)):
                self.engine.handle(trigger)
            return
        assert self.engine.handle(trigger) == expected

    def _deployments(self) -> list[Deployment]:
        return [d for f in self.reference.list_flows(limit=1000) for d in f.deployments]

    @rule(version=st.sampled_from(["1", "2", "3"]))
    def artifact_created(self, version: str) -> None:
        self._both(ArtifactCreated(Artifact("com.acme", "api", version)))

    @rule(data=st.data(), complete=st.booleans())
    def deployment_trigger(self, data: st.DataObject, complete: bool) -> None:
        ids = [d.id for d in self._deployments()] + ["unknown-deployment"]
        deployment_id = data.draw(st.sampled_from(ids))
        self._both(DeploymentCompleted(deployment_id) if complete else DeploymentStarted(deployment_id))

    @precondition(lambda self: any(d.promotions for d in self._deployments()))
    @rule(data=st.data(), status=st.sampled_from(ResultStatus))
    def promotion_completed(self, data: st.DataObject, status: ResultStatus) -> None:
        pairs = [(d.id, p.id) for d in self._deployments() for p in d.promotions]
        deployment_id, promotion_id = data.draw(st.sampled_from(pairs))
        self._both(PromotionCompleted(deployment_id, promotion_id, [PromotionResult(promotion_id, status)]))

    @precondition(lambda self: bool(self.reference.list_flows(state=FlowState.IN_PROGRESS)))
    @rule(data=st.data(), passes=st.integers(0, 5))
    def progress(self, data: st.DataObject, passes: int) -> None:
        """The next valid trigger of a flow in progress, so runs reach deep states."""
        flow = data.draw(st.sampled_from(self.reference.list_flows(state=FlowState.IN_PROGRESS)))
        current = flow.current_deployment()
        assert current is not None
        if current.state is DeploymentState.NOT_STARTED:
            self._both(DeploymentStarted(current.id))
        elif current.state is DeploymentState.STARTED:
            self._both(DeploymentCompleted(current.id))
        else:
            promotion = next(p for p in current.promotions if p.state is PromotionState.PENDING)
            status = ResultStatus.PASSED if passes else ResultStatus.FAILED
            self._both(PromotionCompleted(current.id, promotion.id, [PromotionResult(promotion.id, status)]))

    @rule(limit=st.integers(1, 8), deliver=st.booleans())
    def dispatch(self, limit: int, deliver: bool) -> None:
        claimed = self.repository.claim(limit, lease=60)
        assert claimed == self.reference.claim(limit, lease=60)
        ids = [r.id for r in claimed]
        # A claim hands out the leading run of each flow's pending requests: none waits.
        assert self.repository.waiting_flows(ids) == self.reference.waiting_flows(ids) == frozenset()
        for repository in (self.repository, self.reference):
            if deliver:
                repository.mark_delivered(ids)
            else:
                repository.release(ids)

    @invariant()
    def stores_agree(self) -> None:
        flows = self.reference.list_flows(limit=1000)
        assert self.repository.list_flows(limit=1000) == flows
        for flow in flows:
            assert self.repository.get(flow.id) == flow
            pending = [r.request for r in self.repository.hook_requests(flow.id) if r.delivered_at is None]
            assert pending == [r.request for r in self.reference.hook_requests(flow.id)]
        assert self.repository.count_pending() == self.reference.count_pending()
