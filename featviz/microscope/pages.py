"""The microscope's pages: plain HTML generated from the manifest.

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

Pages depend only on the manifest, so equal manifests give byte-equal pages.
"""
from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template

from ..imageio import atomic_write
from .classes import describe
from .manifest import Manifest, Panel
from .settings import (CLASS_VIS, CLASSES, CLASSES_DIR, DIVERSITY, DREAM, EXAMPLES, MANIFEST_NAME, STATIC_DIR,
                       slug)

REPORT = "report:"      # panel kind prefix of reports: report:transfer
REPORTS_DIR = "_reports"
VIS_PX = 192      # display size of a unit's main visualizations (CSS px)
DIV_PX = 120      # of each diversity image
EX_PX = 96        # of a dataset example
THUMB_PX = 72     # of a layer-grid thumbnail (the file is 64 px; shown a little larger)
CLASS_PX = 160

e = html.escape


@lru_cache(maxsize=1)
def _template() -> Template:
    return Template(resources.files(__package__).joinpath("templates/page.html").read_text(encoding="utf-8"))


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
        return sorted({unit for (l, unit, _), _p in self.panels.items() if l == layer and unit >= 0})

    def sequence(self) -> list[tuple[str, int]]:
        """Every built unit in model order: what next / previous walk through."""
        return [(layer, u) for layer in self.built_layers() for u in self.built_units(layer)]

    def panel(self, layer: str, unit: int, kind: str) -> Panel | None:
        return self.panels.get((layer, unit, kind))

    def classes(self) -> list[int]:
        return sorted(unit for (layer, unit, kind) in self.panels if layer == "" and kind == CLASS_VIS)

    def reports(self) -> list[Panel]:
        """Report panels (``report:<name>``), by name."""
        return sorted((p for (layer, _u, kind), p in self.panels.items() if layer == "" and kind.startswith(REPORT)),
                      key=lambda p: p.panel)


def layer_dir(layer: str) -> str:
    return slug(layer)


# -- helpers --------------------------------------------------------------------------------------------
def _rel(from_depth: int, site_path: str) -> str:
    """A link from a page ``from_depth`` folders below the site root to a site-relative path."""
    return "../" * from_depth + site_path


def _page(*, title: str, root: str, page: str, body: str, crumbs: str, model: str = "", layer: str = "",
          unit: str = "", scripts: str = "", placeholder: str = "blocks.8:12, class 309", footer: str = "") -> str:
    return _template().substitute(title=e(title), root=root, page=page, model=e(model), layer=e(layer),
                                  unit=e(unit), body=body, crumbs=crumbs, scripts=scripts,
                                  placeholder=e(placeholder), footer=footer)


def _img(src: str, px: int, alt: str, lazy: bool = True, cls: str = "") -> str:
    loading = ' loading="lazy" decoding="async"' if lazy else ""
    klass = f' class="{cls}"' if cls else ""
    return f'<img src="{e(src)}" width="{px}" height="{px}" alt="{e(alt)}"{loading}{klass}>'


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _settings_line(info: dict) -> str:
    s = info.get("settings", {})
    if not s:
        return ""
    return (f" &middot; built with {s.get('steps')} steps at {s.get('size')} px "
            f"({e(str(s.get('recipe')))} recipe, {e(str(s.get('preset')))} preset)")


# -- unit page ---------------------------------------------------------------------------------------
CAPTIONS = {
    "channel": "<b>Channel</b>: an image optimized to maximize this channel's mean activation over all positions, "
               "so the pattern it looks for is repeated everywhere.",
    "neuron": "<b>Neuron</b>: optimized to maximize this channel at the centre position only: what one neuron "
              "looks for in its receptive field (the rest of the image does not matter to it).",
    "negative": "<b>Negative</b>: optimized to <i>minimize</i> the channel's mean activation: what turns it down most.",
    "diversity": "<b>Diversity</b>: four images that all excite the channel while a diversity term pushes them "
                 "apart: different things, or facets, that make it fire.",
    "top_max": "<b>Top crops</b>: the patch of each photo around the position where this unit fires most "
               "(its receptive field), for the photos with the highest single-position activation.",
    "top": "<b>Top photos</b>: the whole photos with the highest mean activation of this channel.",
    "bottom": "<b>Bottom photos</b>: the photos with the lowest mean activation: what it fires least on.",
}


