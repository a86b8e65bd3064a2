"""Run the benchmarks: python -m benchmarks [--quick] [--only GROUP].

Each figure is printed beside the baseline it was measured against in the same run,
the two taking turns, so a noisy machine moves both. ``--only instructions`` counts
the core workload in CPU instructions instead (needs valgrind; not in the default run).
"""

from __future__ import annotations

import argparse
import os
import platform

from . import approvals, core, delivery, history, instructions, lanes, storage, web, worker
from .report import Report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller stores")
    parser.add_argument(
        "--only",
        choices=["core", "storage", "delivery", "worker", "history", "web", "lanes", "instructions", "approvals"],
        help="run one group",
    )
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    report = Report()
    if args.only in (None, "core"):
        core.run(report, args.quick)
    if args.only in (None, "delivery"):
        delivery.run(report, args.quick)
    if args.only in (None, "worker"):
        worker.run(report, args.quick)
    if args.only in (None, "history"):
        history.run(report, args.quick)
    if args.only in (None, "web"):
        web.run(report, args.quick)
    if args.only in (None, "approvals"):
        approvals.run(report, args.quick)
    if args.only in (None, "lanes"):
        lanes.run(report, args.quick)
    if args.only in (None, "storage"):  # last: the heaviest group (stores of a million flows on disk)
        storage.run(report, args.quick)
    if args.only == "instructions":
        instructions.run(report, args.quick)
    print()
    print("targets missed: " + (", ".join(report.failures) if report.failures else "none"))


if __name__ == "__main__":
    main()
