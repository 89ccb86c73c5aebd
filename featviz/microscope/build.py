"""``build``: make (or bring up to date) a microscope site for one model.

Order of work, per layer in model order: dataset examples (one streaming pass
over the photos for all layers, resumable), the classes each unit pushes up
and down, then the renders in batches (channel, neuron, negative, diversity),
then the layer's DeepDream; last, the class visualizations of the model page.

Incremental and resumable: before each batch the manifest is asked which of
its units still need the panel (absent, made with other settings, or a file
missing). Files are written atomically and the manifest commits after each
batch, so a killed build loses at most the batch in flight. Batches are fixed
slices of each layer's unit list and every batch's seed derives from the
panel's settings hash, the layer and the batch's first unit: a resumed build
renders exactly what an uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .._storage import LOCK, FolderLock
from ..engine import Job, LocalEngine
from ..errors import FeatvizError
from ..imageio import atomic_write, output_folder, save_png, to_pil
from . import caricature, circuits
from . import classes as class_effects
from . import visuals
from .manifest import Manifest, Panel
from .pages import install_static, layer_dir, write_pages
from .settings import (BASELINE_CKA, CARICATURE, CIRCUITS, CLASS_PHOTOS, CLASS_UNITS, CLASS_VIS, CLASSES, CLASSES_DIR,
                       DIVERSITY, DREAM, EXAMPLES, EXAMPLES_DIR, RENDER_KINDS, BuildSettings, batch_seed,
                       choose_classes, choose_layers, choose_units, chunks, digest, panel_settings, preset, slug)

THUMB = 64
JPEG_QUALITY = 88
ATTRIBUTION_IMAGES = 4  # top examples per unit averaged over by the attribution route


@dataclass
class BuildReport:
    """What a build did: panels made and skipped per kind, render time, and where the site is."""

    site: Path
    model: str
    layers: list[str]
    units: int                                              # units in the plan
    made: Counter = field(default_factory=Counter)          # panel kind -> panels made now
    skipped: Counter = field(default_factory=Counter)       # panel kind -> already up to date
    seconds: Counter = field(default_factory=Counter)       # phase -> seconds
    layer_seconds: Counter = field(default_factory=Counter)  # (layer or "", panel kind) -> engine seconds
    batches: int = 0                                        # jobs run: render batches, attribution batches
    elapsed: float = 0.0
    render_wall: float = 0.0                                # seconds of the engine phase (attribution, renders)
    engine: str = "local"

    @property
    def units_rendered(self) -> int:
        """Units whose channel visualization was rendered by this build."""
        return self.made["channel"]

    def units_per_minute(self) -> float | None:
        """Units rendered per minute of wall time of the engine phase (renders of all a unit's panels and
        the classes by attribution)."""
        t = self.render_wall
        return 60.0 * self.units_rendered / t if t and self.units_rendered else None

    def summary(self) -> str:
        made = ", ".join(f"{k} {v}" for k, v in sorted(self.made.items())) or "nothing"
        skipped = sum(self.skipped.values())
        rate = self.units_per_minute()
        rate = f", {rate:.1f} units/min of rendering" if rate else ""
        return (f"{self.model}: {len(self.layers)} layers, {self.units} units; made {made}; {skipped} panels "
                f"already up to date; {self.batches} batches in {self.elapsed:.1f} s{rate} "
                f"({self.engine}). "
                f"Open {self.site / 'index.html'}")


def resolve_settings(data=None, quick: bool | None = None, settings: BuildSettings | None = None,
                     **overrides) -> BuildSettings:
    """The quick preset when no data folder is given (and ``quick`` is not False), else the full one."""
    if settings is not None:
        if any(v is not None for v in overrides.values()):
            settings = preset(settings.preset, **(settings.to_dict() | {k: v for k, v in overrides.items()
                                                                         if v is not None}))
        return settings
    name = "quick" if (quick or (quick is None and data is None)) else "full"
    return preset(name, **overrides)


def build(model="efficientnet_lite0", out: str | os.PathLike = "microscope", data=None, *, quick: bool | None = None,
          settings: BuildSettings | None = None, device=None, log: Callable[[str], None] | None = None,
          progress: bool = False, engine=None, baseline=None, **overrides) -> BuildReport:
    """Build or update the microscope site ``out`` for ``model``.

    model: a name (``featviz.models.load``) or a ModelOrganism. data: a folder of
    photos for the dataset examples (None: the demo photos embedded in
    scikit-image). With no data and ``quick`` not False, the quick preset
    (3 layers x 8 units, 64 steps, 96 px). Overrides: any ``BuildSettings`` field,
    e.g. ``layers=["blocks.8"], units=16, steps=64, size=128``.
    engine: where the renders and the examples pass run (``featviz.engine.get_engine``; default
    this process). Whatever the engine, the seeds are fixed per batch before it is sent and only
    this process writes the site, so the result is the same.
    baseline: the starting network to show beside each unit (``featviz.microscope.baseline``): None
    for the default (a fine-tuning run's start when ``model`` is the run's ``model.toml``), False for
    none, or a model name, spec or organism. It is built first into the same site, with the same
    layers, units and settings.
    Returns a ``BuildReport``; rerunning skips what is up to date.
    """
    from . import baseline as starting
    from ..models import load

    say = log or (lambda msg: None)
    model = load(model, device=device)
    s = resolve_settings(data, quick, settings, **overrides)
    if s.caricature_photo is not None and not Path(s.caricature_photo).is_file():
        raise FeatvizError(f"caricature photo not found: {s.caricature_photo}")
    site = Path(out)
    if site.exists() and not site.is_dir():
        raise FeatvizError(f"{site} exists and is not a folder")
    if site.is_dir() and any(p.name != LOCK for p in site.iterdir()) and not (site / "manifest.sqlite").exists():
        raise FeatvizError(f"{site} exists and is not a microscope site; choose a new or empty folder for --out")
    layers = choose_layers(model, s)
    if not layers:
        raise FeatvizError(f"{model.name} has no layers with spatial dimensions to show")
    dirs = [layer_dir(l) for l in layers]
    if len(set(dirs)) != len(dirs):
        raise FeatvizError(f"layers {layers} map to the same folder names {dirs}")
    plan = {layer: choose_units(model, layer, s) for layer in layers}
    class_list = choose_classes(model, s)
    start = starting.resolve(model, baseline, device or model.device)
    if start is not None:
        starting.check_layers(start, layers)
        say(f"building the starting network {start.name} first (shown beside each unit of {model.name})")
        build(start, out, data, settings=replace(s, layers=tuple(layers)), log=log, progress=progress,
              engine=engine, baseline=False)
    output_folder(site)  # or one line: a file in the way, no permission, a read-only disk
    lock = FolderLock(site, f"the site {site} is being built by another process")
    try:
        with Manifest(site) as man:
            builder = _Builder(model, site, man, s, layers, plan, class_list, data, say, progress,
                               engine or LocalEngine())
            builder.baseline = start
            return builder.run()
    finally:
        lock.close()


class _Builder:
    def __init__(self, model, site: Path, man: Manifest, s: BuildSettings, layers, plan, class_list, data, say,
                 progress, engine):
        self.model, self.site, self.man, self.s = model, site, man, s
        self.layers, self.plan, self.class_list, self.data = layers, plan, class_list, data
        self.say, self.progress, self.engine = say, progress, engine
        self.slug = slug(model.name)
        self.model_id = {"name": model.name, "weights": model.weights_digest()}
        self.report = BuildReport(site, model.name, layers, sum(len(v) for v in plan.values()), engine=engine.name)
        self.baseline = None  # the starting network shown beside each unit (set by ``build``)

    # -- helpers -------------------------------------------------------------------------------------
    def rel(self, *parts) -> str:
        return "/".join([self.slug, *map(str, parts)])

    def unit_rel(self, layer: str, unit: int, name: str) -> str:
        return self.rel(layer_dir(layer), unit, name)

    def hash_of(self, kind: str, extra: dict | None = None) -> tuple[str, dict]:
        settings = panel_settings(kind, self.s, self.model_id, extra)
        return digest(settings), settings

    def seed_for(self, kind: str, *parts) -> int:
        """The seed of a render batch: from the panel's settings and the batch, not from the network, so
        two networks built with the same settings (a fine-tuned one and its start) render each unit from
        the same seed, and their images differ by the network alone."""
        return batch_seed(digest(panel_settings(kind, self.s, {})), *parts)

    def missing(self, layer: str, units, kind: str, h: str) -> list[int]:
        todo = [u for u in units if not self.man.current(self.slug, layer, u, kind, h)]
        self.report.skipped[kind] += len(units) - len(todo)
        return todo

    def save(self, image: torch.Tensor, rel: str, meta: dict) -> str:
        save_png(image, self.site / rel, {"microscope": meta})
        return rel

    def commit(self, panels: list[Panel], kind: str, pages=None) -> None:
        self.man.put(panels)
        self.report.made[kind] += len(panels)
        if pages is not None:
            self.pages(layers=[pages[0]], units=pages[1])

    def pages(self, **which) -> None:
        t = time.perf_counter()
        write_pages(self.site, self.man, self.slug, **which)
        self.report.seconds["pages"] += time.perf_counter() - t

    # -- the build --------------------------------------------------------------------------------------
    def run(self) -> BuildReport:
        t0 = time.perf_counter()
        s, model = self.s, self.model
        self.say(f"building {self.site} for {model.name}: layers {', '.join(self.layers)}; "
                 f"{self.report.units} units; {s.steps} steps at {s.size} px ({s.preset} preset); "
                 f"{self.engine.describe()}")
        self.man.set_model(self.slug, self.model_info())
        install_static(self.site)
        store = self.examples()
        # Every job of the build, in the order the local engine runs them: the classes of each layer's
        # units (where they need attribution), then the renders layer by layer, then the class images.
        work: list[_Work] = []
        try:
            for layer in self.layers:
                units = self.plan[layer]
                self.examples_panels(store, layer, units)
                work += self.classes_panels(store, layer, units)
                work += self.circuits_panels(store, layer, units)
                work += self.caricature_jobs(store, layer, units)
                self.pages(layers=[layer])
            self.class_panels(store)
        finally:
            store.close()
        for layer in self.layers:
            units = self.plan[layer]
            for kind in (*RENDER_KINDS, DIVERSITY):
                work += self.unit_jobs(layer, units, kind)
            work += self.dream_jobs(layer)
        work += self.class_jobs()
        left = Counter(w.layer for w in work)
        t = time.perf_counter()
        for done in self.engine.run(model, [w.job for w in work]):
            w = work[done.index]
            self.report.layer_seconds[(w.layer or "", w.kind)] += done.seconds
            w.finish(done.result, done.seconds)
            left[w.layer] -= 1
            if w.layer is not None and not left[w.layer]:
                self.pages(layers=[w.layer])
        self.report.render_wall = time.perf_counter() - t
        if self.baseline is not None:
            from .baseline import cka_panel

            t = time.perf_counter()
            if cka_panel(self.site, self.man, model, self.baseline, self.say):
                self.report.made[BASELINE_CKA] += 1
            self.report.seconds[BASELINE_CKA] += time.perf_counter() - t
        self.pages()
        self.report.elapsed = time.perf_counter() - t0
        return self.report

    def model_info(self) -> dict:
        m = self.model
        table = [{"name": l.name, "channels": l.channels, "height": l.height, "width": l.width}
                 for l in m.layers()]
        known = {l["name"] for l in table}
        for layer in self.layers:  # layers outside the main table, built on request
            if layer not in known:
                l = m.layer(layer)
                table.append({"name": l.name, "channels": l.channels, "height": l.height, "width": l.width})
        info = {"name": m.name, "input_size": m.input_size, "num_classes": m.num_classes,
                "labels": list(m.labels) if m.labels else None, "layers": table, "weights": self.model_id["weights"],
                "settings": self._settings_record()}
        if m.source:  # a network from a model spec: serve and compare load it again from there
            info["spec"] = m.source
        if self.baseline is not None:
            info["baseline"] = {"slug": slug(self.baseline.name), "name": self.baseline.name}
        return info

    def _settings_record(self) -> dict:
        """The settings of this build (``featviz serve`` renders on demand with them by default)."""
        d = self.s.to_dict()
        d["layers"] = list(self.layers)
        d["units"] = list(d["units"]) if isinstance(d["units"], tuple) else d["units"]
        d["classes"] = list(self.class_list)
        return d

    # -- dataset examples -------------------------------------------------------------------------------------
    def examples(self):
        from ..examples import ExampleStore, PassOptions, collect

        t = time.perf_counter()
        path = self.site / self.slug / EXAMPLES_DIR
        wanted = list(self.layers)
        if ExampleStore.exists(path):
            try:
                with ExampleStore(path) as old:
                    known = old.settings.get("layers", [])
                    missing = missing_media(old)
            except FeatvizError:
                known, missing = [], []
            if missing:
                # The store is this site's own (featviz wrote it, under the site's lock); a fresh
                # pass rebuilds it exactly, which is what the pages that show its crops need.
                self.say(f"{len(missing)} files of the dataset examples are missing (e.g. {missing[0]}); "
                         "computing the examples again")
                shutil.rmtree(path)
            order = {l.name: l.order for l in self.model.layers(all_modules=True)}
            wanted = sorted(set(wanted) | {l for l in known if l in order}, key=lambda n: order[n])
        self.say(f"dataset examples of {', '.join(wanted)} over "
                 f"{self.data if self.data is not None else 'the embedded demo photos'}")
        store = collect(self.model, self.data, wanted, self.s.k, store=path, size=self.s.examples_size,
                        overwrite=True, engine=self.engine,
                        options=PassOptions(checkpoint_every=10.0, progress=self.progress, log=self.say))
        self.report.seconds["examples"] += time.perf_counter() - t
        return store

    def examples_panels(self, store, layer: str, units: list[int]) -> None:
        settings = {k: v for k, v in store.settings.items() if k != "layers"}
        h, _ = self.hash_of(EXAMPLES, {"store": digest(settings)})
        todo = self.missing(layer, units, EXAMPLES, h)
        if not todo:
            return
        panels = []
        for u in todo:
            info, files = examples_info(store, self.slug, layer, u)
            panels.append(Panel(self.slug, layer, u, EXAMPLES, h, tuple(files), info))
        self.commit(panels, EXAMPLES)

    # -- classes pushed up / down ---------------------------------------------------------------------------------
    def classes_panels(self, store, layer: str, units: list[int]) -> list[_Work]:
        """Through the weights when the layer feeds the classifier linearly (exact, cheap: done here);
        else by attribution over each unit's top examples, as jobs for the engine."""
        if not self.model.num_classes:
            return []
        readout = class_effects.linear_readout(self.model, layer)
        if readout is not None:
            h, _ = self.hash_of(CLASSES, {"method": class_effects.WEIGHTS})
        else:
            ex_settings = {k: v for k, v in store.settings.items() if k != "layers"}
            h, _ = self.hash_of(CLASSES, {"method": class_effects.ATTRIBUTION, "store": digest(ex_settings),
                                          "images": ATTRIBUTION_IMAGES})
        todo = self.missing(layer, units, CLASSES, h)
        work = []
        for part in chunks(todo, 16):
            if readout is not None:
                t = time.perf_counter()
                weight, name = readout
                self._finish_classes_panels(layer, part, h, {"method": class_effects.WEIGHTS, "detail": name}, False,
                                            weight[:, part].T, time.perf_counter() - t)
            else:
                # The example crops travel as bytes (uint8), a quarter of their float size.
                images = [self._example_pixels(store, layer, u) for u in part]
                meta = {"method": class_effects.ATTRIBUTION, "n_images": ATTRIBUTION_IMAGES}
                work.append(_Work(Job(attribution_effects, (layer, part, images)),
                                  partial(self._finish_classes_panels, layer, part, h, meta, True), layer, CLASSES))
        return work

    def _finish_classes_panels(self, layer, part, h, meta, was_job: bool, effects, seconds) -> None:
        panels = []
        for u, row in zip(part, effects):
            up, down = class_effects.top_classes(self.model, row, self.s.top_classes)
            panels.append(Panel(self.slug, layer, u, CLASSES, h, (), meta | {"up": up, "down": down}))
        if was_job:
            self._account(CLASSES, seconds)
        else:
            self.report.seconds[CLASSES] += seconds
        self.commit(panels, CLASSES)

    def _example_pixels(self, store, layer: str, unit: int) -> torch.Tensor:
        """(k, 3, H, W) uint8: the unit's top example images as stored."""
        import numpy as np
        from PIL import Image

        out = []
        for ex in store.top(layer, unit, k=ATTRIBUTION_IMAGES):
            with Image.open(ex.image_file) as img:
                out.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous())
        return torch.stack(out) if out else torch.empty(0, 3, self.model.input_size, self.model.input_size,
                                                        dtype=torch.uint8)

    # -- circuits, caricatures, class pages (featviz.microscope.circuits / caricature) ----------------------
    def circuits_panels(self, store, layer: str, units: list[int]) -> list[_Work]:
        """The units of the previous built layer that excite / inhibit each unit most: through the
        weights when the path is linear (done here), else by attribution, as engine jobs."""
        source = circuits.source_layer(self.model, layer, self.layers)
        if source is None:
            return []
        route = circuits.linear_route(self.model, source, layer)
        ex_settings = {k: v for k, v in store.settings.items() if k != "layers"}
        extra = ({"method": circuits.WEIGHTS, "source": source} if route is not None else
                 {"method": circuits.ATTRIBUTION, "source": source, "store": digest(ex_settings),
                  "images": ATTRIBUTION_IMAGES})
        h, _ = self.hash_of(CIRCUITS, extra)
        todo = self.missing(layer, units, CIRCUITS, h)
        if not todo:
            return []
        # Each listed unit is shown by its top crop (every unit of a built layer has one).
        crops = {u: self._store_rel(store, ex[0]) for u in range(self.model.layer(source).channels)
                 if (ex := store.top(source, u, by="max", k=1))}
        work = []
        for part in chunks(todo, 16):
            if route is not None:
                t = time.perf_counter()
                weight, name = route
                meta = {"method": circuits.WEIGHTS, "source": source, "detail": name}
                self._finish_circuits(layer, part, h, meta, crops, False, weight[part], time.perf_counter() - t)
            else:
                images = [self._example_pixels(store, layer, u) for u in part]
                meta = {"method": circuits.ATTRIBUTION, "source": source, "n_images": ATTRIBUTION_IMAGES}
                work.append(_Work(Job(circuit_effects, (source, layer, part, images)),
                                  partial(self._finish_circuits, layer, part, h, meta, crops, True), layer, CIRCUITS))
        return work

    def _finish_circuits(self, layer, part, h, meta, crops, was_job: bool, effects, seconds) -> None:
        panels = []
        for u, row in zip(part, effects):
            excite, inhibit = circuits.strongest(row, self.s.circuit_units)
            shown = {v[0] for v in excite + inhibit}
            panels.append(Panel(self.slug, layer, u, CIRCUITS, h, (),
                                meta | {"excite": excite, "inhibit": inhibit,
                                        "crops": {str(k): crops[k] for k in sorted(shown) if k in crops}}))
        if was_job:
            self._account(CIRCUITS, seconds)
        else:
            self.report.seconds[CIRCUITS] += seconds
        self.commit(panels, CIRCUITS)

    def _store_rel(self, store, example) -> str:
        return "/".join([self.slug, EXAMPLES_DIR, example.image_file.relative_to(store.path).as_posix()])

    def caricature_jobs(self, store, layer: str, units: list[int]) -> list[_Work]:
        """Caricatures of each unit's top photo (or, given a photo, one of that photo for the layer)."""
        import numpy as np
        from PIL import Image

        from ..examples import letterbox, read_photo

        photo = self.s.caricature_photo
        if photo is not None:
            try:
                data = Path(photo).read_bytes()
                # letterboxed (grey bars) rather than stretched to the square canvas
                pixels = np.array(letterbox(read_photo(photo), self.s.size))
            except (OSError, FeatvizError) as exc:
                raise FeatvizError(f"cannot read the caricature photo {photo}: {exc}") from None
            h, settings = self.hash_of(CARICATURE, {"photo": hashlib.sha256(data).hexdigest()})
            if self.man.current(self.slug, layer, -1, CARICATURE, h):
                self.report.skipped[CARICATURE] += 1
                return []
            picture = torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
            batches = [[([-1], picture, Path(photo).name, None)]]
        else:
            ex_settings = {k: v for k, v in store.settings.items() if k != "layers"}
            h, settings = self.hash_of(CARICATURE, {"store": digest(ex_settings)})
            # A caricature is the layer's reading of a photo, whichever unit chose it: units that share their top
            # photo (532 photos for the 1280 units of lite0's head over 1000 ImageNet photos) share one render.
            by_photo: dict[str, list] = {}
            for u in self.missing(layer, units, CARICATURE, h):
                top = store.top(layer, u, k=1)
                if not top:
                    continue
                if top[0].path not in by_photo:
                    with Image.open(top[0].image_file) as img:
                        picture = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None].contiguous()
                    by_photo[top[0].path] = [[], picture, top[0].path, self._store_rel(store, top[0])]
                by_photo[top[0].path][0].append(u)
            batches = chunks([tuple(row) for row in by_photo.values()], self.s.batch_size)
        work = []
        for rows in batches:  # rows: (the units, photo pixels, photo source, photo in the site) per photo
            seed = batch_seed(h, layer, rows[0][0][0])
            # photos of a batch share the size of the examples pass (or are the one given photo)
            job = Job(caricature.render_caricatures, (layer, torch.cat([r[1] for r in rows]), self.s, seed))
            units_of_batch = _span(sorted(u for r in rows for u in r[0]))
            label = (f"{layer}: caricatures of the given photo" if photo else
                     f"{layer}: caricatures of units {units_of_batch} ({len(rows)} photos)")
            work.append(_Work(job, partial(self._finish_caricatures, layer, rows, seed, settings, h, label), layer,
                              CARICATURE))
        return work

    def _finish_caricatures(self, layer, rows, seed, settings, h, label, results, seconds) -> None:
        panels = []
        for (units, pixels, source, photo_rel), (image, figures) in zip(rows, results):
            for u in units:  # each unit's folder holds its own copy, so no page depends on another unit's files
                meta = {"panel": CARICATURE, "layer": layer, "unit": u, "settings": settings, "seed": seed,
                        "photo": source}
                folder = self.rel(layer_dir(layer)) if u < 0 else self.rel(layer_dir(layer), u)
                files = [self.save(image, f"{folder}/caricature.png", meta)]
                if photo_rel is None:  # the given photo: keep a copy beside its caricature
                    files.append(self._thumb_sized(pixels[0].float() / 255.0, f"{folder}/caricature-photo.jpg",
                                                   self.s.size))
                    photo_rel = files[-1]
                panels.append(Panel(self.slug, layer, u, CARICATURE, h, tuple(files),
                                    {"seed": seed, "photo": photo_rel, "source": source} | figures))
        self._account(CARICATURE, seconds)
        self.commit(panels, CARICATURE)
        self.say(f"{label} in {seconds:.1f} s")

    def _thumb_sized(self, image: torch.Tensor, rel: str, side: int) -> str:
        from PIL import Image

        pic = to_pil(image).resize((side, side), Image.LANCZOS)
        atomic_write(self.site / rel, lambda tmp: pic.save(tmp, format="JPEG", quality=JPEG_QUALITY))
        return rel

    def class_panels(self, store) -> None:
        """For the class pages: each class's top photos by its logit (over the photos the examples pass
        kept), and the units that push each class most (exact through a linear readout)."""
        if not self.model.num_classes:
            return
        ex_settings = {k: v for k, v in store.settings.items() if k != "layers"}
        h, _ = self.hash_of(CLASS_PHOTOS, {"store": digest(ex_settings), "k": self.s.k})
        if self.man.current(self.slug, "", -1, CLASS_PHOTOS, h):
            self.report.skipped[CLASS_PHOTOS] += 1
        else:
            t = time.perf_counter()
            files = [f for f in store.media_files() if f.startswith("media/images/")]
            paths = store.images()
            info = class_effects.top_photos(self.model, [store.path / f for f in files], self.s.k,
                                            self.model.input_size)
            info["images"] = [["/".join([self.slug, EXAMPLES_DIR, f]), paths[int(Path(f).stem)]] for f in files]
            self.report.seconds[CLASS_PHOTOS] += time.perf_counter() - t
            self.commit([Panel(self.slug, "", -1, CLASS_PHOTOS, h, (), info)], CLASS_PHOTOS)
        for layer in self.layers:
            readout = class_effects.linear_readout(self.model, layer)
            if readout is None:
                continue
            h, _ = self.hash_of(CLASS_UNITS, {"layer": layer, "top": self.s.circuit_units})
            if self.man.current(self.slug, layer, -1, CLASS_UNITS, h):
                self.report.skipped[CLASS_UNITS] += 1
                continue
            weight, name = readout
            crops = {str(u): self._store_rel(store, ex[0]) for u in range(weight.shape[1])
                     if (ex := store.top(layer, u, by="max", k=1))}
            info = ({"method": class_effects.WEIGHTS, "detail": name, "crops": crops}
                    | class_effects.units_per_class(weight, self.s.circuit_units))
            self.commit([Panel(self.slug, layer, -1, CLASS_UNITS, h, (), info)], CLASS_UNITS)

    # -- renders ------------------------------------------------------------------------------------------------------
    # Each render batch is a Job for the engine (run here or on Ray workers) plus a finisher that the
    # driver calls with its result: it alone writes the PNGs and commits the manifest.
    def unit_jobs(self, layer: str, units: list[int], kind: str) -> list[_Work]:
        """One job per batch of ``units`` that still needs the ``kind`` panel (render kinds or diversity)."""
        render_on = visuals.rendered_layer(self.model, kind, layer)
        h, settings = self.hash_of(kind, {"rendered_on": render_on} if render_on != layer else None)
        planned = chunks(units, self.s.diversity_batch if kind == DIVERSITY else self.s.batch_size)
        work = []
        for bi, batch in enumerate(planned):
            todo = self.missing(layer, batch, kind, h)
            if not todo:
                continue
            seed = self.seed_for(kind, layer, batch[0])
            # The whole planned batch is rendered even when only some of its units are missing: an
            # image depends on its batch (the random views are drawn for all of it), so this is the
            # only way a repaired site gets exactly the images an uninterrupted build made.
            pairs = [(layer, u) for u in batch]
            job = (Job(visuals.render_diversity, (pairs, self.s, seed)) if kind == DIVERSITY
                   else Job(visuals.render_kind, (kind, pairs, self.s, seed)))
            label = f"{layer}: {kind} of units {_span(todo)} (batch {bi + 1}/{len(planned)})"
            work.append(_Work(job, partial(self._finish_units, kind, layer, batch, todo, seed, settings, h, label),
                              layer, kind))
        return work

    def _finish_units(self, kind, layer, batch, todo, seed, settings, h, label, results, seconds) -> None:
        panels = []
        for u, res in zip(batch, results):
            if u not in todo:  # up to date: its files are these very bytes already
                continue
            meta = {"panel": kind, "layer": layer, "unit": u, "settings": settings, "seed": seed, "batch": batch}
            info = {"seed": seed, "batch": batch}
            if kind == DIVERSITY:
                files = [self.save(img, self.unit_rel(layer, u, f"diversity-{j}.png"), meta | {"index": j})
                         for j, img in enumerate(res)]
            else:
                image, value = res
                files = [self.save(image, self.unit_rel(layer, u, f"{kind}.png"), meta)]
                if kind == "channel":
                    files.append(self._thumb(image, self.unit_rel(layer, u, "thumb.jpg")))
                info = {"value": round(value, 4)} | info
                if settings.get("rendered_on"):
                    info["rendered_on"] = settings["rendered_on"]
            panels.append(Panel(self.slug, layer, u, kind, h, tuple(files), info))
        self._account(kind, seconds)
        self.commit(panels, kind, pages=(layer, [(layer, u) for u in todo]))
        self.say(f"{label} in {seconds:.1f} s")

    def _account(self, kind: str, seconds: float) -> None:
        self.report.seconds[kind] += seconds
        self.report.batches += 1

    def _thumb(self, image: torch.Tensor, rel: str) -> str:
        from PIL import Image

        pic = to_pil(image).resize((THUMB, THUMB), Image.LANCZOS)
        atomic_write(self.site / rel, lambda tmp: pic.save(tmp, format="JPEG", quality=JPEG_QUALITY))
        return rel

    def dream_jobs(self, layer: str) -> list[_Work]:
        h, settings = self.hash_of(DREAM)
        if self.man.current(self.slug, layer, -1, DREAM, h):
            self.report.skipped[DREAM] += 1
            return []
        seed = self.seed_for(DREAM, layer)
        return [_Work(Job(visuals.render_dream, (layer, self.s, seed)),
                      partial(self._finish_dream, layer, seed, settings, h), layer, DREAM)]

    def _finish_dream(self, layer, seed, settings, h, image, seconds) -> None:
        rel = self.save(image, self.rel(layer_dir(layer), "dream.png"),
                        {"panel": DREAM, "layer": layer, "settings": settings, "seed": seed})
        self._account(DREAM, seconds)
        self.commit([Panel(self.slug, layer, -1, DREAM, h, (rel,), {"seed": seed})], DREAM)
        self.say(f"{layer}: DeepDream in {seconds:.1f} s")

    def class_jobs(self) -> list[_Work]:
        if not self.class_list:
            return []
        h, settings = self.hash_of(CLASS_VIS, {"classes": self.class_list})
        todo = [c for c in self.class_list if not self.man.current(self.slug, "", c, CLASS_VIS, h)]
        self.report.skipped[CLASS_VIS] += len(self.class_list) - len(todo)
        work = []
        for batch in chunks(todo, self.s.batch_size):
            seed = self.seed_for(CLASS_VIS, batch[0])
            work.append(_Work(Job(visuals.render_classes, (batch, self.s, seed)),
                              partial(self._finish_classes, batch, seed, settings, h), None, CLASS_VIS))
        return work

    def _finish_classes(self, batch, seed, settings, h, images, seconds) -> None:
        panels = []
        for c, img in zip(batch, images):
            rel = self.save(img, self.rel(CLASSES_DIR, f"{c:04d}.png"),
                            {"panel": CLASS_VIS, "class": c, "label": self.model.label(c), "settings": settings,
                             "seed": seed})
            panels.append(Panel(self.slug, "", c, CLASS_VIS, h, (rel,), {"label": self.model.label(c)}))
        self._account(CLASS_VIS, seconds)
        self.commit(panels, CLASS_VIS)
        self.say(f"class visualizations {', '.join(map(str, batch))} in {seconds:.1f} s")


