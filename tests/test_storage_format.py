"""The stored form of a flow carries its format; bodies of every earlier format load."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import attrs
import pytest

from flowfsm import Artifact, Deployment, DeploymentState, Flow, FlowState, Promotion, PromotionState, RepositoryError
from flowfsm.model import GATED
from flowfsm.repositories import SQLiteRepository
from flowfsm.repositories._common import BODY_FORMAT, flow_body, flow_from_body
from flowfsm.testing import sample_flow

# A body as flowfsm 0.1 wrote it (format 1: no format number), byte for byte.
FORMAT_1 = (
    '["flow-7-svc","com.acme","api","1.7.0","svc","inProgress","2026-01-01T00:00:07+00:00",'
    '"2026-01-01T00:00:09+00:00",[["flow-7-svc.dev","dev","completed",[["flow-7-svc.dev.smoke","smoke","success"]]],'
    '["flow-7-svc.prod","prod","notStarted",[["flow-7-svc.prod.smoke","smoke","pending"]]]]]'
)
EXPECTED = Flow(
    "flow-7-svc",
    Artifact("com.acme", "api", "1.7.0"),
    "svc",
    [
        Deployment(
            "flow-7-svc.dev",
            "dev",
            [Promotion("flow-7-svc.dev.smoke", "smoke", PromotionState.SUCCESS)],
            DeploymentState.COMPLETED,
        ),
        Deployment("flow-7-svc.prod", "prod", [Promotion("flow-7-svc.prod.smoke", "smoke")]),
    ],
    FlowState.IN_PROGRESS,
    4,
    dt.datetime(2026, 1, 1, 0, 0, 7, tzinfo=dt.UTC),
    dt.datetime(2026, 1, 1, 0, 0, 9, tzinfo=dt.UTC),
)


def test_a_body_of_format_1_loads() -> None:
    assert flow_from_body(FORMAT_1, 4) == EXPECTED


def test_bodies_are_written_with_the_current_format_and_read_back() -> None:
    body = flow_body(EXPECTED)
    assert body.startswith("[2,")  # a flow nobody steered: format 2, which earlier flowfsm reads
    assert flow_from_body(body, 4) == EXPECTED
    assert body[len("[2,") :] == FORMAT_1[1:]  # format 2 adds the number, nothing else
    retried = attrs.evolve(EXPECTED, deployments=[attrs.evolve(EXPECTED.deployments[0], attempt=2)])
    steered = flow_body(retried)
    assert steered.startswith("[3,")  # format 3: attempts (and pauses, rollbacks)
    assert flow_from_body(steered, 4) == retried
    approved = attrs.evolve(EXPECTED.deployments[0], approvals=("alice", "bob"), override="carol")
    gated = attrs.evolve(EXPECTED, deployments=[approved])
    body = flow_body(gated)
    assert body.startswith(f"[{BODY_FORMAT},")  # format 4: a deployment's approvals and freeze override
    assert flow_from_body(body, 4) == gated
    assert flow_from_body(flow_body(retried), 4).deployments[0].approvals == ()


@pytest.mark.parametrize("state", [s for s in DeploymentState if s in GATED])
def test_a_deployment_waiting_at_a_gate_is_written_in_format_4(state: DeploymentState) -> None:
    """A flowfsm before the gates knows no ``awaitingApproval``: it must meet format 4
    and refuse the flow cleanly (a newer format), not fail on an unknown state."""
    waiting = attrs.evolve(
        EXPECTED, deployments=[EXPECTED.deployments[0], attrs.evolve(EXPECTED.deployments[1], state=state)]
    )
    body = flow_body(waiting)
    assert body.startswith(f"[{BODY_FORMAT},")
    assert flow_from_body(body, 4) == waiting


def test_a_body_of_a_newer_format_is_refused() -> None:
    with pytest.raises(RepositoryError, match=f"format {BODY_FORMAT + 1}; this flowfsm reads up to {BODY_FORMAT}"):
        flow_from_body(f"[{BODY_FORMAT + 1}," + FORMAT_1[1:], 4)


def test_a_sqlite_store_written_in_format_1_is_read_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    flow = sample_flow(7)
    with SQLiteRepository(path) as repository:
        repository.commit([flow])
    db = sqlite3.connect(path)
    db.execute("UPDATE flows SET body = ?, version = 4 WHERE id = ?", (FORMAT_1, flow.id))
    db.commit()
    db.close()
    with SQLiteRepository(path) as repository:
        assert repository.get(flow.id) == EXPECTED
        changed = Flow(
            EXPECTED.id, EXPECTED.artifact, "svc", EXPECTED.deployments, FlowState.FAILED, 5, EXPECTED.created_at
        )
        repository.commit([changed])
        assert repository.get(flow.id) == changed
    db = sqlite3.connect(path)
    (body,) = db.execute("SELECT body FROM flows WHERE id = ?", (flow.id,)).fetchone()
    db.close()
    assert body.startswith("[2,")  # rewritten in the current format for a flow nobody steered
