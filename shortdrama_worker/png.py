"""Writing the PNGs we produce, fast: one fixed filter and ISA-L's deflate.

Encoding was the largest cost of a ``face_mask`` job: Pillow tries all five
PNG filters on every row and deflates with zlib, single-threaded, 80 ms for a
1024² frame on our 2-core machine. Here every row but the first uses the
``Up`` filter (computed by Pillow in C as a modulo-256 difference with the
image shifted one row down) and the stream is deflated by ISA-L at level 1:
13 ms for the same frame, with a file about 18 % larger (``bench/face_mask.py``
prints both). Lossless either way: decoders undo any filter exactly.

Only the modes the mask drawing produces are written here: 8-bit ``RGB`` and
``RGBA``; anything else goes through Pillow. The ancillary data Pillow would
have carried over from ``image.info`` is carried here too: the colour profile
(``iCCP``, so a Display-P3 frame keeps its colours) and an RGB colour key
(``tRNS``).
"""

from __future__ import annotations

import io
import struct
import zlib

from isal import isal_zlib
from PIL import Image, ImageChops

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {"RGB": 2, "RGBA": 6}
_FILTER_NONE = 0
_FILTER_UP = 2
# ISA-L levels run 0–3; level 1 is as fast as 0 here and ~25 % smaller.
_LEVEL = 1
_STRIPE_ROWS = 256


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _compressed_scanlines(image: Image.Image) -> bytes:
    """The IDAT payload: each row a filter-type byte then the filtered row, deflated.

    Worked through in stripes of rows, so a 4096² frame needs a few MB
    beside the image rather than several copies of it.
    """
    width, height = image.size
    stride = width * len(image.getbands())
    compressor = isal_zlib.compressobj(_LEVEL)
    parts = []
    for top in range(0, height, _STRIPE_ROWS):
        bottom = min(height, top + _STRIPE_ROWS)
        above = max(0, top - 1)  # the row the stripe's first row is filtered against
        stripe = image.crop((0, above, width, bottom))
        # Each row minus the row above it, byte by byte, modulo 256: the Up
        # filter. offset() wraps the stripe's last row round to its top, so
        # the stripe's first row is only context (or, at the very top of the
        # image, written unfiltered).
        up = memoryview(
            ImageChops.subtract_modulo(stripe, ImageChops.offset(stripe, 0, 1)).tobytes()
        )
        rows = bytearray((bottom - top) * (stride + 1))
        for y in range(top, bottom):
            start = (y - top) * (stride + 1)
            row = y - above
            if y == 0:
                rows[start] = _FILTER_NONE
                rows[start + 1 : start + 1 + stride] = stripe.crop((0, 0, width, 1)).tobytes()
            else:
                rows[start] = _FILTER_UP
                rows[start + 1 : start + 1 + stride] = up[row * stride : (row + 1) * stride]
        parts.append(compressor.compress(rows))
    parts.append(compressor.flush())
    return b"".join(parts)


def _ancillary_chunks(image: Image.Image) -> list[bytes]:
    """What of ``image.info`` a PNG keeps, as Pillow would write it; both go before IDAT."""
    chunks = []
    profile = image.info.get("icc_profile")
    if profile:
        # Name, NUL, compression method 0 (deflate), the deflated profile.
        chunks.append(_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(profile)))
    key = image.info.get("transparency")
    # A colour key is only defined for RGB; RGBA carries its alpha per pixel.
    if image.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        chunks.append(_chunk(b"tRNS", struct.pack(">HHH", *key)))
    return chunks


def encode_png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes; lossless, any mode (RGB and RGBA take the fast path)."""
    colour_type = _COLOUR_TYPE.get(image.mode)
    if colour_type is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    width, height = image.size
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            *_ancillary_chunks(image),
            _chunk(b"IDAT", _compressed_scanlines(image)),
            _chunk(b"IEND", b""),
        )
    )
