"""What a ComfyUI server can run, and what a template needs from it.

A server's capabilities are its node types (``GET /object_info``) and the
files in the model folders our templates load from (``GET /models/{folder}``).
A template needs every node type it uses and every model file its loader
nodes name: a known loader's file must be in its folder's listing, and any
other combo input whose value is a model file (``.safetensors``, ``.gguf``, …,
as custom loader nodes take) must be among the node's choices. Other choices
(a scheduler name) are left to ``POST /prompt``, which names the node when
one is wrong. Inputs that a job sets through a marker (the image a
``LoadImage`` reads, say) are not checked: their template value is a
placeholder.

Checked at start-up and on every health probe, so a ComfyUI without the
models is reported on ``/health`` and ``/ready`` before a job uploads anything,
rather than by each job failing at ``POST /prompt``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shortdrama_worker.comfy.errors import describe_node
from shortdrama_worker.comfy.workflows import Workflow, is_link

# Loader inputs whose choices are the files of a model folder, as ComfyUI's
# ``folder_paths`` names the folders (``/models`` lists them).
MODEL_INPUTS: Mapping[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
}


# Weight file extensions ComfyUI's folder_paths accepts (``supported_pt_extensions``).
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".gguf")


@dataclass(frozen=True)
class Capabilities:
    """A server's node types (with their input specs) and model folder listings."""

    nodes: Mapping[str, Any]
    models: Mapping[str, frozenset[str]]
    """Folder → file names; a folder the server does not know is absent."""


@dataclass(frozen=True)
class Missing:
    """One thing a template needs that a server lacks."""

    what: str
    """E.g. ``model file qwen_image_vae.safetensors in models/vae``."""
    node: str
    """The node that needs it, as ``describe_node`` names it."""

    def __str__(self) -> str:
        return f"{self.what} ({self.node})"


def model_folders(workflows: Iterable[Workflow]) -> set[str]:
    """Model folders the templates load from (the ones worth listing)."""
    folders = set()
    for workflow in workflows:
        for node in workflow.graph.values():
            for name in node["inputs"]:
                folder = MODEL_INPUTS.get((node["class_type"], name))
                if folder is not None:
                    folders.add(folder)
    return folders


def combo_options(spec: Any) -> list[str] | None:
    """The choices of a combo input spec from ``/object_info``, else ``None``.

    Classic nodes describe a combo as ``[[choice, ...], {...}]``; nodes on the
    newer schema as ``["COMBO", {"options": [choice, ...]}]``. Both are served
    by ComfyUI 0.3.64 (and later).
    """
    if not isinstance(spec, list) or not spec:
        return None
    first = spec[0]
    if isinstance(first, list):
        return [str(choice) for choice in first]
    if first == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        options = spec[1].get("options")
        if isinstance(options, list):
            return [str(choice) for choice in options]
    return None


def _input_spec(info: Any, name: str) -> Any:
    inputs = info.get("input") if isinstance(info, Mapping) else None
    if not isinstance(inputs, Mapping):
        return None
    for group in ("required", "optional"):
        specs = inputs.get(group)
        if isinstance(specs, Mapping) and name in specs:
            return specs[name]
    return None


def missing(workflow: Workflow, caps: Capabilities) -> list[Missing]:
    """What ``workflow`` needs that the server described by ``caps`` lacks."""
    marked = {(t.node_id, t.input) for targets in workflow.markers.values() for t in targets}
    found: list[Missing] = []
    for node_id, node in workflow.graph.items():
        class_type = str(node["class_type"])
        label = describe_node(str(node_id), workflow.graph)
        info = caps.nodes.get(class_type)
        if info is None:
            found.append(Missing(f"node type {class_type} (not installed)", label))
            continue
        for name, value in node["inputs"].items():
            if (str(node_id), name) in marked or is_link(value) or not isinstance(value, str):
                continue
            folder = MODEL_INPUTS.get((class_type, name))
            if folder is not None and folder in caps.models:
                if value not in caps.models[folder]:
                    found.append(Missing(f"model file {value} in models/{folder}", label))
                continue
            if not value.lower().endswith(MODEL_EXTENSIONS):
                continue
            choices = combo_options(_input_spec(info, name))
            if choices is not None and value not in choices:
                found.append(Missing(f"model file {value} (not among {name}'s choices)", label))
    return found


def summary(items: Iterable[Missing], limit: int = 8) -> str:
    """``a (node …); b (node …)`` — bounded, since it goes to /health and logs."""
    listed = list(items)
    text = "; ".join(str(item) for item in listed[:limit])
    if len(listed) > limit:
        text += f"; and {len(listed) - limit} more"
    return text
