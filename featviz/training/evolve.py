"""Watch features change during training: units rendered at every checkpoint, their top examples at the
start and the end, and how similar each main layer stays to the starting network (linear CKA).

    from featviz.training.evolve import EvolveSettings, evolve
    evolve("runs/shapes", [("blocks.8", 12), ("head", 40)], "evolve-out", EvolveSettings(steps=64))

Every checkpoint is rendered with the same seed, size, steps and recipe, so a
change between frames is a change of the network, not of the optimization.
The probe set is the run's held-out images (``RUN/heldout``), for the examples
and for CKA alike. A run trained ``--from-scratch`` works the same: its start
is the random network, so its frames show features emerging from noise.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import FeatvizError
from ..imageio import atomic_write, grid, output_folder, save_gif, save_png, to_tensor
from ..names import slug
from .cka import label_cka_axes, layer_grams, linear_cka_from_grams
from .finetune import checkpoints, load_checkpoint, read_run


@dataclass(frozen=True)
class EvolveSettings:
    """Render settings shared by every checkpoint, and the number of examples per unit."""

    size: int = 96
    steps: int = 64
    seed: int = 0
    recipe: str = "sharp"
    k: int = 6
    gif_ms: int = 400

    def check(self) -> None:
        if self.size < 16:
            raise FeatvizError(f"render size must be at least 16 px, got {self.size}")
        for name in ("steps", "k"):
            if getattr(self, name) < 1:
                raise FeatvizError(f"{name} must be at least 1, got {getattr(self, name)}")


def parse_units(text: str) -> list[tuple[str, int]]:
    """'blocks.8:12,head:40' -> [('blocks.8', 12), ('head', 40)]; one clear line when malformed."""
    units = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        layer, sep, index = part.rpartition(":")
        if not sep or not layer or not index.strip().isdigit():
            raise FeatvizError(f"expected LAYER:UNIT such as blocks.8:12, got {part!r}")
        units.append((layer, int(index)))
    if not units:
        raise FeatvizError("--units: no unit given (e.g. blocks.8:12,head:40)")
    return list(dict.fromkeys(units))


def probe_images(run_dir: Path) -> tuple[torch.Tensor, list[str]]:
    """The run's held-out images (as written, in [0, 1]) and their class folders."""
    from ..examples import list_images, read_photo

    folder = run_dir / "heldout"
    files = list_images(folder) if folder.is_dir() else []
    if not files:
        raise FeatvizError(f"{run_dir} has no held-out images (heldout/); was it made by featviz finetune?")
    images = [to_tensor(read_photo(folder / rel)) for rel, _size in files]
    return torch.stack(images), [rel.split("/")[0] for rel, _size in files]


