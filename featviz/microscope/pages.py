"""The microscope's pages: HTML from the Jinja2 templates in ``templates/``, filled from the manifest.

Layout of a site (every link is relative, so a site works from ``file://``,
any static web server, or ``featviz serve``)::

    SITE/index.html                       the models of the site
    SITE/static/microscope.css|.js        one style sheet, one small script
    SITE/<model>/index.html               layers in order, class visualizations
    SITE/<model>/model.js                 layer table, labels, built units (for the jump box)
    SITE/<model>/_classes/0309.png        class visualizations
    SITE/<model>/_examples/               the dataset-example store (crops and images)
    SITE/<model>/<layer>/index.html       grid of all units, DeepDream of the layer
    SITE/<model>/<layer>/<unit>/index.html   a unit: visualizations, examples, classes
    SITE/<model>/_reports/<name>/index.html   a report (``featviz report ... --site``), linked from the model page

This module turns the manifest into plain values (lists, dicts, numbers) and the
templates turn those into HTML; the templates autoescape every value, so no
function here writes markup. Pages depend only on the manifest, so equal
manifests give byte-equal pages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import jinja2

from ..imageio import atomic_write
from . import circuits
from .classes import describe
from .manifest import Manifest, Panel
from .settings import (BASELINE_CKA, CARICATURE, CIRCUITS, CLASS_PAGES_DIR, CLASS_PHOTOS, CLASS_UNITS, CLASS_VIS, CLASSES,
                       CLASSES_DIR, COMPARE, COMPARE_DIR, DIVERSITY, DREAM, EXAMPLES, STATIC_DIR, BuildSettings, slug)

REPORT = "report:"      # panel kind prefix of reports: report:transfer
REPORTS_DIR = "_reports"
VIS_PX = 192      # display size of a unit's main visualizations (CSS px)
DIV_PX = 120      # of each diversity image
EX_PX = 96        # of a dataset example
SIDE_EX_PX = 60   # of a top photo under a unit and its starting network's (three to a row of VIS_PX)
THUMB_PX = 72     # of a layer-grid thumbnail (the file is 64 px; shown a little larger)
CLASS_PX = 160


@lru_cache(maxsize=1)
def templates() -> jinja2.Environment:
    """The Jinja2 environment of the site's templates (package data), autoescaping everything."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("featviz.microscope", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v: f"{v:.3g}"
    env.filters["signed"] = lambda v: f"{v:+.3g}"
    return env


def render(template: str, **context) -> str:
    """A page from its template. ``context`` fills the page shell too: title, root, page, model,
    layer, unit, placeholder, model_js (the script with the model's data) and settings (footer)."""
    shell = {"model": "", "layer": "", "unit": "", "placeholder": "blocks.8:12, class 309", "model_js": "",
             "settings": None}
    return templates().get_template(template).render(shell | context)


def static_files() -> dict[str, bytes]:
    """name -> bytes of the site's static assets (shipped as package data)."""
    folder = resources.files(__package__).joinpath("static")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.endswith((".css", ".js"))}


