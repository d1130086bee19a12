"""Fuzzing the job API from its own ``/openapi.json`` with schemathesis.

The application runs as in production (handlers discovered through their entry
points) with the consumer off, so accepted jobs stay pending and nothing leaves
loopback. For every operation schemathesis generates requests that follow the
schema and requests that break it. The promises: no 5xx; every response matches
the document (status, content type, body schema); schema-breaking input is
refused with a 4xx; and every 4xx is a JSON ``{"error": {"code", "message"}}``
whose message names the problem.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from shortdrama_worker import keys
from shortdrama_worker.plugins import HandlerRegistry
from shortdrama_worker.web.openapi import build_openapi

# Per operation and generation mode: ~26 operations x 2 modes stay well under 90 s.
MAX_EXAMPLES = 25
# Refused for reasons the schema cannot express (cross-field rules, values such
# as "WIDTHxHEIGHT" checked by code, an Idempotency-Key reused with another body).
SEMANTIC_REFUSALS = {"invalid_input", "idempotency_key_reused"}
# The documented checks, less two this test makes itself: a schema-valid body may
# still be refused for the reasons above ("schema-valid input is accepted" is
# reported, not asserted), and "schema-breaking input is refused" is asserted
# below, on the status alone.
EXCLUDED_CHECKS = [
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.negative_data_rejection,
]


def problems_with_error_body(status: int, body: bytes, content_type: str) -> list[str]:
    """Why a 4xx body fails the error contract; empty when it keeps it."""
    if not content_type.startswith("application/json"):
        return [f"content type {content_type!r}, not JSON"]
    try:
        error = json.loads(body)["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError) as exc:
        return [f"no error.code/error.message ({exc!r}): {body[:200]!r}"]
    problems = []
    if not (isinstance(code, str) and code):
        problems.append(f"error.code is {code!r}")
    if not (isinstance(message, str) and message.strip()):
        problems.append(f"error.message is {message!r}")
    elif message.strip() == HTTPStatus(status).phrase:
        problems.append(f"error.message {message!r} only repeats the status")
    for entry in error.get("fields", []):
        if entry["field"] != "(body)" and entry["field"] not in message:
            problems.append(f"error.message does not name field {entry['field']!r}")
    return problems


@dataclass
class FuzzReport:
    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    refused_valid: Counter[tuple[str, str]] = field(default_factory=Counter)
    not_applicable: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        operations = sorted({label for label, _, _ in self.statuses})
        by_status: Counter[int] = Counter()
        by_mode: Counter[str] = Counter()
        for (_, mode, status), n in self.statuses.items():
            by_status[status] += n
            by_mode[mode] += n
        lines = [
            f"schemathesis {schemathesis.__version__}: {sum(by_status.values())} requests, "
            f"{len(operations)} operations, {self.seconds:.1f} s",
            "  by mode: " + ", ".join(f"{m} {n}" for m, n in sorted(by_mode.items())),
            "  by status: " + ", ".join(f"{s} x{n}" for s, n in sorted(by_status.items())),
            f"  modes with nothing to generate: {len(self.not_applicable)}",
            f"  failures: {len(self.failures)}",
        ]
        for (label, code), n in sorted(self.refused_valid.items()):
            lines.append(f"  schema-valid but refused ({code}) x{n}: {label}")
        for where, text in self.failures.items():
            lines.append(f"FAILED {where}:\n{text}")
        return "\n".join(lines)


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    report: FuzzReport,
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=10)
        status = response.status_code
        report.statuses[(operation.label, mode.value, status)] += 1
        case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)
        if 400 <= status < 500:
            content_type = response.headers.get("content-type", [""])[0]
            problems = problems_with_error_body(status, response.content, content_type)
            assert not problems, f"{status}: {problems}\n{case.as_curl_command()}"
        if mode is GenerationMode.POSITIVE and status == 422:
            code = json.loads(response.content)["error"]["code"]
            assert code in SEMANTIC_REFUSALS, f"{code}: {response.content[:300]!r}"
            report.refused_valid[(operation.label, code)] += 1
        if mode is GenerationMode.NEGATIVE and status < 400:
            raise AssertionError(
                f"schema-breaking request accepted ({status})\n{case.as_curl_command()}"
            )

    where = f"{operation.label} [{mode.value}]"
    try:
        run()
    except Unsatisfiable:
        # Nothing breaks a schema with no parameters, or a free-form string.
        report.not_applicable.append(where)
    except (Exception, BaseExceptionGroup) as exc:
        report.failures[where] = str(exc)[:3000]


def fuzz(base_url: str) -> FuzzReport:
    """Blocking: run in a thread while the event loop serves the application."""
    report = FuzzReport()
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                operation = result.ok()
                fuzz_operation(operation, mode, base_url, session, report)
    report.seconds = time.monotonic() - started
    return report


@pytest.mark.slow
async def test_fuzzing_from_the_openapi_document_finds_no_5xx_and_only_json_errors(
    make_settings: Any, start_app: Any
) -> None:
    # No consumer: no job finishes, so a generated `Prefer: wait=N` would hold each
    # request for N seconds; a one-second ceiling keeps the run short.
    settings = make_settings(consumer={"enabled": False}, api={"max_wait_s": 1})
    app, client = await start_app(settings)
    assert len(app[keys.REGISTRY].by_kind) >= 6, "the installed handlers were not discovered"
    base_url = str(client.make_url("")).rstrip("/")

    report = await asyncio.to_thread(fuzz, base_url)
    print(report.summary())

    assert report.failures == {}, report.summary()
    submits = [label for label, _, _ in report.statuses if label.startswith("POST")]
    assert len(set(submits)) == 2 * len(app[keys.REGISTRY].by_kind)
    # Schema-breaking bodies reached every submit route and were all refused.
    for label in set(submits):
        refused = sum(
            n
            for (lbl, mode, status), n in report.statuses.items()
            if lbl == label and mode == "negative" and 400 <= status < 500
        )
        assert refused > 0, f"no invalid request reached {label}"


def test_error_contract_check_names_what_it_rejects() -> None:
    good = json.dumps(
        {"error": {"code": "invalid_input", "message": "size: bad", "fields": [{"field": "size"}]}}
    ).encode()
    assert problems_with_error_body(422, good, "application/json") == []
    assert problems_with_error_body(404, b"404: Not Found", "text/plain") == [
        "content type 'text/plain', not JSON"
    ]
    bare = json.dumps({"error": {"code": "not_found", "message": "Not Found"}}).encode()
    assert problems_with_error_body(404, bare, "application/json") == [
        "error.message 'Not Found' only repeats the status"
    ]
    unnamed = json.dumps(
        {"error": {"code": "invalid_input", "message": "bad", "fields": [{"field": "size"}]}}
    ).encode()
    assert problems_with_error_body(422, unnamed, "application/json") == [
        "error.message does not name field 'size'"
    ]


def test_maps_keyed_by_marker_refuse_other_keys_in_the_document() -> None:
    # pydantic's patternProperties alone would let a client send any key.
    doc = build_openapi(HandlerRegistry.discover(["comfy_workflow"]))
    schema = doc["components"]["schemas"]["ComfyWorkflowInput_comfy_workflow"]
    for name in ("images", "values"):
        prop = schema["properties"][name]
        assert prop["additionalProperties"] is False, name
        assert prop["propertyNames"]["pattern"] == "^[a-z][a-z0-9_]*$", name
        assert list(prop["patternProperties"]) == ["^[a-z][a-z0-9_]*$"], name


@pytest.mark.parametrize(
    "wrong",
    [{"steps": True}, {"steps": "12"}, {"cfg": "2.5"}, {"lightning": "yes"}],
    ids=["true-for-integer", "string-for-integer", "string-for-number", "string-for-boolean"],
)
async def test_values_of_the_wrong_json_type_are_refused(
    make_settings: Any, start_app: Any, wrong: dict[str, Any]
) -> None:
    # Found by the fuzzer: the schema says integer/number/boolean; the API took these.
    settings = make_settings(consumer={"enabled": False}, handlers={"allow": ["qwen_edit"]})
    _, client = await start_app(settings)
    body = {"images": ["https://cdn.example.com/frame.png"], "prompt": "a pier", **wrong}
    resp = await client.post("/api/v1/qwen-image-edit/jobs", json=body)
    assert resp.status == 422, await resp.text()
    (field,) = wrong
    assert field in (await resp.json())["error"]["message"]
