"""Report: a unit's optimized visualization vs its dataset examples, with an ablation.

Dataset examples show where a unit fires; they do not show what in them makes it
fire. This report puts the unit's visualization beside its top dataset examples
(by mean activation, from an examples store) and tests cause on each example:

- attribute the unit (its mean activation over positions) to the pixels;
- grey out (0.5) the square of area ``mask_frac`` of the image that holds the
  most attribution (the square centred on the peak of the attribution map
  summed over square windows of that size);
- grey out random squares of the same size (seeded; not overlapping the
  attributed square where the image leaves room, else overlapping it by at most
  half a square: a conservative comparison);
- measure the unit's mean activation: original, attribution-masked, and the
  mean over the random squares.

If the attributed region is what the unit responds to, masking it lowers the
activation much more than masking a random region of the same size.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FeatvizError
from ..imageio import save_png, to_pil
from ..models import load
from ..models.organism import ModelOrganism
from ._common import environment, md_table, out_folder, write_json, write_text
from ..figures import new_figure, save_figure
from .site import SiteEntry

GREY = 0.5


def load_example(model: ModelOrganism, example, size: int) -> torch.Tensor:
    """A stored example as the network saw it: (1, 3, size, size) in [0, 1].

    The store keeps the preprocessed image (``size`` x ``size``), so it is used as
    is; an image of another size goes through ``model.preprocess``.
    """
    from PIL import Image

    with Image.open(example.image_file) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            return model.preprocess(img, size)[None]
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()[None]


@torch.no_grad()
def unit_activation(model: ModelOrganism, images: torch.Tensor, layer: str, unit: int) -> torch.Tensor:
    """Mean activation of channel ``unit`` of ``layer`` over positions, per image (CPU tensor)."""
    a = model.activations(images.to(model.device), [layer])[layer]
    if a.dim() == 2:
        return a[:, unit].float().cpu()
    return a[:, unit].float().mean((1, 2)).cpu()


def mask_square(images: torch.Tensor, box: tuple[int, int, int, int], value: float = GREY) -> torch.Tensor:
    """Copy of ``images`` with the box (top, left, bottom, right; end exclusive) set to ``value``."""
    t, l, b, r = box
    out = images.clone()
    out[..., t:b, l:r] = value
    return out


def attributed_box(amap: torch.Tensor, side: int) -> tuple[int, int, int, int]:
    """The side x side square holding the most attribution (ties: first in row order)."""
    m = amap.float()[None, None]
    sums = F.avg_pool2d(m, side, stride=1)[0, 0]  # (H - side + 1, W - side + 1)
    idx = int(torch.argmax(sums))
    t, l = divmod(idx, sums.shape[1])
    return (t, l, t + side, l + side)


def overlap(a, b) -> int:
    h = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return h * w


def random_boxes(size: int, side: int, avoid, n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``n`` distinct random squares not overlapping ``avoid``; if the image leaves no room
    for that, squares that overlap it by at most half their area."""
    positions = [(t, l) for t in range(size - side + 1) for l in range(size - side + 1)]
    boxes = [(t, l, t + side, l + side) for t, l in positions]
    ov = np.array([overlap(b, avoid) for b in boxes])
    allowed = np.flatnonzero(ov == 0)
    if len(allowed) < n:  # no room beside it: overlap it by at most half a square
        allowed = np.flatnonzero(ov <= side * side // 2)
    if len(allowed) < n:
        allowed = np.argsort(ov, kind="stable")[:n]
    pick = rng.choice(allowed, size=min(n, len(allowed)), replace=False)
    return [boxes[int(i)] for i in sorted(pick)]


def causes_report(model, unit: tuple[str, int], store, out_dir="report-causes", *, k: int = 6,
                  mask_frac: float = 0.25, seed: int = 0, steps: int = 64, size: int = 128,
                  method: str = "saliency", n_random: int = 3, log=None) -> dict:
    """Visualization of ``unit`` (a (layer, channel) pair), its top-``k`` dataset examples from ``store`` (by mean
    activation), and the masking ablation (see the module docstring). Writes ``causes.png``,
    ``causes_plot.png``, ``report.md`` and ``results.json`` under ``out_dir``; returns the results."""
    from ..attribution import attribute
    from ..examples import ExampleStore, open_store
    from ..optvis.render import finished, render

    say = log or (lambda msg: None)
    layer, unit = unit
    model = load(model)
    if not isinstance(store, ExampleStore):
        if not ExampleStore.exists(store):
            raise FeatvizError(f"no examples store at {store}: make one with `featviz examples {model.name} "
                               f"--layers {layer} --out {store}`")
        store = open_store(store)
    st = store.settings
    if st.get("model") != model.name:
        raise FeatvizError(f"the store {store.path} was made with {st.get('model')}, not {model.name}")
    if layer not in store.layers():
        raise FeatvizError(f"the store {store.path} has no layer '{layer}' (it has {', '.join(store.layers())})")
    unit = model.check_channel(layer, int(unit))
    if not 0 < mask_frac < 1:
        raise FeatvizError(f"mask fraction must be between 0 and 1, got {mask_frac}")
    if k < 1 or n_random < 1:
        raise FeatvizError("k and the number of random squares must be at least 1")
    examples = store.top(layer, unit, k=k)
    if not examples:
        raise FeatvizError(f"the store has no examples of {layer}:{unit}")
    img_size = int(st.get("size") or model.input_size)
    side = max(1, round(img_size * math.sqrt(mask_frac)))
    out = out_folder(out_dir)
    t_start = time.perf_counter()

    say(f"rendering {layer}:{unit}")
    vis = finished(render(model, f"{layer}:{unit}", size=size, steps=steps, seed=seed, recipe="default"))
    save_png(vis.pil(), out / "visualization.png", vis.settings)
    vis_act = float(unit_activation(model, torch.round(vis.images[:1] * 255) / 255, layer, unit)[0])

    rows, panels = [], []
    for ex in examples:
        say(f"example {ex.rank}: {ex.path}")
        x = load_example(model, ex, img_size)
        attr = attribute(model, x[0], f"{layer}:{unit}", method=method, seed=seed)
        box = attributed_box(attr.map, side)
        rng = np.random.default_rng([seed, ex.rank])
        rboxes = random_boxes(img_size, side, box, n_random, rng)
        batch = torch.cat([x, mask_square(x, box)] + [mask_square(x, b) for b in rboxes])
        acts = unit_activation(model, batch, layer, unit)
        orig, masked, rand = float(acts[0]), float(acts[1]), [float(v) for v in acts[2:]]
        rand_mean = float(np.mean(rand))
        peak = divmod(int(torch.argmax(attr.map)), attr.map.shape[1])
        rows.append({
            "rank": ex.rank, "path": ex.path, "image_file": str(ex.image_file), "store_value": ex.value,
            "original": orig, "attribution_masked": masked, "random_masked": rand_mean, "random_each": rand,
            "drop_attribution": orig - masked, "drop_random": orig - rand_mean,
            "attribution_box": list(box), "attribution_peak": list(peak), "random_boxes": [list(b) for b in rboxes],
            "random_overlap_px": [overlap(b, box) for b in rboxes],
            "attribution_share_in_box": float(attr.map[box[0]:box[2], box[1]:box[3]].sum() / attr.map.sum().clamp_min(1e-12)),
        })
        panels.append((x[0], attr, batch[1], batch[2], box, rboxes[0]))

    summary = _summary(rows)
    results = {
        "report": "causes",
        "settings": {"model": model.name, "layer": layer, "unit": unit, "store": str(store.path),
                     "store_images": store.num_images, "image_size": img_size, "k": k, "mask_frac": mask_frac,
                     "mask_side_px": side, "mask_value": GREY, "attribution": method, "random_squares": n_random,
                     "seed": seed, "vis_size": size, "vis_steps": steps, "vis_recipe": "default", **environment()},
        "visualization": {"image": "visualization.png", "activation": vis_act,
                          "final_objective": vis.settings.get("final_objective")},
        "rows": rows,
        "summary": summary,
    }
    _sheet(vis.pil(), panels, rows, results, out / "causes.png")
    _plot(rows, results, out / "causes_plot.png")
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out / "results.json", results)
    write_text(out / "report.md", _markdown(results))
    return results