def write_if_changed(path: Path, data: bytes | str) -> bool:
    """Write atomically, and only if the content differs (mtimes stay put for rsync and caches)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return True


def install_static(site: Path) -> None:
    for name, data in static_files().items():
        write_if_changed(site / STATIC_DIR / name, data)


# -- a snapshot of one model's manifest data -----------------------------------------------------
@dataclass
class ModelView:
    slug: str
    info: dict                     # from the manifest: name, layers, labels, settings...
    panels: dict[tuple[str, int, str], Panel]

    @classmethod
    def load(cls, manifest: Manifest, model_slug: str) -> "ModelView":
        info = manifest.model(model_slug)
        if info is None:
            raise KeyError(model_slug)
        return cls(model_slug, info, {(p.layer, p.unit, p.panel): p for p in manifest.panels(model_slug)})

    @property
    def name(self) -> str:
        return self.info["name"]

    def layer_table(self) -> list[dict]:
        return self.info["layers"]

    def layer_info(self, layer: str) -> dict | None:
        return next((l for l in self.info["layers"] if l["name"] == layer), None)

    def label(self, c: int) -> str:
        labels = self.info.get("labels")
        return labels[c] if labels and 0 <= c < len(labels) else str(c)

    def built_layers(self) -> list[str]:
        have = {layer for (layer, unit, _), _p in self.panels.items() if layer}
        return [l["name"] for l in self.info["layers"] if l["name"] in have]

    def built_units(self, layer: str) -> list[int]:
        return self._units_by_layer.get(layer, [])

    @cached_property
    def _units_by_layer(self) -> dict[str, list[int]]:
        """layer -> its built units, sorted (pages ask this for every unit they link)."""
        by_layer: dict[str, set[int]] = {}
        for layer, unit, _kind in self.panels:
            if layer and unit >= 0:
                by_layer.setdefault(layer, set()).add(unit)
        return {layer: sorted(units) for layer, units in by_layer.items()}

    def sequence(self) -> list[tuple[str, int]]:
        """Every built unit in model order: what next / previous walk through."""
        return [(layer, u) for layer in self.built_layers() for u in self.built_units(layer)]

    def panel(self, layer: str, unit: int, kind: str) -> Panel | None:
        return self.panels.get((layer, unit, kind))

    def classes(self) -> list[int]:
        return sorted(unit for (layer, unit, kind) in self.panels if layer == "" and kind == CLASS_VIS)

    def baseline(self, manifest: Manifest) -> "ModelView | None":
        """The view of the starting network shown beside this one's units (None: none, or not built)."""
        entry = self.info.get("baseline")
        if not entry or manifest.model(entry["slug"]) is None:
            return None
        return ModelView.load(manifest, entry["slug"])

    def reports(self) -> list[Panel]:
        """Report panels (``report:<name>``), by name."""
        return sorted((p for (layer, _u, kind), p in self.panels.items() if layer == "" and kind.startswith(REPORT)),
                      key=lambda p: p.panel)


def layer_dir(layer: str) -> str:
    return slug(layer)


def site_link(from_depth: int, site_path: str) -> str:
    """A link from a page ``from_depth`` folders below the site root to a site-relative path."""
    return "../" * from_depth + site_path


def build_settings(view: ModelView) -> dict | None:
    """The build settings the footer states (None when the manifest has none)."""
    return view.info.get("settings") or None


# -- unit page ---------------------------------------------------------------------------------------
def unit_page(view: ModelView, layer: str, unit: int, extra: dict[str, Panel] | None = None,
              baseline: ModelView | None = None) -> str:
    """The page of one unit. Unbuilt panels show a placeholder (and, under ``featviz serve``,
    are rendered on demand by the page's script). ``extra``: panels to show that the
    manifest does not hold (the server adds the dataset examples of an unbuilt unit).
    ``baseline``: the starting network, whose same unit the page shows beside this one's."""
    extra = extra or {}

    def get(kind):
        return extra.get(kind) or view.panel(layer, unit, kind)

    layer_info = view.layer_info(layer) or {"channels": unit + 1, "height": None, "width": None}
    prev, nxt = _neighbours(view, layer, unit, layer_info["channels"])
    visuals = []
    for kind in ("channel", "neuron", "negative"):
        p = get(kind)
        value = p.info.get("value") if p is not None else None
        visuals.append({"kind": kind, "built": p is not None,
                        "value": None if value is None else (-value if kind == "negative" else value),
                        "silent": kind == "negative" and value == 0,
                        "rendered_on": p.info.get("rendered_on") if p is not None else None})
    diversity = get(DIVERSITY)
    settings = view.info.get("settings", {})
    return render(
        "unit.html", title=f"{layer}:{unit} - {view.name}", root="../../../", page="unit", model=view.slug,
        layer=layer, unit=str(unit), placeholder=f"{layer}:{unit + 1}, class 309", model_js="../../model.js",
        settings=build_settings(view), model_name=view.name, channels=layer_info["channels"],
        height=layer_info.get("height"), width=layer_info.get("width"), prev=prev, next=nxt, visuals=visuals,
        diversity=[Path(f).name for f in diversity.files] if diversity is not None else [],
        diversity_images=int(settings.get("diversity_images") or BuildSettings.diversity_images),
        examples=_examples_view(get(EXAMPLES)), classes=_classes_view(view, layer, get(CLASSES)),
        circuits=_circuits_view(view, layer, get(CIRCUITS)),
        start=_start_view(view, baseline, layer, unit, get("channel"), get(EXAMPLES)),
        caricature=_caricature_view(get(CARICATURE) or view.panel(layer, -1, CARICATURE), 3),
        live={"steps": settings.get("steps", 32), "size": settings.get("size", 96), "seed": settings.get("seed", 0)},
        vis_px=VIS_PX, div_px=DIV_PX, ex_px=EX_PX, side_ex_px=SIDE_EX_PX)


