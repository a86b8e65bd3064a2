"""``InMemoryRepository``: the reference backend, for tests and short-lived runs.

Flows are immutable, so it keeps and hands out the flows it is given: a save and
a load copy nothing.
It holds only undelivered HookRequests: a delivered one is forgotten. One lock makes
it safe to share between threads.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import threading
import time
from collections.abc import Sequence
from typing import Final

from flowfsm.errors import ConcurrencyConflict, UnknownDeployment, UnknownFlow, UnknownPromotion
from flowfsm.lanes import Lane, LaneMove, LaneStatus
from flowfsm.model import (
    FINISHED,
    Artifact,
    DeliveryAttempt,
    DeliveryState,
    DeploymentState,
    Flow,
    FlowState,
    HistoryEntry,
    HookRecord,
    HookRequest,
    Timer,
)
from flowfsm.repositories._common import check_page, wait_seconds

__all__ = ["InMemoryRepository"]


class InMemoryRepository:
    """A ``Repository`` held in dicts."""

    def __init__(self) -> None:
        self._flows: dict[str, Flow] = {}
        self._by_deployment: dict[str, str] = {}
        self._by_promotion: dict[str, str] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        # Undelivered HookRequests in commit order, each with the end of its lease
        # (_DEAD for dead ones, which keep their place in case they are requeued).
        self._outbox: dict[str, tuple[HookRequest, float]] = {}
        self._dead: set[str] = set()
        self._attempts: dict[str, list[DeliveryAttempt]] = {}
        self._disabled: set[str] = set()
        # Pending timers by id, each with the end of its lease (monotonic; 0: none).
        self._timers: dict[str, tuple[Timer, float]] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        # The rollback index: per (service id, environment), the (artifact, flow id) of
        # each deployment saved ``success``, in the order they were; and what it holds.
        self._successes: dict[tuple[str, str], list[tuple[Artifact, str]]] = {}
        self._succeeded: set[tuple[str, str]] = set()
        # The lanes (SPEC §11), by (service id, environment): the occupant's flow id,
        # and the flows waiting, in arrival order (a dict keeps insertion order).
        self._occupants: dict[tuple[str, str], str] = {}
        self._waiting: dict[tuple[str, str], dict[str, None]] = {}
        self._lock = threading.Lock()

    def get(self, flow_id: str) -> Flow:
        with self._lock:
            flow = self._flows.get(flow_id)
            if flow is None:
                raise UnknownFlow(flow_id)
            return flow

    def find_by_deployment(self, deployment_id: str) -> Flow:
        with self._lock:
            flow_id = self._by_deployment.get(deployment_id)
            if flow_id is None:
                raise UnknownDeployment(deployment_id)
            return self._flows[flow_id]

    def find_by_promotion(self, promotion_id: str) -> Flow:
        with self._lock:
            flow_id = self._by_promotion.get(promotion_id)
            if flow_id is None:
                raise UnknownPromotion(None, promotion_id)
            return self._flows[flow_id]

    def find_by_key(self, artifact_id: str, service_id: str) -> Flow | None:
        with self._lock:
            flow_id = self._by_key.get((artifact_id, service_id))
            return None if flow_id is None else self._flows[flow_id]

    def list_flows(
        self,
        *,
        service_id: str | None = None,
        state: FlowState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Flow]:
        check_page(limit, offset)
        with self._lock:
            matching = (
                f
                for f in reversed(self._flows.values())
                if (service_id is None or f.service_id == service_id) and (state is None or f.state is state)
            )
            # Two slices: offset + limit may pass sys.maxsize, islice's bound.
            return list(itertools.islice(itertools.islice(matching, offset, None), limit))

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
        until = 0.0
        if hook_requests:  # checked, like everything, before changing anything
            lease = wait_seconds("lease", lease)
            until = time.monotonic() + lease if lease > 0 else 0.0
        with self._lock:
            self._check_versions(flows)  # check everything before changing anything
            if lanes:
                self._move(flows, lanes)
            for flow in flows:
                if flow.version == 1:
                    self._by_key[flow.key] = flow.id
                    for deployment in flow.deployments:
                        self._by_deployment[deployment.id] = flow.id
                        for promotion in deployment.promotions:
                            self._by_promotion[promotion.id] = flow.id
                self._index_successes(flow, self._flows.get(flow.id))
                self._flows[flow.id] = flow
            if timers or cancel or self._timers:
                self._set_timers(flows, timers, cancel)
            if history:
                self._append_history(history)
            if hook_requests:
                outbox = self._outbox
                for request in hook_requests:
                    outbox[request.id] = (request, until)

    def _check_versions(self, flows: Sequence[Flow]) -> None:
        """``ConcurrencyConflict`` unless each flow is new (version 1, its id and key
        free) or the next version of the stored one."""
        for flow in flows:
            stored = self._flows.get(flow.id)
            if flow.version == 1:
                if stored is not None or flow.key in self._by_key:
                    raise ConcurrencyConflict(flow.id, flow.version)
            elif stored is None or stored.version != flow.version - 1:
                raise ConcurrencyConflict(flow.id, flow.version)

    # --- lanes (SPEC §11) ----------------------------------------------------------------

    def _move(self, flows: Sequence[Flow], moves: Sequence[LaneMove]) -> None:
        """Apply the lane moves, or raise ``ConcurrencyConflict`` with nothing changed
        (see ``Lanes.commit``)."""
        occupants = self._lane_outcome(flows, moves)
        for m in moves:
            key = (m.service_id, m.environment)
            line = self._waiting.setdefault(key, {})
            if m.to is LaneStatus.WAITS:
                line.setdefault(m.flow_id, None)
            else:
                line.pop(m.flow_id, None)
            if not line:
                del self._waiting[key]
        for key, occupant in occupants.items():
            if occupant is None:
                self._occupants.pop(key, None)
            else:
                self._occupants[key] = occupant

    def _lane_outcome(self, flows: Sequence[Flow], moves: Sequence[LaneMove]) -> dict[tuple[str, str], str | None]:
        """Each touched lane's occupant once the moves are made, worked out from the
        moves alone (never a copy of a line, which may be long); ``ConcurrencyConflict``
        if a move takes an occupied lane or leaves flows waiting for an empty one."""
        occupants: dict[tuple[str, str], str | None] = {}
        lines: dict[tuple[str, str], int] = {}  # how many will wait
        for m in moves:  # every flow leaves its place first
            key = (m.service_id, m.environment)
            line = self._waiting.get(key, {})
            if key not in occupants:
                occupants[key], lines[key] = self._occupants.get(key), len(line)
            lines[key] -= m.to is not LaneStatus.WAITS and m.flow_id in line
            if m.to is not LaneStatus.OCCUPIES and occupants[key] == m.flow_id:
                occupants[key] = None
        for m in moves:
            key = (m.service_id, m.environment)
            if m.to is LaneStatus.OCCUPIES:
                if occupants[key] not in (None, m.flow_id):
                    raise _lane_conflict(flows, m.flow_id)
                occupants[key] = m.flow_id
            elif m.to is LaneStatus.WAITS:
                lines[key] += m.flow_id not in self._waiting.get(key, {})
        for key, occupant in occupants.items():
            if lines[key] and occupant is None:
                raise _lane_conflict(flows, moves[0].flow_id)
        return occupants

    def lane(self, service_id: str, environment: str, *, limit: int = 4) -> Lane:
        key = (service_id, environment)
        with self._lock:
            line = self._waiting.get(key, {})
            first = tuple(itertools.islice(line, limit))
            return Lane(service_id, environment, self._occupants.get(key), first, len(line) > len(first))

    def lane_place(self, service_id: str, environment: str, flow_id: str) -> int | None:
        with self._lock:
            for place, waiting in enumerate(self._waiting.get((service_id, environment), {}), 1):
                if waiting == flow_id:
                    return place
        return None

    def claim(self, limit: int = 100, *, lease: float = 30.0) -> list[HookRequest]:
        lease = wait_seconds("lease", lease)
        now = time.monotonic()
        claimed: list[HookRequest] = []
        blocked: set[str] = set()  # flows whose next request is leased elsewhere
        with self._lock:
            for request, until in self._outbox.values():
                if len(claimed) >= limit:
                    break
                if until == _DEAD or request.flow_id in blocked:
                    continue
                if until > now:
                    blocked.add(request.flow_id)
                    continue
                claimed.append(request)
            for request in claimed:
                self._outbox[request.id] = (request, now + lease)
        return claimed

    def renew(self, ids: Sequence[str], *, lease: float = 30.0) -> None:
        until = time.monotonic() + wait_seconds("lease", lease)
        with self._lock:
            for request_id in ids:
                entry = self._outbox.get(request_id)
                if entry is not None and request_id not in self._dead and entry[1] < until:
                    self._outbox[request_id] = (entry[0], until)

    def waiting_flows(self, ids: Sequence[str]) -> frozenset[str]:
        with self._lock:
            outbox = self._outbox
            # The usual case, on every trigger of an engine with an emitter: the outbox
            # holds just these (compared in C, as the engine passes a list).
            if len(outbox) == len(ids) and list(outbox) == ids:
                return _NOTHING
            wanted = set(ids)
            waiting: set[str] = set()
            reached: set[str] = set()  # flows whose first wanted request the scan has passed
            # The outbox is in commit order: what precedes a flow's first wanted
            # request, and is not dead, is earlier and pending.
            left = len(wanted)
            for request_id, (request, until) in self._outbox.items():
                if request_id in wanted:
                    reached.add(request.flow_id)
                    left -= 1
                    if not left:
                        break
                elif until != _DEAD and request.flow_id not in reached:
                    waiting.add(request.flow_id)
        return frozenset(waiting & reached)

    def mark_delivered(self, ids: Sequence[str]) -> None:
        with self._lock:
            if not self._dead and not self._attempts:  # the usual case, on every trigger
                pop = self._outbox.pop
                for request_id in ids:
                    pop(request_id, None)
                return
            for request_id in ids:
                if request_id not in self._dead:
                    self._outbox.pop(request_id, None)
                    self._attempts.pop(request_id, None)

    def release(self, ids: Sequence[str], *, delay: float = 0.0) -> None:
        delay = wait_seconds("delay", delay)
        until = time.monotonic() + delay if delay > 0 else 0.0
        with self._lock:
            for request_id in ids:
                entry = self._outbox.get(request_id)
                if entry is not None and request_id not in self._dead:
                    self._outbox[request_id] = (entry[0], until)

    def count_pending(self) -> int:
        with self._lock:
            return len(self._outbox) - len(self._dead)

    def hook_requests(self, flow_id: str) -> list[HookRecord]:
        """Pending and dead ones only: this store forgets a HookRequest once delivered."""
        with self._lock:
            return [self._record(r) for r, _ in self._outbox.values() if r.flow_id == flow_id]

    def _record(self, request: HookRequest) -> HookRecord:
        state = DeliveryState.DEAD if request.id in self._dead else DeliveryState.PENDING
        return HookRecord(request, state, None, tuple(self._attempts.get(request.id, ())))

    def record_attempt(self, request_id: str, attempt: DeliveryAttempt) -> int:
        with self._lock:
            if request_id not in self._outbox:
                return 0  # already delivered and forgotten
            attempts = self._attempts.setdefault(request_id, [])
            attempts.append(attempt)
            return len(attempts)

    def mark_dead(self, ids: Sequence[str]) -> None:
        with self._lock:
            for request_id in ids:
                entry = self._outbox.get(request_id)
                if entry is not None:
                    self._outbox[request_id] = (entry[0], _DEAD)
                    self._dead.add(request_id)

    def requeue(self, ids: Sequence[str]) -> None:
        with self._lock:
            for request_id in ids:
                if request_id in self._dead:
                    self._dead.discard(request_id)
                    self._outbox[request_id] = (self._outbox[request_id][0], 0.0)

    def dead_requests(self, limit: int = 100) -> list[HookRecord]:
        with self._lock:
            dead = [r for r, until in self._outbox.values() if until == _DEAD]
            return [self._record(r) for r in dead[:limit]]

    def disable_endpoint(self, url: str) -> None:
        with self._lock:
            self._disabled.add(url)

    def enable_endpoint(self, url: str) -> None:
        with self._lock:
            self._disabled.discard(url)

    def disabled_endpoints(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._disabled)

    def _set_timers(self, flows: Sequence[Flow], timers: Sequence[Timer], cancel: Sequence[str]) -> None:
        pending = self._timers
        for timer_id in cancel:
            pending.pop(timer_id, None)
        for timer in timers:
            pending[timer.id] = (timer, 0.0)
        finished = {f.id for f in flows if f.state in FINISHED}
        if finished:
            for timer_id in [i for i, (t, _) in pending.items() if t.flow_id in finished]:
                del pending[timer_id]

    def claim_due(self, now: dt.datetime, limit: int = 100, *, lease: float = 30.0) -> list[Timer]:
        until = time.monotonic() + wait_seconds("lease", lease)
        with self._lock:
            leased_now = time.monotonic()
            due = sorted((t for t, held in self._timers.values() if t.due <= now and held <= leased_now), key=_due)
            claimed = due[:limit]
            for timer in claimed:
                self._timers[timer.id] = (timer, until)
        return claimed

    def complete_timers(self, timers: Sequence[Timer]) -> None:
        with self._lock:
            for timer in timers:
                entry = self._timers.get(timer.id)
                if entry is not None and entry[0] == timer:
                    del self._timers[timer.id]

    def release_timers(self, ids: Sequence[str]) -> None:
        with self._lock:
            for timer_id in ids:
                entry = self._timers.get(timer_id)
                if entry is not None:
                    self._timers[timer_id] = (entry[0], 0.0)

    def timers(self, flow_id: str) -> list[Timer]:
        with self._lock:
            return sorted((t for t, _ in self._timers.values() if t.flow_id == flow_id), key=_due)

    def _index_successes(self, flow: Flow, stored: Flow | None) -> None:
        """Record each deployment of ``flow`` saved ``success`` for the first time
        (one unchanged since the stored version is the very same object: skipped)."""
        before = stored.deployments if stored is not None else ()
        for i, deployment in enumerate(flow.deployments):
            if deployment.state is not _SUCCESS or (i < len(before) and before[i] is deployment):
                continue
            key = (flow.id, deployment.environment)
            if key not in self._succeeded:
                self._succeeded.add(key)
                where = (flow.service_id, deployment.environment)
                self._successes.setdefault(where, []).append((flow.artifact, flow.id))

    def last_success(self, service_id: str, environment: str, *, excluding: str | None = None) -> Artifact | None:
        with self._lock:
            for artifact, _ in reversed(self._successes.get((service_id, environment), ())):
                if artifact.id != excluding:
                    return artifact
        return None

    def _append_history(self, entries: Sequence[HistoryEntry]) -> None:
        kept = self._history
        for entry in entries:
            if entry.flow_id in kept:
                kept[entry.flow_id].append(entry)
            else:
                kept[entry.flow_id] = [entry]

    def history(self, flow_id: str) -> list[HistoryEntry]:
        with self._lock:
            return list(self._history.get(flow_id, ()))

    def __len__(self) -> int:
        return len(self._flows)


def _lane_conflict(flows: Sequence[Flow], flow_id: str) -> ConcurrencyConflict:
    """A lost compare-and-set of a lane, named by the flow whose move lost it."""
    for flow in flows:
        if flow.id == flow_id:
            return ConcurrencyConflict(flow.id, flow.version)
    return ConcurrencyConflict(flow_id, 0)


def _due(timer: Timer) -> tuple[dt.datetime, str]:
    return (timer.due, timer.id)


_DEAD: Final = math.inf
_SUCCESS: Final = DeploymentState.SUCCESS
_NOTHING: Final[frozenset[str]] = frozenset()
