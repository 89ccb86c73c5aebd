"""Side by side: two organisms built into the same site (e.g. lite0 and lite1, or a network before
and after fine-tuning).

For each built layer of the first model, the built layer of the second at the nearest relative
depth; for each unit of the first, the unit of the second whose activation (the mean over
positions) correlates best with it over the dataset-example photos of both sites (Pearson's r,
``numpy.corrcoef`` on the two activation tables). Two networks that learned the same feature show a
pair with r near 1. The page also puts the class visualizations both models have side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import FeatvizError
from .manifest import Manifest, Panel
from .settings import COMPARE, COMPARE_DIR, EXAMPLES_DIR, MANIFEST_NAME, digest, slug

PHOTO_BATCH = 16


def matching_layers(model_a, layers_a: list[str], model_b, layers_b: list[str]) -> list[tuple[str, str]]:
    """(layer of a, layer of b at the nearest relative depth) for each of ``layers_a``; depth is the
    position among each model's spatial main layers, from 0 (first) to 1 (last)."""
    def depths(model, layers):
        spatial = [info.name for info in model.layers() if info.spatial]
        order = {name: i / max(1, len(spatial) - 1) for i, name in enumerate(spatial)}
        return {name: order[name] for name in layers if name in order}

    da, db = depths(model_a, layers_a), depths(model_b, layers_b)
    if not db:
        return []
    return [(a, min(db, key=lambda b: (abs(db[b] - depth), db[b]))) for a, depth in da.items()]


@torch.no_grad()
def mean_activations(model, photos: list[Path], layers: list[str]) -> dict[str, np.ndarray]:
    """layer -> (photos, channels): each channel's mean activation over positions, per photo."""
    from ..imageio import image_batch

    side = model.input_size
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    for start in range(0, len(photos), PHOTO_BATCH):
        batch = image_batch(photos[start:start + PHOTO_BATCH], side)
        acts = model.activations(batch.to(model.device), layers)
        for layer in layers:
            a = acts[layer].float()
            out[layer].append((a.mean((2, 3)) if a.dim() == 4 else a).cpu().numpy())
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def best_matches(acts_a: np.ndarray, acts_b: np.ndarray) -> list[list]:
    """For each column (unit) of ``acts_a``: [best unit of b, its correlation] (units that never vary
    over the photos correlate with nothing: r = 0)."""
    n_a = acts_a.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(acts_a, acts_b, rowvar=False)[:n_a, n_a:]
    r = np.nan_to_num(r, nan=0.0)
    best = r.argmax(1)
    return [[int(b), round(float(r[i, b]), 4)] for i, b in enumerate(best)]


def _photos(site: Path, slugs: list[str]) -> list[Path]:
    """The whole photos the dataset-examples passes of both models kept: their union, each source
    photo once (two builds over the same folder keep copies of the same photos)."""
    from ..examples import ExampleStore

    found: dict[str, Path] = {}
    for model_slug in slugs:
        path = site / model_slug / EXAMPLES_DIR
        if not ExampleStore.exists(path):
            continue
        with ExampleStore(path) as store:
            root, sources = store.data_root, store.images()
        for file in sorted((path / "media" / "images").glob("*.jpg")):
            source = sources[int(file.stem)] if file.stem.isdigit() and int(file.stem) < len(sources) else file.name
            found.setdefault(f"{root}/{source}", file)
    return list(found.values())


def _top_crops(site: Path, model_slug: str, layer: str, channels: int) -> dict[str, str]:
    """unit -> the site-relative file of its top dataset crop (for thumbnails of unrendered units)."""
    from ..examples import ExampleStore

    path = site / model_slug / EXAMPLES_DIR
    if not ExampleStore.exists(path):
        return {}
    with ExampleStore(path) as store:
        if layer not in store.layers():
            return {}
        return {str(u): "/".join([model_slug, EXAMPLES_DIR, ex[0].image_file.relative_to(store.path).as_posix()])
                for u in range(channels) if (ex := store.top(layer, u, by="max", k=1))}


def site_model(model, recorded: dict[str, dict], device=None, where: str = "the site"):
    """``model`` as an organism: one already, a model featviz knows by name or spec, or the name of a
    network built into the site (``recorded``: the manifest's models), loaded from what its build recorded."""
    from ..models import ModelOrganism, is_model_reference, load, load_reference

    if isinstance(model, ModelOrganism):
        return model
    info = recorded.get(slug(str(model)))
    if info is not None and not is_model_reference(model):
        return load_reference(info, device, where=f"{where}'s {info['name']}")
    return load(model, device=device)


def compare(site, model_a, model_b, *, device=None, log: Callable[[str], None] | None = None) -> str:
    """Compare two models built into the microscope at ``site`` and write their side-by-side page,
    ``SITE/_compare/<a>--<b>/index.html`` (linked from the first model's page). ``model_a`` /
    ``model_b``: names (``featviz.models.load``), the names of networks built into the site (loaded
    from the spec the build recorded, e.g. a fine-tuned network's), or ModelOrganisms. Returns the
    page's path relative to the site."""
    from .pages import ModelView, compare_page, write_if_changed, write_pages

    say = log or (lambda msg: None)
    site = Path(site)
    if not (site / MANIFEST_NAME).is_file():
        raise FeatvizError(f"no microscope at {site}: build both models into it with `featviz microscope build "
                           f"MODEL --out {site}`")
    with Manifest(site) as man:
        recorded = man.models()
    models = [site_model(m, recorded, device, f"the site {site}") for m in (model_a, model_b)]
    slugs = [slug(m.name) for m in models]
    if slugs[0] == slugs[1]:
        raise FeatvizError(f"compare two different models, got {models[0].name} twice")
    with Manifest(site) as man:
        views = []
        for model, model_slug in zip(models, slugs):
            if man.model(model_slug) is None:
                raise FeatvizError(f"the microscope at {site} has no {model.name}: build it with "
                                   f"`featviz microscope build {model.name} --out {site}`")
            views.append(ModelView.load(man, model_slug))
        pairs = matching_layers(models[0], views[0].built_layers(), models[1], views[1].built_layers())
        if not pairs:
            raise FeatvizError(f"{models[0].name} and {models[1].name} have no built spatial layers to compare")
        photos = _photos(site, slugs)
        if len(photos) < 3:
            raise FeatvizError(f"the site has {len(photos)} dataset-example photos; the comparison needs at least 3")
        say(f"comparing {models[0].name} and {models[1].name} on {len(photos)} photos: "
            + ", ".join(f"{a} ~ {b}" for a, b in pairs))
        acts_a = mean_activations(models[0], photos, sorted({a for a, _ in pairs}))
        acts_b = mean_activations(models[1], photos, sorted({b for _, b in pairs}))
        rows = []
        for a, b in pairs:
            best = best_matches(acts_a[a], acts_b[b])
            rows.append({"a": a, "b": b, "best": best,
                         "mean_best": round(float(np.mean([r for _, r in best])), 4),
                         "crops_a": _top_crops(site, slugs[0], a, acts_a[a].shape[1]),
                         "crops_b": _top_crops(site, slugs[1], b, acts_b[b].shape[1])})
        info = {"other": slugs[1], "n_photos": len(photos), "pairs": rows}
        man.put([Panel(slugs[0], "", -1, COMPARE + slugs[1], digest(info), (), info)])
        views[0] = ModelView.load(man, slugs[0])
        rel = f"{COMPARE_DIR}/{slugs[0]}--{slugs[1]}/index.html"
        write_if_changed(site / rel, compare_page(views[0], views[1], info))
        write_pages(site, man, slugs[0], layers=[])
    return rel
