"""A real scrape: Debian's Prometheus server scrapes a running daemon's /metrics
on loopback, and its query API sees the target up and the job counter rise.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_server import Prometheus, eventually, needs_prometheus, running_prometheus
from support import ScriptedHandler, submit, wait_for

from shortdrama_worker.plugins import HandlerRegistry

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "prometheus.yml"
COMPLETED = 'shortdrama_jobs_finished_total{job="shortdrama-worker",outcome="completed"}'


def scrape_config(target: str) -> dict[str, Any]:
    """The shipped example, scraping ``target`` every second and nothing else."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("rule_files", None)
    config.pop("alerting", None)
    (job,) = config["scrape_configs"]
    job.pop("file_sd_configs")
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [target]}]
    return config


def completed_total(prometheus: Prometheus) -> float:
    return sum(float(r["value"][1]) for r in prometheus.query(COMPLETED))


@pytest.mark.slow
@needs_prometheus
async def test_prometheus_scrapes_the_daemon_and_sees_a_job_complete(
    make_settings: Any, start_app: Any, tmp_path: Path
) -> None:
    registry = HandlerRegistry.from_classes({"scripted": ScriptedHandler})
    _, client = await start_app(make_settings(), registry)
    target = f"127.0.0.1:{client.port}"

    # The helpers block; run them in a thread so this loop serves the scrapes.
    with running_prometheus(scrape_config(target), tmp_path) as prometheus:
        await asyncio.to_thread(prometheus.wait_ready)

        def target_up() -> list[dict[str, Any]] | None:
            result = prometheus.query('up{job="shortdrama-worker"}')
            return result if [r["value"][1] for r in result] == ["1"] else None

        up = await asyncio.to_thread(eventually, target_up)
        # The shipped relabelling names the instance by host, without the port.
        assert up[0]["metric"]["instance"] == "127.0.0.1"
        # Scraped at least once with no job run yet: no completed series, or zero.
        before = await asyncio.to_thread(completed_total, prometheus)
        assert before == 0.0

        job = await wait_for(client, await submit(client, "scripted", {}))
        assert job["status"] == "completed"

        def rose() -> list[dict[str, Any]] | None:
            result = prometheus.query(COMPLETED)
            return result if sum(float(r["value"][1]) for r in result) == before + 1 else None

        after = await asyncio.to_thread(eventually, rose)
        assert [r["metric"]["kind"] for r in after] == ["scripted"]
        # Quoted in the operations notes: what the query API answered.
        print("up:", json.dumps(up))
        print(f"{COMPLETED}:", json.dumps(after))
