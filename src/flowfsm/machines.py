"""The Flow, Deployment and Promotion state machines, declared with ``transitions``.

Each machine is built once, at import, for its class, and holds no models:
``fire`` applies one of its events by calling the shared ``Event.trigger(model)``.
A per-object ``Machine`` or ``add_model`` would cost far more per flow and leak
models unless removed.

Entities are immutable, so the model a machine moves is a ``Draft`` of one:
``transitions`` sets the draft's ``state``, and the transition's callback
publishes the draft as the entity's next version on the ``Step`` (the trigger's
unit of work), then records the hook event it causes. Guards read the Step,
which always holds the latest versions.

Guards (``conditions``) and callbacks are plain functions, not strings, so type
checkers and readers can follow them. A refused guard or an event the state does
not allow raises ``InvalidTransition`` (``transitions`` itself would return
``False`` or raise its own ``MachineError``).

Since they are functions, the machines are ``CallablesMachine``s: ``transitions``'
own ``Machine``, customised through its extension points (``state_cls``,
``transition_cls``, ``condition_cls``, ``callbacks``) to call each callback as it
is, without resolving it by name or logging a line for it, and to name each state
once. Same transitions, same callbacks in the same order (a property test holds it
to ``Machine``); an event costs about a third less.

``mermaid(name)`` draws a machine from its declaration, so the diagrams in
``docs/machines.md`` cannot drift from the code.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol, cast

from transitions import EventData, Machine, MachineError
from transitions.core import Condition, State, Transition

from flowfsm.errors import InvalidTransition
from flowfsm.model import (
    ActionRef,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    HookEvent,
    Promotion,
    PromotionResult,
    PromotionState,
    Service,
    make_deployment,
    make_flow,
    make_promotion,
)

__all__ = ["MACHINES", "CallablesMachine", "Draft", "Step", "fire", "may", "mermaid", "refusal", "render_into", "svg"]

_SUCCESS: Final = DeploymentState.SUCCESS
_PASSED: Final = PromotionState.SUCCESS


class _State(State):
    """Names itself once: ``transitions`` asks a state its name several times a
    trigger, and an enum member's ``name`` is a slow property."""

    def __init__(self, name: str | enum.Enum, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self._spelled = name.name if isinstance(name, enum.Enum) else name

    @property
    def name(self) -> str:
        return self._spelled

    def enter(self, event_data: EventData) -> None:
        for callback in self.on_enter:
            callback(event_data)  # type: ignore[operator]  # a CallablesMachine's callbacks are callables

    def exit(self, event_data: EventData) -> None:
        for callback in self.on_exit:
            callback(event_data)  # type: ignore[operator]  # a CallablesMachine's callbacks are callables


class _Condition(Condition):
    def check(self, event_data: EventData) -> bool:
        return self.func(event_data) == self.target  # type: ignore[operator]  # callables only, as above


class _Transition(Transition):
    condition_cls = _Condition


class CallablesMachine(Machine):
    """A ``transitions.Machine`` whose callbacks and conditions are all callables
    taking the ``EventData`` (``send_event=True``): each is called as it is, with no
    lookup by name and no log line of its own."""

    state_cls = _State
    transition_cls = _Transition

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.send_event:
            raise TypeError("a CallablesMachine passes the EventData to its callbacks: send_event=True")
        for callback in _declared_callbacks(self):
            if not callable(callback):
                raise TypeError(f"a CallablesMachine takes callables only, not {callback!r}")

    def callbacks(self, funcs: Iterable[Any], event_data: EventData) -> None:
        for func in funcs:
            func(event_data)


def _declared_callbacks(machine: Machine) -> Iterator[object]:
    """Every callback and condition a machine was declared with."""
    yield from itertools.chain(
        machine.prepare_event,
        machine.before_state_change,
        machine.after_state_change,
        machine.finalize_event,
        machine.on_exception,
        machine.on_final,
    )
    for state in machine.states.values():
        yield from itertools.chain(state.on_enter, state.on_exit)
    for event in machine.events.values():
        for transitions in event.transitions.values():
            for t in transitions:
                yield from itertools.chain(t.prepare, t.before, t.after, (c.func for c in t.conditions))


class Step:
    """One trigger's unit of work: the latest versions of the flow and of the
    deployment it acts on, and the hook events caused so far.

    ``flow.deployments[index]`` is the deployment as loaded; ``deployment`` is its
    latest version, which ``merged()`` puts in its place. Events are recorded with
    the deployment version of their moment, and only when some webhook subscribes.
    """

    __slots__ = ("deployment", "events", "flow", "index", "result", "service")

    def __init__(self, flow: Flow, service: Service, index: int, result: PromotionResult | None = None) -> None:
        self.flow = flow
        self.service = service
        self.index = index
        self.deployment = flow.deployments[index]
        self.result = result
        # (event, deployment version, promotion result, its (webhook id, action) subscribers)
        self.events: list[tuple[HookEvent, Deployment, PromotionResult | None, tuple[tuple[str, ActionRef], ...]]] = []

    def record(self, event: HookEvent, deployment: Deployment | None = None) -> None:
        if subscribers := self.service.subscribers(event):
            self.events.append((event, deployment or self.deployment, self.result, subscribers))

    def current_deployment(self) -> Deployment | None:
        """The first deployment, in pipeline order, that has not succeeded."""
        for i, loaded in enumerate(self.flow.deployments):
            deployment = self.deployment if i == self.index else loaded
            if deployment.state is not _SUCCESS:
                return deployment
        return None

    def deployments(self) -> tuple[Deployment, ...]:
        """The flow's deployments, the one this step acts on in its latest version."""
        deployments = list(self.flow.deployments)
        deployments[self.index] = self.deployment
        return tuple(deployments)

    def merged(
        self, *, state: FlowState | None = None, version: int | None = None, updated_at: dt.datetime | None = None
    ) -> Flow:
        """The flow as this step has changed it so far, with what is given changed too."""
        flow = self.flow
        return make_flow(
            flow.id,
            flow.artifact,
            flow.service_id,
            self.deployments(),
            flow.state if state is None else state,
            flow.version if version is None else version,
            flow.created_at,
            flow.updated_at if updated_at is None else updated_at,
        )

    # --- publishing drafts: each makes the entity's next version --------------------

    def publish_promotion(self, draft: Draft) -> None:
        promotion: Promotion = draft.entity
        published = make_promotion(promotion.id, promotion.name, draft.state)
        d = self.deployment
        promotions = tuple([published if p.id == promotion.id else p for p in d.promotions])
        self.deployment = make_deployment(d.id, d.environment, promotions, d.state)

    def publish_deployment(self, draft: Draft) -> None:
        d: Deployment = draft.entity
        self.deployment = make_deployment(d.id, d.environment, d.promotions, draft.state)

    def publish_flow(self, draft: Draft) -> None:
        self.flow = self.merged(state=draft.state)


class Draft:
    """An entity while a machine moves it: ``transitions`` sets ``state`` here."""

    __slots__ = ("entity", "state")

    def __init__(self, entity: Flow | Deployment | Promotion) -> None:
        self.entity: Any = entity
        self.state: Any = entity.state


class _Stateful(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def state(self) -> Any: ...


Guard = Callable[..., Any]


# --- guards: each returns False to refuse, and says why in _REASONS -----------------
# Each reads the Step that ``fire`` passes as the ``step`` keyword of the trigger.


def _flow_in_progress(event: EventData) -> bool:
    return event.kwargs["step"].flow.state is FlowState.IN_PROGRESS


def _is_current(event: EventData) -> bool:
    step: Step = event.kwargs["step"]
    return step.current_deployment() is step.deployment


def _all_promotions_succeeded(event: EventData) -> bool:
    for promotion in event.kwargs["step"].deployment.promotions:  # noqa: SIM110 - no generator, on most triggers
        if promotion.state is not _PASSED:
            return False
    return True


def _deployment_completed(event: EventData) -> bool:
    return event.kwargs["step"].deployment.state is DeploymentState.COMPLETED


def _all_deployments_succeeded(event: EventData) -> bool:
    return event.kwargs["step"].current_deployment() is None


_REASONS: Final[dict[Guard, str]] = {
    _flow_in_progress: "the flow is finished",
    _is_current: "it is not the flow's current deployment",
    _all_promotions_succeeded: "not every promotion has succeeded",
    _deployment_completed: "its deployment has not completed",
    _all_deployments_succeeded: "not every deployment has succeeded",
}

_LABELS: Final[dict[Guard, str]] = {
    _flow_in_progress: "flow inProgress",
    _is_current: "current deployment",
    _all_promotions_succeeded: "all promotions success",
    _deployment_completed: "deployment completed",
    _all_deployments_succeeded: "all deployments success",
}


# --- callbacks: publish the draft, record the hook event the transition causes -----


def _publishes(publish: Callable[[Step, Draft], None], hook_event: HookEvent) -> Callable[[EventData], None]:
    def after(event: EventData) -> None:
        step: Step = event.kwargs["step"]
        publish(step, event.model)  # type: ignore[arg-type]  # the models of flowfsm machines are Drafts
        step.record(hook_event)

    after.__name__ = f"record_{hook_event.name.lower()}"
    return after


def _machine(
    states: Any,
    initial: Any,
    publish: Callable[[Step, Draft], None],
    transitions: list[tuple[str, Any, Any, list[Guard], HookEvent]],
) -> Machine:
    return CallablesMachine(
        model=None,
        states=states,
        initial=initial,
        transitions=[
            {
                "trigger": trigger,
                "source": source,
                "dest": dest,
                "conditions": [_flow_in_progress, *guards],
                "after": [_publishes(publish, records)],
            }
            for trigger, source, dest, guards, records in transitions
        ],
        send_event=True,
        auto_transitions=False,
    )


_D, _P, _F, _E = DeploymentState, PromotionState, FlowState, HookEvent

FLOW_MACHINE: Final = _machine(
    _F,
    _F.IN_PROGRESS,
    Step.publish_flow,
    [
        ("succeed", _F.IN_PROGRESS, _F.SUCCESS, [_all_deployments_succeeded], _E.FLOW_SUCCEEDED),
        ("fail", _F.IN_PROGRESS, _F.FAILED, [], _E.FLOW_FAILED),
    ],
)

DEPLOYMENT_MACHINE: Final = _machine(
    _D,
    _D.NOT_STARTED,
    Step.publish_deployment,
    [
        ("start", _D.NOT_STARTED, _D.STARTED, [_is_current], _E.DEPLOYMENT_STARTED),
        ("complete", _D.STARTED, _D.COMPLETED, [], _E.DEPLOYMENT_COMPLETED),
        ("succeed", _D.COMPLETED, _D.SUCCESS, [_all_promotions_succeeded], _E.DEPLOYMENT_SUCCEEDED),
        ("fail", _D.COMPLETED, _D.FAILED, [], _E.DEPLOYMENT_FAILED),
    ],
)

PROMOTION_MACHINE: Final = _machine(
    _P,
    _P.PENDING,
    Step.publish_promotion,
    [
        ("succeed", _P.PENDING, _P.SUCCESS, [_deployment_completed], _E.PROMOTION_COMPLETED),
        ("fail", _P.PENDING, _P.FAILED, [_deployment_completed], _E.PROMOTION_FAILED),
    ],
)

MACHINES: Final[dict[str, Machine]] = {
    "flow": FLOW_MACHINE,
    "deployment": DEPLOYMENT_MACHINE,
    "promotion": PROMOTION_MACHINE,
}
_ENTITY: Final = {Flow: "flow", Deployment: "deployment", Promotion: "promotion"}
_TRIGGERS: Final = {  # (entity class, trigger) -> the shared machine's Event.trigger
    (cls, name): event.trigger for cls, kind in _ENTITY.items() for name, event in MACHINES[kind].events.items()
}


def fire(entity: Flow | Deployment | Promotion, trigger: str, step: Step) -> None:
    """Apply ``trigger`` to ``entity`` (the latest version ``step`` holds of it),
    publishing its next version on ``step``, or raise ``InvalidTransition`` saying why not."""
    try:
        applied = _TRIGGERS[type(entity), trigger](Draft(entity), step=step)
    except MachineError:
        raise _not_from_here(_ENTITY[type(entity)], entity, trigger) from None
    if not applied:
        reason = refusal(entity, trigger, step) or "refused"
        raise InvalidTransition(_ENTITY[type(entity)], entity.id, entity.state.value, trigger, reason)


def may(entity: Flow | Deployment | Promotion, trigger: str, step: Step) -> bool:
    """Whether ``fire`` would apply now: the machine's own guards, asked without firing.

    Cheaper than a refused trigger, for the engine's "succeed if you can" steps.
    """
    return refusal(entity, trigger, step) is None


def refusal(entity: Flow | Deployment | Promotion, trigger: str, step: Step) -> str | None:
    """The reason of the first guard that refuses ``trigger`` now, or None.

    Asks the guards the machine declares for the entity's state, without building
    the machinery of a real trigger. Raises ``InvalidTransition`` if the trigger
    does not apply in the entity's state.
    """
    guards = _GUARDS[type(entity), trigger].get(entity.state)
    if guards is None:
        raise _not_from_here(_ENTITY[type(entity)], entity, trigger)
    probe = _Probe(None, {"step": step})  # guards read only the step
    for guard, target in guards:
        if guard(probe) != target:
            return _REASONS[guard]
    return None


class _Probe:
    """What a guard reads of ``EventData``: the model and the trigger's keywords."""

    __slots__ = ("kwargs", "model")

    def __init__(self, model: object, kwargs: dict[str, Any]) -> None:
        self.model = model
        self.kwargs = kwargs


def _guards(machine: Machine, trigger: str) -> dict[Any, list[tuple[Guard, bool]]]:
    """Source state → (guard, wanted answer) of ``trigger``'s transitions, read once
    from the machine so that ``refusal`` asks exactly the guards ``transitions`` would."""
    return {
        machine.get_state(source).value: [(cast(Guard, c.func), c.target) for t in transitions for c in t.conditions]
        for source, transitions in machine.events[trigger].transitions.items()
    }


_GUARDS: Final = {
    (cls, trigger): _guards(MACHINES[kind], trigger)
    for cls, kind in _ENTITY.items()
    for trigger in MACHINES[kind].events
}


def _not_from_here(entity: str, model: _Stateful, trigger: str) -> InvalidTransition:
    machine = MACHINES[entity]
    sources = " or ".join(repr(_spelling(machine, s)) for s in machine.events[trigger].transitions)
    return InvalidTransition(entity, model.id, model.state.value, trigger, f"only a {sources} {entity} can {trigger}")


def mermaid(entity: str) -> str:
    """A Mermaid ``stateDiagram-v2`` drawn from the machine's declaration."""
    machine = MACHINES[entity]
    edges = _edges(entity)
    lines = ["stateDiagram-v2", f"    [*] --> {_spelling(machine, machine.initial)}"]
    lines += [f"    {source} --> {dest}: {label}" for source, dest, label in edges]
    sources = {source for source, _, _ in edges}
    for state in machine.states.values():
        if (spelled := _spelling(machine, state.name)) not in sources:
            lines.append(f"    {spelled} --> [*]")
    return "\n".join(lines) + "\n"


def _spelling(machine: Machine, state_name: str | None) -> str:
    """The JSON spelling of a state, given the name ``transitions`` uses for it."""
    assert state_name is not None, "flowfsm machines have no internal transitions"
    value = machine.get_state(state_name).value
    return str(value.value if isinstance(value, enum.Enum) else value)


_BEGIN, _END = "<!-- diagram:{} -->", "<!-- /diagram -->"


def render_into(markdown: str) -> str:
    """``markdown`` with each ``<!-- diagram:NAME -->`` block redrawn from the code."""
    for entity in MACHINES:
        begin = _BEGIN.format(entity)
        start = markdown.find(begin)
        if start < 0:
            continue
        end = markdown.index(_END, start)
        block = f"{begin}\n```mermaid\n{mermaid(entity)}```\n"
        markdown = markdown[:start] + block + markdown[end:]
    return markdown


def _edges(entity: str) -> list[tuple[str, str, str]]:
    """(source, destination, label) for every transition, as ``mermaid`` draws them."""
    machine = MACHINES[entity]
    edges = []
    for name, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                guards = [_LABELS[c.func] for c in transition.conditions if c.func is not _flow_in_progress]  # type: ignore[index]  # flowfsm guards are callables
                label = name + (f" [{', '.join(guards)}]" if guards else "")
                edges.append((_spelling(machine, source), _spelling(machine, transition.dest), label))
    return edges


def svg(entity: str) -> str:
    """The machine as a standalone SVG: states left to right by distance from the
    initial state, so the diagram needs no renderer beyond a browser."""
    from html import escape

    machine = MACHINES[entity]
    initial = _spelling(machine, machine.initial)
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
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8"'
        ' orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>',
    ]
    x0, y0 = position[initial]
    parts.append(f'<circle cx="{left - 35}" cy="{y0 + box_h / 2}" r="7"/>')
    parts.append(
        f'<line x1="{left - 28}" y1="{y0 + box_h / 2}" x2="{x0}" y2="{y0 + box_h / 2}" stroke="black"'
        ' marker-end="url(#arrow)"/>'
    )
    for source, dest, label in edges:
        (sx, sy), (dx, dy) = position[source], position[dest]
        x1, y1, x2, y2 = sx + box_w, sy + box_h / 2, dx, dy + box_h / 2
        parts.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="black" marker-end="url(#arrow)"/>'
            f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 6}" text-anchor="middle" font-size="11">'
            f"{escape(label)}</text>"
        )
    for state, (x, y) in position.items():
        stroke = 3 if state in finals else 1
        parts.append(
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="10" fill="white" stroke="black"'
            f' stroke-width="{stroke}"/><text x="{x + box_w / 2}" y="{y + box_h / 2 + 4}" text-anchor="middle">'
            f"{escape(state)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
