"""The ``flowfsm`` console script, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowfsm import Artifact, ArtifactCreated, FlowEngine
from flowfsm.catalog import Catalog
from flowfsm.diagrams import mermaid
from flowfsm.emitters import RecordingEmitter
from flowfsm.repositories import SQLiteRepository

from .test_http import SECRET, Receiver

FLOWFSM = str(Path(sys.executable).with_name("flowfsm"))

CATALOG = """
[[services]]
id = "svc-api"
artifacts = ["com.acme:api"]
pipeline = {{ name = "default", environments = [{{ name = "dev", promotions = ["smoke"] }}, {{ name = "prod" }}] }}

[[services.webhooks]]
id = "deployer"
event = "deployment-created"
actions = [{{ name = "deploy", url = "{url}", secret = "{secret}" }}]
"""


class Cli:
    """Runs ``flowfsm`` with a store and a catalog in a temporary directory."""

    def __init__(self, root: Path, url: str = "https://cd.example/deploy") -> None:
        self.root = root
        self.store = root / "flows.db"
        self.catalog = root / "flowfsm.toml"
        self.catalog.write_text(CATALOG.format(url=url, secret=SECRET))

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLOWFSM_STORE": str(self.store), "FLOWFSM_CATALOG": str(self.catalog)}
        env["COLUMNS"] = "200"
        return subprocess.run(
            [FLOWFSM, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=60,
            check=False,
        )

    def json(self, *args: str) -> Any:
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def stored(self) -> list[tuple[str, int, str]]:
        with SQLiteRepository(self.store) as repository:
            return [(f.id, f.version, f.state.value) for f in repository.list_flows(limit=1000)]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def test_the_triggers_drive_a_flow_to_success(cli: Cli) -> None:
    created = cli.json("artifact-created", "com.acme:api:1.4.0")
    flow = created["flows"][0]
    assert flow["state"] == "inProgress"
    assert [r["event"] for r in created["hookRequests"]] == ["deployment-created"]
    dev, prod = flow["deployments"]
    assert cli.json("deployment-started", dev["id"])["flows"][0]["deployments"][0]["state"] == "started"
    assert cli.json("deployment-started", dev["id"])["duplicate"] is True
    cli.json("deployment-completed", dev["id"])
    smoke = dev["promotions"][0]["id"]
    passed = cli.json("promotion-completed", dev["id"], smoke, "--result", "passed", "--details", '{"p99": 120}')
    assert [r["event"] for r in passed["hookRequests"]] == ["deployment-created"]  # prod, announced
    cli.json("deployment-started", prod["id"])
    done = cli.json("deployment-completed", prod["id"])
    assert done["flows"][0]["state"] == "success"
    assert cli.stored() == [(flow["id"], 6, "success")]  # six applied triggers; the repeat changed nothing
    human = cli("flows")
    assert human.returncode == 0
    assert "com.acme:api:1.4.0" in human.stdout
    assert "success" in human.stdout


def test_a_failed_promotion_fails_the_flow(cli: Cli) -> None:
    dev = cli.json("artifact-created", "com.acme:api:2.0.0")["flows"][0]["deployments"][0]
    cli.json("deployment-started", dev["id"])
    cli.json("deployment-completed", dev["id"])
    failed = cli.json(
        "promotion-completed", dev["id"], dev["promotions"][0]["id"], "--result", "failed", "--details", '{"x": 1}'
    )
    assert failed["flows"][0]["state"] == "failed"
    assert cli.json("flows", "--state", "failed")[0]["id"] == failed["flows"][0]["id"]
    assert cli.json("flows", "--state", "success") == []


def test_a_failed_deployment_fails_the_flow(cli: Cli) -> None:
    dev = cli.json("artifact-created", "com.acme:api:2.1.0")["flows"][0]["deployments"][0]
    cli.json("deployment-started", dev["id"])
    failed = cli.json("deployment-failed", dev["id"], "image pull failed")
    assert failed["flows"][0]["state"] == "failed"
    assert failed["flows"][0]["deployments"][0]["state"] == "failed"
    assert cli.json("deployment-failed", dev["id"], "image pull failed")["duplicate"] is True
    refused = cli("deployment-completed", dev["id"])
    assert refused.returncode == 1
    assert "the CD system reported it failed" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deployment-started", "nope"], "error: unknown deployment 'nope'"),
        (["artifact-created", "com.acme:api"], "expected GROUP:NAME:VERSION"),
        (["promotion-completed", "d", "p", "--result", "passed", "--details", "{oops"], "--details: not JSON"),
        (["show", "nope"], "error: no flow, deployment or artifact 'nope' in the store"),
        (["flows", "--state", "sideways"], "'sideways' is not one of"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(cli: Cli, args: list[str], message: str) -> None:
    cli.json("artifact-created", "com.acme:api:1.0.0")
    before = cli.stored()
    done = cli(*args)
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert cli.stored() == before


def test_a_refused_transition_names_what_and_why(cli: Cli) -> None:
    prod = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]["deployments"][1]
    before = cli.stored()
    done = cli("deployment-completed", prod["id"])
    assert done.returncode == 1
    assert f"cannot complete deployment '{prod['id']}' in state 'notStarted'" in done.stderr
    assert cli.stored() == before


def test_a_broken_catalog_and_a_usage_mistake(cli: Cli) -> None:
    cli.catalog.write_text(cli.catalog.read_text().replace('"deployment-created"', '"deployment-exploded"'))
    broken = cli("artifact-created", "com.acme:api:1.0.0")
    assert broken.returncode == 1
    assert f"{cli.catalog}: $.services[0].webhooks[0].event" in broken.stderr
    assert not cli.store.exists() or cli.stored() == []
    checked = cli("catalog", "validate", str(cli.catalog))
    assert checked.returncode == 1
    assert "deployment-exploded" in checked.stderr
    assert cli("deployment-started").returncode == 2  # the id is missing


def test_catalog_validate(cli: Cli) -> None:
    assert cli.json("catalog", "validate", str(cli.catalog)) == {"valid": True, "services": ["svc-api"]}
    assert "ok:" in cli("catalog", "validate", str(cli.catalog)).stdout


def test_handle_reads_json_lines_and_stops_at_the_first_bad_one(cli: Cli) -> None:
    flow = cli.json("artifact-created", "com.acme:api:3.0.0")["flows"][0]
    dev = flow["deployments"][0]
    lines = [
        {"type": "DeploymentStarted", "deploymentId": dev["id"]},
        {"type": "DeploymentCompleted", "deploymentId": dev["id"]},
        {"type": "DeploymentStarted", "deploymentId": "nope"},
        {"type": "DeploymentStarted", "deploymentId": flow["deployments"][1]["id"]},
    ]
    done = cli("handle", "-", "--json", stdin="\n".join(json.dumps(line) for line in lines) + "\n")
    assert done.returncode == 1
    assert "error: line 3: unknown deployment 'nope'" in done.stderr
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["flows"][0]["deployments"][0]["state"] for o in outcomes] == ["started", "completed"]
    assert cli.stored() == [(flow["id"], 3, "inProgress")]


def test_show_is_a_timeline(cli: Cli) -> None:
    flow = cli.json("artifact-created", "com.acme:api:4.0.0")["flows"][0]
    cli.json("deployment-started", flow["deployments"][0]["id"])
    shown = cli.json("show", flow["id"])
    assert shown["flow"]["id"] == flow["id"]
    assert [r["state"] for r in shown["hookRequests"]] == ["pending"]
    human = cli("show", flow["id"]).stdout
    assert "com.acme:api:4.0.0" in human
    assert "deployment-created" in human
    assert re.search(r"dev\s+started", human)


def test_show_says_which_requests_the_engine_delivered_inline(cli: Cli) -> None:
    """The library's engine with an emitter delivers at once and logs no attempt."""
    with SQLiteRepository(cli.store) as repository:
        engine = FlowEngine(Catalog.from_file(cli.catalog), repository, RecordingEmitter())
        flow = engine.handle(ArtifactCreated(Artifact("com.acme", "api", "6.0.0"))).flows[0]
    rows = [line for line in cli("show", flow.id).stdout.splitlines() if "deployer/deploy" in line]
    assert len(rows) == 1
    assert "delivered" in rows[0]
    assert rows[0].rstrip().endswith("inline")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_dispatch_delivers_over_http(tmp_path: Path, receiver: Receiver) -> None:
    cli = Cli(tmp_path, url=receiver.url("/deploy"))
    created = cli.json("artifact-created", "com.acme:api:5.0.0")
    done = cli("dispatch")
    assert done.returncode == 0, done.stderr
    assert "delivered 1; retried 0; dead 0; pending 0" in done.stdout
    ((headers, _),) = receiver.bodies("/deploy")
    assert headers["webhook-id"] == created["hookRequests"][0]["id"]


