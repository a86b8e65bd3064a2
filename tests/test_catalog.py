"""Catalogs from Python objects and from TOML, JSON and YAML files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowfsm import (
    Action,
    Catalog,
    CatalogError,
    Environment,
    FailureStrategy,
    FlowEngine,
    HookEvent,
    Pipeline,
    UnknownService,
    ValidationError,
)
from flowfsm.catalog import MAX_CATALOG_BYTES
from flowfsm.converter import unstructure
from flowfsm.errors import SHOWN_LIMIT, shown
from flowfsm.repositories import InMemoryRepository
from flowfsm.strategies import BUILTIN_STRATEGIES, Stop

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


# --- hardening: what a hostile or mistaken catalog file gets ----------------------------

SECRET = "whsec_Zmxvd2ZzbS1jYXRhbG9nLXNlY3JldC0y"
SECRET_KEY = SECRET.removeprefix("whsec_")


def catalog_data(**action: Any) -> dict[str, Any]:
    """A valid catalog's JSON form; ``action`` replaces the action's keys."""
    return {
        "services": [
            {
                "id": "svc-api",
                "artifacts": ["com.acme:api"],
                "pipeline": {"name": "default", "environments": [{"name": "dev", "promotions": ["smoke"]}]},
                "webhooks": [
                    {
                        "id": "wh-deploy",
                        "event": "deployment-created",
                        "actions": [{"name": "deploy", "url": "https://cd.example/deploy", "secret": SECRET, **action}],
                    }
                ],
            }
        ]
    }


ACTION = "$.services[0].webhooks[0].actions[0]"


def refused(file: Path) -> CatalogError:
    with pytest.raises(CatalogError) as error:
        Catalog.from_file(file)
    assert error.value.source == str(file)
    assert str(error.value).startswith(f"{file}: {error.value.path}: ")
    assert len(str(error.value)) < len(str(file)) + 400
    return error.value


def assert_no_secret(text: str) -> None:
    """Not the secret, nor any 8 characters of it."""
    assert not any(SECRET_KEY[i : i + 8] in text for i in range(len(SECRET_KEY) - 7)), text


def test_a_secret_given_as_a_list_is_not_shown(tmp_path: Path) -> None:
    error = refused(write(tmp_path, "c.json", json.dumps(catalog_data(secret=[SECRET]))))
    assert error.path == f"{ACTION}.secret"
    assert "got a list" in error.message
    assert_no_secret(str(error))
    toml = refused(write(tmp_path, "c.toml", TOML.replace(f'secret = "{SECRET}"', f'secret = ["{SECRET}"]')))
    assert toml.path == f"{ACTION}.secret"
    assert_no_secret(str(toml))


@pytest.mark.parametrize(
    ("field", "value"),
    [("url", [SECRET]), ("name", {"token": SECRET}), ("name", {"secret": "hunter2-hunter2"}), ("url", 7)],
)
def test_a_value_shaped_or_placed_like_a_secret_is_redacted(tmp_path: Path, field: str, value: object) -> None:
    error = refused(write(tmp_path, "c.json", json.dumps(catalog_data(**{field: value}))))
    assert error.path == f"{ACTION}.{field}"
    assert_no_secret(str(error))
    assert "hunter2" not in str(error)


def test_a_yaml_syntax_error_on_a_secrets_line_names_the_place_not_the_text(tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    text = f"""services:
  - id: svc-api
    webhooks:
      - actions:
          - secret: {SECRET}: oops
