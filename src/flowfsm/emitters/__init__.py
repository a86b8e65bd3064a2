"""Hook emitters: where HookRequests go.

``RecordingEmitter`` and ``CallbackEmitter`` need nothing beyond the core;
``HttpEmitter`` needs the ``http`` extra (httpx), imported when one is created.
"""

from flowfsm.emitters.http import HttpEmitter
from flowfsm.emitters.recording import CallbackEmitter, RecordingEmitter

__all__ = ["CallbackEmitter", "HttpEmitter", "RecordingEmitter"]
