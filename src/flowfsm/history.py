"""History (SPEC §9): what each trigger did to each flow it changed.

The engine drafts one ``HistoryEntry`` per changed flow from the flow as loaded
and as saved (``state_changes``), so every rule of the machines, present or
future, is recorded without the rules saying so; ``FlowEngine.handle`` then gives
the entries their trigger (one JSON form per trigger) and commits them with the
flows. A duplicate changes nothing and costs nothing here.

History is written on every trigger and seldom read, so what an entry holds is
made cheaply and finished when read: its changes are kept as plain tuples
(``StateChanges``), its trigger's JSON is built on first use (``TriggerJSON``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, get_args, overload

from flowfsm.model import (
    DeploymentState,
    Flow,
    FlowState,
    HistoryEntry,
    HookRequest,
    PromotionState,
    StateChange,
    _attribute_history_entry,
    _frozen_json,
    _make_history_entry,
    _make_state_change,
    check_json,
)
from flowfsm.triggers import Trigger

__all__ = ["StateChanges", "TriggerJSON", "attribute", "draft", "state_changes", "trigger_json"]


_Raw = tuple[str, str, "str | None", str]
"""A state change as the engine keeps it until it is read: (entity, id, from, to)."""
_SPELLING: Final = {state: state.value for kind in (FlowState, DeploymentState, PromotionState) for state in kind}


def _raw_changes(before: Flow | None, after: Flow) -> tuple[_Raw, ...]:
    """``state_changes`` as plain tuples of strings (cheap to make, and the garbage
    collector stops tracking them)."""
    spelling = _SPELLING
    changes: list[_Raw] = []
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
                    add(("promotion", promotion.id, None, spelling[promotion.state]))
                elif was.state is not promotion.state:
                    add(("promotion", promotion.id, spelling[was.state], spelling[promotion.state]))
        if old is None:
            add(("deployment", deployment.id, None, spelling[deployment.state]))
        elif old.state is not deployment.state:
            add(("deployment", deployment.id, spelling[old.state], spelling[deployment.state]))
    if before is None:
        add(("flow", after.id, None, spelling[after.state]))
    elif before.state is not after.state:
        add(("flow", after.id, spelling[before.state], spelling[after.state]))
    return tuple(changes)


def state_changes(before: Flow | None, after: Flow) -> tuple[StateChange, ...]:
    """Each state change from ``before`` (None: the flow is new) to ``after``, every
    promotion before its deployment and the deployments before the flow. Parts a
    trigger did not touch are shared between the two versions, so they are skipped
    by identity, unread."""
    return tuple([_make_state_change(*change) for change in _raw_changes(before, after)])


class StateChanges(Sequence[StateChange]):
    """An entry's ``changes`` as the engine makes them: found when the entry is made
    (``state_changes``), kept as plain tuples, and made ``StateChange`` values when
    read, since history is written on every trigger and seldom read. It equals the
    tuple it stands for."""

    __slots__ = ("_raw",)

    def __init__(self, before: Flow | None, after: Flow) -> None:
        self._raw = _raw_changes(before, after)

    def _tuple(self) -> tuple[StateChange, ...]:
        return tuple([_make_state_change(*change) for change in self._raw])

    @overload
    def __getitem__(self, index: int) -> StateChange: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[StateChange, ...]: ...
    def __getitem__(self, index: int | slice) -> StateChange | tuple[StateChange, ...]:
        return self._tuple()[index]

    def __iter__(self) -> Iterator[StateChange]:
        return iter(self._tuple())

    def __len__(self) -> int:
        return len(self._raw)

    def __eq__(self, other: object) -> bool:
        return self._tuple() == (tuple(other) if isinstance(other, StateChanges) else other)

    def __hash__(self) -> int:
        return hash(self._tuple())

    def __repr__(self) -> str:
        return repr(self._tuple())


def draft(
    loaded: Sequence[Flow | None], saved: Sequence[Flow], requests: Sequence[HookRequest], now: dt.datetime
) -> tuple[HistoryEntry, ...]:
    """One entry per saved flow (``loaded``: each as it was, None if new), its
    ``seq`` the saved version, with the ids of its ``requests``; ``attribute``
    gives it its trigger."""
    if len(saved) == 1:  # the usual trigger: one flow, whose are all the requests
        after = saved[0]
        ids = tuple([r.id for r in requests])
        return (_make_history_entry(after.id, after.version, now, StateChanges(loaded[0], after), ids),)
    return tuple(
        [
            _make_history_entry(
                after.id,
                after.version,
                now,
                StateChanges(before, after),
                tuple([r.id for r in requests if r.flow_id == after.id]),
            )
            for before, after in zip(loaded, saved, strict=True)
        ]
    )


_TRIGGERS: Final = frozenset(get_args(Trigger))


def trigger_json(trigger: object) -> dict[str, Any]:
    """The trigger's JSON form, tagged with its ``type``: the converter's for
    flowfsm's triggers; for another class (a subclass, or the trigger of an engine
    subclass's own applier) its fields, tagged with its class name, and checked to
    be JSON every backend stores."""
    # Imported here: cattrs loads when a history is first written to SQL or read,
    # not with ``import flowfsm`` (the in-memory store never needs it).
    from flowfsm.converter import converter

    if type(trigger) in _TRIGGERS:
        return converter.unstructure(trigger, Trigger)  # type: ignore[no-any-return]
    data = converter.unstructure(trigger)
    form = {**data, "type": type(trigger).__name__} if isinstance(data, dict) else {"type": type(trigger).__name__}
    check_json("trigger", form)
    return form


class TriggerJSON(Mapping[str, Any]):
    """A trigger's JSON form (``trigger_json``), read-only all the way down, built
    when it is first read: history is written on every trigger and seldom read, and
    a trigger is immutable, so its form can wait. It equals the dict it stands for."""

    __slots__ = ("_form", "_source")

    def __init__(self, trigger: object) -> None:
        self._source = trigger
        self._form: Mapping[str, Any] | None = None

    def _json(self) -> Mapping[str, Any]:
        form = self._form
        if form is None:  # two threads may both build it: the same value, either kept
            form = self._form = _frozen_json(trigger_json(self._source))
        return form

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json())

    def __len__(self) -> int:
        return len(self._json())

    def __eq__(self, other: object) -> bool:
        return self._json() == other

    __hash__ = None  # type: ignore[assignment]  # a mapping, like dict

    def __repr__(self) -> str:
        return repr(dict(self._json()))


def attribute(entries: Sequence[HistoryEntry], trigger: object) -> None:
    """Give the drafted ``entries`` the trigger: its JSON form (one ``TriggerJSON``
    for them all; checked now for a trigger class flowfsm does not know, whose
    fields may not be JSON), its actor and its reason."""
    form = TriggerJSON(trigger)
    if type(trigger) not in _TRIGGERS:
        form._json()  # its own check of what it holds, before the commit
    actor, reason = getattr(trigger, "actor", None), getattr(trigger, "reason", None)
    for entry in entries:
        _attribute_history_entry(entry, form, actor, reason)
