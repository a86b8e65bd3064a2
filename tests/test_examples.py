"""The web-service and replay examples, exercised the way they are used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentStarted,
    FlowEngine,
    FlowState,
    RepositoryError,
    Trigger,
)
from flowfsm.converter import to_json
from flowfsm.repositories import SQLiteRepository

from .conftest import api_service

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import web_service  # noqa: E402 - an example script, imported from its folder


def test_the_web_service_takes_ci_and_cd_callbacks(tmp_path: Path) -> None:
    repository = SQLiteRepository(tmp_path / "flows.db")
    client = TestClient(web_service.create_app(FlowEngine(Catalog([api_service()]), repository, None)))
    created = client.post("/artifacts", json={"group": "com.acme", "name": "api", "version": "1.0"})
    assert created.status_code == 200
    flow = created.json()["flows"][0]
    dev = flow["deployments"][0]
    assert client.post(f"/deployments/{dev['id']}/started").json()["duplicate"] is False
    assert client.post(f"/deployments/{dev['id']}/started").json()["duplicate"] is True
    client.post(f"/deployments/{dev['id']}/completed")
    smoke = dev["promotions"][0]["id"]
    passed = client.post(
        f"/deployments/{dev['id']}/promotions/{smoke}", json=[{"resultStatus": "passed", "details": {"ms": 80}}]
    )
    assert passed.status_code == 200
    assert client.get(f"/flows/{flow['id']}").json()["deployments"][0]["state"] == "success"

    missing = client.post("/deployments/nope/started")
    assert missing.status_code == 404
    assert missing.json() == {"error": "UnknownDeployment", "detail": "unknown deployment 'nope'"}
    prod = flow["deployments"][2]
    refused = client.post(f"/deployments/{prod['id']}/completed")
    assert refused.status_code == 409
    assert "cannot complete deployment" in refused.json()["detail"]
    empty = client.post(f"/deployments/{dev['id']}/promotions/{smoke}", json=[])
    assert empty.status_code == 422
    assert empty.json()["detail"] == "results: at least one promotion result is required"
    repository.close()


def test_replaying_a_log_applies_what_the_store_missed(tmp_path: Path) -> None:
    catalog_file = tmp_path / "flowfsm.toml"
    catalog_file.write_text(
        '[[services]]\nid = "svc"\nartifacts = ["com.acme:api"]\n'
        'pipeline = { name = "p", environments = [{ name = "dev" }, { name = "prod" }] }\n'
    )
    store = tmp_path / "flows.db"
    engine = FlowEngine(Catalog.from_file(catalog_file), SQLiteRepository(store), None)
    flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0"))).flows[0]
    log: list[Trigger] = [ArtifactCreated(Artifact("com.acme", "api", "1.0"))]
    for deployment in flow.deployments:
        log += [DeploymentStarted(deployment.id), DeploymentCompleted(deployment.id)]
    log.append(DeploymentStarted("no-such-deployment"))
    for trigger in log[1:3]:  # the store saw only the start of the log before an outage
        engine.handle(trigger)
    engine.repository.close()  # type: ignore[attr-defined]  # a SQLiteRepository
    (tmp_path / "triggers.jsonl").write_text("\n".join(to_json(t, Trigger) for t in log) + "\n")
    run = [sys.executable, str(ROOT / "examples" / "replay.py"), str(tmp_path / "triggers.jsonl")]
    run += ["--store", str(store), "--catalog", str(catalog_file)]
    first = subprocess.run(run, capture_output=True, text=True, check=False)
    assert first.stdout.strip() == "UnknownDeployment: 1, applied: 2, duplicate: 3"
    assert first.returncode == 1  # the bad line is reported, the rest applied
    again = subprocess.run(run, capture_output=True, text=True, check=False)
    assert again.stdout.strip() == "UnknownDeployment: 1, duplicate: 5"
    with SQLiteRepository(store) as repository:
        assert repository.get(flow.id).state is FlowState.SUCCESS


def test_replay_counts_a_line_that_is_not_a_trigger_and_goes_on(tmp_path: Path) -> None:
    """A torn or garbled line (an outage cuts a log mid-line) is counted like any
    refused trigger, and the lines after it are still applied."""
    catalog_file = tmp_path / "flowfsm.toml"
    catalog_file.write_text(
        '[[services]]\nid = "svc"\nartifacts = ["com.acme:api"]\n'
        'pipeline = { name = "p", environments = [{ name = "dev" }] }\n'
    )
    created = to_json(ArtifactCreated(Artifact("com.acme", "api", "1.0")), Trigger)
    (tmp_path / "triggers.jsonl").write_text(f'{created}\n{{"type": "DeploymentSta\n{{"x": NaN}}\n{created}\n')
    run = [sys.executable, str(ROOT / "examples" / "replay.py"), str(tmp_path / "triggers.jsonl")]
    result = subprocess.run(
        [*run, "--store", str(tmp_path / "flows.db"), "--catalog", str(catalog_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stderr == ""
    assert result.stdout.strip() == "ValidationError: 2, applied: 1, duplicate: 1"
    assert result.returncode == 1


def test_replay_names_a_catalog_it_cannot_load_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "triggers.jsonl").write_text("")
    run = [sys.executable, str(ROOT / "examples" / "replay.py"), str(tmp_path / "triggers.jsonl")]
    result = subprocess.run(
        [*run, "--store", str(tmp_path / "flows.db"), "--catalog", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "missing.toml" in result.stderr
    assert len(result.stderr.splitlines()) == 1  # no traceback


def test_replay_takes_a_postgresql_url_as_the_cli_does(tmp_path: Path) -> None:
    """``--store`` (like FLOWFSM_STORE for the command line) may be a postgresql:// URL:
    the example opens PostgreSQL, never a SQLite file named after the URL."""
    catalog_file = tmp_path / "flowfsm.toml"
    catalog_file.write_text(
        '[[services]]\nid = "svc"\nartifacts = ["com.acme:api"]\n'
        'pipeline = { name = "p", environments = [{ name = "dev" }] }\n'
    )
    (tmp_path / "triggers.jsonl").write_text("")
    run = [sys.executable, str(ROOT / "examples" / "replay.py"), str(tmp_path / "triggers.jsonl")]
    result = subprocess.run(
        [*run, "--store", "postgresql://flowfsm@127.0.0.1:1/flows", "--catalog", str(catalog_file)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: postgres: cannot connect")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flowfsm.toml", "triggers.jsonl"]  # no file made


def test_the_web_service_opens_a_postgresql_store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOWFSM_STORE means what it means to the ``flowfsm`` command: a URL is PostgreSQL
    (its scheme in any case), not a SQLite file named after it."""
    catalog_file = tmp_path / "flowfsm.toml"
    catalog_file.write_text(
        '[[services]]\nid = "svc"\nartifacts = ["com.acme:api"]\n'
        'pipeline = { name = "p", environments = [{ name = "dev" }] }\n'
    )
    monkeypatch.setenv("FLOWFSM_CATALOG", str(catalog_file))
    monkeypatch.setenv("FLOWFSM_STORE", "POSTGRESQL://flowfsm@127.0.0.1:1/flows")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RepositoryError) as error:
        _ = web_service.app
    assert error.value.backend == "postgres"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flowfsm.toml"]


def test_the_web_service_takes_the_cd_systems_failure(tmp_path: Path) -> None:
    """A CD system reports a failed deployment as it reports the rest: one callback,
    a duplicate when repeated, and the failure policy applies (STOP: the flow fails)."""
    repository = SQLiteRepository(tmp_path / "flows.db")
    client = TestClient(web_service.create_app(FlowEngine(Catalog([api_service()]), repository, None)))
    flow = client.post("/artifacts", json={"group": "com.acme", "name": "api", "version": "1.0"}).json()["flows"][0]
    dev = flow["deployments"][0]["id"]
    client.post(f"/deployments/{dev}/started")
    failed = client.post(f"/deployments/{dev}/failed", json={"reason": "image pull failed"})
    assert failed.status_code == 200
    assert failed.json()["flows"][0]["state"] == "failed"
    assert client.post(f"/deployments/{dev}/failed", json={"reason": "image pull failed"}).json()["duplicate"] is True
    assert repository.history(flow["id"])[-1].reason == "image pull failed"
    repository.close()
