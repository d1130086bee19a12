"""API keys: who may submit which kinds, and read whose jobs."""

from __future__ import annotations

from typing import Any

import pytest
from support import ScriptedHandler, wait_for

from shortdrama_worker import keys
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.settings import ConfigError, load_settings
from shortdrama_worker.web.auth import digest

EDITOR, VIEWER, ADMIN = "sdw_editor_key", "sdw_viewer_key", "sdw_admin_key"


class OtherHandler(ScriptedHandler):
    pass


@pytest.fixture
async def api(make_settings: Any, start_app: Any) -> Any:
    settings = make_settings(
        auth={
            "enabled": True,
            "public_metrics": False,
            "keys": [
                {"id": "editor", "sha256": digest(EDITOR), "kinds": ["scripted"]},
                {"id": "viewer", "sha256": digest(VIEWER), "kinds": ["other"]},
                {"id": "admin", "sha256": digest(ADMIN), "read_all": True},
            ],
        }
    )
    registry = HandlerRegistry.from_classes({"scripted": ScriptedHandler, "other": OtherHandler})
    app, client = await start_app(settings, registry)
    return app, client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_no_key_is_401_with_a_bearer_challenge(api: Any) -> None:
    _, client = api
    resp = await client.post("/api/v1/scripted/jobs", json={})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_an_unknown_key_is_401(api: Any) -> None:
    _, client = api
    resp = await client.get("/api/v1/handlers", headers=bearer("sdw_guess"))
    assert resp.status == 401


async def test_a_kind_the_key_may_not_submit_is_403(api: Any) -> None:
    _, client = api
    resp = await client.post("/api/v1/other/jobs", json={}, headers=bearer(EDITOR))
    assert resp.status == 403
    assert "may not submit 'other'" in (await resp.json())["error"]["message"]


async def test_the_submitting_key_is_recorded_and_others_cannot_see_the_job(api: Any) -> None:
    app, client = api
    resp = await client.post("/api/v1/scripted/jobs", json={}, headers=bearer(EDITOR))
    assert resp.status == 202
    job_id = (await resp.json())["job_id"]
    task = await app[keys.STORE].get(job_id)
    assert task.submitted_by == "editor"

    mine = await client.get(f"/api/v1/jobs/{job_id}", headers=bearer(EDITOR))
    assert mine.status == 200
    theirs = await client.get(f"/api/v1/jobs/{job_id}", headers=bearer(VIEWER))
    assert theirs.status == 404
    assert (await client.delete(f"/api/v1/jobs/{job_id}", headers=bearer(VIEWER))).status == 404
    admin = await client.get(f"/api/v1/jobs/{job_id}", headers=bearer(ADMIN))
    assert admin.status == 200


async def test_idempotency_keys_do_not_collide_across_api_keys(api: Any) -> None:
    _, client = api
    headers = {"Idempotency-Key": "same"}
    a = await client.post("/api/v1/scripted/jobs", json={}, headers={**headers, **bearer(EDITOR)})
    b = await client.post("/api/v1/scripted/jobs", json={}, headers={**headers, **bearer(ADMIN)})
    assert a.status == b.status == 202
    assert (await a.json())["job_id"] != (await b.json())["job_id"]


async def test_probes_stay_public_and_metrics_can_be_closed(api: Any) -> None:
    _, client = api
    assert (await client.get("/ready")).status == 200
    assert (await client.get("/health")).status == 200
    assert (await client.get("/openapi.json")).status == 200
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=bearer(ADMIN))).status == 200


async def test_jobs_run_normally_behind_auth(api: Any) -> None:
    _, client = api
    resp = await client.post("/api/v1/scripted/jobs", json={}, headers=bearer(EDITOR))
    job_id = (await resp.json())["job_id"]
    client.session.headers.update(bearer(EDITOR))
    assert (await wait_for(client, job_id))["status"] == "completed"


def test_enabling_auth_without_keys_stops_start_up() -> None:
    with pytest.raises(ConfigError, match=r"auth\.enabled needs at least one"):
        load_settings(None, auth={"enabled": True})


def test_a_malformed_digest_is_named() -> None:
    with pytest.raises(ConfigError, match=r"auth\.keys\.0\.sha256"):
        load_settings(None, auth={"keys": [{"id": "x", "sha256": "not-hex"}]})
