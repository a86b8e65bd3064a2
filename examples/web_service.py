"""flowfsm inside a small web service that receives CI/CD callbacks over HTTP.

CI posts published artifacts; the CD system posts deployment and promotion
callbacks; everyone can read a flow. Each callback is one trigger, so a callback
delivered twice is answered as a duplicate, and a bad one gets a 4xx that says
what is wrong, with nothing written.

Run it with any ASGI server, e.g. ``uvicorn examples.web_service:app``
(FLOWFSM_STORE and FLOWFSM_CATALOG choose the store, a SQLite file or a
``postgresql://`` URL, and the catalog, as for the ``flowfsm`` command).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flowfsm import (
    Artifact,
    ArtifactCreated,
    Catalog,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    FlowEngine,
    FlowFSMError,
    InvalidTransition,
    NotFound,
    PromotionCompleted,
    PromotionResult,
    ValidationError,
)
from flowfsm.converter import unstructure
from flowfsm.protocols import Repository
from flowfsm.repositories import PostgresRepository, SQLiteRepository


class ArtifactIn(BaseModel):
    group: str
    name: str
    version: str


class FailureIn(BaseModel):
    reason: str


class ResultIn(BaseModel):
    resultStatus: str  # noqa: N815 - the JSON field's name
    details: dict[str, Any] = {}


def create_app(engine: FlowEngine) -> FastAPI:
    app = FastAPI(title="flowfsm callbacks")

    @app.exception_handler(FlowFSMError)
    def refuse(_: Request, error: FlowFSMError) -> JSONResponse:
        status = 404 if isinstance(error, NotFound) else 409 if isinstance(error, InvalidTransition) else 422
        if not isinstance(error, NotFound | InvalidTransition | ValidationError):
            status = 500
        return JSONResponse({"error": type(error).__name__, "detail": str(error)}, status_code=status)

    @app.post("/artifacts")
    def artifact_created(artifact: ArtifactIn) -> Any:
        return unstructure(engine.handle(ArtifactCreated(Artifact(artifact.group, artifact.name, artifact.version))))

    @app.post("/deployments/{deployment_id}/started")
    def deployment_started(deployment_id: str) -> Any:
        return unstructure(engine.handle(DeploymentStarted(deployment_id)))

    @app.post("/deployments/{deployment_id}/completed")
    def deployment_completed(deployment_id: str) -> Any:
        return unstructure(engine.handle(DeploymentCompleted(deployment_id)))

    @app.post("/deployments/{deployment_id}/failed")
    def deployment_failed(deployment_id: str, failure: FailureIn) -> Any:
        return unstructure(engine.handle(DeploymentFailed(deployment_id, failure.reason)))

    @app.post("/deployments/{deployment_id}/promotions/{promotion_id}")
    def promotion_completed(deployment_id: str, promotion_id: str, results: list[ResultIn]) -> Any:
        verdicts = [PromotionResult(promotion_id, r.resultStatus, r.details) for r in results]
        return unstructure(engine.handle(PromotionCompleted(deployment_id, promotion_id, verdicts)))

    @app.get("/flows/{flow_id}")
    def flow(flow_id: str) -> Any:
        return unstructure(engine.repository.get(flow_id))

    return app


def open_store(store: str) -> Repository:
    """PostgreSQL for a ``postgresql://`` URL, else a SQLite file, as ``flowfsm --store``."""
    scheme, _, rest = store.partition("://")
    if rest and scheme.lower() in ("postgresql", "postgres"):
        return PostgresRepository(f"{scheme.lower()}://{rest}")  # libpq reads the scheme in lower case only
    return SQLiteRepository(store)


def _default_app() -> FastAPI:
    catalog = Catalog.from_file(os.environ.get("FLOWFSM_CATALOG", "flowfsm.toml"))
    repository = open_store(os.environ.get("FLOWFSM_STORE", "flowfsm.db"))
    return create_app(FlowEngine(catalog, repository, None))


def __getattr__(name: str) -> Any:  # `app` is built on first use, from the environment
    if name == "app":
        return _default_app()
    raise AttributeError(name)
