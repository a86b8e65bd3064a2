"""Approvals (SPEC §11): who may approve a deployment, and what their word does.

An environment's ``ApprovalPolicy`` gates its deployments: a deployment reaching it
awaits approval (``approval-requested``) until ``required`` different people among
its approvers have approved. flowfsm authorizes; the embedding service
authenticates (it vouches for the actor and the groups it passes). The rules of
the gate are the ``approve``, ``reject`` and ``expire`` rules of the deployment
machine (``flowfsm.machines``); this module decides who may fire them and what a
repeat is, for the engine's appliers, and lists for a dashboard what a viewer may
approve (``approvals_for``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import attrs

from flowfsm import machines
from flowfsm.durations import format_duration
from flowfsm.errors import InvalidTransition, NotAuthorized, UnknownService
from flowfsm.model import (
    ApprovalPolicy,
    Deployment,
    DeploymentState,
    Flow,
    FlowState,
    approved,
    attrs_repr,
)
from flowfsm.protocols import Repository, ServiceCatalog
from flowfsm.work import FLOWFSM, Draft

__all__ = ["AwaitingApproval", "approvals_for", "approve", "expire", "policy", "reject"]

_AWAITING = DeploymentState.AWAITING_APPROVAL


def policy(draft: Draft) -> ApprovalPolicy | None:
    """The approval policy of the draft's deployment's environment (None: none)."""
    environment = draft.flow.service.pipeline.environment(draft.deployment.environment)
    return environment.approvals if environment is not None else None


def _authorize(draft: Draft, actor: str, groups: Iterable[str], author: str | None) -> None:
    """``NotAuthorized`` unless the policy lets ``actor`` act. A deployment whose
    environment no longer has a policy (the catalog changed) needs no one's word:
    anyone's opens it."""
    gate = policy(draft)
    refusal = gate.refusal(actor, groups, author) if gate is not None else None
    if refusal is not None:
        raise NotAuthorized(draft.entity.id, actor, refusal)


def _not_awaiting(draft: Draft, trigger: str) -> InvalidTransition:
    deployment = draft.deployment
    return InvalidTransition("deployment", deployment.id, deployment.state.value, trigger, "it does not await approval")


def _stale(draft: Draft, trigger: str, attempt: int | None) -> bool:
    """An answer naming an earlier attempt than the deployment's answers a request
    a retry replaced: stale (a duplicate). One naming a later attempt cannot be
    (``InvalidTransition``); naming none, it answers the current attempt."""
    deployment = draft.deployment
    if attempt is None or attempt == deployment.attempt:
        return False
    if attempt < deployment.attempt:
        return True
    reason = f"the answer names attempt {attempt}; the deployment is at attempt {deployment.attempt}"
    raise InvalidTransition("deployment", deployment.id, deployment.state.value, trigger, reason)


def approve(draft: Draft, actor: str, groups: Iterable[str], attempt: int | None = None) -> bool:
    """``ApprovalGranted``: False if ``actor`` approved this attempt already (one
    approval per person; a redelivery after the gate opened too) or it answers an
    earlier attempt, else recorded and counted (True); ``InvalidTransition`` if the
    deployment does not await approval, ``NotAuthorized`` if ``actor`` may not
    approve (nothing changes)."""
    deployment = draft.deployment
    if _stale(draft, "approve", attempt) or approved(actor, deployment.approvals):  # Alice after alice: one person
        return False
    if deployment.state is not _AWAITING:
        raise _not_awaiting(draft, "approve")
    _authorize(draft, actor, groups, draft.flow.loaded.author)
    machines.fire(draft.flow.approved_by(draft.index, actor), "approve")
    return True


def reject(draft: Draft, actor: str, groups: Iterable[str], attempt: int | None = None) -> bool:
    """``ApprovalRejected``: the request fails (a failure for the failure policy;
    True). Anyone who may approve may reject — the author too: stopping one's own
    release needs no second pair of eyes. A deployment that failed already, or an
    answer to an earlier attempt, is a duplicate (False); one that does not await
    approval, ``InvalidTransition``."""
    state = draft.deployment.state
    if _stale(draft, "reject", attempt) or state is DeploymentState.FAILED:
        return False
    if state is not _AWAITING:
        raise _not_awaiting(draft, "reject")
    _authorize(draft, actor, groups, None)
    machines.fire(draft, "reject")
    return True


def expire(draft: Draft) -> bool:
    """The request's expiry timer is due: a deployment still awaiting approval fails
    (as flowfsm, a failure for the failure policy; True); else a stale timer (False)."""
    if not machines.may(draft, "expire"):
        return False
    gate, deployment = policy(draft), draft.deployment
    work = draft.flow.work
    work.actor = FLOWFSM
    within = f" within {format_duration(gate.expiry)}" if gate is not None and gate.expiry is not None else ""
    required = f" of {gate.required}" if gate is not None else ""
    work.reason = f"approval expired: {len(deployment.approvals)}{required} approvals{within}"
    machines.fire(draft, "expire")
    return True


@attrs.frozen(weakref_slot=False, repr=False)
class AwaitingApproval:
    """A deployment awaiting an approval a viewer may give: its flow, the deployment
    (``approvals`` says who approved so far) and its environment's policy."""

    __repr__ = attrs_repr

    flow: Flow
    deployment: Deployment
    policy: ApprovalPolicy

    @property
    def missing(self) -> int:
        """How many approvals it still needs."""
        return self.policy.required - len(self.deployment.approvals)


_OPEN = (FlowState.IN_PROGRESS, FlowState.PAUSED)
_PAGE = 200


def approvals_for(
    repository: Repository, catalog: ServiceCatalog, actor: str, groups: Iterable[str] = ()
) -> Iterator[AwaitingApproval]:
    """Every deployment awaiting an approval that ``actor`` (a member of ``groups``)
    may give now, newest flow first: in a flow in progress or paused, allowed by its
    environment's policy (not the artifact's author, unless allowed), and not yet
    approved by them. For a dashboard's "waiting for you": it reads every open
    flow, page by page, so it suits a dashboard's refresh, not a trigger's path."""
    groups, seen = frozenset(groups), set[str]()
    for state in _OPEN:
        offset = 0
        while True:
            page = repository.list_flows(state=state, limit=_PAGE, offset=offset)
            for flow in page:
                found = _awaiting(flow, catalog, actor, groups)
                if found is not None and flow.id not in seen:  # a flow created meanwhile shifts the pages
                    seen.add(flow.id)
                    yield found
            if len(page) < _PAGE:
                break
            offset += _PAGE


def _awaiting(flow: Flow, catalog: ServiceCatalog, actor: str, groups: frozenset[str]) -> AwaitingApproval | None:
    deployment = flow.current_deployment()
    if deployment is None or deployment.state is not _AWAITING or approved(actor, deployment.approvals):
        return None
    try:
        environment = catalog.get(flow.service_id).pipeline.environment(deployment.environment)
    except UnknownService:  # the catalog no longer has it: no one can be shown to approve
        return None
    gate = environment.approvals if environment is not None else None
    if gate is None or gate.refusal(actor, groups, flow.author) is not None:
        return None
    return AwaitingApproval(flow, deployment, gate)
