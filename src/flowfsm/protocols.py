"""The pluggable parts, each a small ``typing.Protocol``, documented in one place.

- ``Repository``: stores flows and their outbox of HookRequests. It is six roles,
  each its own protocol: ``FlowStore`` (flows, saved with their HookRequests,
  timers and history), ``Outbox`` (HookRequests waiting for delivery),
  ``DeliveryLog`` (attempts and dead requests), ``EndpointSwitches`` (endpoints
  turned off), ``Timers`` (durable timers, for the scheduler) and ``FlowHistory``
  (what each trigger did, and the successes a rollback returns to); a part of
  flowfsm that needs one role asks for that one.
- ``Lanes``: optional; the lanes of services that run one flow at a time per
  environment (``queue``, ``newest-wins``: SPEC §11). A repository without it
  serves ``parallel`` services only (the engine refuses the others at once).
- ``Wakeups``: optional; a repository that can tell a worker (``flowfsm.worker``)
  at once when a commit added work, instead of letting it poll (PostgreSQL does).
- ``HookEmitter``: receives HookRequests.
- ``ServiceCatalog``: finds services by artifact key.
- ``FailureHandler``: decides what a failure does.

Implement one by writing a class with these methods; no base class is needed.
``flowfsm.testing.RepositoryContract`` checks a repository against the contract.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from flowfsm.model import (
    Artifact,
    DeliveryAttempt,
    Flow,
    FlowState,
    HistoryEntry,
    HookRecord,
    HookRequest,
    Service,
    Timer,
)

if TYPE_CHECKING:
    from flowfsm.lanes import Lane, LaneMove
    from flowfsm.strategies import Failure

__all__ = [
    "DeliveryLog",
    "EndpointSwitches",
    "FailureHandler",
    "FlowHistory",
    "FlowStore",
    "HookEmitter",
    "Lanes",
    "Outbox",
    "Repository",
    "ServiceCatalog",
    "Timers",
    "Wakeups",
]


@runtime_checkable
class FlowStore(Protocol):
    """Stores flows, versioned for optimistic concurrency, and commits each save with
    its HookRequests (the transactional outbox).

    Flows are immutable values, so a repository may hand out the very objects it
    stores (the in-memory one does) or build new ones (the SQL ones do). Errors are
    ``FlowFSMError``s; a driver's error is their ``__cause__``.
    """

    def get(self, flow_id: str) -> Flow:
        """The stored flow; ``UnknownFlow`` if there is none."""
        ...

    def find_by_deployment(self, deployment_id: str) -> Flow:
        """The flow owning the deployment; ``UnknownDeployment`` if none does."""
        ...

    def find_by_promotion(self, promotion_id: str) -> Flow:
        """The flow owning the promotion; ``UnknownPromotion`` if none does."""
        ...

    def find_by_key(self, artifact_id: str, service_id: str) -> Flow | None:
        """The flow of this (artifact id, service id), the flow's unique key."""
        ...

    def list_flows(
        self,
        *,
        service_id: str | None = None,
        state: FlowState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Flow]:
        """Flows, newest first, optionally of one service and/or in one state."""
        ...

    def commit(
        self,
        flows: Sequence[Flow],
        hook_requests: Sequence[HookRequest] = (),
        *,
        lease: float = 0.0,
        timers: Sequence[Timer] = (),
        cancel: Sequence[str] = (),
        history: Sequence[HistoryEntry] = (),
    ) -> None:
        """Save ``flows``, add ``hook_requests`` to the outbox, set ``timers`` (each
        replacing a pending one of its id), cancel the timers ``cancel`` names and
        append the ``history`` entries (see ``FlowHistory``), all or nothing; a flow
        saved finished (``FlowState.finished``) loses every timer it had.

        Each flow carries the version it is saved as: 1 inserts it (and conflicts
        if its id or its key is taken); n > 1 replaces version n - 1. Anything else
        raises ``ConcurrencyConflict`` and saves nothing. A ``lease`` > 0 keeps the
        new HookRequests from ``claim`` for that many seconds, so the committer
        can deliver them itself first.
        """
        ...


