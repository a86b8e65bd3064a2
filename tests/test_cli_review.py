"""The ``flowfsm`` command after review: text from input is printed escaped, ``show``,
``history`` and ``explain`` take a flow, deployment or artifact id, a promotion is
named by its name, and the outbox is operated from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli import Cli, one_error_line

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