def _start_view(view: ModelView, baseline: ModelView | None, layer: str, unit: int, channel: Panel | None,
                examples: Panel | None) -> dict | None:
    """This unit and the same unit of the starting network, side by side: each one's channel
    visualization (same seed and settings) and its top photos by mean activation."""
    if baseline is None:
        return None

    def side(v: ModelView, channel: Panel | None, examples: Panel | None, role: str) -> dict:
        top = examples.info.get("top", []) if examples is not None else []
        return {"role": role, "name": v.name,
                "href": site_link(3, f"{v.slug}/{layer_dir(layer)}/{unit}/index.html"),
                "channel": site_link(3, channel.files[0]) if channel is not None else None,
                "value": channel.info.get("value") if channel is not None else None,
                "photos": [{"src": site_link(3, item["file"]),
                            "title": f"{item['source']}: mean activation {item['value']:.3g}"} for item in top]}

    return {"name": baseline.name, "href": site_link(3, f"{baseline.slug}/index.html"),
            "sides": [side(view, channel, examples, "this network"),
                      side(baseline, baseline.panel(layer, unit, "channel"), baseline.panel(layer, unit, EXAMPLES),
                           "starting network")]}


def _neighbours(view: ModelView, layer: str, unit: int, channels: int) -> tuple[dict | None, dict | None]:
    """The previous and next unit ({href, label}) in the site's walk through its built units."""
    seq = view.sequence()
    here = (layer, unit)
    if here in seq:
        i = seq.index(here)
        prev = seq[i - 1] if i > 0 else None
        nxt = seq[i + 1] if i + 1 < len(seq) else None
    else:  # a page made on demand: walk the layer's units one by one
        prev = (layer, unit - 1) if unit > 0 else None
        nxt = (layer, unit + 1) if unit + 1 < channels else None

    def link(target):
        if target is None:
            return None
        other_layer, other_unit = target
        href = (f"../{other_unit}/index.html" if other_layer == layer
                else f"../../{layer_dir(other_layer)}/{other_unit}/index.html")
        return {"href": href, "label": f"{other_layer}:{other_unit}"}

    return link(prev), link(nxt)


def _examples_view(panel: Panel | None) -> dict | None:
    """The dataset-example rows of a unit page: top crops, top photos, bottom photos."""
    if panel is None:
        return None
    ex = panel.info
    # Photos that tie with the least activating one (a ReLU unit at zero) are no "top" example.
    bottom_values = [item["value"] for item in ex.get("bottom", [])]
    floor = min(bottom_values) if bottom_values else None
    tied = 0
    rows = []
    for kind in ("top_max", "top", "bottom"):
        items = ex.get(kind, [])
        if floor is not None and kind != "bottom":
            keep = [item for item in items if item["value"] > floor + 1e-6 * max(1.0, abs(floor))]
            tied = max(tied, len(items) - len(keep))
            items = keep
        if not items and kind != "top":
            continue
        cells = []
        for item in items:
            where = f" at {item['pos'][0]},{item['pos'][1]}" if item.get("pos") else ""
            statistic = "max" if kind == "top_max" else "mean"
            cells.append({"src": site_link(3, item["file"]),
                          "title": f"{item['source']}: {statistic} activation {item['value']:.3g}{where}"})
        rows.append({"kind": kind, "cells": cells})
    return {"rows": rows, "floor": floor, "tied": tied, "n_images": ex.get("n_images"), "data": ex.get("data", "")}


def _classes_view(view: ModelView, layer: str, panel: Panel | None) -> dict | None:
    """The classes a unit pushes up and down, each linked where the site shows that class."""
    if panel is None:
        return None
    info = panel.info
    def items(rows):
        return [{"index": k, "label": label, "value": value, "href": f"../../{class_dir(k)}/index.html"}
                for k, label, value in rows]

    return {"up": items(info["up"]), "down": items(info["down"]), "method": info["method"],
            "text": describe(info["method"], layer, info.get("detail", ""), info.get("n_images", 0))}


def unit_tile(view: ModelView, layer: str, unit: int, depth: int, crop: str | None = None) -> dict:
    """A link to a unit's page from a page ``depth`` folders below the site root, with its thumbnail
    (its channel visualization, else its top dataset crop ``crop``, site-relative)."""
    base = site_link(depth, f"{view.slug}/{layer_dir(layer)}/{unit}/")
    thumb = (base + "thumb.jpg" if view.panel(layer, unit, "channel") is not None
             else site_link(depth, crop) if crop else None)
    return {"layer": layer, "unit": unit, "href": base + "index.html", "thumb": thumb,
            "built": unit in view.built_units(layer)}


