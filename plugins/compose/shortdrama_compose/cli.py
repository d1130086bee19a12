"""``shortdrama-compose check``: is what the configuration names really there?

Reads ``[handlers.options.<kind>]`` from the worker's TOML file and checks,
without creating anything: for SageMaker, the bucket and each endpoint
(exists, ``InService``, real-time or asynchronous as configured); for
ComfyUI, the workflow template's markers and that ComfyUI answers.

Exit codes: 0 all there; 1 something is missing; 2 the configuration is
invalid. ``SHORTDRAMA_*`` environment overrides are not read here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from shortdrama_compose.aws import open_clients
from shortdrama_compose.check import Finding, check, problems
from shortdrama_compose.comfy import ComfyClient
from shortdrama_compose.comfy_backend import REQUIRED_MARKERS
from shortdrama_compose.model import ComposeSettings
from shortdrama_compose.template import TemplateError, load_template
from shortdrama_compose.workflow import Workflow, WorkflowError

EXIT_OK, EXIT_MISSING, EXIT_CONFIG = 0, 1, 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shortdrama-compose", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check the configured back end; create nothing")
    p.add_argument("--config", help="the worker's TOML file (default: $SHORTDRAMA_CONFIG)")
    p.add_argument("--kind", default="compose", help="the handler's kind (default: compose)")
    args = parser.parse_args(argv)
    try:
        settings = load_section(args.config or os.environ.get("SHORTDRAMA_CONFIG"), args.kind)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    findings = asyncio.run(run_checks(settings))
    for finding in findings:
        print(finding)
    sys.exit(EXIT_MISSING if problems(findings) else EXIT_OK)


class ConfigError(Exception):
    pass


def load_section(path: str | None, kind: str) -> ComposeSettings:
    """The handler's settings section, validated as the worker validates it."""
    section: Any = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        section = document.get("handlers", {}).get("options", {}).get(kind, {})
    try:
        return ComposeSettings.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(f"[handlers.options.{kind}]: {exc}") from None


async def run_checks(settings: ComposeSettings) -> list[Finding]:
    if settings.backend == "sagemaker":
        assert settings.sagemaker is not None
        try:
            load_template(
                settings.sagemaker.request_template, settings.sagemaker.request_template_file
            )
        except TemplateError as exc:
            return [Finding(False, str(exc))]
        async with open_clients(settings.sagemaker) as clients:
            return await check(settings.sagemaker, clients)
    return await _check_comfy(settings)


async def _check_comfy(settings: ComposeSettings) -> list[Finding]:
    config = settings.comfyui
    try:
        workflow = Workflow.load(config.workflow_file)
        workflow.require(REQUIRED_MARKERS)
    except WorkflowError as exc:
        return [Finding(False, str(exc))]
    findings = [Finding(True, f"workflow {workflow.source} has every marker")]
    async with aiohttp.ClientSession() as http:
        up = await ComfyClient(config.base_url, http).healthy()
    findings.append(
        Finding(up, f"ComfyUI at {config.base_url} " + ("answers" if up else "does not answer"))
    )
    return findings
