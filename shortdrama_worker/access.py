"""Who may do what: the rules an API key carries, as plain functions.

``None`` is the caller when authentication is off: it may do everything.
"""

from __future__ import annotations

from shortdrama_worker.settings import ApiKeySettings


def may_submit(key: ApiKeySettings | None, kind: str) -> bool:
    return key is None or "*" in key.kinds or kind in key.kinds


def may_read(key: ApiKeySettings | None, submitted_by: str | None) -> bool:
    """A key reads its own jobs; a ``read_all`` key reads every job."""
    return key is None or key.read_all or submitted_by == key.id
