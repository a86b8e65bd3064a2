"""The core workload counted in CPU instructions, not seconds: a reading the host's
noise cannot move, for comparing two versions of the code.

Each count runs a child interpreter under valgrind's callgrind (with a fixed hash
seed) twice, with a short and a long run of the same workload; the difference,
divided by the extra triggers, is the cost of one trigger, free of start-up and
import. Instructions are not time: the engine's code reaches fewer instructions per
cycle than a bare trigger's tight loop, so its time ratio is the higher one. Needs
``valgrind`` on the PATH; without it the group says so and measures nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from .report import Report

_SHORT, _LONG = 10, 30  # full flows (or bare-trigger batches of the same count)


def _child(mode: str, flows: int) -> None:
    from flowfsm import HookEvent

    from .core import TRIGGERS_PER_FLOW, engine_with, full_flow, per_trigger_bare, steered_flow

    if mode == "bare":
        per_trigger_bare(200)
        per_trigger_bare(flows * TRIGGERS_PER_FLOW)
        return
    if mode in ("plain", "steered"):  # on the steering comparison's catalog (policy PAUSE)
        engine, versions = engine_with(0, mode, tuple(HookEvent), "PAUSE")
        workload = steered_flow if mode == "steered" else full_flow
    else:
        engine, versions = engine_with(0, mode, tuple(HookEvent) if mode == "every" else ())
        workload = full_flow
    for _ in range(flows + 3):  # three to warm up, as in the short run
        workload(engine, versions())


def _instructions(valgrind: str, mode: str, flows: int) -> int:
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    command += ["-m", "benchmarks.instructions", mode, str(flows)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_trigger(valgrind: str, mode: str) -> float:
    from .core import STEERED_TRIGGERS_PER_FLOW, TRIGGERS_PER_FLOW

    extra = _instructions(valgrind, mode, _LONG) - _instructions(valgrind, mode, _SHORT)
    triggers = STEERED_TRIGGERS_PER_FLOW if mode == "steered" else TRIGGERS_PER_FLOW
    return extra / ((_LONG - _SHORT) * triggers)


def run(report: Report, quick: bool) -> None:
    report.section("core in CPU instructions (callgrind)")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("  skipped: valgrind is not on the PATH")
        return
    bare, every, quiet = (per_trigger(valgrind, mode) for mode in ("bare", "every", "quiet"))
    kilo = 1e-3
    report.ratio(
        "engine trigger vs bare transitions trigger, instructions",
        every,
        bare,
        "(context: the target is on time)",
        None,
        unit="k",
        scale=kilo,
        note="the core workload: 3 envs × 2 promotions, 2 webhooks × 2 actions on all 9 events",
    )
    report.ratio("the same, no webhooks at all", quiet, bare, "(context)", None, unit="k", scale=kilo)
    plain, steered = (per_trigger(valgrind, mode) for mode in ("plain", "steered"))
    report.ratio(
        "steered flow trigger vs plain flow trigger, instructions",
        steered,
        plain,
        "(context: the target, ≤ 1.3×, is on time)",
        None,
        unit="k",
        scale=kilo,
        note="a promotion failed and retried twice, a pause and a resume; policy PAUSE, webhooks on all events",
    )


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
