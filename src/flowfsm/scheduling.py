"""``Scheduler``: fires due timers through the engine.

Timers are set and cancelled by the engine's commits, with their flows (see
``flowfsm.protocols.Timers``). A scheduler claims the due ones with a lease, as a
dispatcher claims HookRequests, so any number of schedulers can share one store:
while one holds a timer, no other claims it. Each is sent to the engine as a
``TimerFired`` trigger, which does what the machines' rules say (or nothing, if
the flow moved on) and cancels the timer in the same commit; a timer that did
nothing is completed here. A timer whose trigger failed on the store (a
``RepositoryError``, a lost race) is released for the next round; one the engine
refused (its service left the catalog, say) would be refused again, so it keeps its
lease and is tried once the lease ends, logged in one line each time: never a
failure every round, nor a batch of them that holds back the timers behind. The
clock is injectable: tests move a fake one and call ``run_once``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from flowfsm.engine import FlowEngine
from flowfsm.errors import ConcurrencyConflict, FlowFSMError, RepositoryError, ValidationError, bounded
from flowfsm.model import DeploymentState, Timer, TimerKind
from flowfsm.protocols import Timers
from flowfsm.triggers import TimerFired

__all__ = ["Scheduler"]

log = logging.getLogger("flowfsm.scheduling")

_HELD = DeploymentState.HELD.value


class Scheduler:
    """Fires the due timers of ``repository`` through ``engine``: up to ``batch``
    a round, each leased for ``lease`` seconds while it is fired, a round every
    ``interval`` seconds in ``run``. ``clock`` says when a timer is due: the
    engine's by default (the engine, which judges each firing, must agree)."""

    def __init__(
        self,
        repository: Timers,
        engine: FlowEngine,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        batch: int = 100,
        lease: float = 30.0,
        interval: float = 1.0,
    ) -> None:
        if batch < 1:
            raise ValidationError("batch", f"must be at least 1, got {batch}")
        if not lease > 0:
            raise ValidationError("lease", f"must be more than zero seconds, got {lease}")
        if not interval > 0:
            raise ValidationError("interval", f"must be more than zero seconds, got {interval}")
        self.repository = repository
        self.engine = engine
        self._clock = engine.clock if clock is None else clock
        self._batch = batch
        self._lease = lease
        self._interval = interval

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Fire the timers due now (one claim); returns how many changed a flow.
        Once ``stop`` is set, the timer being fired finishes and the rest of the
        claim is released at once, for another scheduler."""
        return self.fire_due(stop)[1]

    def fire_due(self, stop: threading.Event | None = None) -> tuple[int, int, int]:
        """One claim, as ``run_once``: (timers claimed, timers that changed a flow,
        timers released for the next round: the store failed, they are not due by
        the engine's clock, or ``stop`` came first). A timer the engine refused is
        neither: it keeps its lease, so the next claim takes the timers behind it."""
        repository = self.repository
        timers = self._in_arrival_order(repository.claim_due(self._clock(), self._batch, lease=self._lease))
        fired = kept = 0
        for n, timer in enumerate(timers):
            if stop is not None and stop.is_set():
                _logged(repository.release_timers, [t.id for t in timers[n:]])
                kept += len(timers) - n
                break
            try:
                outcome = self.engine.handle(TimerFired(timer.deployment_id, timer.kind))
            except (RepositoryError, ConcurrencyConflict):  # the store, for now: the next round tries again
                log.warning("timer %s could not fire; it is released for the next round", timer.id, exc_info=True)
                _logged(repository.release_timers, [timer.id])
                kept += 1
                continue
            except Exception as e:  # refused, and would be again: it waits out its lease
                log.warning(
                    "timer %s of flow %s could not fire: %s; it is tried again when its lease of %g s ends",
                    timer.id,
                    timer.flow_id,
                    bounded(f"{type(e).__name__}: {' '.join(str(e).split())}", 300),
                    self._lease,
                    exc_info=not isinstance(e, FlowFSMError),  # a bug's traceback; flowfsm's refusal says it all
                )
                continue
            if not outcome.duplicate:  # its commit cancelled it
                fired += 1
                due = timer.due.isoformat(timespec="seconds")
                log.info("timer %s of flow %s fired (due %s)", timer.id, timer.flow_id, due)
            elif timer.due <= self.engine.clock():  # its flow moved on: done with it
                _logged(repository.complete_timers, [timer])
            else:  # not due yet by the engine's clock (behind this one): kept for later
                _logged(repository.release_timers, [timer.id])
                kept += 1
        return len(timers), fired, kept

    def _in_arrival_order(self, timers: list[Timer]) -> list[Timer]:
        """The claim, with the freeze timers that fall due together put in the order
        their deployments were held: the flows a freeze held go on in the order they
        arrived (a queue serves them so), not in the stores' order (due, then id).
        Each deployment's hold is read from its flow's history; one without (a store
        that keeps none) goes after those with one."""
        slots = [n for n, timer in enumerate(timers) if timer.kind is TimerKind.FREEZE]
        if len(slots) < 2:
            return timers
        history = self.engine.repository.history

        def held(n: int) -> tuple[dt.datetime, bool, dt.datetime, int]:
            timer = timers[n]
            for entry in reversed(history(timer.flow_id)):
                if any(c.id == timer.deployment_id and c.to == _HELD for c in entry.changes):
                    return timer.due, False, entry.at, n
            return timer.due, True, timer.due, n

        ordered = list(timers)
        for slot, n in zip(slots, sorted(slots, key=held), strict=True):
            ordered[slot] = timers[n]
        return ordered

    def run(self, stop: threading.Event) -> None:
        """Run rounds until ``stop`` is set, waiting ``interval`` seconds after a
        round that claimed less than a batch (a full one goes on at once)."""
        while not stop.is_set():
            try:
                claimed, _, _ = self.fire_due(stop)
            except Exception:  # a store that is down: try again after the interval
                log.warning("scheduler round failed", exc_info=True)
                claimed = 0
            if claimed < self._batch:
                stop.wait(self._interval)


def _logged(record: Callable[[list[Any]], object], items: list[Any]) -> None:
    """A release or completion that fails costs only a later, harmless retry (the
    lease ends; a stale timer is a duplicate), so it is logged."""
    try:
        record(items)
    except Exception:  # see the docstring
        log.warning("could not record %d timer(s)", len(items), exc_info=True)
