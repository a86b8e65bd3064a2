"""Redraw the rule tables and Mermaid diagrams in the docs from the machines in the code."""

from pathlib import Path

from flowfsm.diagrams import render_into

docs = Path(__file__).resolve().parent.parent / "docs"
for doc in (docs / "machines.md", docs / "steering.md"):
    doc.write_text(render_into(doc.read_text()))
