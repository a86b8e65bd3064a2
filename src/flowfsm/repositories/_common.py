"""What the repository backends share: page checks, the page query, and the
stored form of a flow."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any, Final

from flowfsm.errors import FlowFSMError, RepositoryError, ValidationError
from flowfsm.model import (
    Artifact,
    DeploymentState,
    Flow,
    FlowState,
    PromotionState,
    make_deployment,
    make_flow,
    make_promotion,
)

__all__ = ["PENDING", "check_page", "driver_errors", "flow_body", "flow_from_body", "page_query"]

PENDING: Final = "delivered_at IS NULL AND dead_at IS NULL"
"""The SQL condition of an outbox row that still waits for delivery."""


@contextlib.contextmanager
def driver_errors(backend: str, what: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """A driver's ``errors`` become ``RepositoryError`` (the driver's error as the
    cause, its message on one line); flowfsm's own errors pass through."""
    try:
        yield
    except FlowFSMError:
        raise
    except errors as e:
        message = " ".join(str(e).split()) or type(e).__name__
        raise RepositoryError(backend, f"{what}: {message}") from e


def check_page(limit: int, offset: int) -> None:
    if limit < 1:
        raise ValidationError("limit", f"must be at least 1, got {limit}")
    if offset < 0:
        raise ValidationError("offset", f"must not be negative, got {offset}")


def page_query(
    service_id: str | None, state: FlowState | None, limit: int, offset: int, mark: str
) -> tuple[str, list[Any]]:
    """The SQL and arguments of a ``list_flows`` page; ``mark`` is the driver's
    placeholder (``?`` or ``%s``). Shared by the SQL backends."""
    check_page(limit, offset)
    where, args = [], []
    if service_id is not None:
        where.append(f"service_id = {mark}")
        args.append(service_id)
    if state is not None:
        where.append(f"state = {mark}")
        args.append(state.value)
    sql = "SELECT body, version FROM flows"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + f" ORDER BY seq DESC LIMIT {mark} OFFSET {mark}", [*args, limit, offset]


# A stored flow's body: compact positional JSON rather than the converter's keyed
# form, since loading and saving the aggregate is most of a trigger's own work:
# [id, group, name, version, service id, state, created, updated,
#  [[deployment id, environment, state, [[promotion id, name, state], ...]], ...]]
_FLOW_STATES: Final = {s.value: s for s in FlowState}
_DEPLOYMENT_STATES: Final = {s.value: s for s in DeploymentState}
_PROMOTION_STATES: Final = {s.value: s for s in PromotionState}
_dumps: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def flow_body(flow: Flow) -> str:
    """The JSON a SQL backend stores for ``flow`` (its version is a column)."""
    artifact, created, updated = flow.artifact, flow.created_at, flow.updated_at
    return _dumps(
        [
            flow.id,
            artifact.group,
            artifact.name,
            artifact.version,
            flow.service_id,
            flow.state.value,
            created.isoformat() if created else None,
            updated.isoformat() if updated else None,
            [
                [d.id, d.environment, d.state.value, [[p.id, p.name, p.state.value] for p in d.promotions]]
                for d in flow.deployments
            ],
        ]
    )


def flow_from_body(body: str | list[Any], version: int) -> Flow:
    """The flow ``flow_body`` stored (PostgreSQL hands back ``jsonb`` already parsed)."""
    data = json.loads(body) if isinstance(body, str) else body
    flow_id, group, name, artifact_version, service_id, state, created, updated, deployments = data
    promotion_states = _PROMOTION_STATES
    return make_flow(
        flow_id,
        Artifact(group, name, artifact_version),
        service_id,
        tuple(
            [
                make_deployment(
                    d_id,
                    environment,
                    tuple([make_promotion(p_id, p_name, promotion_states[p]) for p_id, p_name, p in promotions]),
                    _DEPLOYMENT_STATES[d_state],
                )
                for d_id, environment, d_state, promotions in deployments
            ]
        ),
        _FLOW_STATES[state],
        version,
        dt.datetime.fromisoformat(created) if created else None,
        dt.datetime.fromisoformat(updated) if updated else None,
    )
