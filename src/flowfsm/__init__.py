"""flowfsm: continuous-delivery flows as explicit finite-state machines.

The names below are the public API; everything else is internal and may change.
"""

from typing import TYPE_CHECKING

from flowfsm.catalog import Catalog
from flowfsm.engine import FlowEngine
from flowfsm.errors import (
    CatalogError,
    ConcurrencyConflict,
    DeliveryError,
    FlowFSMError,
    InvalidTransition,
    NotAuthorized,
    NotFound,
    RepositoryError,
    UnknownDeployment,
    UnknownFlow,
    UnknownPromotion,
    UnknownService,
    ValidationError,
)
from flowfsm.explain import Waiting
from flowfsm.freezes import Freeze, FreezeWindow
from flowfsm.model import (
    Action,
    ActionRef,
    ApprovalPolicy,
    Artifact,
    Concurrency,
    DeliveryAttempt,
    DeliveryState,
    Deployment,
    DeploymentPayload,
    DeploymentState,
    Environment,
    FailureStrategy,
    Flow,
    FlowState,
    HeldPayload,
    HistoryEntry,
    HookEvent,
    HookRecord,
    HookRequest,
    Pause,
    Pipeline,
    Promotion,
    PromotionPayload,
    PromotionResult,
    PromotionState,
    ResultStatus,
    RetryPolicy,
    Rollback,
    RollbackPayload,
    Service,
    ServiceRef,
    StateChange,
    SteeringPayload,
    Timeouts,
    Timer,
    TimerKind,
    Webhook,
)
from flowfsm.protocols import FailureHandler, HookEmitter, Repository, ServiceCatalog
from flowfsm.strategies import Failure, FailureKind
from flowfsm.triggers import (
    AbortFlow,
    ApprovalGranted,
    ApprovalRejected,
    ArtifactCreated,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentStarted,
    Outcome,
    OverrideFreeze,
    PauseFlow,
    PromotionCompleted,
    ResumeFlow,
    RetryDeployment,
    RetryPromotion,
    SkipPromotion,
    TimerFired,
    Trigger,
)

if TYPE_CHECKING:
    from flowfsm.worker import Worker

__version__ = "0.1.0"

__all__ = [
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


def __getattr__(name: str) -> object:
    """``Worker`` is imported when first asked for: it brings in the dispatcher and
    the stores' shared code, which ``import flowfsm`` otherwise leaves out."""
    if name == "Worker":
        from flowfsm.worker import Worker

        return Worker
    raise AttributeError(f"module 'flowfsm' has no attribute {name!r}")
