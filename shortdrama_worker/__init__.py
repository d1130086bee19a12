"""shortdrama-worker: the AI image back end of a short-drama studio."""

__version__ = "0.1.0"
