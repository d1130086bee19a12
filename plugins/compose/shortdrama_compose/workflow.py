"""ComfyUI workflow templates with parameters marked in node titles.

The same convention as the worker's built-in ComfyUI kinds: a template is an
API-format graph (ComfyUI's *Export (API)*); ``$name`` in a node's title sets
that node's input ``name``, ``$name:input`` sets the input ``input``. The
marked input must be present with a literal value (its default). Nodes are
addressed by marker, never by id, so an operator may rebuild the graph in
the editor and keep the titles.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER_RE = re.compile(r"\$([a-z][a-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?")
PACKAGED = Path(__file__).resolve().parent / "workflows" / "compose.json"

Scalar = str | int | float | bool


class WorkflowError(Exception):
    """A template cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Workflow:
    """A loaded template: the graph and, per marker, the (node id, input) pairs it sets."""

    source: str
    graph: Mapping[str, Any]
    markers: Mapping[str, tuple[tuple[str, str], ...]]

    @classmethod
    def load(cls, path: Path | None = None) -> Workflow:
        path = path or PACKAGED
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"workflow {path}: cannot read it as JSON: {exc}") from None
        if not isinstance(graph, dict) or not graph or "nodes" in graph:
            raise WorkflowError(f"workflow {path}: expected an API-format graph (Export (API))")
        markers: dict[str, list[tuple[str, str]]] = {}
        for node_id, node in graph.items():
            for name, target in _node_markers(path, str(node_id), node):
                markers.setdefault(name, []).append((str(node_id), target))
        return cls(str(path), graph, {k: tuple(v) for k, v in markers.items()})

    def require(self, names: Iterable[str]) -> None:
        missing = sorted(set(names) - set(self.markers))
        if missing:
            raise WorkflowError(
                f"workflow {self.source}: missing {', '.join('$' + m for m in missing)} "
                "(put each in the title of the node whose input it sets)"
            )

    def render(self, values: Mapping[str, Scalar]) -> dict[str, Any]:
        """A fresh graph with ``values`` set; unset markers keep the template's literal."""
        graph: dict[str, Any] = copy.deepcopy(dict(self.graph))
        for name, value in values.items():
            for node_id, target in self.markers.get(name, ()):
                graph[node_id]["inputs"][target] = value
        return graph


def _node_markers(path: Path, node_id: str, node: Any) -> list[tuple[str, str]]:
    """The ``(marker, input)`` pairs in one node's title, each checked to set a literal."""
    inputs = node.get("inputs") if isinstance(node, dict) else None
    if not isinstance(inputs, dict) or not isinstance(node.get("class_type"), str):
        raise WorkflowError(f"workflow {path}: node {node_id} lacks class_type or inputs")
    meta = node.get("_meta")
    title = meta.get("title", "") if isinstance(meta, dict) else ""
    found = []
    for match in MARKER_RE.finditer(title if isinstance(title, str) else ""):
        name, target = match.group(1), match.group(2) or match.group(1)
        if target not in inputs or _is_link(inputs[target]):
            raise WorkflowError(
                f"workflow {path}: ${name} on node {node_id} ({node['class_type']}) "
                f"needs a literal input '{target}'"
            )
        found.append((name, target))
    return found


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