def evolve(run, units: Sequence[tuple[str, int]], out, settings: EvolveSettings = EvolveSettings(), *,
           progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Render ``units`` at every checkpoint of ``run`` (start first), write per unit a filmstrip
    PNG, a GIF and a sheet of its top held-out examples at the start and the end; compute linear
    CKA of every main layer to the starting network at every checkpoint and plot it. Writes
    ``evolve.json`` with every number; returns it."""
    from ..optvis.render import finished, render_units

    say = log or (lambda msg: None)
    settings.check()
    run_dir = Path(run)
    info = read_run(run_dir)
    points = checkpoints(run_dir)
    if not points or points[0]["step"] != 0:
        raise FeatvizError(f"{run_dir} has no starting checkpoint (checkpoints/start.pt)")
    out = output_folder(out)  # one line when it cannot be made (a file in the way, no permission)
    images, _classes = probe_images(run_dir)
    frames: dict[tuple[str, int], list] = {u: [] for u in units}
    own_values: dict[tuple[str, int], list[float]] = {u: [] for u in units}
    cka: list[dict] = []
    start_grams = None
    layers: list[str] = []
    iterator = points
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(points, desc="checkpoints", unit="checkpoint")
    for point in iterator:
        organism = load_checkpoint(run_dir, point["file"])
        if not layers:
            layers = [i.name for i in organism.layers()]
            for layer, unit in units:
                organism.check_channel(layer, unit)
        results = finished(render_units(organism, list(units), batch_size=len(units), size=settings.size,
                                        steps=settings.steps, recipe=settings.recipe, seed=settings.seed))
        for unit, res in zip(units, results):
            frames[unit].append(res.pil())
        # each unit's own figure (the render's objective is the batch's total): its mean activation on its frame
        pictures = torch.stack([to_tensor(frames[unit][-1]) for unit in units]).to(organism.device)
        with torch.no_grad():
            acts = organism.activations(pictures, sorted({layer for layer, _ in units}))
        for i, (layer, unit) in enumerate(units):
            own_values[(layer, unit)].append(round(float(acts[layer][i, unit].float().mean()), 4))
        grams = layer_grams(organism, images, layers)
        if start_grams is None:
            start_grams = grams
        cka.append({"step": point["step"], "epoch": point["epoch"], "file": point["file"],
                    "cka": {name: linear_cka_from_grams(start_grams[name], grams[name]) for name in layers}})
        say(f"step {point['step']}: rendered {len(units)} units; CKA to the start "
            f"{layers[0]} {cka[-1]['cka'][layers[0]]:.3f}, {layers[-1]} {cka[-1]['cka'][layers[-1]]:.3f}")

    steps = [p["step"] for p in points]
    record = {"run": str(run_dir), "base": info["base"], "from_scratch": info["settings"]["from_scratch"],
              "settings": asdict(settings), "units": [], "checkpoints": cka, "layers": layers,
              "probe_images": int(images.shape[0])}
    for unit in units:
        unit_name = slug(f"{unit[0]}_{unit[1]}")
        meta = {"kind": "evolve", "run": str(run_dir), "unit": f"{unit[0]}:{unit[1]}", "steps_of_training": steps,
                **asdict(settings)}
        # Captions: the training step alone (grid cuts a caption to the tile width; "step" fits no 32 px tile).
        strip = grid(frames[unit], columns=len(frames[unit]), labels=[str(s) for s in steps])
        save_png(strip, out / f"filmstrip_{unit_name}.png", meta)
        save_gif(frames[unit], out / f"evolve_{unit_name}.gif", settings.gif_ms, meta)
        record["units"].append({"unit": f"{unit[0]}:{unit[1]}", "filmstrip": f"filmstrip_{unit_name}.png",
                                "gif": f"evolve_{unit_name}.gif", "activation": own_values[unit]})
    _cross_activations(run_dir, points[0]["file"], points[-1]["file"], frames, record)
    _examples(run_dir, points[0]["file"], points[-1]["file"], units, out, settings, images.shape[-1], record, say)
    cka_figure(record, out / "cka_by_depth.png")
    last = cka[-1]["cka"]
    record["summary"] = [f"CKA to the start after {steps[-1]} steps: {layers[0]} {last[layers[0]]:.3f}, "
                         f"{layers[-1]} {last[layers[-1]]:.3f} (lowest: "
                         f"{min(last, key=last.get)} {min(last.values()):.3f})"]
    record["summary"] += [f"{u['unit']}: {u['filmstrip']}, {u['gif']}, {u['examples']}; {u['cross']['reading']}"
                          for u in record["units"]]
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out / "evolve.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return record


@torch.no_grad()
def _cross_activations(run_dir: Path, first: str, last: str, frames: dict, record: dict) -> None:
    """Each unit's mean activation in the start and the end network on the first and the last frame.

    With the same seed, a small change of the weights can still send the optimization elsewhere, so two
    frames that look different may show the same feature. The cross figures tell: if the start network
    likes the end frame about as much as its own, the feature is unchanged and the difference is the
    optimizer's; if it likes it much less, the feature changed. A unit the end network cannot raise
    (about 0 on its own frame) is off, and its frames show nothing."""
    networks = {"start": load_checkpoint(run_dir, first), "end": load_checkpoint(run_dir, last)}
    for (layer, unit), entry in zip(frames, record["units"]):
        x = torch.stack([to_tensor(frames[(layer, unit)][0]), to_tensor(frames[(layer, unit)][-1])])
        values = {}
        for name, organism in networks.items():
            act = organism.activations(x.to(organism.device), [layer])[layer][:, unit].float()
            values[name] = [round(float(a.mean()), 4) for a in act]
        cross = {"start_on_start": values["start"][0], "start_on_end": values["start"][1],
                 "end_on_start": values["end"][0], "end_on_end": values["end"][1]}
        reading = read_cross(entry["activation"], cross)
        entry["cross"] = cross | {"reading": reading}


def read_cross(own: list[float], cross: dict[str, float]) -> str:
    """One line on what a unit's frames can show, from its activation on its own frame at every checkpoint
    (``own``) and the start/end networks' activations on the first/last frames (``cross``)."""
    own_start, own_end = cross["start_on_start"], cross["end_on_end"]
    if len(own) > 1 and own_end > 1e-3 and max(own) - min(own) <= 1e-3 * max(1.0, abs(max(own))):
        return (f"reaches the same activation {own_end:.3g} in every checkpoint: a ceiling (such as ReLU6), "
                "where every image that saturates it is as good, so the frames cannot show a change; "
                "render the layer before its activation (e.g. head.conv instead of head)")
    if own_end <= 1e-3:
        return "off in the final network (it cannot be raised): its last frames show nothing"
    if own_start <= 1e-3:
        return "off in the starting network: its first frames show nothing"
    kept = cross["start_on_end"] / own_start
    back = cross["end_on_start"] / own_end
    verdict = ("the renders are not converged (a network rates the other's frame above its own): "
               "give more --steps" if max(kept, back) > 1.05 else
               "the feature changed" if min(kept, back) < 0.8 else
               "about the same feature (differences between frames are mostly the optimizer's)")
    return (f"the start network rates the end frame at {kept:.0%} of its own, the end network the "
            f"start frame at {back:.0%} of its own: {verdict}")


def _examples(run_dir: Path, first: str, last: str, units, out: Path, settings: EvolveSettings, size: int,
              record: dict, say) -> None:
    """Top-k held-out examples (by mean activation) of each unit in the start and the end network:
    one sheet per unit, start above end."""
    from ..examples import collect

    layers = sorted({layer for layer, _unit in units})
    stores = {}
    for which, checkpoint in (("start", first), ("end", last)):
        organism = load_checkpoint(run_dir, checkpoint)
        stores[which] = collect(organism, run_dir / "heldout", layers, k=settings.k, bottom=0,
                                store=out / f"examples-{which}", size=size, overwrite=True)
    for unit, entry in zip(units, record["units"]):
        rows, labels = [], []
        for which in ("start", "end"):
            found = stores[which].top(unit[0], unit[1], k=settings.k)
            entry[f"examples_{which}"] = [{"image": e.path, "value": e.value} for e in found]
            rows += [e.open() for e in found] + [None] * (settings.k - len(found))
            labels += [f"{which} {e.value:.2f}" for e in found] + [""] * (settings.k - len(found))
        blank = next(im for im in rows if im is not None).copy()
        blank.paste((255, 255, 255), (0, 0, blank.width, blank.height))
        sheet = grid([im if im is not None else blank for im in rows], columns=settings.k, labels=labels)
        name = f"examples_{slug(f'{unit[0]}_{unit[1]}')}.png"
        save_png(sheet, out / name, {"kind": "evolve-examples", "unit": entry["unit"], "rows": ["start", "end"]})
        entry["examples"] = name
    for store in stores.values():
        store.close()
    say(f"top {settings.k} held-out examples at the start and the end: examples_*.png")


def cka_figure(record: dict, path: Path, title: str | None = None) -> Path:
    """CKA to the starting network by depth, one line per checkpoint, coloured by training step
    (``record``: ``layers``, ``checkpoints`` with ``step`` and ``cka`` per layer, ``probe_images``,
    and for the default title ``base`` and ``from_scratch``)."""
    from ..figures import new_figure, save_figure

    layers = record["layers"]
    points = record["checkpoints"]
    last_step = max(p["step"] for p in points) or 1
    fig = new_figure((max(6.5, 0.42 * len(layers) + 2.5), 4.2))  # first: one line if matplotlib is missing
    ax = fig.subplots()
    from matplotlib import cm, colormaps, colors

    norm = colors.Normalize(vmin=0, vmax=last_step)
    cmap = colormaps["viridis"]
    x = np.arange(len(layers))
    for point in points:
        ax.plot(x, [point["cka"][name] for name in layers], marker="o", ms=3, lw=1.4,
                color=cmap(norm(point["step"])))
    if len(points) > 1:  # one network alone has no training time to colour by
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="training step of the checkpoint")
    label_cka_axes(ax, layers)
    if title is None:
        kind = "from scratch" if record.get("from_scratch") else "from ImageNet weights"
        title = (f"{record['base']} fine-tuned {kind}: similarity to the start on {record['probe_images']} "
                 "held-out images")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
