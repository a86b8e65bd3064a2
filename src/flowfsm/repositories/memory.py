"""``InMemoryRepository``: the reference backend, for tests and short-lived runs.

It keeps its own copies of flows, so what callers do to a returned flow changes
nothing stored, and it holds only pending HookRequests: a delivered one is
forgotten. One lock makes it safe to share between threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from flowfsm.errors import ConcurrencyConflict, UnknownDeployment, UnknownFlow, ValidationError
from flowfsm.model import Flow, FlowState, HookRequest

__all__ = ["InMemoryRepository"]


class InMemoryRepository:
    """A ``Repository`` held in dicts."""

    def __init__(self) -> None:
        self._flows: dict[str, Flow] = {}
        self._by_deployment: dict[str, str] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        # Pending HookRequests in commit order, each with the end of its lease.
        self._outbox: dict[str, tuple[HookRequest, float]] = {}
        self._lock = threading.Lock()

    def get(self, flow_id: str) -> Flow:
        with self._lock:
            flow = self._flows.get(flow_id)
            if flow is None:
                raise UnknownFlow(flow_id)
            return flow.copy()

    def find_by_deployment(self, deployment_id: str) -> Flow:
        with self._lock:
            flow_id = self._by_deployment.get(deployment_id)
            if flow_id is None:
                raise UnknownDeployment(deployment_id)
            return self._flows[flow_id].copy()

    def find_by_key(self, artifact_id: str, service_id: str) -> Flow | None:
        with self._lock:
            flow_id = self._by_key.get((artifact_id, service_id))
            return None if flow_id is None else self._flows[flow_id].copy()

    def list_flows(
        self,
        *,
        service_id: str | None = None,
        state: FlowState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Flow]:
        _check_page(limit, offset)
        with self._lock:
            matching = (
                f
                for f in reversed(self._flows.values())
                if (service_id is None or f.service_id == service_id) and (state is None or f.state is state)
            )
            page: list[Flow] = []
            for i, flow in enumerate(matching):
                if i >= offset + limit:
                    break
                if i >= offset:
                    page.append(flow.copy())
            return page

    def commit(
        self, flows: Sequence[Flow], hook_requests: Sequence[HookRequest] = (), *, lease: float = 0.0
    ) -> None:
        with self._lock:
            for flow in flows:  # check everything before changing anything
                stored = self._flows.get(flow.id)
                if flow.version == 1:
                    if stored is not None or flow.key in self._by_key:
                        raise ConcurrencyConflict(flow.id, flow.version)
                elif stored is None or stored.version != flow.version - 1:
                    raise ConcurrencyConflict(flow.id, flow.version)
            for flow in flows:
                if flow.version == 1:
                    self._by_key[flow.key] = flow.id
                    for deployment in flow.deployments:
                        self._by_deployment[deployment.id] = flow.id
                self._flows[flow.id] = flow.copy()
            until = time.monotonic() + lease if lease > 0 else 0.0
            for request in hook_requests:
                self._outbox[request.id] = (request, until)

    def claim(self, limit: int = 100, *, lease: float = 30.0) -> list[HookRequest]:
        now = time.monotonic()
        claimed: list[HookRequest] = []
        blocked: set[str] = set()  # flows whose next request is leased elsewhere
        with self._lock:
            for request, until in self._outbox.values():
                if len(claimed) >= limit:
                    break
                if request.flow_id in blocked:
                    continue
                if until > now:
                    blocked.add(request.flow_id)
                    continue
                claimed.append(request)
            for request in claimed:
                self._outbox[request.id] = (request, now + lease)
        return claimed

    def mark_delivered(self, ids: Sequence[str]) -> None:
        with self._lock:
            for request_id in ids:
                self._outbox.pop(request_id, None)

    def release(self, ids: Sequence[str]) -> None:
        with self._lock:
            for request_id in ids:
                entry = self._outbox.get(request_id)
                if entry is not None:
                    self._outbox[request_id] = (entry[0], 0.0)

    def count_pending(self) -> int:
        with self._lock:
            return len(self._outbox)

    def __len__(self) -> int:
        return len(self._flows)


def _check_page(limit: int, offset: int) -> None:
    if limit < 1:
        raise ValidationError("limit", f"must be at least 1, got {limit}")
    if offset < 0:
        raise ValidationError("offset", f"must not be negative, got {offset}")
