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

Secrets come from the catalog when signing; a HookRequest never carries one, and
none appears in a log line, a repr or an error. Redirects are not followed, a
response body is read up to ``max_response_bytes``, and ``allowed_hosts`` can
restrict where requests go. Failures raise ``DeliveryError`` saying whether a
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
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from flowfsm.converter import converter
from flowfsm.errors import DeliveryError, UnknownService
from flowfsm.model import HookRequest
from flowfsm.protocols import ServiceCatalog

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpEmitter", "cloud_event", "sign", "webhook_headers"]

CONTENT_TYPE: Final = "application/cloudevents+json"


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
        max_response_bytes: int = 64 * 1024,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``source``: the CloudEvents ``source`` of every event. ``timeout``:
        seconds per attempt. ``allowed_hosts``: if given, the only hosts requests
        may go to. ``client``: an ``httpx.Client`` to share (its redirect setting
        is overridden per request)."""
        try:
            import httpx
        except ImportError as e:  # pragma: no cover - the extra is installed for the tests
            raise ImportError("HttpEmitter needs the 'http' extra: pip install flowfsm[http]") from e
        self.catalog = catalog
        self.source = source
        self.timeout = timeout
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None
        self.max_response_bytes = max_response_bytes
        self._client = client or httpx.Client(headers={"user-agent": "flowfsm"})
        self._owns_client = client is None
        self._clock = clock
        self._httpx = httpx

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpEmitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def emit(self, request: HookRequest) -> int | None:
        """POST ``request``; return the 2xx status, or raise ``DeliveryError``."""
        url = request.action.url
        if url is None:
            return None  # nothing to call: an action for other emitters
        if self.allowed_hosts is not None:
            host = (urlsplit(url).hostname or "").lower()
            if host not in self.allowed_hosts:
                raise DeliveryError(f"host {host!r} is not in allowed_hosts", retry=False)
        try:
            action = self.catalog.get(request.payload.service.id).action(request.webhook_id, request.action.name)
        except UnknownService:
            raise DeliveryError(f"service {request.payload.service.id!r} left the catalog", retry=False) from None
        body = json.dumps(cloud_event(request, self.source)).encode()
        secrets = action.secrets if action is not None else ()
        headers = webhook_headers(request.id, int(self._clock()), body, secrets)
        httpx = self._httpx
        try:
            with self._client.stream(
                "POST", url, content=body, headers=headers, timeout=self.timeout, follow_redirects=False
            ) as response:
                self._drain(response)
        except httpx.TimeoutException:
            raise DeliveryError(f"timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise DeliveryError(f"{type(e).__name__}: {_one_line(e)}") from None
        return self._verdict(response)

    def _drain(self, response: httpx.Response) -> None:
        """Read at most ``max_response_bytes`` of the body: enough to reuse the
        connection for small answers, never a flood from a bad receiver."""
        read = 0
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= self.max_response_bytes:
                break

    def _verdict(self, response: httpx.Response) -> int:
        status = response.status_code
        if 200 <= status < 300:
            return status
        reason = f"HTTP {status} {response.reason_phrase}".strip()
        if status == 410:
            raise DeliveryError(reason, status_code=status, retry=False, gone=True)
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
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