def unit_page(view: ModelView, layer: str, unit: int, extra: dict[str, Panel] | None = None) -> str:
    """The page of one unit. Unbuilt panels show a placeholder (and, under ``featviz serve``,
    are rendered on demand by the page's script). ``extra``: panels to show that the
    manifest does not hold (the server adds the dataset examples of an unbuilt unit)."""
    extra = extra or {}

    def get(kind):
        return extra.get(kind) or view.panel(layer, unit, kind)

    root = "../../../"
    linfo = view.layer_info(layer) or {"channels": unit + 1, "height": None, "width": None}
    model_dir = "../../"
    seq = view.sequence()
    here = (layer, unit)
    built = here in seq
    if built:
        i = seq.index(here)
        prev = seq[i - 1] if i > 0 else None
        nxt = seq[i + 1] if i + 1 < len(seq) else None
    else:  # a page made on demand: walk the layer's units one by one
        prev = (layer, unit - 1) if unit > 0 else None
        nxt = (layer, unit + 1) if unit + 1 < linfo["channels"] else None

    def unit_link(target, rel, text):
        if target is None:
            return f'<span class="off">{text}</span>'
        tl, tu = target
        href = f"../{tu}/index.html" if tl == layer else f"../../{layer_dir(tl)}/{tu}/index.html"
        return f'<a rel="{rel}" href="{href}">{text}</a>'

    prev_html = unit_link(prev, "prev", f"&larr; {e(prev[0]) + ':' + str(prev[1]) if prev else 'previous'}")
    next_html = unit_link(nxt, "next", f"{e(nxt[0]) + ':' + str(nxt[1]) if nxt else 'next'} &rarr;")
    size = f"{linfo['height']}&times;{linfo['width']}" if linfo.get("height") else ""
    parts = [f'<h1>{e(layer)} <span class="unitno">unit {unit}</span></h1>',
             f'<p class="navline">{prev_html} <a rel="up" href="../index.html">all {linfo["channels"]} units of '
             f'{e(layer)}</a> {next_html}</p>',
             f'<p class="sub">{e(view.name)} &middot; layer {e(layer)}, {linfo["channels"]} channels, '
             f'{size} positions</p>']

    figs = []
    for kind in ("channel", "neuron", "negative"):
        p = get(kind)
        value = ""
        if p is not None and "value" in p.info:
            word = "reached" if kind != "negative" else "lowered to"
            value = f' <span class="val">Activation {word} {_fmt(p.info["value"] if kind != "negative" else -p.info["value"])}.</span>'
            if kind == "negative" and p.info["value"] == 0:
                value += (' <span class="val">The unit is simply off here: behind a ReLU every image that turns it '
                          'off is as good, so this picture says little.</span>')
        if p is not None:
            img = _img(f"{kind}.png", VIS_PX, f"{kind} visualization of {layer}:{unit}", lazy=False)
            body = f'<a href="{kind}.png">{img}</a>'
        else:
            body = _pending(VIS_PX, kind)
        figs.append(f'<figure class="panel" id="{kind}" data-kind="{kind}">{body}'
                    f'<figcaption>{CAPTIONS[kind]}{value}</figcaption></figure>')
    p = get(DIVERSITY)
    n_div = len(p.files) if p is not None else 4
    if p is not None:
        imgs = "".join(f'<a href="{Path(f).name}">{_img(Path(f).name, DIV_PX, f"diverse image {j + 1} of {layer}:{unit}", lazy=False)}</a>'
                       for j, f in enumerate(p.files))
    else:
        imgs = "".join(_pending(DIV_PX, "diversity") for _ in range(n_div))
    figs.append(f'<figure class="panel wide" id="diversity" data-kind="diversity"><div class="row">{imgs}</div>'
                f'<figcaption>{CAPTIONS["diversity"]}</figcaption></figure>')
    parts.append(f'<section class="panels" id="visualizations"><h2>Feature visualization</h2>'
                 f'<div class="figs">{"".join(figs)}</div></section>')

    # dataset examples
    p = get(EXAMPLES)
    if p is not None:
        ex = p.info
        rows = []
        # Photos that tie with the least activating one (a ReLU unit at zero) are no "top" example.
        bottom_values = [item["value"] for item in ex.get("bottom", [])]
        floor = min(bottom_values) if bottom_values else None
        tied = 0
        for kind in ("top_max", "top", "bottom"):
            items = ex.get(kind, [])
            if floor is not None and kind != "bottom":
                keep = [item for item in items if item["value"] > floor + 1e-6 * max(1.0, abs(floor))]
                tied = max(tied, len(items) - len(keep))
                items = keep
            if not items:
                if kind == "top":
                    rows.append(f'<p class="missing">No photo raised this unit above its lowest activation '
                                f'({_fmt(floor)}).</p>')
                continue
            cells = []
            for item in items:
                src = _rel(3, item["file"])
                where = f" at {item['pos'][0]},{item['pos'][1]}" if item.get("pos") else ""
                title = f"{item['source']}: {'max' if kind == 'top_max' else 'mean'} activation {_fmt(item['value'])}{where}"
                cells.append(f'<a href="{e(src)}" title="{e(title)}">{_img(src, EX_PX, title)}</a>')
            rows.append(f'<figure class="panel examples" id="examples-{kind}"><div class="row">{"".join(cells)}</div>'
                        f'<figcaption>{CAPTIONS[kind]}</figcaption></figure>')
        n = ex.get("n_images")
        note = (f" Top lists leave out photos that tie with the lowest activation ({_fmt(floor)}): this unit "
                f"is silent on them." if tied else "")
        ex_html = "".join(rows) + (f'<p class="sub">From {n} photos of {e(ex.get("data", ""))}.{note}</p>'
                                   if n else "")
    else:
        ex_html = ('<p class="missing">No dataset examples for this layer in this build '
                   '(build the layer with <code>featviz microscope build</code>).</p>')
    parts.append(f'<section class="panels" id="examples"><h2>Dataset examples</h2>{ex_html}</section>')

    # classes
    p = get(CLASSES)
    if p is not None:
        c = p.info

        shown = set(view.classes())

        def class_list(items):
            return "".join(f'<li>{_class_name(k, lbl, k in shown, model_dir)} '
                           f'<span class="cls">({k})</span> <span class="val">{v:+.3g}</span></li>'
                           for k, lbl, v in items)

        text = describe(c["method"], layer, c.get("detail", ""), c.get("n_images", 0))
        cls_html = (f'<figure class="panel wide" id="classes-panel"><div class="classlists">'
                    f'<div><h3>pushes up</h3><ol class="up">{class_list(c["up"])}</ol></div>'
                    f'<div><h3>pushes down</h3><ol class="down">{class_list(c["down"])}</ol></div></div>'
                    f'<figcaption><b>Classes</b> whose logits this unit pushes up and down most, '
                    f'<span class="method" data-method="{e(c["method"])}">{e(text)}</span>. The number is the '
                    f'change of the logit per unit of the channel\'s mean activation.</figcaption></figure>')
    else:
        cls_html = ('<p class="missing">Not computed: this unit was not built (<code>featviz microscope build '
                    '--units</code> adds it).</p>')
    parts.append(f'<section class="panels" id="classes"><h2>Effect on the classes</h2>{cls_html}</section>')

    # on-demand rendering (shown by the script only under featviz serve)
    s = view.info.get("settings", {})
    parts.append(
        f'<section class="live" id="live" hidden><h2>Render on demand</h2>'
        f'<form id="live-form"><label>steps <input name="steps" type="number" min="1" value="{s.get("steps", 32)}"></label> '
        f'<label>size <input name="size" type="number" min="16" value="{s.get("size", 96)}"></label> '
        f'<label>seed <input name="seed" type="number" min="0" value="{s.get("seed", 0)}"></label> '
        f'<button type="submit">Render</button></form>'
        f'<div class="progress" hidden><progress id="live-progress" max="1" value="0"></progress> '
        f'<span id="live-status"></span></div><div id="live-results" class="figs"></div></section>')
    body = "\n".join(parts)
    crumbs = (f'<a href="{root}index.html">microscope</a> / <a href="{model_dir}index.html">{e(view.name)}</a> / '
              f'<a href="../index.html">{e(layer)}</a> / <b>{unit}</b>')
    scripts = f'<script src="{model_dir}model.js"></script>'
    return _page(title=f"{layer}:{unit} - {view.name}", root=root, page="unit", body=body, crumbs=crumbs,
                 model=view.slug, layer=layer, unit=str(unit), scripts=scripts,
                 placeholder=f"{layer}:{unit + 1}, class 309",
                 footer=_settings_line(view.info))


