"""The ``flowfsm`` command on hostile ground: stores it cannot reach, output it cannot
write, input without end, values of any size. Always one line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import resource
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from flowfsm import Artifact, ArtifactCreated, FlowEngine
from flowfsm.catalog import Catalog
from flowfsm.repositories import SQLiteRepository

from .test_cli import FLOWFSM, Cli, one_error_line, run_raw

PASSWORD = "S3cretPass"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{PASSWORD}@[::1/db",  # malformed: libpq's message quotes it whole
        f"postgresql://u:{PASSWORD}@127.0.0.1:1/x",  # nothing listens on port 1
        f"postgresql://u:{PASSWORD}@127.0.0.1:99999/x",
        "postgresql://",
    ],
)
def test_a_store_url_that_cannot_be_used_fails_at_once_in_one_line(cli: Cli, url: str) -> None:
    started = time.monotonic()
    done = cli("flows", "--store", url)
    took = time.monotonic() - started
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith("error: --store: ")
    assert PASSWORD not in done.stdout + done.stderr
    assert took < 8, took  # one attempt, not the pool's retries for 10 s


def _with_a_flow(cli: Cli) -> str:
    with SQLiteRepository(cli.store) as repository:
        engine = FlowEngine(Catalog.from_file(cli.catalog), repository, None)
        return engine.handle(ArtifactCreated(Artifact("com.acme", "api", "1.0.0"))).flows[0].id


def _commands(flow_id: str) -> list[list[str]]:
    return [["flows"], ["flows", "--json"], ["show", flow_id], ["show", flow_id, "--json"], ["diagram", "flow"]]


def _run_into(cli: Cli, args: list[str], stdout: int) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog), "COLUMNS": "200"}
    return subprocess.run(
        [FLOWFSM, *args], stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cli.root, timeout=60, check=False
    )


def test_output_that_cannot_be_written_is_one_error_line(cli: Cli) -> None:
    flow_id = _with_a_flow(cli)
    for args in _commands(flow_id):
        with open("/dev/full", "wb") as full:
            done = _run_into(cli, args, full.fileno())
        assert done.returncode == 1, (args, done.stderr)
        assert one_error_line(done.stderr) == "error: cannot write the output: No space left on device"


def test_a_reader_that_went_away_ends_every_command_quietly(cli: Cli) -> None:
    """`flowfsm ... | head -1`, made certain: the reader is gone before the first write."""
    flow_id = _with_a_flow(cli)
    for args in _commands(flow_id):
        read, write = os.pipe()
        os.close(read)
        try:
            done = _run_into(cli, args, write)
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (0, b""), args


def test_handle_refuses_a_line_longer_than_a_mebibyte(cli: Cli) -> None:
    cli.json("artifact-created", "com.acme:api:1.0.0")
    before = cli.stored()
    long = b'{"type": "DeploymentStarted", "deploymentId": "' + b"x" * 2**20 + b'"}'
    done = run_raw(cli, "handle", "-", stdin=b"\n" + long + b"\n")
    assert done.returncode == 1
    assert one_error_line(done.stderr) == "error: line 2: longer than 1 MiB"
    assert cli.stored() == before


def _limit_memory() -> None:  # so that reading /dev/zero whole fails fast rather than swapping
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))


def test_handle_on_an_endless_line_stops_at_the_bound(cli: Cli) -> None:
    env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog)}
    done = subprocess.run(
        [FLOWFSM, "handle", "/dev/zero"],
        capture_output=True,
        env=env,
        cwd=cli.root,
        timeout=30,
        check=False,
        preexec_fn=_limit_memory,  # the test process starts no threads that could deadlock it
    )
    assert done.returncode == 1
    assert one_error_line(done.stderr) == "error: line 1: longer than 1 MiB"
    assert not cli.store.exists()


def test_a_huge_limit_is_a_usage_mistake(cli: Cli) -> None:
    _with_a_flow(cli)
    done = cli("flows", "--limit", "99999999999999999999999")
    assert done.returncode == 2
    assert "--limit" in done.stderr
    assert "Traceback" not in done.stderr
    assert cli("flows", "--limit", "10000").returncode == 0


def test_error_lines_stay_short_whatever_the_ids(cli: Cli) -> None:
    cli.json("artifact-created", "com.acme:api:1.0.0")
    shown = cli("show", "f" * 100_000)
    assert shown.returncode == 1
    assert len(one_error_line(shown.stderr)) < 500
    handled = cli("handle", "-", stdin='{"type": "DeploymentStarted", "deploymentId": "' + "d" * 200_000 + '"}\n')
    assert handled.returncode == 1
    line = one_error_line(handled.stderr)
    assert line.startswith("error: line 1: unknown deployment 'ddd")
    assert len(line) < 500


def test_a_bad_state_names_the_option(cli: Cli) -> None:
    _with_a_flow(cli)
    done = cli("flows", "--state", ":smile:[b]")
    assert done.returncode == 1
    assert (
        one_error_line(done.stderr) == "error: --state: ':smile:[b]' is not one of"
        " 'inProgress', 'success', 'failed', 'paused', 'aborted', 'superseded'"
    )


def test_a_path_that_is_not_utf8_shows_its_bytes(cli: Cli) -> None:
    done = run_raw(cli, "flows", "--store", os.fsdecode(b"\xff.db"))
    assert done.returncode == 1
    assert one_error_line(done.stderr) == "error: --store: no store at '\\xff.db'"
    source = run_raw(cli, "handle", os.fsdecode(b"\xfe.jsonl"))
    assert one_error_line(source.stderr) == "error: SOURCE: cannot read '\\xfe.jsonl': No such file or directory"


@pytest.mark.parametrize(
    "url",
    [f"mysql://u:{PASSWORD}@db.example/x", f"https://u:{PASSWORD}@example/x.db", f"sqlite://u:{PASSWORD}@h/x.db"],
)
@pytest.mark.parametrize("command", [["flows"], ["artifact-created", "com.acme:api:1.0.0"], ["worker", "--once"]])
def test_a_store_url_of_another_kind_is_refused_without_its_password(cli: Cli, url: str, command: list[str]) -> None:
    done = cli(*command, "--store", url)
    assert done.returncode == 1
    scheme = url.split(":", 1)[0]
    assert one_error_line(done.stderr) == (
        f"error: --store: {scheme}:// is not a store; give a SQLite file or a postgresql:// URL"
    )
    assert PASSWORD not in done.stdout + done.stderr
    assert sorted(p.name for p in cli.root.iterdir()) == ["flowfsm.toml"]  # nothing created


def test_a_postgresql_scheme_in_capitals_is_postgresql(cli: Cli) -> None:
    done = cli("flows", "--store", f"POSTGRESQL://u:{PASSWORD}@127.0.0.1:1/x")
    assert done.returncode == 1
    assert one_error_line(done.stderr).startswith("error: --store: postgres: cannot connect")
    assert PASSWORD not in done.stdout + done.stderr
    assert sorted(p.name for p in cli.root.iterdir()) == ["flowfsm.toml"]


@pytest.mark.parametrize("command", [["flows"], ["artifact-created", "com.acme:api:1.0.0"], ["worker", "--once"]])
def test_a_store_sqlite_cannot_open_names_the_option_and_shows_the_path_bounded(cli: Cli, command: list[str]) -> None:
    folder = cli.root / "a-folder"
    folder.mkdir()
    not_sqlite = cli.root / "notes.db"
    not_sqlite.write_bytes(b"not a SQLite database\n" * 100)
    assert one_error_line(cli(*command, "--store", str(folder)).stderr) == (
        f"error: --store: sqlite: cannot open {str(folder)!r}: unable to open database file"
    )
    assert one_error_line(cli(*command, "--store", str(not_sqlite)).stderr) == (
        f"error: --store: sqlite: cannot open {str(not_sqlite)!r}: file is not a database"
    )
    assert not_sqlite.read_bytes() == b"not a SQLite database\n" * 100
    long = cli.root / ("d" * 250)
    long.mkdir()
    line = one_error_line(cli(*command, "--store", str(long)).stderr)
    assert line.startswith("error: --store: sqlite: cannot open ")
    assert line.endswith("…: unable to open database file")
    assert len(line) < 400


@pytest.mark.parametrize("command", [["catalog", "validate"], ["artifact-created", "com.acme:api:1.0", "--catalog"]])
def test_a_catalog_file_name_is_shown_bounded_escaped_and_as_its_bytes(cli: Cli, command: list[str]) -> None:
    long = run_raw(cli, *command, "c" * 130_000 + ".toml")
    line = one_error_line(long.stderr)
    assert line.startswith("error: …ccc")
    assert line.endswith("c.toml: $: cannot read: File name too long")
    assert len(line) < 400
    odd = run_raw(cli, *command, os.fsdecode(b"\xff\n\x1b[2J.toml"))
    assert one_error_line(odd.stderr) == "error: \\xff\\x0a\\x1b[2J.toml: $: cannot read: No such file or directory"
    assert not cli.store.exists()


def test_demo_on_a_store_it_cannot_use_names_the_option(cli: Cli) -> None:
    folder = cli.root / "a-folder"
    folder.mkdir()
    done = cli("demo", "--store", str(folder))
    assert done.returncode == 1
    assert one_error_line(done.stderr) == (
        f"error: --store: sqlite: cannot open {str(folder)!r}: unable to open database file"
    )
    url = cli("demo", "--store", f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    assert url.returncode == 1
    assert one_error_line(url.stderr) == "error: --store: the demo runs on a SQLite file, not a postgresql:// URL"
    assert PASSWORD not in url.stdout + url.stderr
    assert sorted(p.name for p in cli.root.iterdir()) == ["a-folder", "flowfsm.toml"]


def _tables_and_journal(path: Path) -> tuple[list[str], str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        (journal,) = db.execute("PRAGMA journal_mode").fetchone()
        return tables, journal


@pytest.mark.parametrize("tables", [["users"], ["flows", "users"]])
@pytest.mark.parametrize("command", [["flows"], ["artifact-created", "com.acme:api:1.0.0"], ["worker", "--once"]])
def test_a_sqlite_database_of_another_application_is_left_as_it_is(
    cli: Cli, tables: list[str], command: list[str]
) -> None:
    """``--store`` naming another program's database (a typo, the wrong file) must not
    turn it into a flowfsm store: no tables added, its journal mode kept."""
    other = cli.root / "app.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        for table in tables:
            db.execute(f"CREATE TABLE {table} (x)")
        db.commit()
    before = _tables_and_journal(other)
    done = cli(*command, "--store", str(other))
    assert done.returncode == 1
    assert one_error_line(done.stderr) == (
        f"error: --store: {str(other)!r} is a SQLite database of something else (it has tables, none of"
        " flowfsm's); nothing was changed"
    )
    assert _tables_and_journal(other) == before == (sorted(tables), "delete")
    assert sorted(p.name for p in cli.root.iterdir()) == ["app.db", "flowfsm.toml"]


def test_an_empty_sqlite_database_becomes_a_store(cli: Cli) -> None:
    empty = cli.root / "empty.db"
    sqlite3.connect(empty).close()
    assert cli("artifact-created", "com.acme:api:1.0.0", "--store", str(empty)).returncode == 0
    assert cli.json("flows", "--store", str(empty))[0]["artifact"]["version"] == "1.0.0"


def test_an_artifact_version_of_a_mebibyte_is_refused_before_anything_is_stored(cli: Cli) -> None:
    line = '{"type": "ArtifactCreated", "artifact": {"group": "com.acme", "name": "api", "version": "%s"}}\n'
    done = cli("handle", "-", stdin=line % ("v" * (2**20 - 200)))
    assert done.returncode == 1
    assert one_error_line(done.stderr).startswith("error: line 1: $.artifact.version: ")
    assert not cli.store.exists()


def _run_with_closed(cli: Cli, fd: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``flowfsm`` started with file descriptor ``fd`` closed, as a daemon or cron may start it."""
    env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog)}
    return subprocess.run(
        [FLOWFSM, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        cwd=cli.root,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(fd),  # in the child, before exec
    )


def test_a_closed_standard_output_is_one_error_line(cli: Cli) -> None:
    flow_id = _with_a_flow(cli)
    for args in (["flows"], ["show", flow_id, "--json"], ["artifact-created", "com.acme:api:2.0"]):
        done = _run_with_closed(cli, 1, *args)
        assert done.returncode == 1, args
        assert one_error_line(done.stderr) == "error: cannot write the output: Bad file descriptor"


def test_handle_without_standard_input_or_from_a_file_that_fails_is_one_error_line(cli: Cli) -> None:
    closed = _run_with_closed(cli, 0, "handle", "-")
    assert closed.returncode == 1
    assert one_error_line(closed.stderr) == "error: SOURCE: there is no standard input to read"
    failing = run_raw(cli, "handle", "/proc/self/mem")  # reading its first page fails: EIO
    assert failing.returncode == 1
    assert one_error_line(failing.stderr) == "error: SOURCE: cannot read '/proc/self/mem': Input/output error"
    assert not cli.store.exists()
