"""Input every backend would store differently is refused before any of them sees it:
NUL (PostgreSQL refuses it, SQLite and memory keep it), lone surrogates (no backend
can encode them), NaN and infinities in result details (not JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    Flow,
    FlowEngine,
    PromotionCompleted,
    PromotionPayload,
    PromotionResult,
    ResultStatus,
    Trigger,
    ValidationError,
)
from flowfsm.converter import from_json, structure
from flowfsm.protocols import Repository
from flowfsm.repositories import SQLiteRepository
from flowfsm.testing import SequentialIds, StepClock

from .conftest import api_service


def result(promotion_id: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"promotionId": promotion_id, "resultStatus": "passed", "details": details}


def refused(flow: Flow) -> list[tuple[Callable[[], Trigger], str, str]]:
    """Triggers whose effect would be stored (a flow, HookRequests with their payloads),
    each with unstorable input: how to make it, and the field and message refusing it."""
    d, p = flow.deployments[0].id, flow.deployments[0].promotions[0].id
    nul, surrogate = "contains NUL (\\u0000)", "contains a lone surrogate (not UTF-8, e.g. undecodable bytes)"

    def completed(details: dict[str, Any]) -> Callable[[], Trigger]:
        return lambda: PromotionCompleted(d, p, [PromotionResult(p, ResultStatus.PASSED, details)])

    def parsed(data: dict[str, Any]) -> Callable[[], Trigger]:
        return lambda: structure(data, Trigger)

    artifact = {"group": "com.acme", "name": "api", "version": "2.0\x00"}
    completed_json = {"type": "PromotionCompleted", "deploymentId": d, "promotionId": p}
    return [
        (lambda: ArtifactCreated(Artifact("com.acme", "api", "2.0\x00")), "version", nul),
        (lambda: ArtifactCreated(Artifact("com.acme", "api\udcff", "2.0")), "name", surrogate),
        (completed({"p99": float("nan")}), "details", "has nan, which is not a JSON number (at ['p99'])"),
        (completed({"runs": [float("inf")]}), "details", "has inf, which is not a JSON number (at ['runs'][0])"),
        (completed({"log": "a\x00b"}), "details", f"has a string that {nul} (at ['log'])"),
        (completed({"\ud800": 1}), "details", f"has a key that {surrogate}"),
        (parsed({"type": "ArtifactCreated", "artifact": artifact}), "$.artifact.version", nul),
        (parsed({"type": "DeploymentStarted", "deploymentId": d + "\x00"}), "$.deploymentId", nul),
        (
            parsed(
                {
                    "type": "PromotionCompleted",
                    "deploymentId": d,
                    "promotionId": p,
                    "results": [result(p, {"x": float("-inf")})],
                }
            ),
            "$.results[0].details",
            "has -inf, which is not a JSON number (at ['x'])",
        ),
        (
            lambda: from_json(json.dumps({**completed_json, "results": [result(p, {"log": "\x00"})]}), Trigger),
            "$.results[0].details",
            f"has a string that {nul} (at ['log'])",
        ),
    ]


def test_every_backend_refuses_unstorable_input_alike_and_keeps_its_store(backend: Repository) -> None:
    engine = FlowEngine(Catalog([api_service()]), backend, None, clock=StepClock(), id_factory=SequentialIds())
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0]
    engine.handle(DeploymentStarted(flow.deployments[0].id))
    engine.handle(DeploymentCompleted(flow.deployments[0].id))

    def stored() -> tuple[object, ...]:
        return backend.list_flows(limit=100), backend.count_pending(), backend.hook_requests(flow.id)

    before = stored()
    for make, field, message in refused(flow):
        with pytest.raises(ValidationError) as caught:
            engine.handle(make())
        assert (caught.value.field, caught.value.message) == (field, message)
        assert stored() == before
    d, p = flow.deployments[0].id, flow.deployments[0].promotions[0].id
    fine = {"p99": 120.5, "note": "ünïcödé ✓", "nested": [[{"ok": None}]]}
    passed = engine.handle(PromotionCompleted(d, p, [PromotionResult(p, ResultStatus.PASSED, fine)]))
    (event,) = [r for r in passed.hook_requests if isinstance(r.payload, PromotionPayload)][:1]
    (record,) = [r for r in backend.hook_requests(flow.id) if r.request.id == event.id]
    assert isinstance(record.request.payload, PromotionPayload)
    assert record.request.payload.promotion_result.details == fine  # what is accepted is stored as it was


def test_an_artifact_part_longer_than_the_bound_is_refused_naming_it() -> None:
    """CI's input is bounded where it enters: each part of an artifact at most
    ``MAX_ARTIFACT_PART`` characters (it is stored, indexed and sent in every payload)."""
    from flowfsm.model import MAX_ARTIFACT_PART

    assert Artifact("g" * MAX_ARTIFACT_PART, "n", "v").group == "g" * MAX_ARTIFACT_PART
    for field in ("group", "name", "version"):
        parts = {"group": "com.acme", "name": "api", "version": "1.0", field: "x" * (MAX_ARTIFACT_PART + 1)}
        with pytest.raises(ValidationError) as caught:
            Artifact(**parts)
        assert caught.value.field == field
        assert str(caught.value) == f"{field}: is {MAX_ARTIFACT_PART + 1} characters long; at most 256 are allowed"
    huge = {"type": "ArtifactCreated", "artifact": {"group": "g", "name": "n", "version": "v" * 2**20}}
    with pytest.raises(ValidationError) as caught:
        from_json(json.dumps(huge), Trigger)
    assert "version" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_an_artifact_stored_before_the_bound_still_reads(tmp_path: Path) -> None:
    """A store written before artifacts were bounded keeps working: its rows are the
    backend's own, read without the checks input gets."""
    import sqlite3

    from flowfsm.model import MAX_ARTIFACT_PART

    path, long = tmp_path / "flows.db", "v" * (MAX_ARTIFACT_PART + 10)
    engine = FlowEngine(Catalog([api_service()]), SQLiteRepository(path), None)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0]
    engine.repository.close()  # type: ignore[attr-defined]  # a SQLiteRepository
    db = sqlite3.connect(path)
    body = db.execute("SELECT body FROM flows WHERE id = ?", (flow.id,)).fetchone()[0]
    db.execute("UPDATE flows SET body = ? WHERE id = ?", (body.replace('"1.0"', json.dumps(long), 1), flow.id))
    db.commit()
    db.close()
    with SQLiteRepository(path) as repository:
        assert repository.get(flow.id).artifact.version == long
        engine = FlowEngine(Catalog([api_service()]), repository, None)
        started = engine.handle(DeploymentStarted(flow.deployments[0].id)).flows[0]
        assert started.artifact.version == long
