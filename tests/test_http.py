"""Webhook delivery over real HTTP, to a receiver on 127.0.0.1 started by the tests.

Signatures are checked with the Standard Webhooks library and bodies parsed with
the CloudEvents SDK: independent code, as a receiver would use.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cloudevents.v1.http import from_http
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    DeliveryState,
    DeploymentStarted,
    Environment,
    FlowEngine,
    HookEvent,
    HookRequest,
    Pipeline,
    Service,
    ValidationError,
    Webhook,
)
from flowfsm.converter import unstructure
from flowfsm.dispatch import Dispatcher, RetryPolicy
from flowfsm.emitters import HttpEmitter
from flowfsm.repositories import SQLiteRepository

SECRET = "whsec_" + base64.b64encode(b"receiver-secret-0123456789").decode()
NEXT_SECRET = "whsec_" + base64.b64encode(b"rotated-secret-9876543210ab").decode()
NO_WAIT = RetryPolicy(delays=(0.0,), max_attempts=5, jitter=0.0)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers as scripted."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[tuple[int, dict[str, str], float, bytes]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                queue = receiver.script.get(self.path, [])
                status, headers, delay, answer = queue.pop(0) if queue else (200, {}, 0.0, b"ok")
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *responses: tuple[int, dict[str, str], float, bytes]) -> None:
        self.script.setdefault(path, []).extend(responses)

    def bodies(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def service(url: str, secret: str | None = SECRET, event: HookEvent = HookEvent.DEPLOYMENT_CREATED) -> Service:
    return Service(
        "svc-api",
        artifacts=["com.acme:api"],
        pipeline=Pipeline("p", [Environment("dev", ["smoke"]), Environment("prod")]),
        webhooks=[Webhook("wh", event, [Action("notify", url=url, secret=secret)])],
    )


def outbox_engine(tmp_path: Path, catalog: Catalog) -> tuple[FlowEngine, SQLiteRepository]:
    repository = SQLiteRepository(tmp_path / "flows.db")
    return FlowEngine(catalog, repository, None), repository


def created(engine: FlowEngine, version: str = "1.0") -> list[HookRequest]:
    return list(engine.handle(ArtifactCreated(Artifact("com.acme", "api", version))).hook_requests)


def test_a_delivery_is_a_signed_cloud_event(receiver: Receiver) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    with HttpEmitter(catalog, source="urn:flowfsm:test") as emitter:
        engine = FlowEngine(catalog, SQLiteRepository(":memory:"), emitter)
        (request,) = created(engine)
    ((headers, body),) = receiver.bodies("/hooks")
    assert headers["content-type"] == "application/cloudevents+json"
    assert headers["webhook-id"] == request.id
    Verifier(SECRET).verify(body, headers)
    event = from_http(headers, body)
    assert event["id"] == request.id
    assert event["specversion"] == "1.0"
    assert event["type"] == "dev.flowfsm.deployment.created"
    assert event["source"] == "urn:flowfsm:test"
    assert event["subject"] == request.payload.deployment.id
    assert event.data == unstructure(request.payload)
    assert engine.repository.count_pending() == 0


def test_a_tampered_body_or_a_wrong_secret_is_rejected(receiver: Receiver) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    with HttpEmitter(catalog) as emitter:
        created(FlowEngine(catalog, SQLiteRepository(":memory:"), emitter))
    ((headers, body),) = receiver.bodies("/hooks")
    tampered = body.replace(b'"dev"', b'"prod"')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        Verifier(SECRET).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(NEXT_SECRET).verify(body, headers)


def test_rotating_secrets_sign_with_each(receiver: Receiver) -> None:
    catalog = Catalog([service(receiver.url("/hooks"), secret=f"{SECRET} {NEXT_SECRET}")])
    with HttpEmitter(catalog) as emitter:
        created(FlowEngine(catalog, SQLiteRepository(":memory:"), emitter))
    ((headers, body),) = receiver.bodies("/hooks")
    assert len(headers["webhook-signature"].split()) == 2
    Verifier(SECRET).verify(body, headers)
    Verifier(NEXT_SECRET).verify(body, headers)


def test_a_failed_delivery_is_retried_with_the_same_id(receiver: Receiver, tmp_path: Path) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    engine, repository = outbox_engine(tmp_path, catalog)
    (request,) = created(engine)
    receiver.answer("/hooks", (503, {"retry-after": "0"}, 0.0, b"busy"), (500, {}, 0.0, b"oops"))
    with HttpEmitter(catalog) as emitter:
        dispatcher = Dispatcher(repository, emitter, retry=NO_WAIT)
        assert dispatcher.run_once().delivered == 0
        assert dispatcher.run_once().delivered == 0
        assert dispatcher.run_once().delivered == 1
    sent = receiver.bodies("/hooks")
    assert [h["webhook-id"] for h, _ in sent] == [request.id] * 3
    (record,) = repository.hook_requests(request.flow_id)
    assert record.state is DeliveryState.DELIVERED
    assert [a.status_code for a in record.attempts] == [503, 500, 200]
    assert record.attempts[0].error == "HTTP 503 Service Unavailable"


def test_retry_after_is_honoured(receiver: Receiver, tmp_path: Path) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    engine, repository = outbox_engine(tmp_path, catalog)
    created(engine)
    receiver.answer("/hooks", (429, {"retry-after": "1"}, 0.0, b"slow down"))
    with HttpEmitter(catalog) as emitter:
        dispatcher = Dispatcher(repository, emitter, retry=NO_WAIT)
        assert dispatcher.run_once().delivered == 0
        assert dispatcher.run_once().delivered == 0  # still waiting, though the policy says 0 s
        time.sleep(1.2)
        assert dispatcher.run_once().delivered == 1


def test_410_gone_disables_the_endpoint_until_enabled(receiver: Receiver, tmp_path: Path) -> None:
    url = receiver.url("/gone")
    catalog = Catalog([service(url)])
    engine, repository = outbox_engine(tmp_path, catalog)
    (first,) = created(engine, "1.0")
    receiver.answer("/gone", (410, {}, 0.0, b"gone"))
    with HttpEmitter(catalog) as emitter:
        dispatcher = Dispatcher(repository, emitter, retry=NO_WAIT)
        dispatcher.run_once()
        assert repository.disabled_endpoints() == {url}
        (second,) = created(engine, "2.0")
        dispatcher.run_once()
        assert len(receiver.bodies("/gone")) == 1  # the second was never sent
        dead = repository.dead_requests()
        assert [r.request.id for r in dead] == [first.id, second.id]
        assert dead[1].attempts[0].error == "endpoint disabled (it answered 410 Gone)"
        repository.enable_endpoint(url)
        repository.requeue([first.id, second.id])
        assert dispatcher.run_once().delivered == 2
    assert [h["webhook-id"] for h, _ in receiver.bodies("/gone")] == [first.id, first.id, second.id]


@pytest.mark.parametrize("status", [400, 404, 302])
def test_other_4xx_and_redirects_fail_without_retry(receiver: Receiver, tmp_path: Path, status: int) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    engine, repository = outbox_engine(tmp_path, catalog)
    (request,) = created(engine)
    receiver.answer("/hooks", (status, {"location": receiver.url("/elsewhere")}, 0.0, b"no"))
    with HttpEmitter(catalog) as emitter:
        Dispatcher(repository, emitter, retry=NO_WAIT).run_once()
    (dead,) = repository.dead_requests()
    assert dead.request.id == request.id
    assert [a.status_code for a in dead.attempts] == [status]
    assert receiver.bodies("/elsewhere") == []  # redirects are not followed


def test_a_receiver_down_then_up_gets_everything(tmp_path: Path) -> None:
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = reserved.getsockname()[1]
    catalog = Catalog([service(f"http://127.0.0.1:{port}/hooks", event=HookEvent.DEPLOYMENT_STARTED)])
    engine, repository = outbox_engine(tmp_path, catalog)
    flows = [engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"{n}.0"))).flows[0] for n in range(3)]
    made = [r for f in flows for r in engine.handle(DeploymentStarted(f.deployments[0].id)).hook_requests]
    with HttpEmitter(catalog, timeout=2) as emitter:
        dispatcher = Dispatcher(repository, emitter, retry=NO_WAIT)
        assert dispatcher.run_once().delivered == 0
        assert repository.count_pending() == 3
        reserved.close()
        receiver = Receiver(port)
        try:
            assert dispatcher.run_once().delivered == 3
        finally:
            receiver.close()
    assert [h["webhook-id"] for h, _ in receiver.bodies("/hooks")] == [r.id for r in made]
    for record in (repository.hook_requests(f.id)[-1] for f in flows):
        assert record.state is DeliveryState.DELIVERED
        assert record.attempts[0].error is not None
        assert record.attempts[-1].status_code == 200


def test_a_slow_receiver_times_out_and_stays_pending(receiver: Receiver, tmp_path: Path) -> None:
    catalog = Catalog([service(receiver.url("/slow"))])
    engine, repository = outbox_engine(tmp_path, catalog)
    created(engine)
    receiver.answer("/slow", (200, {}, 1.0, b"late"))
    with HttpEmitter(catalog, timeout=0.2) as emitter:
        assert Dispatcher(repository, emitter, retry=RetryPolicy(delays=(60.0,))).run_once().delivered == 0
    assert repository.count_pending() == 1
    (record,) = repository.hook_requests(repository.list_flows()[0].id)
    assert record.attempts[0].error == "timed out after 0.2 s"


def test_a_huge_answer_is_read_only_so_far(receiver: Receiver, tmp_path: Path) -> None:
    catalog = Catalog([service(receiver.url("/big"))])
    engine, repository = outbox_engine(tmp_path, catalog)
    created(engine)
    receiver.answer("/big", (200, {}, 0.0, b"x" * 4_000_000))
    with HttpEmitter(catalog, max_response_bytes=1024) as emitter:
        assert Dispatcher(repository, emitter).run_once().delivered == 1


def test_hosts_outside_the_allowlist_are_refused(receiver: Receiver, tmp_path: Path) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    engine, repository = outbox_engine(tmp_path, catalog)
    created(engine)
    with HttpEmitter(catalog, allowed_hosts={"hooks.example"}) as emitter:
        Dispatcher(repository, emitter).run_once()
    (dead,) = repository.dead_requests()
    assert dead.attempts[0].error == "host '127.0.0.1' is not in allowed_hosts"
    assert receiver.received == []


def test_concurrent_delivery_keeps_each_flows_order(receiver: Receiver, tmp_path: Path) -> None:
    catalog = Catalog(
        [
            Service(
                "svc-api",
                artifacts=["com.acme:api"],
                pipeline=Pipeline("p", [Environment("dev")]),
                webhooks=[
                    Webhook(f"wh-{e.value}", e, [Action("a", url=receiver.url(f"/{e.value}"), secret=SECRET)])
                    for e in HookEvent
                ],
            )
        ]
    )
    engine, repository = outbox_engine(tmp_path, catalog)
    for n in range(12):
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"{n}.0")))
    for flow in repository.list_flows(limit=100):
        engine.handle(DeploymentStarted(flow.deployments[0].id))
    expected = {f.id: [r.request.id for r in repository.hook_requests(f.id)] for f in repository.list_flows(limit=100)}
    with HttpEmitter(catalog) as emitter:
        dispatcher = Dispatcher(repository, emitter, concurrency=8, batch=10)
        assert dispatcher.run_once().delivered == sum(len(ids) for ids in expected.values())
        dispatcher.close()
    order = [h["webhook-id"] for _, h, _ in receiver.received]
    for ids in expected.values():
        assert [i for i in order if i in ids] == ids


def test_urls_and_secrets_are_checked_when_the_catalog_loads() -> None:
    with pytest.raises(ValidationError) as bad_url:
        Action("a", url="ftp://files.example/drop")
    assert bad_url.value.field == "url"
    with pytest.raises(ValidationError) as bad_secret:
        Action("a", url="https://hooks.example", secret="hunter2")
    assert bad_secret.value.field == "secret"
    assert "hunter2" not in str(bad_secret.value)


def test_secrets_appear_in_no_log_line_repr_or_record(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = Catalog([service(receiver.url("/hooks"), secret=f"{SECRET} {NEXT_SECRET}")])
    engine, repository = outbox_engine(tmp_path, catalog)
    created(engine, "1.0")
    created(engine, "2.0")
    receiver.answer("/hooks", (500, {}, 0.0, b"boom"), (410, {}, 0.0, b"gone"))
    with caplog.at_level(logging.DEBUG), HttpEmitter(catalog) as emitter:
        dispatcher = Dispatcher(repository, emitter, retry=NO_WAIT)
        dispatcher.run_once()
        dispatcher.run_once()
        shown = [repr(emitter), repr(catalog), repr(list(catalog)), caplog.text]
        shown += [repr(r) for f in repository.list_flows() for r in repository.hook_requests(f.id)]
        shown += [json.dumps(unstructure(r.request)) for r in repository.dead_requests()]
    assert caplog.text  # the failures were logged
    for text in shown:
        for secret in (SECRET, NEXT_SECRET):
            assert secret not in text
            assert secret.removeprefix("whsec_") not in text
