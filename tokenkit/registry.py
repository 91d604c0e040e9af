"""Entry-point registries: how tokenkit finds quantizers, tokenizers and pretrained names.

Every name, built-in or plugin, comes from a Python entry point group (``tokenkit.quantizers``,
``tokenkit.tokenizers``, ``tokenkit.pretrained``) read through :mod:`importlib.metadata`.
Discovery is lazy: listing names reads package metadata only; a class is imported when it is
first asked for. A plugin that fails to import is reported by name with its error and does not
break the others; two distributions claiming one name is an error that names both.
"""

from __future__ import annotations

import importlib
import importlib.metadata as importlib_metadata
from dataclasses import dataclass, field
from typing import Any


class RegistryError(LookupError):
    """A name could not be resolved in a tokenkit registry."""


class PluginLoadError(RegistryError):
    """An entry point exists but importing it failed."""


@dataclass
class Entry:
    """One registered name: where it points and which distribution provides it."""

    name: str
    value: str
    package: str
    version: str
    _entry_point: Any = field(repr=False, default=None)
    _loaded: Any = field(repr=False, default=None)
    _error: BaseException | None = field(repr=False, default=None)

    def load(self) -> Any:
        if self._loaded is None and self._error is None:
            try:
                self._loaded = self._entry_point.load()
            except Exception as exc:  # a broken plugin must not break the others
                self._error = exc
        if self._error is not None:
            raise PluginLoadError(
                f"{self.name!r} (from package {self.package} {self.version}, entry point "
                f"{self.value}) failed to import: {type(self._error).__name__}: {self._error}. "
                f"Reinstall or fix {self.package}; the other registered names still work."
            ) from self._error
        return self._loaded


def _distribution_name(ep: importlib_metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", ""
    return dist.metadata["Name"] or "<unknown>", dist.version or ""


class EntryPointRegistry:
    """Names from one entry point group, plus names registered at run time (tests, notebooks)."""

    def __init__(self, group: str, kind: str, base: type | None = None) -> None:
        self.group = group
        self.kind = kind
        self.base = base  # when set, every name must resolve to a subclass of it
        self._entries: dict[str, Entry] | None = None
        self._local: dict[str, Entry] = {}
        self._conflicts: dict[str, list[Entry]] = {}

    # -- discovery -------------------------------------------------------------------------
    def _discover(self) -> dict[str, Entry]:
        if self._entries is None:
            entries: dict[str, Entry] = {}
            conflicts: dict[str, list[Entry]] = {}
            for ep in importlib_metadata.entry_points(group=self.group):
                package, version = _distribution_name(ep)
                entry = Entry(ep.name, ep.value, package, version, _entry_point=ep)
                seen = entries.get(ep.name)
                if seen is None:
                    entries[ep.name] = entry
                elif (seen.value, seen.package) != (entry.value, entry.package):
                    conflicts.setdefault(ep.name, [seen]).append(entry)
            self._entries = entries
            self._conflicts = conflicts
        return self._entries

    def refresh(self) -> None:
        """Forget what was discovered (after ``pip install`` of a plugin in a running process)."""
        self._entries = None
        self._conflicts = {}
        # importlib.metadata caches each sys.path folder's listing, keyed by the folder's mtime, which
        # a file system with coarse timestamps may not change; clear it and the import path caches.
        importlib.invalidate_caches()
        finder = getattr(importlib_metadata, "MetadataPathFinder", None)
        if finder is not None:  # called on an instance: on Python 3.11 the method lacks @classmethod
            finder().invalidate_caches()

    def register(self, name: str, obj: Any, package: str = "<runtime>") -> None:
        """Register ``obj`` under ``name`` for this process only (no entry point needed)."""
        if name in self.names():
            owner = self.entry(name).package
            raise RegistryError(f"{self.kind} name {name!r} is already registered by {owner}")
        self._local[name] = Entry(name, repr(obj), package, "", _loaded=obj)

    def unregister(self, name: str) -> None:
        self._local.pop(name, None)

    # -- queries ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self._discover()) | set(self._local))

    def entries(self) -> list[Entry]:
        return [self.entry(n) for n in self.names()]

    def entry(self, name: str) -> Entry:
        if name in self._local:
            return self._local[name]
        entries = self._discover()
        if name in self._conflicts:
            claims = ", ".join(f"{e.package} ({e.value})" for e in self._conflicts[name])
            raise RegistryError(
                f"{self.kind} name {name!r} is claimed by more than one package: {claims}. "
                f"Uninstall one of them."
            )
        if name not in entries:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(
                f"unknown {self.kind} {name!r}. Installed: {known}. A plugin registers new names "
                f"through the entry point group {self.group!r}."
            )
        return entries[name]

    def get(self, name: str) -> Any:
        obj = self.entry(name).load()
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            module = self.base.__module__.removesuffix(".base")  # the package that exports it
            base = f"{module}.{self.base.__qualname__}"
            raise TypeError(
                f"{self.kind} {name!r} from package {self.entry(name).package} is {obj!r}, which is not "
                f"a subclass of {base}"
            )
        return obj

    def __contains__(self, name: str) -> bool:
        return name in self.names()
