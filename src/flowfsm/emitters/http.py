"""``HttpEmitter``: webhook delivery over HTTP, the way trusted senders do it.

Each HookRequest whose action has a ``url`` becomes one POST:

- the body is a CloudEvents 1.0 event in structured mode
  (``Content-Type: application/cloudevents+json``): ``id`` is the HookRequest id,
  ``type`` is ``dev.flowfsm.<event>`` (``deployment-created`` →
  ``dev.flowfsm.deployment.created``), ``subject`` the deployment id, ``time`` its
  creation time, and ``data`` the payload in flowfsm's JSON form;
- it is signed per the Standard Webhooks spec: ``webhook-id`` (the HookRequest id,
  the same on every retry: the receiver's idempotency key), ``webhook-timestamp``
  and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one
  signature per active secret of the action (rotation), space-separated.

Where and how to deliver is read from the catalog when a request is sent: the
action's current ``url``, signed with its current secrets (a HookRequest never
carries one, and none appears in a log line, a repr or an error). A request whose
action left the catalog, or that was signed when made and whose action has no
secret now, is not sent. ``timeout`` bounds a whole attempt; redirects are not
followed; a response body is read up to ``max_response_bytes``; ``allowed_hosts``
restricts names, and ``address_policy``/``allowed_networks`` the addresses actually
connected to (``_transport``). Failures raise ``DeliveryError`` saying whether a
retry is worthwhile; the ``Dispatcher`` turns that into backoff, dead HookRequests
and disabled endpoints.

Needs the ``http`` extra (httpx).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import math
import time
import unicodedata
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final

from flowfsm.converter import converter
from flowfsm.errors import DeliveryError, UnknownService, ValidationError
from flowfsm.model import Action, HookRequest
from flowfsm.protocols import ServiceCatalog

if TYPE_CHECKING:
    import ssl

    import httpx

    from flowfsm.emitters._transport import AddressPolicy, Resolver

__all__ = ["HttpEmitter", "cloud_event", "sign", "webhook_headers"]

CONTENT_TYPE: Final = "application/cloudevents+json"
MAX_TIMEOUT: Final = 86_400.0
"""The longest ``timeout`` accepted: one day."""
MAX_RESPONSE_BYTES: Final = 1024 * 1024 * 1024
"""The largest ``max_response_bytes`` accepted."""
REASON_LIMIT: Final = 100
"""The longest reason phrase (or other receiver text) kept in an error."""


def cloud_event(request: HookRequest, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode event for ``request``."""
    return {
        "specversion": "1.0",
        "id": request.id,
        "source": source,
        "type": "dev.flowfsm." + request.event.value.replace("-", "."),
        "subject": request.payload.deployment.id,
        "time": request.created_at.isoformat(),
        "datacontenttype": "application/json",
        "data": converter.unstructure(request.payload),
    }