def _class_name(k: int, label: str, shown: bool, model_dir: str) -> str:
    """A class name, linked to its visualization on the model page when the site has one."""
    if shown:
        return f'<a href="{model_dir}index.html#class-{k}" data-class="{k}">{e(label)}</a>'
    return f'<span class="clsname">{e(label)}</span>'


def _pending(px: int, kind: str) -> str:
    return (f'<div class="pending" data-pending="{kind}" style="width:{px}px;height:{px}px">'
            f'<span>not built</span></div>')


# -- layer page -----------------------------------------------------------------------------------------
def layer_page(view: ModelView, layer: str) -> str:
    root = "../../"
    linfo = view.layer_info(layer) or {"channels": 0}
    built = set(view.built_units(layer))
    with_thumb = {u for u in built if view.panel(layer, u, "channel") is not None}
    layers = view.built_layers()
    i = layers.index(layer) if layer in layers else -1
    prev = layers[i - 1] if i > 0 else None
    nxt = layers[i + 1] if 0 <= i < len(layers) - 1 else None
    prev_html = f'<a rel="prev" href="../{layer_dir(prev)}/index.html">&larr; {e(prev)}</a>' if prev else '<span class="off">&larr;</span>'
    next_html = f'<a rel="next" href="../{layer_dir(nxt)}/index.html">{e(nxt)} &rarr;</a>' if nxt else '<span class="off">&rarr;</span>'
    size = f"{linfo.get('height')}&times;{linfo.get('width')}" if linfo.get("height") else ""
    parts = [f"<h1>{e(layer)}</h1>",
             f'<p class="navline">{prev_html} <a rel="up" href="../index.html">all layers</a> {next_html}</p>',
             f'<p class="sub">{linfo["channels"]} channels &middot; {size} positions &middot; '
             f'{len(with_thumb)} units rendered in this site</p>']
    dream = view.panel(layer, -1, DREAM)
    if dream is not None:
        px = 256
        parts.append(f'<figure class="panel dream" id="dream"><a href="dream.png">{_img("dream.png", px, f"DeepDream of {layer}", lazy=False)}</a>'
                     f'<figcaption><b>DeepDream of the layer</b>: an image optimized to maximize the mean squared '
                     f'activation of all {linfo["channels"]} channels of {e(layer)} at once, starting from noise: '
                     f'the textures and parts this layer as a whole responds to.</figcaption></figure>')
    tiles = []
    for u in range(linfo["channels"]):
        if u in with_thumb:
            tiles.append(f'<a class="tile" href="{u}/index.html" id="u{u}">{_img(f"{u}/thumb.jpg", THUMB_PX, f"unit {u}")}'
                         f'<span>{u}</span></a>')
        elif u in built:
            tiles.append(f'<a class="tile" href="{u}/index.html" id="u{u}"><i class="blank"></i><span>{u}</span></a>')
        else:
            tiles.append(f'<a class="tile unbuilt" href="{u}/index.html" id="u{u}" data-unbuilt="1" '
                         f'title="not built: featviz serve renders it on demand"><i class="blank"></i><span>{u}</span></a>')
    parts.append(f'<section id="units"><h2>Units</h2><p class="caption">Each tile is the channel visualization of one unit; '
                 f'click for its page. Grey tiles were not built (under <code>featviz serve</code> they render on '
                 f'demand).</p><div class="grid">{"".join(tiles)}</div></section>')
    crumbs = (f'<a href="{root}index.html">microscope</a> / <a href="../index.html">{e(view.name)}</a> / '
              f'<b>{e(layer)}</b>')
    return _page(title=f"{layer} - {view.name}", root=root, page="layer", body="\n".join(parts), crumbs=crumbs,
                 model=view.slug, layer=layer, scripts='<script src="../model.js"></script>',
                 placeholder=f"{layer}:12, 12, class 309", footer=_settings_line(view.info))


