"""Test helpers that users need too, importable without pytest or Hypothesis.

Here: ``SequentialIds`` and ``StepClock`` (repeatable ids and times), the
``sample_flow`` / ``sample_hook_request`` builders, and the emitters tests use.
In submodules, each importing only what it needs (and loaded on first use of
their names from here):

- ``flowfsm.testing.contract``: ``RepositoryContract``, the pytest suite every
  repository backend must pass (flowfsm runs it against its own backends), and
  ``LanesContract``, for a backend that keeps lanes (``flowfsm.protocols.Lanes``);
- ``flowfsm.testing.comparison``: ``RepositoryStateMachine``, a backend driven
  side by side with the in-memory reference by Hypothesis;
- ``flowfsm.testing.postgres``: ``TemporaryPostgres``, a throwaway server.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
from typing import TYPE_CHECKING, Any

from flowfsm.emitters import CallbackEmitter, RecordingEmitter
from flowfsm.model import (
    ActionRef,
    Artifact,
    Deployment,
    DeploymentPayload,
    Environment,
    Flow,
    HookEvent,
    HookRequest,
    Promotion,
    ServiceRef,
)

if TYPE_CHECKING:  # for type checkers; at run time, __getattr__ imports them on first use
    from flowfsm.testing.comparison import RepositoryStateMachine as RepositoryStateMachine
    from flowfsm.testing.contract import LanesContract as LanesContract
    from flowfsm.testing.contract import RepositoryContract as RepositoryContract
    from flowfsm.testing.postgres import TemporaryPostgres

# Only what imports without pytest or Hypothesis, so that ``from flowfsm.testing
# import *`` works everywhere; RepositoryContract and RepositoryStateMachine are
# imported by name (below) where the test extra is installed.
__all__ = [
    "CallbackEmitter",
    "FakeClock",
    "RecordingEmitter",
    "SequentialIds",
    "StepClock",
    "TemporaryPostgres",
    "sample_flow",
    "sample_hook_request",
]

_LAZY = {
    "LanesContract": "flowfsm.testing.contract",
    "RepositoryContract": "flowfsm.testing.contract",
    "RepositoryStateMachine": "flowfsm.testing.comparison",
    "TemporaryPostgres": "flowfsm.testing.postgres",
}


def __getattr__(name: str) -> Any:
    """The names of the submodules, imported on first use (they need pytest or Hypothesis)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowfsm.testing' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        message = f"flowfsm.testing.{name} needs pytest and Hypothesis (pip install 'flowfsm[dev]'): {e}"
        raise ModuleNotFoundError(message, name=e.name) from e


class SequentialIds:
    """An id factory giving ``prefix-1``, ``prefix-2``, ...: readable, repeatable."""

    def __init__(self, prefix: str = "id") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


class StepClock:
    """A clock that starts at ``start`` and moves ``step`` forward on every call."""

    def __init__(
        self,
        start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        step: dt.timedelta = dt.timedelta(seconds=1),
    ) -> None:
        self._now = start
        self._step = step

    def __call__(self) -> dt.datetime:
        now = self._now
        self._now += self._step
        return now


class FakeClock:
    """A clock that stands still until moved: ``advance(minutes=30)`` (or a
    ``timedelta``). For timers, timeouts and soak in tests, which never sleep."""

    def __init__(self, start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, by: dt.timedelta | None = None, **units: float) -> dt.datetime:
        """Move the clock forward by ``by`` or by ``timedelta(**units)``; returns the new time."""
        self.now += by if by is not None else dt.timedelta(**units)
        return self.now


def sample_flow(
    n: int = 1,
    *,
    service_id: str = "svc",
    environments: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("dev", ("smoke",)),
        ("prod", ("smoke", "perf")),
    ),
    version: int = 1,
) -> Flow:
    """A new flow with ids derived from ``n``, ready to ``commit`` as version 1."""
    flow_id = f"flow-{n}-{service_id}"
    deployments = [
        Deployment(f"{flow_id}.{env}", env, [Promotion(f"{flow_id}.{env}.{p}", p) for p in promotions])
        for env, promotions in environments
    ]
    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n)
    return Flow(
        flow_id,
        Artifact("com.acme", "api", f"1.{n}.0"),
        service_id,
        deployments,
        version=version,
        created_at=created,
        updated_at=created,
    )


def sample_hook_request(flow: Flow, n: int = 1) -> HookRequest:
    """A deployment-created HookRequest for ``flow``'s first deployment."""
    deployment = flow.deployments[0]
    return HookRequest(
        f"{flow.id}.hr-{n}",
        flow.id,
        "wh",
        ActionRef("notify", "http://127.0.0.1/hook"),
        HookEvent.DEPLOYMENT_CREATED,
        DeploymentPayload(
            flow.artifact,
            deployment,
            ServiceRef(flow.service_id, "default", "STOP"),
            Environment(deployment.environment, [p.name for p in deployment.promotions]),
        ),
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
    )
