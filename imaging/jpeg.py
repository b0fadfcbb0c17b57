"""A JPEG's structure read from its markers, without decoding a pixel: the cheap pre-check.

A progressive JPEG is a series of scans, each refining the whole picture, and a decoder redoes
work over every block of the image for each scan. Encoders write about ten (libjpeg's standard
progression: 10 for colour, 6 for grey; mozjpeg's optimised ones a few more). A file can repeat
one tiny scan thousands of times: a few hundred KB that cost a decoder seconds to minutes of
CPU. Counting the scans costs one pass over the markers.
"""
from __future__ import annotations

import re
import struct

_SOI = b"\xff\xd8"
_EOI, _SOS = 0xD9, 0xDA
# Markers without a length field: SOI, EOI, RSTn, TEM.
_STANDALONE = frozenset({0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)})
# Where a scan's entropy-coded data ends: 0xFF (any fill bytes) then a byte that is neither a
# stuffed zero nor a restart marker.
_END_OF_SCAN_DATA = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def is_jpeg(raw: bytes) -> bool:
    return raw.startswith(_SOI + b"\xff")


def count_scans(raw: bytes) -> int:
    """Scans (SOS markers) of the first image in ``raw``, up to its EOI or the end of the data.

    Only the first image: an MPO file (and a JPEG with trailing data) holds more images after
    it, which are never decoded. Damaged structure ends the count where it stops making sense;
    the decoder then says what is wrong with the file.
    """
    scans, pos = 0, len(_SOI)
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        pos += 2 + struct.unpack_from(">H", raw, pos + 2)[0]
        if marker == _SOS:
            scans += 1
            pos = end_of_scan_data(raw, pos)
    return scans


def end_of_scan_data(raw: bytes, start: int) -> int:
    """Where the entropy-coded data starting at ``start`` ends: the next marker, or the end."""
    end = _END_OF_SCAN_DATA.search(raw, start)
    return len(raw) if end is None else end.end() - 2
