"""What a file is, by its first bytes rather than by what its sender claimed."""

from __future__ import annotations

from collections.abc import Sequence

from shortdrama_worker.contract.errors import InputError

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"%!PS", 0, "application/postscript"),
    (b"\xc5\xd0\xd3\xc6", 0, "application/postscript"),  # DOS EPS binary header
    (b"%PDF-", 0, "application/pdf"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
)


def sniff_content_type(data: bytes) -> str | None:
    """The content type ``data`` starts like, or ``None`` if unknown."""
    for magic, offset, kind in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    # An MPEG audio frame without an ID3 tag: 11 sync bits, then a layer that is not 0.
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        return "audio/mpeg"
    return None


def check_file(
    data: bytes, *, field: str, accept: Sequence[str], max_bytes: int | None = None
) -> str:
    """The sniffed type of a file for ``field``; ``InputError`` if too large or not in ``accept``.

    The one rule for file references, applied at submit (inline values), when a
    job fetches one, and by the testing kit.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(field, f"larger than {max_bytes} bytes", code="input_too_large")
    sniffed = sniff_content_type(data)
    if sniffed is None or sniffed not in accept:
        what = sniffed or "not a format this server recognises"
        raise InputError(
            field, f"is {what}; expected {', '.join(accept)}", code="unsupported_format"
        )
    return sniffed
