"""Emotion readings for shortdrama-worker: face, voice, text, and their fusion.

A plugin distribution: the host finds these handlers through the
``shortdrama_worker.handlers`` entry points in this package's metadata. It
imports only ``shortdrama_worker.contract`` from the host. Nothing heavy is
imported here; models load in each handler's ``startup``.
"""

from shortdrama_emotion.handlers import (
    EmotionAnalysisHandler,
    EmotionStateHandler,
    FaceEmotionHandler,
    TextSentimentHandler,
    VoiceEmotionHandler,
)

__all__ = [
    "EmotionAnalysisHandler",
    "EmotionStateHandler",
    "FaceEmotionHandler",
    "TextSentimentHandler",
    "VoiceEmotionHandler",
]
