"""structlog set-up: JSON lines in production, a console renderer on a TTY.

Called once by the CLI (``serve``), never at import. Records from the standard
``logging`` module (aiohttp, botocore) go through the same processors so the
log stays one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from shortdrama_worker.settings import LogSettings


def configure_logging(settings: LogSettings) -> None:
    level = logging.getLevelName(settings.level)
    use_json = settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _keep,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore logs every request at DEBUG; keep it at WARNING unless asked.
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # aiohttp's access log duplicates our request metrics.
    logging.getLogger("aiohttp.access").setLevel(max(level, logging.WARNING))


def _keep(_logger: Any, _name: str, event: Any) -> Any:
    return event
