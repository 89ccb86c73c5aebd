"""``featviz report logits|causes|transfer|finetune``: experiments with figures and a Markdown page."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import FeatvizError
from ..imageio import output_folder
from .common import OutputPath, device_option, load_model, model_argument, parse_range, parse_unit


def _classes(text: str) -> list[int]:
    try:
        return parse_range(text)
    except click.BadParameter as exc:
        raise FeatvizError(f"--classes: {exc.message}") from None


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise FeatvizError(f"{name} must be at least 1, got {value}")


site_option = click.option("--site", type=click.Path(path_type=Path), default=None,
                           help="also put the report into this microscope site (built for MODEL), linked from the "
                                "model page")


def _publish(site: Path | None, out: Path) -> None:
    if site is not None:
        from ..microscope.report_pages import add_report

        click.echo(f"added to the microscope: {site / add_report(site, out)}")


@click.group("report")
def report():
    """Reports: experiments on a real model, written as PNG figures, report.md and results.json."""


@report.command("logits")
@model_argument
@click.option("--classes", default="9,130,309,980", show_default=True, help="class indices, e.g. 9,130 or 300-305")
@click.option("--judge", default="efficientnet_lite1", show_default=True,
              help="another network that measures transferability (top-5 of the target class)")
@click.option("--size", type=int, default=160, show_default=True, help="render size in pixels")
@click.option("--steps", type=int, default=64, show_default=True, help="optimization steps per image")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=OutputPath(path_type=Path), required=True, help="output folder")
@site_option
@device_option
def logits_cmd(model, classes, judge, size, steps, seed, out, site, device):
    """Optimize each class's logit and its probability (same seed and budget), side by side, with
    the target logit, target probability, mean of the other logits and the judge's top-5."""
    from ..reports.logits import logits_report

    cls = _classes(classes)
    _positive("--steps", steps)
    if size < 16:
        raise FeatvizError(f"--size must be at least 16 px, got {size}")
    output_folder(out)  # refused in one line now, not after the renders
    organism = _load_for_report(model, device, site)
    res = logits_report(organism, cls, out, judge=judge, size=size, steps=steps, seed=seed,
                        log=lambda m: click.echo(m, err=True))
    for kind, s in res["summary"].items():
        click.echo(f"{kind:5s}  target logit {s['mean_target_logit']:.2f}  prob {s['mean_target_prob']:.3f}  "
                   f"other logits {s['mean_other_logits']:.2f}  {res['settings']['judge']} top-5 "
                   f"{s['judge_top5']}/{s['n']}")
    click.echo(f"wrote {Path(out) / 'report.md'}")
    _publish(site, out)


