"""HttpEmitter against receivers that misbehave, catalogs that change and URLs that
aim inside: the deadline of an attempt, delivery by the catalog of the moment, and
the addresses a delivery may connect to.

Every server is on 127.0.0.1. No test may connect anywhere else: the ``connections``
fixture records every connection the process tries and refuses any that is not
loopback, so a refused address is proven refused before any connection is tried.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from flowfsm import (
    Action,
    Catalog,
    DeliveryError,
    DeliveryState,
    Environment,
    FlowEngine,
    HookEvent,
    HookRequest,
    Pipeline,
    Service,
    ValidationError,
    Webhook,
)
from flowfsm.dispatch import Dispatcher
from flowfsm.emitters import HttpEmitter
from flowfsm.emitters._transport import AddressRules, GuardedBackend
from flowfsm.repositories import SQLiteRepository

from .test_http import NEXT_SECRET, NO_WAIT, SECRET, Receiver, created, outbox_engine, service


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address this process tries to connect to; only loopback is let through."""
    attempts: list[Any] = []
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> None:
        attempts.append(address)
        host = address[0] if isinstance(address, tuple) else ""
        try:
            loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise OSError(errno.ENETUNREACH, "the tests connect to loopback only")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def one_request(catalog: Catalog) -> HookRequest:
    """The deployment-created HookRequest of a new flow (left in an outbox no one reads)."""
    (request,) = created(FlowEngine(catalog, SQLiteRepository(":memory:"), None))
    return request


def failure(emitter: HttpEmitter, request: HookRequest) -> DeliveryError:
    with pytest.raises(DeliveryError) as refused:
        emitter.emit(request)
    return refused.value


# --- 1. timeout bounds a whole attempt ------------------------------------------------------


class Dripper:
    """A receiver on 127.0.0.1 that reads a request, sends ``prompt`` at once, then
    ``drip`` one byte every ``interval`` seconds (until the client leaves)."""

    def __init__(self, prompt: bytes, drip: bytes, interval: float = 0.5) -> None:
        self.prompt, self.drip, self.interval = prompt, drip, interval
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            lengths = [line.split(b":")[1] for line in lines if line.startswith(b"content-length")]
            length = int(lengths[0]) if lengths else 0
            while len(body) < length:
                body += conn.recv(65536)
            try:
                conn.sendall(self.prompt)
                for byte in self.drip:
                    if self.stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the client left

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


DRIPPED_HEADERS = b"HTTP/1.1 200 OK\r\nx-padding: " + b"a" * 60 + b"\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("prompt", "drip"),
    [
        pytest.param(b"", DRIPPED_HEADERS, id="headers"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\n\r\n", b"x" * 60, id="body"),
    ],
)
def test_a_dripping_receiver_cannot_stretch_an_attempt(prompt: bytes, drip: bytes) -> None:
    dripper = Dripper(prompt, drip)  # the whole answer takes 30 s or more
    try:
        catalog = Catalog([service(dripper.url("/hooks"))])
        request = one_request(catalog)
        with HttpEmitter(catalog, timeout=1.0) as emitter:
            start = time.monotonic()
            error = failure(emitter, request)
            elapsed = time.monotonic() - start
    finally:
        dripper.close()
    assert str(error) == "timed out after 1 s"
    assert error.retry
    assert elapsed < 3.0