@runtime_checkable
class Outbox(Protocol):
    """The HookRequests committed with the flows, until they are delivered."""

    def claim(self, limit: int = 100, *, lease: float = 30.0) -> list[HookRequest]:
        """Up to ``limit`` pending HookRequests, leased to the caller for ``lease`` s.

        Oldest first; for each flow only a prefix of its pending requests, and
        nothing of a flow another claim holds, so each flow's requests are
        delivered in creation order even by several dispatchers.
        """
        ...

    def renew(self, ids: Sequence[str], *, lease: float = 30.0) -> None:
        """Extend the lease of these pending HookRequests to ``lease`` s from now
        (never shortening it), so that a claim outlasts a slow delivery."""
        ...

    def waiting_flows(self, ids: Sequence[str]) -> frozenset[str]:
        """The flows of these HookRequests that have an earlier one still pending
        (waiting, leased or backing off): these must not be delivered before it."""
        ...

    def mark_delivered(self, ids: Sequence[str]) -> None:
        """These HookRequests reached their emitter; they are no longer pending."""
        ...

    def release(self, ids: Sequence[str], *, delay: float = 0.0) -> None:
        """End the lease of these pending HookRequests; ``claim`` may return them
        again after ``delay`` seconds (a retry's backoff).

        Leases and delays are seconds: below zero counts as zero, more than a day
        (``flowfsm.repositories.MAX_WAIT``, infinity included) as a day; NaN is a
        ``ValidationError``."""
        ...

    def count_pending(self) -> int:
        """How many HookRequests wait for delivery."""
        ...

    def hook_requests(self, flow_id: str) -> list[HookRecord]:
        """The flow's HookRequests in creation order, with their state and delivery
        attempts (a backend may forget delivered ones; the in-memory one does)."""
        ...


@runtime_checkable
class DeliveryLog(Protocol):
    """Each delivery attempt, and the HookRequests given up on."""

    def record_attempt(self, request_id: str, attempt: DeliveryAttempt) -> int:
        """Log one delivery attempt; returns how many the HookRequest has had."""
        ...

    def mark_dead(self, ids: Sequence[str]) -> None:
        """Stop trying these HookRequests: they stay, visible, until requeued."""
        ...

    def requeue(self, ids: Sequence[str]) -> None:
        """Make dead HookRequests pending again, in their original place; any
        other HookRequest (pending, leased, delivered) is left as it is."""
        ...

    def dead_requests(self, limit: int = 100) -> list[HookRecord]:
        """Dead HookRequests, oldest first."""
        ...


@runtime_checkable
class EndpointSwitches(Protocol):
    """Endpoints turned off (they answered 410 Gone), by URL."""

    def disable_endpoint(self, url: str) -> None:
        """Stop delivering to ``url`` (it answered 410 Gone) until enabled again."""
        ...

    def enable_endpoint(self, url: str) -> None: ...

    def disabled_endpoints(self) -> frozenset[str]: ...


@runtime_checkable
class Timers(Protocol):
    """Durable timers, set and cancelled by ``FlowStore.commit`` with their flows,
    handed to schedulers (``flowfsm.scheduling``) once due."""

    def claim_due(self, now: dt.datetime, limit: int = 100, *, lease: float = 30.0) -> list[Timer]:
        """Up to ``limit`` timers due at ``now`` (``due <= now``), soonest first,
        leased to the caller for ``lease`` seconds of real time (bounded as the
        outbox's leases): no other claim returns them meanwhile."""
        ...

    def complete_timers(self, timers: Sequence[Timer]) -> None:
        """These timers have fired (or found their flow moved on): remove each one
        still pending as it was claimed (a timer set again since, with another due
        time, stays)."""
        ...

    def release_timers(self, ids: Sequence[str]) -> None:
        """End the lease of these timers: the next claim may return them again."""
        ...

    def timers(self, flow_id: str) -> list[Timer]:
        """The flow's pending timers, soonest first."""
        ...


@runtime_checkable
class FlowHistory(Protocol):
    """What each trigger did to each flow (SPEC §9), appended by ``FlowStore.commit``
    with the change it records; and the index of successes a rollback returns to,
    kept by ``commit`` from the flows it saves."""

    def history(self, flow_id: str) -> list[HistoryEntry]:
        """The flow's history entries, in order (``seq`` 1, 2, ...); ``[]`` for a
        flow without any (or none at all)."""
        ...

    def last_success(self, service_id: str, environment: str, *, excluding: str | None = None) -> Artifact | None:
        """The artifact of the service's flow whose deployment to ``environment`` was
        saved ``success`` most recently, other than the artifact id ``excluding``;
        None if there is none. Read from an index ``commit`` keeps (a deployment is
        recorded the first time it is saved ``success``), never a scan of the flows."""
        ...


