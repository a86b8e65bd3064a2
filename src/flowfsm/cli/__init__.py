"""The ``flowfsm`` command (see ``flowfsm.cli.app``); needs the ``cli`` extra."""

from __future__ import annotations

import io
import sys

__all__ = ["main"]


def main() -> None:
    """The console script's entry point: a clear word if the extra is missing."""
    try:
        from flowfsm.cli.app import app
    except ImportError as e:
        sys.stderr.write(f"error: the flowfsm command needs the 'cli' extra: pip install 'flowfsm[cli]' ({e})\n")
        raise SystemExit(1) from None
    for stream in (sys.stdout, sys.stderr):  # text that cannot be encoded is shown escaped, never a crash
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    app()
