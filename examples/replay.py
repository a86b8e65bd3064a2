"""Replay a JSON-lines log of triggers into a store.

Each line is a trigger as ``flowfsm.converter`` writes it (``{"type":
"DeploymentStarted", "deploymentId": ...}``). Triggers the store has already
applied are duplicates and change nothing, so after an outage the whole log can
be replayed: what the store missed is applied, in order, and the rest is skipped.
A line that is not a trigger (a log torn mid-line) is counted and passed over.

Run: python examples/replay.py LOG --store flows.db --catalog flowfsm.toml
(``--store`` is a SQLite file or a ``postgresql://`` URL, as the ``flowfsm`` command's.)
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable

from flowfsm import Catalog, FlowEngine, FlowFSMError, Trigger
from flowfsm.converter import from_json
from flowfsm.protocols import Repository
from flowfsm.repositories import PostgresRepository, SQLiteRepository


def open_store(store: str) -> Repository:
    """PostgreSQL for a ``postgresql://`` URL, else a SQLite file, as ``flowfsm --store``."""
    scheme, _, rest = store.partition("://")
    if rest and scheme.lower() in ("postgresql", "postgres"):
        return PostgresRepository(f"{scheme.lower()}://{rest}")  # libpq reads the scheme in lower case only
    return SQLiteRepository(store)


def replay(engine: FlowEngine, lines: Iterable[str]) -> Counter[str]:
    """Apply each trigger; count what happened: applied, duplicate or the error's name."""
    counts: Counter[str] = Counter()
    for line in lines:
        if not line.strip():
            continue
        try:
            outcome = engine.handle(from_json(line, Trigger))  # bad JSON too: a ValidationError
        except FlowFSMError as e:
            counts[type(e).__name__] += 1
            continue
        counts["duplicate" if outcome.duplicate else "applied"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--store", default="flowfsm.db")
    parser.add_argument("--catalog", default="flowfsm.toml")
    args = parser.parse_args(argv)
    try:
        engine = FlowEngine(Catalog.from_file(args.catalog), open_store(args.store), None)
        with open(args.log) as log:
            counts = replay(engine, log)
    except (FlowFSMError, OSError) as e:  # a catalog, store or log it cannot use: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(", ".join(f"{name}: {n}" for name, n in sorted(counts.items())) or "empty log")
    return 0 if set(counts) <= {"applied", "duplicate"} else 1


if __name__ == "__main__":
    sys.exit(main())
