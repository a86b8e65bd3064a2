"""The machines as diagrams, drawn from their declarations (``flowfsm.machines``).

``mermaid(name)`` gives a Mermaid ``stateDiagram-v2``, ``svg(name)`` a standalone
SVG, and ``render_into(markdown)`` redraws the diagram blocks of a page, so the
diagrams in ``docs/machines.md`` cannot drift from the code. A label reads
``trigger [guard, ...]``; the guard every transition has (*flow not finished*) is
left out. ``rules(name)`` gives the declaration as a Markdown table.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Final

from flowfsm.machines import DECLARATIONS, FLOW_OPEN, Effect, Held, Next, Withdrawn, always

__all__ = ["mermaid", "render_into", "rules", "svg"]


def mermaid(entity: str) -> str:
    """A Mermaid ``stateDiagram-v2`` drawn from the machine's declaration."""
    declaration = DECLARATIONS[entity]
    edges = _edges(entity)
    lines = ["stateDiagram-v2", f"    [*] --> {declaration.initial.value}"]
    lines += [f"    {source} --> {dest}: {label}" for source, dest, label in edges]
    sources = {source for source, _, _ in edges}
    lines += [f"    {state.value} --> [*]" for state in declaration.states if state.value not in sources]
    return "\n".join(lines) + "\n"


def rules(entity: str) -> str:
    """The machine's declaration as a Markdown table, one row per rule."""
    declaration = DECLARATIONS[entity]
    rows = [
        "| trigger | from → to | guards | hook events | then | failure | a repeat (duplicate) when | contradicts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rule in declaration.rules:
        events = [_effect(e) for e in rule.events]
        repeats = [
            f"`{state.value}`" + ("" if test is always else f" ({_doc(test)})") for state, test in rule.repeats.items()
        ]
        contradicts = [f"`{state.value}`: {reason}" for state, reason in rule.contradicts.items()]
        cells = [
            f"`{rule.trigger}`",
            f"`{rule.source.value}` → `{rule.dest.value}`",
            ", ".join(g.label for g in rule.guards),
            ", ".join(events),
            ", ".join(f"{kind} `{trigger}`" for kind, trigger in rule.then),
            rule.failure.value if rule.failure else "",
            ", ".join(repeats),
            "; ".join(contradicts),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _doc(test: Callable[..., bool]) -> str:
    """A repeat test's name, as words."""
    return test.__name__.strip("_").replace("_", " ")


def _fenced(entity: str) -> str:
    return f"```mermaid\n{mermaid(entity)}```\n"


_BLOCKS: Final[dict[str, tuple[str, Callable[[str], str]]]] = {  # marker -> (end marker, how to draw)
    "diagram": ("<!-- /diagram -->", _fenced),
    "rules": ("<!-- /rules -->", rules),
}


def render_into(markdown: str) -> str:
    """``markdown`` with each ``<!-- diagram:NAME -->`` and ``<!-- rules:NAME -->``
    block redrawn from the code."""
    for kind, (end_marker, draw) in _BLOCKS.items():
        for entity in DECLARATIONS:
            begin = f"<!-- {kind}:{entity} -->"
            start = markdown.find(begin)
            if start < 0:
                continue
            end = markdown.index(end_marker, start)
            markdown = markdown[:start] + f"{begin}\n{draw(entity)}" + markdown[end:]
    return markdown


def _edges(entity: str) -> list[tuple[str, str, str]]:
    """(source, destination, label) for every transition, in declared order."""
    edges = []
    for rule in DECLARATIONS[entity].rules:
        guards = [g.label for g in rule.guards if g is not FLOW_OPEN]
        label = rule.trigger + (f" [{', '.join(guards)}]" if guards else "")
        edges.append((str(rule.source.value), str(rule.dest.value), label))
    return edges


def svg(entity: str, *, highlight: Collection[str] = (), marker_id: str = "arrow") -> str:
    """The machine as a standalone SVG: states left to right by distance from the
    initial state, so the diagram needs no renderer beyond a browser.

    The states named in ``highlight`` (JSON spellings) are filled and marked
    ``class="current"``: a flow's current states, as the dashboard draws them.
    ``marker_id`` names the arrowhead, so that several diagrams on one page keep
    their ids unique."""
    from html import escape

    initial = str(DECLARATIONS[entity].initial.value)
    edges = _edges(entity)
    depth = {initial: 0}
    frontier = [initial]
    while frontier:
        following = []
        for state in frontier:
            for source, dest, _ in edges:
                if source == state and dest not in depth:
                    depth[dest] = depth[state] + 1
                    following.append(dest)
        frontier = following
    columns: dict[int, list[str]] = {}
    for state, d in depth.items():
        columns.setdefault(d, []).append(state)
    box_w, box_h, row_h, left, top = 110, 36, 90, 60, 40
    # Leave each column's gap wide enough for the longest label crossing it (11 px text).
    col_w = box_w + max(100, 7 * max(len(label) for _, _, label in edges) + 24)
    position = {
        state: (left + d * col_w, top + i * row_h) for d, states in columns.items() for i, state in enumerate(states)
    }
    finals = {s for s in depth if not any(src == s for src, _, _ in edges)}
    width = left + (len(columns) - 1) * col_w + box_w + 20
    height = top + max(len(s) for s in columns.values()) * row_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
        ' font-size="13">',
        f'<defs><marker id="{marker_id}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8"'
        ' orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>',
    ]
    x0, y0 = position[initial]
    parts.append(f'<circle cx="{left - 35}" cy="{y0 + box_h / 2}" r="7"/>')
    parts.append(
        f'<line x1="{left - 28}" y1="{y0 + box_h / 2}" x2="{x0}" y2="{y0 + box_h / 2}" stroke="black"'
        f' marker-end="url(#{marker_id})"/>'
    )
    for source, dest, label in edges:
        (sx, sy), (dx, dy) = position[source], position[dest]
        x1, y1, x2, y2 = sx + box_w, sy + box_h / 2, dx, dy + box_h / 2
        parts.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="black" marker-end="url(#{marker_id})"/>'
            f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 6}" text-anchor="middle" font-size="11">'
            f"{escape(label)}</text>"
        )
    for state, (x, y) in position.items():
        stroke = 3 if state in finals else 1
        fill, mark = ("#ffd54f", ' class="current"') if state in highlight else ("white", "")
        parts.append(
            f'<rect{mark} x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="10" fill="{fill}" stroke="black"'
            f' stroke-width="{stroke}"/><text x="{x + box_w / 2}" y="{y + box_h / 2 + 4}" text-anchor="middle">'
            f"{escape(state)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _effect(effect: Effect) -> str:
    """A rule's hook event as its table shows it."""
    if isinstance(effect, Withdrawn):
        return f"if awaiting approval: `{effect.event.value}`"
    if isinstance(effect, Held):
        return f"held: `{effect.event.value}`"
    if isinstance(effect, Next):
        return f"next: `{effect.event.value}`"
    return f"`{effect.value}`"
