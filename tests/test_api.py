"""The public surface: names, diagrams and packaging that users rely on."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import flowfsm
from flowfsm.diagrams import render_into
from flowfsm.machines import MACHINES

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    assert flowfsm.__all__ == sorted(flowfsm.__all__)
    assert flowfsm.__all__ == [
        "AbortFlow",
        "Action",
        "ActionRef",
        "ApprovalGranted",
        "ApprovalPolicy",
        "ApprovalRejected",
        "Artifact",
        "ArtifactCreated",
        "Catalog",
        "CatalogError",
        "Concurrency",
        "ConcurrencyConflict",
        "DeliveryAttempt",
        "DeliveryError",
        "DeliveryState",
        "Deployment",
        "DeploymentCompleted",
        "DeploymentFailed",
        "DeploymentPayload",
        "DeploymentStarted",
        "DeploymentState",
        "Environment",
        "Failure",
        "FailureHandler",
        "FailureKind",
        "FailureStrategy",
        "Flow",
        "FlowEngine",
        "FlowFSMError",
        "FlowState",
        "Freeze",
        "FreezeWindow",
        "HeldPayload",
        "HistoryEntry",
        "HookEmitter",
        "HookEvent",
        "HookRecord",
        "HookRequest",
        "InvalidTransition",
        "NotAuthorized",
        "NotFound",
        "Outcome",
        "OverrideFreeze",
        "Pause",
        "PauseFlow",
        "Pipeline",
        "Promotion",
        "PromotionCompleted",
        "PromotionPayload",
        "PromotionResult",
        "PromotionState",
        "Repository",
        "RepositoryError",
        "ResultStatus",
        "ResumeFlow",
        "RetryDeployment",
        "RetryPolicy",
        "RetryPromotion",
        "Rollback",
        "RollbackPayload",
        "Service",
        "ServiceCatalog",
        "ServiceRef",
        "SkipPromotion",
        "StateChange",
        "SteeringPayload",
        "Timeouts",
        "Timer",
        "TimerFired",
        "TimerKind",
        "Trigger",
        "UnknownDeployment",
        "UnknownFlow",
        "UnknownPromotion",
        "UnknownService",
        "ValidationError",
        "Waiting",
        "Webhook",
        "Worker",
        "__version__",
    ]
    for name in flowfsm.__all__:
        assert hasattr(flowfsm, name), name


def test_subpackages_export_what_the_contract_names() -> None:
    for module, names in {
        "flowfsm.repositories": ["InMemoryRepository", "SQLiteRepository"],
        "flowfsm.emitters": ["CallbackEmitter", "RecordingEmitter"],
    }.items():
        imported = importlib.import_module(module)
        assert sorted(imported.__all__) == imported.__all__
        for name in names:
            assert name in imported.__all__


def test_the_committed_diagrams_match_the_machines() -> None:
    doc = (ROOT / "docs" / "machines.md").read_text()
    for entity in MACHINES:
        assert f"<!-- diagram:{entity} -->" in doc, entity
    assert render_into(doc) == doc, "run: python tools/redraw_diagrams.py"
    steering = (ROOT / "docs" / "steering.md").read_text()
    assert "<!-- diagram:flow -->" in steering
    assert render_into(steering) == steering, "run: python tools/redraw_diagrams.py"


def test_the_package_is_typed() -> None:
    assert (Path(flowfsm.__file__).parent / "py.typed").exists()


def test_importing_flowfsm_loads_no_converter() -> None:
    """``import flowfsm`` stays light (docs/performance.md, import time): cattrs and
    the JSON converter load only when something needs JSON, e.g. a SQL store."""
    code = "import sys, flowfsm; print(sorted(m for m in ('cattrs', 'flowfsm.converter') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_what_the_docs_import_from_a_module_is_in_its_all() -> None:
    """A name a page imports is public: listed in its module's ``__all__`` (flowfsm.testing's
    pytest-only suites aside, kept out so that ``import *`` needs no pytest)."""
    import ast

    lazy = {"RepositoryContract", "LanesContract", "RepositoryStateMachine"}
    fence = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
    missing = []
    for page in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        for block in fence.findall(page.read_text()):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowfsm"):
                    exported = getattr(importlib.import_module(node.module or ""), "__all__", None)
                    missing += [
                        f"{page.name}: {node.module}.{alias.name}"
                        for alias in node.names
                        if exported is not None and alias.name not in exported and alias.name not in lazy
                    ]
    assert missing == []
