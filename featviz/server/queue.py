"""The fair, bounded render queue of ``featviz serve``.

A fixed pool of worker threads renders; at most ``max_queue`` jobs wait and
each client address has at most ``per_client`` jobs queued or running (429
beyond, answered at once); clients take turns (the one served longest ago
goes first), so one client's pile of jobs cannot starve another's; identical
requests share one job; a job stops at its next step once past its time
limit; a job that waits too long expires.

Time comes from a clock the queue is given (``time.monotonic`` by default),
so that tests can run the time limits on a clock that does not depend on
the machine's load.
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import FeatvizError
from ..microscope.settings import API_PREFIX
from .limits import Limits

Clock = Callable[[], float]


class RequestRefused(Exception):
    """A request the server answers with ``status`` and a one-line ``detail`` (never a traceback)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class JobStopped(Exception):
    """Raised from the render callback when a job runs past its time or is cancelled."""


@dataclass
class Job:
    id: str
    key: str              # digest of what the job renders: identical requests share a job
    client: str
    model: str            # slug
    layer: str
    unit: int
    steps: int
    size: int
    seed: int
    kinds: tuple[str, ...]
    out: Path             # result folder
    rel: str              # the same, relative to the site
    status: str = "queued"  # queued | running | done | error | timeout | expired | cancelled
    progress: float = 0.0
    error: str | None = None
    files: dict[str, list[str]] = field(default_factory=dict)
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    deadline: float = float("inf")
    cancelled: bool = False

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def public(self, ahead: int = 0) -> dict[str, Any]:
        """What a client sees of the job (``GET /api/jobs/<id>``)."""
        answer = {"id": self.id, "status": self.status, "progress": round(self.progress, 4), "model": self.model,
                  "layer": self.layer, "unit": self.unit, "steps": self.steps, "size": self.size, "seed": self.seed,
                  "kinds": list(self.kinds), "files": self.files, "error": self.error,
                  "status_url": f"/{API_PREFIX}/jobs/{self.id}"}
        if self.status == "queued":
            answer["ahead"] = ahead
        if self.started is not None and self.finished is not None:
            answer["seconds"] = round(self.finished - self.started, 3)
        return answer


class RenderQueue:
    """Bounded, fair job queue served by a fixed pool of worker threads.

    ``runner(job)`` renders one job in a worker thread; it reads ``job.deadline``
    and ``job.cancelled`` and raises ``JobStopped`` to stop."""

    def __init__(self, runner: Callable[[Job], None], limits: Limits, clock: Clock = time.monotonic):
        self.runner, self.limits, self.clock = runner, limits, clock
        self.pending: collections.OrderedDict[str, collections.deque[Job]] = collections.OrderedDict()
        self.jobs: dict[str, Job] = {}
        self.by_key: dict[str, Job] = {}
        self.running: set[str] = set()
        self.finished: collections.deque[str] = collections.deque()
        self.last_served: dict[str, float] = {}
        self.pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="featviz-render")
        self.wakeup: asyncio.Condition | None = None
        self.tasks: list[asyncio.Task] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start the workers on the running event loop (once per loop: tests run one loop each)."""
        loop = asyncio.get_running_loop()
        if self.loop is loop and self.tasks:
            return
        self.loop = loop
        self.wakeup = asyncio.Condition()
        self.tasks = [loop.create_task(self._worker()) for _ in range(self.limits.workers)]

    async def stop(self) -> None:
        for job in self.jobs.values():
            job.cancelled = True
        for task in self.tasks:
            task.cancel()
        self.tasks = []
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- accounting -----------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return sum(len(waiting) for waiting in self.pending.values())

    def client_load(self, client: str) -> int:
        return sum(1 for job in self.jobs.values() if job.client == client and job.active)

    def ahead_of(self, job: Job) -> int:
        """Jobs that will start before ``job`` under fair turns (an estimate for the page)."""
        if job.status != "queued":
            return 0
        own = self.pending.get(job.client)
        position = list(own).index(job) if own and job in own else 0
        return len(self.running) + position + sum(min(len(other), position + 1)
                                                  for client, other in self.pending.items() if client != job.client)

    # -- submit ------------------------------------------------------------------------------------------
    async def submit(self, job: Job) -> Job:
        """Queue ``job``, or return the active job making the same thing; RequestRefused(429) when full."""
        self.ensure_started()
        same = self.by_key.get(job.key)
        if same is not None and same.active:
            return same
        if self.client_load(job.client) >= self.limits.per_client:
            raise RequestRefused(429, f"this client already has {self.limits.per_client} renders queued or "
                                      "running; wait for them to finish")
        if self.queued >= self.limits.max_queue:
            raise RequestRefused(429, f"the render queue is full ({self.limits.max_queue} jobs waiting); "
                                      "try again shortly")
        job.created = self.clock()
        self.jobs[job.id] = job
        self.by_key[job.key] = job
        self.pending.setdefault(job.client, collections.deque()).append(job)
        async with self.wakeup:
            self.wakeup.notify()
        return job

    def done_job(self, job: Job) -> Job:
        """Register a job that is already complete (a cached result)."""
        job.created = job.started = job.finished = self.clock()
        self.jobs[job.id] = job
        self._remember(job)
        return job

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        if job.status == "queued":
            own = self.pending.get(job.client)
            if own and job in own:
                own.remove(job)
                if not own:
                    del self.pending[job.client]
            job.status, job.finished = "cancelled", self.clock()
            self._remember(job)

    def _pop(self) -> Job | None:
        while self.pending:
            # Fair turns: the client served longest ago (or never) goes first, whatever the
            # number of jobs it has waiting; ties by arrival.
            client = min(self.pending, key=lambda c: (self.last_served.get(c, -float("inf")),
                                                      self.pending[c][0].created))
            own = self.pending[client]
            job = own.popleft()
            if not own:
                del self.pending[client]
            now = self.clock()
            self.last_served[client] = now
            if len(self.last_served) > 4096:  # forget idle clients
                self.last_served = {c: t for c, t in self.last_served.items() if c in self.pending or c == client}
            if now - job.created > self.limits.queue_timeout:
                job.status, job.error, job.finished = "expired", "waited too long in the queue", now
                self._remember(job)
                continue
            return job
        return None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self.wakeup:
                await self.wakeup.wait_for(lambda: self.queued > 0)
                job = self._pop()
            if job is None:
                continue
            job.status, job.started = "running", self.clock()
            job.deadline = job.started + self.limits.job_timeout
            self.running.add(job.id)
            try:
                await loop.run_in_executor(self.pool, self.runner, job)
                job.status, job.progress = "done", 1.0
            except JobStopped:
                job.status = "cancelled" if job.cancelled else "timeout"
                job.error = ("cancelled" if job.cancelled else
                             f"stopped after the time limit of {self.limits.job_timeout:g} s")
            except FeatvizError as exc:
                job.status, job.error = "error", str(exc)
            except asyncio.CancelledError:
                job.status, job.error = "cancelled", "server stopping"
                raise
            except Exception as exc:  # a render bug must not kill the worker
                job.status, job.error = "error", f"{exc.__class__.__name__}: {exc}"
            finally:
                job.finished = self.clock()
                self.running.discard(job.id)
                self._remember(job)

    def _remember(self, job: Job) -> None:
        self.finished.append(job.id)
        while len(self.finished) > self.limits.keep_jobs:
            old = self.jobs.pop(self.finished.popleft(), None)
            if old is not None and self.by_key.get(old.key) is old:
                del self.by_key[old.key]