def _circuits_view(view: ModelView, layer: str, panel: Panel | None) -> dict | None:
    """The units of an earlier layer that excite and inhibit this unit most, with their thumbnails."""
    if panel is None:
        return None
    info = panel.info
    source, crops = info["source"], info.get("crops", {})

    def tiles(rows):
        return [unit_tile(view, source, u, 3, crops.get(str(u))) | {"value": value} for u, value in rows]

    return {"source": source, "method": info["method"], "excite": tiles(info["excite"]),
            "inhibit": tiles(info["inhibit"]),
            "text": circuits.describe(info["method"], source, layer, info.get("detail", ""), info.get("n_images", 0))}


def _caricature_view(panel: Panel | None, depth: int) -> dict | None:
    """The caricature and the photo it started from (a unit's own, or the layer's given photo), for a
    page ``depth`` folders below the site root."""
    if panel is None:
        return None
    info = panel.info
    return {"src": site_link(depth, panel.files[0]), "photo": site_link(depth, info["photo"]), "source": info["source"],
            "cosine": info.get("cosine"), "gain": info.get("gain"), "own": panel.unit >= 0}


# -- layer page -----------------------------------------------------------------------------------------
def layer_page(view: ModelView, layer: str) -> str:
    layer_info = view.layer_info(layer) or {"channels": 0}
    built = set(view.built_units(layer))
    with_thumb = {u for u in built if view.panel(layer, u, "channel") is not None}
    layers = view.built_layers()
    i = layers.index(layer) if layer in layers else -1
    prev = layers[i - 1] if i > 0 else None
    nxt = layers[i + 1] if 0 <= i < len(layers) - 1 else None

    def link(name):
        return {"href": f"../{layer_dir(name)}/index.html", "label": name} if name else None

    tiles = [(u, "thumb" if u in with_thumb else "built" if u in built else "unbuilt")
             for u in range(layer_info["channels"])]
    connections = _connections(view, layer, sorted(built))
    return render("layer.html", title=f"{layer} - {view.name}", root="../../", page="layer", model=view.slug,
                  layer=layer, placeholder=f"{layer}:12, 12, class 309", model_js="../model.js",
                  settings=build_settings(view), model_name=view.name, channels=layer_info["channels"],
                  height=layer_info.get("height"), width=layer_info.get("width"), rendered=len(with_thumb),
                  prev=link(prev), next=link(nxt), dream=view.panel(layer, -1, DREAM) is not None, tiles=tiles,
                  thumb_px=THUMB_PX, connections=connections,
                  caricature=_caricature_view(view.panel(layer, -1, CARICATURE), 2))


def _connections(view: ModelView, layer: str, units: list[int], n: int = 12) -> dict | None:
    """The strongest connections into a layer's built units (from their circuits panels), strongest first."""
    panels = [p for u in units if (p := view.panel(layer, u, CIRCUITS)) is not None]
    if not panels:
        return None
    rows = []
    for p in panels:
        crops = p.info.get("crops", {})
        for u, value in p.info["excite"] + p.info["inhibit"]:
            rows.append((abs(value), p.unit, u, value, crops.get(str(u))))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    source = panels[0].info["source"]
    return {"source": source, "method": panels[0].info["method"],
            "rows": [{"from": unit_tile(view, source, u, 2, crop), "to": unit_tile(view, layer, target, 2),
                      "value": value} for _abs, target, u, value, crop in rows[:n]]}


# -- class pages ---------------------------------------------------------------------------------------------
def class_dir(c: int) -> str:
    return f"{CLASS_PAGES_DIR}/{c}"


