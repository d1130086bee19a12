"""Text sentiment: VADER for English, SnowNLP's classifier for Chinese.

Which of the two a text is, is decided by its script: CJK ideographs make it
Chinese, Latin letters English. Kana, Hangul, Cyrillic and other scripts are
refused rather than read with the wrong lexicon. This cannot tell English
from another Latin-script language: French text would be read with the
English lexicon, so callers who know the language should say so.

Neither analyser measures arousal, so a text reading has none.
"""

from __future__ import annotations

import re
import unicodedata
from importlib import metadata
from typing import Any, Literal, Protocol

from shortdrama_worker.contract import InputError

from shortdrama_emotion.errors import ModelUnavailableError

Language = Literal["en", "zh"]

_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;…])\s*")
_CHINESE_SHARE = 0.3  # of the letters; Chinese dialogue often carries English names


class _Vader(Protocol):
    def polarity_scores(self, text: str) -> dict[str, float]: ...


def detect_language(text: str, *, field: str = "text") -> Language:
    """``zh`` or ``en`` by script, or an input error naming what was found."""
    counts = {"han": 0, "latin": 0, "other": 0}
    for char in text:
        if not char.isalpha():
            continue
        name = unicodedata.name(char, "")
        if name.startswith("CJK UNIFIED IDEOGRAPH") or name.startswith("CJK COMPATIBILITY"):
            counts["han"] += 1
        elif name.startswith("LATIN"):
            counts["latin"] += 1
        else:
            counts["other"] += 1
    letters = sum(counts.values())
    if letters == 0:
        raise InputError(field, "has no words to read", code="no_text")
    if counts["other"] > max(counts["han"], counts["latin"]):
        raise InputError(
            field,
            "is neither English nor Chinese (mostly another script); "
            "text sentiment reads English and Chinese only",
            code="unsupported_language",
        )
    return "zh" if counts["han"] / letters >= _CHINESE_SHARE else "en"


def sentences(text: str) -> list[str]:
    """The text split after sentence-ending punctuation, Chinese or Western."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class TextAnalysers:
    """The two analysers, loaded once at start-up."""

    def __init__(self) -> None:
        try:
            from snownlp import sentiment
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise ModelUnavailableError(
                f"a text sentiment package is missing ({exc}); "
                "install shortdrama-emotion with its dependencies"
            ) from None
        self._vader: _Vader = SentimentIntensityAnalyzer()
        self._snownlp = sentiment.classifier
        self.names: dict[Language, str] = {
            "en": f"vaderSentiment {metadata.version('vaderSentiment')}",
            "zh": f"snownlp {metadata.version('snownlp')} sentiment",
        }

    def read_sentence(self, sentence: str, language: Language) -> tuple[float, float]:
        """(valence, confidence) of one sentence."""
        if language == "en":
            scores = self._vader.polarity_scores(sentence)
            # VADER's compound score is its valence; the share of the text that
            # is not neutral says how much sentiment-bearing wording it found.
            return scores["compound"], 1.0 - scores["neu"]
        positive = float(self._snownlp.classify(sentence))
        # P(positive) of a naive Bayes classifier → -1…1; its distance from 0.5
        # is how sure it is.
        return 2.0 * positive - 1.0, abs(2.0 * positive - 1.0)

    def read(self, text: str, language: Language | None, *, field: str = "text") -> dict[str, Any]:
        """A text reading: valence and confidence overall and per sentence."""
        found: Language = language or detect_language(text, field=field)
        parts = sentences(text) or [text]
        readings = [(s, *self.read_sentence(s, found)) for s in parts]
        weight = sum(c for _, _, c in readings)
        valence = (
            sum(v * c for _, v, c in readings) / weight
            if weight > 0
            else sum(v for _, v, _ in readings) / len(readings)
        )
        return {
            "valence": round(valence, 4),
            "arousal": None,
            "confidence": round(weight / len(readings), 4),
            "language": found,
            "language_detected": language is None,
            "analyser": self.names[found],
            "sentences": [
                {"text": s, "valence": round(v, 4), "confidence": round(c, 4)}
                for s, v, c in readings
            ],
            "method": (
                "lexicon and rules (VADER compound score)"
                if found == "en"
                else "naive Bayes classifier trained on product reviews (SnowNLP)"
            )
            + "; sentences weighted by confidence; arousal is not measured",
        }
