"""Clients for the paid image APIs: DashScope (Qwen-VL) and ARK (Seedream).

``http`` holds the call discipline every provider shares (rate limit, retry,
error classification, metrics); ``images`` fits images inside a provider's
limits; ``dashscope`` and ``seedream`` speak each API. Nothing here knows about
jobs beyond raising ``JobError`` subclasses the runner understands.
"""
