"""``flowfsm.testing`` imports without pytest or Hypothesis (SPEC §13)."""

from __future__ import annotations

import subprocess
import sys

# A child interpreter where importing pytest or hypothesis fails, as where neither is installed.
_WITHOUT = """
import builtins, sys
real = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in ("pytest", "hypothesis", "_pytest"):
        raise ModuleNotFoundError(f"No module named {name!r}")
    return real(name, *args, **kwargs)
builtins.__import__ = guarded
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT + code], capture_output=True, text=True, check=False)


def test_the_helpers_import_without_pytest_or_hypothesis() -> None:
    done = _run(
        "from flowfsm.testing import SequentialIds, StepClock, TemporaryPostgres, sample_flow, sample_hook_request\n"
        "ids = SequentialIds()\n"
        "assert (ids(), ids()) == ('id-1', 'id-2')\n"
        "assert sample_hook_request(sample_flow()).flow_id == sample_flow().id\n"
        "print('ok')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_the_contract_says_it_needs_pytest() -> None:
    done = _run("from flowfsm.testing import RepositoryContract\n")
    assert done.returncode == 1
    assert "No module named 'pytest'" in done.stderr
    assert "flowfsm.testing.RepositoryContract needs pytest and Hypothesis (pip install 'flowfsm[dev]')" in done.stderr


def test_star_import_works_without_pytest_or_hypothesis() -> None:
    done = _run("from flowfsm.testing import *\nprint(sorted(n for n in dir() if not n.startswith('_')))\n")
    assert done.returncode == 0, done.stderr
    assert "SequentialIds" in done.stdout
    assert "RepositoryContract" not in done.stdout


def test_an_unknown_name_is_an_attribute_error() -> None:
    import flowfsm.testing

    assert not hasattr(flowfsm.testing, "Nope")
