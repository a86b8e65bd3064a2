"""The machines: ``CallablesMachine`` does what ``transitions.Machine`` does, callback
for callback, and ``may`` answers as firing does.

Both machines are built from one declaration that uses every kind of callback
and condition (``conditions`` and ``unless``); random trigger sequences, with
conditions that pass or refuse at random, must give the same results, the same
states and the same callbacks in the same order, and fail the same way.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from typing import Any, Final, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import EventData, Machine, MachineError

from flowfsm import (
    Artifact,
    Deployment,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    InvalidTransition,
    Pipeline,
    Promotion,
    PromotionState,
    Service,
)
from flowfsm.machines import DECLARATIONS, MACHINES, CallablesMachine, fire, may
from flowfsm.model import ApprovalPolicy, Pause, Timer, TimerKind
from flowfsm.work import Draft, Work


class _S(enum.Enum):
    A = "a"
    B = "b"
    C = "c"


class _Other(enum.Enum):
    A = "z"  # named as a state of _S, not one of its members


class _Model:
    def __init__(self) -> None:
        self.state = _S.A


class _Recorder:
    """Callbacks that log their calls; conditions that answer from a script."""

    def __init__(self, answers: list[bool]) -> None:
        self.log: list[str] = []
        self.answers = answers

    def callback(self, name: str) -> Callable[[EventData], None]:
        def call(event: EventData) -> None:
            self.log.append(f"{name}:{event.event.name if event.event else None}:{cast(_Model, event.model).state}")

        return call

    def fails(self, name: str) -> Callable[[EventData], None]:
        def fail(event: EventData) -> None:
            self.log.append(f"{name} raises")
            raise ValueError(name)

        return fail

    def condition(self, name: str) -> Callable[[EventData], bool]:
        def check(event: EventData) -> bool:
            answer = self.answers.pop() if self.answers else True
            self.log.append(f"{name}={answer}")
            return answer

        return check


def _declare(cls: type[Machine], recorder: _Recorder) -> Machine:
    cb, cond = recorder.callback, recorder.condition
    return cls(
        model=None,
        states=[
            {"name": _S.A, "on_enter": [cb("enter A")], "on_exit": [cb("exit A")]},
            {"name": _S.B, "on_enter": [cb("enter B")]},
            {"name": _S.C, "on_exit": [cb("exit C")], "final": True},
        ],
        initial=_S.A,
        transitions=[
            {
                "trigger": "go",
                "source": _S.A,
                "dest": _S.B,
                "prepare": [cb("prepare go")],
                "conditions": [cond("go ok")],
                "unless": [cond("go blocked")],
                "before": [cb("before go")],
                "after": [cb("after go")],
            },
            {"trigger": "go", "source": _S.A, "dest": _S.C, "conditions": [cond("go to C")]},
            {"trigger": "go", "source": _S.B, "dest": _S.C, "after": [cb("after B-C")]},
            {"trigger": "back", "source": [_S.B, _S.C], "dest": _S.A, "conditions": [cond("back ok")]},
            {"trigger": "stay", "source": _S.B, "dest": None, "after": [cb("after stay")]},
            {"trigger": "boom", "source": _S.B, "dest": _S.A, "before": [recorder.fails("before boom")]},
        ],
        prepare_event=[cb("prepare event")],
        before_state_change=[cb("before change")],
        after_state_change=[cb("after change")],
        finalize_event=[cb("finalize")],
        on_final=[cb("final")],
        auto_transitions=False,
        send_event=True,
    )


def _run(cls: type[Machine], triggers: list[str], answers: list[bool]) -> tuple[list[Any], list[str], _S]:
    recorder = _Recorder(list(answers))
    machine, model = _declare(cls, recorder), _Model()
    results: list[Any] = []
    for trigger in triggers:
        try:
            results.append(machine.events[trigger].trigger(model))
        except MachineError as e:
            results.append(f"MachineError: {e.value}")
        except ValueError as e:
            results.append(f"ValueError: {e}")
    return results, recorder.log, model.state


@given(
    st.lists(st.sampled_from(["go", "back", "stay", "boom"]), max_size=12),
    st.lists(st.booleans(), max_size=30),
)
def test_callables_machine_behaves_as_transitions_machine(triggers: list[str], answers: list[bool]) -> None:
    assert _run(CallablesMachine, triggers, answers) == _run(Machine, triggers, answers)


def test_the_comparison_sees_callbacks_and_refusals() -> None:
    """What the property compares, in transitions' documented order: a move with
    every kind of callback, an internal transition, a final state, a callback that
    raises, a refusal."""
    results, log, state = _run(CallablesMachine, ["go", "stay", "go", "back", "stay"], [True, False, True])
    assert results == [True, True, True, True, "MachineError: Can't trigger event stay from state A!"]
    assert log == [
        *("prepare event:go:_S.A", "prepare go:go:_S.A", "go ok=True", "go blocked=False"),
        *("before change:go:_S.A", "before go:go:_S.A", "exit A:go:_S.A", "enter B:go:_S.B"),
        *("after go:go:_S.B", "after change:go:_S.B", "finalize:go:_S.B"),
        *("prepare event:stay:_S.B", "before change:stay:_S.B", "after stay:stay:_S.B"),
        *("after change:stay:_S.B", "finalize:stay:_S.B"),
        *("prepare event:go:_S.B", "before change:go:_S.B", "final:go:_S.C", "after B-C:go:_S.C"),
        *("after change:go:_S.C", "finalize:go:_S.C"),
        *("prepare event:back:_S.C", "back ok=True", "before change:back:_S.C", "exit C:back:_S.C"),
        *("enter A:back:_S.A", "after change:back:_S.A", "finalize:back:_S.A"),
        "finalize:stay:_S.A",
    ]
    assert state is _S.A
    failed = _run(CallablesMachine, ["go", "boom"], [False, True])
    assert failed[0] == [True, "ValueError: before boom"]
    assert failed[1][-3:] == ["before change:boom:_S.B", "before boom raises", "finalize:boom:_S.B"]
    assert failed[2] is _S.B
    refused = _run(CallablesMachine, ["go"], [False, True, True])
    assert refused[0] == [False]
    assert refused[2] is _S.A


def test_a_callables_machine_refuses_callbacks_named_by_string() -> None:
    with pytest.raises(TypeError, match="callables only, not 'on_done'"):
        CallablesMachine(
            model=None,
            states=["a", "b"],
            initial="a",
            transitions=[["go", "a", "b"]],
            after_state_change="on_done",
            send_event=True,
        )
    with pytest.raises(TypeError, match="callables only, not 'is_ready'"):
        CallablesMachine(
            model=None,
            states=["a", "b"],
            initial="a",
            transitions=[{"trigger": "go", "source": "a", "dest": "b", "conditions": "is_ready"}],
            send_event=True,
        )


def test_flowfsm_machines_are_callables_machines() -> None:
    assert all(type(machine) is CallablesMachine for machine in MACHINES.values())


def test_a_callables_machine_finds_states_as_machine_does() -> None:
    """``get_state`` by name, by enum member, for a state added later, and refusing an
    unknown one, as ``Machine`` does; a ``str`` enum's member is found by its name,
    never confused with a state named as its value."""

    class Named(enum.StrEnum):
        X = "Y"
        Y = "X"

    for cls in (Machine, CallablesMachine):
        machine = cls(model=None, states=_S, initial=_S.A, send_event=True, auto_transitions=False)
        assert machine.get_state("B") is machine.get_state(_S.B) is machine.states["B"]
        assert (machine.get_state(_S.C).name, machine.get_state(_S.C).value) == ("C", _S.C)
        machine.add_states(["D"])
        assert machine.get_state("D") is machine.states["D"]
        with pytest.raises(ValueError, match="'E' is not a registered state"):
            machine.get_state("E")
        assert machine.get_state(_Other.A) is machine.states["A"]  # Machine goes by the member's name
        strs = cls(model=None, states=Named, initial=Named.X, send_event=True, auto_transitions=False)
        assert strs.get_state(Named.X) is strs.states["X"]
        assert strs.get_state(Named.Y).name == "Y"


def test_a_callables_machine_sends_the_event() -> None:
    with pytest.raises(TypeError, match="send_event=True"):
        CallablesMachine(model=None, states=["a"], initial="a")


# --- one way to ask: ``may`` agrees with firing ------------------------------------------


_DEPLOYMENT_STATES = st.one_of(
    st.sampled_from((DeploymentState.COMPLETED, DeploymentState.SUCCESS)), st.sampled_from(DeploymentState)
)
"""Any deployment state; ``completed`` (most promotion rules need it) and ``success``
(a flow's ``succeed`` needs all) more often."""


@st.composite
def _drafts(draw: st.DrawFn) -> tuple[Draft, str]:
    """Any flow (states drawn freely, consistent or not), one of its entities, and
    one trigger of that entity's machine; the entity is in a state the trigger
    leaves half of the time, so that every rule is reached in a few thousand."""
    count = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(sorted(MACHINES)))
    trigger = draw(st.sampled_from(sorted(MACHINES[kind].events)))
    index = draw(st.integers(0, count - 1))
    sources = [rule.source for rule in DECLARATIONS[kind].rules if rule.trigger == trigger]

    def state_of(own: str, states: st.SearchStrategy[Any], here: bool) -> Any:
        if own == kind and here:  # the entity the trigger is for: a source, or any of its states
            return draw(st.sampled_from(sources if draw(st.booleans()) else list(DECLARATIONS[kind].states)))
        return draw(states)

    deployments = []
    for i in range(count):
        fewest = 1 if kind == "promotion" and i == index else 0
        promotions = [
            Promotion(f"p{i}{j}", f"check{j}", state_of("promotion", st.sampled_from(PromotionState), i == index))
            for j in range(draw(st.integers(fewest, 2)))
        ]
        approvals = draw(st.sampled_from(((), ("alice",))))
        state = state_of("deployment", _DEPLOYMENT_STATES, i == index)
        deployments.append(Deployment(f"d{i}", f"env{i}", promotions, state, approvals=approvals))
    # Most rules need a flow in progress.
    state = state_of("flow", st.one_of(st.just(FlowState.IN_PROGRESS), st.sampled_from(FlowState)), True)
    pause = None
    if state is FlowState.PAUSED:  # by a person, or by a failure policy waiting on a failed item
        pause = Pause("alice", None, draw(st.sampled_from(((), ("d0",)))))
    flow = Flow("f", Artifact("g", "n", "1"), "svc", deployments, state, 1, pause=pause)
    policy = draw(st.sampled_from((None, ApprovalPolicy(["alice"]))))  # an approval gate, or none
    environments = [Environment(d.environment, approvals=policy) for d in deployments]
    service = Service("svc", ["g:n"], Pipeline("p", environments))
    work = Work()
    opened = work.open(flow, service)
    if draw(st.booleans()):  # a pipeline with timers: the soak guard reads the time
        now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        soaking = draw(st.lists(st.sampled_from(deployments), unique=True))
        work.watch(
            now,
            [
                Timer("f", d.id, TimerKind.SOAK, now + dt.timedelta(minutes=draw(st.sampled_from((-1, 1)))))
                for d in soaking
            ],
        )
    draft: Draft | None = opened.draft(index) if kind == "flow" else opened.deployment(index)
    if kind == "promotion":
        draft = opened.promotion(index, draw(st.sampled_from(deployments[index].promotions)).id)
    assert draft is not None
    return draft, trigger