def test_dispatch_counts_the_dead_apart_and_logs_why(tmp_path: Path, receiver: Receiver) -> None:
    cli = Cli(tmp_path, url=receiver.url("/deploy"))
    created = cli.json("artifact-created", "com.acme:api:5.0.0")
    receiver.answer("/deploy", (410, {}, 0.0, b"gone"))
    done = cli("dispatch")
    assert done.returncode == 0, done.stderr
    assert "delivered 0; retried 0; dead 1; pending 0" in done.stdout
    request_id = created["hookRequests"][0]["id"]
    assert f"WARNING hook request {request_id} (deployment-created) is dead after 1 attempt(s)" in done.stderr
    assert "(status 410)" in done.stderr


def test_dispatch_reports_a_retry_with_its_time_and_logs_it(tmp_path: Path, receiver: Receiver) -> None:
    cli = Cli(tmp_path, url=receiver.url("/deploy"))
    created = cli.json("artifact-created", "com.acme:api:5.0.0")
    receiver.answer("/deploy", (503, {"retry-after": "120"}, 0.0, b"busy"))
    done = cli("dispatch")
    assert done.returncode == 0, done.stderr
    line = re.search(r"delivered 0; retried 1 \(next attempt at (\S+)\); dead 0; pending 1", done.stdout)
    assert line is not None, done.stdout
    request_id = created["hookRequests"][0]["id"]
    logged = re.search(
        rf"WARNING hook request {re.escape(request_id)} \(deployment-created\) failed: HTTP 503 Service Unavailable"
        r" \(status 503\); attempt 1, next at (\S+)",
        done.stderr,
    )
    assert logged is not None, done.stderr
    assert logged[1] == line[1]


