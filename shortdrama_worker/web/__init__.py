"""Routes for people and clients beyond submit/status: the job list, waiting,
live events, the browser console and the API docs.

Kept apart from ``api.py`` so the submission path stays small; ``add_routes``
here registers everything this package serves.
"""

from __future__ import annotations

from aiohttp import web

from shortdrama_worker.web import console, jobs


def add_routes(app: web.Application) -> None:
    """Register the list, events, console and docs routes (before ``api.add_routes``)."""
    jobs.add_routes(app)
    console.add_routes(app)
