"""The console in a real browser: Debian's headless Chromium driven by selenium.

With auth on, the user enters a key; a face-mask job submitted by file upload
completes and shows its thumbnail; another job is cancelled from the list.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ScriptedHandler, submit

from shortdrama_worker.handlers.face_mask import FaceMaskHandler
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.auth import new_key

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "face.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1360,860")
    # An explicit driver path: selenium must never go looking for (or download) one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def run_console(driver: Any, base: str, key: str, slow_job: str) -> None:
    """The user's side, in selenium's blocking API (run in a thread)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 40)
    driver.get(base + "/")
    wait.until(ec.visibility_of_element_located((By.ID, "notice")))
    assert "API key" in driver.find_element(By.ID, "notice").text  # 401 until a key is given
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "save-key").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"tr.job[data-id='{slow_job}']"))
    assert key not in driver.current_url

    # Submit a face mask by file upload through the generated form.
    driver.find_element(By.ID, "nav-submit").click()
    Select(driver.find_element(By.ID, "kind")).select_by_value("face_mask")
    driver.find_element(By.CSS_SELECTOR, "input[type=file][name=image_url]").send_keys(str(SAMPLE))
    driver.find_element(By.ID, "submit-button").click()
    wait.until(lambda d: "#job/" in d.current_url)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#job-detail .status.completed")))
    result = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.result-image")))
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", result) > 0)
    # The signed result's Content Credentials are named on the job page.
    detail = driver.find_element(By.ID, "job-detail").text
    assert "Content Credentials" in detail and "urn:" in detail

    # The list shows it with its thumbnails; cancel the slow job from there.
    driver.find_element(By.ID, "nav-jobs").click()
    thumb = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.result-thumb")))
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", thumb) > 0)
    # The list re-renders as jobs change: a row found a moment ago may be replaced
    # before the click lands, so the click is retried on a fresh row.
    def click_cancel(d: Any) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, f"tr.job[data-id='{slow_job}'] button.cancel").click()
        except StaleElementReferenceException:
            return False
        return True

    wait.until(click_cancel)
    wait.until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, f"tr.job[data-id='{slow_job}'][data-status='cancelled']"
        )
    )
    # Let every thumbnail of the refreshed list load before the picture is taken.
    wait.until(
        lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    # docs/console.png is this picture; it is rewritten only when asked, so a
    # test run leaves the checkout as it was.
    if os.environ.get("UPDATE_SCREENSHOTS"):
        driver.save_screenshot(str(REPO / "docs" / "console.png"))
    else:
        assert driver.get_screenshot_as_png().startswith(b"\x89PNG")


async def test_console_submits_by_upload_shows_the_result_and_cancels(
    make_settings: Any, start_app: Any, browser: Any
) -> None:
    key, digest = new_key()
    settings = make_settings(auth={"enabled": True, "keys": [{"id": "editor", "sha256": digest}]})
    registry = HandlerRegistry.from_classes(
        {"face_mask": FaceMaskHandler, "scripted": ScriptedHandler}
    )
    _, api = await start_app(settings, registry)
    headers = {"Authorization": f"Bearer {key}"}
    slow = await submit(api, "scripted", {"sleep_s": 25}, headers=headers)
    base = str(api.make_url("")).rstrip("/")
    await asyncio.to_thread(run_console, browser, base, key, slow)
    job = await (await api.get(f"/api/v1/jobs/{slow}", headers=headers)).json()
    assert job["status"] == "cancelled"


async def test_console_and_docs_are_served_from_package_files_without_a_key(
    make_settings: Any, start_app: Any
) -> None:
    _, digest = new_key()
    settings = make_settings(auth={"enabled": True, "keys": [{"id": "editor", "sha256": digest}]})
    _, api = await start_app(settings, HandlerRegistry.from_classes({"scripted": ScriptedHandler}))
    page = await (await api.get("/")).text()
    assert "/static/console.js" in page
    for asset in ("/static/console.js", "/static/console.css", "/docs"):
        resp = await api.get(asset)
        assert resp.status == 200, asset
    docs = await (await api.get("/docs")).text()
    # Swagger UI from the swagger-ui-bundle package, never a CDN.
    assert "https://" not in docs and "/docs/assets/swagger-ui-bundle.js" in docs
    assert (await api.get("/docs/assets/swagger-ui-bundle.js")).status == 200
    assert "https://" not in page
