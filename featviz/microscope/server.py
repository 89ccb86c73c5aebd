"""``featviz serve``: an ASGI app that serves a microscope site and renders on demand.

- Files of the site are served read-only. Paths are checked: no ``..`` or
  hidden segments, nothing that resolves (symlinks included) outside the site,
  no manifest or lock files; HTML gets a marker that turns on the page's
  on-demand features.
- A unit that was not built gets a page made from the manifest on the fly;
  its script asks ``POST /api/render`` for the unit's visualizations and
  polls ``GET /api/jobs/<id>`` for progress.
- Renders go through a bounded job queue: a fixed small pool of worker threads
  (default 1), at most ``max_queue`` jobs waiting (then 429), at most
  ``per_client`` jobs per client address (then 429), round-robin between
  clients so one client's jobs cannot starve another's, per-request caps on
  steps and size (422 beyond), a time limit per job (the render stops at the
  next step), and identical requests share one job. Results are cached under
  ``SITE/_live/`` (the oldest are pruned past ``max_live``).
- Bodies over ``max_body`` bytes get 413, malformed JSON 400, bad fields 422,
  URLs over ``max_path`` characters 414.
"""
from __future__ import annotations

import asyncio
import collections
import json
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import FeatvizError
from ..imageio import atomic_write, save_png
from .manifest import Manifest
from .pages import ModelView, layer_dir, layer_page, unit_page
from .settings import (API_PREFIX, DIVERSITY, LIVE_DIR, MANIFEST_NAME, RENDER_KINDS, BuildSettings, batch_seed,
                       digest, panel_settings, preset, slug)

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise FeatvizError("featviz serve needs FastAPI and uvicorn: pip install 'featviz[serve]'") from exc

KINDS = (*RENDER_KINDS, DIVERSITY)
SERVE_MARKER = '<meta name="featviz-serve" content="1">'
GENERATOR = '<meta name="generator" content="featviz microscope">'
DENIED_SUFFIXES = (".sqlite", ".sqlite-journal", ".sqlite-wal", ".lock", ".tmp")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
}


@dataclass(frozen=True)
class Limits:
    """Bounds of the on-demand renderer (all per server)."""

    workers: int = 1             # renders at once (threads); torch already uses every core
    max_queue: int = 8           # jobs waiting; beyond: 429
    per_client: int = 2          # queued + running jobs per client address; beyond: 429
    max_steps: int = 256         # per request; beyond: 422
    max_size: int = 256          # px per request; beyond: 422
    min_size: int = 32
    job_timeout: float = 300.0   # seconds of rendering per job
    queue_timeout: float = 600.0  # seconds a job may wait before it is dropped
    max_body: int = 4096         # bytes of a request body; beyond: 413
    max_path: int = 1024         # characters of a URL path; beyond: 414
    max_live: int = 512          # cached on-demand results kept under SITE/_live
    keep_jobs: int = 256         # finished jobs remembered for status queries


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=200)
    layer: str = Field(..., min_length=1, max_length=200)
    unit: int = Field(..., ge=0, le=10_000_000)
    steps: int | None = Field(None, ge=1, le=100_000)
    size: int | None = Field(None, ge=16, le=4096)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    kinds: list[Literal["channel", "neuron", "negative", "diversity"]] | None = Field(None, min_length=1,
                                                                                      max_length=4)


