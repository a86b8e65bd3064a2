"""The catalog of services: who consumes which artifact.

Build it from ``Service`` objects, or load a TOML, JSON or YAML file (YAML needs
the ``yaml`` extra). A bad file raises ``CatalogError`` naming the file, the path
inside it and the problem, e.g.
``catalog.toml: $.services[0].pipeline.environments: duplicate environment 'dev'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flowfsm.errors import CatalogError, UnknownService, ValidationError
from flowfsm.model import Action, Service

__all__ = ["Catalog"]


class Catalog:
    """Services by id and by the artifact keys they consume (a ``ServiceCatalog``)."""

    __slots__ = ("_by_id", "_by_key")

    def __init__(self, services: Iterable[Service] = ()) -> None:
        self._by_id: dict[str, Service] = {}
        self._by_key: dict[str, list[Service]] = {}
        for i, service in enumerate(services):
            if service.id in self._by_id:
                raise ValidationError(f"services[{i}].id", f"duplicate service {service.id!r}")
            self._by_id[service.id] = service
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<catalog>") -> Catalog:
        """Build from the JSON form: ``{"services": [...]}`` with camelCase keys."""
        from flowfsm.converter import structure

        if not isinstance(data, Mapping) or set(data) != {"services"}:
            raise CatalogError(source, "$", "expected exactly one key, 'services', holding a list of services")
        try:
            services = structure(data["services"], list[Service])
        except ValidationError as e:
            path = "$.services" + e.field.removeprefix("$")
            raise CatalogError(source, path, e.message) from e
        try:
            return cls(services)
        except ValidationError as e:
            raise CatalogError(source, f"$.{e.field}", e.message) from e

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Catalog:
        """Load ``.toml``, ``.json``, ``.yaml``/``.yml`` by the file's suffix."""
        source = os.fspath(path)
        try:
            with open(source, "rb") as file:
                raw = file.read()
        except OSError as e:
            raise CatalogError(source, "$", f"cannot read: {e.strerror or e}") from e
        suffix = os.path.splitext(source)[1].lower()
        try:
            if suffix == ".toml":
                import tomllib

                data: Any = tomllib.loads(raw.decode())
            elif suffix == ".json":
                import json

                data = json.loads(raw)
            elif suffix in (".yaml", ".yml"):
                try:
                    import yaml
                except ImportError as e:
                    raise CatalogError(
                        source, "$", "YAML catalogs need the 'yaml' extra: pip install flowfsm[yaml]"
                    ) from e
                data = yaml.safe_load(raw)
            else:
                raise CatalogError(source, "$", f"unknown catalog format {suffix!r}; use .toml, .json or .yaml")
        except CatalogError:
            raise
        except Exception as e:
            raise CatalogError(source, "$", f"not valid {suffix[1:].upper()}: {e}") from e
        if not isinstance(data, dict):
            raise CatalogError(source, "$", "expected a table/object with a 'services' list")
        return cls.from_dict(data, source=source)
