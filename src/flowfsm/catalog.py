"""The catalog of services: who consumes which artifact.

Build it from ``Service`` objects, or load a TOML, JSON or YAML file (YAML needs
the ``yaml`` extra). A bad file raises ``CatalogError`` naming the file, the path
inside it (or the line and column, for a file that does not parse) and the
problem, e.g.
``catalog.toml: $.services[0].pipeline.environments: duplicate environment 'dev'``.
No message shows a secret, and none quotes the file's text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Final

import attrs

from flowfsm.errors import CatalogError, UnknownService, ValidationError, bounded, shown
from flowfsm.freezes import FreezeWindow
from flowfsm.model import Action, Service, read_regular_file

__all__ = ["MAX_CATALOG_BYTES", "Catalog", "check_policies", "unknown_strategy"]

MAX_CATALOG_BYTES: Final = 10 * 1024 * 1024
"""The largest catalog file read: a larger one (or an endless one) is refused."""

_MAX_DIGITS: Final = 4300  # Python's own limit on converting a number's digits
_TOP_LEVEL: Final = frozenset({"services", "freezes"})


class Catalog:
    """Services by id and by the artifact keys they consume (a ``ServiceCatalog``).

    ``freezes`` are its freeze windows: each must name services it has and an
    environment one of them has, and each service gets those covering it
    (``Service.freezes``). ``source`` is the file it was loaded from, if any: errors
    about it name the file.
    """

    __slots__ = ("_by_id", "_by_key", "freezes", "source")

    def __init__(
        self,
        services: Iterable[Service] = (),
        *,
        freezes: Iterable[FreezeWindow] = (),
        source: str | None = None,
    ) -> None:
        self.source = source
        self._by_id: dict[str, Service] = {}
        self._by_key: dict[str, list[Service]] = {}
        for i, service in enumerate(services):
            if not isinstance(service, Service):
                raise ValidationError(f"services[{i}]", f"expected a Service, got {shown(service)}")
            if service.id in self._by_id:
                raise ValidationError(f"services[{i}].id", f"duplicate service {shown(service.id)}")
            self._by_id[service.id] = service
        self.freezes: tuple[FreezeWindow, ...] = _windows(freezes, self._by_id)
        """The catalog's freeze windows, each also on every service it covers (``Service.freezes``)."""
        for window in self.freezes:
            for service_id, service in self._by_id.items():
                if _covered(window, service):
                    self._by_id[service_id] = attrs.evolve(service, freezes=(*service.freezes, window))
        for service in self._by_id.values():
            for key in dict.fromkeys(service.artifacts):
                self._by_key.setdefault(key, []).append(service)

    def __iter__(self) -> Iterator[Service]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"Catalog({list(self._by_id)!r})"

    def for_artifact(self, key: str) -> tuple[Service, ...]:
        return tuple(self._by_key.get(key, ()))

    def get(self, service_id: str) -> Service:
        try:
            return self._by_id[service_id]
        except KeyError:
            raise UnknownService(service_id) from None

    def action(self, service_id: str, webhook_id: str, action_name: str) -> Action | None:
        """The configured action, secret included: for emitters that sign."""
        service = self._by_id.get(service_id)
        return service.action(webhook_id, action_name) if service else None

    def check_strategies(self, known: Collection[str]) -> None:
        """Refuse a service naming a failure strategy (its own, an environment's, a
        retry policy's ``then``) that is not one of ``known`` (names)."""
        for service in self:
            check_policies(service, known, self)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "<catalog>", strategies: Collection[str] | None = None
    ) -> Catalog:
        """Build from the JSON form: ``{"services": [...]}`` with camelCase keys, and
        perhaps ``"freezes": [...]``, the catalog's freeze windows.

        ``strategies``, when given, are the failure strategies the engine will know
        (e.g. ``flowfsm.strategies.BUILTIN_STRATEGIES``): a service naming another
        is refused here, as the engine would refuse it.
        """
        from flowfsm.converter import structure

        if isinstance(data, Mapping) and "services" in data and not set(data) <= _TOP_LEVEL:
            unknown = sorted((k for k in data if k not in _TOP_LEVEL), key=str)
            listed = ", ".join(shown(k, 40) for k in unknown[:5])
            more = ", …" if len(unknown) > 5 else ""
            raise CatalogError(source, "$", f"unknown key(s) {listed}{more}; a catalog has 'services' and 'freezes'")
        if not isinstance(data, Mapping) or "services" not in data:
            raise CatalogError(
                source, "$", "expected 'services', a list of services (and perhaps 'freezes', a list of freeze windows)"
            )
        try:
            services = structure(data["services"], list[Service])
        except ValidationError as e:
            path = "$.services" + e.field.removeprefix("$")
            raise CatalogError(source, path, _redacted_in_actions(path, e.message)) from e
        try:
            freezes = structure(data.get("freezes", []), list[FreezeWindow])
        except ValidationError as e:
            raise CatalogError(source, "$.freezes" + e.field.removeprefix("$"), e.message) from e
        try:
            catalog = cls(services, freezes=freezes, source=source)
        except ValidationError as e:
            raise CatalogError(source, f"$.{e.field}", e.message) from e
        if strategies is not None:
            catalog.check_strategies(strategies)
        return catalog

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, strategies: Collection[str] | None = None) -> Catalog:
        """Load ``.toml``, ``.json``, ``.yaml``/``.yml`` by the file's suffix.

        The file is UTF-8, at most ``MAX_CATALOG_BYTES``; keys appear once in each
        table; YAML anchors, aliases and tags beyond the plain types are refused. A
        secret may be a reference, ``{env = "NAME"}`` or ``{file = "PATH"}``, read now
        (a relative PATH is relative to the catalog file's folder). ``strategies`` as
        for ``from_dict``.
        """
        source = os.fspath(path)
        suffix = os.path.splitext(source)[1].lower()
        if suffix not in _PARSERS:
            raise CatalogError(source, "$", f"unknown catalog format {shown(suffix)}; use .toml, .json or .yaml")
        data = _PARSERS[suffix](source, _read(source))
        if not isinstance(data, dict):
            raise CatalogError(source, "$", f"expected a table/object with a 'services' list, got {_kind(data)}")
        _anchor_secret_files(data, os.path.dirname(source))
        return cls.from_dict(data, source=source, strategies=strategies)


