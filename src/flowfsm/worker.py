"""``Worker``: the dispatcher and the scheduler in one process, until asked to stop.

A worker delivers the outbox (``flowfsm.dispatch.Dispatcher``) and fires due timers
(``flowfsm.scheduling.Scheduler``), each in a thread of its own, so a slow receiver
never holds a timer back. Any number of workers may share one store: both claim
with leases.

How it learns of new work: a repository with the ``Wakeups`` role (PostgreSQL)
announces every commit that adds HookRequests or timers, and a third thread
listens and wakes the loop concerned at once; the listening scheduler then sleeps
until the next timer is due rather than polling. Polling at ``poll_interval``
stays as the fallback — for what no commit announces (a retry's backoff ending, a
dead worker's lease running out) and alone while the listening connection is down
(it reconnects with a growing pause). SQLite and the in-memory store are polled.

Stopping: once ``stop`` is set, the delivery and the timer under way finish,
whatever else is claimed is released at once (another worker takes it), and
``run`` returns.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Final

import attrs

from flowfsm.dispatch import Dispatcher, DispatchReport, RetryPolicy
from flowfsm.engine import FlowEngine
from flowfsm.errors import ValidationError, bounded
from flowfsm.protocols import HookEmitter, Wakeups
from flowfsm.repositories._common import MAX_WAIT
from flowfsm.scheduling import Scheduler

__all__ = ["Worker", "WorkerReport"]

log = logging.getLogger("flowfsm.worker")

MAX_SLEEP: Final = 60.0
"""The longest a listening scheduler sleeps with no timer due sooner: a bound on
what a lost notice (none is expected) could delay."""

_MAX_BACKOFF: Final = 30.0
"""The longest pause between two attempts to listen again."""


@attrs.frozen
class WorkerReport:
    """What one ``Worker.run_once`` did."""

    deliveries: DispatchReport
    """The dispatcher's report: delivered, retried, dead, next attempt."""
    timers_fired: int
    """Timers that changed a flow (a timer whose flow had moved on is not counted)."""