def class_page(view: ModelView, c: int) -> str:
    """``<model>/classes/<c>/``: the class's visualization, its top dataset photos by its logit, and
    the units that push it most (exact through a linear readout; else the built units whose
    class-effect panel lists it)."""
    n = view.info.get("num_classes") or 0
    vis = view.panel("", c, CLASS_VIS)
    photos_panel = view.panel("", -1, CLASS_PHOTOS)
    photos = []
    if photos_panel is not None:
        images = photos_panel.info["images"]
        for i, value in photos_panel.info["top"][c]:
            rel, source = images[i]
            photos.append({"src": site_link(3, rel), "title": f"{source}: logit {value:.3g}"})
    readouts, listed = [], []
    for layer in view.built_layers():
        panel = view.panel(layer, -1, CLASS_UNITS)
        if panel is not None:
            crops = panel.info.get("crops", {})
            readouts.append({"layer": layer, "detail": panel.info.get("detail", ""),
                             "up": [unit_tile(view, layer, u, 3, crops.get(str(u))) | {"value": v}
                                    for u, v in panel.info["up"][c]],
                             "down": [unit_tile(view, layer, u, 3, crops.get(str(u))) | {"value": v}
                                      for u, v in panel.info["down"][c]]})
            continue
        up, down = [], []
        for u in view.built_units(layer):
            effects = view.panel(layer, u, CLASSES)
            if effects is None:
                continue
            for rows, out in ((effects.info["up"], up), (effects.info["down"], down)):
                out += [unit_tile(view, layer, u, 3) | {"value": value} for k, _label, value in rows if k == c]
        if up or down:
            listed.append({"layer": layer, "up": sorted(up, key=lambda t: -t["value"]),
                           "down": sorted(down, key=lambda t: t["value"])})

    def link(k):
        return {"href": f"../{k}/index.html", "label": f"{view.label(k)} ({k})"} if 0 <= k < n else None

    return render("class.html", title=f"class {c} {view.label(c)} - {view.name}", root="../../../", page="class",
                  model=view.slug, unit=str(c), placeholder=f"class {c + 1}, blocks.8:12", model_js="../../model.js",
                  settings=build_settings(view), model_name=view.name, index=c, label=view.label(c),
                  vis=site_link(3, vis.files[0]) if vis is not None else None, photos=photos,
                  n_photos=len(photos_panel.info["images"]) if photos_panel is not None else 0,
                  readouts=readouts, listed=listed, prev=link(c - 1), next=link(c + 1), class_px=CLASS_PX * 3 // 2,
                  ex_px=EX_PX)


# -- comparison page -----------------------------------------------------------------------------------------
def compare_page(view_a: ModelView, view_b: ModelView, info: dict, n_best: int = 12) -> str:
    """``_compare/<a>--<b>/``: the classes both visualized, side by side, and per pair of layers of
    matching depth the best-correlated unit of b for each unit of a (``featviz.microscope.compare``)."""
    shared = [c for c in view_a.classes() if c in set(view_b.classes())]
    classes = [{"index": c, "label": view_a.label(c),
                "a": site_link(2, view_a.panel("", c, CLASS_VIS).files[0]),
                "b": site_link(2, view_b.panel("", c, CLASS_VIS).files[0]),
                "href_a": site_link(2, f"{view_a.slug}/{class_dir(c)}/index.html"),
                "href_b": site_link(2, f"{view_b.slug}/{class_dir(c)}/index.html")} for c in shared]
    pairs = []
    for row in info["pairs"]:
        a, b = row["a"], row["b"]

        def match(u):
            other, r = row["best"][u]
            return {"a": unit_tile(view_a, a, u, 2, row["crops_a"].get(str(u))),
                    "b": unit_tile(view_b, b, other, 2, row["crops_b"].get(str(other))), "r": r}

        strongest = sorted(range(len(row["best"])), key=lambda u: (-row["best"][u][1], u))[:n_best]
        pairs.append({"a": a, "b": b, "units": len(row["best"]), "mean_best": row["mean_best"],
                      "strongest": [match(u) for u in strongest],
                      "built": [match(u) for u in view_a.built_units(a) if u < len(row["best"])]})
    return render("compare.html", title=f"{view_a.name} and {view_b.name} - microscope", root="../../",
                  page="compare", name_a=view_a.name, name_b=view_b.name, href_a=f"../../{view_a.slug}/index.html",
                  href_b=f"../../{view_b.slug}/index.html", n_photos=info["n_photos"], classes=classes, pairs=pairs,
                  class_px=CLASS_PX)


