"""The Grafana dashboard queries only what the daemon exports, and shows what operators need."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from promql_names import SCRAPE_SERIES, exported_series_names, promql_metric_names

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "shortdrama-worker.json"


def _dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query."""
    board = _dashboard()
    for panel in _panels(board["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        # label_values(metric, label) reads metric; the label is not a series.
        text = re.sub(r"label_values\(\s*([^,()]+?)\s*,[^)]*\)", r"\1", text)
        yield f"variable {variable['name']!r}", text


def test_every_query_reads_only_exported_series() -> None:
    exported = exported_series_names() | SCRAPE_SERIES
    problems = []
    for where, expr in _queries():
        unknown = promql_metric_names(expr) - exported
        if unknown:
            problems.append(f"{where}: {sorted(unknown)}")
    assert problems == []


def test_the_check_catches_a_misspelt_metric() -> None:
    # Proves the test above can fail: a typo and a series from another exporter.
    exported = exported_series_names() | SCRAPE_SERIES
    expr = (
        'sum(rate(shortdrama_jobs_finishd_total{kind=~"$kind"}[$__rate_interval]))'
        " / on (instance) DCGM_FI_DEV_GPU_UTIL"
    )
    assert promql_metric_names(expr) - exported == {
        "shortdrama_jobs_finishd_total",
        "DCGM_FI_DEV_GPU_UTIL",
    }


def test_panels_cover_what_an_operator_needs() -> None:
    read = set()
    for _where, expr in _queries():
        read |= promql_metric_names(expr)
    for series in (
        "shortdrama_jobs_finished_total",  # throughput and failures
        "shortdrama_job_duration_seconds_bucket",  # latency percentiles per kind
        "shortdrama_gpu_busy_seconds_total",  # GPU utilisation
        "shortdrama_gpu_slots",
        "shortdrama_queue_messages",  # queue and DLQ depth
        "shortdrama_provider_errors_total",  # provider errors
        "shortdrama_jobs_in_flight",  # in flight
    ):
        assert series in read, series
    exprs = " ".join(expr for _where, expr in _queries())
    assert 'queue=~".+_dlq"' in exprs
    assert "histogram_quantile(0.95, sum by (kind, le)" in exprs


def test_layout_is_well_formed() -> None:
    board = _dashboard()
    assert board["uid"] == "shortdrama-worker"
    panels = list(_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not covered & cells, f"{panel['title']!r} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            # Every panel follows the data source picked on the dashboard.
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_queue_gauges_are_never_summed_across_instances() -> None:
    # Every instance polls the same SQS queue: summing the raw gauges would
    # multiply the backlog by the number of workers. Each read of them goes
    # through max (optionally by queue) first.
    for where, expr in _queries():
        reads = re.findall(r"shortdrama_queue_messages(?:_in_flight)?\b", expr)
        deduplicated = re.findall(
            r"max(?: by \(queue\))? ?\(shortdrama_queue_messages(?:_in_flight)?\b", expr
        )
        assert len(reads) == len(deduplicated), f"{where}: {expr}"