@given(_drafts())
def test_may_agrees_with_firing(drafted: tuple[Draft, str]) -> None:
    draft, trigger = drafted
    answer = may(draft, trigger)
    before = draft.flow.flow()
    if answer:
        fire(draft, trigger)
        assert draft.flow.changed
    else:
        with pytest.raises(InvalidTransition):
            fire(draft, trigger)
        assert draft.flow.flow() == before  # a refusal changes nothing
        assert not draft.flow.changed
        assert draft.flow.work.events == []


_PASSED_ELSEWHERE: Final = {("deployment", "freeze"), ("deployment", "enqueue")}
"""Rules whose guards read what the drafts do not model — a freeze window in force
(tests/test_freezes.py), another flow in the environment (tests/test_lanes.py): the
drafts see them refused only."""


def test_the_property_sees_every_machine_state_and_trigger() -> None:
    """The drafts above reach every (machine, state, trigger), both answers included."""
    seen: set[tuple[str, object, str, bool]] = set()

    @settings(max_examples=12_000, derandomize=True, database=None)
    @given(_drafts())
    def collect(drafted: tuple[Draft, str]) -> None:
        draft, trigger = drafted
        seen.add((type(draft.entity).__name__, draft.state, trigger, may(draft, trigger)))

    collect()
    for name, declaration in DECLARATIONS.items():
        for rule in declaration.rules:
            if (name, rule.trigger) not in _PASSED_ELSEWHERE:
                assert (type_name(name), rule.source, rule.trigger, True) in seen, (name, rule.source, rule.trigger)
            by_source = {r.source: r for r in declaration.rules if r.trigger == rule.trigger}
            for state in declaration.states:
                own = by_source.get(state)
                if own is None or own.guards:  # a refusal is possible
                    assert (type_name(name), state, rule.trigger, False) in seen, (name, state, rule.trigger)


