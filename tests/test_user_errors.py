"""Errors that say what to do, and the small CLI behaviours users noticed."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from support import GpuProbeHandler, ScriptedHandler, submit, wait_for

from shortdrama_worker import cli
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.settings import ConfigError, load_settings


async def test_an_installed_but_disabled_kind_says_so_and_names_the_setting(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(handlers={"allow": ["face_mask"]})
    _, api = await start_app(settings, HandlerRegistry.discover(["face_mask"]))
    resp = await api.post("/api/v1/face-swap/jobs", json={})
    assert resp.status == 404
    message = (await resp.json())["error"]["message"]
    assert "installed but disabled" in message and "handlers.allow" in message
    resp = await api.post("/api/v1/no-such-kind/jobs", json={})
    assert (await resp.json())["error"]["message"] == "no handler for 'no-such-kind'"


async def test_the_embedded_default_refuses_a_kind_whose_queue_it_does_not_consume(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(
        aws={"endpoint_url": None}, local={"embedded_aws": True}, consumer={"consume": ["cpu"]}
    )
    registry = HandlerRegistry.from_classes(
        {"gpu_probe": GpuProbeHandler, "scripted": ScriptedHandler}
    )
    _, api = await start_app(settings, registry)
    resp = await api.post("/api/v1/gpu-probe/jobs", json={})
    assert resp.status == 503
    message = (await resp.json())["error"]["message"]
    assert "gpu queue" in message and "consumer.consume" in message
    listed = (await (await api.get("/api/v1/jobs")).json())["jobs"]
    assert listed == []  # nothing was written
    assert (await api.post("/api/v1/scripted/jobs", json={})).status == 202


def test_config_errors_blame_the_environment_variable_or_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text("[gpu]\nslots = 0\n[api]\nport = 8080\n")
    monkeypatch.setenv("SHORTDRAMA_API__PORT", "99999")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert f"gpu.slots: Input should be greater than or equal to 1 (file {config})" in message
    assert "(environment variable SHORTDRAMA_API__PORT)" in message


def test_a_failed_job_line_shows_its_error_not_the_stage_it_died_in() -> None:
    job = {"status": "failed", "progress": 40.0, "stage": "detecting", "error_message": "no face"}
    assert cli.progress_line(job) == "failed      40.0% no face"
    running = {**job, "status": "processing", "error_message": None}
    assert cli.progress_line(running) == "processing  40.0% detecting"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue()


async def test_cli_lists_and_cancels_jobs(make_settings: Any, start_app: Any) -> None:
    _, api = await start_app(
        make_settings(), HandlerRegistry.from_classes({"scripted": ScriptedHandler})
    )
    base = str(api.make_url("")).rstrip("/")
    done = await submit(api, "scripted", {})
    await wait_for(api, done)
    slow = await submit(api, "scripted", {"sleep_s": 20})
    code, out = await asyncio.to_thread(run_cli, "cancel", slow, "--api", base)
    assert code == 0 and f"job {slow}" in out
    await wait_for(api, slow)
    code, out = await asyncio.to_thread(run_cli, "jobs", "--api", base)
    # The app's own log lines share stdout in this process; keep the table.
    lines = [line for line in out.splitlines() if line.startswith(("JOB ", slow, done))]
    assert code == 0 and lines[0].split() == [
        "JOB",
        "KIND",
        "STATUS",
        "PROGRESS",
        "CREATED",
        "DURATION",
    ]
    assert [line.split()[:3] for line in lines[1:]] == [
        [slow, "scripted", "cancelled"],
        [done, "scripted", "completed"],
    ]
    code, out = await asyncio.to_thread(
        run_cli, "jobs", "--api", base, "--status", "completed", "--json"
    )
    assert code == 0 and '"next_cursor": null' in out and slow not in out
    code, _ = await asyncio.to_thread(run_cli, "cancel", done, "--api", base)
    assert code == 2  # already finished: 409


def test_help_lists_every_command() -> None:
    code, out = run_cli("--help")
    assert code == 0
    for command in ("serve", "init", "handlers", "submit", "status", "jobs", "cancel", "keygen"):
        assert f"    {command} " in out