def test_diagrams(cli: Cli) -> None:
    done = cli("diagram", "deployment")
    assert done.stdout == mermaid("deployment")
    picture = cli("diagram", "deployment", "--format", "svg").stdout
    texts = {t.text for t in ET.fromstring(picture).iter("{http://www.w3.org/2000/svg}text")}
    assert {"notStarted", "started", "completed", "success", "failed"} <= texts
    assert cli("diagram", "nothing").returncode == 2


def test_the_demo_in_a_terminal(tmp_path: Path) -> None:
    """``flowfsm demo`` in a pseudo-terminal: what a person sees."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [FLOWFSM, "demo", "--store", str(tmp_path / "demo.db")],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        close_fds=True,
    )
    os.close(terminal)
    screen = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the demo has finished
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert process.wait(30) == 0
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # a terminal gets colour and emphasis
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "(SQLite)" in plain
    assert "prod: completed → success" in plain
    assert "staging.perf: pending → failed" in plain
    assert re.search(r"com\.acme:api:1\.4\.0\s*│\s*success", plain)
    assert "HookRequests pending delivery: 0" in plain
    assert "whsec_" not in plain
    with SQLiteRepository(tmp_path / "demo.db") as repository:
        assert sorted(f.state.value for f in repository.list_flows()) == ["failed", "success"]


# --- what users type is data: printed as it is, refused in one line, never a traceback ---


def run_raw(cli: Cli, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``flowfsm`` with bytes in and out: for input that is not UTF-8 (argv too: an
    argument may hold surrogate-escaped bytes, written back to argv as those bytes)."""
    env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog), "COLUMNS": "200"}
    return subprocess.run(
        [FLOWFSM, *args], input=stdin, capture_output=True, env=env, cwd=cli.root, timeout=60, check=False
    )