class Worker:
    """Delivers the outbox of ``engine.repository`` through ``emitter`` and fires
    its due timers through ``engine``.

    ``poll_interval``: seconds between looks when nothing announces work.
    ``concurrency``: flows delivered at once. ``batch``: HookRequests, and timers,
    claimed at a time. ``lease``: seconds a claimed HookRequest is held (renewed
    while delivering); ``timer_lease`` the same for a timer. ``retry`` and
    ``max_retry_after``: the dispatcher's backoff. ``clock``: the engine's by
    default, for both loops.
    """

    def __init__(
        self,
        engine: FlowEngine,
        emitter: HookEmitter,
        *,
        poll_interval: float = 1.0,
        concurrency: int = 1,
        batch: int = 100,
        lease: float = 60.0,
        timer_lease: float = 30.0,
        retry: RetryPolicy | None = None,
        max_retry_after: float = 3600.0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if not isinstance(poll_interval, int | float) or not 0 < poll_interval <= MAX_WAIT:
            raise ValidationError("poll_interval", f"must be more than 0 and at most {MAX_WAIT:g} s")
        clock = engine.clock if clock is None else clock
        repository = engine.repository
        self.repository = repository
        self.poll_interval = poll_interval
        self.batch = batch
        self.dispatcher = Dispatcher(
            repository,
            emitter,
            batch=batch,
            lease=lease,
            poll_interval=poll_interval,
            retry=retry,
            concurrency=concurrency,
            max_retry_after=max_retry_after,
            clock=clock,
        )
        self.scheduler = Scheduler(
            repository, engine, clock=clock, batch=batch, lease=timer_lease, interval=poll_interval
        )
        self._clock = clock
        self._wakeups = repository if isinstance(repository, Wakeups) else None
        self.listening = threading.Event()
        """Set while the store's announcements are heard (never, without ``Wakeups``)."""

    def close(self) -> None:
        self.dispatcher.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run_once(self, stop: threading.Event | None = None) -> WorkerReport:
        """Fire every timer due now, then deliver everything pending (the HookRequests
        those timers made too), and report; for cron-style use. A round whose
        timers all failed or are not due by the engine's clock ends the timers'
        part (they wait for the next call). ``stop`` ends it early, as in ``run``."""
        fired = 0
        while not (stop is not None and stop.is_set()):
            claimed, changed, kept = self.scheduler.fire_due(stop)
            fired += changed
            if claimed < self.batch or kept == claimed:
                break
        return WorkerReport(self.dispatcher.run_once(stop), fired)

    def run(self, stop: threading.Event) -> None:
        """Deliver and fire timers until ``stop`` is set; then let the delivery and
        the timer under way finish, release the rest of what is held, and return."""
        hooks, timers = threading.Event(), threading.Event()

        def wake(kind: str) -> None:
            if kind == "ready":
                self.listening.set()
            if kind in ("ready", "hooks"):
                hooks.set()
            if kind in ("ready", "timers"):
                timers.set()

        loops: list[Callable[[], None]] = [lambda: self._deliver(stop, hooks), lambda: self._fire(stop, timers)]
        if self._wakeups is not None:
            loops.append(lambda: self._listen(stop, wake))
        threads = [threading.Thread(target=loop, name=f"flowfsm-worker-{i}") for i, loop in enumerate(loops)]
        for thread in threads:
            thread.start()
        try:
            # A bounded wait, so that a signal handler that sets ``stop`` runs promptly.
            while not stop.wait(0.5):
                pass
        finally:
            stop.set()
            hooks.set()
            timers.set()
            for thread in threads:
                thread.join()
            self.listening.clear()

    def _deliver(self, stop: threading.Event, wake: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            wake.clear()  # before looking: an announcement during the round is kept
            try:
                report = self.dispatcher.run_once(stop)
            except Exception as e:  # noqa: BLE001 - the store is down: look again after a backoff
                failures += 1
                pause = _backoff(self.poll_interval, failures)
                log.error("delivering failed (%d time(s) in a row): %s; again in %.1f s", failures, _one_line(e), pause)
                wake.wait(pause)
                continue
            failures = 0
            if report.delivered + report.retried + report.dead == 0:
                wake.wait(self.poll_interval)

    def _fire(self, stop: threading.Event, wake: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            wake.clear()
            try:
                claimed, _, kept = self.scheduler.fire_due(stop)
            except Exception as e:  # noqa: BLE001 - the store is down: look again after a backoff
                failures += 1
                pause = _backoff(self.poll_interval, failures)
                log.error(
                    "firing timers failed (%d time(s) in a row): %s; again in %.1f s", failures, _one_line(e), pause
                )
                wake.wait(pause)
                continue
            failures = 0
            if claimed < self.batch or kept == claimed:
                wake.wait(self._timer_pause())

    def _timer_pause(self) -> float:
        """How long the scheduler may sleep: until the next timer is due while
        listening (a new timer's announcement wakes it sooner), else the poll
        interval. A timer already due is leased by someone, or was released after
        failing: it is looked at again after the poll interval."""
        if self._wakeups is None or not self.listening.is_set():
            return self.poll_interval
        try:
            due = self._wakeups.next_timer_due()
        except Exception:  # noqa: BLE001 - the next round reports a store that is down
            return self.poll_interval
        if due is None:
            return MAX_SLEEP
        until = (due - self._clock()).total_seconds()
        return self.poll_interval if until <= 0 else min(until, MAX_SLEEP)

    def _listen(self, stop: threading.Event, wake: Callable[[str], None]) -> None:
        assert self._wakeups is not None  # only started with a store that has the role
        failures = 0
        while not stop.is_set():
            try:
                self._wakeups.listen(wake, stop)
            except Exception as e:  # noqa: BLE001 - polling covers the gap; listen again after a pause
                failures = 1 if self.listening.is_set() else failures + 1
                self.listening.clear()
                pause = min(0.1 * 2 ** min(failures - 1, 10), _MAX_BACKOFF)
                log.warning(
                    "listening for new work failed (%s); polling every %g s meanwhile, listening again in %.1f s",
                    _one_line(e),
                    self.poll_interval,
                    pause,
                )
                stop.wait(pause)


def _backoff(interval: float, failures: int) -> float:
    """After ``failures`` failed rounds in a row: twice the pause each time, from
    the poll interval, up to a minute (or the interval, if longer)."""
    return float(min(interval * 2 ** min(failures, 20), max(60.0, interval)))


def _one_line(error: BaseException) -> str:
    """An error for a log line: its type and message, on one line, bounded (a
    worker's log is read by people; flowfsm's messages never hold a secret)."""
    return bounded(f"{type(error).__name__}: {' '.join(str(error).split())}", 300)
