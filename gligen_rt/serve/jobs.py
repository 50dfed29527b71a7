"""Jobs: a bounded queue in front of a fixed number of pipeline calls running at once.

`JobRunner.submit` refuses (QueueFull, HTTP 503) when `max_queue` jobs already wait; at most
`concurrency` pipeline calls run at once, each on a worker thread (GligenPipeline is thread-safe).
A job is cancelled by setting its event: a waiting job is dropped, a running one stops after its
current denoising step (the step callback raises Cancelled), so a cancelled or timed-out request
never yields an image. `on_progress(i, n)` is called from the worker thread after every step.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gligen_rt.core.backends import GPU_BACKENDS
from gligen_rt.core.errors import GligenError
from gligen_rt.core.request import GenerationRequest

log = logging.getLogger(__name__)


# On GPU backends two calls at once overlap one request's host work (tokenizing,
# reading images, PNG encoding) with another's device work. CPU backends already use every core
# inside one call, so a second call only adds memory and latency.
def default_concurrency(backend: str) -> int:
    """Pipeline calls at once that fit a backend: 2 on GPU backends, 1 on CPU backends."""
    return 2 if backend in GPU_BACKENDS else 1


class QueueFull(GligenError):
    """Too many requests wait already (HTTP 503)."""


class Cancelled(Exception):
    """The job was cancelled (client gone, timeout, shutdown) before it finished."""


@dataclass(eq=False)  # identity: jobs are kept in a set
class Job:
    """One request in the runner. `future` resolves to the GenerationResult or the error."""

    request: GenerationRequest
    on_progress: Callable[[int, int], None] | None = None
    on_done: Callable[[], None] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: cf.Future[Any] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.enqueued


class JobRunner:
    """`pipeline` (a callable request, on_step= -> result), run by `concurrency` worker threads
    behind a queue of at most `max_queue` waiting jobs."""

    def __init__(self, pipeline: Callable[..., Any], concurrency: int = 1, max_queue: int = 32) -> None:
        if concurrency < 1 or max_queue < 0:
            raise ValueError("concurrency must be >= 1 and max_queue >= 0")
        self.pipeline = pipeline
        self.concurrency = concurrency
        self.max_queue = max_queue
        self._executor = cf.ThreadPoolExecutor(concurrency, thread_name_prefix="gligen-serve")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._jobs: set[Job] = set()
        self._closed = False

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def submit(self, job: Job) -> Job:
        """Queue `job` (sets job.future); QueueFull when max_queue jobs already wait."""
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down: retry on another instance")
            if self._waiting >= self.max_queue and self._running + self._waiting >= self.concurrency:
                raise QueueFull(
                    f"the queue is full ({self._waiting} requests waiting, {self._running} running): retry in a few seconds"
                )
            self._waiting += 1
            self._jobs.add(job)
            job.future = self._executor.submit(self._run, job)
        job.future.add_done_callback(lambda f: self._forget(job))
        return job

    def cancel(self, job: Job) -> None:
        """Stop `job`: dropped if it still waits, stopped after its current step if it runs."""
        job.cancel_event.set()
        if job.future is not None and job.future.cancel():  # never started: _run will not run
            with self._lock:
                self._waiting -= 1
            self._finish(job)

    def close(self) -> None:
        """Cancel every job and wait for running ones to stop (at their next step)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        for job in jobs:
            self.cancel(job)
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- worker side ------------------------------------------------------------------------------

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def _finish(self, job: Job) -> None:
        job.finished = time.perf_counter()
        if job.on_done is not None:
            try:
                job.on_done()
            except Exception:  # a cleanup failure must not hide the job's own result
                log.exception("cleanup of job %s failed", job.id)

    def _run(self, job: Job) -> Any:
        with self._lock:
            self._waiting -= 1
            self._running += 1
        job.started = time.perf_counter()
        try:
            if job.cancel_event.is_set():
                raise Cancelled(job.id)

            def on_step(i: int, n: int) -> None:
                if job.cancel_event.is_set():
                    raise Cancelled(job.id)
                if job.on_progress is not None:
                    job.on_progress(i, n)

            return self.pipeline(job.request, on_step=on_step)
        finally:
            with self._lock:
                self._running -= 1
            self._finish(job)
