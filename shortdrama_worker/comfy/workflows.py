"""Workflow templates: ComfyUI API-format graphs with parameters marked by node title.

The marker convention
---------------------

A template is a graph exported from ComfyUI with *Export (API)* — a JSON
object ``{node_id: {"class_type", "inputs", "_meta": {"title"}}}``. Handlers
never address nodes by id (ids change whenever someone edits the graph); they
address *markers* written in node titles:

* ``$name`` sets the node's input called ``name``
  (``$seed`` on a ``KSampler`` sets ``inputs.seed``);
* ``$name:input`` sets the input called ``input``
  (``$image1:image`` on a ``LoadImage`` sets ``inputs.image``;
  ``$lora_strength:strength_model`` on a ``LoraLoaderModelOnly``).

A title may hold several markers and any free text around them, e.g.
``Sampler $seed $steps $cfg``. Marker names are lowercase
``[a-z][a-z0-9_]*``. The same marker may sit on several nodes; all of them get
the value. The marked input must be present in the exported JSON with a
literal value (that value is the default when a job does not set it); a
marker on a missing or linked input is an error when the template loads.

Optional images: when a handler omits an image marker (``qwen_edit`` given one
image instead of three), the marked node is deleted, then every node whose
links all came from deleted nodes is deleted too, and inputs of the remaining
nodes that pointed at deleted nodes are dropped — so an unused ``LoadImage``
and its resize chain vanish and ``image2`` is simply not wired.

Each handler lists the markers it needs; a template that lacks one fails at
handler start-up with the file and the marker named, never at the first job.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER_RE = re.compile(r"\$([a-z][a-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?")

Scalar = str | int | float | bool


class WorkflowError(Exception):
    """A template cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Target:
    """One input a marker sets."""

    node_id: str
    input: str


@dataclass(frozen=True)
class Workflow:
    """A loaded template and the markers found in its titles."""

    name: str
    source: str
    graph: Mapping[str, Any]
    markers: Mapping[str, tuple[Target, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Workflow:
        """Read and check a template file; raise ``WorkflowError`` naming the file."""
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkflowError(f"workflow file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise WorkflowError(f"{path}: not readable JSON: {exc}") from None
        return cls.from_graph(graph, name=path.stem, source=str(path))

    @classmethod
    def from_graph(cls, graph: Any, *, name: str, source: str) -> Workflow:
        """Check an API-format graph and index its markers."""
        if isinstance(graph, Mapping) and "nodes" in graph and "links" in graph:
            raise WorkflowError(
                f"{source}: this is ComfyUI's UI format; export it with 'Export (API)'"
            )
        if not isinstance(graph, Mapping) or not graph:
            raise WorkflowError(f"{source}: expected a JSON object of nodes")
        markers: dict[str, list[Target]] = {}
        for node_id, node in graph.items():
            if not (
                isinstance(node, Mapping)
                and isinstance(node.get("class_type"), str)
                and isinstance(node.get("inputs"), Mapping)
            ):
                raise WorkflowError(f"{source}: node {node_id} lacks class_type or inputs")
            for name_, input_ in parse_markers(title_of(node)):
                if input_ not in node["inputs"]:
                    raise WorkflowError(
                        f"{source}: marker ${name_} on node {node_id} ({node['class_type']}) "
                        f"targets input '{input_}', which the node does not have in the "
                        "exported JSON"
                    )
                if is_link(node["inputs"][input_]):
                    raise WorkflowError(
                        f"{source}: marker ${name_} on node {node_id} ({node['class_type']}) "
                        f"targets input '{input_}', which is linked to another node"
                    )
                markers.setdefault(name_, []).append(Target(str(node_id), input_))
        return cls(
            name=name,
            source=source,
            graph=graph,
            markers={key: tuple(targets) for key, targets in markers.items()},
        )

    def has(self, marker: str) -> bool:
        return marker in self.markers

    def require(self, markers: Iterable[str], *, who: str) -> None:
        """Raise ``WorkflowError`` if a marker ``who`` needs is missing."""
        missing = [m for m in markers if m not in self.markers]
        if missing:
            names = ", ".join(f"${m}" for m in missing)
            raise WorkflowError(
                f"{self.source}: missing marker {names} needed by {who} "
                f"(put it in the title of the node whose input it sets; found: "
                f"{', '.join('$' + m for m in sorted(self.markers)) or 'none'})"
            )

    def class_of(self, marker: str) -> set[str]:
        """Class types of the nodes a marker sits on."""
        return {str(self.graph[t.node_id]["class_type"]) for t in self.markers.get(marker, ())}

    def render(self, values: Mapping[str, Scalar], *, omit: Iterable[str] = ()) -> dict[str, Any]:
        """A fresh graph with ``values`` set and the ``omit`` markers' nodes pruned.

        Markers with no value keep the template's literal. Unknown names are a
        programming error (``KeyError``), since handlers check them at start-up.
        """
        graph: dict[str, Any] = copy.deepcopy(dict(self.graph))
        for name, value in values.items():
            for target in self.markers[name]:
                graph[target.node_id]["inputs"][target.input] = value
        removed = {t.node_id for name in omit for t in self.markers[name]}
        if removed:
            _prune(graph, removed)
        return graph


def parse_markers(title: str) -> list[tuple[str, str]]:
    """``"Sampler $seed $cfg"`` → ``[("seed", "seed"), ("cfg", "cfg")]``."""
    return [(m.group(1), m.group(2) or m.group(1)) for m in MARKER_RE.finditer(title)]


def title_of(node: Mapping[str, Any]) -> str:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title if isinstance(title, str) else ""


def is_link(value: Any) -> bool:
    """In API format a two-item list ``[node_id, output_index]`` is a link."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
    )


def _prune(graph: dict[str, Any], removed: set[str]) -> None:
    for node_id in removed:
        graph.pop(node_id, None)
    changed = True
    while changed:
        changed = False
        for node_id in list(graph):
            inputs = graph[node_id]["inputs"]
            links = [k for k, v in inputs.items() if is_link(v)]
            dangling = [k for k in links if str(inputs[k][0]) not in graph]
            if not dangling:
                continue
            if len(dangling) == len(links):
                del graph[node_id]
            else:
                for key in dangling:
                    del inputs[key]
            changed = True


def packaged_workflow_dir() -> Path:
    """Where the templates shipped with the package live."""
    return Path(__file__).resolve().parent.parent / "handlers" / "workflows"


def load_workflow(name: str, workflow_dir: Path | None) -> Workflow:
    """Load ``<name>.json`` from the operator's directory, or the packaged one if unset.

    An operator directory is taken at its word: a missing file there is an error,
    not a silent fallback to the packaged template.
    """
    directory = workflow_dir if workflow_dir is not None else packaged_workflow_dir()
    return Workflow.load(directory / f"{name}.json")


def load_directory(workflow_dir: Path) -> dict[str, Workflow]:
    """Every ``*.json`` template in a directory, by file stem."""
    if not workflow_dir.is_dir():
        raise WorkflowError(f"workflow directory not found: {workflow_dir}")
    return {path.stem: Workflow.load(path) for path in sorted(workflow_dir.glob("*.json"))}
