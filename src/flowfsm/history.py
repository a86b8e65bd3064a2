"""History (SPEC §9): what each trigger did to each flow it changed.

The engine drafts one ``HistoryEntry`` per changed flow from the state changes its
unit of work published, in order (``flowfsm.work.FlowDraft.moves``: recorded where
every entity's next version is made, so every rule of the machines, present or
future, is recorded without the rules saying so, and a failure a policy retries at
once is recorded with its retry); ``FlowEngine.handle`` then gives
the entries their trigger (one JSON form per trigger) and commits them with the
flows. A duplicate changes nothing and costs nothing here.

History is written on every trigger and seldom read, so what an entry holds is
made cheaply and finished when read: its changes are kept as recorded
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
from flowfsm.work import Move

__all__ = ["StateChanges", "TriggerJSON", "attribute", "credit", "draft", "state_changes", "trigger_json"]


_SPELLING: Final = {state: state.value for kind in (FlowState, DeploymentState, PromotionState) for state in kind}


def _created(flow: Flow) -> list[Move]:
    """What a new flow's creation changed: every promotion before its deployment,
    the deployments before the flow, each from nothing."""
    changes: list[Move] = []
    add = changes.append
    for deployment in flow.deployments:
        for promotion in deployment.promotions:
            add(("promotion", promotion.id, None, promotion.state))
        add(("deployment", deployment.id, None, deployment.state))
    add(("flow", flow.id, None, flow.state))
    return changes


def state_changes(moves: Sequence[Move]) -> tuple[StateChange, ...]:
    """The recorded moves as ``StateChange`` values, states in their JSON spelling."""
    spelling = _SPELLING
    return tuple([_make_state_change(e, i, None if a is None else spelling[a], spelling[b]) for e, i, a, b in moves])


class StateChanges(Sequence[StateChange]):
    """An entry's ``changes`` as the engine makes them: the moves its unit of work
    published, in order (``flowfsm.work.FlowDraft.moves``), kept as they were
    recorded and made ``StateChange`` values when read, since history is written on
    every trigger and seldom read. It equals the tuple it stands for."""

    __slots__ = ("_raw",)

    def __init__(self, moves: Sequence[Move]) -> None:
        self._raw = tuple(moves)

    def _tuple(self) -> tuple[StateChange, ...]:
        return state_changes(self._raw)

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
    moves: Sequence[Sequence[Move] | None], saved: Sequence[Flow], requests: Sequence[HookRequest], now: dt.datetime
) -> tuple[HistoryEntry, ...]:
    """One entry per saved flow (``moves``: what its unit of work published, None if
    the flow is new), its ``seq`` the saved version, with the ids of its
    ``requests``; ``attribute`` gives it its trigger."""

    def changes(flow_moves: Sequence[Move] | None, flow: Flow) -> StateChanges:
        return StateChanges(_created(flow) if flow_moves is None else flow_moves)

    if len(saved) == 1:  # the usual trigger: one flow, whose are all the requests
        after = saved[0]
        ids = tuple([r.id for r in requests])
        return (_make_history_entry(after.id, after.version, now, changes(moves[0], after), ids),)
    return tuple(
        [
            _make_history_entry(
                after.id,
                after.version,
                now,
                changes(flow_moves, after),
                tuple([r.id for r in requests if r.flow_id == after.id]),
            )
            for flow_moves, after in zip(moves, saved, strict=True)
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
        if entry.actor is None:
            _attribute_history_entry(entry, form, actor, reason)
        else:  # credited to flowfsm already (``credit``): it keeps its actor and reason
            _attribute_history_entry(entry, form, entry.actor, entry.reason)


def credit(entries: Sequence[HistoryEntry], reasons: Mapping[str, str], actor: str) -> None:
    """Credit the drafted entries of the flows in ``reasons`` to ``actor`` (flowfsm),
    each with its reason: flows the trigger moved for a reason of flowfsm's own (a
    newer flow superseded them), whose history should say so, not name the person
    whose trigger it was; ``attribute`` then gives them the trigger alone."""
    for entry in entries:
        reason = reasons.get(entry.flow_id)
        if reason is not None:
            _attribute_history_entry(entry, entry.trigger, actor, reason)
