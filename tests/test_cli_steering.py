"""Steering from the command line: each operator trigger is a command, run as a user runs it."""

from __future__ import annotations

from tests.test_cli import Cli, cli  # noqa: F401 - the fixture


def _paused_on_a_failed_smoke(runner: Cli) -> tuple[dict[str, object], str]:
    """A flow whose PAUSE policy paused it on its failed dev smoke check."""
    runner.catalog.write_text(
        runner.catalog.read_text().replace('id = "svc-api"', 'id = "svc-api"\nfailureStrategy = "PAUSE"')
    )
    flow = runner.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    dev = flow["deployments"][0]
    runner.json("deployment-started", dev["id"])
    runner.json("deployment-completed", dev["id"])
    smoke = dev["promotions"][0]["id"]
    failed = runner.json("promotion-completed", dev["id"], smoke, "--result", "failed")
    assert failed["flows"][0]["state"] == "paused"
    return flow, dev["id"]


def test_pause_resume_and_abort(cli: Cli) -> None:  # noqa: F811 - the fixture
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    paused = cli.json("pause", flow["id"], "--actor", "alice", "--reason", "release freeze")
    assert paused["flows"][0]["state"] == "paused"
    assert cli.json("pause", flow["id"], "--actor", "alice")["duplicate"] is True
    refused = cli("deployment-started", flow["deployments"][0]["id"])
    assert refused.returncode == 1
    assert "the flow is paused" in refused.stderr
    shown = cli("show", flow["id"])
    assert "paused by alice: release freeze" in shown.stdout
    assert cli.json("resume", flow["id"], "--actor", "alice")["flows"][0]["state"] == "inProgress"
    assert cli.json("abort", flow["id"], "--actor", "bob", "--reason", "wrong build")["flows"][0]["state"] == "aborted"
    assert cli.json("flows", "--state", "aborted")[0]["id"] == flow["id"]


def test_an_operator_command_requires_an_actor(cli: Cli) -> None:  # noqa: F811 - the fixture
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    before = cli.stored()
    done = cli("pause", flow["id"])
    assert done.returncode != 0
    assert "--actor" in done.stderr
    assert "Traceback" not in done.stderr
    assert cli.stored() == before


def test_retry_a_promotion_by_name_resumes_the_flow(cli: Cli) -> None:  # noqa: F811 - the fixture
    flow, dev = _paused_on_a_failed_smoke(cli)
    refused = cli("resume", str(flow["id"]), "--actor", "alice")
    assert refused.returncode == 1
    assert "retry or skip the failed item" in refused.stderr
    retried = cli.json("retry-promotion", dev, "smoke", "--actor", "alice", "--reason", "flaky runner")
    assert [r["event"] for r in retried["hookRequests"]] == []  # the catalog subscribes to deployment-created only
    stored = retried["flows"][0]
    assert stored["state"] == "inProgress"
    assert stored["deployments"][0]["promotions"][0]["attempt"] == 2
    assert stored["deployments"][0]["promotions"][0]["state"] == "pending"


def test_skip_a_promotion_needs_a_reason_and_announces_the_next(cli: Cli) -> None:  # noqa: F811 - the fixture
    _, dev = _paused_on_a_failed_smoke(cli)
    missing = cli("skip-promotion", dev, "smoke", "--actor", "alice")
    assert missing.returncode != 0
    assert "--reason" in missing.stderr
    skipped = cli.json("skip-promotion", dev, "smoke", "--actor", "alice", "--reason", "known flaky")
    assert skipped["flows"][0]["state"] == "inProgress"
    assert [r["event"] for r in skipped["hookRequests"]] == ["deployment-created"]  # prod, announced
    unknown = cli("skip-promotion", dev, "nope", "--actor", "alice", "--reason", "x")
    assert unknown.returncode == 1
    assert "unknown promotion 'nope'" in unknown.stderr


def test_retry_a_deployment(cli: Cli) -> None:  # noqa: F811 - the fixture
    cli.catalog.write_text(
        cli.catalog.read_text().replace('id = "svc-api"', 'id = "svc-api"\nfailureStrategy = "PAUSE"')
    )
    dev = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]["deployments"][0]
    cli.json("deployment-started", dev["id"])
    assert cli.json("deployment-failed", dev["id"], "node lost")["flows"][0]["state"] == "paused"
    retried = cli.json("retry-deployment", dev["id"], "--actor", "alice")
    assert retried["flows"][0]["deployments"][0]["attempt"] == 2
    assert [r["event"] for r in retried["hookRequests"]] == ["deployment-created"]
