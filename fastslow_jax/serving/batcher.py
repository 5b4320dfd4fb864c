"""Dynamic batching of concurrent queries in front of a SearchEngine, with a bounded queue.

One worker thread owns the engine. ``submit`` puts a request on a queue of at most ``queue_size``
waiting requests (full: ``Overloaded``, which the server answers with 503 and ``Retry-After``). The
worker takes the oldest request and everything queued behind it (up to ``max_batch``); while fewer
than the previous batch's size have come, it waits for more, at most ``max_wait_ms`` (so a lone
client never waits; while a batch computes, new requests pile up and the next batch leaves at once) and answers them with
one ``SearchEngine.search_batch`` call. A request whose deadline passed before its batch started,
or that was cancelled (its client disconnected or gave up), is dropped without being computed.
Every submitted request's future ends: with its answer, ``Timeout``, ``ShuttingDown`` or the error
the engine raised.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full (the server answers 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The server is stopping and takes no more work (503)."""


class Timeout(Exception):
    """The request's deadline passed before its batch started (504)."""


def check_settings(max_batch: int, max_wait_ms: float, queue_size: int, timeout_s: float,
                   engine_max_batch: int | None = None) -> None:
    """A ValueError naming the first bad batching setting (the serve flag in brackets), else None."""
    if max_batch < 1:
        raise ValueError(f"the batch size (--max-batch) must be at least 1, got {max_batch}")
    if engine_max_batch is not None and max_batch > engine_max_batch:
        raise ValueError(f"the batch size (--max-batch) {max_batch} exceeds the engine's {engine_max_batch} "
                         f"(the largest batch it compiles)")
    if max_wait_ms < 0:
        raise ValueError(f"the batch wait (--max-wait-ms) must be at least 0 ms, got {max_wait_ms:g}")
    if queue_size < 1:
        raise ValueError(f"the queue size (--queue-size) must be at least 1, got {queue_size}")
    if not timeout_s > 0:
        raise ValueError(f"the request timeout (--timeout) must be positive, got {timeout_s:g} s")


@dataclasses.dataclass(eq=False)
class Job:
    query: str
    k: int
    rerank: int
    arrival: float  # time.perf_counter() at submit
    deadline: float
    future: Future = dataclasses.field(default_factory=Future)


class Batcher:
    """Gathers concurrent ``submit`` calls into ``engine.search_batch`` calls (see the module doc)."""

    def __init__(self, engine, *, max_batch: int | None = None, max_wait_ms: float = 2.0, queue_size: int = 64,
                 timeout_s: float = 10.0, warm_up: bool = True):
        max_batch = engine.max_batch if max_batch is None else int(max_batch)
        check_settings(max_batch, max_wait_ms, queue_size, timeout_s, engine.max_batch)
        self.engine = engine
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1e3
        self.queue_size, self.timeout_s = int(queue_size), float(timeout_s)
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.ready = threading.Event()  # set once warm-up compiled every shape
        self.warm_up_error: BaseException | None = None
        self.warm_up_progress = (0, 0)  # (shapes compiled, shapes to compile)
        self.stats = collections.Counter()  # submitted, answered, rejected, timed_out, cancelled, failed, batches
        self.batch_sizes = collections.Counter()
        self._batch_s = 0.0  # recent batch compute time (for Retry-After)
        self._expect = 1  # the last batch's size: gathering waits for at most this many (and max_wait_ms)
        self._thread = threading.Thread(target=self._run, args=(warm_up,), name="fastslow-batcher", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------- the caller's side
    def submit(self, query: str, k: int, rerank: int) -> Job:
        """Queue a (checked) request; raises Overloaded when the queue is full, ShuttingDown when stopping."""
        now = time.perf_counter()
        job = Job(query, int(k), int(rerank), now, now + self.timeout_s)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.queue_size:
                self.stats["rejected"] += 1
                raise Overloaded(f"the server is busy: {len(self._queue)} requests are waiting (the queue holds "
                                 f"{self.queue_size}); retry shortly", self.retry_after_s())
            self._queue.append(job)
            self.stats["submitted"] += 1
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The caller no longer wants ``job``: a queued job leaves the queue and is never computed (one
        already in a running batch finishes there, and its answer is dropped)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                pass
        if job.future.cancel():
            self._count("cancelled")

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has likely drained (at least 1)."""
        batches = -(-len(self._queue) // self.max_batch)
        return max(1, int(round(batches * self._batch_s + 0.5)))

    def snapshot(self) -> dict:
        """The counters (submitted, answered, rejected, timed_out, cancelled, failed, batches) and the
        number of requests waiting, read together."""
        with self._cond:
            return {**self.stats, "queued": len(self._queue)}

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, timeout_s: float = 30.0) -> None:
        """Take no more work; queued jobs get ShuttingDown; waits for the running batch to finish."""
        self._close()
        self._thread.join(timeout_s)

    def _close(self) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server is shutting down"))

    def _count(self, what: str, n: int = 1) -> None:
        with self._cond:
            self.stats[what] += n

    # ----------------------------------------------------------------------------- the worker
    def _run(self, warm_up: bool) -> None:
        if warm_up:
            try:
                t0 = time.perf_counter()
                n = self.engine.warm_up(progress=self._warm_up_step)
                log.info("compiled %d shapes in %.1f s", n, time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 - reported by /readyz and every request
                log.exception("warm-up failed")
                self.warm_up_error = err
                self._close()
                return
        self.ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._answer(batch)

    def _warm_up_step(self, done: int, total: int) -> None:
        self.warm_up_progress = (done, total)

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch = [self._queue.popleft()]
            until = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                if len(batch) >= self._expect:
                    break  # as many as last time: waiting for more would likely only add latency
                left = until - time.perf_counter()
                if left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            self._expect = len(batch)
        return batch

    def _answer(self, batch: list[Job]) -> None:
        now = time.perf_counter()
        live = []
        for job in batch:
            if not job.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            if now > job.deadline:
                self._count("timed_out")
                job.future.set_exception(Timeout(f"the search did not start within {self.timeout_s:g} s"))
                continue
            live.append(job)
        if not live:
            return
        try:
            answers = self.engine.search_batch([(j.query, j.k, j.rerank) for j in live],
                                               queued_ms=[1e3 * (now - j.arrival) for j in live])
        except Exception as err:  # noqa: BLE001 - every request of the batch gets the error
            log.exception("batch of %d failed", len(live))
            self._count("failed", len(live))
            for job in live:
                job.future.set_exception(err)
            return
        self._batch_s = 0.8 * self._batch_s + 0.2 * (time.perf_counter() - now)
        with self._cond:
            self.stats["batches"] += 1
            self.stats["answered"] += len(live)
            self.batch_sizes[len(live)] += 1
        for job, answer in zip(live, answers):
            job.future.set_result(answer)
