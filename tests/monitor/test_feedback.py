import http.client
import json

import numpy as np
import pytest

from device_agent.contract.protocol import TelemetryMessage, decode
from device_agent.telemetry.feedback import FeedbackLog


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scores_for(classes: list[int], width: int = 4) -> np.ndarray:
    s = np.zeros((len(classes), width), np.float32)
    s[np.arange(len(classes)), classes] = 1.0
    return s


def test_join_counts_correct_rows_per_model_version():
    log = FeedbackLog(labels=("cat", "dog", "fox", "owl"))
    log.record("a", "1.0", scores_for([2]))
    log.record("b", "1.0", scores_for([0, 1, 3]))
    log.record("c", "2.0", scores_for([1]))
    assert log.submit({"request_id": "a", "label": 2}).correct == 1
    r = log.submit({"request_id": "b", "label": ["cat", "dog", "cat"]})
    assert r.accepted and (r.rows, r.correct) == (3, 2)
    assert log.submit({"request_id": "c", "label": "owl"}).correct == 0
    w = log.take()
    assert w.accuracy == {"1.0": {"labelled": 4, "correct": 3}, "2.0": {"labelled": 1, "correct": 0}}
    assert w.rejected == {} and w.expired == 0
    assert log.take() is None  # the window was reset and nothing happened since
    assert log.accuracy("1.0") == (4, 3) and log.accuracy("3.0") == (0, 0)  # running totals survive the window


def test_record_many_joins_exactly_like_one_record_per_prediction():
    """The agent hands a whole interval's predictions over at once: mixed widths, batches, 1-D scores, a reused id."""
    items = [("a", "1", scores_for([2])), ("b", "1", scores_for([0, 1, 3])), ("c", "1", scores_for([1], 6)),
             ("d", "2", np.array([0.1, 0.7, 0.2], np.float32)), ("e", "2", scores_for([])), ("a", "2", scores_for([3]))]
    one, many = FeedbackLog(), FeedbackLog()
    for rid, version, scores in items:
        one.record(rid, version, scores)
    many.record_many(items)
    assert one.size == many.size == 6  # a: 1 (the newer), b: 3, c: 1, d: 1; e has no rows
    for item in ({"request_id": "a", "label": 3}, {"request_id": "b", "label": [0, 1, 2]}, {"request_id": "c", "label": 1},
                 {"request_id": "d", "label": 1}):
        assert one.submit(item).correct == many.submit(item).correct
    a, b = one.take(), many.take()
    assert a.accuracy == b.accuracy == {"1": {"labelled": 4, "correct": 3}, "2": {"labelled": 2, "correct": 2}}


def test_unknown_duplicate_and_wrong_type_labels_are_counted_never_raised():
    log = FeedbackLog(labels=("cat", "dog"), classes=2)
    log.record("a", "1.0", scores_for([1], 2))
    log.record("b", "1.0", scores_for([0, 1], 2))
    outcomes = [log.submit(item).outcome for item in (
        {"request_id": "nope", "label": 1},          # unknown id
        {"request_id": "a", "label": 1},             # accepted
        {"request_id": "a", "label": 0},             # duplicate: the first label stands
        {"request_id": "a", "label": 1.0},           # wrong type
        {"request_id": "a", "label": True},          # bool is not a class index
        {"request_id": "b", "label": [0]},           # wrong number of rows
        {"request_id": "b", "label": 1},             # a batch needs a list or an index
        {"request_id": "b", "label": "zebra"},       # unknown class name... after the batch check
        {"request_id": "b", "index": 1, "label": 7},  # out of range
        {"request_id": "b", "index": 5, "label": 1},  # no such row
        {"request_id": "b", "index": 1, "label": "dog"},  # accepted
        {"request_id": "b", "label": None},          # wrong type (and the batch check first)
        {"request_id": 5, "label": 1},               # malformed id
        {"label": 1},                                # no id
        ["not", "an", "object"],                     # not an object
        {"request_id": "b", "label": 1, "extra": 1},  # unknown key
    )]
    assert outcomes == ["unknown_id", "accepted", "duplicate", "bad_label", "bad_label", "bad_label", "bad_label", "bad_label",
                        "bad_label", "bad_label", "accepted", "bad_label", "malformed", "malformed", "malformed", "malformed"]
    w = log.take()
    assert w.rejected == {"unknown_id": 1, "duplicate": 1, "bad_label": 8, "malformed": 4}
    assert w.accuracy == {"1.0": {"labelled": 2, "correct": 2}}
    msg = log.submit({"request_id": "a", "label": 3.5}).message
    assert msg == "label must be a class index (integer) or a class name, got float 3.5"
    assert "classes: cat, dog" in log.submit({"request_id": "b", "index": 0, "label": "zebra"}).message