def test_a_slow_name_resolution_counts_against_the_attempt(receiver: Receiver) -> None:
    release = threading.Event()

    def stuck(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["127.0.0.1"]

    catalog = Catalog([service(f"http://hooks.example:{receiver.port}/hooks")])
    request = one_request(catalog)
    try:
        with HttpEmitter(catalog, timeout=0.5, resolver=stuck) as emitter:
            start = time.monotonic()
            error = failure(emitter, request)
            elapsed = time.monotonic() - start
    finally:
        release.set()
    assert str(error) == "timed out after 0.5 s"
    assert error.retry
    assert elapsed < 2.5
    assert receiver.received == []


# --- 2. a request is delivered as the catalog says when it is sent ------------------------------


def test_a_request_goes_to_its_actions_new_url_signed_with_the_new_secret(receiver: Receiver, tmp_path: Path) -> None:
    engine, repository = outbox_engine(tmp_path, Catalog([service(receiver.url("/old"), secret=SECRET)]))
    (request,) = created(engine)
    moved = Catalog([service(receiver.url("/new"), secret=NEXT_SECRET)])
    with HttpEmitter(moved) as emitter:
        assert Dispatcher(repository, emitter, retry=NO_WAIT).run_once().delivered == 1
    assert receiver.bodies("/old") == []
    ((headers, body),) = receiver.bodies("/new")
    assert headers["webhook-id"] == request.id
    Verifier(NEXT_SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(SECRET).verify(body, headers)


def test_the_disabled_endpoint_check_uses_the_url_the_request_goes_to_now(receiver: Receiver, tmp_path: Path) -> None:
    old, new = receiver.url("/old"), receiver.url("/new")
    engine, repository = outbox_engine(tmp_path, Catalog([service(old)]))
    created(engine, "1.0")
    repository.disable_endpoint(old)
    with HttpEmitter(Catalog([service(new)])) as emitter:  # moved away from the disabled url
        assert Dispatcher(repository, emitter, retry=NO_WAIT).run_once().delivered == 1
    assert len(receiver.bodies("/new")) == 1
    (tmp_path / "back").mkdir()
    engine, repository = outbox_engine(tmp_path / "back", Catalog([service(new)]))
    created(engine, "2.0")
    repository.disable_endpoint(old)
    with HttpEmitter(Catalog([service(old)])) as emitter:  # moved onto the disabled url
        assert Dispatcher(repository, emitter, retry=NO_WAIT).run_once().dead == 1
    assert receiver.bodies("/old") == []
    (dead,) = repository.dead_requests()
    assert dead.attempts[-1].error == "endpoint disabled (it answered 410 Gone)"
    assert emitter.target_url(dead.request) == old


def test_a_410_from_an_actions_new_url_disables_that_url(receiver: Receiver, tmp_path: Path) -> None:
    engine, repository = outbox_engine(tmp_path, Catalog([service(receiver.url("/old"), secret=SECRET)]))
    created(engine)
    receiver.answer("/new", (410, {}, 0.0, b"gone"))
    with HttpEmitter(Catalog([service(receiver.url("/new"), secret=SECRET)])) as emitter:
        assert Dispatcher(repository, emitter, retry=NO_WAIT).run_once().dead == 1
    assert repository.disabled_endpoints() == frozenset({receiver.url("/new")})


def without_the_action(url: str) -> Service:
    return Service(
        "svc-api",
        artifacts=["com.acme:api"],
        pipeline=Pipeline("p", [Environment("dev")]),
        webhooks=[Webhook("wh", HookEvent.DEPLOYMENT_CREATED, [Action("other", url=url, secret=SECRET)])],
    )


@pytest.mark.parametrize(
    ("changed", "reason"),
    [
        pytest.param(
            without_the_action,
            "action 'notify' of webhook 'wh' on deployment-created is no longer in the catalog of service 'svc-api'",
            id="action-removed",
        ),
        pytest.param(
            lambda url: service(url, event=HookEvent.FLOW_FAILED),
            "action 'notify' of webhook 'wh' on deployment-created is no longer in the catalog of service 'svc-api'",
            id="webhook-now-on-another-event",
        ),
        pytest.param(
            lambda url: service(None),  # type: ignore[arg-type]  # an action for other emitters now
            "action 'notify' of webhook 'wh' no longer has a url",
            id="url-removed",
        ),
        pytest.param(
            lambda url: service(url, secret=None),
            "action 'notify' of webhook 'wh' has no secret any more; a signed request is not sent unsigned",
            id="secret-removed",
        ),
        pytest.param(
            lambda url: Service("svc-api", ["com.acme:api"], Pipeline("p", [Environment("dev")])),
            "action 'notify' of webhook 'wh' on deployment-created is no longer in the catalog of service 'svc-api'",
            id="webhook-removed",
        ),
    ],
)
def test_a_request_whose_action_changed_away_dies_unsent_until_the_catalog_is_fixed(
    receiver: Receiver, tmp_path: Path, changed: Any, reason: str
) -> None:
    url = receiver.url("/hooks")
    catalog = Catalog([service(url)])
    engine, repository = outbox_engine(tmp_path, catalog)
    (request,) = created(engine)
    with HttpEmitter(Catalog([changed(url)])) as emitter:
        assert Dispatcher(repository, emitter, retry=NO_WAIT).run_once().dead == 1
    assert receiver.received == []
    (dead,) = repository.dead_requests()
    assert dead.request.id == request.id
    assert [a.error for a in dead.attempts] == [reason]
    repository.requeue([request.id])
    with HttpEmitter(catalog) as emitter:
        assert Dispatcher(repository, emitter, retry=NO_WAIT).run_once().delivered == 1
    ((headers, body),) = receiver.bodies("/hooks")
    Verifier(SECRET).verify(body, headers)
    assert repository.hook_requests(request.flow_id)[0].state is DeliveryState.DELIVERED


def test_an_unsigned_action_stays_unsigned_until_it_gains_a_secret(receiver: Receiver) -> None:
    unsigned = Catalog([service(receiver.url("/hooks"), secret=None)])
    first, second = one_request(unsigned), one_request(unsigned)
    assert not first.action.signed
    with HttpEmitter(unsigned) as emitter:
        emitter.emit(first)
    with HttpEmitter(Catalog([service(receiver.url("/hooks"), secret=SECRET)])) as emitter:
        emitter.emit(second)
    (plain, _), (signed, body) = receiver.bodies("/hooks")
    assert "webhook-signature" not in plain
    Verifier(SECRET).verify(body, signed)


# --- 3. where a delivery may connect ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("0.0.0.0", "0.0.0.0 is unspecified"),
        ("[::]", ":: is unspecified"),
        ("169.254.169.254", "169.254.169.254 is link-local"),
        ("[fe80::1]", "fe80::1 is link-local"),
        ("[::ffff:169.254.169.254]", "is link-local"),
        ("[::ffff:0.0.0.0]", "is unspecified"),
        ("100.100.100.200", "100.100.100.200 is cloud metadata"),
        ("[64:ff9b::a9fe:a9fe]", "is link-local"),  # NAT64, well-known prefix
        ("[64:ff9b:1::a9fe:a9fe]", "is link-local"),  # NAT64, local-use prefix (/96 layout)
        ("[::a9fe:a9fe]", "is link-local"),  # IPv4-compatible
        ("[2002:a9fe:a9fe::1]", "is link-local"),  # 6to4
        ("[2001:0:a9fe:a9fe::5601:5601]", "is link-local"),  # Teredo server
        ("[2001:0:4136:e378:8000:63bf:5601:5601]", "is link-local"),  # Teredo client
    ],
)
def test_metadata_link_local_and_unspecified_addresses_are_refused_before_connecting(
    receiver: Receiver, connections: list[Any], host: str, why: str
) -> None:
    catalog = Catalog([service(f"http://{host}:{receiver.port}/latest/meta-data/")])
    with HttpEmitter(catalog) as emitter:
        error = failure(emitter, one_request(catalog))
    assert not error.retry
    assert str(error).startswith(f"host {host.strip('[]')!r} is refused: ")
    assert why in str(error)
    assert SECRET not in str(error)
    assert SECRET.removeprefix("whsec_") not in str(error)
    assert connections == []
    assert receiver.received == []