@dataclass
class _Work:
    """A render job and what the driver does with its result (``finish(result, seconds)``)."""

    job: Job
    finish: Callable[[object, float], None]
    layer: str | None  # whose pages to rewrite when all its work is done (None: the model page)
    kind: str = ""     # the panel it makes (for the per-layer timing of the build report)


def attribution_effects(model, layer: str, units: list[int], pixels: list[torch.Tensor]) -> torch.Tensor:
    """A job: the logit effects of ``units`` by attribution over their example images (uint8)."""
    return class_effects.logit_effects_attribution(model, layer, units, [p.float() / 255.0 for p in pixels])


def circuit_effects(model, source: str, layer: str, units: list[int], pixels: list[torch.Tensor]) -> torch.Tensor:
    """A job: the circuits of ``units`` by attribution over their example images (uint8)."""
    return circuits.attribution_circuits(model, source, layer, units, [p.float() / 255.0 for p in pixels])


def examples_info(store, model_slug: str, layer: str, unit: int) -> tuple[dict, list[str]]:
    """What a unit page shows of the dataset examples of one unit (paths relative to the site)."""
    root = store.data_root
    data = "the embedded demo photos" if root is None or root.name == "demo-photos" else root.name
    info: dict = {"n_images": store.num_images, "data": data}
    files: list[str] = []
    for key, examples in (("top_max", store.top(layer, unit, by="max")), ("top", store.top(layer, unit)),
                          ("bottom", store.bottom(layer, unit))):
        items = []
        for ex in examples:
            rel = "/".join([model_slug, EXAMPLES_DIR, ex.image_file.relative_to(store.path).as_posix()])
            item = {"file": rel, "value": round(float(ex.value), 5), "source": ex.path}
            if ex.position is not None:
                item["pos"] = list(ex.position)
            items.append(item)
            files.append(rel)
        info[key] = items
    return info, list(dict.fromkeys(files))


def missing_media(store) -> list[str]:
    """Files of a complete example store (crops, images) that are not on disk, relative to the store."""
    if not store.complete:
        return []
    files = dict.fromkeys(row[-1] for row in store.results()["examples"])
    return [f for f in files if not (store.path / f).is_file()]


def _span(units: list[int]) -> str:
    if len(units) > 2 and units == list(range(units[0], units[-1] + 1)):
        return f"{units[0]}-{units[-1]}"
    return ",".join(map(str, units))
