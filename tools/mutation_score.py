"""The mutation score of the last ``mutmut run`` (``./dev mutate``), per module.

Killed (a test failed) and timed out (a test hung) mutants count as caught. Left
out as equivalent: the mutants listed in ``tools/equivalent_mutants.txt`` (each with
why it cannot change behaviour), and every mutant that only changes the case of a
SQL statement (SQL keywords and SQLite's names are case-insensitive), found by
reading the survivor's diff. Exits 1 below the bar (90%).
"""

from __future__ import annotations

import re
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


_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|PRAGMA|WHERE|FROM)\b", re.IGNORECASE)


def sql_case_only(mutmut: Path, name: str) -> bool:
    """Whether the mutant only changes the case of SQL text."""
    diff = subprocess.run([mutmut, "show", name], capture_output=True, text=True, check=False, cwd=ROOT).stdout
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return (
        bool(removed)
        and len(removed) == len(added)
        and all(a != b and a.lower() == b.lower() and _SQL.search(a) for a, b in zip(removed, added, strict=True))
    )


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
        if status not in CAUGHT and sql_case_only(mutmut, name):
            excluded.add(name)
            continue
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
