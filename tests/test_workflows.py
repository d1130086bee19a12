"""Workflow templates: markers in node titles, start-up checks, rendering, pruning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shortdrama_worker.comfy.workflows import (
    Workflow,
    WorkflowError,
    load_directory,
    load_workflow,
    parse_markers,
)


def _write(path: Path, graph: object) -> Path:
    path.write_text(json.dumps(graph), encoding="utf-8")
    return path


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def _graph() -> dict[str, Any]:
    return {
        "1": _node("LoadImage", "In $image1:image", image="x.png"),
        "2": _node("LoadImage", "$image2:image", image="y.png"),
        "3": _node("ImageScale", "scale 2", image=["2", 0], upscale_method="area", width=0),
        "4": _node("Combine", "Mix $prompt $seed", a=["1", 0], b=["3", 0], prompt="", seed=1),
        "5": _node("SaveImage", "Save", images=["4", 0], filename_prefix="out"),
    }


def test_markers_are_read_from_titles_with_optional_input_names() -> None:
    assert parse_markers("Sampler $seed $steps $cfg") == [
        ("seed", "seed"),
        ("steps", "steps"),
        ("cfg", "cfg"),
    ]
    assert parse_markers("LoRA $lora_strength:strength_model (keep)") == [
        ("lora_strength", "strength_model")
    ]
    assert parse_markers("Costs $5 and $ nothing") == []


def test_render_sets_marked_inputs_and_leaves_the_template_untouched(tmp_path: Path) -> None:
    workflow = Workflow.load(_write(tmp_path / "mix.json", _graph()))
    graph = workflow.render({"prompt": "a cat", "seed": 7, "image1": "in/a.png"})
    assert graph["4"]["inputs"]["prompt"] == "a cat"
    assert graph["4"]["inputs"]["seed"] == 7
    assert graph["1"]["inputs"]["image"] == "in/a.png"
    assert graph["4"]["inputs"]["a"] == ["1", 0]  # links untouched
    assert workflow.graph["4"]["inputs"]["prompt"] == ""  # a second job starts clean


def test_omitted_image_prunes_its_chain_and_unwires_the_consumer(tmp_path: Path) -> None:
    workflow = Workflow.load(_write(tmp_path / "mix.json", _graph()))
    graph = workflow.render({"image1": "a.png"}, omit=["image2"])
    assert set(graph) == {"1", "4", "5"}  # the loader and its scale node are gone
    assert "b" not in graph["4"]["inputs"]
    assert graph["4"]["inputs"]["a"] == ["1", 0]


def test_missing_marker_names_file_and_marker(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.json", _graph())
    workflow = Workflow.load(path)
    with pytest.raises(WorkflowError) as caught:
        workflow.require(["prompt", "steps"], who="qwen_edit")
    message = str(caught.value)
    assert str(path) in message
    assert "$steps" in message
    assert "$prompt" not in message.split("found")[0]


def test_marker_on_absent_or_linked_input_fails_at_load(tmp_path: Path) -> None:
    graph = _graph()
    graph["4"]["_meta"]["title"] = "Mix $steps"
    with pytest.raises(WorkflowError, match=r"\$steps on node 4 .*'steps'"):
        Workflow.load(_write(tmp_path / "a.json", graph))
    graph = _graph()
    graph["4"]["_meta"]["title"] = "Mix $a"
    with pytest.raises(WorkflowError, match="linked"):
        Workflow.load(_write(tmp_path / "b.json", graph))


def test_ui_format_and_broken_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="Export \\(API\\)"):
        Workflow.load(_write(tmp_path / "ui.json", {"nodes": [], "links": []}))
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(WorkflowError, match=r"bad\.json"):
        Workflow.load(tmp_path / "bad.json")
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow("absent", tmp_path)


def test_operator_directory_replaces_packaged_templates(tmp_path: Path) -> None:
    packaged = load_workflow("camera_angle", None)
    assert packaged.has("seed") and packaged.has("lora_strength")
    _write(tmp_path / "camera_angle.json", _graph())
    assert load_workflow("camera_angle", tmp_path).source == str(tmp_path / "camera_angle.json")
    assert set(load_directory(tmp_path)) == {"camera_angle"}
    with pytest.raises(WorkflowError, match="directory not found"):
        load_directory(tmp_path / "nope")