@report.command("causes")
@model_argument
@click.argument("unit", metavar="LAYER:UNIT")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="examples store (featviz examples)")
@click.option("--k", type=int, default=6, show_default=True, help="top dataset examples to test")
@click.option("--steps", type=int, default=64, show_default=True, help="steps of the visualization")
@click.option("--size", type=int, default=128, show_default=True, help="size of the visualization")
@click.option("--mask-frac", type=float, default=0.25, show_default=True, help="masked area as a fraction of the image")
@click.option("--method", default="saliency", show_default=True,
              help="attribution method (saliency | smoothgrad | ig | gradcam | guided-gradcam)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=OutputPath(path_type=Path), required=True, help="output folder")
@site_option
@device_option
def causes_cmd(model, unit, store, k, steps, size, mask_frac, method, seed, out, site, device):
    """The unit's visualization, its top dataset examples, and an ablation: its activation after
    masking the attributed region vs a random region of the same size."""
    from ..attribution.methods import canonical_method
    from ..reports.causes import causes_report

    layer, index = parse_unit(unit)
    _positive("--k", k)
    _positive("--steps", steps)
    if size < 16:
        raise FeatvizError(f"--size must be at least 16 px, got {size}")
    if not 0 < mask_frac < 1:
        raise FeatvizError(f"--mask-frac must be between 0 and 1, got {mask_frac}")
    method = canonical_method(method)
    output_folder(out)  # refused in one line now, not after the renders
    organism = _load_for_report(model, device, site)
    res = causes_report(organism, (layer, index), store, out, k=k, steps=steps, size=size, mask_frac=mask_frac,
                        method=method, seed=seed, log=lambda m: click.echo(m, err=True))
    s = res["summary"]
    click.echo(f"{layer}:{index}  original {s['mean_original']:.3f}  attribution-masked "
               f"{s['mean_attribution_masked']:.3f}  random-masked {s['mean_random_masked']:.3f}  "
               f"(attribution drop larger on {s['attribution_drop_larger']}/{s['n']})")
    click.echo(f"wrote {Path(out) / 'report.md'}")
    _publish(site, out)


@report.command("transfer")
@model_argument
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@click.option("--layers", default=None, help="comma-separated layers (default: 8 evenly spaced along the depth); "
              "'pixels' is the input pooled to 8x8")
@click.option("--size", type=int, default=None, help="image side fed to the networks "
              "[default: 160 for the demo task, the model's input size for DATA_DIR]")
@click.option("--per-class", type=int, default=None, help="demo task: images per class [default: 48]; "
              "DATA_DIR: at most this many per class [default: all]")
@click.option("--folds", type=int, default=5, show_default=True, help="cross-validation folds")
@click.option("--seed", type=int, default=0, show_default=True, help="demo data, folds, random init and renders")
@click.option("--pixels/--no-pixels", default=True, show_default=True, help="also probe the raw pixels")
@click.option("--pictures/--no-pictures", default=True, show_default=True,
              help="channel visualizations along the depth (about a minute on a CPU)")
@click.option("--out", "-o", type=OutputPath(path_type=Path), required=True, help="output folder")
@site_option
@device_option
def transfer_cmd(model, data_dir, layers, size, per_class, folds, seed, pixels, pictures, out, site, device):
    """Linear-probe accuracy along the depth on a task the model was not trained on (DATA_DIR: one
    sub-folder of images per class; without it, an offline demo task of shapes on textures), for the
    trained network and a randomly initialised copy."""
    from ..reports.transfer import ProbeSettings, row_line, transfer_report

    if folds < 2:
        raise FeatvizError(f"--folds must be at least 2, got {folds}")
    if per_class is not None:
        _positive("--per-class", per_class)
    if size is not None and not 32 <= size <= 1024:
        raise FeatvizError(f"--size must be between 32 and 1024 px, got {size}")
    names = [l.strip() for l in layers.split(",") if l.strip()] if layers is not None else None
    if names is not None and not names:
        raise FeatvizError("--layers: no layer given")
    if data_dir is not None and not data_dir.is_dir():
        raise FeatvizError(f"data folder not found: {data_dir} (it should hold one sub-folder of images per class)")
    output_folder(out)  # refused in one line now, not after the renders
    organism = _load_for_report(model, device, site)
    if data_dir is None:
        click.echo("no DATA_DIR given: using the offline demo task (shapes on textures)", err=True)
    res = transfer_report(organism, data_dir, out, layers=names, size=size, per_class=per_class,
                          probe=ProbeSettings(folds=folds), seed=seed, pixels=pixels, pictures=pictures,
                          log=lambda m: click.echo(m, err=True))
    click.echo(f"chance {res['chance']:.3f}")
    for r in res["rows"]:
        click.echo(row_line(r))
    click.echo(f"wrote {Path(out) / 'report.md'}")
    _publish(site, out)


@report.command("finetune")
@model_argument
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@click.option("--budgets", default="2,5,10,25", show_default=True, help="training examples per class, e.g. 2,5,10")
@click.option("--steps", type=int, default=60, show_default=True, help="optimizer steps of every run")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True,
              help="AdamW learning rate of the network (cosine decay); the new classifier's is 10x")
@click.option("--holdout", type=int, default=10, show_default=True, help="held-out images per class")
@click.option("--size", type=int, default=None,
              help="image side in px [default: 96 for the demo task, the model's input size for DATA_DIR]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="output folder")
@site_option
def finetune_cmd(model, data_dir, budgets, steps, batch_size, lr, holdout, size, seed, out, site):
    """Held-out accuracy of ImageNet-initialized vs from-scratch fine-tuning at several examples-per-class
    budgets (the same steps), and per-layer CKA to the starting network (DATA_DIR: one sub-folder of
    images per class; without it, the offline demo task). Trains on the CPU."""
    from ..reports.finetune import finetune_report
    from ..training import TrainSettings

    try:
        numbers = parse_range(budgets) if budgets.strip() else []
    except click.BadParameter as exc:
        raise FeatvizError(f"--budgets: {exc.message}") from None
    if not numbers:
        raise FeatvizError("--budgets: give examples per class, e.g. 2,5,10")
    settings = TrainSettings(batch_size=batch_size, lr=lr, holdout=holdout, size=size, seed=seed)
    settings.check()
    organism = _load_for_report(model, "cpu", site)
    if data_dir is None:
        click.echo("no DATA_DIR given: using the offline demo task (shapes on textures)", err=True)
    res = finetune_report(organism, data_dir, out, budgets=numbers, steps=steps, settings=settings,
                          log=lambda m: click.echo(m, err=True))
    for b in res["settings"]["budgets"]:
        click.echo(f"{b:3d} per class: pretrained {res['accuracy']['pretrained'][str(b)]:.3f}  "
                   f"scratch {res['accuracy']['scratch'][str(b)]:.3f}")
    layers = list(res["cka"])
    first, last = layers[0], layers[-2] if len(layers) > 1 else layers[-1]  # the last one: the new classifier
    click.echo(f"CKA to the start: {first} {res['cka'][first]:.3f}, {last} {res['cka'][last]:.3f}")
    click.echo(f"wrote {Path(out) / 'report.md'}")
    _publish(site, out)


def _load_for_report(model, device, site: Path | None):
    """The model, and the site checked for it: both fail in one line before the work, not after it."""
    organism = load_model(model, device)
    if site is not None:
        from ..microscope.report_pages import check_report_site

        check_report_site(site, organism.name)
    return organism


# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [report]
