"""The example plugin's own tests: the contract's testing kit, no AWS, no daemon."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from shortdrama_worker.contract.testing import FakeJobContext, make_env

from shortdrama_example_plugin import EchoHandler, EchoInput


async def test_echo_stores_the_text_as_json_and_links_it() -> None:
    handler = EchoHandler(make_env(EchoHandler, {"prefix": "> "}, kind="example_echo"))
    ctx = FakeJobContext(kind="example_echo")

    result = await handler.run(EchoInput(text="你好"), ctx)

    assert result["echo"] == "> 你好"
    [stored] = ctx.stored
    assert json.loads(stored.data) == {"echo": "> 你好"}
    assert stored.content_type == "application/json" and stored.primary
    assert result["echo_url"].key == stored.key  # the host renders it as a URL when read


async def test_progress_climbs_to_100() -> None:
    ctx = FakeJobContext()
    await EchoHandler(make_env(EchoHandler)).run(EchoInput(text="x"), ctx)
    percents = [p for p, _ in ctx.progress_reports]
    assert percents == sorted(percents) and percents[-1] == 100


def test_input_and_settings_are_validated_with_field_names() -> None:
    with pytest.raises(ValidationError, match="text"):
        EchoInput(text="")
    with pytest.raises(ValidationError, match="colour"):
        make_env(EchoHandler, {"colour": "red"})
