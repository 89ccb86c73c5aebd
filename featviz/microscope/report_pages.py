"""Reports in the microscope: ``featviz report ... --site SITE`` puts a report folder under its model.

A report's ``report.md`` becomes an HTML page (markdown-it-py, raw HTML in the Markdown is
escaped), its figures and ``results.json`` are copied beside it, and the model page links it
with what the report's own ``site_entry`` says of itself (``featviz.reports.site``).
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from markupsafe import Markup

from ..errors import FeatvizError
from .manifest import Manifest, Panel
from .pages import REPORT, REPORTS_DIR, ModelView, render, write_if_changed, write_pages
from .settings import MANIFEST_NAME, slug


@lru_cache(maxsize=1)
def _markdown():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.core.ruler.push("microscope_style", _site_style)
    return md


def _site_style(state) -> None:
    """Give the report's Markdown the site's look: tables styled as the layer table, an image alone in
    its paragraph shown as a wide figure, every image loaded lazily."""
    tokens = state.tokens
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            token.attrSet("class", "layers report")
        elif token.type == "inline":
            for child in token.children or []:
                if child.type == "image":
                    child.attrSet("loading", "lazy")
            lone_image = [c.type for c in token.children or [] if not (c.type == "text" and not c.content.strip())]
            if lone_image == ["image"] and i > 0 and tokens[i - 1].type == "paragraph_open":
                tokens[i - 1].tag = tokens[i + 1].tag = "figure"
                tokens[i - 1].attrSet("class", "panel wide")


def markdown_html(text: str) -> Markup:
    """A report's Markdown as HTML (safe: the Markdown's own HTML is escaped, not passed through)."""
    return Markup(_markdown().render(text))


def report_page(view: ModelView, name: str, markdown: str) -> str:
    return render("report.html", title=f"{name} report - {view.name}", root="../../../", page="report",
                  model=view.slug, model_js="../../model.js", model_name=view.name, name=name,
                  content=markdown_html(markdown))


def check_report_site(site, model_name: str) -> None:
    """Fail with one clear error unless ``site`` is a microscope that holds ``model_name`` (a report
    command calls this before its work, ``add_report`` again when it publishes)."""
    site = Path(site)
    if not (site / MANIFEST_NAME).is_file():
        raise FeatvizError(f"no microscope at {site}: build one with `featviz microscope build {model_name} "
                           f"--out {site}`")
    with Manifest(site, create=False, readonly=True) as man:
        if man.model(slug(model_name)) is None:
            raise FeatvizError(f"the microscope at {site} has no {model_name}: build it with "
                               f"`featviz microscope build {model_name} --out {site}`")


def add_report(site, report_dir) -> str:
    """Put a report folder (``report.md``, ``results.json``, its figures) into the microscope at
    ``site``, under its model: ``SITE/<model>/_reports/<name>/`` with an HTML page, a panel in
    the manifest, and a link (and whatever columns the report adds to the layer table) on the
    model page. The model must already be in the site. Returns the page's path relative to
    the site."""
    from ..reports.site import site_entry

    site, report_dir = Path(site), Path(report_dir)
    try:
        results = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
        markdown = (report_dir / "report.md").read_text(encoding="utf-8")
        model = results["settings"]["model"]
        entry = site_entry(results)
    except (OSError, ValueError, KeyError) as exc:
        raise FeatvizError(f"{report_dir} is not a finished report (report.md and results.json): {exc}") from None
    check_report_site(site, model)
    model_slug = slug(model)
    with Manifest(site) as man:
        base = f"{model_slug}/{REPORTS_DIR}/{slug(entry.name)}"
        files, digest = [], hashlib.sha256()
        for path in sorted(p for p in report_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            rel = path.relative_to(report_dir).as_posix()
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + data)
            write_if_changed(site / base / rel, data)
            files.append(f"{base}/{rel}")
        view = ModelView.load(man, model_slug)
        write_if_changed(site / base / "index.html", report_page(view, entry.name, markdown))
        files.append(f"{base}/index.html")
        title = markdown.lstrip().splitlines()[0].lstrip("# ").strip() if markdown.strip() else entry.name
        man.put([Panel(model_slug, "", -1, REPORT + entry.name, digest.hexdigest()[:16], tuple(files),
                       entry.panel_info(title))])
        write_pages(site, man, model_slug, layers=[])
    return f"{base}/index.html"
