"""Voice: acoustic features of speech, and a documented heuristic for arousal.

No registry package ships a trained speech-emotion model, so this is not one.
The features (pitch level and range, loudness, voiced-segment rate, spectral
balance) are measured with numpy; arousal is a fixed formula over them, based
on the well-replicated finding that activated speech is wider in pitch range,
faster, louder and brighter (more energy above 1 kHz) than calm speech.
Valence is not estimated: those same cues do not separate pleasant from
unpleasant (joy and anger are both high, wide and loud), so claiming a valence
without a trained model would be a guess.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import soundfile
from numpy.typing import NDArray
from shortdrama_worker.contract import InputError, PermanentJobError, file_ref

AUDIO_TYPES = ("audio/wav", "audio/mpeg")
AUDIO_MAX_BYTES = 32 * 1024 * 1024
AudioRef = file_ref(
    accept=AUDIO_TYPES,
    max_bytes=AUDIO_MAX_BYTES,
    description="Speech as WAV or MP3: https:// URL, s3://bucket/key or data:audio/…;base64,… URI.",
)
"""An input field holding speech: the host fetches it and checks it is WAV or MP3."""

METHOD = (
    "heuristic, not a trained model: arousal = tanh of a fixed weighted sum of pitch range, "
    "voiced-segment rate, spectral balance and loudness, each against a typical value for "
    "conversational speech; valence is not estimated from acoustics (null)"
)

_FRAME_S = 0.040
_HOP_S = 0.010
_F0_MIN, _F0_MAX = 60.0, 500.0
_VOICING = 0.45  # normalised autocorrelation peak above which a frame is voiced
_MIN_VOICED_S = 0.5

# (feature, typical value, spread, weight). The typical values are rough
# figures for relaxed conversational speech recorded at a sensible level (pitch
# range p10–p90 of 5 semitones, 3.5 voiced segments ≈ syllables a second, the
# alpha ratio of modal voice, -24 dBFS); a feature one spread above its typical
# value adds its weight to the score before the tanh. Loudness weighs least:
# it also measures the recording gain, which nothing here can undo.
AROUSAL_TERMS: tuple[tuple[str, float, float, float], ...] = (
    ("pitch_range_semitones", 5.0, 3.0, 0.35),
    ("voiced_segment_rate_hz", 3.5, 1.0, 0.25),
    ("spectral_balance_db", -12.0, 6.0, 0.20),
    ("loudness_dbfs", -24.0, 8.0, 0.15),
)


@dataclass(frozen=True)
class VoiceFeatures:
    """What the arousal formula reads, reported with every voice reading."""

    duration_s: float
    speech_s: float
    voiced_s: float
    pitch_median_hz: float
    pitch_range_semitones: float
    loudness_dbfs: float
    voiced_segment_rate_hz: float
    spectral_balance_db: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def decode(data: bytes, *, field: str, max_duration_s: float) -> tuple[NDArray[np.float64], int]:
    """Mono samples and rate of a WAV or MP3 file, refusing ones that are too long."""
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.samplerate <= 0 or info.frames <= 0:
            raise InputError(field, "the audio file holds no samples", code="no_audio")
        if info.duration > max_duration_s:
            raise InputError(
                field,
                f"is {info.duration:.1f} s long; at most {max_duration_s:g} s is accepted",
                code="audio_too_long",
            )
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float64", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InputError(field, f"not a readable WAV or MP3 file: {exc}") from None
    return samples.mean(axis=1), int(rate)


def _frames(x: NDArray[np.float64], rate: int) -> NDArray[np.float64]:
    size = int(_FRAME_S * rate)
    hop = int(_HOP_S * rate)
    if len(x) < size:
        x = np.pad(x, (0, size - len(x)))
    view = np.lib.stride_tricks.sliding_window_view(x, size)[::hop]
    return np.asarray(view, dtype=np.float64)


def _pitch(frames: NDArray[np.float64], rate: int) -> NDArray[np.float64]:
    """F0 per frame by normalised autocorrelation; 0 where the frame is unvoiced."""
    size = frames.shape[1]
    windowed = (frames - frames.mean(axis=1, keepdims=True)) * np.hanning(size)
    spectrum = np.fft.rfft(windowed, n=2 * size, axis=1)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :size]
    # Divide by the window's own autocorrelation so long lags are not penalised.
    window_acf = np.fft.irfft(np.abs(np.fft.rfft(np.hanning(size), n=2 * size)) ** 2)[:size]
    energy = acf[:, :1]
    norm = acf / np.maximum(energy, 1e-12) / np.maximum(window_acf / window_acf[0], 1e-3)
    low, high = int(rate / _F0_MAX), min(int(rate / _F0_MIN), size - 1)
    # Lags before the autocorrelation first turns negative belong to the main
    # lobe around lag 0 (noise and fricatives keep it wide), never to a period.
    first_negative = np.argmax(norm < 0, axis=1)
    lags = np.arange(size)[None, :]
    usable = (lags >= np.maximum(low, first_negative)[:, None]) & (lags < high)
    usable &= (norm < 0).any(axis=1)[:, None]
    scored = np.where(usable, norm, -np.inf)
    best = scored.max(axis=1)
    # The first lag reaching 90 % of the best peak: avoids octave-low errors.
    lag = np.argmax(scored >= 0.9 * best[:, None], axis=1)
    f0 = rate / np.maximum(lag, 1)
    voiced: NDArray[np.float64] = np.where((best > _VOICING) & (energy[:, 0] > 0), f0, 0.0)
    return voiced


def _drop_octave_jumps(f0: NDArray[np.float64]) -> NDArray[np.float64]:
    """Voiced values more than 6 semitones from their neighbours' median are
    tracking errors (octave jumps at onsets), not intonation."""
    if len(f0) < 7:
        return f0
    padded = np.pad(f0, 3, mode="edge")
    local = np.median(np.lib.stride_tricks.sliding_window_view(padded, 7), axis=1)
    kept: NDArray[np.float64] = f0[np.abs(12 * np.log2(f0 / local)) <= 6]
    return kept


def _segments(mask: NDArray[np.bool_]) -> int:
    """Runs of at least three consecutive true frames (30 ms)."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int(np.sum((ends - starts) >= 3))


