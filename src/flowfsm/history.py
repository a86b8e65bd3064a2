"""History (SPEC §9): what each trigger did to each flow it changed.

The engine drafts one ``HistoryEntry`` per changed flow from the flow as loaded
and as saved (``state_changes``), so every rule of the machines, present or
future, is recorded without the rules saying so; ``FlowEngine.handle`` then gives
the entries their trigger (its JSON form is built once per trigger) and commits
them with the flows. A duplicate changes nothing and costs nothing here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final, get_args

from flowfsm.converter import converter
from flowfsm.model import (
    Flow,
    HistoryEntry,
    HookRequest,
    StateChange,
    _attribute_history_entry,
    _frozen_json,
    _make_history_entry,
    _make_state_change,
    check_json,
)
from flowfsm.triggers import Trigger

__all__ = ["attribute", "draft", "state_changes", "trigger_json"]


def state_changes(before: Flow | None, after: Flow) -> tuple[StateChange, ...]:
    """Each state change from ``before`` (None: the flow is new) to ``after``, every
    promotion before its deployment and the deployments before the flow. Parts a
    trigger did not touch are shared between the two versions, so they are skipped
    by identity, unread."""
    changes: list[StateChange] = []
    add = changes.append
    old_deployments = before.deployments if before is not None else ()
    for i, deployment in enumerate(after.deployments):
        old = old_deployments[i] if i < len(old_deployments) else None
        if old is deployment:
            continue
        if old is None or old.promotions is not deployment.promotions:
            old_promotions = old.promotions if old is not None else ()
            for j, promotion in enumerate(deployment.promotions):
                was = old_promotions[j] if j < len(old_promotions) else None
                if was is None:
                    add(_make_state_change("promotion", promotion.id, None, promotion.state.value))
                elif was.state is not promotion.state:
                    add(_make_state_change("promotion", promotion.id, was.state.value, promotion.state.value))
        if old is None:
            add(_make_state_change("deployment", deployment.id, None, deployment.state.value))
        elif old.state is not deployment.state:
            add(_make_state_change("deployment", deployment.id, old.state.value, deployment.state.value))
    if before is None:
        add(_make_state_change("flow", after.id, None, after.state.value))
    elif before.state is not after.state:
        add(_make_state_change("flow", after.id, before.state.value, after.state.value))
    return tuple(changes)


def draft(
    changed: Sequence[tuple[Flow | None, Flow]], requests: Sequence[HookRequest], now: dt.datetime
) -> tuple[HistoryEntry, ...]:
    """One entry per (loaded or None, saved) flow, its ``seq`` the saved version, with
    the ids of the flow's ``requests``; ``attribute`` gives it its trigger."""
    if len(changed) == 1:  # the usual trigger: one flow, whose are all the requests
        ((before, after),) = changed
        ids = tuple([r.id for r in requests])
        return (_make_history_entry(after.id, after.version, now, state_changes(before, after), ids),)
    return tuple(
        [
            _make_history_entry(
                after.id,
                after.version,
                now,
                state_changes(before, after),
                tuple([r.id for r in requests if r.flow_id == after.id]),
            )
            for before, after in changed
        ]
    )


_TRIGGERS: Final = frozenset(get_args(Trigger))
_unstructure_trigger: Final = converter.get_unstructure_hook(Trigger)  # what unstructure(t, Trigger) calls


def trigger_json(trigger: object) -> dict[str, Any]:
    """The trigger's JSON form, tagged with its ``type``: the converter's for
    flowfsm's triggers; for another class (a subclass, or the trigger of an engine
    subclass's own applier) its fields, tagged with its class name, and checked to
    be JSON every backend stores."""
    if type(trigger) in _TRIGGERS:
        return _unstructure_trigger(trigger)  # type: ignore[no-any-return]
    data = converter.unstructure(trigger)
    form = {**data, "type": type(trigger).__name__} if isinstance(data, dict) else {"type": type(trigger).__name__}
    check_json("trigger", form)
    return form


def attribute(entries: Sequence[HistoryEntry], trigger: object) -> None:
    """Give the drafted ``entries`` the trigger: its JSON form (built once, shared
    read-only), its actor and its reason."""
    form = _frozen_json(trigger_json(trigger))
    actor, reason = getattr(trigger, "actor", None), getattr(trigger, "reason", None)
    for entry in entries:
        _attribute_history_entry(entry, form, actor, reason)
