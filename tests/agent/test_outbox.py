import json

import pytest

from device_agent.contract.errors import OutboxError
from device_agent.link.outbox import Outbox


def put(box, n, topic="t", size=10):
    return [box.append(topic, lambda seq, dropped: json.dumps({"seq": seq, "dropped": dropped, "pad": "x" * size}).encode()) for _ in range(n)]


def test_ordered_sequence_numbers_survive_restart(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert put(box, 3) == [1, 2, 3]
    box.close()
    box = Outbox(tmp_path / "o.sqlite")
    assert box.depth == 3
    assert [m.seq for m in box.peek(10)] == [1, 2, 3]
    assert put(box, 1) == [4]  # never reused
    first = box.peek(2)
    box.ack([m.id for m in first])
    assert [m.seq for m in box.peek(10)] == [3, 4] and box.depth == 2
    assert [m.seq for m in box.peek(10, after_id=box.peek(1)[0].id)] == [4]


def test_bounded_by_count_drops_oldest_and_reports_in_next_message(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_messages=5)
    put(box, 8)
    msgs = box.peek(100)
    assert [m.seq for m in msgs] == [4, 5, 6, 7, 8]
    assert box.dropped_total == 3
    # appending 6, 7 and 8 each pushed one out; a message reports the drops that happened before it
    assert [json.loads(m.payload)["dropped"] for m in msgs] == [0, 0, 0, 1, 1]
    put(box, 1)
    assert json.loads(box.peek(100)[-1].payload)["dropped"] == 1


def test_bounded_by_bytes(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_bytes=4096)
    put(box, 20, size=500)
    assert box.size_bytes <= 4096 and box.depth == 7
    assert [m.seq for m in box.peek(100)] == list(range(14, 21))
    with pytest.raises(OutboxError, match="larger than the whole outbox"):
        put(box, 1, size=5000)
    assert box.last_seq == 20  # the refused message consumed no sequence number


def test_age_limit(tmp_path):
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite", max_age_s=60, clock=lambda: now[0])
    put(box, 2)
    now[0] += 30
    put(box, 1)
    now[0] += 40
    assert box.expire() == 2
    assert [m.seq for m in box.peek(10)] == [3]
    assert json.loads(put_and_peek(box)["payload"])["dropped"] == 2


def put_and_peek(box):
    put(box, 1)
    m = box.peek(100)[-1]
    return {"payload": m.payload}


def test_boot_counter_persists(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert box.next_boot() == 1
    box.close()
    assert Outbox(tmp_path / "o.sqlite").next_boot() == 2


def test_unwritable_location_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutboxError, match="cannot open the outbox database"):
        Outbox(tmp_path / "file" / "o.sqlite")