def type_name(kind: str) -> str:
    return kind.title()


# --- the pieces of ``transitions`` flowfsm reaches into -----------------------------------
# Each fails if a release changes what flowfsm relies on; pyproject.toml pins
# ``transitions`` to the releases these pass on.


def test_transitions_calls_machine_callbacks_for_every_callback_list() -> None:
    """``Machine.callbacks(funcs, event_data)`` runs each list: CallablesMachine overrides it."""
    calls: list[int] = []

    class Counting(CallablesMachine):
        def callbacks(self, funcs: Any, event_data: EventData) -> None:
            funcs = list(funcs)
            calls.append(len(funcs))
            super().callbacks(funcs, event_data)

    ran: list[str] = []
    machine = Counting(
        model=None,
        states=["a", "b"],
        initial="a",
        transitions=[{"trigger": "go", "source": "a", "dest": "b", "after": [lambda e: ran.append("after")]}],
        send_event=True,
    )
    assert machine.events["go"].trigger(_Model2()) is True
    assert ran == ["after"]
    # Every list goes through the override, in transitions' order: prepare_event, prepare,
    # before (the machine's and the transition's), after (the transition's one callback and
    # the machine's), finalize_event.
    assert calls == [0, 0, 0, 1, 0]


class _Model2:
    state = "a"


