"""``featviz attribute MODEL PHOTO`` and ``featviz blocks MODEL PHOTO --layer LAYER``."""
from __future__ import annotations

import click

from .common import OutputPath, check_outputs, device_option, echo_for, load_model, model_argument

_METHOD_HELP = "gradcam|saliency|smoothgrad|ig|guided-gradcam; several (comma-separated) or 'all' make a panel"


def _print_predictions(organism, x, k: int, output) -> None:
    k = min(k, organism.num_classes or 0)
    if k <= 0:
        return
    preds = organism.predict(x[None].to(organism.device), k)[0]
    echo_for(output, f"top-{len(preds)} predictions:")
    for rank, (idx, label, prob) in enumerate(preds, 1):
        echo_for(output, f"  {rank}. {idx:>4}  {prob:6.1%}  {label}")


def _model_and_photo(model: str, photo: str | None) -> tuple[str, str]:
    """``featviz attribute cat.jpg`` means the default model with that photo."""
    if photo is None:
        from pathlib import Path

        from ..models import DEFAULT_MODEL, is_model_reference

        if is_model_reference(model):
            raise click.UsageError("missing argument PHOTO")
        if Path(model).exists() or Path(model).suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif",
                                                                   ".tiff", ".gif"):
            return DEFAULT_MODEL, model
        raise click.UsageError("missing argument PHOTO")
    return model, photo


def _describe(organism, objective) -> str:
    from ..attribution.methods import class_label

    return objective.description + class_label(organism, objective.class_index)


@click.command("attribute")
@model_argument
@click.argument("photo", metavar="PHOTO", required=False)
@click.option("-t", "--target", default=None,
              help="what to explain: logit:N, prob:N, LAYER:CH, neuron:LAYER:CH[@x,y] (default: the predicted class)")
@click.option("-m", "--method", default="gradcam", show_default=True, help=_METHOD_HELP)
@click.option("--layer", default=None, help="Grad-CAM layer (default: the last spatial layer before the target)")
@click.option("-o", "--output", default="attribution.png", show_default=True, type=OutputPath(dir_okay=False),
              help="PNG: the overlay on the photo, or a panel when several methods are given")
@click.option("--size", type=click.IntRange(16, 2048), default=None,
              help="photo size (default: the model's input size)")
@click.option("--steps", type=click.IntRange(2, 10000), default=50, show_default=True,
              help="integrated gradients: steps")
@click.option("--batch", "internal_batch_size", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="ig / smoothgrad: images per forward pass (bounds memory)")
@click.option("--baseline", type=click.Choice(["black", "white", "gray", "blur"]), default="black",
              show_default=True, help="integrated gradients: reference image")
@click.option("--samples", type=click.IntRange(1, 10000), default=25, show_default=True,
              help="smoothgrad: noisy samples")
@click.option("--noise", type=click.FloatRange(0, 10), default=0.15, show_default=True,
              help="smoothgrad: noise std (image range is 0-1)")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True, help="overlay opacity")
@click.option("--cmap", type=click.Choice(["fire", "gray"]), default="fire", show_default=True)
@click.option("--save-map", type=OutputPath(dir_okay=False), default=None,
              help="also save the raw maps as .npz (one (H, W) array per method)")
@click.option("--top", "top_k", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="number of top predictions to print")
@click.option("--seed", type=int, default=0, show_default=True, help="smoothgrad noise seed")
@device_option
def attribute_cmd(model, photo, target, method, layer, output, size, steps, internal_batch_size, baseline, samples,
                  noise, alpha, cmap, save_map, top_k, seed, device):
    """Explain one photo: which pixels made TARGET fire, by one or several attribution methods.

    MODEL may be left out: 'featviz attribute cat.jpg' uses the default model.
    """
    from ..attribution import METHODS, require_captum
    from ..attribution.methods import as_batch, attribute, canonical_method, panel, resolve_target
    from ..imageio import save_png

    require_captum()
    model, photo = _model_and_photo(model, photo)
    check_outputs(output, save_map)
    methods = list(METHODS) if method.strip().lower() == "all" else [
        canonical_method(m) for m in method.split(",") if m.strip()]
    if not methods:
        raise click.BadParameter("give at least one method", param_hint="--method")
    organism = load_model(model, device)
    x = as_batch(organism, photo, size)[0]
    _print_predictions(organism, x, top_k, output)
    objective = resolve_target(organism, target, x[None])
    echo_for(output, f"target: {_describe(organism, objective)}")
    atts = []
    for m in methods:
        a = attribute(organism, x, objective, m, layer=layer, steps=steps, internal_batch_size=internal_batch_size,
                      baseline=baseline, samples=samples, noise=noise, seed=seed)
        a.settings["photo"] = str(photo)
        where = f" @ {a.settings['layer']}" if "layer" in a.settings else ""
        echo_for(output, f"{m}{where}: {a.settings['seconds']:.2f} s")
        atts.append(a)
    if len(atts) == 1:
        path = atts[0].save(output, alpha=alpha, cmap=cmap)
    else:
        settings = dict(atts[0].settings, method=methods, seconds=None)
        path = save_png(panel(organism, x, objective, attributions=atts, alpha=alpha, cmap=cmap), output, settings)
    echo_for(output, f"wrote {path}")
    if save_map:
        import numpy as np

        from ..imageio import atomic_write

        arrays = {a.method.replace("-", "_"): a.map.numpy() for a in atts}

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        atomic_write(save_map, write)
        echo_for(save_map, f"wrote {save_map}")


