"""The five kinds: face, voice and text readings, their fusion, and all in one call.

Models load in ``startup`` (a missing one stops the daemon, naming it) and run
in worker threads, so the event loop keeps serving while a job computes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from shortdrama_worker.contract import (
    CONTRACT_VERSION,
    FaceBox,
    Handler,
    HandlerEnv,
    HandlerInput,
    ImageRef,
    InputError,
    JobContext,
    NoSettings,
    PermanentJobError,
)

from shortdrama_emotion import face, voice
from shortdrama_emotion.fusion import FusionSettings, ModuleReading, Source, fuse
from shortdrama_emotion.text import Language, TextAnalysers
from shortdrama_emotion.voice import AUDIO_MAX_BYTES, AudioRef

_TEXT = "Dialogue in English or Chinese (up to 5000 characters)."
LanguageField = Field(default=None, description="en or zh; detected from the script when left out.")


class VoiceSettings(BaseModel):
    """``[handlers.options.voice_emotion]``."""

    model_config = ConfigDict(extra="forbid")

    max_duration_s: float = Field(default=120.0, gt=0, le=3600)


class AnalysisSettings(FusionSettings, VoiceSettings):
    """``[handlers.options.emotion_analysis]``: fusion reliability and voice limits."""


# -- face ----------------------------------------------------------------------


class FaceEmotionInput(HandlerInput):
    image_url: ImageRef = Field(description="The frame: https://, s3:// or data:image/… URI.")
    face_index: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="One face, from 0 left to right (as face_mask); every face if left out.",
    )


def _pick(faces: list[FaceBox], index: int | None) -> list[tuple[int, FaceBox]]:
    if not faces:
        raise PermanentJobError("no face found", code="no_face")
    if index is None:
        return list(enumerate(faces))
    if index >= len(faces):
        raise PermanentJobError(
            f"face_index {index} is out of range: {len(faces)} face(s) found "
            f"(valid: 0–{len(faces) - 1})",
            code="face_index_out_of_range",
        )
    return [(index, faces[index])]


async def _read_faces(
    model: face.FaceEmotionModel, ctx: JobContext, ref: str, index: int | None, field: str
) -> dict[str, Any]:
    image = await ctx.fetch_image(ref, field=field)
    faces = await ctx.detect_faces(image)
    chosen = _pick(faces, index)
    started = time.perf_counter()

    def classify() -> list[dict[str, Any]]:
        grey = face.grey_frame(image)
        return [{"index": i, **face.read_face(model, grey, box)} for i, box in chosen]

    readings = await asyncio.to_thread(classify)
    ctx.metrics.observe_phase(ctx.kind, "face_emotion", time.perf_counter() - started)
    return {"faces": readings, "faces_found": len(faces), "model": model.name}


class FaceEmotionHandler(Handler[FaceEmotionInput, NoSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = FaceEmotionInput
    timeout_s = 60.0
    description = "Facial emotion per face: class probabilities, valence and arousal (fer model)."

    def __init__(self, env: HandlerEnv[NoSettings]) -> None:
        super().__init__(env)
        self.model: face.FaceEmotionModel | None = None

    async def startup(self) -> None:
        self.model = await asyncio.to_thread(face.FaceEmotionModel.load)

    async def run(self, params: FaceEmotionInput, ctx: JobContext) -> dict[str, Any]:
        assert self.model is not None, "startup() loads the model"
        result = await _read_faces(
            self.model, ctx, params.image_url, params.face_index, "image_url"
        )
        return {"face_index": params.face_index, **result}


# -- voice ---------------------------------------------------------------------


class VoiceEmotionInput(HandlerInput):
    audio_url: AudioRef = Field(description="Speech as WAV or MP3.")


async def _read_voice(ctx: JobContext, ref: str, field: str, max_s: float) -> dict[str, Any]:
    fetched = await ctx.fetch_file(
        ref, field=field, accept=voice.AUDIO_TYPES, max_bytes=AUDIO_MAX_BYTES
    )
    started = time.perf_counter()
    reading = await asyncio.to_thread(
        voice.read_voice, fetched.data, field=field, max_duration_s=max_s
    )
    ctx.metrics.observe_phase(ctx.kind, "voice_features", time.perf_counter() - started)
    return {"content_type": fetched.content_type, **reading}


class VoiceEmotionHandler(Handler[VoiceEmotionInput, VoiceSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = VoiceEmotionInput
    settings_model = VoiceSettings
    timeout_s = 120.0
    description = "Arousal of speech from acoustic features (a documented heuristic, no model)."

    async def run(self, params: VoiceEmotionInput, ctx: JobContext) -> dict[str, Any]:
        return await _read_voice(ctx, params.audio_url, "audio_url", self.settings.max_duration_s)


# -- text ----------------------------------------------------------------------


class TextSentimentInput(HandlerInput):
    text: str = Field(min_length=1, max_length=5000, description=_TEXT)
    language: Language | None = LanguageField


class TextSentimentHandler(Handler[TextSentimentInput, NoSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = TextSentimentInput
    timeout_s = 30.0
    description = "Valence of English (VADER) or Chinese (SnowNLP) dialogue."

    def __init__(self, env: HandlerEnv[NoSettings]) -> None:
        super().__init__(env)
        self.analysers: TextAnalysers | None = None

    async def startup(self) -> None:
        # SnowNLP loads its segmenter and classifier when imported: seconds, once.
        self.analysers = await asyncio.to_thread(TextAnalysers)

    async def run(self, params: TextSentimentInput, ctx: JobContext) -> dict[str, Any]:
        assert self.analysers is not None, "startup() loads the analysers"
        return await asyncio.to_thread(self.analysers.read, params.text, params.language)


# -- fusion --------------------------------------------------------------------


class EmotionStateInput(HandlerInput):
    modules: list[ModuleReading] = Field(
        min_length=1,
        max_length=16,
        description="Readings to fuse: source, valence, arousal, confidence.",
    )


class EmotionStateHandler(Handler[EmotionStateInput, FusionSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = EmotionStateInput
    settings_model = FusionSettings
    timeout_s = 10.0
    description = "Fuse face/voice/text readings into one emotion state (getEmotionState)."

    async def run(self, params: EmotionStateInput, ctx: JobContext) -> dict[str, Any]:
        return fuse(params.modules, self.settings.reliability)


# -- one call ------------------------------------------------------------------


class EmotionAnalysisInput(HandlerInput):
    image_url: ImageRef | None = Field(default=None, description="A frame with the speaker's face.")
    face_index: int = Field(default=0, ge=0, le=64, description="Which face, as face_mask.")
    audio_url: AudioRef | None = Field(default=None, description="The line as WAV or MP3.")
    text: str | None = Field(default=None, min_length=1, max_length=5000, description=_TEXT)
    language: Language | None = LanguageField

    @model_validator(mode="after")
    def _something_to_read(self) -> EmotionAnalysisInput:
        if self.image_url is None and self.audio_url is None and self.text is None:
            raise ValueError("give at least one of image_url, audio_url and text")
        return self


Reader = Callable[[], Awaitable[dict[str, Any]]]


class EmotionAnalysisHandler(Handler[EmotionAnalysisInput, AnalysisSettings]):
    contract_version = CONTRACT_VERSION
    resource = "cpu"
    input_model = EmotionAnalysisInput
    settings_model = AnalysisSettings
    timeout_s = 180.0
    description = "Face, voice and text readings of one moment and their fusion, in one job."

    def __init__(self, env: HandlerEnv[AnalysisSettings]) -> None:
        super().__init__(env)
        self.model: face.FaceEmotionModel | None = None
        self.analysers: TextAnalysers | None = None

    async def startup(self) -> None:
        self.model = await asyncio.to_thread(face.FaceEmotionModel.load)
        self.analysers = await asyncio.to_thread(TextAnalysers)

    def _readers(self, params: EmotionAnalysisInput, ctx: JobContext) -> dict[Source, Reader]:
        assert self.model is not None and self.analysers is not None, "startup() loads them"
        model, analysers = self.model, self.analysers
        readers: dict[Source, Reader] = {}
        if params.image_url is not None:
            image_url = params.image_url

            async def read_face() -> dict[str, Any]:
                found = await _read_faces(model, ctx, image_url, params.face_index, "image_url")
                return {
                    **found["faces"][0],
                    "faces_found": found["faces_found"],
                    "model": model.name,
                }

            readers["face"] = read_face
        if params.audio_url is not None:
            audio_url, max_s = params.audio_url, self.settings.max_duration_s
            readers["voice"] = lambda: _read_voice(ctx, audio_url, "audio_url", max_s)
        if params.text is not None:
            text, language = params.text, params.language
            readers["text"] = lambda: asyncio.to_thread(analysers.read, text, language)
        return readers

    async def run(self, params: EmotionAnalysisInput, ctx: JobContext) -> dict[str, Any]:
        readers = self._readers(params, ctx)
        outcomes = await asyncio.gather(*(r() for r in readers.values()), return_exceptions=True)
        readings: dict[Source, Any] = {}
        errors: dict[Source, dict[str, str]] = {}
        for source, outcome in zip(readers, outcomes, strict=True):
            if isinstance(outcome, InputError) or not isinstance(outcome, PermanentJobError | dict):
                # A bad input is the caller's to fix, and a crash is not a
                # reading: either fails the job rather than hiding in a field.
                raise outcome
            if isinstance(outcome, PermanentJobError):
                # Nothing to read in this input (no face, no speech): the other
                # modules still answer.
                errors[source] = {"code": outcome.code, "message": outcome.message}
            else:
                readings[source] = outcome
        if not readings:
            first = next(iter(errors.values()))
            raise PermanentJobError(first["message"], code=first["code"])
        modules = [
            ModuleReading(
                source=source,
                valence=reading["valence"],
                arousal=reading["arousal"],
                confidence=reading["confidence"],
            )
            for source, reading in readings.items()
        ]
        return {
            **{str(source): reading for source, reading in readings.items()},
            "errors": errors,
            "state": fuse(modules, self.settings.reliability),
        }
