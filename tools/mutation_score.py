"""The mutation score of the last ``mutmut run`` (``./dev mutate``), per module.

Killed (a test failed) and timed out (a test hung) mutants count as caught; the
mutants listed in ``tools/equivalent_mutants.txt`` (each with why it cannot change
behaviour) are left out. Exits 1 below the bar (90%).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

BAR = 0.90
ROOT = Path(__file__).resolve().parent.parent
CAUGHT = {"killed", "timeout"}


def equivalents() -> set[str]:
    lines = (ROOT / "tools" / "equivalent_mutants.txt").read_text().splitlines()
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True, cwd=ROOT)
    excluded = equivalents()
    counts: dict[str, Counter[str]] = {}
    survivors: list[str] = []
    for line in out.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or name in excluded or status in ("not checked", "skipped"):
            continue  # not run (a narrower ./dev mutate), or told not to
        module = name.split(".x")[0]
        counts.setdefault(module, Counter())[status] += 1
        if status not in CAUGHT:
            survivors.append(f"{status}: {name}")
    total = Counter[str]()
    for module, c in sorted(counts.items()):
        total.update(c)
        print(f"{module:40} {_score(c)}")
    print(f"{'all':40} {_score(total)}   ({len(excluded)} equivalent mutants left out)")
    for survivor in survivors:
        print("  ", survivor)
    caught, checked = sum(total[s] for s in CAUGHT), sum(total.values())
    return 0 if checked and caught / checked >= BAR else 1


def _score(c: Counter[str]) -> str:
    caught, checked = sum(c[s] for s in CAUGHT), sum(c.values())
    return f"{caught}/{checked} caught = {caught / checked:.1%}" if checked else "nothing checked"


if __name__ == "__main__":
    sys.exit(main())
