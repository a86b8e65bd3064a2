"""``flowfsm serve``: the dashboard over a store and a catalog, on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .test_cli import FLOWFSM, Cli
from .test_http import SECRET


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(cli: Cli, *options: str) -> Iterator[str]:
    """``flowfsm serve`` running in a child process; its base URL once it answers."""
    port = free_port()
    env = {**os.environ, "FLOWFSM_STORE": str(cli.store), "FLOWFSM_CATALOG": str(cli.catalog)}
    env["FLOWFSM_DASHBOARD_SECRET"] = "a-secret-of-sixteen-bytes-or-more"
    command = [FLOWFSM, "serve", "--host", "127.0.0.1", "--port", str(port), *options]
    child = subprocess.Popen(command, env=env, cwd=cli.root, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded: the server's start, not a timeout under test
            try:
                httpx.get(f"{base}/static/dashboard.css", timeout=2)
                break
            except httpx.TransportError:
                if child.poll() is not None or time.monotonic() > deadline:
                    why = child.stderr.read() if child.stderr else ""
                    raise AssertionError(f"flowfsm serve did not start: {why}") from None
                time.sleep(0.05)
        yield base
    finally:
        child.terminate()
        child.wait(10)
        if child.stderr:
            child.stderr.close()


def test_serve_shows_the_stores_flows_read_only(cli: Cli) -> None:
    created = cli.json("artifact-created", "com.acme:api:1.0<b>")
    flow_id = created["flows"][0]["id"]
    with serving(cli) as base:
        flows = httpx.get(f"{base}/")
        assert flows.status_code == 200
        assert "com.acme:api:1.0&lt;b&gt;" in flows.text
        page = httpx.get(f"{base}/flows/{flow_id}")
        assert page.status_code == 200
        assert "Read-only" in page.text
        assert SECRET not in page.text
        refused = httpx.post(f"{base}/flows/{flow_id}", data={"action": "abort"})
        assert refused.status_code == 403
    assert cli.stored()[0][2] == "inProgress"


def test_serve_trusts_the_user_header_it_is_given(cli: Cli) -> None:
    flow_id = cli.json("artifact-created", "com.acme:api:1.0")["flows"][0]["id"]
    with serving(cli, "--user-header", "X-Forwarded-User") as base:
        with httpx.Client(base_url=base, headers={"X-Forwarded-User": "ann"}) as client:
            page = client.get(f"/flows/{flow_id}").text
            assert 'Signed in as <strong id="viewer">ann</strong>' in page
            token = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            done = client.post(f"/flows/{flow_id}", data={"action": "pause", "csrf": token})
            assert done.status_code == 303
        anonymous = httpx.get(f"{base}/flows/{flow_id}").text
        assert "Read-only" in anonymous
    history = cli.json("history", flow_id)
    assert (history[-1]["trigger"]["type"], history[-1]["actor"]) == ("PauseFlow", "ann")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--groups-header", "X-Groups"], "--groups-header: needs --user-header"),
        (["--store", "missing.db"], "--store: no store at"),
    ],
)
def test_serve_refuses_what_it_cannot_serve_in_one_line(cli: Cli, options: list[str], message: str) -> None:
    done = cli("serve", "--port", "1", *options)
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_serve_on_an_address_it_cannot_listen_on_is_one_line(cli: Cli) -> None:
    cli.json("artifact-created", "com.acme:api:1.0")
    unknown = cli("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert unknown.returncode == 1
    (line,) = unknown.stderr.strip().splitlines()
    assert line.startswith("error: --host: cannot listen on 'no-such-host.invalid' port 0: ")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines() == [
        f"error: --port: cannot listen on '127.0.0.1' port {port}: Address already in use"
    ]
