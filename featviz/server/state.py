"""What stands behind the routes of ``featviz serve``: the site, its manifest, the models and the queue.

Everything here is plain Python (no HTTP): the routes in ``featviz.server.app``
turn its answers and ``RequestRefused`` / ``SiteUnreadable`` into responses.
"""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import FeatvizError
from ..imageio import atomic_write, save_png
from ..microscope.manifest import Manifest
from ..microscope.pages import ModelView, layer_dir, layer_page, unit_page
from ..microscope.settings import (DIVERSITY, LIVE_DIR, MANIFEST_NAME, RENDER_KINDS, BuildSettings, batch_seed,
                                   digest, panel_settings, preset, slug)
from .limits import Limits
from .queue import Clock, Job, JobStopped, RenderQueue, RequestRefused

KINDS = (*RENDER_KINDS, DIVERSITY)
# Never served: the manifest and the example store's databases, locks and temporary files.
DENIED_SUFFIXES = (".sqlite", ".sqlite-journal", ".sqlite-wal", ".lock", ".tmp")
# A unit in a URL: ASCII digits only. str.isdigit() also accepts '²' or '①', which int() refuses.
UNIT_SEGMENT = re.compile(r"[0-9]{1,9}")


class RenderRequest(BaseModel):
    """The body of ``POST /api/render``. Strict: ``"unit": true`` or ``"unit": "5"`` is refused, not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, max_length=200)
    layer: str = Field(..., min_length=1, max_length=200)
    unit: int = Field(..., ge=0, le=10_000_000)
    steps: int | None = Field(None, ge=1, le=100_000)
    size: int | None = Field(None, ge=16, le=4096)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    kinds: list[Literal["channel", "neuron", "negative", "diversity"]] | None = Field(None, min_length=1,
                                                                                      max_length=4)


class SiteUnreadable(FeatvizError):
    """The site's manifest cannot be read (damaged, or replaced while serving)."""


def private_name(parts) -> bool:
    """Whether a path (its segments) names something the server never serves: a hidden
    segment, the manifest, an SQLite database, a lock or a temporary file."""
    parts = [p for p in parts if p not in ("", ".")]
    return any(p.startswith(".") for p in parts) or bool(parts) and (
        parts[-1] == MANIFEST_NAME or parts[-1].endswith(DENIED_SUFFIXES))


