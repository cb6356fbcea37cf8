"""Micro-batching: one thread owns the device and runs every forward pass of the server.

Requests submit rows (a chunk of patches, or a whole image squeezed to the model's input) of a fixed shape.
With batching on, the device thread takes the first waiting submission, then collects more of the same
shape for at most ``max_wait_s`` or until ``max_batch`` rows (splitting a submission that does not fit, its
rest starts the next batch), pads them to ``max_batch`` (one compiled shape) and runs one forward pass for
all of them. With batching off, each submission is one forward pass on its own (as ``--mode=infer`` does
it: a request's chunk, padded by the request). Other device work (shared mode's
whole-image analysis) runs on the same thread as a job, between batches.
"""

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from absl import logging

# uint8 rows (n, ...) -> probabilities (n, num_classes), for any n up to the compiled batch.
Forward = Callable[[np.ndarray], Any]
_STOP = object()  # close()'s marker in the queue (None means "nothing carried over" in the loop)


class Pending:
    """The probabilities of one submission (or a job's result), once the device thread has computed them.

    ``np.asarray(pending)`` waits for them, so a ``Pending`` can stand where a patch function's (possibly
    asynchronous) output is expected. Only the device thread writes it.
    """

    def __init__(self, rows: int = 0):
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._rows, self._missing = rows, rows

    def put(self, start: int, values: np.ndarray) -> None:
        """Rows ``start:start + len(values)`` of the submission's result; done when every row is in."""
        if self._value is None:
            self._value = np.empty((self._rows, *values.shape[1:]), values.dtype)
        self._value[start : start + len(values)] = values
        self._missing -= len(values)
        if self._missing == 0:
            self._done.set()

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """A job's result, or the error of the whole submission."""
        self._value, self._error = value, error
        self._done.set()

    def result(self) -> Any:
        """The probabilities (waits for them); re-raises the forward pass's error."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.result(), dtype=dtype)


class _Rows(NamedTuple):
    rows: np.ndarray
    pending: Pending
    start: int = 0  # where these rows go in the submission's result (a submission may be split)


class _Job(NamedTuple):
    fn: Callable[..., Any]
    args: tuple
    pending: Pending


class BatchStats(NamedTuple):
    """Counters since start: forward passes, rows computed (real, not padding), jobs run, rows waiting."""

    forward_calls: int
    rows: int
    jobs: int
    waiting: int


class Batcher:
    """The device thread and its queue; ``submit`` rows, ``call`` other device work; ``close`` when done."""

    def __init__(self, forward: Forward, max_batch: int, max_wait_s: float, batching: bool = True):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.forward, self.max_batch, self.max_wait_s, self.batching = (
            forward,
            max_batch,
            max_wait_s,
            batching,
        )
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._forward_calls = self._rows = self._jobs = self._waiting = 0
        self._thread = threading.Thread(target=self._loop, name="scenecls-device", daemon=True)
        self._thread.start()

    def submit(self, rows: np.ndarray) -> Pending:
        """Queues ``rows`` (n, ...) for a forward pass (with batching, several if n > ``max_batch``)."""
        if not len(rows):
            raise ValueError("nothing to submit (0 rows)")
        pending = Pending(len(rows))
        with self._lock:
            self._waiting += len(rows)
        self._queue.put(_Rows(rows, pending))
        return pending

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the device thread (between batches); waits for it and returns its result."""
        pending = Pending()
        self._queue.put(_Job(fn, args, pending))
        return pending.result()

    def stats(self) -> BatchStats:
        with self._lock:
            return BatchStats(self._forward_calls, self._rows, self._jobs, self._waiting)

    def close(self) -> None:
        """Stops the device thread once everything queued before has run."""
        self._queue.put(_STOP)
        self._thread.join()

    def alive(self) -> bool:
        """Whether the device thread runs (it only ends on ``close``)."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        carried = None  # an item taken while filling a batch that did not fit in it
        while True:
            item = carried if carried is not None else self._queue.get()
            carried = None
            if item is _STOP:
                return
            if isinstance(item, _Job):
                self._run_job(item)
                continue
            if not self.batching:
                self._run([item])
                continue
            first, carried = self._split(item, self.max_batch)
            batch = [first]
            if carried is None:
                carried = self._fill(batch)
            self._run(batch)

    @staticmethod
    def _split(item: _Rows, room: int) -> tuple[_Rows, _Rows | None]:
        """``item`` cut to at most ``room`` rows, and the rest (None if nothing is left)."""
        if len(item.rows) <= room:
            return item, None
        rest = item._replace(rows=item.rows[room:], start=item.start + room)
        return item._replace(rows=item.rows[:room]), rest

    def _fill(self, batch: list[_Rows]) -> Any:
        """Adds same-shaped submissions to ``batch`` until full or ``max_wait_s`` passed; returns what is
        left to start the next batch with (the rest of a split submission, another item, or None)."""
        count, shape = len(batch[0].rows), batch[0].rows.shape[1:]
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if not (isinstance(item, _Rows) and item.rows.shape[1:] == shape):
                return item
            part, rest = self._split(item, self.max_batch - count)
            batch.append(part)
            count += len(part.rows)
            if rest is not None:
                return rest
        return None

    def _run(self, batch: list[_Rows]) -> None:
        """One forward pass for ``batch`` (padded to ``max_batch`` with batching); hands out the rows.

        Any failure (stacking, the device, a wrong output) goes to every submission of the batch; the
        thread lives on.
        """
        count = sum(len(item.rows) for item in batch)
        try:
            rows = np.concatenate([item.rows for item in batch]) if len(batch) > 1 else batch[0].rows
            if self.batching and count < self.max_batch:
                padding = np.zeros((self.max_batch - count, *rows.shape[1:]), rows.dtype)
                rows = np.concatenate([rows, padding])
            outputs = np.asarray(self.forward(rows))[:count]
            if len(outputs) != count:
                raise ValueError(f"the forward pass returned {len(outputs)} rows for {count}")
            offset = 0
            for item in batch:
                item.pending.put(item.start, outputs[offset : offset + len(item.rows)])
                offset += len(item.rows)
        except Exception as e:
            logging.exception("Forward pass of %d rows failed", count)
            for item in batch:
                item.pending.finish(error=e)
        finally:
            with self._lock:
                self._forward_calls += 1
                self._rows += count
                self._waiting -= count

    def _run_job(self, job: _Job) -> None:
        try:
            value = job.fn(*job.args)
        except Exception as e:
            job.pending.finish(error=e)
        else:
            job.pending.finish(value)
        with self._lock:
            self._jobs += 1
