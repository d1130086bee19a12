"""How ComfyUI failures map onto the runner's permanent/transient split.

A graph ComfyUI refuses (400 with ``node_errors``) or a node that raises while
running fails the job for good: running it again gives the same answer. A
ComfyUI that is down, overloaded (5xx), slow (timeout) or that forgot the
prompt (restarted) is worth retrying. Messages name the node by id, class and
title, because that is what an operator searches for in the workflow editor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shortdrama_worker.contract.errors import PermanentJobError, TransientJobError

# Execution errors that say nothing about the graph or its inputs: the same job
# will likely succeed once the GPU has room again.
_TRANSIENT_EXCEPTIONS = ("OutOfMemoryError", "OOM", "CUDA out of memory", "CUBLAS_STATUS_ALLOC")
# How ComfyUI names the node in a graph-level error's ``details`` ("Node ID '#3'").
_NODE_ID_RE = re.compile(r"Node ID '#?([^']+)'")


class ComfyUnavailableError(TransientJobError):
    """ComfyUI could not be reached, timed out or answered 5xx."""

    code = "comfyui_unavailable"


class ComfyPromptLostError(TransientJobError):
    """ComfyUI no longer knows the prompt (restarted, or the queue was cleared)."""

    code = "comfyui_prompt_lost"


class ComfyInterruptedError(TransientJobError):
    """The prompt was interrupted by someone other than this worker."""

    code = "comfyui_interrupted"


class ComfyRejectedError(PermanentJobError):
    """ComfyUI refused the graph (validation failed); ``nodes`` lists the culprits."""

    code = "comfyui_rejected"

    def __init__(self, message: str, *, nodes: list[str] | None = None) -> None:
        super().__init__(message)
        self.nodes = nodes or []


class ComfyExecutionError(PermanentJobError):
    """A node raised while the graph ran."""

    code = "comfyui_execution_error"

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class ComfyTransientExecutionError(TransientJobError):
    """A node ran out of GPU memory or hit another condition that a retry may clear."""

    code = "comfyui_out_of_memory"


class ComfyCannotRunError(TransientJobError):
    """No ComfyUI server has what the template needs (node types, model files).

    Transient for a handler with one template: its jobs are held while this
    lasts (the handler is not ready), and one that slipped through comes back
    once an operator has installed what is missing.
    """

    code = "comfyui_missing_requirements"


class ComfyWorkflowCannotRunError(PermanentJobError):
    """The named operator workflow needs something no server has; other workflows run."""

    code = "comfyui_missing_requirements"


def describe_node(
    node_id: str, graph: Mapping[str, Any] | None, class_type: str | None = None
) -> str:
    """``node 13 KSampler "Sampler $seed"`` — id, class and title where known."""
    node = graph.get(node_id) if graph is not None else None
    if isinstance(node, Mapping):
        class_type = class_type or _str(node.get("class_type"))
        meta = node.get("_meta")
        title = _str(meta.get("title")) if isinstance(meta, Mapping) else None
    else:
        title = None
    parts = [f"node {node_id}"]
    if class_type:
        parts.append(class_type)
    if title:
        parts.append(f'"{title}"')
    return " ".join(parts)


def rejection_error(body: Any, graph: Mapping[str, Any] | None) -> ComfyRejectedError:
    """Build the error for a ``400`` from ``POST /prompt`` (or a 200 with node errors)."""
    if not isinstance(body, Mapping):
        return ComfyRejectedError(f"ComfyUI rejected the workflow: {str(body)[:500]}")
    problems, nodes = _node_problems(body.get("node_errors"), graph)
    error = body.get("error")
    if not problems and isinstance(error, Mapping):
        text, node_id = _prompt_problem(error, graph)
        problems.append(text)
        nodes.extend([node_id] if node_id else [])
    elif not problems:
        problems.append(str(error or "invalid workflow")[:500])
    return ComfyRejectedError("ComfyUI rejected the workflow: " + " | ".join(problems), nodes=nodes)


def _node_problems(
    node_errors: Any, graph: Mapping[str, Any] | None
) -> tuple[list[str], list[str]]:
    """One line per node in ``node_errors``, and the ids of those nodes."""
    problems: list[str] = []
    nodes: list[str] = []
    if not isinstance(node_errors, Mapping):
        return problems, nodes
    for node_id, info in node_errors.items():
        nodes.append(str(node_id))
        class_type = _str(info.get("class_type")) if isinstance(info, Mapping) else None
        errors = info.get("errors") if isinstance(info, Mapping) else None
        details = [_format_error(e) for e in errors or [] if isinstance(e, Mapping)]
        label = describe_node(str(node_id), graph, class_type)
        problems.append(f"{label}: {'; '.join(details) or 'invalid'}")
    return problems, nodes


def _prompt_problem(
    error: Mapping[str, Any], graph: Mapping[str, Any] | None
) -> tuple[str, str | None]:
    """The line for a whole-prompt error, and the node it names, if any."""
    # invalid_prompt / missing_node_type / prompt_no_outputs carry no node_errors;
    # the node, when there is one, is only in ``details`` ("Node ID '#3'"):
    # name it as the template does, title included, so it can be found.
    found = _NODE_ID_RE.search(_str(error.get("details")) or "")
    text = _format_error(error)
    if found is None:
        return text, None
    node_id = found.group(1)
    return f"{describe_node(node_id, graph)}: {_str(error.get('message')) or text}", node_id


def execution_error(
    data: Mapping[str, Any], graph: Mapping[str, Any] | None
) -> PermanentJobError | TransientJobError:
    """Build the error for an ``execution_error`` event or history message."""
    node_id = str(data.get("node_id", "?"))
    label = describe_node(node_id, graph, _str(data.get("node_type")))
    exc_type = _str(data.get("exception_type")) or "Exception"
    exc_message = (_str(data.get("exception_message")) or "").strip()
    message = f"ComfyUI failed at {label}: {exc_type}: {exc_message}"[:2000]
    if any(marker in exc_type or marker in exc_message for marker in _TRANSIENT_EXCEPTIONS):
        return ComfyTransientExecutionError(message)
    return ComfyExecutionError(message, node_id=node_id)


def _format_error(error: Mapping[str, Any]) -> str:
    message = _str(error.get("message")) or _str(error.get("type")) or "error"
    details = _str(error.get("details"))
    return f"{message}: {details}" if details else message


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
