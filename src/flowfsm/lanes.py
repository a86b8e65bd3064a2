"""Environment concurrency (SPEC §11): who occupies each lane, and who waits for it.

A *lane* is one environment of one service whose ``concurrency`` is ``queue`` or
``newest-wins``. Whether a flow occupies a lane, waits for it, or neither is
defined once, here, from the flow's states (``lane_status``): a flow occupies the
lane of its current deployment from that deployment's announcement
(``deployment-created``) until it succeeds or fails, or the flow finishes; it
waits while that deployment is ``queued``. Everything else follows from it: the
``LANE_TAKEN`` guard (``flowfsm.machines``) reads the lanes as the unit of work
leaves them (``LaneBook``); the engine frees lanes and admits the next waiting
flow; and the repository stores each change (``LaneMove``) in the commit of the
flows it follows from, with a compare-and-set (the ``Lanes`` role,
``flowfsm.protocols``).

Arrival order is the order in which flows started waiting for the lane (the
repository numbers them as it stores them), so it survives restarts; a flow that
leaves the queue without taking the lane (a pause, a freeze) and comes back waits
at the end again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from flowfsm.model import (
    FINISHED,
    Concurrency,
    Deployment,
    DeploymentState,
    FlowState,
    Pause,
    Service,
    attrs_repr,
)

if TYPE_CHECKING:
    from flowfsm.protocols import Lanes
    from flowfsm.work import FlowDraft, Work

__all__ = ["IN_LINE", "Lane", "LaneBook", "LaneMove", "LaneStatus", "lane_moves", "lane_status"]


class LaneStatus(enum.Enum):
    """Where a flow stands in the lane of one of its environments."""

    OCCUPIES = "occupies"
    """Its deployment there is announced, started or completed (not yet decided)."""
    WAITS = "waits"
    """Its deployment there is ``queued``."""


@attrs.frozen(weakref_slot=False, repr=False)
class Lane:
    """A lane as stored: its occupant (a flow id, or None) and the first flows
    waiting for it, in arrival order (``more``: others wait behind them)."""

    __repr__ = attrs_repr

    service_id: str
    environment: str
    occupant: str | None = None
    waiting: tuple[str, ...] = ()
    more: bool = False


@attrs.frozen(weakref_slot=False, repr=False)
class LaneMove:
    """A change of one flow's place in one lane, for ``FlowStore.commit``: from now on
    it occupies the lane, waits for it (at the end of the line), or neither (None)."""

    __repr__ = attrs_repr

    service_id: str
    environment: str
    flow_id: str
    to: LaneStatus | None


_QUEUED: Final = DeploymentState.QUEUED
_NOT_STARTED: Final = DeploymentState.NOT_STARTED

IN_LINE: Final = frozenset({_QUEUED, DeploymentState.HELD})
"""A deployment in line for its environment: queued, or held by a freeze window (which
lets it go, to take the environment or join the queue). A ``newest-wins`` flow whose
deployment comes into line supersedes the older flows (``FlowEngine._newest_wins``);
awaiting approval is not in line: a request may be refused."""
_UNDER_WAY: Final = frozenset({DeploymentState.STARTED, DeploymentState.COMPLETED})
_SUCCESS: Final = DeploymentState.SUCCESS
_OCCUPIES: Final = LaneStatus.OCCUPIES
_WAITS: Final = LaneStatus.WAITS


def lane_status(
    state: FlowState, pause: Pause | None, deployments: Sequence[Deployment], index: int
) -> LaneStatus | None:
    """The flow's place in the lane of its deployment ``index``: the one definition
    of occupancy. An announcement a pause holds back has not happened yet."""
    if state in FINISHED:
        return None
    deployment = deployments[index]
    deployment_state = deployment.state
    if deployment_state is _QUEUED:
        return _WAITS
    if deployment_state in _UNDER_WAY:
        return _OCCUPIES
    if deployment_state is not _NOT_STARTED or (pause is not None and pause.held):
        return None
    for i in range(index):  # announced only once every deployment before it succeeded
        if deployments[i].state is not _SUCCESS:
            return None
    return _OCCUPIES


def _status(flow: FlowDraft, index: int) -> LaneStatus | None:
    return lane_status(flow.state, flow.pause, flow.deployments, index)


def _loaded_status(flow: FlowDraft, index: int) -> LaneStatus | None:
    loaded = flow.loaded
    return lane_status(loaded.state, loaded.pause, loaded.deployments, index)


def lane_moves(work: Work, created: frozenset[str] = frozenset()) -> list[LaneMove]:
    """What the unit of work changed in the lanes: each changed flow's place in each
    lane of its service, where it differs from the stored one (a flow in
    ``created`` had none)."""
    moves: list[LaneMove] = []
    book = work.lanes
    for flow in work.flows.values():
        new = flow.id in created
        if not (new or flow.changed):
            continue
        service = flow.service
        if service.concurrency is _PARALLEL:  # no lane, but one a catalog left behind (``left``)
            if book is not None and not new:
                moves += _leaving(book, flow)
            continue
        for index, deployment in enumerate(flow.deployments):
            now = _status(flow, index)
            if now is not (None if new else _loaded_status(flow, index)):
                moves.append(LaneMove(service.id, deployment.environment, flow.id, now))
    return moves


def _leaving(book: LaneBook, flow: FlowDraft) -> Iterator[LaneMove]:
    """A flow of a ``parallel`` service leaving its place in a lane the work read
    busy (the service ran a queue once): it takes no place in any lane again."""
    service_id = flow.service.id
    for index, deployment in enumerate(flow.deployments):
        before = _loaded_status(flow, index)
        if before is not None and _status(flow, index) is not before and book.busy(service_id, deployment.environment):
            yield LaneMove(service_id, deployment.environment, flow.id, None)


def freed(work: Work) -> list[tuple[Service, str]]:
    """The lanes (service, environment) a flow of the work stopped occupying (for a
    ``parallel`` service, one a catalog may have left behind)."""
    lanes: list[tuple[Service, str]] = []
    for flow in work.flows.values():
        service = flow.service
        if not flow.changed:
            continue
        for index, deployment in enumerate(flow.deployments):
            if _loaded_status(flow, index) is _OCCUPIES and _status(flow, index) is not _OCCUPIES:
                lane = (service, deployment.environment)
                if lane not in lanes:
                    lanes.append(lane)
    return lanes


_PARALLEL: Final = Concurrency.PARALLEL
_FIRST_PAGE: Final = 4


class LaneBook:
    """The lanes one unit of work reads, as it leaves them: each as stored (read
    once, then more of its line as needed), overlaid with the places of the flows
    the work holds (``lane_status`` of their latest drafts)."""

    __slots__ = ("_stored", "started_waiting", "store", "superseded", "work")

    def __init__(self, store: Lanes, work: Work) -> None:
        self.store = store
        self.work = work
        self._stored: dict[tuple[str, str], Lane] = {}
        self.started_waiting: list[tuple[FlowDraft, int]] = []
        """Deployments the work put in line (``IN_LINE``), in order (``newest-wins`` acts on each)."""
        self.superseded: dict[str, str] = {}
        """The flows a newer one superseded in the work, each with its reason (for its history)."""

    def stored(self, service_id: str, environment: str, at_least: int = _FIRST_PAGE) -> Lane:
        """The lane as stored, listing at least ``at_least`` waiting flows if as many wait."""
        key = (service_id, environment)
        lane = self._stored.get(key)
        if lane is None or (lane.more and len(lane.waiting) < at_least):
            limit = max(at_least, 2 * len(lane.waiting) if lane is not None else 0, _FIRST_PAGE)
            lane = self.store.lane(service_id, environment, limit=limit)
            self._stored[key] = lane
        return lane

    def busy(self, service_id: str, environment: str) -> bool:
        """Whether the work read the lane, and found a flow occupying it or waiting."""
        lane = self._stored.get((service_id, environment))
        return lane is not None and (lane.occupant is not None or bool(lane.waiting))

    def _line(self, service_id: str, environment: str) -> Iterator[str]:
        """The stored line, in arrival order, read a page at a time as it is walked."""
        seen = 0
        while True:
            lane = self.stored(service_id, environment, seen + 1)
            yield from lane.waiting[seen:]
            seen = len(lane.waiting)
            if not lane.more:
                return

    def _place(self, flow_id: str, service_id: str, environment: str) -> LaneStatus | bool | None:
        """The flow's place as the work leaves it, or False if the work does not hold it."""
        flow = self.work.flows.get(flow_id)
        if flow is None or flow.service.id != service_id:
            return False
        index = _index(flow, environment)
        return None if index is None else _status(flow, index)

    def occupant(self, service_id: str, environment: str, other_than: str | None = None) -> str | None:
        """The flow occupying the lane as the work leaves it (other than ``other_than``)."""
        stored = self.stored(service_id, environment).occupant
        if (
            stored is not None
            and stored != other_than
            and self._place(stored, service_id, environment) in _STILL_OCCUPIES
        ):
            return stored
        for flow_id, flow in self.work.flows.items():
            if flow_id != other_than and flow.service.id == service_id:
                index = _index(flow, environment)
                if index is not None and _status(flow, index) is _OCCUPIES:
                    return flow_id
        return None

    def waiting(self, service_id: str, environment: str) -> Iterator[str]:
        """The flows waiting for the lane as the work leaves it, in arrival order: the
        stored line (less those the work took out of it), then those the work queued."""
        for flow_id in self._line(service_id, environment):
            if self._place(flow_id, service_id, environment) in _STILL_WAITS:
                yield flow_id
        for flow, index in self.started_waiting:
            if (
                flow.service.id == service_id
                and flow.deployments[index].environment == environment
                and _loaded_status(flow, index) is not _WAITS
                and _status(flow, index) is _WAITS
            ):
                yield flow.id

    def ahead(self, flow: FlowDraft, index: int) -> bool:
        """Whether a flow waits for the lane of the flow's deployment ``index`` ahead
        of it: anyone else still waiting; for a flow of the stored line (its turn
        came), only those before it there."""
        service_id, environment = flow.service.id, flow.deployments[index].environment
        if _loaded_status(flow, index) is _WAITS:
            for flow_id in self._line(service_id, environment):
                if flow_id == flow.id:
                    return False
                if self._place(flow_id, service_id, environment) in _STILL_WAITS:
                    return True
            return False
        return any(flow_id != flow.id for flow_id in self.waiting(service_id, environment))


_STILL_OCCUPIES: Final = (False, _OCCUPIES)
"""A stored occupant still occupies: the work does not hold it (False), or holds it there."""
_STILL_WAITS: Final = (False, _WAITS)


def _index(flow: FlowDraft, environment: str) -> int | None:
    for i, deployment in enumerate(flow.deployments):
        if deployment.environment == environment:
            return i
    return None
