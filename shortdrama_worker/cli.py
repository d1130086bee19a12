"""``shortdrama-worker``: serve, init, handlers, jobs, submit, status, cancel, verify, certs.

Exit codes: 0 success; 1 the job failed or was cancelled; 2 usage or
configuration error (a busy port included); 3 the service or AWS could not be
reached; 4 ``--wait`` ran out of time with the job still pending or running;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import faulthandler
import json
import mimetypes
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from shortdrama_worker import __version__

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_WAIT_TIMEOUT = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shortdrama-worker",
        description=__doc__.splitlines()[0],
        epilog="Exit codes: 0 ok, 1 job failed or cancelled, 2 usage or configuration, "
        "3 daemon or AWS unreachable, 4 --wait timed out, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--config", help="TOML file (default: $SHORTDRAMA_CONFIG)")
    # --config is accepted after the command too (`serve --config FILE`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the job API and the SQS consumer")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "init", parents=[common], help="create queues, DLQs, table and bucket (idempotent)"
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("handlers", parents=[common], help="list installed handler kinds")
    p.set_defaults(func=cmd_handlers)

    p = sub.add_parser("submit", parents=[common], help="submit a job to a running daemon")
    p.add_argument("kind", help="kind (face_mask) or route slug (face-mask)")
    p.add_argument("--input", help="job input as a JSON object")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="[FIELD=]PATH",
        help="a local image sent inline; FIELD defaults to image_url (repeatable)",
    )
    p.add_argument("--wait", action="store_true", help="wait and show progress until it ends")
    p.add_argument("--output", help="with --wait: download the result to this file")
    p.add_argument("--api", help="API base URL (default from config)")
    p.add_argument("--idempotency-key")
    p.add_argument("--api-key", help="API key (default: $SHORTDRAMA_API_KEY)")
    p.add_argument("--timeout", type=float, default=1800.0, help="--wait limit in seconds")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[common], help="show a job")
    p.add_argument("job_id")
    p.add_argument("--api-key", help="API key (default: $SHORTDRAMA_API_KEY)")
    p.add_argument("--api", help="API base URL (default from config)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    p.add_argument(
        "--status", help="pending, processing, completed, failed, cancelled (comma list)"
    )
    p.add_argument("--kind")
    p.add_argument("--since", help="epoch seconds or ISO 8601")
    p.add_argument("--until", help="epoch seconds or ISO 8601")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", help="next_cursor of a previous page")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--api-key", help="API key (default: $SHORTDRAMA_API_KEY)")
    p.add_argument("--api", help="API base URL (default from config)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cancel", parents=[common], help="cancel a pending or running job")
    p.add_argument("job_id")
    p.add_argument("--api-key", help="API key (default: $SHORTDRAMA_API_KEY)")
    p.add_argument("--api", help="API base URL (default from config)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "verify", help="print a file's Content Credentials (C2PA) and whether they validate"
    )
    p.add_argument("file")
    p.add_argument(
        "--trust", metavar="CA.pem", help="CA certificate(s) whose signers count as trusted"
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("certs", help="make a development CA and C2PA signing certificate")
    p.add_argument(
        "--dev", action="store_true", required=True, help="a development one (the only kind)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write them to")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("keygen", help="make an API key and the [[auth.keys]] entry for it")
    p.add_argument("--id", required=True, help="name recorded as submitted_by")
    p.add_argument("--kinds", default="*", help="comma-separated kinds it may submit")
    p.set_defaults(func=cmd_keygen)
    return parser


def cmd_keygen(args: argparse.Namespace) -> int:
    from shortdrama_worker.web.auth import new_key

    key, digest = new_key()
    kinds = ", ".join(f'"{k.strip()}"' for k in args.kinds.split(",") if k.strip())
    print(f"# give the client: {key}", file=sys.stderr)
    print(f'[[auth.keys]]\nid = "{args.id}"\nsha256 = "{digest}"\nkinds = [{kinds}]')
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from shortdrama_worker.contract import sniff_content_type
    from shortdrama_worker.provenance import read_credentials

    file = Path(args.file)
    try:
        data = file.read_bytes()
        trust = Path(args.trust).read_text() if args.trust else None
    except OSError as exc:
        raise CliError(f"{exc.filename}: {exc.strerror}") from None
    report = read_credentials(data, sniff_content_type(data), trust_anchors=trust)
    if report.state is None:
        print(f"{file}: no Content Credentials (absence proves nothing about the file's origin)")
        return EXIT_JOB_FAILED
    print(json.dumps(report.store, indent=2, ensure_ascii=False))
    job = report.assertion()
    signer = report.active.get("signature_info", {})
    print(f"manifest:  {report.manifest_id}")
    print(f"signed by: {signer.get('common_name')} (issuer {signer.get('issuer')})")
    if job:
        print(
            f"job:       {job.get('job_id')} ({job.get('kind')}), "
            f"submitted by {job.get('submitted_by') or 'an unauthenticated client'}"
        )
    if not report.valid:
        print(f"INVALID: {'; '.join(report.failures) or report.state}")
        return EXIT_JOB_FAILED
    trusted = (
        "trusted" if report.trusted else "not checked against a trust list (give --trust CA.pem)"
    )
    print(f"valid:     signature and content hashes check out; signer {trusted}")
    return EXIT_OK


def cmd_certs(args: argparse.Namespace) -> int:
    from shortdrama_worker.provenance import make_dev_certificate

    out = Path(args.out)
    if (out / "signer.key").exists():
        raise CliError(f"{out} already holds a signing key; choose another directory")
    files = make_dev_certificate(out.resolve())
    print(f"# development only: verifiers trust it only when given {files.ca}", file=sys.stderr)
    print(f'[provenance]\ncertificate = "{files.chain}"\nprivate_key = "{files.key}"')
    return EXIT_OK


def _auth_headers(args: argparse.Namespace) -> dict[str, str]:
    import os

    key = getattr(args, "api_key", None) or os.environ.get("SHORTDRAMA_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _settings(args: argparse.Namespace) -> Any:
    from shortdrama_worker.settings import ConfigError, load_settings

    try:
        return load_settings(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


# -- serve ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from shortdrama_worker.logconfig import configure_logging

    settings = _settings(args)
    configure_logging(settings.log)
    # A watchdog kill (SIGABRT) then leaves the stuck loop's stack in the journal.
    faulthandler.enable()
    from shortdrama_worker.serve import ServeError, serve

    try:
        return asyncio.run(serve(settings))
    except ServeError as exc:
        raise CliError(str(exc), exc.exit_code) from None


# -- init / handlers -----------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def run() -> None:
        from shortdrama_worker.aws.clients import open_clients
        from shortdrama_worker.aws.provision import provision

        async with open_clients(settings.aws, settings.aws.endpoint_url) as clients:
            for line in await provision(clients, settings):
                print(line)

    try:
        asyncio.run(run())
    except Exception as exc:
        raise CliError(f"init failed: {exc}", EXIT_UNREACHABLE) from None
    return EXIT_OK


def cmd_handlers(args: argparse.Namespace) -> int:
    from shortdrama_worker.plugins import HandlerRegistry, PluginError

    settings = _settings(args)
    try:
        registry = HandlerRegistry.discover(settings.handlers.allow)
    except PluginError as exc:
        raise CliError(str(exc)) from None
    rows = [("KIND", "ROUTE", "RESOURCE", "DISTRIBUTION")]
    rows += [(s.kind, f"/api/v1/{s.slug}/jobs", s.resource, s.distribution) for s in registry]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


# -- submit / status -----------------------------------------------------------


def _api_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    settings = _settings(args)
    if settings.api.public_url:
        return str(settings.api.public_url).rstrip("/")
    return f"http://{settings.api.host}:{settings.api.port}"


def _inline_image(path_arg: str) -> tuple[str, str]:
    field, _, path = path_arg.rpartition("=") if "=" in path_arg else ("image_url", "", path_arg)
    file = Path(path)
    if not file.is_file():
        raise CliError(f"--image {path_arg}: no such file")
    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if not mime.startswith("image/"):
        raise CliError(f"--image {path_arg}: not an image file ({mime})")
    encoded = base64.b64encode(file.read_bytes()).decode()
    return field, f"data:{mime};base64,{encoded}"


def cmd_submit(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {}
    if args.input:
        try:
            payload = json.loads(args.input)
        except ValueError as exc:
            raise CliError(f"--input is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise CliError("--input must be a JSON object")
    for image in args.image:
        field, uri = _inline_image(image)
        payload[field] = uri
    if not payload:
        raise CliError("nothing to submit: give --input JSON and/or --image PATH")
    if args.output and not args.wait:
        raise CliError("--output needs --wait")
    return asyncio.run(_submit(args, _api_url(args), payload))


async def _submit(args: argparse.Namespace, api: str, payload: dict[str, Any]) -> int:
    slug = args.kind.replace("_", "-")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    async with aiohttp.ClientSession(headers=_auth_headers(args)) as http:
        body = await _request(
            http, "POST", f"{api}/api/v1/{slug}/jobs", json=payload, headers=headers
        )
        job_id = body["job_id"]
        print(f"submitted {body['kind']} job {job_id}", file=sys.stderr)
        if not args.wait:
            print(job_id)
            return EXIT_OK
        job = await _wait(http, f"{api}/api/v1/jobs/{job_id}", args.timeout)
        if job["status"] != "completed":
            print(
                f"job {job_id} {job['status']}: {job.get('error_message') or ''}", file=sys.stderr
            )
            return EXIT_JOB_FAILED
        print(job["result_url"])
        if args.output:
            # A plain session: presigned URLs refuse a second auth mechanism.
            async with aiohttp.ClientSession() as plain, plain.get(job["result_url"]) as resp:
                if resp.status != 200:
                    raise CliError(f"result download failed: HTTP {resp.status}", EXIT_UNREACHABLE)
                data = await resp.read()
            await asyncio.to_thread(Path(args.output).write_bytes, data)
            print(f"saved {args.output}", file=sys.stderr)
        return EXIT_OK


async def _wait(http: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    delay = 0.2
    shown = ""
    while True:
        job = await _request(http, "GET", url)
        line = progress_line(job)
        if tty:
            print("\r" + line.ljust(60), end="", file=sys.stderr, flush=True)
        elif line != shown:  # a log file gets one line per change, not one per poll
            print(line, file=sys.stderr, flush=True)
        shown = line
        if job["status"] in ("completed", "failed", "cancelled"):
            if tty:
                print(file=sys.stderr)
            return job
        if time.monotonic() > deadline:
            raise CliError(
                f"still {job['status']} after {timeout:g} s; check later with `status`",
                EXIT_WAIT_TIMEOUT,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)


async def _request(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> dict[str, Any]:
    try:
        async with http.request(method, url, **kwargs) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = {"error": {"message": text[:200]}}
            if resp.status >= 400:
                message = body.get("error", {}).get("message", text[:200])
                code = EXIT_UNREACHABLE if resp.status >= 500 else EXIT_USAGE
                raise CliError(f"HTTP {resp.status}: {message}", code)
            return dict(body)
    except aiohttp.ClientConnectionError as exc:
        raise CliError(f"cannot reach the daemon at {url}: {exc}", EXIT_UNREACHABLE) from None


def cmd_status(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession(headers=_auth_headers(args)) as http:
            return await _request(http, "GET", f"{_api_url(args)}/api/v1/jobs/{args.job_id}")

    job = asyncio.run(run())
    print(json.dumps(job, indent=2))
    return EXIT_OK if job["status"] not in ("failed", "cancelled") else EXIT_JOB_FAILED


def progress_line(job: dict[str, Any]) -> str:
    """``processing  42.0% detecting``; a finished job shows no stage left over from its run."""
    stage = f" {job['stage']}" if job.get("stage") and job["status"] == "processing" else ""
    if job["status"] == "failed":
        stage = f" {job.get('error_message') or ''}".rstrip()
    return f"{job['status']:<10} {job.get('progress') or 0:5.1f}%{stage}"


def cmd_jobs(args: argparse.Namespace) -> int:
    params = {
        name: str(value)
        for name in ("status", "kind", "since", "until", "limit", "cursor")
        if (value := getattr(args, name)) is not None
    }

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession(headers=_auth_headers(args)) as http:
            return await _request(http, "GET", f"{_api_url(args)}/api/v1/jobs", params=params)

    page = asyncio.run(run())
    if args.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    rows = [("JOB", "KIND", "STATUS", "PROGRESS", "CREATED", "DURATION")]
    for job in page["jobs"]:
        total = (job.get("timings") or {}).get("total_s")
        rows.append(
            (
                job["job_id"],
                job["kind"],
                job["status"],
                f"{job.get('progress') or 0:.0f}%",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created_at"])),
                f"{total:.1f}s" if total is not None else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if page.get("next_cursor"):
        print(f"more: --cursor {page['next_cursor']}", file=sys.stderr)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession(headers=_auth_headers(args)) as http:
            return await _request(http, "DELETE", f"{_api_url(args)}/api/v1/jobs/{args.job_id}")

    job = asyncio.run(run())
    state = "cancelled" if job["status"] == "cancelled" else "cancel requested (it is running)"
    print(f"job {job['job_id']}: {state}")
    return EXIT_OK