def features(x: NDArray[np.float64], rate: int) -> VoiceFeatures:
    """The acoustic features of a clip, or a permanent error if it holds no speech."""
    frames = _frames(x, rate)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    level = 20 * np.log10(np.maximum(rms, 1e-10))
    # Speech: frames within 35 dB of the loud end of the clip, and above digital silence.
    active = (level > np.percentile(level, 95) - 35) & (level > -60)
    f0 = np.where(active, _pitch(frames, rate), 0.0)
    voiced = f0 > 0
    voiced_s = float(voiced.sum()) * _HOP_S
    if voiced_s < _MIN_VOICED_S:
        raise PermanentJobError(
            f"no speech found: {voiced_s:.2f} s of voiced sound, at least {_MIN_VOICED_S} s needed",
            code="no_speech",
        )
    idx = np.flatnonzero(active)
    speech_s = (idx[-1] - idx[0] + 1) * _HOP_S
    pitched = _drop_octave_jumps(f0[voiced])
    p10, p50, p90 = np.percentile(pitched, [10, 50, 90])
    return VoiceFeatures(
        duration_s=len(x) / rate,
        speech_s=float(speech_s),
        voiced_s=voiced_s,
        pitch_median_hz=float(p50),
        pitch_range_semitones=float(12 * math.log2(p90 / p10)),
        loudness_dbfs=float(10 * np.log10(np.mean(rms[active] ** 2))),
        voiced_segment_rate_hz=float(_segments(voiced) / speech_s),
        spectral_balance_db=_balance(frames[voiced], rate),
    )


def _balance(frames: NDArray[np.float64], rate: int) -> float:
    """Energy above 1 kHz relative to below it, in dB (the eGeMAPS alpha ratio, inverted)."""
    power = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(frames.shape[1], 1 / rate)
    low = power[:, (freqs >= 50) & (freqs < 1000)].sum()
    high = power[:, (freqs >= 1000) & (freqs < min(5000, rate / 2))].sum()
    return float(10 * np.log10(max(high, 1e-20) / max(low, 1e-20)))


def arousal(found: VoiceFeatures) -> float:
    """The heuristic arousal score, -1 (calm) to 1 (activated)."""
    values = asdict(found)
    score = sum(w * (values[name] - typical) / spread for name, typical, spread, w in AROUSAL_TERMS)
    return math.tanh(score)


def read_voice(data: bytes, *, field: str, max_duration_s: float) -> dict[str, Any]:
    """A voice reading of a WAV or MP3 file."""
    x, rate = decode(data, field=field, max_duration_s=max_duration_s)
    found = features(x, rate)
    return {
        "arousal": round(arousal(found), 4),
        "valence": None,
        # Never more than 0.6 for a heuristic; less when there is little speech to go on.
        "confidence": round(0.6 * min(1.0, found.voiced_s / 3.0), 4),
        "features": found.as_dict(),
        "duration_s": round(found.duration_s, 3),
        "sample_rate_hz": rate,
        "method": METHOD,
    }
