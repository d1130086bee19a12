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

from shortdrama_worker.handlers.base import Handler, Resource
from shortdrama_worker.settings import HandlerSettings

GROUP = "shortdrama_worker.handlers"
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_SLUG = re.compile(r"^[a-z][a-z0-9-]*$")


class PluginError(Exception):
    """A handler plugin cannot be loaded; the message says which and why."""


@dataclass(frozen=True)
class HandlerSpec:
    """A loaded handler class with where it came from."""

    kind: str
    slug: str
    cls: type[Handler]
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
        cls, handlers: Mapping[str, type[Handler]], distribution: str = "(in-process)"
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


def _spec(kind: str, handler: type[Handler], distribution: str) -> HandlerSpec:
    if not _KIND.match(kind):
        raise PluginError(f"handler kind {kind!r} is not snake_case")
    slug = handler.slug or kind.replace("_", "-")
    if not _SLUG.match(slug):
        raise PluginError(f"route slug {slug!r} of {kind!r} is not kebab-case")
    if handler.resource not in ("gpu", "cpu"):
        raise PluginError(f"handler {kind!r} has resource {handler.resource!r}; use gpu or cpu")
    if getattr(handler, "input_model", None) is None:
        raise PluginError(f"handler {kind!r} declares no input_model")
    return HandlerSpec(kind=kind, slug=slug, cls=handler, distribution=distribution)


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