def one_error_line(stderr: str | bytes) -> str:
    text = stderr.decode("utf-8", "backslashreplace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


MARKUP_VERSIONS = ["1.0[rc1]", "1.0[/x]", "[bold]2.0[/bold]", "3.0[link=x]", "4.0\\"]


def test_ids_and_versions_print_exactly_as_given(cli: Cli) -> None:
    """Square brackets and :codes: are text: Rich must not read them as markup or emoji."""
    cli.catalog.write_text(cli.catalog.read_text().replace('["com.acme:api"]', '["com.acme:api", "com.acme:package"]'))
    ids = ["com.acme:package:1.0", *(f"com.acme:api:{v}" for v in MARKUP_VERSIONS)]
    flow_ids = {}
    for artifact_id in ids:
        done = cli("artifact-created", artifact_id)
        assert done.returncode == 0, done.stderr
        assert f" {artifact_id} svc-api " in done.stdout
        flow_ids[artifact_id] = cli.json("flows", "--limit", "1")[0]["id"]
    listed = cli("flows")
    assert listed.returncode == 0, listed.stderr
    for artifact_id, flow_id in flow_ids.items():
        assert re.search(rf"^\s*{re.escape(artifact_id)}\s+svc-api\s+inProgress", listed.stdout, re.M), artifact_id
        shown = cli("show", flow_id)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"{artifact_id} → svc-api: inProgress\n")
    assert "📦" not in listed.stdout


def test_error_messages_print_user_data_exactly(cli: Cli) -> None:
    cli.json("artifact-created", "com.acme:api:1.0.0")
    for bad in ["[/x]", "a[bold]b", ":package:"]:
        done = cli("deployment-started", bad)
        assert done.returncode == 1
        assert one_error_line(done.stderr) == f"error: unknown deployment {bad!r}"


def test_reading_a_store_that_does_not_exist_creates_nothing(cli: Cli) -> None:
    for args in (["flows"], ["show", "f1"], ["deployment-started", "d1"], ["deployment-completed", "d1"]):
        done = cli(*args)
        assert done.returncode == 1
        assert one_error_line(done.stderr) == f"error: --store: no store at {str(cli.store)!r}"
    assert list(cli.root.iterdir()) == [cli.catalog]


@pytest.mark.parametrize("command", [["flows"], ["show", "f1"], ["artifact-created", "com.acme:api:1.0"]])
def test_an_empty_store_option_is_refused(cli: Cli, command: list[str]) -> None:
    done = cli(*command, "--store", "")
    assert done.returncode == 1
    assert one_error_line(done.stderr) == "error: --store: is empty: give a SQLite file or a postgresql:// URL"


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        (("", ""), ["artifact-created", "com.acme:api"], "error: artifact: expected GROUP:NAME:VERSION"),
        (("", ""), ["artifact-created", "com.acme: :1.0"], "error: artifact.name: must be a non-blank string"),
        (
            ('id = "svc-api"', 'id = "svc-api"\nfailureStrategy = "RETRY_TWICE"'),
            ["artifact-created", "com.acme:api:1.0"],
            "failureStrategy: service 'svc-api' names unknown failure strategy 'RETRY_TWICE'",
        ),
        (('event = "deployment-created"', 'event = "nope"'), ["artifact-created", "com.acme:api:1.0"], ""),
        (("", ""), ["handle", "-"], ""),  # an empty input: nothing to store
    ],
)
def test_a_failed_artifact_created_creates_no_store(
    cli: Cli, change: tuple[str, str], args: list[str], message: str
) -> None:
    cli.catalog.write_text(cli.catalog.read_text().replace(*change))
    done = cli(*args, stdin="")
    if args[0] == "handle":
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1
        line = one_error_line(done.stderr)
        assert line.startswith("error: ")
        assert message.removeprefix("error: ") in line
    assert not cli.store.exists()


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{}", "error: line 1: $.type: required key missing"),
        (b'{"type": "Nope"}', "error: line 1: $.type: 'Nope' is not one of 'ArtifactCreated'"),
        (b"[1, 2]", "error: line 1: $: expected a JSON object, got [1, 2]"),
        (b'{"type": "ArtifactCreated", "artifact": "g:n:v"}', "error: line 1: $.artifact: expected a JSON object"),
        (b'{"type": "DeploymentStarted", "deploymentId": 7}', "error: line 1: $.deploymentId: expected a string"),
        (b'{"type": "DeploymentStarted", "deploymentId": "\\ud800"}', "error: line 1: $.deploymentId: contains a lone"),
        (b'{"type": "DeploymentStarted", "deploymentId": "a\\u0000"}', "error: line 1: $.deploymentId: contains NUL"),
        (
            b'{"type": "PromotionCompleted", "deploymentId": "d", "promotionId": "p", "results": 5}',
            "$.results: expected a list",
        ),
        (DEEP, "error: line 1: $: nested too deeply to read"),
        (b"1" * 5000, "error: line 1: $: a number has too many digits to read"),
        (b'{"type": "DeploymentStarted", "deploymentId": "\xff"}', "error: line 1: $: not UTF-8 (byte 48)"),
        (b"{", "error: line 1: $: not JSON: Expecting property name"),
    ],
)
def test_handle_refuses_malformed_lines_in_one_line(cli: Cli, line: bytes, message: str) -> None:
    cli.json("artifact-created", "com.acme:api:1.0.0")
    before = cli.stored()
    done = run_raw(cli, "handle", "-", stdin=line + b"\n")
    assert done.returncode == 1
    assert message in one_error_line(done.stderr)
    assert cli.stored() == before