@pytest.mark.parametrize("host", ["[::1]", "[::]"])
def test_the_ipv4_compatible_form_leaves_loopback_and_unspecified_to_their_own_rules(
    connections: list[Any], host: str
) -> None:
    """``::1`` and ``::`` are not IPv4-compatible addresses of 0.0.0.1 and 0.0.0.0."""
    rules = AddressRules()
    address = ipaddress.ip_address(host.strip("[]"))
    assert rules.refusal(address) == (None if host == "[::1]" else "unspecified")
    assert AddressRules("strict").refusal(address) == ("loopback" if host == "[::1]" else "unspecified")
    assert connections == []


def test_strict_mode_refuses_deprecated_site_local_ipv6(connections: list[Any]) -> None:
    catalog = Catalog([service("http://[fec0::1]/hooks")])
    with HttpEmitter(catalog, address_policy="strict") as emitter:
        error = failure(emitter, one_request(catalog))
    assert str(error).startswith("host 'fec0::1' is refused: ")
    assert "site-local" in str(error)
    assert not error.retry
    assert connections == []
    assert AddressRules().refusal(ipaddress.ip_address("fec0::1")) is None  # the default policy admits it


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_strict_mode_refuses_loopback_however_it_is_spelt(
    receiver: Receiver, connections: list[Any], host: str
) -> None:
    catalog = Catalog([service(f"http://{host}:{receiver.port}/hooks")])
    with HttpEmitter(catalog, address_policy="strict") as emitter:
        error = failure(emitter, one_request(catalog))
    assert not error.retry
    assert str(error).startswith(f"host {host.strip('[]')!r} is refused: ")
    assert "loopback" in str(error)
    assert connections == []
    assert receiver.received == []