class SiteState:
    """The site being served: cached manifest views, the models for on-demand renders, the queue."""

    def __init__(self, site, model=None, limits: Limits | None = None, clock: Clock = time.monotonic):
        from ..models import ModelOrganism, load
        from ..models.spec import is_spec_path

        self.site = Path(site).resolve()
        if not (self.site / MANIFEST_NAME).is_file():
            raise FeatvizError(f"{site} is not a microscope site (no {MANIFEST_NAME}); "
                               "make one with 'featviz microscope build'")
        self.limits = limits or Limits()
        self.clock = clock
        self._views: dict[str, tuple[tuple, ModelView]] = {}
        self._models_cache: tuple | None = None
        self._models: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        self._model_lock = threading.Lock()
        self._view_lock = threading.Lock()
        if isinstance(model, ModelOrganism):
            self._models[slug(model.name)] = model
        elif isinstance(model, str) and is_spec_path(model):
            # a spec's site folder is named after the network the spec names, not after the file
            organism = load(model)
            self._models[slug(organism.name)] = organism
        elif isinstance(model, str):
            self._names[slug(model)] = model
        elif isinstance(model, dict):
            self._models.update({slug(k): v for k, v in model.items()})
        self.queue = RenderQueue(self.run_job, self.limits, clock)

    # -- manifest views (cached until the manifest changes) -----------------------------------------------
    def _stamp(self) -> tuple | None:
        try:
            st = (self.site / MANIFEST_NAME).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _read_manifest(self, read):
        try:
            with Manifest(self.site, readonly=True) as manifest:
                return read(manifest)
        except (FeatvizError, sqlite3.DatabaseError) as exc:
            raise SiteUnreadable(f"the site's manifest cannot be read ({exc}); rebuild the site with "
                                 "'featviz microscope build'") from None

    def models(self) -> dict[str, dict]:
        stamp = self._stamp()
        with self._view_lock:
            if self._models_cache and self._models_cache[0] == stamp:
                return self._models_cache[1]
            models = self._read_manifest(lambda manifest: manifest.models())
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

            def load(manifest):
                try:
                    return ModelView.load(manifest, model_slug)
                except KeyError:
                    return None
            view = self._read_manifest(load)
            if view is not None:
                self._views[model_slug] = (stamp, view)
            return view

    def model(self, model_slug: str, view: ModelView):
        with self._model_lock:
            if model_slug not in self._models:
                from ..models import load, load_reference

                name = self._names.get(model_slug)
                try:
                    # Without --model: what the build recorded (the spec's path for a network from a spec).
                    self._models[model_slug] = (load(name) if name else
                                                load_reference(view.info, where=f"the site's {view.name}"))
                except FeatvizError as exc:
                    raise FeatvizError(f"cannot load the model {name or view.name!r} to render on demand: {exc}"
                                       + (" (start featviz serve with --model)" if name else "")) from None
            return self._models[model_slug]

    # -- rendering -------------------------------------------------------------------------------------------------
    def settings_for(self, view: ModelView, steps: int, size: int, seed: int) -> BuildSettings:
        recorded = dict(view.info.get("settings") or {})
        base = preset(recorded.get("preset") if recorded.get("preset") in ("quick", "full") else "quick")
        kept = {k: recorded[k] for k in ("recipe", "batch_size", "diversity", "diversity_images", "diversity_batch",
                                         "plateau", "plateau_share", "diversity_plateau", "caricature_steps",
                                         "negative_steps")
                if k in recorded}
        if "window_panels" in recorded:  # a list in the site's JSON
            kept["window_panels"] = tuple(recorded["window_panels"])
        # The diversity images keep the build's own size only when the request is at the build's size.
        kept["diversity_size"] = recorded.get("diversity_size") if size == recorded.get("size") else None
        # A channel image asked for runs the steps asked for (the full preset's own channel steps are for builds).
        return replace(base, **kept, steps=steps, size=size, seed=seed, channel_steps=None)

    def run_job(self, job: Job) -> None:
        """Render ``job`` (in a worker thread), checking its time limit and cancellation at every step."""
        from ..microscope import visuals

        view = self.view(job.model)
        if view is None:
            raise FeatvizError(f"the model {job.model!r} is no longer in the site")
        model = self.model(job.model, view)
        settings = self.settings_for(view, job.steps, job.size, job.seed)
        total = job.steps * len(job.kinds)
        done_steps = 0

        def callback(step, _value):
            if job.cancelled or self.clock() > job.deadline:
                raise JobStopped
            job.progress = min(0.999, (done_steps + step) / total)

        files: dict[str, list[str]] = {}
        model_id = {"name": model.name, "weights": view.info.get("weights")}
        for kind in job.kinds:
            panel_digest = digest(panel_settings(kind, settings, model_id))
            seed = batch_seed(panel_digest, job.layer, job.unit)
            meta = {"panel": kind, "layer": job.layer, "unit": job.unit, "on_demand": True,
                    "steps": job.steps, "size": job.size, "seed": seed}
            if kind == DIVERSITY:
                images = visuals.render_diversity(model, [(job.layer, job.unit)], settings, seed, callback)[0]
                names = [f"diversity-{j}.png" for j in range(len(images))]
            else:
                images = [visuals.render_kind(model, kind, [(job.layer, job.unit)], settings, seed, callback)[0][0]]
                names = [f"{kind}.png"]
            for name, image in zip(names, images):
                save_png(image, job.out / name, {"microscope": meta})
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

    def make_job(self, request: RenderRequest, client: str) -> tuple[Job, bool]:
        """(job, cached): check a request against the site and the limits (RequestRefused if it does not fit)."""
        limits = self.limits
        models = self.models()
        model_slug = slug(request.model) if request.model else (next(iter(models)) if len(models) == 1 else None)
        if model_slug is None:
            raise RequestRefused(422, f"say which model: one of {', '.join(models)}")
        view = self.view(model_slug) if model_slug in models else None
        if view is None:
            raise RequestRefused(404, f"no model {request.model!r} in this site (it has {', '.join(models)})")
        layer_info = view.layer_info(request.layer)
        if layer_info is None:
            raise RequestRefused(404, f"no layer {request.layer!r} in {view.name}")
        if not layer_info.get("height"):
            raise RequestRefused(422, f"layer {request.layer!r} has no spatial units to render")
        if request.unit >= layer_info["channels"]:
            raise RequestRefused(422, f"unit {request.unit} is out of range for {request.layer}: valid units are "
                                      f"0-{layer_info['channels'] - 1}")
        recorded = view.info.get("settings") or {}
        steps = request.steps if request.steps is not None else int(recorded.get("steps", 32))
        size = request.size if request.size is not None else int(recorded.get("size", 96))
        if steps > limits.max_steps:
            raise RequestRefused(422, f"steps {steps} is over this server's limit of {limits.max_steps}")
        if not limits.min_size <= size <= limits.max_size:
            raise RequestRefused(422, f"size {size} is outside this server's limits of "
                                      f"{limits.min_size}-{limits.max_size} px")
        kinds = tuple(dict.fromkeys(request.kinds or KINDS))
        key = digest({"model": model_slug, "layer": request.layer, "unit": request.unit, "steps": steps,
                      "size": size, "seed": request.seed, "kinds": sorted(kinds),
                      "settings": {k: recorded.get(k) for k in ("recipe", "diversity", "diversity_images", "preset")},
                      "weights": view.info.get("weights")})
        rel = f"{LIVE_DIR}/{model_slug}/{layer_dir(request.layer)}/{request.unit}/{key}"
        job = Job(uuid.uuid4().hex[:16], key, client, model_slug, request.layer, request.unit, steps, size,
                  request.seed, kinds, self.site / rel, rel)
        marker = job.out / "done.json"
        if marker.is_file():
            try:
                job.files = json.loads(marker.read_text())
                if all((self.site / f).is_file() for files in job.files.values() for f in files):
                    job.status, job.progress = "done", 1.0
                    return job, True
            except (OSError, ValueError, AttributeError):
                pass  # a damaged cache entry is rendered again
        return job, False

    # -- pages made on demand -------------------------------------------------------------------------------------
    def page_on_demand(self, parts: list[str]) -> str | None:
        """The page of a unit or layer of a site model that was not built (None: there is no such unit)."""
        if parts and parts[-1] == "index.html":
            parts = parts[:-1]
        if len(parts) not in (2, 3):
            return None
        view = self.view(parts[0])
        if view is None:
            return None
        layer = next((info["name"] for info in view.layer_table()
                      if layer_dir(info["name"]) == parts[1] and info.get("height")), None)
        if layer is None:
            return None
        if len(parts) == 2:
            return layer_page(view, layer)
        if not UNIT_SEGMENT.fullmatch(parts[2]):
            return None
        unit = int(parts[2])
        if unit >= view.layer_info(layer)["channels"]:
            return None
        entry = view.info.get("baseline")
        baseline = self.view(entry["slug"]) if entry else None
        return unit_page(view, layer, unit, extra=self.stored_examples(view, layer, unit), baseline=baseline)

    def stored_examples(self, view: ModelView, layer: str, unit: int) -> dict:
        """The dataset examples of an unbuilt unit, when the site's example store covers its layer."""
        from ..examples import ExampleStore
        from ..microscope.build import examples_info
        from ..microscope.manifest import Panel
        from ..microscope.settings import EXAMPLES, EXAMPLES_DIR

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
