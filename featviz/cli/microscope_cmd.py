"""``featviz microscope build`` and ``featviz serve``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import FeatvizError
from .common import OutputPath, device_option, engine_options, load_model, make_engine, model_argument, parse_indices


def _units(text: str | None, organism):
    """'8' -> the first 8 units; '0-31' / '3,7,9' -> those units; 'all' -> every unit.
    Listed units are checked against the widest layer before the list is made (each layer checks its own)."""
    if text is None:
        return None
    text = text.strip()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    widest = max(info.channels for info in organism.layers(all_modules=True))
    return tuple(parse_indices(text, "--units", widest, "unit"))


@click.group("microscope")
def microscope():
    """A browsable site of every unit of a model's layers (see also: featviz serve)."""


@microscope.command("build")
@model_argument
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="folder of photos for the dataset examples (default: the embedded demo photos, quick mode)")
@click.option("--layers", "-l", default=None, help="comma-separated layers (default: a set spanning the depth)")
@click.option("--units", default=None,
              help="per layer: N (the first N), a list such as 0-31 or 3,7,9, or 'all' (default: 8 quick, all full)")
@click.option("--out", "-o", type=OutputPath(path_type=Path), default=Path("microscope"), show_default=True,
              help="site folder (static HTML/CSS/JS and images)")
@click.option("--steps", type=click.IntRange(1, 100_000), default=None, help="optimization steps (64 quick, 256 full)")
@click.option("--size", type=click.IntRange(16, 4096), default=None, help="image side in px (96 quick, 128 full)")
@click.option("--quick/--full", "quick", default=None,
              help="preset (default: --quick without --data, --full with it)")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=None, help="units per render batch (8 quick, 16 full)")
@click.option("--examples", "k", type=click.IntRange(1, 1000), default=None,
              help="dataset examples per list (6 quick, 10 full)")
@click.option("--classes", default=None, help="classes for the model page, e.g. 309,1,130 (default: a showcase set)")
@click.option("--seed", type=int, default=None, help="base seed (default 0)")
@click.option("--caricature-photo", type=click.Path(path_type=Path), default=None,
              help="caricature this photo on every layer (default: each unit's top dataset example)")
@click.option("--baseline", default=None, metavar="MODEL",
              help="starting network to show beside each unit, built into the same site (default: the run's start "
                   "when MODEL is a featviz finetune run's model.toml)")
@click.option("--no-baseline", is_flag=True, help="no starting network, even for a fine-tuning run")
@click.option("--plateau", type=click.FloatRange(0, 0.5), default=None,
              help="stop a render batch once no image gained more than this fraction over 32 steps; 0: run every "
                   "step (default, full: 0.01, and 0.03 for the diversity images; quick: 0)")
@click.option("--quiet", "-q", is_flag=True, help="no progress lines")
@device_option
@engine_options
def build_cmd(model, data_dir, layers, units, out, steps, size, quick, batch_size, k, classes, seed, caricature_photo,
              baseline, no_baseline, plateau, quiet, device, engine, address):
    """Build (or bring up to date) a microscope site for MODEL.

    For a fine-tuned network (a featviz finetune run's model.toml, or --baseline MODEL), the
    starting network is built into the same site too, and each unit page shows its same unit
    beside this one; the model page plots how far each layer moved (linear CKA).

    Incremental and resumable: what is already built with the same settings is skipped,
    changed settings re-render only the panels they affect, and a killed build continues
    where it stopped when the same command is run again.
    """
    from ..microscope import build

    organism = load_model(model, device)
    overrides = dict(layers=layers, units=_units(units, organism), steps=steps, size=size, batch_size=batch_size,
                     k=k, seed=seed,
                     classes=tuple(parse_indices(classes, "--classes", organism.num_classes, "class"))
                     if classes else None, caricature_photo=str(caricature_photo) if caricature_photo else None,
                     plateau=plateau, diversity_plateau=plateau)
    log = None if quiet else (lambda msg: click.echo(msg, err=True))
    if data_dir is None and not quiet:
        click.echo("no --data given: using the embedded demo photos", err=True)
    try:
        with make_engine(engine, address) as runner:
            report = build(organism, out, data_dir, quick=quick, log=log, progress=not quiet, engine=runner,
                           baseline=False if no_baseline else baseline, **overrides)
    except KeyboardInterrupt:
        click.echo(f"interrupted: what is done is kept in {out}; run the same command again to continue", err=True)
        sys.exit(130)
    click.echo(report.summary())


@microscope.command("compare")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("model_a")
@click.argument("model_b")
@device_option
def compare_cmd(site, model_a, model_b, device):
    """A side-by-side page of MODEL_A and MODEL_B, both built into SITE: their class visualizations,
    and each unit of A matched to the unit of B that correlates best with it over the site's photos."""
    from ..microscope.compare import compare

    page = compare(site, model_a, model_b, device=device, log=lambda msg: click.echo(msg, err=True))
    click.echo(f"wrote {site / page}")


def _serve_options(f):
    options = [
        click.option("--model", default=None, help="model for on-demand renders (default: the site's, by name)"),
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="address to bind (loopback by default; anything else exposes the renderer)"),
        click.option("--allow-host", "names", multiple=True, metavar="NAME",
                     help="a host name the server is reached by (IP addresses and localhost always are; "
                          "other names are refused, against DNS rebinding)"),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True),
        click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="renders at once"),
        click.option("--max-queue", type=click.IntRange(1, 10_000), default=8, show_default=True,
                     help="jobs waiting before new requests get 429"),
        click.option("--per-client", type=click.IntRange(1, 1000), default=2, show_default=True,
                     help="queued + running jobs per client address"),
        click.option("--max-steps", type=click.IntRange(1, 100_000), default=256, show_default=True),
        click.option("--max-size", type=click.IntRange(32, 4096), default=256, show_default=True),
        click.option("--timeout", "job_timeout", type=float, default=300.0, show_default=True,
                     help="seconds a render may take"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _serve(site, model, host, names, port, workers, max_queue, per_client, max_steps, max_size, job_timeout):
    from ..server import Limits, is_loopback, serve

    if not Path(site, "manifest.sqlite").is_file():
        raise FeatvizError(f"{site} is not a microscope site; make one with 'featviz microscope build'")
    limits = Limits(workers=workers, max_queue=max_queue, per_client=per_client, max_steps=max_steps,
                    max_size=max_size, job_timeout=job_timeout)  # checked here, before anything starts
    from ..microscope.manifest import missing_specs

    for line in missing_specs(site) if model is None else []:
        click.echo(f"warning: {line}", err=True)
    if not is_loopback(host):
        click.echo(f"warning: binding to {host} lets other machines use this renderer", err=True)
    click.echo(f"serving {site} at http://{host if ':' not in host else '[' + host + ']'}:{port}/  (Ctrl-C stops)",
               err=True)
    serve(site, model, host=host, port=port, limits=limits, served_names=names)


@click.command("serve")
@click.argument("site", type=click.Path(path_type=Path), default=Path("microscope"))
@_serve_options
def serve_cmd(site, **kwargs):
    """Serve a microscope SITE (default ./microscope) and render unbuilt units on demand."""
    _serve(site, **kwargs)


@microscope.command("serve")
@click.argument("site", type=click.Path(path_type=Path), default=Path("microscope"))
@_serve_options
def microscope_serve_cmd(site, **kwargs):
    """Same as 'featviz serve'."""
    _serve(site, **kwargs)

# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [microscope, serve_cmd]