class Busy(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class JobStopped(Exception):
    """Raised from the render callback when a job runs past its time or is cancelled."""


@dataclass
class Job:
    id: str
    key: str
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
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    deadline: float = float("inf")
    cancelled: bool = False

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def public(self, ahead: int = 0) -> dict[str, Any]:
        d = {"id": self.id, "status": self.status, "progress": round(self.progress, 4), "model": self.model,
             "layer": self.layer, "unit": self.unit, "steps": self.steps, "size": self.size, "seed": self.seed,
             "kinds": list(self.kinds), "files": self.files, "error": self.error,
             "status_url": f"/{API_PREFIX}/jobs/{self.id}"}
        if self.status == "queued":
            d["ahead"] = ahead
        if self.started and self.finished:
            d["seconds"] = round(self.finished - self.started, 3)
        return d


class RenderQueue:
    """Bounded, fair job queue served by a fixed pool of worker threads."""

    def __init__(self, runner, limits: Limits):
        self.runner, self.limits = runner, limits
        self.pending: collections.OrderedDict[str, collections.deque[Job]] = collections.OrderedDict()
        self.jobs: dict[str, Job] = {}
        self.by_key: dict[str, Job] = {}
        self.running: set[str] = set()
        self.finished: collections.deque[str] = collections.deque()
        self.last_served: dict[str, float] = {}
        self.pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="featviz-render")
        self.cond: asyncio.Condition | None = None
        self.tasks: list[asyncio.Task] = []
        self.loop = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is loop and self.tasks:
            return
        self.loop = loop
        self.cond = asyncio.Condition()
        self.tasks = [loop.create_task(self._worker()) for _ in range(self.limits.workers)]

    async def stop(self) -> None:
        for job in self.jobs.values():
            job.cancelled = True
        for t in self.tasks:
            t.cancel()
        self.tasks = []
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- accounting -----------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.pending.values())

    def client_load(self, client: str) -> int:
        return sum(1 for j in self.jobs.values() if j.client == client and j.active)

    def ahead_of(self, job: Job) -> int:
        """Jobs that will start before ``job`` under fair turns (an estimate for the page)."""
        if job.status != "queued":
            return 0
        q = self.pending.get(job.client)
        pos = list(q).index(job) if q and job in q else 0
        return len(self.running) + pos + sum(min(len(other), pos + 1) for c, other in self.pending.items()
                                             if c != job.client)

    # -- submit ------------------------------------------------------------------------------------------
    async def submit(self, job: Job) -> Job:
        self.ensure_started()
        same = self.by_key.get(job.key)
        if same is not None and same.active:
            return same
        if self.client_load(job.client) >= self.limits.per_client:
            raise Busy(429, f"this client already has {self.limits.per_client} renders queued or running; "
                            "wait for them to finish")
        if self.queued >= self.limits.max_queue:
            raise Busy(429, f"the render queue is full ({self.limits.max_queue} jobs waiting); try again shortly")
        self.jobs[job.id] = job
        self.by_key[job.key] = job
        self.pending.setdefault(job.client, collections.deque()).append(job)
        async with self.cond:
            self.cond.notify()
        return job

    def done_job(self, job: Job) -> Job:
        """Register a job that is already complete (a cached result)."""
        self.jobs[job.id] = job
        self._remember(job)
        return job

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        if job.status == "queued":
            q = self.pending.get(job.client)
            if q and job in q:
                q.remove(job)
                if not q:
                    del self.pending[job.client]
            job.status, job.finished = "cancelled", time.monotonic()
            self._remember(job)

    def _pop(self) -> Job | None:
        while self.pending:
            # Fair turns: the client served longest ago (or never) goes first, whatever the
            # number of jobs it has waiting; ties by arrival.
            client = min(self.pending, key=lambda c: (self.last_served.get(c, -1.0), self.pending[c][0].created))
            q = self.pending[client]
            job = q.popleft()
            if not q:
                del self.pending[client]
            self.last_served[client] = time.monotonic()
            if len(self.last_served) > 4096:  # forget idle clients
                self.last_served = {c: t for c, t in self.last_served.items() if c in self.pending or c == client}
            if time.monotonic() - job.created > self.limits.queue_timeout:
                job.status, job.error, job.finished = "expired", "waited too long in the queue", time.monotonic()
                self._remember(job)
                continue
            return job
        return None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self.cond:
                await self.cond.wait_for(lambda: self.queued > 0)
                job = self._pop()
            if job is None:
                continue
            job.status, job.started = "running", time.monotonic()
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
                job.finished = time.monotonic()
                self.running.discard(job.id)
                self._remember(job)

    def _remember(self, job: Job) -> None:
        self.finished.append(job.id)
        while len(self.finished) > self.limits.keep_jobs:
            old = self.jobs.pop(self.finished.popleft(), None)
            if old is not None and self.by_key.get(old.key) is old:
                del self.by_key[old.key]


