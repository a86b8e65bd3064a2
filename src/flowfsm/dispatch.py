"""``Dispatcher``: delivers what the outbox holds, so a crash loses no HookRequest.

The engine commits each trigger's HookRequests with its flow, then hands them to
its emitter. If the emitter fails, or the process dies between the commit and
the delivery, they stay pending; a dispatcher — in the same process, another
one, or several — claims them and delivers them, at least once, in creation
order within each flow. Receivers deduplicate by the HookRequest id.

Every attempt is logged in the repository (time, status code, error, duration).
A failure worth retrying waits out a backoff (``RetryPolicy``, or the receiver's
``Retry-After``, up to ``max_retry_after``) while the flow's later requests wait
behind it; one that is not worth retrying, or that has used up its attempts, is
marked dead: visible in ``repository.dead_requests()`` and re-queueable with
``repository.requeue()``. A 410 Gone disables its endpoint until
``repository.enable_endpoint(url)``.

A dispatcher renews the lease of what it holds while it works, so a slow receiver
never lets a second dispatcher take over a request that is still being delivered.
Whatever goes wrong with one request — its emitter raising anything, or the
repository failing to record the outcome — costs that request (and holds its flow's
later ones back), never the other flows or the dispatcher.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import attrs

from flowfsm.engine import utc_now
from flowfsm.errors import DeliveryError, ValidationError
from flowfsm.model import DeliveryAttempt, HookRequest
from flowfsm.protocols import HookEmitter, Repository
from flowfsm.repositories._common import MAX_WAIT

__all__ = ["DispatchReport", "Dispatcher", "RetryPolicy"]

log = logging.getLogger("flowfsm.dispatch")


@attrs.frozen
class RetryPolicy:
    """When to try a failed HookRequest again.

    Attempt n (counting from 1) that fails waits ``delays[n - 1]`` seconds (the
    last delay repeats), stretched or shrunk at random by up to ``jitter`` (a
    fraction), so that many failed deliveries do not all return at once. After
    ``max_attempts`` attempts the HookRequest is dead.
    """

    delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    max_attempts: int = 8
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        delays_ok = isinstance(self.delays, tuple | list) and all(_is_number(d) for d in self.delays)
        if not delays_ok or not self.delays or not all(0 <= d <= MAX_WAIT for d in self.delays):
            raise ValidationError("delays", f"needs at least one delay, each from 0 to {MAX_WAIT:g} s")
        if not _is_whole(self.max_attempts) or self.max_attempts < 1:
            raise ValidationError("max_attempts", "must be a whole number, at least 1")
        if not _is_number(self.jitter) or not 0 <= self.jitter < 1:
            raise ValidationError("jitter", "must be in [0, 1)")

    def delay(self, attempts: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        base = self.delays[min(attempts, len(self.delays)) - 1]
        return base * (1 + self.jitter * (2 * rng() - 1))


MAX_CONCURRENCY: Final = 256
"""The most flows a dispatcher delivers at once: a thread and a connection each; more
is a typo, not a setting (a receiver sees at most this many requests at a time)."""


def _is_number(value: object) -> bool:
    """A real number (an int or a float; a bool is not one), NaN excluded."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _is_whole(value: object) -> bool:
    """A count: an int (a bool, a float or NaN is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _status(error: DeliveryError) -> str:
    """`` (status 503)`` in a log line; nothing for a failure that got no answer."""
    return "" if error.status_code is None else f" (status {error.status_code})"


@attrs.frozen
class DispatchReport:
    """What one ``Dispatcher.run_once`` did with the HookRequests it claimed."""

    delivered: int = 0
    """Reached their receiver."""
    retried: int = 0
    """Failed and wait for another attempt (their flow's later requests wait too)."""
    dead: int = 0
    """Failed for good (or their endpoint is disabled): see ``dead_requests()``."""
    next_attempt_at: dt.datetime | None = None
    """When the first of the retried ones is due again; None if none was retried."""

    def __add__(self, other: DispatchReport) -> DispatchReport:
        times = [t for t in (self.next_attempt_at, other.next_attempt_at) if t is not None]
        return DispatchReport(
            self.delivered + other.delivered,
            self.retried + other.retried,
            self.dead + other.dead,
            min(times) if times else None,
        )


class _Result(enum.Enum):
    DELIVERED = "delivered"
    RETRIED = "retried"
    DEAD = "dead"


_MAX_BACKOFF: Final = 60.0
"""The longest ``run`` waits after ``run_once`` failed several times in a row."""


class _Held:
    """The HookRequests a ``run_once`` holds, their leases renewed every third of
    a lease by a thread of their own until they are let go of.

    A request is let go of before its outcome is written: a renewal in flight then
    finishes first (the lock), so none lands after a ``release`` and undoes it.
    """

    def __init__(self, repository: Repository, lease: float) -> None:
        self._repository = repository
        self._lease = lease
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="flowfsm-lease", daemon=True)

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def hold(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.update(ids)
            if self._thread.ident is None:  # the first claim: an idle poll starts no thread
                self._thread.start()

    def let_go(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.difference_update(ids)

    def _renew(self) -> None:
        while not self._stop.wait(self._lease / 3):
            with self._lock:
                if not self._ids:
                    continue
                try:
                    self._repository.renew(list(self._ids), lease=self._lease)
                except Exception:  # the next renewal tries again; the lease may lapse meanwhile
                    log.warning("could not renew the lease of %d hook request(s)", len(self._ids), exc_info=True)


class Dispatcher:
    """Moves pending HookRequests from a repository's outbox to an emitter."""

    def __init__(
        self,
        repository: Repository,
        emitter: HookEmitter,
        *,
        batch: int = 100,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        max_retry_after: float = 3600.0,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``batch``: HookRequests claimed at a time. ``lease``: seconds a claim is
        held before another dispatcher may take it over; renewed every third of it
        while this dispatcher still holds the claim, however long delivering takes.
        ``poll_interval``: seconds between polls in ``run``. ``retry``: the backoff
        policy. ``concurrency``: flows delivered at once (each flow's requests still
        go one after another, in order). ``max_retry_after``: the longest a
        receiver's ``Retry-After`` is honoured (one hour); a longer one waits that."""
        if not _is_whole(concurrency) or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValidationError("concurrency", f"must be a whole number from 1 to {MAX_CONCURRENCY}")
        if not _is_whole(batch) or batch < 1:
            raise ValidationError("batch", "must be a whole number, at least 1")
        if not _is_number(lease) or not 0 < lease <= MAX_WAIT:
            raise ValidationError("lease", f"must be more than 0 and at most {MAX_WAIT:g} s")
        if not _is_number(poll_interval) or not 0 < poll_interval <= MAX_WAIT:
            raise ValidationError("poll_interval", f"must be more than 0 and at most {MAX_WAIT:g} s")
        if not _is_number(max_retry_after) or not 0 <= max_retry_after <= MAX_WAIT:
            raise ValidationError("max_retry_after", f"must be from 0 to {MAX_WAIT:g} s")
        if retry is not None and not isinstance(retry, RetryPolicy):  # flowfsm.RetryPolicy is a failure policy's
            raise ValidationError("retry", "must be a flowfsm.dispatch.RetryPolicy (delays, max_attempts, jitter)")
        self.repository = repository
        self.emitter = emitter
        self.batch = batch
        self.lease = lease
        self.poll_interval = poll_interval
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.max_retry_after = max_retry_after
        self._clock = clock
        self._pool = ThreadPoolExecutor(concurrency, "flowfsm-dispatch") if concurrency > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def run_once(self, stop: threading.Event | None = None) -> DispatchReport:
        """Deliver what is pending now; report what was delivered, retried and dead.

        A flow whose HookRequest fails is skipped for the rest of this call (its
        later requests must not overtake it). What was skipped stays claimed until
        the call ends, so it cannot crowd other flows out of the next batches.
        Once ``stop`` is set, nothing more is claimed and no delivery starts: the
        ones under way finish, and the rest of what is held is released at once,
        for another dispatcher. Raises only when the repository fails to claim or
        to list disabled endpoints.
        """
        report = DispatchReport()
        failed_flows: set[str] = set()
        skipped: list[str] = []
        with _Held(self.repository, self.lease) as held:
            try:
                while not _stopped(stop) and (claimed := self.repository.claim(self.batch, lease=self.lease)):
                    held.hold(r.id for r in claimed)
                    disabled = self.repository.disabled_endpoints()
                    by_flow: dict[str, list[HookRequest]] = {}
                    for request in claimed:
                        if request.flow_id in failed_flows:
                            skipped.append(request.id)
                        else:
                            by_flow.setdefault(request.flow_id, []).append(request)
                    flows = list(by_flow.values())
                    deliver = self._deliver_flow
                    if self._pool is None:
                        results = [deliver(requests, disabled, held, stop) for requests in flows]
                    else:
                        n = len(flows)
                        results = list(self._pool.map(deliver, flows, [disabled] * n, [held] * n, [stop] * n))
                    for requests, (flow_report, done) in zip(flows, results, strict=True):
                        report += flow_report
                        if done < len(requests) and not flow_report.retried:  # stopped before these began
                            skipped += [r.id for r in requests[done:]]
                        elif done < len(requests):  # stopped at a retried one
                            failed_flows.add(requests[0].flow_id)
                            skipped += [r.id for r in requests[done + 1 :]]
            finally:
                held.let_go(skipped)
                self._release(skipped)
        return report

    def _release(self, ids: Sequence[str]) -> None:
        """Hand skipped requests back; if that fails, their leases run out instead."""
        if not ids:
            return
        try:
            self.repository.release(ids)
        except Exception:  # the leases end by themselves
            log.warning(
                "could not release %d skipped hook request(s); their leases will run out", len(ids), exc_info=True
            )

    def _deliver_flow(
        self,
        requests: Sequence[HookRequest],
        disabled: frozenset[str],
        held: _Held,
        stop: threading.Event | None = None,
    ) -> tuple[DispatchReport, int]:
        """Deliver one flow's claimed requests in order; stop at the first that waits
        for a retry, or before the next one once ``stop`` is set. Returns what
        happened and how many were done with."""
        delivered = dead = 0
        for done, request in enumerate(requests):
            if _stopped(stop):
                return DispatchReport(delivered, 0, dead), done
            result, next_at = self._deliver(request, disabled, held)
            if result is _Result.RETRIED:
                return DispatchReport(delivered, 1, dead, next_at), done
            if result is _Result.DELIVERED:
                delivered += 1
            else:
                dead += 1  # dead, not pending: the flow's later requests may go on
        return DispatchReport(delivered, 0, dead), len(requests)

    def _deliver(
        self, request: HookRequest, disabled: frozenset[str], held: _Held
    ) -> tuple[_Result, dt.datetime | None]:
        """One attempt. No error escapes: one that the repository raises while the
        outcome is written leaves the request leased, to be offered again (to this
        dispatcher or another) when the lease ends."""
        try:
            return self._attempt(request, disabled, held)
        except Exception:  # costs this request only, never the other flows
            held.let_go([request.id])
            next_at = self._clock() + dt.timedelta(seconds=self.lease)
            log.warning(
                "hook request %s (%s): could not record its delivery attempt; offered again at %s",
                request.id,
                request.event.value,
                next_at.isoformat(timespec="seconds"),
                exc_info=True,
            )
            return _Result.RETRIED, next_at

    def _attempt(
        self, request: HookRequest, disabled: frozenset[str], held: _Held
    ) -> tuple[_Result, dt.datetime | None]:
        repository = self.repository
        at = self._clock()
        url = self._target(request)
        if url is not None and url in disabled:
            attempt = DeliveryAttempt(at, None, "endpoint disabled (it answered 410 Gone)", 0.0)
            held.let_go([request.id])
            repository.record_attempt(request.id, attempt)
            repository.mark_dead([request.id])
            return _Result.DEAD, None
        start = time.perf_counter()
        try:
            status = self.emitter.emit(request)
        except DeliveryError as e:
            return self._failed(request, at, time.perf_counter() - start, e, held)
        except Exception as e:  # noqa: BLE001 - any emitter failure is recorded and retried
            error = DeliveryError(f"{type(e).__name__}: {e}")
            error.__cause__ = e
            return self._failed(request, at, time.perf_counter() - start, error, held)
        held.let_go([request.id])
        repository.record_attempt(request.id, DeliveryAttempt(at, status, None, time.perf_counter() - start))
        repository.mark_delivered([request.id])
        return _Result.DELIVERED, None

    def _target(self, request: HookRequest) -> str | None:
        """Where ``request`` would go now: the emitter's answer if it can tell (an
        optional ``target_url(request)``, as ``HttpEmitter`` has: the catalog may have
        moved the action), else the URL the request was made for."""
        target = getattr(self.emitter, "target_url", None)
        if not callable(target):
            return request.action.url
        try:
            url = target(request)
        except Exception:  # noqa: BLE001 - an emitter's failure here is left to emit() to report
            return request.action.url
        return url if isinstance(url, str) else None

    def _failed(
        self, request: HookRequest, at: dt.datetime, duration: float, error: DeliveryError, held: _Held
    ) -> tuple[_Result, dt.datetime | None]:
        repository = self.repository
        held.let_go([request.id])
        attempts = repository.record_attempt(request.id, DeliveryAttempt(at, error.status_code, str(error), duration))
        url = error.url or request.action.url  # the endpoint that answered 410, where the catalog moved it
        if error.gone and url is not None:
            repository.disable_endpoint(url)
        if error.gone or not error.retry or attempts >= self.retry.max_attempts:
            repository.mark_dead([request.id])
            log.warning(
                "hook request %s (%s) is dead after %d attempt(s): %s%s",
                request.id,
                request.event.value,
                attempts,
                error,
                _status(error),
            )
            return _Result.DEAD, None
        delay = self._delay(error, attempts)
        repository.release([request.id], delay=delay)
        next_at = self._clock() + dt.timedelta(seconds=delay)  # the backoff starts now, after the attempt
        log.warning(
            "hook request %s (%s) failed: %s%s; attempt %d, next at %s",
            request.id,
            request.event.value,
            error,
            _status(error),
            attempts,
            next_at.isoformat(timespec="seconds"),
        )
        return _Result.RETRIED, next_at

    def _delay(self, error: DeliveryError, attempts: int) -> float:
        """The receiver's ``Retry-After`` (at most ``max_retry_after``), if it gave a
        usable one, but never less than the retry policy's delay: a ``Retry-After: 0``
        (or a date in the past) may lengthen the backoff, never skip it, so a receiver
        cannot burn every attempt of a request at once."""
        policy = self.retry.delay(attempts)
        after = error.retry_after
        if after is None or (isinstance(after, float) and math.isnan(after)) or after < 0:
            return policy
        return max(policy, float(min(after, self.max_retry_after)))

    def run(self, stop: threading.Event | None = None) -> None:
        """Deliver until ``stop`` is set, polling every ``poll_interval`` seconds
        when there is nothing to do. A failed ``run_once`` (the repository down) is
        logged and tried again after a backoff that doubles up to a minute."""
        stop = stop or threading.Event()
        failures = 0
        while not stop.is_set():
            try:
                report = self.run_once(stop)
            except Exception:  # the loop outlives any one failure
                failures += 1
                wait = min(self.poll_interval * 2 ** min(failures, 20), max(_MAX_BACKOFF, self.poll_interval))
                log.error(
                    "dispatching failed (%d time(s) in a row); trying again in %.1f s", failures, wait, exc_info=True
                )
                stop.wait(wait)
                continue
            failures = 0
            if report.delivered + report.retried + report.dead == 0:
                stop.wait(self.poll_interval)


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()
