"""threads.events: the SSE wire format of reply events."""

from __future__ import annotations

from threads.events import sse_frame


def test_a_frame_carries_its_id_name_and_compact_json_on_one_data_line():
    frame = sse_frame("delta", {"text": "Grüße,\nzwei Zeilen"}, 7)
    assert frame == 'id: 7\nevent: delta\ndata: {"text":"Grüße,\\nzwei Zeilen"}\n\n'.encode()


def test_a_frame_without_an_id():
    assert (
        sse_frame("done", {"status": "complete"}) == b'event: done\ndata: {"status":"complete"}\n\n'
    )