def sign(secrets: Collection[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<signature>`` for each secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def webhook_headers(message_id: str, timestamp: int, body: bytes, secrets: Collection[str]) -> dict[str, str]:
    """The headers of one delivery: the content type and the Standard Webhooks
    ``webhook-id`` and ``webhook-timestamp``, and ``webhook-signature`` if there are secrets."""
    headers = {"content-type": CONTENT_TYPE, "webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if secrets:
        headers["webhook-signature"] = sign(secrets, message_id, timestamp, body)
    return headers


class HttpEmitter:
    """Delivers HookRequests as signed CloudEvents over HTTP (a ``HookEmitter``)."""

    def __init__(
        self,
        catalog: ServiceCatalog,
        *,
        source: str = "urn:flowfsm",
        timeout: float = 15.0,
        allowed_hosts: Collection[str] | None = None,
        address_policy: AddressPolicy = "default",
        allowed_networks: Collection[str] = (),
        max_response_bytes: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``source``: the CloudEvents ``source`` of every event. ``timeout``: seconds
        an attempt may take in all (connecting, sending, the answer). ``allowed_hosts``:
        if given, the only hosts (``host`` or ``host:port``) requests may go to.
        ``address_policy``: ``"default"`` refuses link-local, cloud-metadata and
        unspecified addresses; ``"strict"`` refuses every address that is not
        globally routable (loopback, private, ...). ``allowed_networks``: networks
        (``"10.1.0.0/16"``) reachable even so. ``ssl_context``: for private CAs or
        client certificates. ``resolver(host, port)``: IP addresses of a host, the
        system's by default."""
        try:
            import httpx

            from flowfsm.emitters import _transport
        except ImportError as e:  # pragma: no cover - the extra is installed for the tests
            raise ImportError("HttpEmitter needs the 'http' extra: pip install flowfsm[http]") from e
        if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            raise ValidationError("timeout", f"must be a number of seconds, more than 0 and at most {MAX_TIMEOUT:g}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int):
            raise ValidationError("max_response_bytes", "must be a whole number of bytes")
        if not 1 <= max_response_bytes <= MAX_RESPONSE_BYTES:
            raise ValidationError("max_response_bytes", f"must be from 1 to {MAX_RESPONSE_BYTES}")
        self.catalog = catalog
        self.source = source
        self.timeout = float(timeout)
        self.allowed_hosts = None if allowed_hosts is None else _transport.host_entries(allowed_hosts)
        self.max_response_bytes = max_response_bytes
        backend = _transport.GuardedBackend(_transport.AddressRules(address_policy, allowed_networks), resolver)
        self._client = httpx.Client(
            transport=_transport.GuardedTransport(backend, ssl_context),
            headers={"user-agent": "flowfsm"},
            trust_env=False,  # no proxies from the environment: they would connect for us, unchecked
        )
        self._clock = clock
        self._httpx = httpx
        self._transport = _transport
        self._hosts_seen: dict[str, str | None] = {}  # url -> why allowed_hosts refuses it, or None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpEmitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def emit(self, request: HookRequest) -> int | None:
        """POST ``request`` to its action's current url; return the 2xx status, or
        raise ``DeliveryError``."""
        if request.action.url is None:
            return None  # nothing to call: an action for other emitters
        action = self._current_action(request)
        url = action.url
        assert url is not None  # _current_action refuses actions without one
        refusal = self._host_refusal(url)
        if refusal is not None:
            raise DeliveryError(refusal, retry=False)
        body = json.dumps(cloud_event(request, self.source)).encode()
        headers = webhook_headers(request.id, int(self._clock()), body, action.secrets)
        httpx = self._httpx
        try:
            with (
                self._transport.deadline(self.timeout),
                self._client.stream(
                    "POST", url, content=body, headers=headers, timeout=self.timeout, follow_redirects=False
                ) as response,
            ):
                self._drain(response)
        except httpx.TimeoutException:
            raise DeliveryError(f"timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as e:  # its message may quote what the receiver sent
            raise DeliveryError(f"{type(e).__name__}: {_receiver_text(_one_line(e), 2 * REASON_LIMIT)}") from None
        except httpx.InvalidURL as e:  # the message names the part at fault, not the whole url
            raise DeliveryError(f"invalid url of action {action.name!r}: {_one_line(e)}", retry=False) from None
        return self._verdict(response, url)

    def target_url(self, request: HookRequest) -> str | None:
        """The URL ``request`` would be sent to now (its action's current ``url``), or
        None if it would not be sent. The ``Dispatcher`` checks it against disabled
        endpoints before a call, rather than the URL the request was made for."""
        if request.action.url is None:
            return None
        try:
            return self._current_action(request).url
        except DeliveryError:
            return None

    def _current_action(self, request: HookRequest) -> Action:
        """The request's action as the catalog has it now: where and how to deliver.

        Refused (non-retryable, so the request is dead and can be requeued once the
        catalog is fixed): a webhook or action no longer there, an action without a
        url, and one whose request was signed when made but that has no secret now.
        """
        ref, service_id = request.action, request.payload.service.id
        what = f"action {ref.name!r} of webhook {request.webhook_id!r}"
        try:
            service = self.catalog.get(service_id)
        except UnknownService:
            raise DeliveryError(f"service {service_id!r} left the catalog", retry=False) from None
        action = None
        for webhook in service.webhooks:
            if webhook.id == request.webhook_id and webhook.event is request.event:
                action = next((a for a in webhook.actions if a.name == ref.name), None)
        if action is None:
            message = f"{what} on {request.event.value} is no longer in the catalog of service {service_id!r}"
            raise DeliveryError(message, retry=False)
        if action.url is None:
            raise DeliveryError(f"{what} no longer has a url", retry=False)
        if ref.signed and not action.secret:
            raise DeliveryError(f"{what} has no secret any more; a signed request is not sent unsigned", retry=False)
        return action

    def _host_refusal(self, url: str) -> str | None:
        """Why ``allowed_hosts`` refuses ``url``, or None."""
        if self.allowed_hosts is None:
            return None
        try:
            return self._hosts_seen[url]
        except KeyError:
            pass
        try:
            host, port = self._transport.url_host_port(self._httpx.URL(url))
        except self._httpx.InvalidURL as e:
            refusal: str | None = f"invalid url: {_one_line(e)}"
        else:
            ports = self.allowed_hosts.get(host)
            if ports is None:
                refusal = f"host {host!r} is not in allowed_hosts"
            elif ports and port not in ports:
                refusal = f"port {port} of host {host!r} is not in allowed_hosts"
            else:
                refusal = None
        self._hosts_seen[url] = refusal
        return refusal

    def _drain(self, response: httpx.Response) -> None:
        """Read at most ``max_response_bytes`` of the body: enough to reuse the
        connection for small answers, never a flood from a bad receiver."""
        read = 0
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= self.max_response_bytes:
                break

    def _verdict(self, response: httpx.Response, url: str) -> int:
        status = response.status_code
        if 200 <= status < 300:
            return status
        reason = f"HTTP {status} {_receiver_text(response.reason_phrase)}".strip()
        if status == 410:
            raise DeliveryError(reason, status_code=status, retry=False, gone=True, url=url)
        if status in (429, 503):
            retry_after = _retry_after(response.headers.get("retry-after"), self._clock())
            raise DeliveryError(reason, status_code=status, retry=True, retry_after=retry_after)
        if 300 <= status < 500:  # redirects are not followed; 4xx will not change on retry
            raise DeliveryError(reason, status_code=status, retry=False)
        raise DeliveryError(reason, status_code=status, retry=True)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone admits "²", which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _receiver_text(text: str, limit: int = REASON_LIMIT) -> str:
    """Text a receiver chose (a reason phrase), as flowfsm records and logs it: at
    most ``limit`` characters, each control or format character (ESC, bidi
    overrides) shown as ``?``."""
    cut = text[: limit + 1]
    cut = "".join("?" if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in cut)
    return cut if len(cut) <= limit else cut[: limit - 1] + "…"


def _is_number(value: object) -> bool:
    """A real number (an int or a float; a bool is not one), NaN excluded."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