"""
    error = refused(write(tmp_path, "c.yaml", text))
    assert error.path == "$"
    assert "not valid YAML" in error.message
    assert "(line 5, column " in error.message
    assert_no_secret(str(error))
    assert error.__cause__ is None
    assert error.__suppress_context__


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("c.json", '{"services": [{"secret": "' + SECRET + '" "x"}]}', "(line 1, column 67)"),
        ("c.toml", f'[[services]]\nsecret = "{SECRET}" x\n', "(at line 2, column "),
    ],
)
def test_json_and_toml_syntax_errors_name_the_place_not_the_text(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    error = refused(write(tmp_path, name, text))
    assert where in error.message
    assert_no_secret(str(error))


def test_errors_show_values_bounded_and_redacted() -> None:
    assert shown(SECRET) == "<redacted>"
    assert shown([1, f"x {SECRET} y"]) == "[1, <redacted>]"
    assert (
        shown({"secret": "plain", "secrets": ["a"], "name": "n"})
        == "{'secret': <redacted>, 'secrets': <redacted>, 'name': 'n'}"
    )
    assert shown("https://bob:hunter2@cd.example/x") == "'https://<redacted>@cd.example/x'"
    assert shown(10**5000) == "<a number of about 5001 digits>"
    long = shown("x" * 10_000)
    assert len(long) == SHOWN_LIMIT
    assert long.endswith("…")
    assert len(shown(list(range(100_000)))) == SHOWN_LIMIT
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    assert shown(deep) == "[[[[…]]]]"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert shown(Hostile()) == "<Hostile>"


# Secret references -------------------------------------------------------------------


def test_a_secret_can_name_an_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET + "\n")
    reference = {"env": "WEBHOOK_SECRET"}
    from_json = Catalog.from_file(write(tmp_path, "c.json", json.dumps(catalog_data(secret=reference))))
    toml = TOML.replace(f'secret = "{SECRET}"', 'secret = { env = "WEBHOOK_SECRET" }')
    from_toml = Catalog.from_file(write(tmp_path, "c.toml", toml))
    for catalog in (from_json, from_toml):
        action = catalog.action("svc-api", "wh-deploy", "deploy")
        assert action is not None
        assert action.secret == SECRET
    assert Action("deploy", secret={"env": "WEBHOOK_SECRET"}).secret == SECRET  # the Python API's form


def test_a_yaml_secret_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    catalog = Catalog.from_file(
        write(tmp_path, "c.yaml", yaml.safe_dump(catalog_data(secret={"env": "WEBHOOK_SECRET"})))
    )
    action = catalog.action("svc-api", "wh-deploy", "deploy")
    assert action is not None
    assert action.secret == SECRET


def test_a_secret_file_is_relative_to_the_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "wh.secret").write_text(SECRET + "\n")
    file = write(config, "c.json", json.dumps(catalog_data(secret={"file": "wh.secret"})))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    action = Catalog.from_file(file).action("svc-api", "wh-deploy", "deploy")
    assert action is not None
    assert action.secret == SECRET
    absolute = write(tmp_path, "abs.json", json.dumps(catalog_data(secret={"file": str(config / "wh.secret")})))
    assert Catalog.from_file(absolute).action("svc-api", "wh-deploy", "deploy") == action


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ({"env": "FLOWFSM_TEST_UNSET"}, "environment variable 'FLOWFSM_TEST_UNSET' is not set"),
        ({"env": "FLOWFSM_TEST_EMPTY"}, "environment variable 'FLOWFSM_TEST_EMPTY' is empty"),
        ({"env": "FLOWFSM_TEST_BAD"}, "environment variable 'FLOWFSM_TEST_BAD': expected whsec_"),
        ({"file": "missing.secret"}, "missing.secret': No such file or directory"),
        ({"file": "."}, "cannot read secret file"),
        ({"file": "empty.secret"}, "empty.secret' is empty"),
        ({"env": "A", "file": "b"}, "a reference has one key, 'env' or 'file'"),
        ({"path": "b"}, "a reference has one key, 'env' or 'file', got 1 other key"),
        ({"env": ["WEBHOOK_SECRET"]}, "'env' must name a variable"),
    ],
)
def test_a_missing_secret_reference_names_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: dict[str, Any], problem: str
) -> None:
    monkeypatch.delenv("FLOWFSM_TEST_UNSET", raising=False)
    monkeypatch.setenv("FLOWFSM_TEST_EMPTY", " \n")
    monkeypatch.setenv("FLOWFSM_TEST_BAD", "whsec_" + SECRET_KEY[:10])
    (tmp_path / "empty.secret").write_text("\n")
    error = refused(write(tmp_path, "c.json", json.dumps(catalog_data(secret=reference))))
    assert error.path == f"{ACTION}.secret"
    assert problem in error.message
    assert SECRET_KEY[:10] not in str(error)
    with pytest.raises(ValidationError) as python:  # the Python API says the same
        Action("deploy", secret=reference if "file" not in reference else {"file": str(tmp_path / "missing")})
    assert python.value.field == "secret"


# Alias bombs and sizes -----------------------------------------------------------------

LAUGHS = ", ".join(  # nine levels of nine: 9**9 strings once expanded
    [
        '&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"&{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)


def test_yaml_anchors_and_aliases_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    bomb = refused(write(tmp_path, "bomb.yaml", f"services:\n  - id: [{LAUGHS}]\n"))
    assert (
        bomb.message == "not valid YAML: anchors and aliases (& and *) are not allowed in a catalog (line 2, column 10)"
    )
    reuse = """services:
  - {id: a, artifacts: ["com.acme:a"], pipeline: &p {name: default, environments: [{name: dev}]}}
  - {id: b, artifacts: ["com.acme:b"], pipeline: *p}
