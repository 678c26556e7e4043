import numpy as np

from device_agent.telemetry.feedback import FeedbackLog
from device_agent.telemetry.pending import FEEDBACK_PENDING_MAX, PendingFeedback


def test_pending_scores_are_copies_whose_top_classes_come_back_in_order():
    pending = PendingFeedback()
    a = np.array([[0.1, 0.9, 0.0]], np.float32)
    b = np.array([0.2, 0.3, 0.5, 0.0], np.float64)  # another width and dtype
    c = np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]], np.float32)  # a batch of two
    for rid, scores in (("a", a), ("b", b), ("c", c)):
        pending.add(rid, "1.0", scores)
    a[0, 1] = -5.0  # the caller owns its outputs: changing them afterwards changes nothing recorded
    items = pending.take_top1()
    assert items == [("a", "1.0", (1,)), ("b", "1.0", (2,)), ("c", "1.0", (0, 2))]
    assert len(pending) == 0 and pending.take_top1() == []


def test_pending_is_due_past_its_count_bound_and_joins_like_direct_records():
    pending = PendingFeedback()
    rng = np.random.default_rng(0)
    scores = [rng.random((1, 10)).astype(np.float32) for _ in range(FEEDBACK_PENDING_MAX + 1)]
    due = [pending.add(f"r{i}", "1.0", s) for i, s in enumerate(scores)]
    assert not any(due[:-1]) and due[-1]
    via_pending, direct = FeedbackLog(classes=10), FeedbackLog(classes=10)
    via_pending.record_top1(pending.take_top1())
    direct.record_many([(f"r{i}", "1.0", s) for i, s in enumerate(scores)])
    labels = [{"request_id": f"r{i}", "label": int(s.argmax())} for i, s in enumerate(scores)]
    assert [r.to_dict() for r in via_pending.submit_many(labels)] == [r.to_dict() for r in direct.submit_many(labels)]


def test_top1_from_the_joined_buffers_is_what_the_log_computes_from_each_array():
    # take_top1 reads the top class of every row straight from each group's joined buffer; record_top1 then keeps
    # exactly what record_many keeps from the arrays themselves: same joins, same bytes, same evictions
    rng = np.random.default_rng(1)
    shapes = [(1, 10), (10,), (3, 10), (1, 7), (2, 1, 4), (1, 0), (1, 10)]
    scores = [rng.random(shape).astype(np.float32 if i % 2 else np.float64) for i, shape in enumerate(shapes * 20)]
    a = PendingFeedback()
    for i, s in enumerate(scores):
        a.add(f"r{i}", f"v{i % 3}", s)
    top = a.take_top1()
    assert [(rid, version) for rid, version, _ in top] == [(f"r{i}", f"v{i % 3}") for i in range(len(scores))]
    for (_, _, t), s in zip(top, scores, strict=True):
        if not s.shape[-1]:
            assert t == ()
            continue
        rows = s.reshape(1, -1) if s.ndim <= 1 else s.reshape(-1, s.shape[-1])
        assert t == tuple(int(k) for k in rows.argmax(axis=1))
    fast, slow = FeedbackLog(classes=10, max_rows=50, max_bytes=64 << 10), FeedbackLog(classes=10, max_rows=50, max_bytes=64 << 10)
    fast.record_top1(top)
    slow.record_many([(f"r{i}", f"v{i % 3}", s) for i, s in enumerate(scores)])
    assert (fast.size, fast._bytes, fast.totals) == (slow.size, slow._bytes, slow.totals) and fast.size <= 50
    labels = [{"request_id": f"r{i}", "label": 0, "index": 0} for i in range(len(scores))]
    assert [r.to_dict() for r in fast.submit_many(labels)] == [r.to_dict() for r in slow.submit_many(labels)]