@click.command("blocks")
@model_argument
@click.argument("photo", metavar="PHOTO", required=False)
@click.option("--layer", required=True, help="layer whose channels to rank, e.g. head or blocks.12")
@click.option("--class", "class_index", type=int, default=None, help="class to explain (default: the predicted class)")
@click.option("-t", "--target", default=None, help="or any objective instead of a class, e.g. blocks.14:40")
@click.option("-o", "--output", default="blocks.png", show_default=True, type=OutputPath(dir_okay=False))
@click.option("--top", "top_n", type=click.IntRange(1, 64), default=6, show_default=True,
              help="number of channels shown")
@click.option("--no-thumbnails", is_flag=True, help="leave out the feature visualizations (much faster)")
@click.option("--thumb-steps", type=click.IntRange(1, 10000), default=64, show_default=True,
              help="optimization steps of each feature visualization")
@click.option("--thumb-size", type=click.IntRange(16, 1024), default=96, show_default=True)
@click.option("--size", type=click.IntRange(16, 2048), default=None,
              help="photo size (default: the model's input size)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--predictions", "top_k", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="number of top predictions to print")
@device_option
def blocks_cmd(model, photo, layer, class_index, target, output, top_n, no_thumbnails, thumb_steps, thumb_size, size,
               seed, top_k, device):
    """Building Blocks: the channels of LAYER that carry the decision on PHOTO, with their maps and visualizations.

    Channels are ranked by activation x gradient summed over space (exact at 'head' of EfficientNet-Lite).
    """
    from ..attribution import require_captum
    from ..attribution.blocks import Thumbnails, blocks_sheet, channel_attribution
    from ..attribution.methods import as_batch, resolve_target
    from ..errors import FeatvizError
    from ..imageio import save_png

    require_captum()
    model, photo = _model_and_photo(model, photo)
    check_outputs(output)
    if class_index is not None and target is not None:
        raise FeatvizError("give either --class or --target, not both")
    organism = load_model(model, device)
    x = as_batch(organism, photo, size)[0]
    _print_predictions(organism, x, top_k, output)
    objective = resolve_target(organism, class_index if class_index is not None else target, x[None])
    ca = channel_attribution(organism, x, layer, objective)
    ca.settings["photo"] = str(photo)
    echo_for(output, f"target: {_describe(organism, objective)} = {ca.value:.3f}; layer {layer}: "
               f"{ca.scores.numel()} channels, sum of scores {float(ca.scores.sum()):.3f}")
    echo_for(output, f"{'rank':>4} {'channel':>7} {'score':>8} {'share of +':>10}")
    for rank, ch, score, share in ca.table(top_n):
        echo_for(output, f"{rank:>4} {ch:>7} {score:>+8.3f} {share:>10.1%}")
    if not no_thumbnails:
        echo_for(output, f"rendering {top_n} feature visualizations ({thumb_steps} steps, {thumb_size} px)...")
    thumbnails = False if no_thumbnails else Thumbnails(steps=thumb_steps, size=thumb_size, seed=seed)
    sheet, ca = blocks_sheet(organism, x, layer, objective, top=top_n, thumbnails=thumbnails, attribution=ca)
    path = save_png(sheet, output, dict(ca.settings, top=top_n))
    echo_for(output, f"wrote {path}")

# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [attribute_cmd, blocks_cmd]