@pytest.mark.parametrize(
    ("host", "policy", "why"),
    [
        ("2852039166", "default", "169.254.169.254 is link-local"),  # 169.254.169.254 as one number
        ("0xa9.0xfe.0xa9.0xfe", "default", "169.254.169.254 is link-local"),
        ("2130706433", "strict", "127.0.0.1 is loopback"),
        ("0x7f.1", "strict", "127.0.0.1 is loopback"),
        ("127.1", "strict", "127.0.0.1 is loopback"),
    ],
)
def test_odd_numeric_hosts_are_refused_at_load_and_judged_by_address_below(
    connections: list[Any], host: str, policy: Literal["default", "strict"], why: str
) -> None:
    """The catalog accepts only the dotted quad; should an odd form reach the network
    layer all the same, it is judged by the address it reaches."""
    with pytest.raises(ValidationError, match="is not a host name or an IP address"):
        Action("hook", url=f"http://{host}/hooks")
    with pytest.raises(DeliveryError) as refused:
        GuardedBackend(AddressRules(policy)).connect_tcp(host, 80)
    assert not refused.value.retry
    assert why in str(refused.value)
    assert connections == []


def test_strict_mode_refuses_private_ranges_and_allowed_networks_admit_them(receiver: Receiver) -> None:
    for address, why in [("10.1.2.3", "private"), ("100.64.0.1", "not globally routable"), ("224.0.0.1", "multicast")]:
        catalog = Catalog([service(f"http://{address}/hooks")])
        with HttpEmitter(catalog, address_policy="strict") as emitter:
            assert f"{address} is {why}" in str(failure(emitter, one_request(catalog)))
    catalog = Catalog([service(f"http://127.0.0.1:{receiver.port}/hooks")])
    with HttpEmitter(catalog, address_policy="strict", allowed_networks=["127.0.0.0/8"]) as emitter:
        assert emitter.emit(one_request(catalog)) == 200
    assert len(receiver.bodies("/hooks")) == 1


def test_the_default_policy_reaches_loopback_and_private_receivers(receiver: Receiver) -> None:
    catalog = Catalog([service(f"http://127.0.0.1:{receiver.port}/hooks")])
    with HttpEmitter(catalog) as emitter:
        assert emitter.emit(one_request(catalog)) == 200
    assert len(receiver.bodies("/hooks")) == 1


