"""The ``flowfsm`` command after review: text from input is printed escaped, ``show``,
``history`` and ``explain`` take a flow, deployment or artifact id, a promotion is
named by its name, and the outbox is operated from the command line."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowfsm.cli.app import _VisibleFormatter, visible
from flowfsm.repositories import SQLiteRepository

from .test_cli import Cli, one_error_line, run_raw

HOSTILE_ACTOR = "mallory\x1b[2J\x1b[31m\x9b2J\u202e"
HOSTILE_REASON = "\x1b]0;pwned\x07 line\nbreak"
UNSEEN = ("\x1b", "\x07", "\x9b", "\u202e")


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def _flow(cli: Cli, artifact: str = "com.acme:api:1.0.0") -> dict[str, object]:
    flow: dict[str, object] = cli.json("artifact-created", artifact)["flows"][0]
    return flow


def test_history_does_not_write_terminal_escapes(cli: Cli) -> None:
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    paused = cli("pause", flow["id"], "--actor", "mallory\x1b[2J\x1b[31m", "--reason", "\x1b]0;pwned\x07")
    assert paused.returncode == 0, paused.stderr
    shown = cli("history", flow["id"])
    assert shown.returncode == 0, shown.stderr
    assert "mallory" in shown.stdout
    assert "\x1b" not in shown.stdout
    assert "\x07" not in shown.stdout


@pytest.mark.parametrize("command", ["history", "show", "pause-output", "history-json", "show-json"])
def test_text_from_input_is_printed_with_its_control_characters_escaped(cli: Cli, command: str) -> None:
    flow = _flow(cli)
    paused = cli("pause", str(flow["id"]), "--actor", HOSTILE_ACTOR, "--reason", HOSTILE_REASON)
    assert paused.returncode == 0, paused.stderr
    if command == "pause-output":
        done = cli("resume", str(flow["id"]), "--actor", HOSTILE_ACTOR, "--reason", HOSTILE_REASON)
    else:
        name, _, form = command.partition("-")
        done = cli(name, str(flow["id"]), *(["--json"] if form else []))
    assert done.returncode == 0, done.stderr
    for char in UNSEEN:
        assert char not in done.stdout + done.stderr
    if command.endswith("json"):
        json.loads(done.stdout)
        assert json.dumps(HOSTILE_ACTOR) in done.stdout  # the same text, in JSON's escapes
    elif command != "pause-output":
        assert "mallory\\x1b[2J\\x1b[31m\\x9b2J\\u202e" in done.stdout
        assert "\\x1b]0;pwned\\x07" in done.stdout


def test_an_error_naming_input_writes_no_terminal_escapes(cli: Cli) -> None:
    _flow(cli)
    done = cli("show", "nope\x1b[2J\x9b\u202e")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    for char in UNSEEN:
        assert char not in line


def test_show_accepts_a_deployment_or_an_artifact_id(cli: Cli) -> None:
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    for key in (flow["deployments"][0]["id"], "com.acme:api:1.0.0"):
        shown = cli("show", key)
        assert shown.returncode == 0, shown.stderr
        assert flow["id"] in shown.stdout


TWO_SERVICES = """
[[services]]
id = "svc-api"
artifacts = ["com.acme:api"]
pipeline = { name = "p", environments = [{ name = "dev", promotions = ["smoke"] }] }