@runtime_checkable
class Repository(FlowStore, Outbox, DeliveryLog, EndpointSwitches, Timers, FlowHistory, Protocol):
    """Everything the engine, the dispatcher and the scheduler store: the six roles,
    in one backend (one database), so a flow's save, its HookRequests and its timers
    share a transaction.
    ``flowfsm.testing.RepositoryContract`` checks a backend against all of them."""


@runtime_checkable
class Lanes(Protocol):
    """Optional: who occupies each lane (service id, environment) and who waits for
    it, in arrival order (SPEC §11; ``flowfsm.lanes`` defines occupancy). The engine
    hands the changes to ``commit`` as ``lanes=``, beside the flows they follow from,
    only when there are some (a ``parallel`` service has none)."""

    def commit(
        self,
        flows: Sequence[Flow],
        hook_requests: Sequence[HookRequest] = (),
        *,
        lease: float = 0.0,
        timers: Sequence[Timer] = (),
        cancel: Sequence[str] = (),
        history: Sequence[HistoryEntry] = (),
        lanes: Sequence[LaneMove] = (),
    ) -> None:
        """``FlowStore.commit``, which also applies ``lanes``, in the same transaction:
        each flow leaves its place in the lane, then takes its new one (``occupies``:
        the lane's occupant; ``waits``: the end of the line, numbered in arrival
        order; None: neither). A compare-and-set: ``ConcurrencyConflict``, and nothing
        saved, if another flow occupies a lane a move takes, or if a lane it touches is
        left with flows waiting and none occupying it (another writer freed or filled
        it since the engine read it); the engine then retries the whole trigger."""
        ...

    def lane(self, service_id: str, environment: str, *, limit: int = 4) -> Lane:
        """The lane as stored: its occupant, and the first ``limit`` flows waiting in
        arrival order (``more``: others wait too). Read from an index: its cost does
        not grow with the line."""
        ...

    def lane_place(self, service_id: str, environment: str, flow_id: str) -> int | None:
        """The flow's place in the lane's line (1: next), or None if it does not wait."""
        ...


@runtime_checkable
class Wakeups(Protocol):
    """Optional: wakes workers when a commit adds work, so they need not poll for it.

    A repository offers it when its database can announce commits (PostgreSQL's
    ``LISTEN``/``NOTIFY``: the notice follows the commit, so it arrives only once
    the work is visible). Polling stays the fallback: a worker
    still looks at its poll interval for what no commit announces (a retry's
    backoff ending, a lease running out), and polls alone while ``listen`` fails.
    """

    def listen(self, wake: Callable[[str], None], stop: threading.Event) -> None:
        """Block until ``stop`` is set, calling ``wake(kind)`` on a connection of its
        own: ``"ready"`` once listening (work committed before then is not
        announced: look once), then ``"hooks"`` after each commit that added
        HookRequests and ``"timers"`` after each that set timers. Raises a
        ``RepositoryError`` when the connection fails; the caller listens again."""
        ...

    def next_timer_due(self) -> dt.datetime | None:
        """When the soonest pending timer is due (leased ones included), or None:
        a listening scheduler sleeps until then, as new timers wake it."""
        ...


@runtime_checkable
class HookEmitter(Protocol):
    """Receives each HookRequest; raising leaves it pending in the outbox."""

    def emit(self, request: HookRequest) -> int | None:
        """Deliver ``request``; may return the receiver's status code for the
        delivery log. Raise ``DeliveryError`` (or anything) when it fails."""
        ...


@runtime_checkable
class ServiceCatalog(Protocol):
    """Where the engine finds services; ``flowfsm.Catalog`` is the built-in one."""

    def __iter__(self) -> Iterator[Service]:
        """Every service, in declared order."""
        ...

    def for_artifact(self, key: str) -> Sequence[Service]:
        """Services consuming the artifact key ``group:name``, in declared order."""
        ...

    def get(self, service_id: str) -> Service:
        """The service; ``UnknownService`` if there is none."""
        ...


@runtime_checkable
class FailureHandler(Protocol):
    """What a failure of any kind does (a promotion or a deployment failed, …);
    registered with the engine under a name that services give as their
    ``failure_strategy``. It acts through the ``Failure``'s moves."""

    def on_failure(self, failure: Failure) -> None: ...
