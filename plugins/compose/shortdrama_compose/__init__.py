"""shortdrama-compose: a handler plugin for shortdrama-worker.

A person wearing given clothing items in a given place, composed by ComfyUI
(Qwen-Image-Edit-2509) or by an existing SageMaker endpoint. Nothing runs at
import; the worker loads ``ComposeHandler`` through its entry point.
"""
