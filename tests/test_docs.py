"""Every example in docs/, the README and examples/ runs, so none drifts."""

from __future__ import annotations

import doctest
import importlib
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from flowfsm import Catalog, CatalogError

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SERVED = {"web_service.py", "replay.py"}  # exercised by their own tests (test_examples.py)
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_in_docs_run(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    text = doc.read_text()
    blocks = FENCE.findall(text)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{doc.stem}"}
    if "POSTGRES_DSN" in text:  # examples that need a server get the test session's
        namespace["POSTGRES_DSN"] = request.getfixturevalue("postgres_dsn")
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{doc.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{doc.name}, python block {i} failed: {e!r}\n{block}") from e


@pytest.mark.parametrize("module", ["flowfsm.converter", "flowfsm.model", "flowfsm.engine"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.name not in SERVED], ids=lambda p: p.name)
def test_examples_run(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(example), run_name="__main__")
    assert capsys.readouterr().out.strip()


CATALOG_FENCE = re.compile(r"^```(toml|json|yaml)\n(.*?)^```", re.S | re.M)
WHOLE_CATALOG = ("[[services]]", '{"services"', "services:")  # a fragment (one environment) starts otherwise


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_catalog_files_in_docs_load(doc: Path, tmp_path: Path) -> None:
    """A whole catalog a page shows loads as it is written (a placeholder secret aside)."""
    for i, (ext, text) in enumerate(CATALOG_FENCE.findall(doc.read_text())):
        if not text.lstrip().startswith(WHOLE_CATALOG):
            continue
        path = tmp_path / f"block{i}.{ext}"
        path.write_text(text.replace("whsec_...", "whsec_Zmxvd2ZzbS1kb2NzLXNlY3JldC0wMDE="))
        try:
            Catalog.from_file(path)
        except CatalogError as e:
            raise AssertionError(f"{doc.name}, {ext} block {i} does not load: {e}\n{text}") from e


def test_the_contract_suite_examples_pass(tmp_path: Path) -> None:
    """extending.md's contract suites, run by pytest as a user runs them, pass on the
    repository they name."""
    blocks = [b for b in FENCE.findall((ROOT / "docs" / "extending.md").read_text()) if "Contract" in b]
    assert len(blocks) == 2
    module = tmp_path / "test_my_repository.py"
    module.write_text("\n\n".join(blocks))
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)]
    done = subprocess.run(run, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_dashboard_example_keys_its_forms_with_no_published_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copied as shown, without FLOWFSM_DASHBOARD_SECRET set, the dashboard must not key
    its CSRF tokens with a string anyone can read on the page."""
    monkeypatch.delenv("FLOWFSM_DASHBOARD_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "operating.md").read_text()
    namespace: dict[str, object] = {"__name__": "docs_operating"}
    for block in FENCE.findall(text):
        exec(compile(block, "operating.md", "exec"), namespace)
    secret = namespace["secret"]
    assert secret is None or (isinstance(secret, str) and secret not in text)


def test_the_schema_table_names_every_table_of_the_current_version(tmp_path: Path) -> None:
    """docs/backends.md's schema is the one a new store gets: its version, and every table."""
    import sqlite3

    from flowfsm.repositories import postgres, sqlite

    text = (ROOT / "docs" / "backends.md").read_text()
    schema = text[text.index("## The schema") :]
    version = re.search(r"store the same things \(version (\d+)\)", schema)
    assert version is not None
    assert int(version[1]) == sqlite.SCHEMA_VERSION == postgres.SCHEMA_VERSION
    documented = set(re.findall(r"^\| `(\w+)` \|", schema, re.M))
    sqlite.SQLiteRepository(tmp_path / "flows.db").close()
    with sqlite3.connect(tmp_path / "flows.db") as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        tables = {name for (name,) in rows}
    assert documented == tables


def test_the_catalog_page_lists_every_hook_event() -> None:
    """A webhook may subscribe to any hook event; the catalog page names them all."""
    from flowfsm import HookEvent

    text = (ROOT / "docs" / "catalog.md").read_text()
    listed = text[text.index("Hook events:") : text.index("A bad file")]
    assert {e.value for e in HookEvent} == set(re.findall(r"`([a-z-]+)`", listed))


def test_the_triggers_page_names_every_trigger_and_the_errors_they_raise() -> None:
    import typing

    from flowfsm import Trigger

    text = (ROOT / "docs" / "triggers.md").read_text()
    table = text[text.index("## What each trigger does") : text.index("## Repeats are duplicates")]
    assert [c.__name__ for c in typing.get_args(Trigger) if f"`{c.__name__}" not in table] == []
    errors = text[text.index("## Errors") :]
    assert "| `NotAuthorized` |" in errors
