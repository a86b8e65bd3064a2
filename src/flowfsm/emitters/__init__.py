"""Hook emitters: where HookRequests go.

``RecordingEmitter`` and ``CallbackEmitter`` need nothing beyond the core.
"""

from flowfsm.emitters.recording import CallbackEmitter, RecordingEmitter

__all__ = ["CallbackEmitter", "RecordingEmitter"]
