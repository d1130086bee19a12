"""docs/metrics.md lists exactly the metrics the daemon exports, with their types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from shortdrama_worker.metrics import Metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(
    r"^\|\s*`(?P<name>shortdrama_\w+)`\s*\|\s*(?P<type>\w+)\s*\|\s*(?P<unit>[^|]*)\|"
    r"\s*(?P<labels>[^|]*)\|\s*(?P<meaning>[^|]+)\|\s*$"
)


def _documented() -> dict[str, tuple[str, frozenset[str], str, str]]:
    """Exposed name -> (type, labels, unit, meaning), from the catalogue's tables."""
    rows: dict[str, tuple[str, frozenset[str], str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        name = match["name"]
        assert name not in rows, f"{name} documented twice"
        labels = frozenset(re.findall(r"`(\w+)`", match["labels"]))
        rows[name] = (match["type"], labels, match["unit"].strip(), match["meaning"].strip())
    return rows


def _exported() -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name -> (type, labels), from a fresh registry.

    Names and types come from the public ``collect()``; label names of a
    labelled metric with no children yet only from the collector itself.
    """
    metrics = Metrics(CollectorRegistry())
    label_names: dict[str, frozenset[str]] = {}
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            label_names[collector._name] = frozenset(collector._labelnames)
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in metrics.registry.collect():
        labels = set(label_names.get(family.name, frozenset()))
        if family.type == "counter":
            exposed = family.name + "_total"
        elif family.type == "info":
            exposed = family.name + "_info"
            # An info metric's labels are its values, set at start-up.
            labels.update(key for s in family.samples for key in s.labels)
        else:
            exposed = family.name
        out[exposed] = (family.type, frozenset(labels))
    return out


def test_every_exported_metric_is_documented_and_nothing_else() -> None:
    documented = set(_documented())
    exported = set(_exported())
    assert exported - documented == set(), "exported but missing from docs/metrics.md"
    assert documented - exported == set(), "documented in docs/metrics.md but not exported"


def test_documented_type_and_labels_match_the_code() -> None:
    documented = _documented()
    for name, (kind, labels) in _exported().items():
        doc_kind, doc_labels, _unit, _meaning = documented[name]
        assert doc_kind == kind, name
        assert doc_labels == labels, name


def test_units_and_meanings_are_filled_in() -> None:
    for name, (_kind, _labels, unit, meaning) in _documented().items():
        assert len(meaning) > 20, name
        if name.endswith("_seconds") or name.endswith("_seconds_total"):
            assert unit == "seconds", name
        else:
            assert unit, name


def test_no_label_carries_an_id() -> None:
    # Ids make a series per job: unbounded cardinality that takes Prometheus down.
    for name, (_kind, labels) in _exported().items():
        assert not any("id" in label.split("_") for label in labels), name


def test_job_duration_buckets_reach_thirty_minutes() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.job_duration.labels("qwen_edit", "completed").observe(1)
    bounds = {
        float(s.labels["le"])
        for family in metrics.registry.collect()
        if family.name == "shortdrama_job_duration_seconds"
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    }
    assert max(bounds) == 1800
