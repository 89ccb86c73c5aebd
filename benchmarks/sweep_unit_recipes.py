"""Search the unit-recipe space for view robustness (issue 16). Prints one row per variant.

    python benchmarks/sweep_unit_recipes.py "robust" "robust:steps=224" "z:zoom=0.8-2.0,view=0.75,steps=300"
    python benchmarks/sweep_unit_recipes.py --units held-out "robust"

A variant is ``NAME[:key=value,...]``: NAME is a recipe in RECIPES (or any label, starting from ``robust``),
and the keys override it:
  steps, lr, decay (Fourier), chroma (Recipe.chroma), param (fourier|maco), opt (adam|nadam),
  sched (cosine|constant),
  zoom=LO-HI (magnification range), view=F (view side as a fraction of the canvas), views=K (views per image
  and step), shift=PX (sub-pixel shift at 128 px), perrow=0|1 (one magnification per image rather than per step),
  logzoom=0|1 (magnification drawn log-uniformly); view=0: the whole image magnified (one magnification per step),
  aa=1 (antialias the views seen at a magnification below 1, as the measure's shrunken views are);
  native=P (with probability P a step sees the whole image at its own size, shifted at sub-pixel offsets);
  ghost=F (Recipe.ghost: dropout on the inner layers), b1, b2 (Adam's betas), floor=F (the cosine schedule ends at
  F x lr), ema=D (the saved image is an exponential moving average, decay D, of the Fourier coefficients over the
  second half of the steps), gain=G (the Fourier image x G before the sigmoid: a steeper squash), c2f=F (coarse
  to fine: frequencies above a cut-off are masked, the cut-off rising linearly from F cycles per pixel to all of
  them over the first half of the steps), cut=F (no frequency above F cycles per pixel, ever);
  oracle=1: optimize on the measure's own views (a ceiling, not a recipe);
  cycle=S1-S2-... (the whole image at these scales in turn, with views=K and shift=PX: random whole-pixel shifts).
Each variant renders the units in one batch at 128 px (seed 0, or each of ``--seeds``) and prints the view-robust ratio
(featviz.optvis.quality, 8 views) and the native one, each ÷ the unit's best over the 1000 photos; ``work`` =
sum over steps of rows x pixels fed to the network ÷ sharp's at 512 steps, and ``x sharp`` = seconds ÷ sharp's
(run ``--reference-steps`` steps, scaled to 512) measured in the same run.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import bench_render as B  # noqa: E402
import featviz  # noqa: E402
from featviz.optvis.param import FourierParam, _frequencies  # noqa: E402
from featviz.optvis.render import RECIPES  # noqa: E402
from featviz.optvis.transforms import RandomZoom  # noqa: E402


def uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


class ZoomViews(torch.nn.Module):
    """``views`` windows per image of ``view`` of the canvas side, each at its own magnification."""

    def __init__(self, zoom, view, views, shift, perrow, logzoom, size, antialias=False, native=0.0):
        super().__init__()
        self.zoom, self.view, self.views, self.shift = zoom, view, views, shift
        self.perrow, self.logzoom, self.size, self.antialias = perrow, logzoom, size, antialias
        self.native = native
        # A native step: the whole image at its own size, shifted by up to ``shift`` px at sub-pixel offsets (the
        # library's whole-image view).
        self.whole = RandomZoom(translate=shift / 128, native=1.0)

    def forward(self, x, generator):
        n, c, h, w = x.shape
        rows, dev = n * self.views, x.device
        if self.native and float(uniform(1, 0, 1, generator, x.device)) < self.native:
            return self.whole(x.repeat(self.views, 1, 1, 1) if self.views > 1 else x, generator)
        lo, hi = self.zoom
        count = rows if self.perrow else self.views
        if self.logzoom:
            m = torch.exp(uniform(count, math.log(lo), math.log(hi), generator, dev))
        else:
            m = uniform(count, lo, hi, generator, dev)
        if not self.perrow:
            m = m.repeat_interleave(n)
        if self.view:
            out = max(8, round(self.size * self.view))
        else:  # the whole image at one magnification per step (as the robust measure sees it)
            m = m[:1].expand(rows).contiguous()
            out = max(8, round(self.size * float(m[0])))
        region = out / (self.size * m)
        room = (1 - region).clamp(min=0)
        jitter = 2 * self.shift / 128  # sub-pixel shift, as a fraction of affine_grid's [-1, 1] side
        tx = uniform(rows, -1, 1, generator, dev) * room + uniform(rows, -jitter, jitter, generator, dev)
        ty = uniform(rows, -1, 1, generator, dev) * room + uniform(rows, -jitter, jitter, generator, dev)
        zero = torch.zeros_like(region)
        theta = torch.stack([torch.stack([region, zero, tx], 1), torch.stack([zero, region, ty], 1)], 1)
        src = x.repeat(self.views, 1, 1, 1) if self.views > 1 else x
        if self.antialias and self.views == 1 and not self.perrow and float(m[0]) < 1:
            # Shrink with a low-pass first, as the measure does; grid_sample alone would alias fine detail.
            shrunk = (max(8, round(h * float(m[0]))), max(8, round(w * float(m[0]))))
            src = F.interpolate(src, size=shrunk, mode="bilinear", align_corners=False, antialias=True)
        grid = F.affine_grid(theta, (rows, c, out, out), align_corners=False)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class ScheduledFourier(FourierParam):
    """The Fourier parameterization with the sweep's experimental knobs (``ema``, ``gain``, ``c2f``); ``tick`` is
    called after every optimizer step with the step number."""

    def __init__(self, batch, size, *, steps, ema=0.0, gain=1.0, c2f=None, cut=None, **kwargs):
        super().__init__(batch, size, **kwargs)
        self.steps, self.ema, self.gain, self.c2f, self.cut = steps, ema, gain, c2f, cut
        self.step, self.average = 0, None
        self.register_buffer("radial", _frequencies(*self.size, self.spectrum.device), persistent=False)

    def tick(self, step: int, _value=None) -> None:
        self.step = step
        if self.ema and step >= self.steps // 2:
            current = self.spectrum.detach()
            if self.average is None:
                self.average = current.clone()
            else:
                self.average.mul_(self.ema).add_(current, alpha=1 - self.ema)

    def raw(self):
        spectrum = self.spectrum
        if self.average is not None and self.step >= self.steps and not torch.is_grad_enabled():
            spectrum = self.average  # the finished image
        synthesis = self.synthesis
        if self.c2f is not None:
            progress = min(1.0, self.step / max(1, self.steps // 2))
            cutoff = self.c2f + (0.75 - self.c2f) * progress  # 0.71 cycles/px is the corner of the spectrum
            synthesis = synthesis * torch.sigmoid((cutoff - self.radial) / 0.01)
        if self.cut is not None:  # no frequency above ``cut`` cycles per pixel, at any step
            synthesis = synthesis * torch.sigmoid((self.cut - self.radial) / 0.01)
        image = torch.fft.irfft2(torch.view_as_complex(spectrum.contiguous()) * synthesis, s=self.size,
                                 norm="forward")
        return image * self.gain


class MeasureViews(torch.nn.Module):
    """A ceiling, never a recipe: the robust measure's own views, one of its scales per step in turn, with both of
    its shifts. An image optimized on these has seen what it is judged by, so it shows how far any transform set
    could get in the same steps, not a fair result."""

    def __init__(self):
        super().__init__()
        self.step = 0

    def forward(self, x, generator=None):
        from featviz.optvis.quality import VIEW_SCALES, VIEW_SHIFTS, resize, shift

        seen = resize(x, VIEW_SCALES[self.step % len(VIEW_SCALES)])
        self.step += 1
        return torch.cat([shift(seen, dx, dy) for dx, dy in VIEW_SHIFTS])


class CycledViews(torch.nn.Module):
    """Stratified magnifications: the whole image at ``scales`` in turn, one per step, each view shifted by a
    random whole number of pixels in [0, ``shift``] (a fair relative of ``MeasureViews``: other scales, random
    shifts)."""

    def __init__(self, scales, views, shift):
        super().__init__()
        self.scales, self.views, self.shift, self.step = scales, views, shift, 0

    def forward(self, x, generator=None):
        from featviz.optvis.quality import resize, shift

        seen = resize(x, self.scales[self.step % len(self.scales)])
        self.step += 1
        offsets = torch.randint(0, self.shift + 1, (self.views, 2), generator=generator, device=x.device).tolist()
        return torch.cat([shift(seen, dx, dy) for dx, dy in offsets])


def parse_variant(text: str):
    name, _, rest = text.partition(":")
    base = RECIPES[name] if name in RECIPES else RECIPES["robust"]
    opts = dict(kv.split("=") for kv in rest.split(",") if kv)
    recipe = replace(base, name=text)
    for key, field, kind in [("steps", "steps", int), ("lr", "lr", float), ("decay", "decay", float),
                             ("param", "param", str), ("opt", "optimizer", str), ("sched", "lr_schedule", str),
                             ("ghost", "ghost", float), ("chroma", "chroma", float)]:
        if key in opts:
            recipe = replace(recipe, **{field: kind(opts.pop(key))})
    if {"b1", "b2"} & set(opts):
        betas = (float(opts.pop("b1", 0.9)), float(opts.pop("b2", 0.999)))
        recipe = replace(recipe, optimizer=lambda params, lr: torch.optim.Adam(params, lr=lr, betas=betas))
    if "floor" in opts:
        floor = float(opts.pop("floor"))
        recipe = replace(recipe, lr_schedule=lambda optimizer, steps: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(steps - 1, 1), eta_min=floor * optimizer.param_groups[0]["lr"]))
    if {"ema", "gain", "c2f", "cut"} & set(opts):
        knobs = dict(steps=recipe.steps, ema=float(opts.pop("ema", 0)), gain=float(opts.pop("gain", 1)),
                     c2f=float(opts.pop("c2f")) if "c2f" in opts else None,
                     cut=float(opts.pop("cut")) if "cut" in opts else None)
        recipe = replace(recipe, param=lambda batch, size, **kwargs: ScheduledFourier(
            batch, size, decay=recipe.decay, **knobs, **kwargs))
    if opts.pop("oracle", "0") == "1":
        return recipe, "oracle"
    if "cycle" in opts:
        scales = tuple(float(v) for v in opts.pop("cycle").split("-"))
        cycled = CycledViews(scales, int(opts.pop("views", 1)), int(opts.pop("shift", 4)))
        if opts:
            raise SystemExit(f"unknown keys {sorted(opts)} in {text}")
        return recipe, cycled
    zoom_keys = {"zoom", "view", "views", "shift", "perrow", "logzoom", "aa", "native"}
    transform = None
    if zoom_keys & set(opts):
        lo, hi = (float(v) for v in opts.pop("zoom", "0.75-1.75").split("-"))
        transform = dict(zoom=(lo, hi), view=float(opts.pop("view", 0.75)), views=int(opts.pop("views", 1)),
                         shift=float(opts.pop("shift", 4)), perrow=bool(int(opts.pop("perrow", 1))),
                         logzoom=bool(int(opts.pop("logzoom", 0))), antialias=bool(int(opts.pop("aa", 0))),
                         native=float(opts.pop("native", 0)))
        if transform["antialias"] and (transform["perrow"] or transform["views"] > 1):
            raise SystemExit(f"aa=1 needs one magnification per step: add perrow=0 and views=1 to {text}")
    if opts:
        raise SystemExit(f"unknown keys {sorted(opts)} in {text}")
    return recipe, transform


def run_variant(model, units, best, recipe, transform, size=128, seed=0):
    from featviz.optvis.axes import build_transforms

    if transform == "oracle":
        inner = MeasureViews()
    elif isinstance(transform, CycledViews):
        inner = transform
    elif transform:
        inner = ZoomViews(size=size, **transform)
    else:
        inner = build_transforms(recipe.transforms, size, model.device)[0]
    counted = B.PixelCounter(inner)
    made = {}
    if callable(recipe.param) and not isinstance(recipe.param, str):
        factory = recipe.param
        recipe = replace(recipe, param=lambda *args, **kwargs: made.setdefault("param", factory(*args, **kwargs)))
    t = time.perf_counter()
    results = featviz.render_units(model, units, batch_size=len(units), recipe=replace(recipe, transforms=counted),
                                   size=size, seed=seed, callback=lambda step, value: made["param"].tick(step)
                                   if "param" in made else None)
    seconds = (time.perf_counter() - t) / len(units)
    images = torch.cat([r.images for r in results])
    ratios = B.unit_ratios(model, images, units, best)
    return ratios, seconds, counted.pixels / len(units), images


def safe(text: str) -> str:
    return text.replace(":", "_").replace(",", "_").replace("=", "").replace(" (seed ", "_seed").replace(")", "")


def per_scale(model, images, units, best) -> str:
    """Median ratio at each scale of the robust measure (mean of its two shifts)."""
    from featviz.optvis.quality import VIEW_SCALES, view_robust_activation

    bests = torch.tensor([float(best[layer][ch]) for layer, ch in units])
    table = view_robust_activation(model, images, featviz.optvis.objectives.batched_channels(units), per_view=True)
    table = (table / bests[:, None]).reshape(len(units), len(VIEW_SCALES), -1).mean(2)
    return "  ".join(f"x{s}: {float(table[:, i].median()):.2f}" for i, s in enumerate(VIEW_SCALES))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--units", default="benchmark", help="benchmark | held-out | LAYER:CH,...")
    parser.add_argument("--reference-steps", type=int, default=64)
    parser.add_argument("--out", default=str(B.CACHE / "sweep"))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: each variant is rendered from each "
                        "(several show how far a change of the random path alone moves the figures)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = featviz.load("efficientnet_lite0")
    units = B.unit_list(model, args.units)
    best = B.best_photo_activations(model, sorted({layer for layer, _ in units}))
    sharp = replace(RECIPES["sharp"], steps=args.reference_steps)
    _, sharp_s, sharp_px, _ = run_variant(model, units, best, sharp, None)
    sharp_s, sharp_px = sharp_s * 512 / args.reference_steps, sharp_px * 512 / args.reference_steps
    print(f"sharp-512 reference: {sharp_s:.2f} s/unit (from {args.reference_steps} steps), units {args.units}",
          flush=True)
    for text, seed in [(text, int(seed)) for text in args.variants for seed in args.seeds.split(",")]:
        recipe, transform = parse_variant(text)
        ratios, seconds, pixels, images = run_variant(model, units, best, recipe, transform, seed=seed)
        r = ratios["robust"]
        if seed:
            text = f"{text} (seed {seed})"
        print(f"{text:60s} robust {statistics.median(r):5.2f} ({min(r):4.2f}) native "
              f"{statistics.median(ratios['native']):5.2f}  work {pixels / sharp_px:4.2f}  "
              f"time {seconds / sharp_s:4.2f} ({seconds:5.1f} s/unit)", flush=True)
        print("    " + " ".join(f"{v:.1f}" for v in r), flush=True)
        print("    per scale: " + per_scale(model, images, units, best), flush=True)
        torch.save(images, out / f"{args.units}_{safe(text)}.pt")
        sheet = featviz.imageio.grid([featviz.imageio.to_pil(i) for i in images], columns=6)
        sheet.save(out / f"{args.units}_{safe(text)}.png")


if __name__ == "__main__":
    main()