# -- model page ---------------------------------------------------------------------------------------------
def model_page(view: ModelView) -> str:
    root = "../"
    built = set(view.built_layers())
    rows = []
    reports = view.reports()
    # The transfer report's probe accuracies go beside the layers they were measured on.
    probe = next((p.info.get("layers") for p in reports if p.panel == REPORT + "transfer"), None) or {}
    probe_link = f"{REPORTS_DIR}/transfer/index.html"
    for l in view.layer_table():
        name = l["name"]
        size = f"{l['height']}&times;{l['width']}" if l.get("height") else "&ndash;"
        n = len([u for u in view.built_units(name)])
        link = f'<a href="{layer_dir(name)}/index.html">{e(name)}</a>' if name in built else \
            f'<a class="unbuilt" href="{layer_dir(name)}/index.html" data-unbuilt="1">{e(name)}</a>' if l.get("height") else e(name)
        acc = ""
        if probe:
            acc = "".join(f'<td class="num">{"" if v is None else f"{v:.3f}"}</td>'
                          for v in (probe.get(name) or [None, None])[:2])
        rows.append(f'<tr{" class=built" if name in built else ""}><td>{link}</td><td class="num">{l["channels"]}</td>'
                    f'<td class="num">{size}</td><td class="num">{n or ""}</td>{acc}</tr>')
    probe_head = (f'<th><a href="{probe_link}" title="linear-probe accuracy on a new task (featviz report transfer)">'
                  f'probe, trained</a></th><th>probe, random init</th>') if probe else ""
    table = ('<table class="layers"><thead><tr><th>layer</th><th>channels</th><th>positions</th><th>units built</th>'
             f'{probe_head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    figs = []
    for c in view.classes():
        p = view.panel("", c, CLASS_VIS)
        src = f"{CLASSES_DIR}/{Path(p.files[0]).name}"
        figs.append(f'<figure class="panel class" id="class-{c}"><a href="{src}">{_img(src, CLASS_PX, view.label(c))}</a>'
                    f'<figcaption>{e(view.label(c))} <span class="cls">({c})</span></figcaption></figure>')
    classes = ""
    if figs:
        classes = (f'<section id="classes"><h2>Class visualizations</h2><p class="caption">Images optimized to '
                   f'maximize one class logit each: what the network as a whole takes for that class.</p>'
                   f'<div class="figs">{"".join(figs)}</div></section>')
    report_items = "".join(
        f'<li><a href="{REPORTS_DIR}/{e(p.panel[len(REPORT):])}/index.html">{e(p.info.get("title", p.panel))}</a>'
        f' <span class="sub">{e(p.info.get("summary", ""))}</span></li>' for p in reports)
    report_section = (f'<section id="reports"><h2>Reports</h2><p class="caption">Experiments on this network '
                      f'(<code>featviz report ... --site</code>), with their settings and figures.</p>'
                      f'<ul class="reports">{report_items}</ul></section>') if reports else ""
    info = view.info
    parts = [f"<h1>{e(view.name)}</h1>",
             f'<p class="sub">input {info.get("input_size")}&times;{info.get("input_size")} RGB &middot; '
             f'{len(view.layer_table())} layers &middot; {info.get("num_classes") or "no"} classes</p>',
             f'<section id="layers"><h2>Layers</h2><p class="caption">The main layers in the order the network runs '
             f'them, with their number of channels (units) and spatial size at the input size. Built layers link to '
             f'their units.</p>{table}</section>', report_section, classes]
    crumbs = f'<a href="{root}index.html">microscope</a> / <b>{e(view.name)}</b>'
    return _page(title=f"{view.name} - microscope", root=root, page="model", body="\n".join(parts), crumbs=crumbs,
                 model=view.slug, scripts='<script src="model.js"></script>', footer=_settings_line(view.info))


def root_page(manifest: Manifest) -> str:
    items = []
    for s, info in manifest.models().items():
        n = len(manifest.layers(s))
        items.append(f'<li><a href="{e(s)}/index.html">{e(info["name"])}</a> <span class="sub">{n} layers built</span></li>')
    body = ('<h1>featviz microscope</h1><p class="caption">Every unit of the chosen layers of these networks: what '
            'makes it fire (feature visualization), where it fires on real photos (dataset examples), and which '
            f'classes it pushes up and down.</p><ul class="models">{"".join(items)}</ul>')
    return _page(title="featviz microscope", root="", page="root", body=body, crumbs="<b>microscope</b>",
                 placeholder="efficientnet_lite0")


def model_js(view: ModelView) -> str:
    data = {"slug": view.slug, "name": view.name,
            "layers": [[l["name"], layer_dir(l["name"]), l["channels"], bool(l.get("height"))]
                       for l in view.layer_table()],
            "built": {layer: view.built_units(layer) for layer in view.built_layers()},
            "classes": view.classes(), "labels": view.info.get("labels") or []}
    return "window.FV_MODEL = " + json.dumps(data, separators=(",", ":")) + ";\n"


# -- writing -------------------------------------------------------------------------------------------------
def write_pages(site: Path, manifest: Manifest, model_slug: str, layers=None, units=None) -> int:
    """Write the root, model page and model.js, the pages of ``layers`` (None: every built
    layer) and of ``units`` ((layer, unit) list; None: every built unit of those layers).
    Returns the number of files that changed."""
    view = ModelView.load(manifest, model_slug)
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
        changed += write_if_changed(base / layer_dir(layer) / str(u) / "index.html", unit_page(view, layer, u))
    return changed


# -- reports ------------------------------------------------------------------------------------------------
def _inline(text: str) -> str:
    """Escape, then the inline Markdown the reports use: images, links, `code`, **bold**."""
    out = e(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)",
                 lambda m: f'<img src="{e(m.group(2))}" alt="{e(m.group(1))}" loading="lazy">', out)
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{e(m.group(2))}">{m.group(1)}</a>', out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def markdown_html(text: str) -> str:
    """The Markdown subset that report.md files are written in (headings, paragraphs, bullet
    lists, pipe tables, images, inline code, bold, links) as HTML."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"(#{1,4}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, body = rows[0], rows[1:]
            blocks.append('<table class="layers report"><thead><tr>' + "".join(f"<th>{_inline(c)}</th>" for c in head)
                          + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r)
                                                            + "</tr>" for r in body) + "</tbody></table>")
        elif re.fullmatch(r"!\[[^\]]*\]\([^)\s]+\)", line.strip()):
            blocks.append(f'<figure class="panel wide">{_inline(line.strip())}</figure>')
            i += 1
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "  ")) and lines[i].strip():
                if lines[i].startswith("- "):
                    items.append(lines[i][2:].strip())
                else:
                    items[-1] += " " + lines[i].strip()
                i += 1
            blocks.append("<ul>" + "".join(f"<li>{_inline(t)}</li>" for t in items) + "</ul>")
        else:
            para = []
            while (i < len(lines) and lines[i].strip() and not lines[i].startswith(("|", "#", "- "))
                   and not re.fullmatch(r"!\[[^\]]*\]\([^)\s]+\)", lines[i].strip())):
                para.append(lines[i].strip())
                i += 1
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(blocks)


def report_page(view: ModelView, name: str, markdown: str) -> str:
    root = "../../../"
    crumbs = (f'<a href="{root}index.html">microscope</a> / <a href="../../index.html">{e(view.name)}</a> / '
              f'report <b>{e(name)}</b>')
    files = ('<p class="caption">Files: <a href="report.md">report.md</a> &middot; '
             '<a href="results.json">results.json</a> (every measured number)</p>')
    return _page(title=f"{name} report - {view.name}", root=root, page="report", body=markdown_html(markdown) + files,
                 crumbs=crumbs, model=view.slug, scripts='<script src="../../model.js"></script>')


def _report_summary(results: dict) -> tuple[str, dict]:
    """A one-line summary for the model page, and per-layer numbers to show in its layer table."""
    s = results.get("summary") or {}
    if results.get("report") == "transfer" and s.get("trained"):
        tr, rn = s["trained"], s["random"]
        layers = {r["layer"]: [r["trained"]["accuracy"], (r.get("random") or {}).get("accuracy")]
                  for r in results.get("rows", [])}
        return (f"linear probes on a new task ({len(results['data']['classes'])} classes); best layer: trained "
                f"{tr['peak_layer']} ({tr['peak_accuracy']:.3f}), random init {rn['peak_layer']} "
                f"({rn['peak_accuracy']:.3f}); chance {results['chance']:.3f}"), layers
    return "", {}


def add_report(site, report_dir) -> str:
    """Put a report folder (``report.md``, ``results.json``, its figures) into the microscope at
    ``site``, under its model: ``SITE/<model>/_reports/<name>/`` with an HTML page, a panel in
    the manifest, and a link (and, for ``transfer``, the probe accuracies in the layer table) on
    the model page. The model must already be in the site. Returns the page's path relative to
    the site."""
    from ..errors import FeatvizError

    site, report_dir = Path(site), Path(report_dir)
    try:
        results = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
        markdown = (report_dir / "report.md").read_text(encoding="utf-8")
        name, model = results["report"], results["settings"]["model"]
        if name == "causes":  # one report per unit
            name = f"causes-{results['settings']['layer']}-{results['settings']['unit']}"
    except (OSError, ValueError, KeyError) as exc:
        raise FeatvizError(f"{report_dir} is not a finished report (report.md and results.json): {exc}") from None
    if not (site / MANIFEST_NAME).is_file():
        raise FeatvizError(f"no microscope at {site}: build one with `featviz microscope build {model} --out {site}`")
    model_slug = slug(model)
    with Manifest(site) as man:
        if man.model(model_slug) is None:
            raise FeatvizError(f"the microscope at {site} has no {model}: build it with "
                               f"`featviz microscope build {model} --out {site}`")
        base = f"{model_slug}/{REPORTS_DIR}/{slug(name)}"
        files, digest = [], hashlib.sha256()
        for path in sorted(p for p in report_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(report_dir).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data)
            write_if_changed(site / base / rel, data)
            files.append(f"{base}/{rel}")
        view = ModelView.load(man, model_slug)
        write_if_changed(site / base / "index.html", report_page(view, name, markdown))
        files.append(f"{base}/index.html")
        title = markdown.lstrip().splitlines()[0].lstrip("# ").strip() if markdown.strip() else name
        summary, layers = _report_summary(results)
        man.put([Panel(model_slug, "", -1, REPORT + name, digest.hexdigest()[:16], tuple(files),
                       {"title": title, "summary": summary, "layers": layers})])
        write_pages(site, man, model_slug, layers=[])
    return f"{base}/index.html"
