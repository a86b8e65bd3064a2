"""A small table printer for benchmark results: every figure beside its baseline."""

from __future__ import annotations


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}")

    def ratio(
        self,
        name: str,
        measured: float,
        baseline: float,
        target: str,
        ok: bool | None,
        *,
        unit: str = "",
        scale: float = 1.0,
        note: str = "",
    ) -> None:
        verdict = {True: "ok", False: "MISSED", None: ""}[ok]
        print(
            f"  {name}: {measured * scale:.2f} {unit} vs {baseline * scale:.2f} {unit}"
            f" = {measured / baseline:.2f}×  (target {target}) {verdict}"
        )
        if note:
            print(f"      {note}")
        if ok is False:
            self.failures.append(name)

    def value(
        self, name: str, measured: float, target: str, ok: bool | None, *, unit: str = "", digits: int = 0
    ) -> None:
        verdict = {True: "ok", False: "MISSED", None: ""}[ok]
        print(f"  {name}: {measured:,.{digits}f} {unit}  (target {target}) {verdict}")
        if ok is False:
            self.failures.append(name)
