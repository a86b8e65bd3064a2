"""``Dispatcher``: delivers what the outbox holds, so a crash loses no HookRequest.

The engine commits each trigger's HookRequests with its flow, then hands them to
its emitter. If the emitter fails, or the process dies between the commit and
the delivery, they stay pending; a dispatcher — in the same process, another
one, or several — claims them and delivers them, at least once, in creation
order within each flow. Receivers deduplicate by the HookRequest id.
"""

from __future__ import annotations

import logging
import threading

from flowfsm.protocols import HookEmitter, Repository

__all__ = ["Dispatcher"]

log = logging.getLogger("flowfsm.dispatch")


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
    ) -> None:
        """``batch``: HookRequests claimed at a time. ``lease``: seconds a claim is
        held before another dispatcher may take it over (longer than a batch takes
        to deliver). ``poll_interval``: seconds between polls in ``run``."""
        self.repository = repository
        self.emitter = emitter
        self.batch = batch
        self.lease = lease
        self.poll_interval = poll_interval

    def run_once(self) -> int:
        """Deliver what is pending now; return how many were delivered.

        A flow whose HookRequest fails is skipped for the rest of this call (its
        later requests must not overtake it); the failed one stays pending. What
        was skipped stays claimed until the call ends, so it cannot crowd the
        other flows out of the following batches.
        """
        delivered = 0
        failed_flows: set[str] = set()
        held: list[str] = []
        try:
            while True:
                claimed = self.repository.claim(self.batch, lease=self.lease)
                if not claimed:
                    return delivered
                done: list[str] = []
                for request in claimed:
                    if request.flow_id not in failed_flows:
                        try:
                            self.emitter.emit(request)
                        except Exception:
                            log.warning(
                                "delivery of hook request %s (%s) failed; it stays pending",
                                request.id,
                                request.event.value,
                                exc_info=True,
                            )
                            failed_flows.add(request.flow_id)
                        else:
                            done.append(request.id)
                            continue
                    held.append(request.id)
                if done:
                    self.repository.mark_delivered(done)
                delivered += len(done)
        finally:
            if held:
                self.repository.release(held)

    def run(self, stop: threading.Event | None = None) -> None:
        """Deliver until ``stop`` is set, polling every ``poll_interval`` seconds
        when there is nothing to do."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if self.run_once() == 0:
                stop.wait(self.poll_interval)