def test_handle_on_a_file_that_is_not_there(cli: Cli) -> None:
    done = cli("handle", "missing.jsonl")
    assert done.returncode == 1
    assert one_error_line(done.stderr) == "error: SOURCE: cannot read 'missing.jsonl': No such file or directory"
    assert not cli.store.exists()


def test_results_details_that_are_not_storable_json(cli: Cli) -> None:
    dev = cli.json("artifact-created", "com.acme:api:1.0.0")["flows"][0]["deployments"][0]
    cli.json("deployment-started", dev["id"])
    cli.json("deployment-completed", dev["id"])
    smoke = dev["promotions"][0]["id"]
    before = cli.stored()
    for details, message in [
        ("[1, 2]", "error: --details: expected a JSON object, got [1, 2]"),
        ('{"x": NaN}', "error: --details: not JSON: NaN is not a JSON number"),
        ('{"x": -Infinity}', "error: --details: not JSON: -Infinity is not a JSON number"),
        ('{"x": 1e999}', "error: --details: has inf, which is not a JSON number (at ['x'])"),
        ('{"x": "\\u0000"}', "error: --details: has a string that contains NUL (\\u0000) (at ['x'])"),
        ('{"x": ' + "1" * 5000 + "}", "error: --details: a number has too many digits to read"),
        ('{"x": ' + "[" * 100_000, "error: --details: nested too deeply to read"),
        ('{"x": ' + "[" * 150 + "]" * 150 + "}", "error: --details: is nested more than 100 deep"),
    ]:
        done = cli("promotion-completed", dev["id"], smoke, "--result", "passed", "--details", details)
        assert done.returncode == 1, details
        assert one_error_line(done.stderr).startswith(message), details
    assert cli.stored() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deployment-started", "\udcff"], "error: deployment_id: contains a lone surrogate"),
        (["promotion-completed", "d", "\udcff", "--result", "passed"], "error: promotion_id: contains a lone"),
        (["artifact-created", "com.acme:api:1.\udcff"], "error: artifact.version: contains a lone surrogate"),
        (["show", "\udcff"], "error: ID: contains a lone surrogate"),
        (["flows", "--service", "svc-\udcff"], "error: --service: contains a lone surrogate"),
        (["flows", "--state", "\udcff"], "error: --state: '\\udcff' is not one of"),
    ],
)
def test_arguments_that_are_not_utf8(cli: Cli, args: list[str], message: str) -> None:
    cli.json("artifact-created", "com.acme:api:1.0.0")
    before = cli.stored()
    done = run_raw(cli, *args)  # "\udcff" reaches argv as the byte 0xff
    assert done.returncode == 1
    assert one_error_line(done.stderr).startswith(message)
    assert cli.stored() == before


def test_version_prints_the_installed_flowfsm(cli: Cli) -> None:
    import flowfsm

    done = cli("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"flowfsm {flowfsm.__version__}\n", "")
    assert "--version" in cli("--help").stdout
    assert "artifact-created" in cli("--help").stdout  # the commands are listed as before
