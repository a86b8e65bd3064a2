"""Redraw the rule tables and Mermaid diagrams in docs/machines.md from the machines in the code."""

from pathlib import Path

from flowfsm.diagrams import render_into

doc = Path(__file__).resolve().parent.parent / "docs" / "machines.md"
doc.write_text(render_into(doc.read_text()))