def test_memory_is_bounded_by_rows_and_retention():
    clock = Clock()
    log = FeedbackLog(max_rows=10, retention_s=60, clock=clock)
    for i in range(8):
        log.record(f"r{i}", "1", scores_for([0, 1]))  # 2 rows each: only 5 requests fit
    assert log.size == 10
    assert log.submit({"request_id": "r0", "label": [0, 1]}).outcome == "unknown_id"
    assert log.submit({"request_id": "r3", "label": [0, 1]}).accepted
    clock.t += 61
    assert log.submit({"request_id": "r7", "label": [0, 1]}).outcome == "unknown_id"  # past the retention
    assert log.size == 0
    w = log.take()
    assert w.expired == 7  # 3 pushed out by newer ones, 4 timed out unlabelled (r3 was labelled)


def test_the_agent_reports_feedback_in_telemetry(model_dir, make_device, rng):
    dev = make_device(model_dir)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    preds = [dev.agent.predict({"x": x[i:i + 1]}) for i in range(30)]
    top1 = [int(p.outputs["logits"].argmax()) for p in preds]
    items = [{"request_id": p.request_id, "label": t if i < 20 else (t + 1) % 4} for i, (p, t) in enumerate(zip(preds, top1, strict=True))]
    items += [{"request_id": "never-made", "label": 0}, {"request_id": preds[0].request_id, "label": top1[0]}, {"request_id": preds[1].request_id, "label": "1"}]
    results = dev.agent.submit_feedback(items)
    assert [r.outcome for r in results[-3:]] == ["unknown_id", "duplicate", "bad_label"]
    (topic, payload), = dev.window()
    msg = decode(payload)
    assert isinstance(msg, TelemetryMessage) and topic.endswith("/pi-07/telemetry")
    assert msg.feedback.accuracy == {"1.0.0": {"labelled": 30, "correct": 20}}
    assert msg.feedback.rejected == {"unknown_id": 1, "duplicate": 1, "bad_label": 1}


@pytest.fixture
def api(model_dir):
    from device_agent.serve.agent import Agent
    from device_agent.serve.server import serve

    agent = Agent.open(model_dir)
    server = serve(agent, "127.0.0.1", 0)
    yield agent, server
    server.close()


