"""``featviz render``, ``featviz render-layer`` and ``featviz dream``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import FeatvizError
from ..imageio import grid, image_format, save_image, writes_to_stdout
from ..names import slug
from ..optvis import RECIPES, render, render_units
from ..optvis.render import auto_recipe
from ..optvis.objectives import parse
from .common import (OutputPath, check_outputs, device_option, echo_for, load_model, model_argument,
                     parse_indices)


def recipe_options(f):
    """Options shared by every rendering command (they override the recipe)."""
    options = [
        click.option("--recipe", type=click.Choice(["auto", *RECIPES]), default="auto", show_default=True,
                     help="preset of steps, lr, parameterization and transforms; auto: 'classes' (multi-crop) "
                          "for classes, 'robust' (random zoom) for units"),
        click.option("--steps", type=click.IntRange(1, 100_000), default=None, help="optimization steps"),
        click.option("--lr", type=float, default=None, help="learning rate"),
        click.option("--param", type=click.Choice(["fourier", "pixel", "maco"]), default=None,
                     help="image parameterization"),
        click.option("--transforms", type=click.Choice(["multicrop", "classcrops", "lucid", "none"]), default=None,
                     help="robustness transforms"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--size", type=click.IntRange(16, 4096), default=None,
                     help="image side in px (default: the model's input size)"),
        device_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _overrides(steps, lr, param, transforms):
    return {k: v for k, v in dict(steps=steps, lr=lr, param=param, transforms=transforms).items() if v is not None}


def _finish(result, out: Path, gif: Path | None = None) -> None:
    """Save the image; an interrupted (Ctrl-C) render still keeps its last image."""
    if result.interrupted:
        click.echo(f"interrupted after {result.settings['steps_done']} steps; saving the last image", err=True)
    result.save(out)
    echo_for(out, f"wrote {out}  ({result.settings['objective']}, {result.settings['steps_done']} steps, "
                  f"{result.settings['seconds']:.1f} s)")
    if gif is not None and result.snapshots:
        result.save_gif(gif)
        echo_for(gif, f"wrote {gif}")
    if result.interrupted:
        sys.exit(130)


@click.command("render")
@model_argument
@click.argument("target")
@click.option("-o", "--out", type=OutputPath(dir_okay=False, path_type=Path), required=True,
              help="output image: .png (or .jpg, .webp, .tif), with the settings in its metadata")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="images in one optimization (a contact sheet is written when > 1)")
@click.option("--diversity", type=float, default=0.0, help="weight of a diversity term across the batch")
@click.option("--alpha", is_flag=True, help="add a transparency channel")
@click.option("--gif", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="also write an animated GIF of the optimization")
@recipe_options
def render_cmd(model, target, out, batch, diversity, alpha, gif, recipe, steps, lr, param, transforms, seed, size,
               device):
    """Render what TARGET looks for, e.g. blocks.8:12, logit:309, prob:309, dream:blocks.5,
    neuron:blocks.8:12, or sums such as 'blocks.8:12 - 0.5*blocks.8:3'. -o - writes the PNG to stdout."""
    image_format(out)  # refuse an extension featviz cannot write before rendering anything
    check_outputs(out, gif)
    organism = load_model(model, device)
    objective = parse(target, organism)
    if diversity:
        if batch < 2:
            raise FeatvizError("--diversity needs --batch 2 or more")
        layer = next((l for l in objective.layers if l != "logits"), None) or organism.layers()[-3].name
        from ..optvis.objectives import diversity as diversity_objective

        objective = objective + diversity * diversity_objective(layer)
    kw = _overrides(steps, lr, param, transforms)
    n_steps = kw.get("steps", RECIPES[auto_recipe(objective) if recipe == "auto" else recipe].steps)
    result = render(organism, objective, size=size, batch=batch, recipe=recipe, seed=seed, alpha=alpha,
                    snapshots=max(1, n_steps // 32) if gif else None, progress=True, **kw)
    _finish(result, out, gif)


@click.command("render-layer")
@model_argument
@click.argument("layer")
@click.option("--channels", default=None, help="e.g. 0-31 or 3,7,9 (default: all)")
@click.option("-o", "--out", type=OutputPath(dir_okay=False, path_type=Path), required=True,
              help="contact sheet PNG; single images go to OUT_DIR/<layer>_<channel>.png beside it")
@click.option("--batch", type=click.IntRange(1, 4096), default=16, show_default=True, help="units per optimization")
@click.option("--kind", type=click.Choice(["channel", "neuron", "negative"]), default="channel", show_default=True)
@click.option("--columns", type=click.IntRange(1, 4096), default=None, help="columns of the sheet (default: square)")
@recipe_options
def render_layer_cmd(model, layer, channels, out, batch, kind, columns, recipe, steps, lr, param, transforms, seed,
                     size, device):
    """Render many units of LAYER, batched, as a contact sheet plus single files."""
    if writes_to_stdout(out):
        raise FeatvizError("render-layer also writes single images in a folder beside the sheet; give -o a file name")
    image_format(out)
    check_outputs(out)
    organism = load_model(model, device)
    info = organism.layer(layer)
    chans = parse_indices(channels, "--channels", info.channels, f"channel of {layer}") if channels \
        else list(range(info.channels))
    units = [(layer, c) for c in chans]
    results = render_units(organism, units, batch_size=batch, kind=kind, recipe=recipe, seed=seed, size=size,
                           progress=True, **_overrides(steps, lr, param, transforms))
    single_dir = out.with_suffix("")
    for (lname, c), res in zip(units, results):
        res.save(single_dir / f"{slug(f'{lname}_{c}')}.png")
    sheet = grid([r.pil() for r in results], columns=columns, labels=[str(c) for _, c in units[:len(results)]])
    settings = dict(results[0].settings, objective=f"{kind}s of {layer}", channels=chans[:len(results)])
    save_image(sheet, out, settings)
    click.echo(f"wrote {out} and {len(results)} images in {single_dir}/")
    if results and results[-1].interrupted:
        sys.exit(130)


@click.command("dream")
@model_argument
@click.argument("photo", type=click.Path(path_type=Path))
@click.option("--layer", required=True, help="layer whose activations to amplify (DeepDream)")
@click.option("--channel", type=int, default=None, help="amplify one channel instead of the whole layer")
@click.option("-o", "--out", type=OutputPath(dir_okay=False, path_type=Path), required=True)
@recipe_options
def dream_cmd(model, photo, layer, channel, out, recipe, steps, lr, param, transforms, seed, size, device):
    """DeepDream: start from PHOTO and amplify what LAYER sees in it."""
    image_format(out)
    check_outputs(out)
    organism = load_model(model, device)
    image = organism.preprocess(photo, size or organism.input_size)
    target = f"{layer}:{channel}" if channel is not None else f"dream:{layer}"
    kw = _overrides(steps, lr, param, transforms)
    kw.setdefault("param", "pixel")  # a photo is best kept in pixel space; Fourier works too
    kw.setdefault("steps", 48)
    kw.setdefault("lr", 0.02)
    result = render(organism, parse(target, organism), size=image.shape[-1], init_image=image, recipe=recipe,
                    seed=seed, progress=True, **kw)
    result.settings["photo"] = str(photo)
    _finish(result, out)

# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [render_cmd, render_layer_cmd, dream_cmd]
