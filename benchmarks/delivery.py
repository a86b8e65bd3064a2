"""Delivery benchmark: the dispatcher with HttpEmitter against a bare httpx loop."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from flowfsm import (
    Action,
    Artifact,
    ArtifactCreated,
    Catalog,
    Environment,
    FlowEngine,
    HookEvent,
    Pipeline,
    Service,
    Webhook,
)
from flowfsm.dispatch import Dispatcher
from flowfsm.emitters import HttpEmitter
from flowfsm.emitters.http import cloud_event, webhook_headers
from flowfsm.repositories import InMemoryRepository

from .core import interleaved
from .report import Report

SECRET = "whsec_Zmxvd2ZzbS1iZW5jaC1zZWNyZXQtMDAwMQ=="


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep connections open, as real receivers do

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def _serve(port_out: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


def _catalog(url: str) -> Catalog:
    service = Service(
        "svc",
        artifacts=["com.acme:api"],
        pipeline=Pipeline("p", [Environment("dev")]),
        webhooks=[Webhook("wh", HookEvent.DEPLOYMENT_CREATED, [Action("a", url=url, secret=SECRET)])],
    )
    return Catalog([service])


def ours(catalog: Catalog, emitter: HttpEmitter, count: int, concurrency: int, offset: int) -> float:
    """HookRequests per second through the outbox: dispatcher + HttpEmitter."""
    repository = InMemoryRepository()
    engine = FlowEngine(catalog, repository, None)
    for n in range(count):  # one request per flow, so concurrency can spread them
        engine.handle(ArtifactCreated(Artifact("com.acme", "api", f"{offset}.{n}")))
    dispatcher = Dispatcher(repository, emitter, concurrency=concurrency, batch=100)
    start = time.perf_counter()
    delivered = dispatcher.run_once().delivered
    elapsed = time.perf_counter() - start
    dispatcher.close()
    assert delivered == count, delivered
    return count / elapsed


def bare(
    client: httpx.Client, url: str, bodies: list[bytes], concurrency: int, headers: list[dict[str, str]] | None = None
) -> float:
    """The same bodies posted by a plain httpx loop (no signing, no bookkeeping);
    with ``headers``, each body's own headers too (made beforehand)."""
    plain = {"content-type": "application/cloudevents+json"}
    each = headers or [plain] * len(bodies)

    def post(body: bytes, headers: dict[str, str]) -> None:
        client.post(url, content=body, headers=headers)

    start = time.perf_counter()
    if concurrency == 1:
        for body, header in zip(bodies, each, strict=True):
            post(body, header)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, bodies, each))
    return len(bodies) / (time.perf_counter() - start)


def run(report: Report, quick: bool) -> None:
    report.section("HTTP delivery (receiver in another process, on 127.0.0.1)")
    ctx = multiprocessing.get_context("spawn")
    port_out = ctx.Queue()
    server = ctx.Process(target=_serve, args=(port_out,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port_out.get(timeout=30)}/hooks"
        catalog = _catalog(url)
        count = 200 if quick else 600
        sample = FlowEngine(catalog, InMemoryRepository(), None)
        requests = [
            r
            for n in range(count)
            for r in sample.handle(ArtifactCreated(Artifact("com.acme", "api", f"s.{n}"))).hook_requests
        ]
        bodies = [json.dumps(cloud_event(r, "urn:flowfsm")).encode() for r in requests]
        now = int(time.time())
        headers = [webhook_headers(r.id, now, body, [SECRET]) for r, body in zip(requests, bodies, strict=True)]
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        with httpx.Client(limits=limits) as client, HttpEmitter(catalog) as emitter:
            for concurrency in (1, 8):
                batches = itertools.count()

                def mine_once(c: int = concurrency, batches: Iterator[int] = batches) -> float:
                    return ours(catalog, emitter, count, c, next(batches))

                def theirs_once(c: int = concurrency) -> float:
                    return bare(client, url, bodies, c)

                def theirs_signed_once(c: int = concurrency) -> float:
                    return bare(client, url, bodies, c, headers)

                mine, theirs, theirs_signed = interleaved(
                    3 if quick else 11, mine_once, theirs_once, theirs_signed_once
                )
                report.ratio(
                    f"HookRequests/s, {concurrency} concurrent: dispatcher + HttpEmitter vs bare httpx",
                    mine,
                    theirs,
                    "≥ 0.8×",
                    mine / theirs >= 0.8,
                    unit="/s",
                    note="ours signs, builds the CloudEvent and logs each attempt (in-memory outbox)"
                    if concurrency == 1
                    else "",
                )
                report.ratio(
                    f"the same vs bare httpx sending the same headers too ({concurrency} concurrent)",
                    mine,
                    theirs_signed,
                    "(context)",
                    None,
                    unit="/s",
                    note="the receiver parses the three webhook-* headers in both" if concurrency == 1 else "",
                )
    finally:
        server.terminate()
        server.join(10)
