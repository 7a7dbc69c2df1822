"""The pipe protocol between the relay process and its send processes."""

from __future__ import annotations

import io

import pytest

from relay import frames


def test_frames_survive_any_split_of_the_byte_stream():
    messages = [{"op": "send", "id": n, "body": "é" * n} for n in range(50)]
    stream = b"".join(frames.encode(m) for m in messages)
    for chunk in (1, 3, 7, 4096):
        decoder = frames.Decoder()
        got = []
        for i in range(0, len(stream), chunk):
            got += decoder.feed(stream[i:i + chunk])
        assert got == messages


def test_a_blocking_reader_sees_each_frame_then_the_end():
    stream = io.BytesIO(frames.encode({"a": 1}) + frames.encode({"b": [2]}))
    assert frames.read(stream) == {"a": 1}
    assert frames.read(stream) == {"b": [2]}
    assert frames.read(stream) is None


@pytest.mark.parametrize("data", [
    frames.HEADER.pack(frames.MAX_FRAME + 1),  # absurd size
    frames.HEADER.pack(3) + b"[1]",  # not an object
    frames.HEADER.pack(2) + b"{x",  # not JSON
])
def test_garbage_is_a_frame_error_not_a_crash(data):
    with pytest.raises(frames.FrameError):
        frames.Decoder().feed(data)
    with pytest.raises(frames.FrameError):
        frames.read(io.BytesIO(data))


def test_a_stream_cut_inside_a_frame_is_an_error():
    with pytest.raises(frames.FrameError):
        frames.read(io.BytesIO(frames.encode({"a": 1})[:-1]))
