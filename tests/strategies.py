"""Hypothesis strategies for flowfsm values, shared by the property tests."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from hypothesis import strategies as st

from flowfsm import (
    Action,
    ActionRef,
    Artifact,
    ArtifactCreated,
    Deployment,
    DeploymentCompleted,
    DeploymentFailed,
    DeploymentPayload,
    DeploymentStarted,
    DeploymentState,
    Environment,
    Flow,
    FlowState,
    HookEvent,
    HookRequest,
    Pipeline,
    Promotion,
    PromotionCompleted,
    PromotionPayload,
    PromotionResult,
    PromotionState,
    ResultStatus,
    Service,
    ServiceRef,
    TimerFired,
    TimerKind,
    Trigger,
    Webhook,
)

# Text every backend stores alike: no NUL and no lone surrogate (flowfsm refuses both).
storable = st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00")
names = st.text(storable, min_size=1, max_size=12).filter(lambda s: bool(s.strip()) and ":" not in s)
ids = st.uuids().map(lambda u: u.hex)
times = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC))
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(storable, max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(storable, max_size=5), inner, max_size=3),
    max_leaves=6,
)

artifacts = st.builds(Artifact, names, names, names)
environments = st.builds(Environment, names, st.lists(names, max_size=3, unique=True))
pipelines = st.builds(Pipeline, names, st.lists(environments, min_size=1, max_size=3, unique_by=lambda e: e.name))
secrets = st.lists(st.binary(min_size=16, max_size=40), min_size=1, max_size=2).map(
    lambda keys: " ".join("whsec_" + base64.b64encode(k).decode() for k in keys)
)
actions = st.builds(Action, names, st.none() | st.just("https://hooks.example/x"), st.none() | secrets)
webhooks = st.builds(
    Webhook,
    names,
    st.sampled_from(HookEvent),
    st.lists(actions, min_size=1, max_size=2, unique_by=lambda a: a.name),
)
services = st.builds(
    Service,
    names,
    st.lists(st.builds(lambda g, n: f"{g}:{n}", names, names), min_size=1, max_size=2),
    pipelines,
    st.just("STOP") | names,
    st.lists(webhooks, max_size=3, unique_by=lambda w: w.id),
)
promotions = st.builds(Promotion, ids, names, st.sampled_from(PromotionState))
deployments = st.builds(Deployment, ids, names, st.lists(promotions, max_size=3), st.sampled_from(DeploymentState))
flows = st.builds(
    Flow,
    ids,
    artifacts,
    names,
    st.lists(deployments, min_size=1, max_size=3),
    st.sampled_from(FlowState),
    st.integers(0, 2**31),
    st.none() | times,
    st.none() | times,
)
results = st.builds(
    PromotionResult,
    ids,
    st.sampled_from(ResultStatus),
    st.dictionaries(st.text(storable, max_size=5), json_values, max_size=3),
)
service_refs = st.builds(ServiceRef, names, names, names)
payloads = st.builds(DeploymentPayload, artifacts, deployments, service_refs, environments) | st.builds(
    PromotionPayload, artifacts, deployments, service_refs, results
)
hook_requests = st.builds(
    HookRequest,
    ids,
    ids,
    names,
    st.builds(ActionRef, names, st.none() | st.just("https://hooks.example/y"), st.booleans()),
    st.sampled_from(HookEvent),
    payloads,
    times,
)


said = st.none() | ids
"""An optional ``actor`` or ``reason``."""


@st.composite
def promotion_completed(draw: st.DrawFn) -> PromotionCompleted:
    promotion_id = draw(ids)
    statuses = draw(st.lists(st.sampled_from(ResultStatus), min_size=1, max_size=3))
    details = draw(st.dictionaries(st.text(storable, max_size=5), json_values, max_size=2))
    results = [PromotionResult(promotion_id, s, details) for s in statuses]
    return PromotionCompleted(draw(ids), promotion_id, results, actor=draw(said), reason=draw(said))


triggers: st.SearchStrategy[Trigger] = st.one_of(
    st.builds(ArtifactCreated, artifacts, actor=said, reason=said),
    st.builds(DeploymentStarted, ids, actor=said, reason=said),
    st.builds(DeploymentCompleted, ids, actor=said, reason=said),
    st.builds(DeploymentFailed, ids, ids, actor=said),
    promotion_completed(),
    st.builds(TimerFired, ids, st.sampled_from(TimerKind), actor=said, reason=said),
)
