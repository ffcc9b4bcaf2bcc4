from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from inbox.dify.errors import DifyProtocolError
from inbox.dify.sse import ServerSentEvent, SSEDecoder, iter_events

CAPTURED = (Path(__file__).parent / "data" / "captured_stream.txt").read_bytes()


def decode(chunks: list[bytes], **kwargs: int) -> list[ServerSentEvent]:
    decoder = SSEDecoder(**kwargs)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def split_at(data: bytes, *cuts: int) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.fixture(scope="module")
def whole() -> list[ServerSentEvent]:
    return decode([CAPTURED])


def test_the_captured_stream_decodes_to_its_events(whole: list[ServerSentEvent]) -> None:
    names = [e.event if e.event == "ping" else json.loads(e.data)["event"] for e in whole]
    assert names == [
        "workflow_started",
        "node_started",
        "node_finished",
        "ping",
        "node_started",
        *["text_chunk"] * 7,
        "node_finished",
        "ping",
        "human_input_required",
        "workflow_paused",
    ]
    assert whole[3] == ServerSentEvent(event="ping", data="", id=None, retry=None)
    texts = [json.loads(e.data)["data"]["text"] for e in whole[5:12]]
    assert "".join(texts) == (
        "Der Kunde möchte eine Rückerstattung über 129,90 € — 退款请求 🙂 wegen eines Defekts."
    )


def test_every_single_split_point_gives_the_same_events(whole: list[ServerSentEvent]) -> None:
    for cut in range(1, len(CAPTURED)):
        assert decode(split_at(CAPTURED, cut)) == whole, f"split at byte {cut}"


def test_one_byte_at_a_time_gives_the_same_events(whole: list[ServerSentEvent]) -> None:
    assert decode([CAPTURED[i : i + 1] for i in range(len(CAPTURED))]) == whole


def test_random_chunkings_give_the_same_events(whole: list[ServerSentEvent]) -> None:
    rng = random.Random(20240611)
    for _ in range(200):
        cuts = rng.sample(range(1, len(CAPTURED)), rng.randint(1, 60))
        assert decode(split_at(CAPTURED, *cuts)) == whole


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_endings_split_anywhere(
    whole: list[ServerSentEvent], newline: bytes
) -> None:
    data = CAPTURED.replace(b"\n", newline)
    assert decode([data]) == whole
    for cut in range(1, len(data), 7):
        assert decode(split_at(data, cut)) == whole
    # A CRLF whose CR ends one chunk and whose LF starts the next is one line ending.
    assert decode([data[i : i + 1] for i in range(len(data))]) == whole


def test_a_multi_byte_character_split_between_chunks_is_kept_whole() -> None:
    data = 'data: {"text": "€🙂"}\n\n'.encode()
    euro_at = data.index("€".encode())
    for cut in range(euro_at, euro_at + 7):
        events = decode(split_at(data, cut))
        assert [json.loads(e.data)["text"] for e in events] == ["€🙂"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    events = decode([b"data: first\ndata:second\ndata:  third\ndata\n\n"])
    assert events == [ServerSentEvent(data="first\nsecond\n third\n")]


def test_comments_are_ignored_and_fields_are_read() -> None:
    events = decode(
        [b": hello\nevent: update\nid: 42\nretry: 1500\nunknown: x\ndata: {}\n\n: bye\n\n"]
    )
    assert events == [ServerSentEvent(event="update", data="{}", id="42", retry=1500)]


def test_a_comment_only_block_dispatches_nothing() -> None:
    assert decode([b": keep-alive\n\n\n\n"]) == []


def test_ping_without_data_is_an_event() -> None:
    assert decode([b"event: ping\n\n"]) == [ServerSentEvent(event="ping", data="")]


def test_a_trailing_event_without_a_blank_line_comes_out_of_flush() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"event": "workflow_finished"}') == []
    assert decoder.feed(b"\n") == []
    assert decoder.flush() == [ServerSentEvent(data='{"event": "workflow_finished"}')]
    # Even without the final newline.
    assert decode([b'data: {"a": 1}']) == [ServerSentEvent(data='{"a": 1}')]


def test_a_leading_byte_order_mark_is_ignored() -> None:
    assert decode([b"\xef\xbb", b"\xbfdata: x\n\n"]) == [ServerSentEvent(data="x")]


def test_an_event_over_the_limit_raises_instead_of_growing() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)
    decoder.feed(b"data: " + b"x" * 500 + b"\n")
    with pytest.raises(DifyProtocolError, match="larger than 1024 bytes"):
        decoder.feed(b"data: " + b"y" * 600 + b"\n")


def test_a_line_that_never_ends_raises_once_over_the_limit() -> None:
    decoder = SSEDecoder(max_event_bytes=4096)
    with pytest.raises(DifyProtocolError):
        for _ in range(100):
            decoder.feed(b"data: " + b"z" * 100)


def test_many_events_each_under_the_limit_are_fine() -> None:
    event = b"data: " + b"a" * 900 + b"\n\n"
    events = decode([event * 50], max_event_bytes=1024)
    assert len(events) == 50


def test_iter_events_reads_an_iterable_of_chunks(whole: list[ServerSentEvent]) -> None:
    chunks = (CAPTURED[i : i + 100] for i in range(0, len(CAPTURED), 100))
    assert list(iter_events(chunks)) == whole