def post(server, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_feedback_over_http_never_crashes_the_agent(api, rng):
    agent, server = api
    x = rng.standard_normal((3, 8)).astype(np.float32)
    status, pred = post(server, "/v1/predict", json.dumps({"inputs": {"x": x.tolist()}}).encode())
    assert status == 200
    rid, top1 = pred["request_id"], [int(np.argmax(o)) for o in pred["outputs"]["logits"]]
    status, doc = post(server, "/v1/feedback", json.dumps({"request_id": rid, "index": 0, "label": top1[0]}).encode())
    assert status == 200 and doc["outcome"] == "accepted" and doc["correct"] == 1
    status, doc = post(server, "/v1/feedback", json.dumps({"request_id": rid, "index": 0, "label": top1[0]}).encode())
    assert status == 409 and doc["error"]["kind"] == "duplicate"
    status, doc = post(server, "/v1/feedback", json.dumps({"request_id": "no-such-id", "label": 1}).encode())
    assert status == 404 and doc["error"]["kind"] == "unknown_id" and "no-such-id" in doc["error"]["message"]
    status, doc = post(server, "/v1/feedback", json.dumps({"request_id": rid, "index": 1, "label": {"class": 1}}).encode())
    assert status == 400 and doc["error"]["kind"] == "bad_label" and doc["error"]["message"].startswith("label must be a class index")
    status, doc = post(server, "/v1/feedback", b"{not json")
    assert status == 400 and doc["error"]["kind"] == "malformed"
    status, doc = post(server, "/v1/feedback", b"[1, 2]")
    assert status == 400 and doc["error"]["kind"] == "malformed"
    batch = {"items": [{"request_id": rid, "index": 1, "label": top1[1]}, {"request_id": rid, "index": 2, "label": "owl"},
                       {"request_id": rid, "index": 1, "label": 0}, {"request_id": "x", "label": 0}, 42]}
    status, doc = post(server, "/v1/feedback", json.dumps(batch).encode())
    assert status == 200 and (doc["accepted"], doc["rejected"]) == (2, 3)
    assert [r["outcome"] for r in doc["results"]] == ["accepted", "accepted", "duplicate", "unknown_id", "malformed"]
    # still serving, and every rejection was counted for telemetry
    assert post(server, "/v1/predict", json.dumps({"inputs": {"x": x[:1].tolist()}}).encode())[0] == 200
    w = agent.feedback.take()
    assert w.rejected == {"duplicate": 2, "unknown_id": 2, "bad_label": 1, "malformed": 3}
    assert w.accuracy["1.0.0"]["labelled"] == 3


def test_memory_is_bounded_in_bytes_and_the_bound_holds_in_the_process():
    """max_bytes is charged per prediction (ENTRY_BYTES + the id + ROW_BYTES per extra row): an upper
    bound of what the log really takes, measured here with tracemalloc, whatever the mix."""
    import tracemalloc

    from device_agent.telemetry.feedback import ENTRY_BYTES

    rng = np.random.default_rng(0)
    one = [rng.standard_normal((1, 1000)).astype(np.float32) for _ in range(16)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = FeedbackLog(classes=1000, max_rows=10_000_000, max_bytes=2 << 20)
        for i in range(0, 60_000, 500):
            items = [(f"7f3a9c1d2e4b-{j:x}", "1.0.0", one[j % 16]) for j in range(i, i + 500)]
            items[0] = ("reused-id", "1.0.0", scores_for([1, 2], 1000))  # a caller reusing its id, with a batch
            log.record_many(items)
            assert log.size_bytes <= 2 << 20
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= log.max_bytes + 64 * 1024, f"the log holds {held:,} bytes for a bound of {log.max_bytes:,}"
    assert log.size_bytes > (2 << 20) - 2 * (ENTRY_BYTES + 20)  # it is full, not evicting too early
    assert log.submit({"request_id": "7f3a9c1d2e4b-0", "label": 1}).outcome == "unknown_id"  # the oldest went first
    assert log.submit({"request_id": f"7f3a9c1d2e4b-{59_999:x}", "label": 1}).outcome in ("accepted",)
    with pytest.raises(ValueError, match="max_bytes ≥ 1024"):
        FeedbackLog(max_bytes=10)


def test_logged_predictions_are_not_objects_the_garbage_collector_walks_and_labels_stay_within_the_bound():
    """A full log holds ~30,000 predictions: as tracked objects, every full collection walked them all (~30 ms on a busy
    agent). Entries are tuples of strings and numbers, which the collector stops tracking; the labelled rows live beside them,
    charged to max_bytes (measured with tracemalloc), and a label never survives its prediction's replacement."""
    import gc
    import tracemalloc

    log = FeedbackLog(classes=4, max_rows=1_000_000, max_bytes=1 << 20)
    log.record_many([(f"7f3a9c1d2e4b-{j:x}", "1.0.0", scores_for([j % 4])) for j in range(2_000)])
    log.record_many([("batch", "1.0.0", scores_for([1, 2, 3]))])
    gc.collect()
    gc.collect()  # an entry holding a tuple (a batch's classes) is let go one pass after that tuple
    entries = list(log._log.values())
    assert len(entries) == 2_001 and not any(gc.is_tracked(e) for e in entries)

    accepted, within = 0, True
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        labelled = FeedbackLog(classes=4, max_rows=1_000_000, max_bytes=2 << 20)
        for i in range(0, 24_000, 500):
            labelled.record_many([(f"7f3a9c1d2e4b-{j:x}", "1.0.0", scores_for([j % 4])) for j in range(i, i + 500)])
            for j in range(i, i + 500):
                accepted += labelled.submit({"request_id": f"7f3a9c1d2e4b-{j:x}", "label": 1}).accepted
            within = within and labelled.size_bytes <= 2 << 20
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert accepted == 24_000 and within
    assert held <= labelled.max_bytes + 64 * 1024, f"the log holds {held:,} bytes for a bound of {labelled.max_bytes:,}"
    assert labelled.size_bytes > (2 << 20) - 1024  # full, every entry labelled, not evicting too early

    assert log.submit({"request_id": "batch", "label": 2, "index": 1}).correct == 1
    assert log.submit({"request_id": "batch", "label": 2, "index": 1}).outcome == "duplicate"
    log.record_many([("batch", "1.0.1", scores_for([0]))])  # the caller reuses its id: the new prediction is unlabelled
    again = log.submit({"request_id": "batch", "label": 0})
    assert again.accepted and again.correct == 1 and "version 1.0.1" in again.message
    before = log.size_bytes
    log.record_many([(f"new-{j}", "1.0.1", scores_for([0])) for j in range(10)])
    assert log.size_bytes == before + sum(len(f"new-{j}") for j in range(10)) + 10 * 240  # ENTRY_BYTES, no stale label charge
