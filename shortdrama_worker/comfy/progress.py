"""How far a prompt has got, from ComfyUI's node-level events.

ComfyUI reports progress per node: ``execution_cached`` (nodes it will not
run), ``executing {node}`` (the node that starts), ``progress_state`` (each
node's state and its own ``value``/``max``), and ``progress`` (steps within a
node, e.g. a sampler's). The fraction here is nodes done out of the nodes
in the graph, with the running nodes counted by their own step fraction, so
graphs without a sampler move too. It never goes back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shortdrama_worker.comfy.protocol import Event


@dataclass(frozen=True)
class Progress:
    """Where a prompt stands: ``fraction`` of its graph done, and the node now running."""

    fraction: float
    nodes_done: int
    nodes_total: int
    node: str | None = None
    """The node running now, if known."""
    value: float = 0.0
    max: float = 0.0
    """Steps done of steps in that node, when it reports them (samplers do)."""


class NodeProgress:
    """Follows one prompt's node events; ``feed`` says when the fraction grew."""

    def __init__(self, graph: Mapping[str, Any]) -> None:
        self._nodes = {str(node_id) for node_id in graph}
        self._done: set[str] = set()
        self._running: dict[str, tuple[float, float]] = {}
        self._current: str | None = None
        self._reported = 0.0

    def feed(self, event: Event) -> Progress | None:
        """Take one event of this prompt; the new ``Progress`` if it moved forward."""
        data = event.data
        if event.type == "execution_cached":
            nodes = data.get("nodes")
            for node in nodes if isinstance(nodes, list) else []:
                self._finish(str(node))
        elif event.type == "executing":
            node = data.get("node")
            if node is not None:
                # Without progress_state (older ComfyUI) the next node starting
                # is the only sign that the previous one is done.
                if self._current is not None and self._current != str(node):
                    self._finish(self._current)
                self._start(str(node))
        elif event.type == "progress":
            node = data.get("node")
            if node is not None:
                self._step(str(node), data.get("value"), data.get("max"))
        elif event.type == "progress_state":
            self._states(data.get("nodes"))
        return self._moved()

    def _states(self, nodes: Any) -> None:
        if not isinstance(nodes, Mapping):
            return
        for node_id, state in nodes.items():
            if not isinstance(state, Mapping):
                continue
            if state.get("state") == "finished":
                self._finish(str(node_id))
            elif state.get("state") == "running":
                self._step(str(node_id), state.get("value"), state.get("max"))

    def _start(self, node: str) -> None:
        self._current = node
        if node in self._nodes and node not in self._done:
            self._running.setdefault(node, (0.0, 0.0))

    def _step(self, node: str, value: Any, maximum: Any) -> None:
        if node not in self._nodes or node in self._done:
            return
        if isinstance(value, int | float) and isinstance(maximum, int | float) and maximum > 0:
            self._running[node] = (float(value), float(maximum))
            self._current = node

    def _finish(self, node: str) -> None:
        if node in self._nodes:
            self._done.add(node)
            self._running.pop(node, None)

    def _moved(self) -> Progress | None:
        total = len(self._nodes)
        if not total:
            return None
        running = sum(min(1.0, v / m) for v, m in self._running.values() if m > 0)
        fraction = min(1.0, (len(self._done) + running) / total)
        if fraction <= self._reported:
            return None
        self._reported = fraction
        value, maximum = self._running.get(self._current or "", (0.0, 0.0))
        return Progress(fraction, len(self._done), total, self._current, value, maximum)
