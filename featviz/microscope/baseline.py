"""The starting network beside a fine-tuned one.

A site built for a network that started from another one (a ``featviz finetune`` run's
``model.toml``: the run's ``checkpoints/start.pt``, named ``<run>@start``; or any network given with
``--baseline``) holds the starting network too, built first with the same layers, units and
settings. The builds derive each render batch's seed from the settings, not from the network, so
each unit of both is rendered from the same seed: a difference between the two images is a
difference of the networks. The fine-tuned model's manifest entry names the baseline's slug; its
unit pages show the same unit of the start beside it (visualization and top photos, linked) and its
model page the CKA-by-depth plot of this module's ``cka_panel``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import FeatvizError
from .manifest import Manifest, Panel
from .settings import BASELINE_CKA, EXAMPLES_DIR, digest, slug

MAX_PROBE_PHOTOS = 200  # photos of the site's store used for CKA when the network is not a run's


def resolve(model, baseline, device=None):
    """The starting network to build beside ``model`` (an organism), or None.

    ``baseline``: None for the default (the run's starting network when ``model`` was loaded from a
    fine-tuning run's ``model.toml``, else none), False for none, or a model name, spec or organism.
    """
    from ..models import load
    from ..training import run_of_spec, start_spec

    if baseline is False:
        return None
    if baseline is None:
        run = run_of_spec(model.source)
        if run is None:
            return None
        baseline = str(start_spec(run))
    organism = load(baseline, device=device)
    if slug(organism.name) == slug(model.name):
        raise FeatvizError(f"the baseline {organism.name} has the site folder of {model.name}; "
                           "give the two networks different names")
    return organism


def check_layers(baseline, layers: list[str]) -> None:
    """One line when the baseline lacks a layer the site shows (it must show the same units)."""
    for layer in layers:
        try:
            baseline.layer(layer)
        except FeatvizError as exc:
            raise FeatvizError(f"the baseline {baseline.name} cannot be shown beside every unit: {exc}") from None


def probe(model, site: Path) -> tuple[torch.Tensor, str, Path | None]:
    """The images CKA is measured on, what they are, and the run folder (None when not a run's):
    a fine-tuning run's held-out images, else up to ``MAX_PROBE_PHOTOS`` photos of the site's store."""
    from ..imageio import image_batch
    from ..training import run_of_spec
    from ..training.evolve import probe_images

    run = run_of_spec(model.source)
    if run is not None:
        images, _classes = probe_images(run)
        return images, f"{images.shape[0]} held-out images of the run {run.name}", run
    media = site / slug(model.name) / EXAMPLES_DIR / "media" / "images"
    files = sorted(media.glob("*.jpg"))[:MAX_PROBE_PHOTOS]
    if len(files) < 3:
        raise FeatvizError(f"CKA to the baseline needs at least 3 photos; the site's store has {len(files)}")
    return image_batch(files, model.input_size), f"{len(files)} dataset-example photos of the site", None


def cka_panel(site: Path, man: Manifest, model, baseline, say=lambda msg: None) -> bool:
    """Linear CKA of each main layer (those both networks have) to the baseline's, on ``probe``'s images:
    for a run, at every checkpoint (as ``featviz evolve`` plots it), else for ``model`` alone. Writes
    ``<model>/cka_by_depth.png`` and records the model panel; True when it was (re)made."""
    from ..training import checkpoints, load_checkpoint
    from ..training.cka import layer_grams, linear_cka_from_grams
    from ..training.evolve import cka_figure

    model_slug = slug(model.name)
    images, described, run = probe(model, site)
    theirs = {info.name for info in baseline.layers()}
    layers = [info.name for info in model.layers() if info.name in theirs]
    if not layers:
        raise FeatvizError(f"{model.name} and the baseline {baseline.name} have no main layer in common")
    points = checkpoints(run) if run is not None else []
    h = digest({"model": model.weights_digest(), "baseline": baseline.weights_digest(), "layers": layers,
                "probe": hashlib.sha256(images.numpy().tobytes()).hexdigest(), "points": points})
    if man.current(model_slug, "", -1, BASELINE_CKA, h):
        return False
    start = layer_grams(baseline, images.to(baseline.device), layers)
    record = {"layers": layers, "probe_images": int(images.shape[0]), "checkpoints": []}
    networks = ([(p["step"], lambda p=p: load_checkpoint(run, p["file"])) for p in points] if run is not None
                else [(1, lambda: model)])
    for step, network in networks:
        organism = network()
        grams = layer_grams(organism, images.to(organism.device), layers)
        record["checkpoints"].append({"step": step,
                                      "cka": {n: round(linear_cka_from_grams(start[n], grams[n]), 4) for n in layers}})
    rel = f"{model_slug}/cka_by_depth.png"
    last = record["checkpoints"][-1]["cka"]
    title = (f"{model.name}: similarity of each layer to {baseline.name} on {described}"
             + (", by training step" if run is not None else ""))
    cka_figure(record, site / rel, title=title)
    info = {"baseline": slug(baseline.name), "baseline_name": baseline.name, "probe": described,
            "layers": layers, "checkpoints": record["checkpoints"], "by_step": run is not None,
            "first": [layers[0], last[layers[0]]], "last": [layers[-1], last[layers[-1]]],
            "lowest": [min(last, key=last.get), min(last.values())]}
    man.put([Panel(model_slug, "", -1, BASELINE_CKA, h, (rel,), info)])
    say(f"CKA to {baseline.name} on {described}: {layers[0]} {last[layers[0]]:.3f}, "
        f"{layers[-1]} {last[layers[-1]]:.3f}")
    return True
