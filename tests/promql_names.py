"""Metric names: what the daemon exports, and what a PromQL expression reads.

Shared by the tests of the Grafana dashboard and the Prometheus rules, so that
neither can query a series the daemon never produces (a typo there is a
panel that stays empty or an alert that can never fire).
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from shortdrama_worker.metrics import Metrics

# Series that Prometheus makes itself for every target.
SCRAPE_SERIES = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
)

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}

_KEYWORDS = frozenset(
    {
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
        "and", "or", "unless", "offset", "inf", "nan", "atan2",
    }
)  # fmt: skip


def exported_series_names() -> frozenset[str]:
    """Every series name the daemon's registry can expose."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        for suffix in _SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, labels or keywords).

    Good enough for the expressions we write: it removes string literals,
    label matchers, ranges and grouping lists, then keeps identifiers that
    are not followed by ``(`` (a function or aggregation).
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    # Grafana template variables ($instance, ${kind}, $__rate_interval).
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        # Durations and numbers (5m, 1e3) are skipped by the look-behind.
        name = match.group(1)
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return names
