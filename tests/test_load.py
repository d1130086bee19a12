"""Under load, every accepted job completes exactly once.

A bounded run of the driver in ``bench/load.py`` (which runs longer from the
command line): concurrent submitters against one instance on the test moto
endpoint, a no-op handler counting its runs per job id.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "load.py"
    spec = importlib.util.spec_from_file_location("bench_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.mark.slow
async def test_concurrent_submitters_lose_no_job_and_run_none_twice(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(consumer={"consume": ["cpu"], "max_in_flight": {"cpu": 10}})
    app, client = await start_app(settings, bench.registry())

    report = await bench.run_load(
        app, client, submitters=16, duration_s=3.0, max_jobs=150, settle_timeout_s=30.0
    )
    print("\n".join(report.lines()))

    assert report.accepted >= 30, "too little load to mean anything"
    assert report.refused == {}
    assert report.lost == []
    assert report.duplicated == {}
    assert report.not_completed == {}
    assert report.completed == report.accepted
    # Nothing left in SQS that could run a finished job again later.
    assert report.messages_left == 0
