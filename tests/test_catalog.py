"""Catalogs from Python objects and from TOML, JSON and YAML files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowfsm import Catalog, CatalogError, FailureStrategy, HookEvent, UnknownService
from flowfsm.converter import unstructure

from .conftest import api_service

TOML = """
[[services]]
id = "svc-api"
artifacts = ["com.acme:api"]
failureStrategy = "STOP"

[services.pipeline]
name = "default"
environments = [
    { name = "dev", promotions = ["smoke"] },
    { name = "prod", promotions = ["smoke", "perf"] },
]

[[services.webhooks]]
id = "wh-deploy"
event = "deployment-created"
actions = [{ name = "deploy", url = "https://cd.example/deploy", secret = "whsec_Zmxvd2ZzbS1jYXRhbG9nLXNlY3JldC0y" }]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_toml_catalog(tmp_path: Path) -> None:
    catalog = Catalog.from_file(write(tmp_path, "catalog.toml", TOML))
    (service,) = catalog.for_artifact("com.acme:api")
    assert service.id == "svc-api"
    assert [e.name for e in service.pipeline.environments] == ["dev", "prod"]
    assert service.failure_strategy == FailureStrategy.STOP
    assert service.webhooks[0].event is HookEvent.DEPLOYMENT_CREATED
    assert catalog.action("svc-api", "wh-deploy", "deploy") is not None
    assert catalog.get("svc-api") is service
    assert list(catalog) == [service]
    assert catalog.for_artifact("com.acme:web") == ()
    with pytest.raises(UnknownService):
        catalog.get("nope")


def test_json_and_yaml_catalogs_say_the_same(tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    import yaml

    data = {"services": [unstructure(api_service())]}
    from_json = Catalog.from_file(write(tmp_path, "c.json", json.dumps(data)))
    from_yaml = Catalog.from_file(write(tmp_path, "c.yaml", yaml.safe_dump(data)))
    assert list(from_json) == list(from_yaml) == [api_service()]


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        (
            TOML.replace('{ name = "prod"', '{ name = "dev"'),
            "$.services[0].pipeline.environments",
            "duplicate environment 'dev'",
        ),
        (
            TOML.replace('"deployment-created"', '"deployment-exploded"'),
            "$.services[0].webhooks[0].event",
            "'deployment-exploded'",
        ),
        (
            TOML.replace('artifacts = ["com.acme:api"]', 'artifacts = ["com.acme"]'),
            "$.services[0].artifacts[0]",
            "GROUP:NAME",
        ),
        (TOML.replace('id = "svc-api"', 'ident = "svc-api"'), "$.services[0].id", "required key missing"),
        (TOML.replace('name = "default"', "name = 7"), "$.services[0].pipeline.name", "expected a string"),
        (
            TOML + TOML.replace("[[services.webhooks]]", "[[services.webhooks]]"),
            "$.services[1].id",
            "duplicate service",
        ),
        ("services = 3", "$.services", ""),
        ("[services", "$", "not valid TOML"),
    ],
)
def test_a_bad_catalog_file_names_the_file_the_path_and_the_problem(
    tmp_path: Path, text: str, path: str, problem: str
) -> None:
    file = write(tmp_path, "catalog.toml", text)
    with pytest.raises(CatalogError) as error:
        Catalog.from_file(file)
    assert error.value.source == str(file)
    assert error.value.path == path
    assert problem in error.value.message
    assert str(error.value).startswith(f"{file}: {path}: ")
    assert "whsec_" not in str(error.value)


def test_unreadable_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as missing:
        Catalog.from_file(tmp_path / "nope.toml")
    assert "cannot read" in str(missing.value)
    with pytest.raises(CatalogError) as suffix:
        Catalog.from_file(write(tmp_path, "catalog.ini", "x"))
    assert "unknown catalog format" in str(suffix.value)
    with pytest.raises(CatalogError) as top:
        Catalog.from_file(write(tmp_path, "catalog.json", "[1, 2]"))
    assert top.value.path == "$"
