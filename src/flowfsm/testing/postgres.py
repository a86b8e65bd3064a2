"""``TemporaryPostgres``: a throwaway PostgreSQL server on loopback, for tests.

Framework-free; needs PostgreSQL's server binaries (``initdb``, ``pg_ctl``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

__all__ = ["TemporaryPostgres"]


# Run by a TemporaryPostgres's watchdog process: wait for the end of the pipe from
# the process that started the server, which comes when that process exits however
# it exits (a signal, a crash, or closing it), then stop the server and remove its
# directory. Nothing to do if the process did that itself.
_WATCHDOG = """
import json, shutil, subprocess, sys
stop, directory = json.loads(sys.argv[1])
sys.stdin.buffer.read()
subprocess.run(stop, capture_output=True, timeout=120, check=False)
shutil.rmtree(directory, ignore_errors=True)
"""


class TemporaryPostgres:
    """A throwaway PostgreSQL server on 127.0.0.1, for tests and benchmarks.

    ``with TemporaryPostgres() as pg: PostgresRepository(pg.dsn)``. It runs
    ``initdb`` and ``pg_ctl`` (found on ``PATH`` or under ``/usr/lib/postgresql``)
    in a temporary directory on a free port — as the ``postgres`` user when run
    as root, since PostgreSQL refuses to run as root — and removes everything on
    exit. A small watchdog process does the same if the process that started the
    server ends first without exiting the context: killed by a signal, say, which
    skips ``__exit__``. ``durable=False`` (the default) turns off fsync: fast, and
    what it commits still survives the server being killed, though not the machine.
    """

    def __init__(self, *, durable: bool = False, bin_dir: str | None = None) -> None:
        found = bin_dir or self.find_bin_dir()
        if found is None:
            raise FileNotFoundError("PostgreSQL's initdb and pg_ctl were not found")
        self.bin_dir = found
        self.durable = durable
        self.port = 0
        self.dsn = ""
        self._dir = ""
        self._watchdog: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_bin_dir() -> str | None:
        """Where ``initdb`` and ``pg_ctl`` are, or None."""
        on_path = shutil.which("initdb")
        if on_path and shutil.which("pg_ctl"):
            return os.path.dirname(os.path.realpath(on_path))
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        return os.path.dirname(versions[-1]) if versions else None

    def _command(self, *args: str) -> list[str]:
        command = [os.path.join(self.bin_dir, args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, *args: str) -> None:
        done = subprocess.run(self._command(*args), capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def __enter__(self) -> TemporaryPostgres:
        self._dir = tempfile.mkdtemp(prefix="flowfsm-pg-")
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
        data = os.path.join(self._dir, "data")
        try:
            self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
            self._watch(data)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            self.start()
        except BaseException:
            self.__exit__()
            raise
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5"
        return self

    def _watch(self, data: str) -> None:
        stop = self._command("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, json.dumps([stop, self._dir])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # out of the way of signals sent to this process's group
        )

    def stop(self) -> None:
        """Stop the server now (its files stay until ``__exit__``)."""
        self._run("pg_ctl", "-D", os.path.join(self._dir, "data"), "-m", "immediate", "-w", "stop")

    def start(self) -> None:
        """Start the server (again, after ``stop``: same port, same data)."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self._dir} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        data, log = os.path.join(self._dir, "data"), os.path.join(self._dir, "server.log")
        self._run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start")

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped, or never started
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            if self._watchdog is not None:
                self._close_watchdog(self._watchdog)
                self._watchdog = None

    @staticmethod
    def _close_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
        """End of the pipe: the watchdog finds nothing left to do and exits. A child
        this process forked may still hold the pipe; then the watchdog waits for it,
        and this does not."""
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=10)
