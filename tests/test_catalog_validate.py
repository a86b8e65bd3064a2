"""``flowfsm catalog validate`` on anything a catalog file may hold: one line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_catalog import SECRET, SECRET_KEY, TOML, assert_no_secret

FLOWFSM = str(Path(sys.executable).with_name("flowfsm"))


def validate(file: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWFSM, "catalog", "validate", str(file)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=60,
        check=False,
    )


def refused(file: Path | str, *expected: str) -> str:
    """Exit 1, nothing on stdout, and one line on stderr: ``error: FILE: ...``."""
    done = validate(file)
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: {file}: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    return done.stderr


def test_validate_refuses_a_strategy_the_engine_does_not_know(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(TOML.replace('failureStrategy = "STOP"', 'failureStrategy = "RETRY_TWICE"'))
    refused(
        file, "$.services[0].failureStrategy", "'svc-api'", "'RETRY_TWICE'", "(known: PAUSE, RETRY, ROLLBACK, STOP)"
    )


def test_validate_never_shows_a_secret(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(TOML.replace(f'secret = "{SECRET}"', f'secret = ["{SECRET}"]'))
    assert_no_secret(refused(file, "$.services[0].webhooks[0].actions[0].secret"))
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"services:\n  - id: a\n    secret: {SECRET}: x\n")
    assert_no_secret(refused(yaml_file, "(line 3, column "))


def test_validate_names_a_missing_secret_reference(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(TOML.replace(f'secret = "{SECRET}"', 'secret = { file = "wh.secret" }'))
    refused(file, "$.services[0].webhooks[0].actions[0].secret", f"'{tmp_path / 'wh.secret'}'")
    (tmp_path / "wh.secret").write_text(SECRET)
    done = validate(file)
    assert done.returncode == 0, done.stderr
    assert SECRET_KEY not in done.stdout


CASES = {  # file: (content, what the error says)
    "binary.toml": (bytes(range(256)), "$: not UTF-8 text (line 2, column 118)"),
    "latin1.yaml": ("services: café".encode("latin-1"), "$: not UTF-8 text (line 1, column 14)"),
    "deep.json": (b"[" * 100_000 + b"]" * 100_000, "$: not valid JSON: nested too deeply"),
    "deep.yaml": (b"[" * 100_000 + b"]" * 100_000, "$: not valid YAML: nested too deeply"),
    "list.json": (b"[]", "$: expected a table/object with a 'services' list, got a list"),
    "scalar.toml": (b"services = 3", "$.services: expected a list, got 3"),
    "digits.json": (b'{"services": [{"id": ' + b"1" * 5000 + b"}]}", "$.services[0].id: expected a string, got <a"),
    "digits.toml": (b"[[services]]\nid = " + b"1" * 5000, "a number of more than 4300 digits (line 2, column 6)"),
    "digits.yaml": (b"services:\n  - id: " + b"1" * 5000, "$.services[0].id: expected a string, got <a"),
    "tag.yaml": (b"services: !!python/object/apply:os.system ['echo owned']\n", "(line 1, column 11)"),
    "dict.json": (b'{"services": [{"id": {"nested": ["x"]}}]}', "$.services[0].id: expected a string, got {"),
    "markup.toml": (
        b'[[services]]\nid = "x"\nartifacts = ["a:b"]\npipeline = { name = "[/]", environments = "[bold]" }',
        "$.services[0].pipeline.environments: expected a list, got '[bold]'",
    ),
    "dup.json": (b'{"services": [], "services": []}', "$: duplicate key 'services'"),
    "empty.toml": (b"", "$: expected 'services', a list of services"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_on_any_file_is_one_line(tmp_path: Path, name: str) -> None:
    content, expected = CASES[name]
    file = tmp_path / name
    file.write_bytes(content)
    error = refused(file, expected)
    assert "Traceback" not in error
    assert "Error" not in error  # no Python exception names
    assert "sys." not in error  # nor advice about Python's settings


def test_validate_on_endless_and_unreadable_files(tmp_path: Path) -> None:
    refused("/dev/zero", "unknown catalog format")
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    refused(zero, "cannot read: not a regular file (a device)")
    refused(tmp_path, "unknown catalog format")
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    refused(folder, "cannot read: Is a directory")


def test_validate_shows_what_the_catalog_holds_as_text(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    pipeline = '{ name = "p", environments = [{ name = "[bold]dev" }] }'
    file.write_text(f'[[services]]\nid = "[/]"\nartifacts = ["a:b"]\npipeline = {pipeline}\n')
    done = validate(file)
    assert done.returncode == 0, done.stderr
    assert "[/]: a:b; [bold]dev; 0 webhook(s)" in done.stdout


def test_validate_without_a_file_checks_the_catalog_the_other_commands_use(tmp_path: Path) -> None:
    """As every command reads FLOWFSM_CATALOG (or ./flowfsm.toml), so does ``validate``
    when no FILE is given; the FILE argument still comes first."""
    pipeline = '{ name = "p", environments = [{ name = "dev" }] }'
    (tmp_path / "flowfsm.toml").write_text(
        f'[[services]]\nid = "svc-default"\nartifacts = ["a:b"]\npipeline = {pipeline}\n'
    )
    (tmp_path / "ops.toml").write_text(f'[[services]]\nid = "svc-ops"\nartifacts = ["a:b"]\npipeline = {pipeline}\n')
    env = {k: v for k, v in os.environ.items() if k != "FLOWFSM_CATALOG"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        command = [FLOWFSM, "catalog", "validate", *args]
        return subprocess.run(command, capture_output=True, text=True, env={**env, **extra}, cwd=tmp_path, check=False)

    assert "svc-default" in run().stdout
    assert "svc-ops" in run(FLOWFSM_CATALOG="ops.toml").stdout
    assert "svc-ops" in run("--catalog", "ops.toml").stdout
    assert "svc-default" in run("flowfsm.toml", FLOWFSM_CATALOG="ops.toml").stdout
    missing = run(FLOWFSM_CATALOG="nope.toml")
    assert (missing.returncode, missing.stderr) == (1, "error: nope.toml: $: cannot read: No such file or directory\n")