class Microscope:
    """The state behind the app: the site, its manifest, the models and the queue."""

    def __init__(self, site, model=None, limits: Limits | None = None):
        from ..models import ModelOrganism

        self.site = Path(site).resolve()
        if not (self.site / MANIFEST_NAME).is_file():
            raise FeatvizError(f"{site} is not a microscope site (no {MANIFEST_NAME}); "
                               "make one with 'featviz microscope build'")
        self.limits = limits or Limits()
        self._views: dict[str, tuple[tuple, ModelView]] = {}
        self._models_cache: tuple | None = None
        self._models: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        self._model_lock = threading.Lock()
        self._view_lock = threading.Lock()
        if isinstance(model, ModelOrganism):
            self._models[slug(model.name)] = model
        elif isinstance(model, str):
            self._names[slug(model)] = model
        elif isinstance(model, dict):
            self._models.update({slug(k): v for k, v in model.items()})
        self.queue = RenderQueue(self.run_job, self.limits)

    # -- manifest views -------------------------------------------------------------------------------
    def _stamp(self) -> tuple | None:
        try:
            st = (self.site / MANIFEST_NAME).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def models(self) -> dict[str, dict]:
        stamp = self._stamp()
        with self._view_lock:
            if self._models_cache and self._models_cache[0] == stamp:
                return self._models_cache[1]
            with Manifest(self.site, readonly=True) as man:
                models = man.models()
            self._models_cache = (stamp, models)
            return models

    def view(self, model_slug: str) -> ModelView | None:
        stamp = self._stamp()
        if stamp is None:
            return None
        with self._view_lock:
            cached = self._views.get(model_slug)
            if cached and cached[0] == stamp:
                return cached[1]
            with Manifest(self.site, readonly=True) as man:
                try:
                    view = ModelView.load(man, model_slug)
                except KeyError:
                    return None
            self._views[model_slug] = (stamp, view)
            return view

    def model(self, model_slug: str, view: ModelView):
        with self._model_lock:
            if model_slug not in self._models:
                from ..models import load

                name = self._names.get(model_slug, view.name)
                try:
                    self._models[model_slug] = load(name)
                except FeatvizError as exc:
                    raise FeatvizError(f"cannot load the model {name!r} to render on demand: {exc} "
                                       "(start featviz serve with --model)") from None
            return self._models[model_slug]

    # -- rendering -------------------------------------------------------------------------------------------------
    def settings_for(self, view: ModelView, steps: int, size: int, seed: int) -> BuildSettings:
        rec = dict(view.info.get("settings") or {})
        base = preset(rec.get("preset", "quick") if rec.get("preset") in ("quick", "full") else "quick")
        fields = {k: rec[k] for k in ("recipe", "batch_size", "diversity", "diversity_images", "diversity_batch")
                  if k in rec}
        return replace(base, **fields, steps=steps, size=size, seed=seed)

    def run_job(self, job: Job) -> None:
        view = self.view(job.model)
        model = self.model(job.model, view)
        s = self.settings_for(view, job.steps, job.size, job.seed)
        from . import visuals

        total = job.steps * len(job.kinds)
        done_steps = 0

        def callback(step, _value):
            if job.cancelled or time.monotonic() > job.deadline:
                raise JobStopped
            job.progress = min(0.999, (done_steps + step) / total)

        files: dict[str, list[str]] = {}
        model_id = {"name": model.name, "weights": view.info.get("weights")}
        for kind in job.kinds:
            h = digest(panel_settings(kind, s, model_id))
            seed = batch_seed(h, job.layer, job.unit)
            meta = {"panel": kind, "layer": job.layer, "unit": job.unit, "on_demand": True,
                    "steps": job.steps, "size": job.size, "seed": seed}
            if kind == DIVERSITY:
                images = visuals.render_diversity(model, [(job.layer, job.unit)], s, seed, callback)[0]
                names = [f"diversity-{j}.png" for j in range(len(images))]
            else:
                images = [visuals.render_kind(model, kind, [(job.layer, job.unit)], s, seed, callback)[0][0]]
                names = [f"{kind}.png"]
            for name, img in zip(names, images):
                save_png(img, job.out / name, {"microscope": meta})
            files[kind] = [f"{job.rel}/{n}" for n in names]
            done_steps += job.steps
        job.files = files
        atomic_write(job.out / "done.json", lambda tmp: Path(tmp).write_text(json.dumps(files)))
        self.prune_live(keep=job.out)

    def prune_live(self, keep: Path) -> None:
        """Keep at most ``max_live`` cached results (the oldest go first)."""
        live = self.site / LIVE_DIR
        try:
            done = sorted(live.glob("*/*/*/*/done.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for marker in done[:max(0, len(done) - self.limits.max_live)]:
            if marker.parent != keep:
                shutil.rmtree(marker.parent, ignore_errors=True)

    def make_job(self, req: RenderRequest, client: str) -> tuple[Job, bool]:
        """(job, cached): validate a request against the site and the limits."""
        lim = self.limits
        models = self.models()
        model_slug = slug(req.model) if req.model else (next(iter(models)) if len(models) == 1 else None)
        if model_slug is None:
            raise Busy(422, f"say which model: one of {', '.join(models)}")
        if model_slug not in models:
            raise Busy(404, f"no model {req.model!r} in this site (it has {', '.join(models)})")
        view = self.view(model_slug)
        linfo = view.layer_info(req.layer)
        if linfo is None:
            raise Busy(404, f"no layer {req.layer!r} in {view.name}")
        if not linfo.get("height"):
            raise Busy(422, f"layer {req.layer!r} has no spatial units to render")
        if req.unit >= linfo["channels"]:
            raise Busy(422, f"unit {req.unit} is out of range for {req.layer}: valid units are "
                            f"0-{linfo['channels'] - 1}")
        rec = view.info.get("settings") or {}
        steps = req.steps if req.steps is not None else int(rec.get("steps", 32))
        size = req.size if req.size is not None else int(rec.get("size", 96))
        if steps > lim.max_steps:
            raise Busy(422, f"steps {steps} is over this server's limit of {lim.max_steps}")
        if not lim.min_size <= size <= lim.max_size:
            raise Busy(422, f"size {size} is outside this server's limits of {lim.min_size}-{lim.max_size} px")
        kinds = tuple(dict.fromkeys(req.kinds or KINDS))
        key = digest({"model": model_slug, "layer": req.layer, "unit": req.unit, "steps": steps, "size": size,
                      "seed": req.seed, "kinds": sorted(kinds), "settings": {k: rec.get(k) for k in (
                          "recipe", "diversity", "diversity_images", "preset")}, "weights": view.info.get("weights")})
        rel = f"{LIVE_DIR}/{model_slug}/{layer_dir(req.layer)}/{req.unit}/{key}"
        job = Job(uuid.uuid4().hex[:16], key, client, model_slug, req.layer, req.unit, steps, size, req.seed,
                  kinds, self.site / rel, rel)
        marker = job.out / "done.json"
        if marker.is_file():
            try:
                job.files = json.loads(marker.read_text())
                if all((self.site / f).is_file() for fs in job.files.values() for f in fs):
                    job.status, job.progress = "done", 1.0
                    job.started = job.finished = time.monotonic()
                    return job, True
            except (OSError, ValueError):
                pass
        return job, False

    # -- files ----------------------------------------------------------------------------------------------
    def resolve(self, path: str) -> Path | None:
        """The file or folder under the site that ``path`` names, or None (never outside the site)."""
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None
        target = (self.site.joinpath(*parts)).resolve()
        if target != self.site and self.site not in target.parents:
            return None
        if target.name.endswith(DENIED_SUFFIXES) or target.name == MANIFEST_NAME:
            return None
        return target

    def dynamic_page(self, parts: list[str]) -> str | None:
        """A page for a unit or layer of a site model that was not built."""
        if parts and parts[-1] == "index.html":
            parts = parts[:-1]
        if len(parts) not in (2, 3):
            return None
        view = self.view(parts[0])
        if view is None:
            return None
        layer = next((l["name"] for l in view.layer_table() if layer_dir(l["name"]) == parts[1] and l.get("height")),
                     None)
        if layer is None:
            return None
        if len(parts) == 2:
            return layer_page(view, layer)
        if not parts[2].isdigit() or len(parts[2]) > 9:
            return None
        unit = int(parts[2])
        if unit >= view.layer_info(layer)["channels"]:
            return None
        return unit_page(view, layer, unit, extra=self.stored_examples(view, layer, unit))

    def stored_examples(self, view: ModelView, layer: str, unit: int) -> dict:
        """The dataset examples of an unbuilt unit, when the site's example store covers its layer."""
        from ..examples import ExampleStore
        from .build import examples_info
        from .manifest import Panel
        from .settings import EXAMPLES, EXAMPLES_DIR

        path = self.site / view.slug / EXAMPLES_DIR
        if not ExampleStore.exists(path):
            return {}
        try:
            with ExampleStore(path) as store:
                if not store.complete or layer not in store.layers():
                    return {}
                info, files = examples_info(store, view.slug, layer, unit)
        except FeatvizError:
            return {}
        return {EXAMPLES: Panel(view.slug, layer, unit, EXAMPLES, "", tuple(files), info)}


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text.replace(GENERATOR, GENERATOR + "\n" + SERVE_MARKER, 1), status_code=status,
                        headers={"Cache-Control": "no-cache"})


def create_app(site, model=None, *, limits: Limits | None = None, **limit_overrides) -> FastAPI:
    """The ASGI app serving ``site``. ``model``: a name or ModelOrganism for on-demand renders
    (default: each site model, loaded by its name when first needed). Limits: see ``Limits``."""
    limits = replace(limits or Limits(), **limit_overrides)
    state = Microscope(site, model, limits)

    async def lifespan(app):
        yield
        await state.queue.stop()

    app = FastAPI(title="featviz microscope", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.microscope = state

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.scope.get("path", "")
        if len(path) > limits.max_path or len(request.scope.get("query_string", b"")) > limits.max_path:
            response = _error(414, "URL too long")
        elif "\x00" in path or "\\" in path:
            response = _error(400, "malformed path")
        elif any(seg == ".." for seg in path.split("/")):
            response = _error(400, "path traversal is not allowed")
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.get(f"/{API_PREFIX}/info")
    async def info():
        q = state.queue
        return {"models": {s: {"name": i["name"], "layers": len(i["layers"])} for s, i in state.models().items()},
                "limits": {k: getattr(limits, k) for k in ("max_steps", "max_size", "min_size", "max_queue",
                                                           "per_client", "workers", "job_timeout")},
                "queue": {"queued": q.queued, "running": len(q.running)}}

    @app.post(f"/{API_PREFIX}/render")
    async def render_endpoint(request: Request):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body):
            return _error(413, f"request body over {limits.max_body} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body:
                return _error(413, f"request body over {limits.max_body} bytes")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body must be JSON, e.g. {\"layer\": \"blocks.8\", \"unit\": 12}")
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON object")
        try:
            req = RenderRequest.model_validate(data)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            return _error(422, errs)
        client = request.client.host if request.client else "unknown"
        try:
            job, cached = state.make_job(req, client)
            if cached:
                return JSONResponse(state.queue.done_job(job).public(), status_code=200)
            job = await state.queue.submit(job)
        except Busy as exc:
            headers = {"Retry-After": "5"} if exc.status == 429 else None
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)
        return JSONResponse(job.public(state.queue.ahead_of(job)), status_code=202)

    @app.get(f"/{API_PREFIX}/jobs/{{job_id}}")
    async def job_status(job_id: str):
        job = state.queue.jobs.get(job_id) if len(job_id) <= 64 else None
        if job is None:
            return _error(404, "no such job (finished jobs are forgotten after a while)")
        return job.public(state.queue.ahead_of(job))

    @app.delete(f"/{API_PREFIX}/jobs/{{job_id}}")
    async def job_cancel(job_id: str, request: Request):
        job = state.queue.jobs.get(job_id) if len(job_id) <= 64 else None
        if job is None:
            return _error(404, "no such job")
        client = request.client.host if request.client else "unknown"
        if job.client != client:
            return _error(403, "not your job")
        state.queue.cancel(job)
        return job.public()

    @app.api_route(f"/{API_PREFIX}/{{rest:path}}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def api_unknown(rest: str):
        return _error(404, "unknown API endpoint")

    @app.api_route("/{path:path}", methods=["GET", "HEAD"])
    async def files(path: str, request: Request):
        target = state.resolve(path)
        if target is None:
            return _error(404, "not found")
        url_path = request.url.path
        parts = [p for p in path.split("/") if p]
        # Redirects are built from the checked segments: "//host" can never become an open redirect.
        slashed = "/" + "".join(f"{p}/" for p in parts)
        if target.is_dir():
            if not url_path.endswith("/"):
                return RedirectResponse(slashed, status_code=307)
            index = target / "index.html"
            if index.is_file():
                return _html(index.read_text(encoding="utf-8"))
            target = index  # not built: maybe a page made on demand
        if target.is_file():
            if target.suffix == ".html":
                return _html(target.read_text(encoding="utf-8"))
            headers = {"Cache-Control": "no-cache"} if target.suffix in (".js", ".css") else None
            return FileResponse(target, headers=headers)
        page = await asyncio.to_thread(state.dynamic_page, parts)
        if page is None:
            return _error(404, "not found")
        if parts[-1] != "index.html" and not url_path.endswith("/"):  # relative links need the slash
            return RedirectResponse(slashed, status_code=307)
        return _html(page)

    return app


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# uvicorn's connection limits for featviz serve, in the foreground or in a thread.
UVICORN_OPTIONS = dict(limit_concurrency=64, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024)


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise FeatvizError("featviz serve needs uvicorn: pip install 'featviz[serve]'") from None
    return uvicorn


def serve(site, model=None, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **limit_overrides) -> None:
    """Run the app with uvicorn (blocking)."""
    uvicorn = _uvicorn()
    app = create_app(site, model, **limit_overrides)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **UVICORN_OPTIONS)


@dataclass
class BackgroundServer:
    """``featviz serve`` running in a thread of this process (a notebook, a test, a benchmark)."""

    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_background(site, model=None, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                        start_timeout: float = 20.0, **limit_overrides) -> BackgroundServer:
    """Start ``featviz serve`` for ``site`` in a daemon thread and return once it accepts
    connections. ``port`` 0 takes a free one; ``.url`` says where, ``.stop()`` ends it."""
    import socket

    uvicorn = _uvicorn()
    app = create_app(site, model, **limit_overrides)
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise FeatvizError(f"the server for {site} did not start on {host}:{port}")
        time.sleep(0.05)
    return BackgroundServer(server, thread, host, port)
