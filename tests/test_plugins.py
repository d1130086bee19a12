"""Handler discovery: entry points, the allow-list, and loud failures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    Handler,
    HandlerInput,
    ImageRef,
    JobContext,
    NoSettings,
    file_ref,
)
from shortdrama_worker.contract.testing import data_uri
from shortdrama_worker.handlers.face_mask import FaceMaskHandler
from shortdrama_worker.plugins import HandlerRegistry, PluginError

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "face.png"


def test_the_example_plugin_is_found_through_its_entry_point() -> None:
    registry = HandlerRegistry.discover()
    spec = registry.by_kind["example_echo"]
    assert spec.distribution == "shortdrama-example-plugin"
    assert spec.slug == "example-echo"
    assert registry.by_kind["face_mask"].distribution == "shortdrama-worker"


async def test_the_example_plugin_runs_a_job_end_to_end(make_settings: Any, start_app: Any) -> None:
    # No registry given: the app discovers handlers exactly as in production.
    settings = make_settings(handlers={"allow": ["example_echo"]})
    _, client = await start_app(settings)
    job = await wait_for(client, await submit(client, "example-echo", {"text": "你好"}))
    assert job["status"] == "completed"
    assert job["result"]["echo"] == "你好"
    async with client.session.get(job["result_url"]) as resp:
        assert await resp.json() == {"echo": "你好"}


def test_the_allow_list_limits_what_loads() -> None:
    registry = HandlerRegistry.discover(["face_mask"])
    assert list(registry.by_kind) == ["face_mask"]


def test_an_allow_list_naming_a_missing_kind_stops_start_up() -> None:
    with pytest.raises(PluginError, match="not installed: clothes_off"):
        HandlerRegistry.discover(["face_mask", "clothes_off"])


def test_duplicate_route_slugs_stop_start_up() -> None:
    class Other(ScriptedHandler):
        slug = "face-mask"

    with pytest.raises(PluginError, match="route slug 'face-mask' is used by both"):
        HandlerRegistry.from_classes({"face_mask": FaceMaskHandler, "other": Other})


def test_duplicate_kinds_from_two_distributions_stop_start_up() -> None:
    first = HandlerRegistry.from_classes({"echo": ScriptedHandler}, "dist-a")
    second = HandlerRegistry.from_classes({"echo": ScriptedHandler}, "dist-b")
    with pytest.raises(PluginError, match="registered twice \\(by dist-a and by dist-b\\)"):
        HandlerRegistry([*first, *second])


def test_a_kind_must_be_snake_case() -> None:
    with pytest.raises(PluginError, match="not snake_case"):
        HandlerRegistry.from_classes({"Face-Mask": ScriptedHandler})


class _ProbeInput(HandlerInput):
    image_url: ImageRef
    clip: file_ref(accept=["audio/wav"])  # type: ignore[valid-type]


class _ContextProbe(Handler[Any, NoSettings]):
    """Uses the two context services a plugin cannot reach any other way."""

    contract_version = CONTRACT_VERSION
    input_model = _ProbeInput

    async def run(self, params: _ProbeInput, ctx: JobContext) -> dict[str, Any]:
        faces = await ctx.detect_faces(await ctx.fetch_image(params.image_url, field="image_url"))
        clip = await ctx.fetch_file(params.clip, field="clip", accept=["audio/wav"])
        return {"faces": len(faces), "clip_type": clip.content_type}


async def test_a_plugin_gets_the_local_detector_and_inline_files(
    make_settings: Any, start_app: Any
) -> None:
    registry = HandlerRegistry.from_classes({"context_probe": _ContextProbe})
    _, client = await start_app(make_settings(), registry)
    face = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").save(face, format="JPEG")
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)
    payload = {
        "image_url": data_uri(face.getvalue(), "image/jpeg"),
        "clip": data_uri(wav, "audio/wav"),
    }
    job = await wait_for(client, await submit(client, "context-probe", payload))
    assert job["status"] == "completed", job
    assert job["result"] == {"faces": 1, "clip_type": "audio/wav"}
