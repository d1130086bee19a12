"""The real-ComfyUI mode of ``bench/gpu_duty_cycle.py``: its graph and its arithmetic.

The bench runs the real ``comfy_camera_angle`` handler on its own template, so
the template must keep every marker the handler sets and load no model file;
the busy fraction and idle gaps are computed from ComfyUI's timestamps.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shortdrama_worker.comfy.capabilities import model_folders
from shortdrama_worker.comfy.workflows import Workflow
from shortdrama_worker.handlers.camera_angle import CameraAngleHandler


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "_real_comfyui.py"
    spec = importlib.util.spec_from_file_location("bench_real_comfyui", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


real = _load()


def test_the_bench_template_has_every_marker_the_handler_sets_and_no_model() -> None:
    workflow = Workflow.load(real.TEMPLATE)
    workflow.require(sorted(CameraAngleHandler.required_markers), who="comfy_camera_angle")
    assert model_folders([workflow]) == set()
    assert workflow.has("work_width") and workflow.has("work_height")


def test_sizing_sets_the_work_size_and_keeps_the_markers() -> None:
    sized = real._sized(Workflow.load(real.TEMPLATE), 1200)
    assert real.work_size(sized) == "1200×800"
    sized.require(sorted(CameraAngleHandler.required_markers), who="comfy_camera_angle")


def test_busy_fraction_and_idle_come_from_the_execution_spans() -> None:
    # Three prompts of 1 s; gaps of 10 ms and 210 ms (a gc.collect) between them.
    row = real.Row("x", wall_s=4.0, spans=[(100.0, 101.0), (101.01, 102.01), (102.22, 103.22)])
    assert row.busy_s == pytest.approx(3.0)
    assert row.saturated_s == pytest.approx(3.22)
    assert row.busy_fraction == pytest.approx(3.0 / 3.22)
    assert row.idle_ms == pytest.approx(110.0)
    assert row.gaps_ms() == pytest.approx([10.0, 210.0])
    assert row.jobs_per_min == pytest.approx(45.0)


def test_queue_ahead_values_are_parsed_or_refused_by_name() -> None:
    assert real.parse_queue_ahead(None) == [None]
    assert real.parse_queue_ahead("0,1") == [0, 1]
    with pytest.raises(SystemExit, match="--queue-ahead"):
        real.parse_queue_ahead("one")
    with pytest.raises(SystemExit, match="--queue-ahead"):
        real.parse_queue_ahead("-1")