# -- model page ---------------------------------------------------------------------------------------------
def model_page(view: ModelView) -> str:
    info = view.info
    built = set(view.built_layers())
    reports = view.reports()
    # Reports may add columns to the layer table (e.g. transfer: its probe accuracy per layer).
    columns, report_cells = [], []
    for p in reports:
        names = p.info.get("columns") or []
        href = f"{REPORTS_DIR}/{p.panel[len(REPORT):]}/index.html"
        columns += [{"name": name, "href": href if j == 0 else None, "help": p.info.get("column_help", "")}
                    for j, name in enumerate(names)]
        report_cells.append((len(names), p.info.get("cells") or {}))
    layers = []
    for row in view.layer_table():
        name = row["name"]
        cells = [text for width, by_layer in report_cells for text in (by_layer.get(name) or [""] * width)]
        layers.append(row | {"dir": layer_dir(name), "built": name in built, "n_built": len(view.built_units(name)),
                             "report_cells": cells})
    classes = [{"index": c, "label": view.label(c), "href": f"{class_dir(c)}/index.html",
                "src": f"{CLASSES_DIR}/{Path(view.panel('', c, CLASS_VIS).files[0]).name}"} for c in view.classes()]
    comparisons = [{"other": p.info["other"], "href": f"../{COMPARE_DIR}/{view.slug}--{p.info['other']}/index.html"}
                   for (layer, _u, kind), p in sorted(view.panels.items()) if not layer and kind.startswith(COMPARE)]
    all_classes = [{"index": c, "label": view.label(c), "href": f"{class_dir(c)}/index.html"}
                   for c in range(info.get("num_classes") or 0)]
    cka = view.panel("", -1, BASELINE_CKA)
    start = None
    if view.info.get("baseline"):
        entry = view.info["baseline"]
        start = {"name": entry["name"], "href": f"../{entry['slug']}/index.html",
                 "cka": None if cka is None else cka.info | {"src": Path(cka.files[0]).name}}
    report_links = [{"href": f"{REPORTS_DIR}/{p.panel[len(REPORT):]}/index.html", "title": p.info.get("title", p.panel),
                     "summary": p.info.get("summary", "")} for p in reports]
    return render("model.html", title=f"{view.name} - microscope", root="../", page="model", model=view.slug,
                  model_js="model.js", settings=build_settings(view), model_name=view.name,
                  input_size=info.get("input_size"), num_classes=info.get("num_classes"), layers=layers,
                  report_columns=columns, reports=report_links, classes=classes, class_px=CLASS_PX,
                  all_classes=all_classes, comparisons=comparisons, start=start)


def root_page(manifest: Manifest) -> str:
    models = [{"slug": model_slug, "name": info["name"], "layers": len(manifest.layers(model_slug))}
              for model_slug, info in manifest.models().items()]
    return render("root.html", title="featviz microscope", root="", page="root", placeholder="efficientnet_lite0",
                  models=models)


def model_js(view: ModelView) -> str:
    data = {"slug": view.slug, "name": view.name,
            "layers": [[l["name"], layer_dir(l["name"]), l["channels"], bool(l.get("height"))]
                       for l in view.layer_table()],
            "built": {layer: view.built_units(layer) for layer in view.built_layers()},
            "classes": view.classes(), "labels": view.info.get("labels") or []}
    return "window.FV_MODEL = " + json.dumps(data, separators=(",", ":")) + ";\n"


# -- writing -------------------------------------------------------------------------------------------------
def write_pages(site: Path, manifest: Manifest, model_slug: str, layers=None, units=None,
                classes: bool | None = None) -> int:
    """Write the root, model page and model.js, the pages of ``layers`` (None: every built
    layer), of ``units`` ((layer, unit) list; None: every built unit of those layers) and,
    if ``classes`` (None: when every layer is written), the class pages.
    Returns the number of files that changed."""
    classes = layers is None if classes is None else classes
    view = ModelView.load(manifest, model_slug)
    baseline = view.baseline(manifest)
    base = site / model_slug
    changed = 0
    changed += write_if_changed(site / "index.html", root_page(manifest))
    changed += write_if_changed(base / "index.html", model_page(view))
    changed += write_if_changed(base / "model.js", model_js(view))
    layers = view.built_layers() if layers is None else [l for l in layers if l in view.built_layers()]
    for layer in layers:
        changed += write_if_changed(base / layer_dir(layer) / "index.html", layer_page(view, layer))
    if units is None:
        units = [(layer, u) for layer in layers for u in view.built_units(layer)]
    for layer, u in units:
        changed += write_if_changed(base / layer_dir(layer) / str(u) / "index.html",
                                    unit_page(view, layer, u, baseline=baseline))
    if classes:
        for c in range(view.info.get("num_classes") or 0):
            changed += write_if_changed(base / class_dir(c) / "index.html", class_page(view, c))
    return changed
