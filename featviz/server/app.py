"""The routes of ``featviz serve``: the render API, the pages made on demand, and the site's files.

    from featviz.server import create_app
    app = create_app("site")          # any ASGI server; `featviz serve SITE` runs it with uvicorn
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.types import Scope

from ..microscope.settings import API_PREFIX
from .files import SiteFiles, marked_html, slashed
from .guard import Guard, error_response
from .limits import Limits
from .queue import Clock, RequestRefused
from .state import RenderRequest, SiteState, SiteUnreadable

JOB_ID_MAX = 64
BODY_EXAMPLE = 'e.g. {"layer": "blocks.8", "unit": 12}'


def _validation_answer(exc: RequestValidationError):
    errors = exc.errors()
    # Not JSON at all, or JSON that is not an object: the body as a whole is wrong (400);
    # an object with wrong fields is a 422 that names them.
    if any(e.get("type") == "json_invalid" or tuple(e.get("loc", ())) == ("body",) for e in errors):
        return error_response(400, f"the body must be a JSON object, {BODY_EXAMPLE}")
    fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors[:5])
    return error_response(422, fields)


def create_app(site, model=None, *, limits: Limits | None = None, served_names=(), clock: Clock = time.monotonic,
               **limit_overrides) -> FastAPI:
    """The ASGI app serving ``site``. ``model``: a name or ModelOrganism for on-demand renders
    (default: each site model, loaded by its name when first needed). Limits: see ``Limits``;
    ``served_names``: host names the server is reached by, besides its IP addresses and localhost;
    ``clock``: the time the job limits are measured in."""
    limits = replace(limits or Limits(), **limit_overrides)
    state = SiteState(site, model, limits, clock)

    async def lifespan(app):
        yield
        await state.queue.stop()

    app = FastAPI(title="featviz microscope", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.microscope = state
    app.add_middleware(Guard, limits=limits, served_names=served_names)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        detail = exc.detail
        if isinstance(exc.__cause__, RecursionError):  # FastAPI's json.loads of a body like [[[[...]]]]
            detail = f"the body's JSON is nested too deep; send one flat object, {BODY_EXAMPLE}"
        return error_response(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        return _validation_answer(exc)

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused):
        return error_response(exc.status, exc.detail, {"Retry-After": "5"} if exc.status == 429 else None)

    @app.exception_handler(SiteUnreadable)
    async def unreadable(request: Request, exc: SiteUnreadable):
        return error_response(500, str(exc))

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    @app.get(f"/{API_PREFIX}/info")
    async def info():
        queue = state.queue
        return {"models": {s: {"name": i["name"], "layers": len(i["layers"])} for s, i in state.models().items()},
                "limits": {k: getattr(limits, k) for k in ("max_steps", "max_size", "min_size", "max_queue",
                                                           "per_client", "workers", "job_timeout")},
                "queue": {"queued": queue.queued, "running": len(queue.running)}}

    @app.post(f"/{API_PREFIX}/render")
    async def render(body: RenderRequest, request: Request):
        job, cached = state.make_job(body, client_of(request))
        if cached:
            return state.queue.done_job(job).public()
        job = await state.queue.submit(job)
        return JSONResponse(job.public(state.queue.ahead_of(job)), status_code=202)

    def find_job(job_id: str):
        job = state.queue.jobs.get(job_id) if len(job_id) <= JOB_ID_MAX else None
        if job is None:
            raise RequestRefused(404, "no such job (finished jobs are forgotten after a while)")
        return job

    @app.get(f"/{API_PREFIX}/jobs/{{job_id}}")
    async def job_status(job_id: str):
        job = find_job(job_id)
        return job.public(state.queue.ahead_of(job))

    @app.delete(f"/{API_PREFIX}/jobs/{{job_id}}")
    async def job_cancel(job_id: str, request: Request):
        job = find_job(job_id)
        if job.client != client_of(request):
            raise RequestRefused(403, "not your job")
        state.queue.cancel(job)
        return job.public()

    @app.api_route(f"/{API_PREFIX}/{{rest:path}}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown_api(rest: str):
        raise RequestRefused(404, "unknown API endpoint")

    async def page_on_demand(parts: list[str], scope: Scope):
        """The page of a unit or layer that was not built, made from the manifest (None: no such unit)."""
        page = await asyncio.to_thread(state.page_on_demand, parts)
        if page is None:
            return None
        if parts[-1] != "index.html" and not scope["path"].endswith("/"):  # relative links need the slash
            return RedirectResponse(slashed(parts), status_code=307)
        return marked_html(page)

    app.mount("/", SiteFiles(state.site, page_on_demand))
    return app