def _windows(value: Iterable[FreezeWindow], services: Mapping[str, Service]) -> tuple[FreezeWindow, ...]:
    """The freeze windows, each naming services of the catalog and environments one
    of those has: a name that matches nothing is a typo that would freeze nothing."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValidationError("freezes", f"expected a list of FreezeWindow, got {shown(value)}")
    windows = tuple(value)
    names: set[str] = set()
    for i, window in enumerate(windows):
        if not isinstance(window, FreezeWindow):
            raise ValidationError(f"freezes[{i}]", f"expected a FreezeWindow, got {shown(window)}")
        if window.name in names:
            raise ValidationError(f"freezes[{i}].name", f"duplicate freeze window {shown(window.name)}")
        names.add(window.name)
        for j, service_id in enumerate(window.services):
            if service_id not in services:
                raise ValidationError(f"freezes[{i}].services[{j}]", f"no service {shown(service_id)} in the catalog")
        covered = [s for s in services.values() if not window.services or s.id in window.services]
        for j, environment in enumerate(window.environments):
            if not any(s.pipeline.environment(environment) for s in covered):
                raise ValidationError(
                    f"freezes[{i}].environments[{j}]", f"no service it covers has an environment {shown(environment)}"
                )
    return windows


def _covered(window: FreezeWindow, service: Service) -> bool:
    return any(window.covers(service.id, e.name) for e in service.pipeline.environments)


_ACTION_LEVEL: Final = re.compile(r"\.actions(\[\d+\])?$")
_QUOTED: Final = re.compile(r"""'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?""")


