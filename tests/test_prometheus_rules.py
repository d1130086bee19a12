"""Prometheus config and alerts: promtool checks them, unit tests cover every alert,
and a real Prometheus server loads them and scrapes through the relabelling.

``promtool`` and ``prometheus`` come with Debian's ``prometheus`` package.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_server import eventually, free_port, needs_prometheus, running_prometheus
from promql_names import SCRAPE_SERIES, exported_series_names, promql_metric_names

from shortdrama_worker.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "alerts.yml"
ALERTS_TEST = DEPLOY / "alerts_test.yml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package: prometheus)"
)


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=DEPLOY,
    )


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", ALERTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    proc = _promtool("check", "config", CONFIG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    proc = _promtool("test", "rules", ALERTS_TEST)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts == {
        "ShortdramaInstanceDown",
        "ShortdramaDeadLetterQueueNotEmpty",
        "ShortdramaBacklogStalled",
        "ShortdramaQueueNotConsumed",
        "ShortdramaFailureRatioHigh",
        "ShortdramaGpuIdleWithBacklog",
        "ShortdramaJobDurationP95OverBudget",
    }
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts without a test where they fire"
    # A firing case alone passes for an alert that always fires.
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"


def test_rules_read_only_series_the_daemon_exports() -> None:
    exported = exported_series_names() | SCRAPE_SERIES
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        unknown = promql_metric_names(rule["expr"]) - exported - recorded
        assert unknown == set(), f"{rule.get('alert') or rule.get('record')}: {unknown}"


def test_every_alert_has_severity_and_text() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


# -- a real server ------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[tuple[Metrics, list[int]]]:
    """Two stand-in workers on loopback serving one registry, as two instances would."""
    metrics = Metrics(CollectorRegistry())
    ports = [free_port(), free_port()]
    servers = [start_http_server(p, addr="127.0.0.1", registry=metrics.registry) for p in ports]
    yield metrics, ports
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.slow
@needs_prometheus
def test_real_prometheus_loads_the_rules_and_relabels_instances(
    tmp_path: Path, workers: tuple[Metrics, list[int]]
) -> None:
    metrics, (port_a, port_b) = workers
    metrics.jobs_finished.labels("face_mask", "completed").inc(3)
    metrics.jobs_finished.labels("face_mask", "failed").inc(1)
    metrics.job_duration.labels("face_mask", "completed").observe(0.4)
    metrics.queue_depth.labels("gpu_tasks_queue").set(5)
    metrics.queue_depth.labels("gpu_tasks_queue_dlq").set(1)
    metrics.queue_consumed.labels("gpu_tasks_queue").set(1)
    metrics.gpu_slots.set(1)

    # The example config as shipped, pointed at the stand-ins: its relabelling
    # and rule file are what is under test.
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS)]
    config.pop("alerting", None)
    (job,) = config["scrape_configs"]
    job.pop("file_sd_configs")
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [
        {"targets": [f"localhost:{port_a}"]},
        {"targets": [f"127.0.0.1:{port_b}"], "labels": {"worker": "gpu1"}},
    ]
    with running_prometheus(config, tmp_path) as prometheus:
        prometheus.wait_ready()

        def both_up() -> dict[str, str] | None:
            result = prometheus.query('up{job="shortdrama-worker"}')
            up = {r["metric"]["instance"]: r["value"][1] for r in result}
            return up if len(up) == 2 and set(up.values()) == {"1"} else None

        # Host names lose their domain and port; a template instance is host:worker.
        assert eventually(both_up) == {"localhost": "1", "127.0.0.1:gpu1": "1"}

        def completed() -> float:
            result = prometheus.query('sum(shortdrama_jobs_finished_total{outcome="completed"})')
            return float(result[0]["value"][1]) if result else 0.0

        assert eventually(lambda: completed() == 6.0)  # 3 on each instance
        metrics.jobs_finished.labels("face_mask", "completed").inc(2)
        assert eventually(lambda: completed() == 10.0)

        # Every rule evaluates against real series without error (no
        # many-to-many joins with several instances reporting one queue).
        def rule_health() -> dict[str, str] | None:
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            health = {
                rule["name"]: rule["health"] + (": " + rule.get("lastError", "")).rstrip(": ")
                for group in groups
                for rule in group["rules"]
            }
            return None if any(h == "unknown" for h in health.values()) else health

        health = eventually(rule_health)
        names = {rule.get("alert") or rule["record"] for rule in _rules()}
        assert set(health) == names
        assert all(h == "ok" for h in health.values()), health
        # The DLQ alert saw the DLQ once, not once per instance.
        dlq = prometheus.query("ALERTS{alertname='ShortdramaDeadLetterQueueNotEmpty'}")
        assert [r["metric"]["queue"] for r in dlq] == ["gpu_tasks_queue_dlq"]
