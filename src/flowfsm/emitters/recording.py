"""Emitters that stay in the process: one that records, one that calls you."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flowfsm.model import HookRequest

__all__ = ["CallbackEmitter", "RecordingEmitter"]


class RecordingEmitter:
    """Keeps every HookRequest it receives, in order, in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[HookRequest] = []
        self._lock = threading.Lock()

    def emit(self, request: HookRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


class CallbackEmitter:
    """Calls ``callback(request)`` for each HookRequest; if it raises, the request
    stays pending in the outbox."""

    def __init__(self, callback: Callable[[HookRequest], object]) -> None:
        self._callback = callback

    def emit(self, request: HookRequest) -> None:
        self._callback(request)