def test_a_name_is_judged_by_the_addresses_it_resolves_to(receiver: Receiver, connections: list[Any]) -> None:
    """An allowed name that resolves to a refused address is refused: the check is on
    the address connected to, not the name."""
    catalog = Catalog([service(f"http://hooks.example:{receiver.port}/hooks")])
    metadata = lambda host, port: ["169.254.169.254"]  # noqa: E731 - a one-line resolver
    with HttpEmitter(catalog, allowed_hosts={"hooks.example"}, resolver=metadata) as emitter:
        error = failure(emitter, one_request(catalog))
    assert not error.retry
    assert str(error) == "host 'hooks.example' is refused: 169.254.169.254 is link-local (see allowed_networks)"
    loopback = lambda host, port: ["127.0.0.1"]  # noqa: E731
    with HttpEmitter(catalog, address_policy="strict", resolver=loopback) as emitter:
        assert "127.0.0.1 is loopback" in str(failure(emitter, one_request(catalog)))
    assert connections == []
    assert receiver.received == []


def test_dns_rebinding_is_caught_on_the_next_connection(receiver: Receiver, connections: list[Any]) -> None:
    """The name first resolves to the receiver, then to the metadata address: the first
    delivery goes through, the second is refused without connecting."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    catalog = Catalog([service(f"http://hooks.example:{receiver.port}/hooks")])
    first, second = one_request(catalog), one_request(catalog)
    with HttpEmitter(catalog, allowed_hosts={"hooks.example"}, resolver=lambda host, port: next(answers)) as emitter:
        assert emitter.emit(first) == 200  # the receiver closes each connection: the next one resolves anew
        error = failure(emitter, second)
    assert "169.254.169.254 is link-local" in str(error)
    assert [h["webhook-id"] for h, _ in receiver.bodies("/hooks")] == [first.id]
    assert connections == [("127.0.0.1", receiver.port)]


def test_a_name_with_refused_and_admitted_addresses_connects_to_an_admitted_one(
    receiver: Receiver, connections: list[Any]
) -> None:
    catalog = Catalog([service(f"http://hooks.example:{receiver.port}/hooks")])
    both = lambda host, port: ["169.254.169.254", "127.0.0.1"]  # noqa: E731
    with HttpEmitter(catalog, resolver=both) as emitter:
        assert emitter.emit(one_request(catalog)) == 200
    assert connections == [("127.0.0.1", receiver.port)]


def test_allowed_hosts_may_name_ports(receiver: Receiver) -> None:
    catalog = Catalog([service(receiver.url("/hooks"))])
    request = one_request(catalog)
    with HttpEmitter(catalog, allowed_hosts={f"127.0.0.1:{receiver.port}", "[::1]:8080"}) as emitter:
        assert emitter.emit(request) == 200
    with HttpEmitter(catalog, allowed_hosts={f"127.0.0.1:{receiver.port + 1}"}) as emitter:
        error = failure(emitter, request)
    assert str(error) == f"port {receiver.port} of host '127.0.0.1' is not in allowed_hosts"
    assert not error.retry
    v6 = Catalog([service("http://[::1]:8081/hooks")])
    with HttpEmitter(v6, allowed_hosts={"[::1]:8080", "::2"}) as emitter:
        assert str(failure(emitter, one_request(v6))) == "port 8081 of host '::1' is not in allowed_hosts"
    with HttpEmitter(catalog, allowed_hosts={"HOOKS.example.:443", "127.0.0.1"}) as emitter:
        assert emitter.emit(request) == 200
    assert len(receiver.bodies("/hooks")) == 2


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"allowed_hosts": ["hooks.example:http"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": ["[::1"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": "hooks.example"}, "allowed_hosts"),
        ({"address_policy": "paranoid"}, "address_policy"),
        ({"allowed_networks": ["10.0.0.0/33"]}, "allowed_networks[0]"),
        ({"allowed_hosts": [b"localhost"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": [None]}, "allowed_hosts[0]"),
        ({"allowed_hosts": ["local host"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": ["*.example.com"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": ["localhost:\uff18\uff10"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": ["localhost:"]}, "allowed_hosts[0]"),
        ({"allowed_hosts": ["hooks.example", "x/y"]}, "allowed_hosts[1]"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": 1e308}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_response_bytes": 0}, "max_response_bytes"),
        ({"max_response_bytes": 1.5}, "max_response_bytes"),
        ({"max_response_bytes": "65536"}, "max_response_bytes"),
        ({"max_response_bytes": math.nan}, "max_response_bytes"),
    ],
)
def test_bad_options_are_refused_when_the_emitter_is_made(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as bad:
        HttpEmitter(Catalog(), **options)
    assert bad.value.field == field


# --- 4. what a receiver answers ----------------------------------------------------------------


def answered(head: bytes) -> DeliveryError:
    """The error of one delivery to a receiver on 127.0.0.1 answering ``head`` (no body)."""
    receiver = Dripper(head + b"\r\ncontent-length: 0\r\n\r\n", b"")
    try:
        catalog = Catalog([service(receiver.url("/hooks"))])
        with HttpEmitter(catalog) as emitter:
            return failure(emitter, one_request(catalog))
    finally:
        receiver.close()


def test_a_receivers_reason_phrase_is_bounded_and_free_of_control_characters() -> None:
    error = answered(b"HTTP/1.1 503 [bold]X\x1b[31m\xe2\x80\xae" + b"A" * 60_000)
    assert error.retry
    assert error.status_code == 503
    assert str(error).startswith("HTTP 503 [bold]X?[31m")
    assert len(str(error)) <= 120
    assert str(error).endswith("…")
    assert "\x1b" not in str(error)
    assert str(error).isprintable()


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b2\u00b3", "1\u00b2"])
def test_a_retry_after_of_other_digits_than_ascii_is_ignored(value: str) -> None:
    error = answered(b"HTTP/1.1 503 Busy\r\nretry-after: " + value.encode("latin-1"))
    assert error.retry
    assert error.retry_after is None
    assert str(error) == "HTTP 503 Busy"


# --- 5. what the catalog accepts, the client can send ------------------------------------------

ODD_URLS = [
    "http://\uff21\uff22\uff23.com/",  # full-width ABC
    "http://\uff41.com/",
    "http://b\u00fccher.example/",
    "http://B\u00fccher.example/",
    "http://\u00df.de/",
    "http://\u2603.example/",
    "http://h/" + "x" * 100_000,
    "http://h/" + "x" * 3000,
    "http://h:/",
    "http://[::1]:/",
    "http://h:080/",
    "http://h:\uff18\uff10/",
    "http://[fe80::1%25eth0]/",
    "http://h_x.example/",
    "http://h.example./",
    "http://xn--zz.example/",
    "http://a..b/",
    "http://" + "a" * 64 + ".example/",
]


@pytest.mark.parametrize("url", ODD_URLS, ids=range(len(ODD_URLS)))
def test_a_url_the_catalog_accepts_is_one_httpx_can_send(url: str) -> None:
    try:
        Action("hook", url=url)
    except ValidationError as e:
        refused: ValidationError | None = e
    else:
        refused = None
    if refused is None:
        sent = httpx.URL(url)  # raises if the client could not send it
        assert sent.host  # decodes an IDNA name: raises if it is not a valid one
    else:
        assert refused.field == "url"
        assert len(str(refused)) < 300


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://\uff21\uff22\uff23.com/", "is not a host name"),
        ("http://h/" + "x" * 100_000, "is longer than 2048 characters"),
        ("http://h:/", "got nothing after ':'"),
        ("http://[::1]:/", "got nothing after ':'"),
    ],
)
def test_urls_httpx_refuses_or_that_are_odd_are_refused_at_load(url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Action("hook", url=url)
    assert refused.value.field == "url"
    assert problem in str(refused.value)
    assert len(str(refused.value)) < 300