[[services]]
id = "svc-worker"
artifacts = ["com.acme:api"]
pipeline = { name = "p", environments = [{ name = "dev" }] }
"""


def test_show_of_an_artifact_shows_each_of_its_flows(cli: Cli) -> None:
    cli.catalog.write_text(TWO_SERVICES)
    flows = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"]
    assert len(flows) == 2
    shown = cli("show", "com.acme:api:1.0.0")
    assert shown.returncode == 0, shown.stderr
    assert all(f["id"] in shown.stdout for f in flows)
    listed = cli.json("show", "com.acme:api:1.0.0")
    assert sorted(item["flow"]["id"] for item in listed) == sorted(f["id"] for f in flows)
    one = cli.json("show", flows[1]["deployments"][0]["id"])  # a deployment id: its one flow, an object
    assert one["flow"]["id"] == flows[1]["id"]


@pytest.mark.parametrize("command", ["history", "explain"])
def test_history_and_explain_accept_a_deployment_or_an_artifact_id(cli: Cli, command: str) -> None:
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    by_flow = cli(command, flow["id"], "--json")
    assert by_flow.returncode == 0, by_flow.stderr
    for key in (flow["deployments"][1]["id"], "com.acme:api:1.0.0"):
        done = cli(command, key, "--json")
        assert done.returncode == 0, done.stderr
        assert done.stdout == by_flow.stdout


@pytest.mark.parametrize("command", ["history", "explain"])
def test_an_artifact_with_several_flows_is_refused_naming_them(cli: Cli, command: str) -> None:
    cli.catalog.write_text(TWO_SERVICES)
    flows = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"]
    done = cli(command, "com.acme:api:1.0.0")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert "has 2 flows" in line
    assert all(f["id"] in line for f in flows)


@pytest.mark.parametrize("key", ["nope", "com.acme:api:9.9.9", "a:b:", ":::", "x" * 100_000, "[bold]x[/]:é\u202e:1"])
@pytest.mark.parametrize("command", ["show", "history", "explain"])
def test_a_key_that_names_nothing_is_one_line(cli: Cli, command: str, key: str) -> None:
    _flow(cli)
    done = cli(command, key)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith("error: no flow, deployment or artifact "), line
    assert len(line) < 300


def test_promotion_completed_takes_a_promotion_by_its_name(cli: Cli) -> None:
    flow = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]
    dev = flow["deployments"][0]["id"]
    assert cli("deployment-started", dev).returncode == 0
    assert cli("deployment-completed", dev).returncode == 0
    done = cli.json("promotion-completed", dev, "smoke", "--result", "passed", "--details", '{"p99": 1}')
    (smoke,) = done["flows"][0]["deployments"][0]["promotions"]
    assert (smoke["name"], smoke["state"]) == ("smoke", "success")
    again = cli.json("promotion-completed", dev, smoke["id"], "--result", "passed", "--details", '{"p99": 1}')
    assert again["duplicate"]  # the same result, named by its id
    unknown = cli("promotion-completed", dev, "perf", "--result", "passed")
    assert unknown.returncode == 1
    assert one_error_line(unknown.stderr).startswith("error: unknown promotion 'perf'")


def _dead(cli: Cli) -> tuple[str, str]:
    """A flow whose one HookRequest was given up on: (flow id, request id)."""
    flow = _flow(cli)
    with SQLiteRepository(cli.store) as repository:
        (record,) = repository.hook_requests(str(flow["id"]))
        repository.mark_dead([record.request.id])
    return str(flow["id"]), record.request.id


def test_outbox_pending_counts_and_lists_a_flows_pending_requests(cli: Cli) -> None:
    flow = _flow(cli)
    assert cli.json("outbox", "pending") == {"pending": 1}
    assert cli("outbox", "pending").stdout.strip() == "pending 1"
    listed = cli.json("outbox", "pending", str(flow["id"]))
    assert [r["request"]["flowId"] for r in listed] == [flow["id"]]
    shown = cli("outbox", "pending", "com.acme:api:1.0.0")
    assert shown.returncode == 0, shown.stderr
    assert listed[0]["request"]["id"] in shown.stdout


def test_outbox_dead_lists_and_requeue_makes_pending_again(cli: Cli) -> None:
    flow_id, request_id = _dead(cli)
    assert cli.json("outbox", "pending") == {"pending": 0}
    assert [r["request"]["id"] for r in cli.json("outbox", "dead")] == [request_id]
    assert request_id in cli("outbox", "dead").stdout
    done = cli("outbox", "requeue", request_id, "nope\x1b[2J")
    assert done.returncode == 0, done.stderr
    assert "requeued 1" in done.stdout
    assert "not dead, left as they are: 'nope\\x1b[2J'" in done.stdout
    assert "\x1b" not in done.stdout
    assert cli.json("outbox", "dead") == []
    assert cli.json("outbox", "pending") == {"pending": 1}
    assert cli.json("outbox", "requeue", request_id) == {"requeued": [], "notDead": [request_id]}
    assert cli("outbox", "dead").stdout.strip() == "no dead HookRequests"
    with SQLiteRepository(cli.store) as repository:
        assert [r.state.value for r in repository.hook_requests(flow_id)] == ["pending"]


def test_outbox_endpoints_disable_and_enable(cli: Cli) -> None:
    _flow(cli)
    url = "https://cd.example/deploy"
    assert cli.json("outbox", "endpoints") == {"disabled": []}
    assert cli.json("outbox", "endpoints", "disable", url) == {"disabled": [url]}
    with SQLiteRepository(cli.store) as repository:
        assert repository.disabled_endpoints() == {url}
    listed = cli("outbox", "endpoints")
    assert listed.returncode == 0
    assert url in listed.stdout
    enabled = cli("outbox", "endpoints", "enable", url)
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.splitlines()[:2] == [f"enabled {url}", "disabled endpoints: 0"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["endpoints", "disable"], "error: URL: give the URL to disable"),
        (["endpoints", "disable", "ftp://x"], "error: URL: expected an http:// or https:// URL"),
        (["endpoints", "disable", "https://u:S3cret@x/"], "error: URL: must not contain credentials"),
        (["endpoints", "disable", "https://x/\x1b[2J"], "error: URL: must not contain whitespace"),
        (["endpoints", "disable", "https://x/" + "a" * 100_000], "error: URL: is longer than 2048"),
        (["requeue", "\udcff"], "error: ID: contains a lone surrogate"),
        (["requeue", *(["x"] * 10_001)], "error: ID: at most 10000 ids at once"),
        (["pending", "[red]nope[/]"], "error: no flow, deployment or artifact '[red]nope[/]'"),
    ],
)
def test_outbox_refuses_odd_input_in_one_line(cli: Cli, args: list[str], error: str) -> None:
    _flow(cli)
    done = run_raw(cli, "outbox", *args)
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith(error), line
    assert "S3cret" not in line
    assert len(line) < 300


def test_states_and_results_given_on_the_command_line_ignore_case(cli: Cli) -> None:
    flow = _flow(cli)
    assert [f["id"] for f in cli.json("flows", "--state", "INPROGRESS")] == [flow["id"]]
    assert cli.json("flows", "--state", "Paused") == []
    dev = flow["deployments"][0]["id"]  # type: ignore[index]
    assert cli("deployment-started", dev).returncode == 0
    assert cli("deployment-completed", dev).returncode == 0
    done = cli.json("promotion-completed", dev, "smoke", "--result", "PASSED")
    assert done["flows"][0]["deployments"][0]["state"] == "success"


@given(st.text())
def test_visible_leaves_no_character_a_terminal_acts_on(text: str) -> None:
    shown = visible(text)
    assert not [c for c in shown if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in "\u200b\u200e\u200f\u202e"]
    assert visible(shown) == shown  # what it shows needs no more escaping
    if not any(unicodedata.category(c) in ("Cc", "Cf", "Cn", "Zl", "Zp") for c in text):
        assert shown == text  # printable text is left exactly as it is


def test_delivery_log_lines_escape_what_an_endpoint_answered() -> None:
    record = logging.LogRecord("flowfsm", logging.WARNING, __file__, 1, "answer %s", ("\x1b[2J\x9b",), None)
    line = _VisibleFormatter("%(message)s").format(record)
    assert line == "answer \\x1b[2J\\x9b"
