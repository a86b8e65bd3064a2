"""``flowfsm demo``: two releases of com.acme:api on the embedded SQLite store.

1.4.0 passes every check through dev → staging → prod; 1.5.0 fails its perf
check in staging and stops there. Every trigger, state change and HookRequest is
printed as it happens, under a progress bar; at the end the store is reopened to
show that the flows survived.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from flowfsm.catalog import Catalog
from flowfsm.cli.app import visible
from flowfsm.emitters import CallbackEmitter
from flowfsm.engine import FlowEngine
from flowfsm.model import Artifact, Flow, HookRequest, PromotionResult, ResultStatus
from flowfsm.repositories import SQLiteRepository
from flowfsm.triggers import ArtifactCreated, DeploymentCompleted, DeploymentStarted, PromotionCompleted, Trigger

__all__ = ["run"]

RELEASES = (("1.4.0", None), ("1.5.0", "staging.perf"))  # (version, the check that fails)


def _catalog() -> Catalog:
    with resources.as_file(resources.files("flowfsm.cli") / "demo_catalog.toml") as path:
        return Catalog.from_file(path)


def _states(flow: Flow) -> dict[str, str]:
    found = {"flow": flow.state.value}
    for deployment in flow.deployments:
        found[deployment.environment] = deployment.state.value
        for promotion in deployment.promotions:
            found[f"{deployment.environment}.{promotion.name}"] = promotion.state.value
    return found


def _plan(catalog: Catalog) -> int:
    """How many triggers the demo will send, for the progress bar: each release's
    artifact, then start, complete and checks per environment, up to its failing check."""
    (service,) = catalog.for_artifact("com.acme:api")
    total = 0
    for _, failing in RELEASES:
        total += 1
        for env in service.pipeline.environments:
            checks = [f"{env.name}.{name}" for name in env.promotions]
            if failing in checks:
                total += 2 + checks.index(failing) + 1
                break
            total += 2 + len(checks)
    return total


def run(console: Console, store: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = store or Path(tmp) / "flowfsm-demo.db"
        console.print(Text(visible(f"store: {path} (SQLite)")))  # a path is text, not markup
        catalog = _catalog()
        sent: list[HookRequest] = []
        repository = SQLiteRepository(path)
        engine = FlowEngine(catalog, repository, CallbackEmitter(sent.append))
        seen: dict[str, dict[str, str]] = {}
        progress = Progress(
            TextColumn("[bold]demo"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
        )

        def handle(trigger: Trigger, label: str) -> Flow:
            console.print(f"  [bold]▶ {label}[/]")
            flow = engine.handle(trigger).flows[0]
            now, before = _states(flow), seen.get(flow.id, {})
            for name, state in now.items():
                if before.get(name) != state:
                    console.print(f"      {name}: {before.get(name, '—')} → [bold]{state}[/]")
            seen[flow.id] = now
            for request in sent:
                where = request.payload.deployment.environment
                console.print(
                    f"      [dim]↳ hook {request.event.value} → {request.webhook_id}/{request.action.name} ({where})[/]"
                )
            sent.clear()
            progress.advance(task)
            return flow

        with progress:
            task = progress.add_task("demo", total=_plan(catalog))
            for version, failing in RELEASES:
                console.print(f"\n[bold]com.acme:api:{version}[/]")
                flow = handle(ArtifactCreated(Artifact("com.acme", "api", version)), "artifact created")
                stopped = False
                for deployment in flow.deployments:
                    if stopped:
                        break
                    env = deployment.environment
                    handle(DeploymentStarted(deployment.id), f"{env}: deployment started")
                    handle(DeploymentCompleted(deployment.id), f"{env}: deployment completed")
                    for promotion in deployment.promotions:
                        check = f"{env}.{promotion.name}"
                        status = ResultStatus.FAILED if check == failing else ResultStatus.PASSED
                        result = PromotionResult(promotion.id, status)
                        handle(PromotionCompleted(deployment.id, promotion.id, [result]), f"{check}: {status.value}")
                        if status is ResultStatus.FAILED:
                            stopped = True
                            break
        repository.close()

        console.print("\nreopened the store:")
        with SQLiteRepository(path) as reopened:
            table = Table("artifact", "flow", "deployments")
            for flow in reversed(reopened.list_flows()):
                trail = " → ".join(f"{d.environment}:{d.state.value}" for d in flow.deployments)
                table.add_row(flow.artifact.id, flow.state.value, trail)
            console.print(table)
            console.print(f"HookRequests pending delivery: {reopened.count_pending()}")
