"""The network layer under ``HttpEmitter``: where an attempt may connect, and when it ends.

httpx's timeouts bound each read and each write, so a receiver sending one byte
every half second keeps an attempt alive as long as it likes; and httpx connects
to whatever address a name resolves to. Both are settled here, below httpx, in the
httpcore network backend of the emitter's connection pool:

- ``deadline(seconds)`` sets the end of the current attempt (a context variable, so
  attempts on other threads keep their own); name resolution, every connect, TLS
  handshake, read and write gets at most the time left.
- ``GuardedBackend`` resolves the host itself, judges every address with
  ``AddressRules`` and connects to an address it judged, never to a name, so a DNS
  answer that changes between a check and the connection (rebinding) cannot pass.
  TLS still verifies the URL's host name: httpcore hands that to ``start_tls``.

Imported when an ``HttpEmitter`` is made: it needs httpx (the ``http`` extra).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final, Literal

import httpcore
import httpx

from flowfsm.errors import DeliveryError, ValidationError, shown

if TYPE_CHECKING:
    import ssl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]
"""``resolver(host, port)``: the IP addresses of ``host``, as strings."""
AddressPolicy = Literal["default", "strict"]

# Refused by every policy: nothing a webhook should reach, and what SSRF aims at.
ALWAYS_REFUSED: Final = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        ("0.0.0.0/8", "unspecified"),  # 0.0.0.0 reaches this host
        ("::/128", "unspecified"),
        ("169.254.0.0/16", "link-local"),  # 169.254.169.254: AWS, GCP, Azure, Oracle metadata
        ("fe80::/10", "link-local"),
        ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
        ("fd00:ec2::254/128", "cloud metadata"),  # AWS over IPv6
    )
)
# IPv6 forms that carry an IPv4 address the connection may end up at.
# NAT64 (RFC 6052) well-known prefix, and the local-use ones (RFC 8215), judged by their
# last 32 bits: the /96 layout. (Reading every RFC 6052 layout would misjudge ordinary
# /96 addresses: 64:ff9b:1::8.8.8.8 read as a /48 one carries 0.0.0.0.)
_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """Every IPv4 address ``address`` may carry: IPv4-mapped, IPv4-compatible
    (``::a.b.c.d``, not ``::`` or ``::1``), NAT64 (well-known and local-use prefixes),
    6to4, and Teredo (server and client). Each is judged as the address itself would be."""
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    value = int(address)
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if value >> 32 == 0 and value > 1:
        found.append(ipaddress.IPv4Address(value))
    if any(address in prefix for prefix in _NAT64):
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return tuple(dict.fromkeys(found))


class AddressRules:
    """Which addresses a delivery may connect to.

    ``policy="default"`` refuses ``ALWAYS_REFUSED`` only (internal receivers on
    private networks are normal); ``"strict"`` also refuses every address that is not
    globally routable: loopback, private, shared (CGNAT), multicast, reserved,
    documentation ranges. ``allowed_networks`` admits addresses either would refuse.
    An IPv6 address carrying an IPv4 one (``::ffff:a.b.c.d``, ``::a.b.c.d``, NAT64,
    6to4, Teredo) is judged as each, the IPv4 ones first. ``"strict"`` also refuses
    deprecated site-local IPv6 (``fec0::/10``).
    """

    __slots__ = ("allowed", "policy")

    def __init__(self, policy: AddressPolicy = "default", allowed_networks: Iterable[str] = ()) -> None:
        if policy not in ("default", "strict"):
            raise ValidationError("address_policy", f"expected 'default' or 'strict', got {policy!r}")
        allowed = []
        for i, network in enumerate(allowed_networks):
            try:
                allowed.append(ipaddress.ip_network(network, strict=False))
            except (TypeError, ValueError):
                message = f"expected an IP network such as '10.0.0.0/8', got {network!r}"
                raise ValidationError(f"allowed_networks[{i}]", message) from None
        self.policy: AddressPolicy = policy
        self.allowed = tuple(allowed)

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused (``"link-local"``, ``"loopback"``, ...), or None."""
        forms = (*_embedded_ipv4(address), address)  # an embedded IPv4 one is where it goes
        if any(form in network for form in forms for network in self.allowed):
            return None
        for form in forms:
            why = next((why for network, why in ALWAYS_REFUSED if form in network), None)
            if why is None and self.policy == "strict":
                why = _not_global(form)
            if why is not None:
                return why
        return None


def _not_global(address: IPAddress) -> str | None:
    """Why strict refuses ``address``: not globally routable (or deprecated site-local)."""
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_global and not address.is_multicast:
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_multicast:
        return "multicast"
    return "private" if address.is_private else "not globally routable"


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer (``getaddrinfo``), in its order."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


# --- the deadline of an attempt --------------------------------------------------------

