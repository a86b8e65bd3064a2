"""Approvals from the command line (SPEC §11): ``approve`` and ``reject``, as a user runs them."""

from __future__ import annotations

from typing import Any

from tests.test_cli import Cli, cli  # noqa: F401 - the fixture

GATE = """
[[services]]
id = "svc-api"
artifacts = ["com.acme:api"]

[services.pipeline]
name = "default"

[[services.pipeline.environments]]
name = "dev"

[[services.pipeline.environments]]
name = "prod"
approvals = { approvers = ["alice", "group:release-managers"], required = 2 }

[[services.webhooks]]
id = "watcher"
event = "approval-requested"
actions = [{ name = "notify", url = "https://chat.example/hook" }]
"""


def _awaiting_prod(runner: Cli) -> dict[str, Any]:
    runner.catalog.write_text(GATE)
    flow = runner.json("artifact-created", "com.acme:api:1.0.0", "--actor", "erin")["flows"][0]
    dev = flow["deployments"][0]["id"]
    runner.json("deployment-started", dev)
    done = runner.json("deployment-completed", dev)
    assert [r["event"] for r in done["hookRequests"]] == ["approval-requested"]
    prod: dict[str, Any] = done["flows"][0]["deployments"][1]
    assert prod["state"] == "awaitingApproval"
    return prod | {"flowId": flow["id"]}


def test_approve_with_a_group_until_enough(cli: Cli) -> None:  # noqa: F811 - the fixture
    prod = _awaiting_prod(cli)
    first = cli.json("approve", prod["id"], "--actor", "alice", "--reason", "release notes read")
    assert first["flows"][0]["deployments"][1]["approvals"] == ["alice"]
    assert cli.json("approve", prod["id"], "--actor", "alice")["duplicate"] is True
    second = cli.json("approve", prod["id"], "--actor", "carol", "--group", "ops", "--group", "release-managers")
    stored = second["flows"][0]["deployments"][1]
    assert (stored["state"], stored["approvals"]) == ("notStarted", ["alice", "carol"])
    shown = cli("show", prod["flowId"])
    assert "published by erin" in shown.stdout
    assert "approved by alice, carol" in shown.stdout


def test_someone_not_allowed_gets_one_line_and_nothing_changes(cli: Cli) -> None:  # noqa: F811 - the fixture
    prod = _awaiting_prod(cli)
    before = cli.stored()
    for args in (("--actor", "dave"), ("--actor", "erin", "--group", "release-managers")):
        refused = cli("approve", prod["id"], *args)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: ")
        assert "may not act on deployment" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "Traceback" not in refused.stderr
    assert "the artifact's author may not approve it" in refused.stderr
    assert cli.stored() == before


def test_reject_needs_a_reason_and_fails_the_flow(cli: Cli) -> None:  # noqa: F811 - the fixture
    prod = _awaiting_prod(cli)
    missing = cli("reject", prod["id"], "--actor", "alice")
    assert missing.returncode != 0
    assert "--reason" in missing.stderr
    rejected = cli.json("reject", prod["id"], "--actor", "alice", "--reason", "not during the incident")
    assert rejected["flows"][0]["state"] == "failed"
    assert rejected["flows"][0]["deployments"][1]["state"] == "failed"
    explained = cli("explain", rejected["flows"][0]["id"])
    assert "not during the incident" in explained.stdout


def test_explain_says_who_may_approve(cli: Cli) -> None:  # noqa: F811 - the fixture
    prod = _awaiting_prod(cli)
    listed = cli("flows")  # a deployment waiting at a gate is listed like any other
    assert (listed.returncode, listed.stderr) == (0, "")
    assert "prod" in listed.stdout
    cli.json("approve", prod["id"], "--actor", "alice")
    explained = cli("explain", prod["flowId"])
    assert "1 of 2, from alice or group:release-managers" in explained.stdout
    assert "alice approved" in explained.stdout


def test_an_answer_may_name_the_attempt_it_answers(cli: Cli) -> None:  # noqa: F811 - the fixture
    prod = _awaiting_prod(cli)
    before = cli.stored()
    ahead = cli("approve", prod["id"], "--actor", "alice", "--attempt", "2")
    assert (ahead.returncode, ahead.stderr.count("\n")) == (1, 1)
    assert "the answer names attempt 2; the deployment is at attempt 1" in ahead.stderr
    assert cli.stored() == before
    nought = cli("reject", prod["id"], "--actor", "alice", "--reason", "no", "--attempt", "0")
    assert nought.returncode == 2
    assert "Traceback" not in nought.stderr
    approved = cli.json("approve", prod["id"], "--actor", "alice", "--attempt", "1")
    assert approved["flows"][0]["deployments"][1]["approvals"] == ["alice"]