def test_transitions_event_transitions_maps_source_names_to_transitions() -> None:
    """``event.transitions``: source state name → list of ``Transition`` with ``conditions``,
    ``prepare``, ``before``, ``after`` and ``dest`` (read by the callables-only check)."""
    machine = MACHINES["deployment"]
    transitions = machine.events["start"].transitions
    assert list(transitions) == ["NOT_STARTED"]
    (transition,) = transitions["NOT_STARTED"]
    assert transition.dest == "STARTED"
    assert all(isinstance(getattr(transition, name), list) for name in ("prepare", "before", "after", "conditions"))


def test_transitions_conditions_carry_func_and_target_and_use_condition_cls() -> None:
    """``Condition.func``/``target`` and ``Transition.condition_cls``: _Condition.check reads them."""
    (transition,) = MACHINES["deployment"].events["start"].transitions["NOT_STARTED"]
    assert [type(c).__name__ for c in transition.conditions] == ["_Condition"]  # one per rule: all its guards
    assert all(callable(c.func) and c.target is True for c in transition.conditions)


def test_transitions_uses_state_cls_and_enters_and_exits_through_it() -> None:
    """``Machine.state_cls``: states are _State, and ``State.enter``/``exit`` run their callbacks."""
    log: list[str] = []
    machine = CallablesMachine(
        model=None,
        states=[
            {"name": "a", "on_exit": [lambda e: log.append("exit a")]},
            {"name": "b", "on_enter": [lambda e: log.append("enter b")]},
        ],
        initial="a",
        transitions=[["go", "a", "b"]],
        send_event=True,
    )
    assert all(type(s).__name__ == "_State" for s in machine.states.values())
    assert machine.events["go"].trigger(_Model2()) is True
    assert log == ["exit a", "enter b"]


def test_transitions_event_trigger_returns_false_on_a_refusal_and_raises_machine_error_elsewhere() -> None:
    """``Event.trigger(model)``: False when a condition refuses, ``MachineError`` from a wrong state."""
    machine = CallablesMachine(
        model=None,
        states=["a", "b"],
        initial="a",
        transitions=[{"trigger": "go", "source": "a", "dest": "b", "conditions": [lambda e: False]}],
        send_event=True,
    )
    model = _Model2()
    assert machine.events["go"].trigger(model) is False
    assert model.state == "a"
    model.state = "b"
    with pytest.raises(MachineError):
        machine.events["go"].trigger(model)


def test_transitions_version_is_one_the_suite_proves() -> None:
    from importlib.metadata import version

    assert version("transitions") in {"0.9.2", "0.9.3"}
