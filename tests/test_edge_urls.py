"""Hostile URLs: every spelling of an internal host is refused before anything connects.

The guard judges the host exactly as aiohttp will connect to it (yarl with
IDNA), at submit where it can and again for every redirect and webhook
delivery. A real loopback server stands in for what must never be reached:
each test asserts it saw no request.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker.inputs.netguard import AddressPolicy, UrlRefused, web_target
from shortdrama_worker.plugins import HandlerRegistry

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

# Hosts that are 127.0.0.1 (or ::1) once normalised as aiohttp normalises them.
UNICODE_LOOPBACK = [
    "１２７．０．０．１",  # fullwidth digits and full stops
    "127。0。0。1",  # ideographic full stop U+3002
    "127｡0｡0｡1",  # halfwidth ideographic full stop U+FF61
    "127．0．0．1",  # fullwidth full stop only
    "①②⑦.0.0.1",  # circled digits
    "¹²⁷.0.0.1",  # superscripts
    "𝟏𝟐𝟕.0.0.1",  # mathematical bold digits
]
IPV6_LOOPBACK = [
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::FFFF:7F00:1]",
    "[::ffff:169.254.169.254]",
    "[2002:7f00:1::]",  # 6to4 carrying 127.0.0.1
]
# Spellings only some parsers and resolvers read as 127.0.0.1; never canonical.
NUMERIC_FORMS = [
    "2130706433",
    "017700000001",
    "0x7f.0.0.1",
    "0x7f000001",
    "127.1",
    "0",
    "127.000.000.001",
    "127.0.0.1.",
    "127.0.0.1﹒",  # small full stop: a trailing dot after IDNA
    "1.2.3.4.5",
]
ZONE_IDS = ["[fe80::1%25lo]", "[::1%25lo]"]
MALFORMED_HOSTS = ["a..b.example", "exa mple.com", "ex%41mple.com", "xn--", "-a-.example"]


class Target:
    """A loopback server that counts every request: the thing that must not be reached."""

    def __init__(self) -> None:
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=b"\x89PNG", content_type="image/png")


@pytest.fixture
async def target() -> Any:
    tgt = Target()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", tgt.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    tgt.port = server.port  # type: ignore[attr-defined]
    yield tgt
    await server.close()


def registry() -> HandlerRegistry:
    return HandlerRegistry.from_classes({"scripted": ScriptedHandler})


def guarded(make_settings: Any, **inputs: Any) -> Any:
    """Production rules: nothing internal allowed (http allowed to reach the test server)."""
    return make_settings(
        inputs={"allow_http": True, "allow_networks": [], **inputs},
        webhooks={"secret": SECRET, "backoff_base_s": 0.05},
    )


async def refused_at_submit(client: Any, field: str, url: str) -> dict[str, Any]:
    body = {field: url}
    resp = await client.post("/api/v1/scripted/jobs", json=body)
    assert resp.status == 422, await resp.text()
    error: dict[str, Any] = (await resp.json())["error"]
    assert error["fields"][0]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    return error


@pytest.mark.parametrize("host", UNICODE_LOOPBACK + IPV6_LOOPBACK)
async def test_unicode_and_ipv6_spellings_of_loopback_are_refused_at_submit(
    make_settings: Any, start_app: Any, target: Any, host: str
) -> None:
    _, client = await start_app(guarded(make_settings), registry())
    url = f"http://{host}:{target.port}/frame.png"
    error = await refused_at_submit(client, "image_url", url)
    assert error["fields"][0]["type"] == "address_refused"
    assert re.search(r"is a (loopback|link-local) address", error["message"])
    callback = await refused_at_submit(client, "callback_url", url)
    assert re.search(r"is a (loopback|link-local) address", callback["message"])
    assert target.hits == 0


@pytest.mark.parametrize("host", NUMERIC_FORMS)
async def test_numeric_host_forms_are_refused_by_us_at_submit(
    make_settings: Any, start_app: Any, target: Any, host: str
) -> None:
    _, client = await start_app(guarded(make_settings), registry())
    url = f"http://{host}:{target.port}/frame.png"
    error = await refused_at_submit(client, "image_url", url)
    assert "is not a canonical IPv4 address" in error["message"]
    await refused_at_submit(client, "callback_url", url)
    assert target.hits == 0


@pytest.mark.parametrize("host", NUMERIC_FORMS + ZONE_IDS + MALFORMED_HOSTS)
def test_the_guard_itself_refuses_what_only_aiohttp_used_to(host: str) -> None:
    # Independent of any aiohttp version's parser: our own code decides.
    with pytest.raises(UrlRefused):
        web_target(f"https://{host}/x.png", allow_http=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://editor:hunter2@cdn.example/a.png",
        "https://editor@cdn.example/a.png",
        "https://:hunter2@cdn.example/a.png",
    ],
)
async def test_credentials_in_urls_are_refused_and_never_echoed(
    make_settings: Any, start_app: Any, url: str
) -> None:
    _, client = await start_app(guarded(make_settings), registry())
    for field in ("image_url", "callback_url"):
        resp = await client.post("/api/v1/scripted/jobs", json={field: url})
        assert resp.status == 422
        text = await resp.text()
        assert "credentials in URLs are not accepted" in text
        assert "hunter2" not in text and "editor" not in text


@pytest.mark.parametrize(
    "url",
    [
        "https://a..b.example/x.png",
        "https://xn--/x.png",  # IDNA cannot decode it
        "https://ex%41mple.com/x.png",
        "HTTPS://１２７．０．０．１/x.png",  # upper-case scheme takes the same path
        "https://host.example:99999/x.png",
    ],
)
async def test_unusable_hosts_are_refused_at_submit_not_retried_later(
    make_settings: Any, start_app: Any, url: str
) -> None:
    _, client = await start_app(guarded(make_settings), registry())
    await refused_at_submit(client, "image_url", url)


@pytest.fixture
async def redirector(target: Any) -> Any:
    """A public-looking hop (allow-listed 127.0.0.2) that redirects to hostile places."""

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/hop", hop)
    server = TestServer(app, host="127.0.0.2")
    await server.start_server()
    yield server
    await server.close()


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://１２７．０．０．１:{port}/frame.png", "127.0.0.1 is a loopback address"),
        ("http://127。0。0。1:{port}/frame.png", "127.0.0.1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/frame.png", "127.0.0.1 is a loopback address"),
        ("http://2130706433:{port}/frame.png", "not a canonical IPv4 address"),
        ("http://127.1:{port}/frame.png", "not a canonical IPv4 address"),
        ("http://user:hunter2@127.0.0.1:{port}/frame.png", "credentials in URLs"),
        ("http://xn--:{port}/frame.png", "is not a valid host name"),
        ("file:///etc/passwd", "redirects to a non-HTTP URL"),
    ],
)
async def test_every_redirect_hop_is_judged_like_the_first_url(
    make_settings: Any,
    start_app: Any,
    target: Any,
    redirector: Any,
    location: str,
    reason: str,
) -> None:
    settings = guarded(make_settings, allow_networks=["127.0.0.2/32"])
    _, client = await start_app(settings, registry())
    hop = redirector.make_url("/hop").with_query(to=location.format(port=target.port))
    job = await wait_for(client, await submit(client, "scripted", {"image_url": str(hop)}))
    assert job["status"] == "failed"
    assert job["attempts"] == 1, "a refusal cannot change on retry"
    assert job["error_message"].startswith("image_url: ")
    assert reason in job["error_message"]
    assert "hunter2" not in job["error_message"]
    assert target.hits == 0


def test_embedded_and_mapped_ipv4_is_judged_as_ipv4() -> None:
    policy = AddressPolicy()
    assert policy.refusal("::ffff:127.0.0.1") == "127.0.0.1 is a loopback address"
    assert "embeds 127.0.0.1" in (policy.refusal("2002:7f00:1::") or "")
    assert policy.refusal("2001:0:4136:e378:8000:63bf:80ff:fffe") is not None  # Teredo
    assert policy.refusal("2606:4700::1111") is None


def test_the_host_judged_is_the_host_aiohttp_connects_to() -> None:
    url = web_target("https://１２７．０．０．１:8443/ａ.png", allow_http=False)
    assert url.raw_host == "127.0.0.1"
    assert url.port == 8443
    assert AddressPolicy().url_refusal(url) == "127.0.0.1 is a loopback address"
    # A name stays a name (the resolver judges its addresses); IDNA applied.
    assert web_target("https://Bücher.example./x", allow_http=False).raw_host == (
        "xn--bcher-kva.example."
    )
