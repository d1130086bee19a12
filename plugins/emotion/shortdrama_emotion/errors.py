"""Errors of this plugin that are not job errors."""

from __future__ import annotations


class ModelUnavailableError(RuntimeError):
    """A model or its runtime is not installed; raised at start-up, naming what is missing."""
