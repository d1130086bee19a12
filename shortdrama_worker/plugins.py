"""Handler discovery through the ``shortdrama_worker.handlers`` entry-point group.

Plugins load when the application is built, never at import. Duplicate kinds
or route slugs stop start-up loudly; the allow-list in ``[handlers]`` decides
what loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from shortdrama_worker.contract import CONTRACT_VERSION, Handler, Resource
from shortdrama_worker.settings import HandlerSettings

GROUP = "shortdrama_worker.handlers"

AnyHandler = Handler[Any, Any]
"""A handler of any input and settings models, as the host holds them."""
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_SLUG = re.compile(r"^[a-z][a-z0-9-]*$")


class PluginError(Exception):
    """A handler plugin cannot be loaded; the message says which and why."""


@dataclass(frozen=True)
class HandlerSpec:
    """A loaded handler class with where it came from."""

    kind: str
    slug: str
    cls: type[AnyHandler]
    distribution: str

    @property
    def resource(self) -> Resource:
        return self.cls.resource


class HandlerRegistry:
    """The handlers this application serves, by kind and by route slug."""

    def __init__(self, specs: Iterable[HandlerSpec]) -> None:
        self.by_kind: dict[str, HandlerSpec] = {}
        self.by_slug: dict[str, HandlerSpec] = {}
        for spec in specs:
            if spec.kind in self.by_kind:
                other = self.by_kind[spec.kind].distribution
                raise PluginError(
                    f"handler kind {spec.kind!r} is registered twice "
                    f"(by {other} and by {spec.distribution}); uninstall one"
                )
            if spec.slug in self.by_slug:
                other = self.by_slug[spec.slug].kind
                raise PluginError(
                    f"route slug {spec.slug!r} is used by both {other!r} and {spec.kind!r}"
                )
            self.by_kind[spec.kind] = spec
            self.by_slug[spec.slug] = spec

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self.by_kind.values())

    def __len__(self) -> int:
        return len(self.by_kind)

    @classmethod
    def from_classes(
        cls, handlers: Mapping[str, type[AnyHandler]], distribution: str = "(in-process)"
    ) -> HandlerRegistry:
        """Build a registry without entry points (embedding, tests)."""
        return cls(_spec(kind, handler, distribution) for kind, handler in handlers.items())

    @classmethod
    def discover(cls, allow: list[str] | None = None) -> HandlerRegistry:
        """Load every installed handler, or only those on the allow-list."""
        found = list(entry_points(group=GROUP))
        if allow is not None:
            installed = {ep.name for ep in found}
            missing = sorted(set(allow) - installed)
            if missing:
                raise PluginError(
                    f"handlers.allow names kinds that are not installed: {', '.join(missing)} "
                    f"(installed: {', '.join(sorted(installed)) or 'none'})"
                )
            found = [ep for ep in found if ep.name in allow]
        return cls(_load(ep) for ep in found)


def _load(ep: EntryPoint) -> HandlerSpec:
    dist = ep.dist.name if ep.dist is not None else "(unknown)"
    try:
        handler = ep.load()
    except Exception as exc:
        raise PluginError(f"handler {ep.name!r} from {dist} failed to import: {exc}") from exc
    if not (isinstance(handler, type) and issubclass(handler, Handler)):
        raise PluginError(f"entry point {ep.name!r} from {dist} is not a Handler subclass")
    return _spec(ep.name, handler, dist)


def _spec(kind: str, handler: type[AnyHandler], distribution: str) -> HandlerSpec:
    if not _KIND.match(kind):
        raise PluginError(f"handler kind {kind!r} is not snake_case")
    slug = handler.slug or kind.replace("_", "-")
    if not _SLUG.match(slug):
        raise PluginError(f"route slug {slug!r} of {kind!r} is not kebab-case")
    if handler.resource not in ("gpu", "cpu"):
        raise PluginError(f"handler {kind!r} has resource {handler.resource!r}; use gpu or cpu")
    if getattr(handler, "input_model", None) is None:
        raise PluginError(f"handler {kind!r} declares no input_model")
    problem = contract_problem(getattr(handler, "contract_version", None))
    if problem:
        raise PluginError(f"handler {kind!r} from {distribution}: {problem}")
    return HandlerSpec(kind=kind, slug=slug, cls=handler, distribution=distribution)


def contract_problem(declared: object) -> str | None:
    """Why a plugin built for contract ``declared`` cannot run on this host, if it cannot.

    Same major and a minor no newer than ours: the contract only grows within
    a major version, so an older plugin still fits.
    """
    if not isinstance(declared, str):
        return f"declares no contract_version; set contract_version = {CONTRACT_VERSION!r}"
    try:
        major, minor = (int(part) for part in declared.split("."))
        host_major, host_minor = (int(part) for part in CONTRACT_VERSION.split("."))
    except ValueError:
        return f"contract_version {declared!r} is not MAJOR.MINOR"
    if major != host_major or minor > host_minor:
        return (
            f"was built for plugin contract {declared}, this host implements "
            f"{CONTRACT_VERSION}; install a version of the plugin built for {host_major}.x"
        )
    return None


class Readiness:
    """Which resources this process serves, and whether a handler for one can work now."""

    def __init__(self, registry: HandlerRegistry, handlers: Mapping[str, AnyHandler]) -> None:
        self._registry = registry
        self._handlers = handlers

    def serves(self, resource: Resource) -> bool:
        return any(spec.resource == resource for spec in self._registry)

    def ready(self, resource: Resource) -> bool:
        """Whether some handler for ``resource`` can take work now (ComfyUI up, say)."""
        return any(
            self._handlers[spec.kind].ready()
            for spec in self._registry
            if spec.resource == resource and spec.kind in self._handlers
        )


def unknown_kind_message(slug: str, settings: HandlerSettings) -> str:
    """Why ``slug`` has no handler: not installed, or installed but not in ``handlers.allow``."""
    wanted = slug.replace("-", "_")
    installed = {ep.name for ep in entry_points(group=GROUP)}
    if settings.allow is not None and wanted in installed and wanted not in settings.allow:
        allowed = ", ".join(f'"{k}"' for k in [*settings.allow, wanted])
        return (
            f"{wanted!r} is installed but disabled on this worker: it is not in handlers.allow; "
            f"add it there (allow = [{allowed}]) or in SHORTDRAMA_HANDLERS__ALLOW and restart"
        )
    return f"no handler for {slug!r}"