"""
    assert "anchors and aliases" in refused(write(tmp_path, "reuse.yaml", reuse)).message
    merge = "services:\n  - <<: {id: a}\n    artifacts: ['com.acme:a']\n"
    assert "merge keys" in refused(write(tmp_path, "merge.yaml", merge)).message


def test_a_catalog_file_is_read_up_to_a_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b'{"services": []}' + b" " * MAX_CATALOG_BYTES)
    assert "larger than 10 MiB" in refused(big).message
    endless = tmp_path / "zero.json"
    endless.symlink_to("/dev/zero")
    assert refused(endless).message == "cannot read: not a regular file (a device)"  # never read


# Duplicate keys ----------------------------------------------------------------------


def test_duplicate_keys_are_refused_naming_the_key_and_where(tmp_path: Path) -> None:
    text = json.dumps(catalog_data()).replace('"url":', '"url": "https://other.example/", "url":')
    in_json = refused(write(tmp_path, "c.json", text))
    assert (in_json.path, in_json.message) == (ACTION, "duplicate key 'url'")
    in_toml = refused(write(tmp_path, "c.toml", TOML.replace('failureStrategy = "STOP"', 'id = "again"')))
    assert "Cannot overwrite a value (at line 5, column" in in_toml.message
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    yaml_text = "services:\n  - id: a\n    artifacts: ['com.acme:a']\n    id: b\n"
    in_yaml = refused(write(tmp_path, "c.yaml", yaml_text))
    assert in_yaml.message == "not valid YAML: duplicate key 'id' (line 4, column 5)"


# Lists -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"artifacts": "com.acme:api"}, "$.services[0].artifacts"),
        ({"artifacts": {"com.acme:api": True}}, "$.services[0].artifacts"),
        (
            {"pipeline": {"name": "p", "environments": [{"name": "dev", "promotions": "smoke"}]}},
            "$.services[0].pipeline.environments[0].promotions",
        ),
        ({"webhooks": "wh-deploy"}, "$.services[0].webhooks"),
    ],
)
def test_a_string_or_a_mapping_is_not_a_list(tmp_path: Path, change: dict[str, object], path: str) -> None:
    data = catalog_data()
    data["services"][0].update(change)
    error = refused(write(tmp_path, "c.json", json.dumps(data)))
    assert error.path == path
    assert error.message.startswith("expected a list, got ")


def test_the_python_api_refuses_a_string_for_a_list_as_files_do(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as python:
        Environment("dev", promotions="smoke")  # a str is an Iterable[str]: only the check refuses it
    assert python.value.field == "promotions"
    data = catalog_data()
    data["services"][0]["pipeline"]["environments"][0]["promotions"] = "smoke"
    assert refused(write(tmp_path, "c.json", json.dumps(data))).message == python.value.message
    with pytest.raises(ValidationError) as items:
        Pipeline("p", ["dev"])  # type: ignore[list-item]  # what the check is for
    assert items.value.field == "environments[0]"
    with pytest.raises(ValidationError) as pipeline:
        api_service(pipeline="default")
    assert pipeline.value.field == "pipeline"


# URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1/x", "expected [IPv6 address]"),
        ("http://::1/x", "is not a host name or an IP address"),
        ("http://cd.example:99999/x", "port must be a number from 1 to 65535, got '99999'"),
        ("http://cd.example:0/x", "port must be a number from 1 to 65535"),
        ("http://cd.example:8o/x", "port must be a number"),
        ("https://deploy:hunter2@cd.example/x", "must not contain credentials"),
        ("https://cd.example/a b", "must not contain whitespace or control characters"),
        ("https://cd.example/\x1b[2J", "must not contain whitespace or control characters"),
        ("ftp://cd.example/x", "expected an http:// or https:// URL"),
        ("https:///x", "expected an http:// or https:// URL with a host"),
        ("https://-cd.example/", "is not a host name"),
        ("https://cd..example/", "is not a host name"),
        ("https://300.1.1.1/", "is not a host name or an IP address"),
        ("https://[fe80::zz]/", "is not a host name or an IP address"),
        ("https://cd.example\\@evil.example/", "must not contain credentials"),
        ("http://2130706433/x", "is not a host name or an IP address"),  # 127.0.0.1 as one number
        ("http://0x7f.1/x", "is not a host name or an IP address"),
        ("http://0177.0.0.1/x", "is not a host name or an IP address"),
        ("http://169.254.0xa9fe/x", "is not a host name or an IP address"),
    ],
)
def test_urls_are_validated_in_files_and_in_python(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as python:
        Action("deploy", url=url)
    assert python.value.field == "url"
    assert problem in python.value.message
    assert "hunter2" not in str(python.value)
    error = refused(write(tmp_path, "c.json", json.dumps(catalog_data(url=url))))
    assert (error.path, error.message) == (f"{ACTION}.url", python.value.message)


@pytest.mark.parametrize(
    "url",
    [
        "https://cd.example/deploy?x=1#f",
        "HTTP://CD.EXAMPLE:8080",
        "http://127.0.0.1:1/",
        "http://[::1]:65535/x",
        "http://[2001:db8::1]/",
        "http://deployer_svc/hook",
        "https://bücher.example/",
        "https://cd.example./",
    ],
)
def test_good_urls_pass(url: str) -> None:
    assert Action("deploy", url=url).url == url


# Failure strategies ------------------------------------------------------------------


def test_the_loader_refuses_a_strategy_the_engine_would(tmp_path: Path, repository: InMemoryRepository) -> None:
    file = write(tmp_path, "c.toml", TOML.replace('failureStrategy = "STOP"', 'failureStrategy = "RETRY_TWICE"'))
    with pytest.raises(CatalogError) as loaded:
        Catalog.from_file(file, strategies=BUILTIN_STRATEGIES)
    assert (loaded.value.source, loaded.value.path) == (str(file), "$.services[0].failureStrategy")
    assert (
        "service 'svc-api' names unknown failure strategy 'RETRY_TWICE' (known: PAUSE, RETRY, ROLLBACK, STOP)"
        in loaded.value.message
    )
    catalog = Catalog.from_file(file)  # without strategies: the engine decides
    with pytest.raises(CatalogError) as engine:
        FlowEngine(catalog, repository, None)
    assert str(engine.value) == str(loaded.value)
    FlowEngine(catalog, repository, None, strategies={"RETRY_TWICE": Stop()})  # known to this engine


# Anything at all: a catalog error, never a Python one ---------------------------------


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("binary.toml", bytes(range(256)), "not UTF-8 text (line 2, column 118)"),
        ("latin1.json", '{"services": [{"id": "caf\xe9"}]}'.encode("latin-1"), "not UTF-8 text"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "not valid JSON: nested too deeply"),
        ("deep.toml", b"x = " + b"[" * 100_000 + b"]" * 100_000, "not valid TOML: nested too deeply"),
        ("list.json", b"[1, 2]", "expected a table/object with a 'services' list, got a list"),
        ("scalar.json", b'"services"', "got a string"),
        ("null.json", b"null", "got nothing"),
        ("digits.json", b'{"services": [{"id": ' + b"9" * 5000 + b"}]}", "got <a number of 5000 digits>"),
        ("digits.toml", b"x = " + b"9" * 5000, "a number of more than 4300 digits (line 1, column 5)"),
        ("services.json", b'{"services": {"id": "svc"}}', "expected a list, got {'id': 'svc'}"),
        ("wrong.json", b'{"services": [{"id": {"a": 1}}]}', "expected a string, got {'a': 1}"),
        ("keys.json", b'{"services": [{"id": "a", "b": 1, "c": 2}]}', "artifacts: required key missing"),
        ("nothing.json", b"", "not valid JSON: Expecting value (line 1, column 1)"),
    ],
)
def test_any_input_is_a_catalog_error(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    file = tmp_path / name
    file.write_bytes(content)
    assert problem in str(refused(file))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("services: !!python/object/apply:os.system ['true']\n", "tags (!...) other than the plain types"),
        ("services: !!binary aGVsbG8=\n", "tags (!...) other than the plain types"),
        ("x: " + "9" * 5000 + "\n", "expected 'services', a list of services"),
        ("services:\n  - id: " + "9" * 5000 + "\n", "expected a string, got <a number of 5000 digits>"),
        ("[" * 100_000 + "]" * 100_000, "not valid YAML: nested too deeply"),
        ("? [a]\n: b\n", "found unhashable key (line 1, column 3)"),
        ("services: [\x07]\n", "not valid YAML: character U+0007 is not allowed (line 1, column 12)"),
        ("- 1\n", "got a list"),
        (
            "services:\n  - {id: a, artifacts: ['a:b'], pipeline: {name: p, environments: [{name: d}]}, 1: x, b: y}\n",
            "$.services[0]: unknown key(s) 1, 'b'",
        ),
        ("", "got nothing"),
    ],
)
def test_any_yaml_input_is_a_catalog_error(tmp_path: Path, content: str, problem: str) -> None:
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    assert problem in str(refused(write(tmp_path, "c.yaml", content)))


def json_like() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=12)
        | st.sampled_from(["deploy", "com.acme:api", "https://cd.example/", "STOP", "deployment-created", SECRET])
    )
    keys = st.sampled_from(["id", "name", "url", "secret", "env", "file", "artifacts", "event", "actions"]) | st.text(
        max_size=5
    )
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
    )


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*path, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _paths(inner, (*path, i))
    return found


@given(data=st.data())
def test_any_json_like_value_anywhere_loads_or_is_a_catalog_error(data: st.DataObject) -> None:
    catalog = catalog_data(secret=SECRET)
    path = data.draw(st.sampled_from(_paths(catalog)[1:]))
    value = data.draw(json_like())
    parent: Any = catalog
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    error = loads_or_refuses(catalog)
    if error is not None:
        assert_no_secret(str(error))
        assert len(str(error)) < 800  # the longest: a bad event name, with the 25 event names listed


@given(json_like())
def test_any_json_like_value_is_a_catalog_or_a_catalog_error(value: Any) -> None:
    error = loads_or_refuses({"services": value})
    if error is not None:
        assert_no_secret(str(error))


def loads_or_refuses(data: Any) -> CatalogError | None:
    """None if ``data`` loads; its CatalogError if not. Any other exception fails the test."""
    try:
        Catalog.from_dict(data)
    except CatalogError as e:
        return e
    return None


# What a catalog's errors never show ----------------------------------------------------------

PLAIN = "hunter2-Pl41nS3cret"
YAML_HEAD = """services:
  - id: s
    artifacts: [g:a]
    pipeline: {name: p, environments: [{name: dev}]}
    webhooks:
      - id: w
        event: deployment-created
        actions:
"""
YAML_ACTION = YAML_HEAD + "          - name: a\n            url: http://127.0.0.1/\n"


@pytest.mark.parametrize("tag", ["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!set", "!x", "!<x>"])
@pytest.mark.parametrize("value", [SECRET, PLAIN])
def test_a_yaml_tag_on_a_value_is_refused_naming_the_place_never_the_value(
    tmp_path: Path, tag: str, value: str
) -> None:
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    error = refused(write(tmp_path, "c.yaml", YAML_ACTION + f"            secret: {tag} {value}\n"))
    assert error.path == "$"
    assert error.message.endswith("(line 11, column 21)")
    for part in (SECRET_KEY[:12], SECRET_KEY[-12:], SECRET_KEY.lower()[:12], PLAIN, PLAIN.lower(), "x'"):
        assert part not in str(error)


@pytest.mark.parametrize(
    ("action", "path"),
    [
        (f"          - name: a\n            secret: {{{PLAIN}}}\n", f"{ACTION}.secret"),
        (f"          - name: a\n            secret: {{env: {PLAIN.lower()}}}\n", f"{ACTION}.secret"),
        (f"          - name: a\n            secret: {PLAIN}\n            secret: {PLAIN}\n", "$"),
        (f"          - name: a\n            secret: {{{PLAIN}: 1, {PLAIN}: 2}}\n", "$"),
        (f"          - name: a\n            {PLAIN}: 1\n", ACTION),
        (f"          - [{PLAIN}]\n", ACTION),
        (f"          - name: a\n            url: 'http://127.0.0.1/ {PLAIN}'\n", f"{ACTION}.url"),
    ],
)
def test_what_an_action_holds_is_never_shown(tmp_path: Path, action: str, path: str) -> None:
    pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    error = refused(write(tmp_path, "c.yaml", YAML_HEAD + action))
    assert error.path == path
    assert PLAIN not in str(error)
    assert PLAIN.lower() not in str(error)


def test_actions_given_as_a_string_are_not_shown(tmp_path: Path) -> None:
    data = catalog_data()
    data["services"][0]["webhooks"][0]["actions"] = PLAIN
    error = refused(write(tmp_path, "c.json", json.dumps(data)))
    assert error.path == "$.services[0].webhooks[0].actions"
    assert error.message == "expected a list, got <redacted>"


@pytest.mark.parametrize("name", ["c.json", "c.toml", "c.yaml"])
def test_a_leading_byte_order_mark_is_accepted_in_every_format(tmp_path: Path, name: str) -> None:
    if name.endswith(".yaml"):
        pytest.importorskip("yaml", reason="YAML catalogs need the 'yaml' extra")
    text = {"c.json": '{"services": []}', "c.toml": "services = []\n", "c.yaml": "services: []\n"}[name]
    file = tmp_path / name
    file.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(Catalog.from_file(file)) == 0


def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert refused(fifo).message == "cannot read: not a regular file (a FIFO)"
    secret_fifo = tmp_path / "wh.secret"
    os.mkfifo(secret_fifo)
    error = refused(write(tmp_path, "c.json", json.dumps(catalog_data(secret={"file": "wh.secret"}))))
    assert error.path == f"{ACTION}.secret"
    assert "not a regular file (a FIFO)" in error.message
    device = refused(write(tmp_path, "d.json", json.dumps(catalog_data(secret={"file": "/dev/zero"}))))
    assert "not a regular file (a device)" in device.message


# Numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [2.7, 1.5, True, "3", " 3 ", "3_0", "٣"])
@pytest.mark.parametrize("where", ["service", "environment"])
def test_retry_attempts_must_be_a_whole_number_as_written(tmp_path: Path, attempts: object, where: str) -> None:
    """``attempts = 2.7`` is a typo, not 2; ``"3"`` and ``true`` are not numbers (as ``required`` of approvals)."""
    data = catalog_data()
    service = data["services"][0]
    retry = {"attempts": attempts, "backoff": "30s"}
    if where == "service":
        service.update(failureStrategy="RETRY", retry=retry)
        path = "$.services[0].retry.attempts"
    else:
        service["pipeline"]["environments"][0].update(failureStrategy="RETRY", retry=retry)
        path = "$.services[0].pipeline.environments[0].retry.attempts"
    error = refused(write(tmp_path, "c.json", json.dumps(data)))
    assert error.path == path
    assert error.message == f"must be a whole number from 1 to 100, got {shown(attempts)}"


@pytest.mark.parametrize("name", ["c.json", "c.toml", "c.yaml"])
def test_an_unknown_top_level_key_is_named(tmp_path: Path, name: str) -> None:
    """``freeze`` for ``freezes`` is a typo that would drop every window: say which key."""
    data = catalog_data()
    data["freeze"] = []
    text = json.dumps(data) if name.endswith((".json", ".yaml")) else "freeze = []\n" + TOML
    error = refused(write(tmp_path, name, text))
    assert (error.path, error.message) == ("$", "unknown key(s) 'freeze'; a catalog has 'services' and 'freezes'")
