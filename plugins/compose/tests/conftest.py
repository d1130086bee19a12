"""Shared fixtures: moto (server mode) for S3 and the SageMaker control plane,
the local sagemaker-runtime server, and the worker's own fake ComfyUI.

The fake ComfyUI is the host repository's ``tests/fakes/comfyui.py``, imported
from there (not copied): the plugin is tested against the same ComfyUI
protocol model as the built-in ComfyUI kinds. These tests therefore run from
a checkout of the worker's repository.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import AioSession
from moto.server import ThreadedMotoServer
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))  # the worker's fakes package

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test credentials only: the developer's own AWS settings must not leak in."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "SHORTDRAMA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def s3(moto_endpoint: str) -> AsyncIterator[Any]:
    async with AioSession().create_client(
        "s3", region_name=REGION, endpoint_url=moto_endpoint
    ) as client:
        yield client


@pytest.fixture
async def sagemaker(moto_endpoint: str) -> AsyncIterator[Any]:
    async with AioSession().create_client(
        "sagemaker", region_name=REGION, endpoint_url=moto_endpoint
    ) as client:
        yield client


@pytest.fixture
async def bucket(s3: Any) -> str:
    name = f"compose-{uuid.uuid4().hex[:10]}"
    await s3.create_bucket(Bucket=name)
    return name


def image_bytes(
    colour: tuple[int, int, int], size: tuple[int, int] = (96, 64), fmt: str = "PNG"
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def create_endpoint(
    sagemaker: Any, name: str, *, async_output: str | None = None, failure: str | None = None
) -> None:
    """An endpoint in moto's control plane (``ml.m5.large``: moto's instance list is old)."""
    model = f"{name}-model"
    await sagemaker.create_model(
        ModelName=model,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sagemaker",
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/instantid:1"},
    )
    config: dict[str, Any] = {
        "EndpointConfigName": f"{name}-config",
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    }
    if async_output is not None:
        output: dict[str, str] = {"S3OutputPath": async_output}
        if failure:
            output["S3FailurePath"] = failure
        config["AsyncInferenceConfig"] = {"OutputConfig": output}
    await sagemaker.create_endpoint_config(**config)
    await sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")
