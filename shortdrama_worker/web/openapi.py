"""``/openapi.json``, generated from the installed handlers' pydantic models."""

from __future__ import annotations

from typing import Any

from shortdrama_worker import __version__
from shortdrama_worker.aws.store import STATUSES
from shortdrama_worker.plugins import HandlerRegistry

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
_STATUS = {"type": "string", "enum": list(STATUSES)}
_ACCEPTED = {
    "type": "object",
    "required": ["job_id", "task_id", "kind", "status", "created_at", "status_url"],
    "properties": {
        "job_id": {"type": "string"},
        "task_id": {"type": "string"},
        "kind": {"type": "string"},
        "status": _STATUS,
        "created_at": {"type": "number"},
        "status_url": {"type": "string"},
    },
}
_JOB = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "task_id": {"type": "string"},
        "kind": {"type": "string"},
        "status": _STATUS,
        "progress": {"type": "number"},
        "stage": {"type": ["string", "null"]},
        "result_url": {"type": ["string", "null"]},
        "manifest_id": {
            "type": ["string", "null"],
            "description": "Identifier of the C2PA manifest signed into the result file.",
        },
        "result": {"type": ["object", "null"]},
        "error_message": {"type": ["string", "null"]},
        "error": {"type": ["object", "null"]},
        "attempts": {"type": "integer"},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "status_url": {"type": "string"},
    },
}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _close_pattern_keyed_maps(node: Any) -> None:
    """Make ``dict[<str with a pattern>, V]`` fields refuse other keys, as the models do.

    pydantic renders such a field as ``patternProperties``; in JSON Schema that
    constrains only the keys that match and leaves every other key free, so a
    client (or a fuzzer) reading the document would send keys the API refuses.
    """
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if (
            node.get("type") == "object"
            and isinstance(patterns, dict)
            and len(patterns) == 1
            and "properties" not in node
            and "additionalProperties" not in node
        ):
            (pattern,) = patterns
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = False
        for value in node.values():
            _close_pattern_keyed_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_keyed_maps(value)


_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "wait=N (RFC 7240): answer when the job has finished, or after N seconds "
    "(at most api.max_wait_s) with the job as it is then. Other preferences are ignored, "
    "as RFC 7240 asks.",
    "schema": {"type": "string"},
}


def _listing_paths(id_param: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /api/v1/jobs`` (newest first, filtered, paged) and one job's event stream."""
    query = [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
        for name, schema, text in (
            ("status", {"type": "string"}, "comma list: pending, processing, completed, …"),
            ("kind", {"type": "string", "maxLength": 100}, "only jobs of this kind"),
            ("since", {"type": "string"}, "epoch seconds or ISO 8601"),
            ("until", {"type": "string"}, "epoch seconds or ISO 8601"),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "page size"),
            ("cursor", {"type": "string"}, "next_cursor of the previous page, as it was"),
        )
    ]
    listing = {
        "get": {
            "operationId": "list_jobs",
            "summary": "Jobs, newest first (the caller's own unless its key may read all)",
            "parameters": query,
            "responses": {
                "200": {
                    "description": "One page: jobs and next_cursor (null on the last page)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": _err("A filter or the cursor cannot be read"),
            },
        }
    }
    events: dict[str, Any] = {
        "parameters": id_param,
        "get": {
            "operationId": "job_events",
            "summary": "Server-sent events: the job's status and progress until it ends",
            "responses": {
                "200": {
                    "description": "text/event-stream of job views",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "404": _err("Unknown job"),
            },
        },
    }
    return {
        "/api/v1/jobs": listing,
        "/api/v1/jobs/{job_id}/events": events,
        "/api/v1/tasks/{job_id}/events": {
            **events,
            "get": {**events["get"], "operationId": "task_events"},
        },
    }


def build_openapi(registry: HandlerRegistry) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the job API with one submit path per handler."""
    schemas: dict[str, Any] = {"Error": _ERROR, "Accepted": _ACCEPTED, "Job": _JOB}
    paths: dict[str, Any] = {}
    for spec in registry:
        model = spec.cls.input_model
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        _close_pattern_keyed_maps(schema)
        schemas.update(schema.pop("$defs", {}))
        name = f"{model.__name__}_{spec.kind}"
        schemas[name] = schema
        operation = {
            "summary": spec.cls.description or f"Submit a {spec.kind} job",
            "tags": [spec.resource],
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    # Visible ASCII and spaces, as HTTP header values should be.
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[ -~]+$",
                    },
                },
                _PREFER,
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                },
            },
            "responses": {
                "202": {
                    "description": "Accepted. With an Idempotency-Key already used for the "
                    "same body: that job, as it is now, and the header Idempotent-Replayed.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}
                    },
                },
                "200": {
                    "description": "Finished within the wait asked for with Prefer: wait=N "
                    "(header Preference-Applied): the job as GET returns it.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                    },
                },
                "400": _err("Malformed JSON, or a multipart form that cannot be read"),
                "408": _err("Body not received within api.body_timeout_s"),
                "413": _err("Body too large"),
                "415": _err("Content-Type is not application/json or multipart/form-data"),
                "422": _err("Invalid input; one entry per field"),
                "429": _err(
                    "A per-key limit (rate, concurrency, jobs or spend per day) refused the "
                    "job; Retry-After says when to try again, error.limit which limit"
                ),
                "503": _err("Task store or queue unreachable; nothing was written"),
            },
        }
        for suffix in ("jobs", "tasks"):
            op = {**operation, "operationId": f"submit_{spec.kind}_{suffix}"}
            paths[f"/api/v1/{spec.slug}/{suffix}"] = {"post": op}
    job_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}
    id_param = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    for prefix in ("jobs", "tasks"):
        paths[f"/api/v1/{prefix}/{{job_id}}"] = {
            "parameters": id_param,
            "get": {
                "operationId": f"get_{prefix}",
                "summary": "Job status and result",
                "parameters": [_PREFER],
                "responses": {
                    "200": {"description": "The job", **job_ref},
                    "404": _err("Unknown job"),
                },
            },
            "delete": {
                "operationId": f"cancel_{prefix}",
                "summary": "Cancel a job",
                "responses": {
                    "202": {"description": "Cancel accepted", **job_ref},
                    "404": _err("Unknown job"),
                    "409": _err("Already finished"),
                },
            },
        }
    paths.update(_listing_paths(id_param))
    simple = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
    paths["/api/v1/handlers"] = {"get": {"operationId": "list_handlers", "responses": simple}}
    paths["/health"] = {"get": {"operationId": "health", "responses": simple}}
    paths["/ready"] = {
        "get": {
            "operationId": "ready",
            "responses": {
                **simple,
                "503": {
                    "description": "Not ready",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "shortdrama-worker job API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
