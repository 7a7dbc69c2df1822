"""Length-prefixed JSON frames: how the relay process and its send processes talk over pipes.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON holding
one object of plain values. Nothing in a frame is ever put on a command line.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # a config text or a body is far smaller; anything bigger is a bug


class FrameError(Exception):
    """The other side wrote something that is not a frame."""


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(data)) + data


class Decoder:
    """Frames out of a byte stream fed in arbitrary chunks (a pipe's reads)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        out = []
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes")
            end = HEADER.size + size
            if len(self._buffer) < end:
                break
            out.append(_decode(bytes(self._buffer[HEADER.size:end])))
            del self._buffer[:end]
        return out


def read(stream: BinaryIO) -> dict[str, Any] | None:
    """One frame from a blocking stream; None at end of file."""
    header = _exactly(stream, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes")
    data = _exactly(stream, size)
    if data is None:
        raise FrameError("end of file inside a frame")
    return _decode(data)


def _exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as e:
        raise FrameError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise FrameError("not an object")
    return message
