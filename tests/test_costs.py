"""The estimated cost of a job: provider usage and GPU time priced by configuration,
on the record, on a counter by kind, and against a key's daily spend quota."""

from __future__ import annotations

from typing import Any

import pytest
from fakes.ark import FakeArk
from PIL import Image
from support import GpuProbeHandler, submit, wait_for
from test_face_swap import FAST, SKIN, data_uri, photo

from shortdrama_worker import keys
from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    JobContext,
    NoSettings,
)
from shortdrama_worker.edge_settings import CostSettings
from shortdrama_worker.handlers.face_swap import FaceSwapHandler
from shortdrama_worker.jobs.costs import estimate
from shortdrama_worker.plugins import HandlerRegistry

SEEDREAM = "doubao-seedream-4-0-250828"  # the model the fake ARK reports


@pytest.fixture
async def ark() -> Any:
    async with FakeArk() as fake:
        yield fake


async def test_a_face_swap_costs_what_the_provider_reported_at_the_configured_price(
    make_settings: Any, start_app: Any, ark: FakeArk
) -> None:
    settings = make_settings(
        handlers={
            "options": {
                "face_swap": {"ark": {"base_url": ark.base_url, "api_key": ark.api_key, **FAST}}
            }
        },
        costs={
            "currency": "USD",
            # The model's own price wins over the provider's.
            "prices": {
                "ark": {"generated_images": 0.05},
                f"ark/{SEEDREAM}": {"generated_images": 0.03},
            },
        },
    )
    registry = HandlerRegistry.from_classes({"face_swap": FaceSwapHandler})
    app, client = await start_app(settings, registry)
    payload = {
        "masked_image": data_uri(photo(1280, 720)),
        "target_face": data_uri(Image.new("RGB", (256, 256), SKIN)),
        "target_face_consent": {"release_form": "RF-2026-0042", "attested_by": "casting"},
    }
    job = await wait_for(client, await submit(client, "face-swap", payload), timeout=60)
    assert job["status"] == "completed", job
    usage = job["result"]["usage"]["ark"]
    assert usage["generated_images"] == 1 and usage["model"] == SEEDREAM
    cost = job["cost"]
    assert cost["currency"] == "USD" and cost["estimate"] is True
    assert cost["total"] == pytest.approx(0.03)
    [line] = [ln for ln in cost["lines"] if ln["unit"] == "generated_images"]
    assert line == {
        "provider": "ark",
        "model": SEEDREAM,
        "unit": "generated_images",
        "amount": 1,
        "unit_price": 0.03,
        "cost": 0.03,
    }
    # Tokens were reported but not priced: said, not guessed.
    assert "ark.output_tokens" in cost["unpriced"]
    counted = app[keys.METRICS].job_cost.labels("face_swap")._value.get()
    assert counted == pytest.approx(0.03)
    text = await (await client.get("/metrics")).text()
    assert 'shortdrama_job_cost_total{kind="face_swap"} 0.03' in text


async def test_gpu_time_is_measured_and_priced(make_settings: Any, start_app: Any) -> None:
    settings = make_settings(costs={"prices": {"gpu": {"seconds": 2.0}}})
    _app, client = await start_app(
        settings, HandlerRegistry.from_classes({"probe": GpuProbeHandler})
    )
    job = await wait_for(client, await submit(client, "probe", {"prep_s": 0.1, "gpu_s": 0.4}))
    [line] = job["cost"]["lines"]
    assert line["provider"] == "gpu" and line["unit"] == "seconds"
    # Only the time inside ctx.gpu() counts, not the preparation around it.
    assert 0.4 <= line["amount"] < 0.6
    assert job["cost"]["total"] == pytest.approx(line["amount"] * 2.0, rel=1e-3)


class BilledInput(HandlerInput):
    calls: int = 1


class BilledHandler(Handler[Any, NoSettings]):
    """Reports a paid call per unit of input, as a provider-backed handler does."""

    contract_version = CONTRACT_VERSION
    input_model = BilledInput

    async def run(self, params: BilledInput, ctx: JobContext) -> dict[str, Any]:
        return {"usage": {"acme": {"model": "m1", "calls": params.calls}}}


async def test_a_daily_spend_quota_refuses_once_the_spend_reached_it(
    make_settings: Any, start_app: Any
) -> None:
    settings = make_settings(
        costs={"prices": {"acme/m1": {"calls": 0.02}}},
        limits={"default": {"cost_per_day": 0.05}},
    )
    _, client = await start_app(settings, HandlerRegistry.from_classes({"billed": BilledHandler}))
    spent = 0.0
    for _ in range(3):  # 0.02 + 0.02 + 0.02: the third ends above the quota
        job = await wait_for(client, await submit(client, "billed", {}))
        spent += job["cost"]["total"]
    assert spent == pytest.approx(0.06)
    refused = await client.post("/api/v1/billed/jobs", json={})
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["limit"] == "cost_per_day"
    assert int(refused.headers["Retry-After"]) <= 86400


def test_unpriced_and_zero_usage_add_nothing() -> None:
    costs = CostSettings.model_validate({"prices": {"dashscope": {"prompt_tokens": 1e-6}}})
    usage = {
        "dashscope": {"model": "qwen-vl-max", "prompt_tokens": 1200, "completion_tokens": 0},
        "ark": {"generated_images": 1},
    }
    record = estimate(usage, costs)
    assert record["total"] == pytest.approx(0.0012)
    assert record["unpriced"] == ["ark.generated_images"]