def _summary(rows: list[dict]) -> dict:
    da = np.array([r["drop_attribution"] for r in rows])
    dr = np.array([r["drop_random"] for r in rows])
    orig = np.array([r["original"] for r in rows])
    rel = lambda d: float(np.mean(d / np.where(np.abs(orig) > 1e-12, np.abs(orig), 1e-12)))  # noqa: E731
    return {"mean_original": float(orig.mean()),
            "mean_attribution_masked": float(np.mean([r["attribution_masked"] for r in rows])),
            "mean_random_masked": float(np.mean([r["random_masked"] for r in rows])),
            "mean_drop_attribution": float(da.mean()), "mean_drop_random": float(dr.mean()),
            "mean_relative_drop_attribution": rel(da), "mean_relative_drop_random": rel(dr),
            "attribution_drop_larger": int((da > dr).sum()), "n": len(rows)}


def _outline(img, box, colour):
    from PIL import ImageDraw

    img = img.copy()
    t, l, b, r = box
    ImageDraw.Draw(img).rectangle([l, t, r - 1, b - 1], outline=colour, width=2)
    return img


def _sheet(vis, panels, rows, results, path: Path, tile: int = 128) -> None:
    from PIL import Image, ImageDraw

    from ..attribution.display import font

    f = font(11)
    pad, cap, head = 6, 30, 40
    ncol = 4
    vis_side = 2 * tile + cap
    left = pad + vis_side + 2 * pad
    width = left + ncol * (tile + pad)
    height = head + len(panels) * (tile + cap + pad) + pad
    sheet = Image.new("RGB", (width, max(height, head + vis_side + 40)), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    s = results["settings"]
    d.text((pad, 4), f"{s['model']} {s['layer']}:{s['unit']}  top {len(rows)} examples by mean activation; "
                     f"masked square = {s['mask_frac']:.0%} of the image, grey", fill=(0, 0, 0), font=f)
    d.text((pad, 20), f"red: {s['attribution']} attribution square   blue: random square (1 of {s['random_squares']})",
           fill=(0, 0, 0), font=f)
    sheet.paste(vis.resize((vis_side, vis_side)), (pad, head))
    d.text((pad, head + vis_side + 2), f"optimized visualization ({s['vis_steps']} steps)", fill=(0, 0, 0), font=f)
    d.text((pad, head + vis_side + 16), f"its activation {results['visualization']['activation']:.2f}",
           fill=(0, 0, 0), font=f)
    for i, ((x, attr, xm, xr, box, rbox), row) in enumerate(zip(panels, rows)):
        y = head + i * (tile + cap + pad)
        full = x.shape[-1]
        tiles = [to_pil(x), _outline(attr.overlay(alpha=0.6), box, (255, 0, 0)),
                 _outline(to_pil(xm), box, (255, 0, 0)), _outline(to_pil(xr), rbox, (0, 90, 255))]
        caps = [(f"#{row['rank']} {Path(row['path']).stem}"[:22], f"act {row['original']:.2f}"),
                ("attribution", f"share in box {row['attribution_share_in_box']:.0%}"),
                ("attribution-masked", f"act {row['attribution_masked']:.2f}"),
                ("random-masked", f"act {row['random_masked']:.2f} (mean)")]
        for j, (im, (c1, c2)) in enumerate(zip(tiles, caps)):
            xx = left + j * (tile + pad)
            sheet.paste(im.resize((tile, tile)) if full != tile else im, (xx, y))
            d.text((xx, y + tile + 1), c1, fill=(0, 0, 0), font=f)
            d.text((xx, y + tile + 14), c2, fill=(0, 0, 0), font=f)
    save_png(sheet, path, {"kind": "report-causes-sheet", **{k: v for k, v in s.items() if k != "store"}})


def _plot(rows, results, path: Path) -> None:
    s = results["settings"]
    fig = new_figure((12, 4))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(rows))
    w = 0.27
    ax = axes[0]
    ax.bar(x - w, [r["original"] for r in rows], w, label="original", color="#555555")
    ax.bar(x, [r["attribution_masked"] for r in rows], w, label="attribution square masked", color="#d62728")
    err = [np.std(r["random_each"]) for r in rows]
    ax.bar(x + w, [r["random_masked"] for r in rows], w, yerr=err, capsize=3,
           label=f"random square masked (mean of {s['random_squares']})", color="#1f77b4")
    ax.set_xticks(x)
    ax.set_xticklabels([f"#{r['rank']}\n{Path(r['path']).stem[:12]}" for r in rows], fontsize=8)
    ax.set_ylabel(f"mean activation of {s['layer']}:{s['unit']}")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("unit activation on its top dataset examples", fontsize=10)
    ax = axes[1]
    summ = results["summary"]
    ax.bar([0, 1], [summ["mean_relative_drop_attribution"], summ["mean_relative_drop_random"]],
           color=["#d62728", "#1f77b4"])
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["attribution\nsquare", "random\nsquare"], fontsize=9)
    ax.set_ylabel("mean relative drop of activation")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"attribution drop larger in {summ['attribution_drop_larger']}/{summ['n']}", fontsize=10)
    fig.suptitle(f"{s['model']} {s['layer']}:{s['unit']}: masking {s['mask_frac']:.0%} of each image "
                 f"({s['attribution']} vs random)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _markdown(results: dict) -> str:
    s = results["settings"]
    rows = results["rows"]
    table = md_table(["rank", "photo", "store value", "original", "attribution-masked", "random-masked (mean)",
                      "drop (attribution)", "drop (random)", "attribution share in square"],
                     [[r["rank"], Path(r["path"]).name, r["store_value"], r["original"], r["attribution_masked"],
                       r["random_masked"], r["drop_attribution"], r["drop_random"],
                       f"{r['attribution_share_in_box']:.0%}"] for r in rows])
    summ = results["summary"]
    return f"""# Optimization vs dataset examples: {s['model']} {s['layer']}:{s['unit']}

The unit's optimized visualization, its top {s['k']} dataset examples by mean activation, and an ablation
that tests cause: on each example, grey out ({s['mask_value']}) the square of {s['mask_frac']:.0%} of the image
({s['mask_side_px']} px side) that holds the most {s['attribution']} attribution of the unit, vs
{s['random_squares']} random squares of the same size (seeded; not overlapping the attributed square where the image
leaves room, else overlapping it by at most half a square, which only makes the comparison harder for attribution;
see `random_overlap_px` in results.json), and measure the unit's mean activation over positions.

## Settings

| setting | value |
|---|---|
| model, unit | {s['model']}, {s['layer']}:{s['unit']} (mean activation over positions) |
| store | `{s['store']}` ({s['store_images']} images at {s['image_size']} px; examples read from its preprocessed image files) |
| examples | top {s['k']} by mean activation |
| attribution | `{s['attribution']}` of the unit's mean activation (featviz.attribution.attribute) |
| mask | square of {s['mask_frac']:.0%} of the area ({s['mask_side_px']} px), value {s['mask_value']}; {s['random_squares']} random squares, seed {s['seed']} |
| visualization | recipe `default`, {s['vis_size']} px, {s['vis_steps']} steps, seed {s['seed']}; its activation {results['visualization']['activation']:.3f} |
| featviz, torch, threads | {s['featviz']}, {s['torch']}, {s['threads']} |
| total time | {results['seconds']} s |

"store value" is the activation the examples pass recorded (on the image before JPEG compression);
"original" is recomputed from the stored JPEG, so the two differ slightly.

![sheet](causes.png)

![activation drops](causes_plot.png)

{table}

Mean activation: original {summ['mean_original']:.3f}, attribution-masked {summ['mean_attribution_masked']:.3f},
random-masked {summ['mean_random_masked']:.3f}. Mean relative drop: attribution square
{summ['mean_relative_drop_attribution']:.1%}, random square {summ['mean_relative_drop_random']:.1%}. The
attribution square lowered the activation more than the random squares on {summ['attribution_drop_larger']} of
{summ['n']} examples.

Command: `featviz report causes {s['model']} {s['layer']}:{s['unit']} --store {s['store']} --k {s['k']} \
--steps {s['vis_steps']} --mask-frac {s['mask_frac']} --method {s['attribution']} --seed {s['seed']}`
"""


def site_entry(results: dict) -> SiteEntry:
    """One page per unit on a microscope site: ``causes-<layer>-<unit>``."""
    s = results["settings"]
    return SiteEntry(f"causes-{s['layer']}-{s['unit']}")
