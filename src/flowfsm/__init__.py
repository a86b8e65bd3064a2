"""flowfsm: continuous-delivery flows as explicit finite-state machines.

The names below are the public API; everything else is internal and may change.
"""

from flowfsm.catalog import Catalog
from flowfsm.engine import FlowEngine
from flowfsm.errors import (
    CatalogError,
    ConcurrencyConflict,
    FlowFSMError,
    InvalidTransition,
    NotFound,
    RepositoryError,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    UnknownService,
    ValidationError,
)
from flowfsm.model import (
    Action,
    ActionRef,
    Artifact,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    FailureStrategy,
    Flow,
    FlowState,
    HookEvent,
    HookRequest,
    Pipeline,
    Promotion,
    PromotionPayload,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Service,
    ServiceRef,
    Webhook,
)
from flowfsm.protocols import FailureHandler, HookEmitter, Repository, ServiceCatalog
from flowfsm.strategies import PromotionFailure
from flowfsm.triggers import (
    ArtifactCreated,
    DeploymentCompleted,
    DeploymentStarted,
    Outcome,
    PromotionCompleted,
    Trigger,
)

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ActionRef",
    "Artifact",
    "ArtifactCreated",
    "Catalog",
    "CatalogError",
    "ConcurrencyConflict",
    "Deployment",
    "DeploymentCompleted",
    "DeploymentPayload",
    "DeploymentStarted",
    "DeploymentState",
    "Environment",
    "FailureHandler",
    "FailureStrategy",
    "Flow",
    "FlowEngine",
    "FlowFSMError",
    "FlowState",
    "HookEmitter",
    "HookEvent",
    "HookRequest",
    "InvalidTransition",
    "NotFound",
    "Outcome",
    "Pipeline",
    "Promotion",
    "PromotionCompleted",
    "PromotionFailure",
    "PromotionPayload",
    "PromotionResult",
    "PromotionState",
    "Repository",
    "RepositoryError",
    "ResultStatus",
    "Service",
    "ServiceCatalog",
    "ServiceRef",
    "Trigger",
    "UnknownDeployment",
    "UnknownFlow",
    "UnknownPromotion",
    "UnknownService",
    "ValidationError",
    "Webhook",
    "__version__",
]