def _redacted_in_actions(path: str, message: str) -> str:
    """``message`` about ``actions`` or one action as a whole (an unknown key, a
    value of the wrong type) with every quoted value redacted: whatever is there may
    be a secret put in the wrong place. Messages about an action's fields (``url``,
    ``secret``) are written not to show one, and stay as they are."""
    return _QUOTED.sub("<redacted>", message) if _ACTION_LEVEL.search(path) else message


def check_policies(service: Service, known: Collection[str], catalog: object = None) -> None:
    """Refuse ``service`` if a failure strategy it names (its own, an environment's
    override, a retry policy's ``then``) is not in ``known``: one rule for
    ``Catalog.from_file(strategies=...)``, ``flowfsm catalog validate`` (which knows
    the built-in strategies) and ``FlowEngine`` (which knows those and its own)."""
    if service.failure_strategy not in known:
        raise unknown_strategy(service, known, catalog)
    for path, field, name in overridden_policies(service):
        if name not in known:
            raise unknown_strategy(service, known, catalog, name=name, path=path, field=field)


def overridden_policies(service: Service) -> list[tuple[str, str, str]]:
    """The failure strategies ``service`` names besides its own — a retry policy's
    ``then``, an environment's override and its retry's ``then`` — each as (JSON path
    in the service, field, name)."""
    named: list[tuple[str, str, str]] = []
    if service.retry is not None:
        named.append(("retry.then", "retry.then", service.retry.then))
    for i, env in enumerate(service.pipeline.environments):
        if env.failure_strategy is not None:
            field = f"environments[{i}].failure_strategy"
            named.append((f"pipeline.environments[{i}].failureStrategy", field, env.failure_strategy))
        if env.retry is not None:
            named.append((f"pipeline.environments[{i}].retry.then", f"environments[{i}].retry.then", env.retry.then))
    return named


def unknown_strategy(
    service: Service,
    known: Collection[str],
    catalog: object = None,
    *,
    name: str | None = None,
    path: str = "failureStrategy",
    field: str = "failure_strategy",
) -> ValidationError:
    """The error for ``service`` naming a failure strategy (``name``, by default its
    own) not in ``known``. It names the service and the field, and the file when
    ``catalog`` is a ``Catalog`` loaded from one."""
    message = (
        f"service {shown(service.id)} names unknown failure strategy {shown(name or service.failure_strategy)}"
        f" (known: {', '.join(sorted(known)) or 'none'})"
    )
    if isinstance(catalog, Catalog) and catalog.source is not None:
        index = next((i for i, s in enumerate(catalog) if s.id == service.id), None)
        where = "$" if index is None else f"$.services[{index}].{path}"
        return CatalogError(catalog.source, where, message)
    return ValidationError(field, message)


# --- reading files --------------------------------------------------------------------


def _read(source: str) -> str:
    """The file's text: a regular file only (a FIFO would block, ``/dev/zero`` never
    end), at most ``MAX_CATALOG_BYTES``; a leading byte order mark is dropped, in
    every format."""
    try:
        raw = read_regular_file(source, MAX_CATALOG_BYTES)
    except OSError as e:
        raise CatalogError(source, "$", f"cannot read: {e.strerror or type(e).__name__}") from e
    if len(raw) > MAX_CATALOG_BYTES:
        raise CatalogError(source, "$", f"larger than {MAX_CATALOG_BYTES // (1024 * 1024)} MiB; not a catalog")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = _line_column(raw[: e.start].decode("utf-8"))
        raise CatalogError(source, "$", f"not UTF-8 text (line {line}, column {column})") from None


def _line_column(before: str) -> tuple[int, int]:
    """The 1-based line and column just after ``before``, the text up to an error."""
    return before.count("\n") + 1, len(before) - before.rfind("\n")


def _kind(value: object) -> str:
    """What a file's top level holds, in the file's terms."""
    if isinstance(value, bool | int | float | _HugeNumber):
        return "a boolean" if isinstance(value, bool) else "a number"
    return {str: "a string", list: "a list", type(None): "nothing"}.get(type(value), "a value")


def _too_deep(source: str, fmt: str) -> CatalogError:
    return CatalogError(source, "$", f"not valid {fmt}: nested too deeply")


