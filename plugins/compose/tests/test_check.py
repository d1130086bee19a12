"""`shortdrama-compose check` and the start-up check, against moto's control plane."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import REGION, create_endpoint

from shortdrama_compose.aws import open_clients
from shortdrama_compose.check import check, problems
from shortdrama_compose.cli import main
from shortdrama_compose.model import SageMakerSettings


def settings(moto: str, bucket: str, **endpoints: Any) -> SageMakerSettings:
    return SageMakerSettings(
        region=REGION,
        bucket=bucket,
        sagemaker_endpoint_url=moto,
        s3_endpoint_url=moto,
        runtime_endpoint_url=moto,
        **endpoints,
    )


async def findings(config: SageMakerSettings) -> list[str]:
    async with open_clients(config) as clients:
        found = await check(config, clients)
    return [str(f) for f in problems(found)]


async def test_an_inservice_realtime_and_async_pair_passes(
    moto_endpoint: str, bucket: str, sagemaker: Any
) -> None:
    name = f"instantid-{uuid.uuid4().hex[:6]}"
    await create_endpoint(sagemaker, name)
    await create_endpoint(
        sagemaker, f"{name}-q", async_output=f"s3://{bucket}/out", failure=f"s3://{bucket}/f"
    )
    config = settings(moto_endpoint, bucket, endpoint_name=name, async_endpoint_name=f"{name}-q")
    assert await findings(config) == []


async def test_what_is_missing_is_said_plainly(moto_endpoint: str, sagemaker: Any) -> None:
    name = f"instantid-{uuid.uuid4().hex[:6]}"
    await create_endpoint(sagemaker, name, async_output="s3://elsewhere/out")
    config = settings(
        moto_endpoint, "no-such-bucket-x", endpoint_name=name, async_endpoint_name="nothing-here"
    )
    assert await findings(config) == [
        "missing: bucket no-such-bucket-x does not exist; create it (private, with a lifecycle "
        "rule expiring compose/) and grant the worker deploy/aws/iam-policy-compose.json",
        f"missing: endpoint {name} is asynchronous; configure it as async_endpoint_name "
        "(InvokeEndpoint is refused by asynchronous endpoints)",
        "missing: endpoint nothing-here (async_endpoint_name) does not exist in us-east-1; "
        "create it with your model (this plugin does not create GPU endpoints)",
    ]


async def test_the_command_reads_the_workers_config_and_exits_nonzero_on_problems(
    moto_endpoint: str, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        "[handlers.options.compose]\n"
        'backend = "sagemaker"\n'
        "[handlers.options.compose.sagemaker]\n"
        f'bucket = "{bucket}"\n'
        'endpoint_name = "absent"\n'
        f'sagemaker_endpoint_url = "{moto_endpoint}"\n'
        f's3_endpoint_url = "{moto_endpoint}"\n'
    )
    with pytest.raises(SystemExit) as exited:
        await_in_thread(lambda: main(["check", "--config", str(config)]))
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert f"ok: bucket {bucket} is reachable" in out
    assert "missing: endpoint absent (endpoint_name) does not exist" in out


def test_a_bad_section_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[handlers.options.compose]\nbackend = "sagemaker"\n')
    with pytest.raises(SystemExit) as exited:
        main(["check", "--config", str(config)])
    assert exited.value.code == 2
    assert "needs a [handlers.options.<kind>.sagemaker] section" in capsys.readouterr().err


def test_the_worker_lists_the_kind_under_this_distribution() -> None:
    worker = Path(sys.executable).parent / "shortdrama-worker"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHORTDRAMA_")}
    listing = subprocess.run(
        [str(worker), "handlers"], capture_output=True, text=True, check=True, env=env
    ).stdout
    (row,) = [line.split() for line in listing.splitlines() if line.startswith("compose ")]
    assert row == ["compose", "/api/v1/compose/jobs", "gpu", "shortdrama-compose"]


def await_in_thread(call: Any) -> None:
    """Run a blocking CLI (it starts its own event loop) off this test's loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(call).result()