_deadline: ContextVar[float | None] = ContextVar("flowfsm_http_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Network operations inside the block end by ``seconds`` from now. Real time
    (``time.monotonic``), not an injected clock: it bounds real socket waits."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _budget(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout``, cut to the time left before the deadline; ``expired`` once it passed."""
    end = _deadline.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every wait ends by the deadline of the current attempt."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # Not the inner stream's write: it waits up to its timeout for each partial
        # send, so a receiver taking a byte at a time could stretch it without end.
        sock: socket.socket = self._stream.get_extra_info("socket")
        view = memoryview(buffer)
        try:
            while view:
                sock.settimeout(_budget(timeout, httpcore.WriteTimeout))
                view = view[sock.send(view) :]
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


# --- where an attempt connects -----------------------------------------------------------


class GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses ``rules`` admit, checked as they are connected to.

    A host whose every address is refused raises a non-retryable ``DeliveryError``
    naming the host and why, before any connection is tried."""

    def __init__(self, rules: AddressRules, resolver: Resolver | None = None) -> None:
        self._rules = rules
        self._resolver = resolver or system_resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in self._admitted(host, port, timeout):
            budget = _budget(timeout, httpcore.ConnectTimeout)
            try:
                stream = self._inner.connect_tcp(str(address), port, budget, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failure = e  # try the host's next address, as socket.create_connection does
                continue
            return _DeadlineStream(stream)
        assert failure is not None  # _admitted returns at least one address
        raise failure

    def _admitted(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:  # a name, or an odd numeric form (2130706433, 0x7f.1): ask the resolver
            addresses = self._resolve(host, port, timeout)
        admitted, refused = [], []
        for address in addresses:
            why = self._rules.refusal(address)
            if why is None:
                admitted.append(address)
            else:
                refused.append(f"{address} is {why}")
        if not admitted:
            reasons = "; ".join(refused[:3]) + ("; ..." if len(refused) > 3 else "")
            raise DeliveryError(f"host {host!r} is refused: {reasons} (see allowed_networks)", retry=False)
        return admitted

    def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        """The resolver's answer, waited for no longer than the attempt may last
        (``getaddrinfo`` has no timeout of its own, so it runs on a thread)."""
        budget = _budget(timeout, httpcore.ConnectTimeout)
        answer: Future[list[str]] = Future()

        def resolve() -> None:
            try:
                answer.set_result(list(self._resolver(host, port)))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting attempt
                answer.set_exception(e)

        threading.Thread(target=resolve, name="flowfsm-resolve", daemon=True).start()
        try:
            names = answer.result(budget)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
        except OSError as e:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {e}") from e
        addresses = []
        for name in names:
            try:
                addresses.append(ipaddress.ip_address(name))
            except ValueError:
                raise httpcore.ConnectError(f"the resolver answered {name!r} for {host!r}, not an IP address") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} has no address")
        return addresses


# --- the httpx transport ---------------------------------------------------------------------

# httpcore's errors as httpx's (the same names), most specific first.
_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        for core, mapped in _ERRORS:
            if isinstance(e, core):
                raise mapped(str(e), request=request) from e
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors(self._request):
            yield from self._stream

    def close(self) -> None:
        close: Callable[[], None] | None = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """httpx's own ``HTTPTransport``, but on a pool that connects through
    ``GuardedBackend`` (httpx has no public way to hand its pool a backend).
    No proxies: the address checks must see the address connected to."""

    def __init__(self, backend: httpcore.NetworkBackend, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=100,  # httpx's default limits
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)  # a sync client's request
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            response = self._pool.handle_request(core)
        assert isinstance(response.stream, Iterable)  # a sync pool's response
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


# --- allowed_hosts -------------------------------------------------------------------------


def _normal_host(host: str) -> str:
    """One spelling per host: IDNA, lower case, no trailing dot, IPs in canonical form."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return httpx.URL(scheme="http", host=host).raw_host.decode("ascii")


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``v6``, ``[v6]`` or ``[v6]:port`` as (host, port or None).
    Raises ``ValueError``."""
    entry = entry.strip()
    port: str | None = None
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("unbalanced brackets")
        port = rest[1:] if rest else None
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host = entry
    if not host:
        raise ValueError("no host")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("bad port")
    try:
        normal = _normal_host(host)
    except httpx.InvalidURL:
        normal = ""
    if not _HOST_NAME.fullmatch(normal) and not _is_ip(normal):  # it could never match a URL's host
        raise ValueError("not a host name or an IP address")
    return normal, int(port) if port is not None else None


_HOST_NAME: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_entries(entries: Iterable[str]) -> dict[str, frozenset[int]]:
    """``allowed_hosts`` as host -> its allowed ports (empty: any port)."""
    if isinstance(entries, str):
        raise ValidationError("allowed_hosts", "expected a collection of hosts, got a string")
    ports: dict[str, set[int]] = {}
    any_port: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ValidationError(f"allowed_hosts[{i}]", f"expected a string, got a {type(entry).__name__}")
        try:
            host, port = parse_host_entry(entry)
        except ValueError as e:
            message = f"expected host, host:port or [v6]:port, got {shown(entry)} ({e})"
            raise ValidationError(f"allowed_hosts[{i}]", message) from None
        ports.setdefault(host, set())
        if port is None:
            any_port.add(host)
        else:
            ports[host].add(port)
    return {host: frozenset() if host in any_port else frozenset(p) for host, p in ports.items()}


def url_host_port(url: httpx.URL) -> tuple[str, int]:
    """The normalised host of ``url`` and the port it connects to."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return _normal_host(url.raw_host.decode("ascii")), port