class _HugeNumber:
    """A number too long to convert, kept so the loader can say where it is."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def _parse_json(source: str, text: str) -> Any:
    import json

    try:
        data = json.loads(text, object_pairs_hook=_JsonObject.of, parse_int=_json_int)
    except json.JSONDecodeError as e:  # its message holds no text of the file
        raise CatalogError(source, "$", f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise _too_deep(source, "JSON") from None
    duplicate = _JsonObject.first_duplicate(data)
    if duplicate:
        path, key = duplicate
        raise CatalogError(source, path, f"duplicate key {_key_shown(key)}")
    return data


def _json_int(digits: str) -> int | _HugeNumber:
    return int(digits) if len(digits) <= _MAX_DIGITS else _HugeNumber(len(digits))


class _JsonObject(dict[str, Any]):
    """A JSON object in which a key appeared twice (the first such key)."""

    duplicate: str = ""

    @classmethod
    def of(cls, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        marked, seen = cls(obj), set()
        for key, _ in pairs:
            if key in seen:
                marked.duplicate = key
                break
            seen.add(key)
        return marked

    @staticmethod
    def first_duplicate(data: object) -> tuple[str, str] | None:
        """(JSON path, key) of the first object, in document order, with a duplicate
        key. Iterative: the document may nest as deep as the parser allows."""
        stack: list[tuple[str, object]] = [("$", data)]
        while stack:
            path, value = stack.pop()
            if isinstance(value, _JsonObject):
                return path, value.duplicate
            if isinstance(value, dict):
                stack.extend((f"{path}{_key_path(k)}", v) for k, v in reversed(value.items()))
            elif isinstance(value, list):
                stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        return None


def _key_path(key: str) -> str:
    return f".{key}" if key.isidentifier() and len(key) <= 64 else f"[{shown(key)}]"


def _parse_toml(source: str, text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # "problem (at line L, column C)": no text of the file
        raise CatalogError(source, "$", f"not valid TOML: {bounded(str(e))}") from None
    except RecursionError:
        raise _too_deep(source, "TOML") from None
    except ValueError:  # a number too long to convert
        where = _long_number(text)
        raise CatalogError(source, "$", f"not valid TOML: a number of more than {_MAX_DIGITS} digits{where}") from None


def _long_number(text: str) -> str:
    import re

    found = re.search(rf"\d{{{_MAX_DIGITS + 1},}}", text)
    if found is None:
        return ""
    line, column = _line_column(text[: found.start()])
    return f" (line {line}, column {column})"


def _parse_yaml(source: str, text: str) -> Any:
    try:
        import yaml
    except ImportError as e:
        raise CatalogError(source, "$", "YAML catalogs need the 'yaml' extra: pip install flowfsm[yaml]") from e
    try:
        loader = _yaml_loader()(text)  # it checks the characters at once
    except yaml.reader.ReaderError as e:
        line, column = _line_column(text[: e.position])
        message = f"not valid YAML: character U+{e.character:04X} is not allowed (line {line}, column {column})"
        raise CatalogError(source, "$", message) from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:  # say where, never quote the text there (it may be a secret)
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = e.problem or e.context or "malformed"
        raise CatalogError(source, "$", f"not valid YAML: {bounded(problem)}{where}") from None
    except yaml.YAMLError as e:
        raise CatalogError(source, "$", f"not valid YAML: {bounded(str(e))}") from None
    except RecursionError:
        raise _too_deep(source, "YAML") from None
    finally:
        loader.dispose()


_LOADER: type[Any] | None = None
# Explicit tags a catalog may use (None: no tag; "!": the non-specific one, a string).
_YAML_TAGS: Final = frozenset(
    {None, "!"} | {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
)
# Keys a catalog has: a duplicate one is named; another (a secret put as a key?) is not.
_CATALOG_KEYS: Final = frozenset(
    {"services", "id", "artifacts", "pipeline", "name", "environments", "promotions", "failureStrategy"}
    | {"timeouts", "deploy", "verify", "soak"}
    | {"retry", "attempts", "backoff", "then"}
    | {"webhooks", "event", "actions", "url", "secret", "env", "file"}
    | {"freezes", "rrule", "start", "cron", "duration", "timezone", "services"}
    | {"concurrency"}
)


def _key_shown(key: object) -> str:
    return shown(key) if isinstance(key, str) and key in _CATALOG_KEYS else "(one that is not a catalog key)"


def _yaml_loader() -> type[Any]:
    """PyYAML's safe loader, minus what a catalog never needs and an attacker would
    use: anchors and aliases (a few hundred bytes of aliases expand to gigabytes)
    and merge keys; and refusing a key given twice in a mapping."""
    global _LOADER  # noqa: PLW0603 - built once, on the first YAML catalog (PyYAML is optional)
    if _LOADER is not None:
        return _LOADER
    import yaml
    from yaml.composer import ComposerError
    from yaml.constructor import ConstructorError
    from yaml.error import Mark
    from yaml.events import AliasEvent, Event
    from yaml.nodes import MappingNode, Node, ScalarNode

    class CatalogLoader(yaml.SafeLoader):
        def compose_node(self, parent: Node | None, index: int) -> Node | None:
            event: Event = self.peek_event()  # type: ignore[no-untyped-call]  # the stubs leave it untyped
            mark = event.start_mark if isinstance(event.start_mark, Mark) else None  # always, in Python
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
                problem = "anchors and aliases (& and *) are not allowed in a catalog"
                raise ComposerError(None, None, problem, mark)
            if getattr(event, "tag", None) not in _YAML_TAGS:  # the tag is not shown: it may be a secret
                raise ComposerError(None, None, "tags (!...) other than the plain types are not allowed", mark)
            return super().compose_node(parent, index)

        def construct_object(self, node: Node, deep: bool = False) -> Any:
            """Any failure to construct a value (``!!int`` on a word: ValueError
            quoting it) becomes a YAML error saying where, never what."""
            try:
                return super().construct_object(node, deep)
            except (yaml.YAMLError, RecursionError):
                raise
            except Exception:  # noqa: BLE001 - whatever a constructor raises, its message may quote the value
                problem = "a value does not match its tag"
                raise ConstructorError(None, None, problem, node.start_mark) from None

        def flatten_mapping(self, node: MappingNode) -> None:
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    problem = "merge keys (<<) are not allowed in a catalog"
                    raise ConstructorError(None, None, problem, key_node.start_mark)

        def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
            mapping = super().construct_mapping(node, deep)
            if len(mapping) < len(node.value):
                seen: list[object] = []
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep)
                    if key in seen:
                        problem = f"duplicate key {_key_shown(key)}"
                        raise ConstructorError(None, None, problem, key_node.start_mark)
                    seen.append(key)
            return mapping

        def construct_number(self, node: ScalarNode) -> int | _HugeNumber:
            digits = sum(c.isdigit() for c in str(node.value))
            return _HugeNumber(digits) if digits > _MAX_DIGITS else self.construct_yaml_int(node)

    CatalogLoader.add_constructor("tag:yaml.org,2002:int", CatalogLoader.construct_number)
    _LOADER = CatalogLoader
    return _LOADER


_PARSERS: Final = {".toml": _parse_toml, ".json": _parse_json, ".yaml": _parse_yaml, ".yml": _parse_yaml}


def _anchor_secret_files(data: dict[str, Any], folder: str) -> None:
    """Make each relative ``secret = {file = PATH}`` relative to the catalog's folder
    (a malformed catalog is left for the loader to name what is wrong)."""

    def items(parent: object, key: str) -> list[Any]:
        value = parent.get(key) if isinstance(parent, dict) else None
        return value if isinstance(value, list) else []

    for service in items(data, "services"):
        for webhook in items(service, "webhooks"):
            for action in items(webhook, "actions"):
                reference = action.get("secret") if isinstance(action, dict) else None
                if isinstance(reference, dict) and isinstance(reference.get("file"), str):
                    reference["file"] = os.path.join(folder, reference["file"])  # an absolute PATH stays
