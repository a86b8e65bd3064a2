"""The ``flowfsm`` command (see ``flowfsm.cli.app``); needs the ``cli`` extra."""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any, TextIO, cast

__all__ = ["main"]

CLOSED_PIPE_STATUS = 0
"""The exit status when the reader of the output went away (``| head``): the reader
had what it wanted, which is no failure; and whether the write came before or after
the reader left (a race) does not change the status."""


class OutputFailed(Exception):
    """Standard output could not be written (a full disk, a closed pipe). Not an
    ``OSError``, so that nothing between the write and ``main`` (Click included)
    handles it on its own."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _Output:
    """Standard output whose write failures are ``OutputFailed``; ``stream`` is None
    when the command was started with its standard output closed (``>&-``)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def _open(self) -> TextIO:
        if self._stream is None:
            raise OutputFailed(OSError(errno.EBADF, os.strerror(errno.EBADF)))
        return self._stream

    def write(self, text: str) -> int:
        stream = self._open()
        try:
            return stream.write(text)
        except OSError as e:
            raise OutputFailed(e) from e

    def flush(self) -> None:
        if self._stream is None:  # nothing was written, so nothing failed
            return
        try:
            self._stream.flush()
        except OSError as e:
            raise OutputFailed(e) from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main() -> None:
    """The console script's entry point: a clear word if the extra is missing, and one
    place where output that cannot be written ends the command (see ``_output_failed``)."""
    try:
        from flowfsm.cli.app import app
    except ImportError as e:
        sys.stderr.write(f"error: the flowfsm command needs the 'cli' extra: pip install 'flowfsm[cli]' ({e})\n")
        raise SystemExit(1) from None
    for stream in (sys.stdout, sys.stderr):  # text that cannot be encoded is shown escaped, never a crash
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    stdout = sys.stdout
    sys.stdout = cast(TextIO, _Output(stdout))
    try:
        try:
            app()
        finally:  # what is still buffered is written now, where a failure is caught
            sys.stdout.flush()
    except OutputFailed as e:
        _output_failed(e.error)
    finally:
        sys.stdout = stdout


def _output_failed(error: OSError) -> None:
    """A closed pipe ends the command quietly with ``CLOSED_PIPE_STATUS``; any other
    write failure is one ``error:`` line and status 1. Either way, what is left in
    the buffer is dropped (standard output now goes to the null device), so Python's
    own flush at exit has nothing to complain about."""
    closed = isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(null)
    except (OSError, ValueError):  # no standard output to replace: nothing will be flushed
        pass
    if closed:
        raise SystemExit(CLOSED_PIPE_STATUS)
    sys.stderr.write(f"error: cannot write the output: {error.strerror or type(error).__name__}\n")
    raise SystemExit(1)
