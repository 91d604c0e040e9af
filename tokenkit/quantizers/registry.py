"""Quantizers by name, through the entry point group ``tokenkit.quantizers``.

tokenkit registers its built-ins in its own pyproject.toml, so built-ins and plugins are found the
same way. A plugin package declares::

    [project.entry-points."tokenkit.quantizers"]
    lfq = "my_package.lfq:LFQuantizer"
"""

from __future__ import annotations

from typing import Any

from tokenkit.quantizers.base import Quantizer
from tokenkit.registry import EntryPointRegistry, RegistryError

GROUP = "tokenkit.quantizers"
registry = EntryPointRegistry(GROUP, kind="quantizer", base=Quantizer)


def available() -> list[str]:
    """Names of every installed quantizer (built-in and plugins)."""
    return registry.names()


def get(name: str) -> type[Quantizer]:
    """The quantizer class registered as ``name``."""
    return registry.get(name)


def create(name: str, **config: Any) -> Quantizer:
    """Build quantizer ``name`` from keyword arguments of its config dataclass."""
    cls = get(name)
    field_names = set(cls.Config.__dataclass_fields__)
    unknown = sorted(set(config) - field_names)
    if unknown:
        raise TypeError(
            f"quantizer {name!r} has no option(s) {unknown}; its config {cls.Config.__name__} takes "
            f"{sorted(field_names)}"
        )
    return cls(cls.Config(**config))


def register(name: str, cls: type[Quantizer]) -> None:
    """Register a quantizer class for this process only (a plugin uses an entry point instead)."""
    registry.register(name, cls)


def describe() -> list[dict[str, str]]:
    """One row per installed quantizer: name, package, version, description (or the import error)."""
    rows = []
    for name in registry.names():
        try:
            entry = registry.entry(name)
        except RegistryError as exc:  # two packages claim the name: list it, do not break the listing
            conflict = f"CONFLICT: {exc}"
            rows.append({"name": name, "package": "(conflict)", "version": "", "description": conflict})
            continue
        try:
            description = getattr(entry.load(), "description", "") or ""
        except Exception as exc:
            description = f"FAILED TO IMPORT: {exc}"
        rows.append(
            {
                "name": entry.name,
                "package": entry.package,
                "version": entry.version,
                "description": description,
            }
        )
    return rows
