"""The C2PA manifest of one result file, as a pure function of the job's facts.

What is signed (see docs/provenance.md):

* ``c2pa.actions.v2``: ``c2pa.opened`` (the input edited) then ``c2pa.edited``,
  or ``c2pa.created``; with the IPTC digital source type where a model drew
  pixels, the model as software agent and the job as description;
* one ingredient per input the job fetched: its field name as title, its
  format, and ``sha256:<hex of its bytes>`` as instance id, never its pixels
  (an input that carries Content Credentials brings its own manifest along);
* ``com.shortdrama.job``: job id, kind, attempt, submitting key id, model,
  provider, the inputs' hashes and any consent attestations.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

from shortdrama_worker.contract import IMAGE_TYPES, Provenance

IPTC_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
JOB_ASSERTION = "com.shortdrama.job"
GENERATOR = "shortdrama-worker"
_MODEL_SOURCES = {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"}


@dataclass(frozen=True)
class InputRecord:
    """One input the job fetched, as it arrived."""

    field: str
    data: bytes
    content_type: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class JobFacts:
    """What the manifest says about the job that made the file."""

    job_id: str
    kind: str
    attempt: int
    submitted_by: str | None
    created_at: float
    name: str


@dataclass(frozen=True)
class Ingredient:
    """An ingredient's definition and the bytes c2pa reads it from."""

    definition: dict[str, Any]
    record: InputRecord


def build_manifest(
    facts: JobFacts,
    provenance: Provenance,
    inputs: list[InputRecord],
    *,
    label: str,
    content_type: str,
    version: str,
) -> tuple[dict[str, Any], list[Ingredient]]:
    """The manifest definition and its ingredients for one result file."""
    unique = _unique(inputs)
    parent = _parent(provenance, unique)
    model_made = provenance.source_type in _MODEL_SOURCES
    ingredients = []
    for index, record in enumerate(unique):
        relationship = (
            "parentOf" if record is parent else "inputTo" if model_made else "componentOf"
        )
        ingredients.append(
            Ingredient(
                {
                    "title": record.field,
                    "format": record.content_type or "application/octet-stream",
                    "relationship": relationship,
                    "instance_id": f"sha256:{record.sha256}",
                    "label": f"input-{index}",
                },
                record,
            )
        )
    actions = _actions(facts, provenance, ingredients)
    definition = {
        "label": label,
        "title": facts.name,
        "format": content_type,
        "claim_generator_info": [{"name": GENERATOR, "version": version}],
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}},
            {"label": JOB_ASSERTION, "data": job_assertion(facts, provenance, unique)},
        ],
    }
    return definition, ingredients


def _unique(inputs: list[InputRecord]) -> list[InputRecord]:
    """Inputs in fetch order, each field and content once (a refetch adds nothing)."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for record in inputs:
        key = (record.field, record.sha256)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def _parent(provenance: Provenance, inputs: list[InputRecord]) -> InputRecord | None:
    """The input an edit starts from: the declared field, else the first image."""
    if provenance.action != "c2pa.edited":
        return None
    images = [r for r in inputs if r.content_type in IMAGE_TYPES]
    if provenance.parent is not None:
        named = [r for r in images if r.field == provenance.parent]
        if named:
            return named[0]
    return images[0] if images else None


def _actions(
    facts: JobFacts, provenance: Provenance, ingredients: list[Ingredient]
) -> list[dict[str, Any]]:
    parents = [i for i in ingredients if i.definition["relationship"] == "parentOf"]
    others = [i.definition["label"] for i in ingredients if i not in parents]
    agent = {"name": _agent(facts, provenance)}
    description = provenance.description or f"{facts.kind} job {facts.job_id}"
    if parents:
        edited: dict[str, Any] = {
            "action": "c2pa.edited",
            "softwareAgent": agent,
            "description": description,
        }
        if provenance.source_type:
            edited["digitalSourceType"] = IPTC_SOURCE + provenance.source_type
        if others:
            edited["parameters"] = {"ingredientIds": others}
        opened = {
            "action": "c2pa.opened",
            "parameters": {"ingredientIds": [parents[0].definition["label"]]},
        }
        return [opened, edited]
    # Nothing to edit: the file is new. C2PA requires a source type on creation;
    # without a model's claim it is an algorithm's output.
    created: dict[str, Any] = {
        "action": "c2pa.created",
        "softwareAgent": agent,
        "description": description,
        "digitalSourceType": IPTC_SOURCE + (provenance.source_type or "algorithmicMedia"),
    }
    if others:
        created["parameters"] = {"ingredientIds": others}
    return [created]


def _agent(facts: JobFacts, provenance: Provenance) -> str:
    if provenance.model:
        where = f" via {provenance.provider}" if provenance.provider else ""
        return f"{provenance.model}{where}"
    return f"{GENERATOR} {facts.kind}"


def job_assertion(
    facts: JobFacts, provenance: Provenance, inputs: list[InputRecord]
) -> dict[str, Any]:
    """The ``com.shortdrama.job`` assertion: the job, its requester, model and inputs."""
    hashes = {r.field: r.sha256 for r in inputs}
    created = datetime.datetime.fromtimestamp(facts.created_at, datetime.UTC)
    data: dict[str, Any] = {
        "job_id": facts.job_id,
        "kind": facts.kind,
        "attempt": facts.attempt,
        "submitted_by": facts.submitted_by,
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "file": facts.name,
        "model": provenance.model,
        "provider": provenance.provider,
        "inputs": [
            {
                "field": r.field,
                "sha256": r.sha256,
                "content_type": r.content_type,
                "bytes": len(r.data),
            }
            for r in inputs
        ],
    }
    if provenance.consent:
        data["consent"] = {
            field: {
                "release_form": c.release_form,
                "attested_by": c.attested_by,
                # Binds the attestation to the exact face that was used.
                "input_sha256": hashes.get(field),
            }
            for field, c in provenance.consent.items()
        }
    if provenance.details:
        data["details"] = dict(provenance.details)
    return data
