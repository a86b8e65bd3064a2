"""``Dispatcher``: delivers what the outbox holds, so a crash loses no HookRequest.

The engine commits each trigger's HookRequests with its flow, then hands them to
its emitter. If the emitter fails, or the process dies between the commit and
the delivery, they stay pending; a dispatcher — in the same process, another
one, or several — claims them and delivers them, at least once, in creation
order within each flow. Receivers deduplicate by the HookRequest id.

Every attempt is logged in the repository (time, status code, error, duration).
A failure worth retrying waits out a backoff (``RetryPolicy``, or the receiver's
``Retry-After``) while the flow's later requests wait behind it; one that is not
worth retrying, or that has used up its attempts, is marked dead: visible in
``repository.dead_requests()`` and re-queueable with ``repository.requeue()``.
A 410 Gone disables its endpoint until ``repository.enable_endpoint(url)``.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs

from flowfsm.engine import utc_now
from flowfsm.errors import DeliveryError, ValidationError
from flowfsm.model import DeliveryAttempt, HookRequest
from flowfsm.protocols import HookEmitter, Repository

__all__ = ["Dispatcher", "RetryPolicy"]

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
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValidationError("delays", "needs at least one delay, none negative")
        if self.max_attempts < 1:
            raise ValidationError("max_attempts", "must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValidationError("jitter", "must be in [0, 1)")

    def delay(self, attempts: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        base = self.delays[min(attempts, len(self.delays)) - 1]
        return base * (1 + self.jitter * (2 * rng() - 1))


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
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``batch``: HookRequests claimed at a time. ``lease``: seconds a claim is
        held before another dispatcher may take it over (longer than a batch takes
        to deliver). ``poll_interval``: seconds between polls in ``run``.
        ``retry``: the backoff policy. ``concurrency``: flows delivered at once
        (each flow's requests still go one after another, in order)."""
        if concurrency < 1:
            raise ValidationError("concurrency", "must be at least 1")
        self.repository = repository
        self.emitter = emitter
        self.batch = batch
        self.lease = lease
        self.poll_interval = poll_interval
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self._clock = clock
        self._pool = ThreadPoolExecutor(concurrency, "flowfsm-dispatch") if concurrency > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def run_once(self) -> int:
        """Deliver what is pending now; return how many were delivered.

        A flow whose HookRequest fails is skipped for the rest of this call (its
        later requests must not overtake it). What was skipped stays claimed until
        the call ends, so it cannot crowd other flows out of the next batches.
        """
        delivered = 0
        failed_flows: set[str] = set()
        held: list[str] = []
        try:
            while claimed := self.repository.claim(self.batch, lease=self.lease):
                disabled = self.repository.disabled_endpoints()
                by_flow: dict[str, list[HookRequest]] = {}
                for request in claimed:
                    if request.flow_id in failed_flows:
                        held.append(request.id)
                    else:
                        by_flow.setdefault(request.flow_id, []).append(request)
                flows = list(by_flow.values())
                if self._pool is None:
                    results = [self._deliver_flow(requests, disabled) for requests in flows]
                else:
                    results = list(self._pool.map(self._deliver_flow, flows, [disabled] * len(flows)))
                for requests, (done, failed) in zip(flows, results, strict=True):
                    delivered += done
                    if failed:
                        failed_flows.add(requests[0].flow_id)
                        held += [r.id for r in requests[done + 1 :]]
            return delivered
        finally:
            if held:
                self.repository.release(held)

    def _deliver_flow(self, requests: Sequence[HookRequest], disabled: frozenset[str]) -> tuple[int, bool]:
        """Deliver one flow's claimed requests in order; stop at the first failure.
        Returns how many were delivered and whether one failed."""
        for done, request in enumerate(requests):
            if not self._deliver(request, disabled):
                return done, True
        return len(requests), False

    def _deliver(self, request: HookRequest, disabled: frozenset[str]) -> bool:
        repository = self.repository
        at = self._clock()
        if request.action.url is not None and request.action.url in disabled:
            attempt = DeliveryAttempt(at, None, "endpoint disabled (it answered 410 Gone)", 0.0)
            repository.record_attempt(request.id, attempt)
            repository.mark_dead([request.id])
            return True  # dead, not pending: the flow's later requests may go on
        start = time.perf_counter()
        try:
            status = self.emitter.emit(request)
        except DeliveryError as e:
            return self._failed(request, at, time.perf_counter() - start, e)
        except Exception as e:  # noqa: BLE001 - any emitter failure is recorded and retried
            error = DeliveryError(f"{type(e).__name__}: {e}")
            error.__cause__ = e
            return self._failed(request, at, time.perf_counter() - start, error)
        repository.record_attempt(request.id, DeliveryAttempt(at, status, None, time.perf_counter() - start))
        repository.mark_delivered([request.id])
        return True

    def _failed(self, request: HookRequest, at: dt.datetime, duration: float, error: DeliveryError) -> bool:
        repository = self.repository
        attempts = repository.record_attempt(request.id, DeliveryAttempt(at, error.status_code, str(error), duration))
        url = request.action.url
        if error.gone and url is not None:
            repository.disable_endpoint(url)
        if error.gone or not error.retry or attempts >= self.retry.max_attempts:
            repository.mark_dead([request.id])
            log.warning(
                "hook request %s (%s) is dead after %d attempt(s): %s",
                request.id,
                request.event.value,
                attempts,
                error,
            )
            return True  # dead: the flow's later requests go on
        delay = error.retry_after if error.retry_after is not None else self.retry.delay(attempts)
        repository.release([request.id], delay=delay)
        log.info(
            "hook request %s (%s) failed (%s); attempt %d, next in %.1f s",
            request.id,
            request.event.value,
            error,
            attempts,
            delay,
        )
        return False

    def run(self, stop: threading.Event | None = None) -> None:
        """Deliver until ``stop`` is set, polling every ``poll_interval`` seconds
        when there is nothing to do."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if self.run_once() == 0:
                stop.wait(self.poll_interval)
