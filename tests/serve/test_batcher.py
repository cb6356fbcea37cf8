"""The device thread's micro-batching: full batches, split submissions put back together, errors contained."""

import threading

import numpy as np
import pytest

from scenecls.serve.batcher import Batcher


def test_submissions_are_split_across_full_batches_and_put_back_together():
    gate, calls = threading.Event(), []

    def forward(rows):
        gate.wait(30)
        calls.append(rows.copy())
        return rows * 10

    batcher = Batcher(forward, max_batch=4, max_wait_s=0.05)
    submissions = [np.arange(start, start + n)[:, None] + 1 for start, n in ((0, 5), (100, 3), (200, 6))]
    pending = [batcher.submit(rows) for rows in submissions]
    gate.set()
    for rows, result in zip(submissions, pending, strict=True):
        np.testing.assert_array_equal(np.asarray(result), rows * 10)
    batcher.close()
    assert [len(call) for call in calls] == [4, 4, 4, 4]  # always padded to the batch
    assert [int((call != 0).all(axis=1).sum()) for call in calls] == [
        4,
        4,
        4,
        2,
    ]  # 5 = 4 + 1, 1 + 3, 6 = 4 + 2
    assert batcher.stats().rows == 14 and batcher.stats().waiting == 0


def test_a_failed_pass_fails_its_submissions_only():
    def forward(rows):
        if (rows < 0).any():
            raise RuntimeError("device fault")
        return rows

    batcher = Batcher(forward, max_batch=2, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="device fault"):
        np.asarray(batcher.submit(-np.ones((1, 1))))
    np.testing.assert_array_equal(np.asarray(batcher.submit(np.ones((3, 1)))), np.ones((3, 1)))
    assert batcher.call(lambda x: x + 1, 41) == 42  # jobs run on the same thread
    batcher.close()


def test_without_batching_each_submission_is_one_pass():
    calls = []
    batcher = Batcher(
        lambda rows: calls.append(len(rows)) or rows, max_batch=8, max_wait_s=0.05, batching=False
    )
    for n in (3, 8, 1):
        np.asarray(batcher.submit(np.ones((n, 1))))
    batcher.close()
    assert calls == [3, 8, 1]


def test_close_while_a_batch_is_filling_runs_it_and_returns():
    batcher = Batcher(lambda rows: rows, max_batch=4, max_wait_s=0.5)
    pending = batcher.submit(np.ones((1, 1)))
    closer = threading.Thread(target=batcher.close)
    closer.start()  # the stop marker arrives while the thread waits to fill the batch
    closer.join(10)
    assert not closer.is_alive(), "close() hung"
    np.testing.assert_array_equal(np.asarray(pending), np.ones((1, 1)))


def test_a_wrong_output_fails_its_batch_and_the_thread_serves_on():
    bad = threading.Event()
    bad.set()

    def forward(rows):
        return rows[:1] if bad.is_set() else rows  # first pass returns too few rows

    batcher = Batcher(forward, max_batch=2, max_wait_s=0.0)
    with pytest.raises(ValueError, match="returned 1 rows for 2"):
        np.asarray(batcher.submit(np.ones((2, 1))))
    bad.clear()
    assert batcher.alive()
    np.testing.assert_array_equal(np.asarray(batcher.submit(np.ones((2, 1)))), np.ones((2, 1)))
    assert batcher.stats().waiting == 0
    batcher.close()
    assert not batcher.alive()
