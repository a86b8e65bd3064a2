"""History (SPEC §9): what each trigger did, stored with the change, in every backend;
the schema migration that adds it; the command line that shows it."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import uuid
from pathlib import Path

import attrs
import pytest

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    DeploymentState,
    Environment,
    FlowEngine,
    HistoryEntry,
    HookEvent,
    Pipeline,
    PromotionCompleted,
    PromotionResult,
    ResultStatus,
    Service,
    StateChange,
    Timeouts,
    TimerFired,
    TimerKind,
    Trigger,
    Webhook,
)
from flowfsm.converter import structure, unstructure
from flowfsm.repositories import InMemoryRepository, PostgresRepository, SQLiteRepository
from flowfsm.repositories._common import flow_body
from flowfsm.testing import FakeClock, SequentialIds, sample_flow

from .test_cli import Cli
from .test_repositories import drop_schemas

DATA = Path(__file__).parent / "data"


def v4_service() -> Service:
    """The catalog ``tests/data/make_store_v4.txt`` wrote ``store-v4.sqlite`` with."""
    hook = Webhook("wh", HookEvent.DEPLOYMENT_CREATED, [Action("notify", url="http://127.0.0.1/hook")])
    timeouts = Timeouts(deploy="30m")
    environments = [Environment("dev", ["smoke"], timeouts=timeouts), Environment("prod", ["smoke"], timeouts=timeouts)]
    return Service("svc", ["g:a"], Pipeline("p", environments), webhooks=[hook])


def test_an_entry_round_trips_through_json_with_camel_case_keys() -> None:
    flow = sample_flow()
    change = StateChange("deployment", flow.deployments[0].id, None, "notStarted")
    entry = HistoryEntry(flow.id, 1, FakeClock()(), {"type": "ArtifactCreated"}, "ci", None, [change], ["hr-1"])
    data = unstructure(entry)
    assert data["changes"] == [{"entity": "deployment", "id": flow.deployments[0].id, "from": None, "to": "notStarted"}]
    assert set(data) == {"flowId", "seq", "at", "trigger", "actor", "reason", "changes", "hookRequestIds"}
    assert structure(data, HistoryEntry) == entry


def test_an_entrys_trigger_is_read_only() -> None:
    entry = HistoryEntry("f", 1, FakeClock()(), {"type": "X", "n": [1]}, None, None, [], [])
    with pytest.raises(TypeError):
        entry.trigger["n"].append(2)
    with pytest.raises(TypeError):
        entry.trigger["type"] = "Y"  # type: ignore[index]  # what the test is about
    assert entry.trigger == {"type": "X", "n": [1]}


def test_a_timer_is_recorded_with_actor_flowfsm() -> None:
    clock = FakeClock()
    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([v4_service()]), repository, None, clock=clock)
    (flow,) = engine.handle(ArtifactCreated(Artifact("g", "a", "1"))).flows
    dev = flow.deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    clock.advance(minutes=31)
    engine.handle(TimerFired(dev.id, TimerKind.DEPLOY))
    timed_out = repository.history(flow.id)[-1]
    assert (timed_out.seq, timed_out.actor, timed_out.trigger["type"]) == (3, "flowfsm", "TimerFired")
    assert StateChange("deployment", dev.id, "started", "failed") in timed_out.changes
    assert timed_out.changes[-1] == StateChange("flow", flow.id, "inProgress", "failed")


def test_one_entry_per_flow_an_artifact_creates_and_none_when_it_is_a_duplicate() -> None:
    services = [v4_service(), attrs.evolve(v4_service(), id="svc-2")]
    repository = InMemoryRepository()
    engine = FlowEngine(Catalog(services), repository, None, id_factory=SequentialIds())
    outcome = engine.handle(ArtifactCreated(Artifact("g", "a", "1")))
    assert [e.flow_id for e in outcome.history] == [f.id for f in outcome.flows]
    assert outcome.history[0].trigger is outcome.history[1].trigger  # built once per trigger
    for flow in outcome.flows:
        (entry,) = repository.history(flow.id)
        assert entry.hook_request_ids == tuple(r.request.id for r in repository.hook_requests(flow.id))
    again = engine.handle(ArtifactCreated(Artifact("g", "a", "1")))
    assert again.duplicate
    assert again.history == ()
    assert [len(repository.history(f.id)) for f in outcome.flows] == [1, 1]


# --- the schema migration: a store written before history -------------------------------------


def test_a_sqlite_store_written_by_schema_4_opens_and_records_history(tmp_path: Path) -> None:
    """``store-v4.sqlite`` was written by the release before history (schema 4):
    its flows, outbox and timers read as before, and what happens next is recorded."""
    path = tmp_path / "store.sqlite"
    shutil.copy(DATA / "store-v4.sqlite", path)
    with SQLiteRepository(path) as repository:
        (waiting, done) = repository.list_flows()
        assert [d.state.value for d in waiting.deployments] == ["success", "started"]
        assert done.state.value == "success"
        assert [t.kind for t in repository.timers(waiting.id)] == [TimerKind.DEPLOY]
        assert repository.count_pending() == 4
        assert repository.history(waiting.id) == []
        # The rollback index is filled from the stored flows, the newer flow last.
        assert repository.last_success("svc", "dev") == Artifact("g", "a", "2")
        assert repository.last_success("svc", "dev", excluding="g:a:2") == Artifact("g", "a", "1")
        assert repository.last_success("svc", "prod") == Artifact("g", "a", "1")
        assert repository.last_success("svc", "prod", excluding="g:a:1") is None
        engine = FlowEngine(Catalog([v4_service()]), repository, None)
        prod = waiting.deployments[1]
        engine.handle(DeploymentCompleted(prod.id))
        (entry,) = repository.history(waiting.id)
        assert entry.seq == waiting.version + 1  # a flow's entries begin where the upgrade found it
        assert entry.changes == (StateChange("deployment", prod.id, "started", "completed"),)
        (smoke,) = prod.promotions
        engine.handle(PromotionCompleted(prod.id, smoke.id, [PromotionResult(smoke.id, ResultStatus.PASSED)]))
        assert [e.seq for e in repository.history(waiting.id)] == [waiting.version + 1, waiting.version + 2]
        assert repository.last_success("svc", "prod") == Artifact("g", "a", "2")
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM flowfsm_meta").fetchone()[0] == "6"
    db.close()


def test_a_postgres_store_of_schema_4_opens_and_records_history(postgres_dsn: str) -> None:
    import psycopg

    from flowfsm.repositories.postgres import MIGRATIONS, SCHEMA_VERSION

    schema = f"m_{uuid.uuid4().hex[:12]}"
    flow = sample_flow()
    dev, prod = flow.deployments
    flow = attrs.evolve(flow, deployments=[attrs.evolve(dev, state=DeploymentState.SUCCESS), prod])
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        conn.execute("CREATE TABLE flowfsm_meta (key text PRIMARY KEY, value text NOT NULL)")
        for step in MIGRATIONS[:4]:
            for statement in step:
                conn.execute(statement)
        conn.execute("INSERT INTO flowfsm_meta VALUES ('schema_version', '4')")
        conn.execute(
            "INSERT INTO flows (id, artifact_id, service_id, state, version, body) VALUES (%s, %s, %s, %s, 1, %s)",
            (flow.id, flow.artifact.id, flow.service_id, flow.state.value, flow_body(flow)),
        )
        for d in flow.deployments:
            conn.execute("INSERT INTO deployments (id, flow_id) VALUES (%s, %s)", (d.id, flow.id))
    try:
        with PostgresRepository(postgres_dsn, schema=schema) as repository:
            assert repository.get(flow.id) == flow
            assert repository.history(flow.id) == []
            assert repository.last_success(flow.service_id, "dev") == flow.artifact  # filled from the stored flows
            assert repository.last_success(flow.service_id, "prod") is None
            entry = HistoryEntry(flow.id, 2, FakeClock()(), {"type": "DeploymentStarted"}, None, None, [], [])
            repository.commit([attrs.evolve(flow, version=2)], history=[entry])
            assert repository.history(flow.id) == [entry]
        with psycopg.connect(postgres_dsn, options=f"-c search_path={schema}") as conn:
            row = conn.execute("SELECT value FROM flowfsm_meta").fetchone()
            assert row is not None
            assert row[0] == str(SCHEMA_VERSION) == "6"
    finally:
        drop_schemas(postgres_dsn, [schema])


# --- the command line ----------------------------------------------------------------------


def test_flowfsm_history_and_show_print_the_history(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.json("artifact-created", "com.acme:api:4.0.0")["flows"][0]
    dev = flow["deployments"][0]
    cli.json("deployment-started", dev["id"])
    cli.json("deployment-started", dev["id"])  # a duplicate: no entry
    entries = cli.json("history", flow["id"])
    assert [(e["seq"], e["trigger"]["type"]) for e in entries] == [(1, "ArtifactCreated"), (2, "DeploymentStarted")]
    assert entries[1]["changes"] == [{"entity": "deployment", "id": dev["id"], "from": "notStarted", "to": "started"}]
    assert cli.json("show", flow["id"])["history"] == entries
    text = cli("history", flow["id"]).stdout
    assert re.search(r"1 .* ArtifactCreated\n\s+promotion dev/smoke: new, pending\n", text)
    assert re.search(r"2 .* DeploymentStarted\n\s+deployment dev: notStarted → started\n", text)
    assert "flow: new, inProgress" in text
    shown = cli("show", flow["id"]).stdout
    assert shown.index("deployment-created") < shown.index("history") < shown.index("DeploymentStarted")


def test_flowfsm_history_of_an_unknown_flow_is_one_line(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.json("artifact-created", "com.acme:api:4.0.0")
    done = cli("history", "nope")
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "error: no flow, deployment or artifact 'nope' in the store\n",
    )


def test_a_trigger_subclass_is_recorded_under_its_own_name() -> None:
    class Started(DeploymentStarted):
        """A trigger class of the embedding application."""

    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([v4_service()]), repository, None)
    (flow,) = engine.handle(ArtifactCreated(Artifact("g", "a", "1"))).flows
    engine.handle(Started(flow.deployments[0].id, actor="ops"))
    entry = repository.history(flow.id)[-1]
    expected = {"type": "Started", "deploymentId": flow.deployments[0].id, "actor": "ops", "reason": None}
    assert dict(entry.trigger) == expected
    assert entry.actor == "ops"


def test_the_rollback_index_is_filled_from_flow_bodies_of_every_format(tmp_path: Path) -> None:
    """Bodies of format 1 (no leading format number) and 2 are both read by the
    migration that fills the index."""
    from flowfsm.repositories.sqlite import MIGRATIONS

    path = tmp_path / "v4.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE flowfsm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for step in MIGRATIONS[:4]:
        for statement in step:
            db.execute(statement)
    db.execute("INSERT INTO flowfsm_meta VALUES ('schema_version', '4')")
    old, new = sample_flow(1), sample_flow(2)
    for flow, drop_format in ((old, True), (new, False)):
        dev, prod = flow.deployments
        done = attrs.evolve(flow, deployments=[attrs.evolve(dev, state=DeploymentState.SUCCESS), prod])
        body = json.loads(flow_body(done))
        db.execute(
            "INSERT INTO flows (id, artifact_id, service_id, state, version, body) VALUES (?, ?, ?, ?, 1, ?)",
            (
                flow.id,
                flow.artifact.id,
                flow.service_id,
                flow.state.value,
                json.dumps(body[1:] if drop_format else body),
            ),
        )
    db.commit()
    db.close()
    with SQLiteRepository(path) as repository:
        assert repository.get(old.id).deployments[0].state is DeploymentState.SUCCESS
        assert repository.last_success("svc", "dev") == new.artifact
        assert repository.last_success("svc", "dev", excluding=new.artifact.id) == old.artifact


def test_the_engines_entries_hold_the_triggers_json_read_only() -> None:
    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([v4_service()]), repository, None)
    (flow,) = engine.handle(ArtifactCreated(Artifact("g", "a", "1"))).flows
    dev = flow.deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    engine.handle(DeploymentCompleted(dev.id))
    (smoke,) = dev.promotions
    trigger = PromotionCompleted(dev.id, smoke.id, [PromotionResult(smoke.id, ResultStatus.PASSED, {"p99": [1, 2]})])
    entry = engine.handle(trigger).history[0]
    assert entry.trigger == unstructure(trigger, Trigger)
    assert unstructure(entry)["trigger"] == unstructure(trigger, Trigger)
    assert repository.history(flow.id)[-1] == entry
    with pytest.raises(TypeError):
        entry.trigger["type"] = "Other"  # type: ignore[index]  # what the test is about
    with pytest.raises(TypeError):
        entry.trigger["results"][0]["details"]["p99"].append(3)
    assert repository.history(flow.id)[-1].trigger["results"][0]["details"] == {"p99": [1, 2]}


def test_the_sql_stores_write_the_converters_form_of_an_entry() -> None:
    from flowfsm.repositories._common import history_rows

    repository = InMemoryRepository()
    engine = FlowEngine(Catalog([v4_service()]), repository, None)
    (flow,) = engine.handle(ArtifactCreated(Artifact("g", "a", "1"), actor="ci", reason="nightly ✓")).flows
    dev = flow.deployments[0]
    engine.handle(DeploymentStarted(dev.id))
    engine.handle(DeploymentCompleted(dev.id))
    (smoke,) = dev.promotions
    result = PromotionResult(smoke.id, ResultStatus.FAILED, {"log": ["a", {"b": 1.5}], "n": None})
    engine.handle(PromotionCompleted(dev.id, smoke.id, [result]))
    entries = repository.history(flow.id)
    built = HistoryEntry(flow.id, 9, FakeClock()(), {"type": "X", "n": [1, {"y": True}]}, None, None, [], [])
    for entry, (flow_id, seq, body) in zip([*entries, built], history_rows([*entries, built]), strict=True):
        assert (flow_id, seq) == (entry.flow_id, entry.seq)
        assert json.loads(body) == unstructure(entry)
