"""``featviz examples``, ``featviz examples-merge``, ``featviz examples-show`` and ``featviz compare``."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

from ..errors import FeatvizError
from ..models import DEFAULT_MODEL, is_model_reference, load_reference
from .common import (OutputPath, device_option, engine_options, load_model, make_engine, model_argument,
                     parse_unit, weights_option)


@click.command("examples")
@model_argument
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@click.option("--layers", "-l", default=None,
              help="comma-separated layers, e.g. blocks.4,blocks.8,head (default: 4 main layers)")
@click.option("--top", type=int, default=10, show_default=True, help="top-k images per unit (by mean and by max)")
@click.option("--bottom", type=int, default=10, show_default=True, help="bottom-k images per unit (by mean)")
@click.option("--out", "-o", type=OutputPath(path_type=Path), required=True, help="store folder")
@click.option("--batch-size", type=int, default=None, help="images per batch (default 32, or the store's)")
@click.option("--size", type=int, default=None, help="input size (default: the model's)")
@click.option("--shard", default=None,
              help="I/N: only batches I, I+N, I+2N... of the folder (then examples-merge the N stores)")
@click.option("--overwrite", is_flag=True, help="start the store over if it was made with other settings")
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="decoding threads (default: up to 4)")
@click.option("--checkpoint-every", type=float, default=30.0, show_default=True, help="seconds between checkpoints")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@device_option
@engine_options
def examples_cmd(model, data_dir, layers, top, bottom, out, batch_size, size, shard, overwrite, workers,
                 checkpoint_every, quiet, device, engine, address):
    """Dataset examples: for every unit of the chosen layers, the photos of DATA_DIR (searched
    recursively for photos: jpg, png, webp, ...) that excite it most and least, with receptive-field crops.

    Without DATA_DIR, the photos that ship with scikit-image. Interrupted runs (Ctrl-C, kill)
    continue where their last checkpoint left off when the same command is run again.
    """
    from ..examples import PassOptions, collect

    if data_dir is None and not is_model_reference(model) and (Path(model).exists() or "/" in model.split(":")[0]):
        model, data_dir = DEFAULT_MODEL, Path(model)  # `featviz examples PHOTOS --out ...`
    organism = load_model(model, device)
    if data_dir is None:
        click.echo("no DATA_DIR given: using the scikit-image demo photos", err=True)
    options = PassOptions(workers=workers, checkpoint_every=checkpoint_every, progress=not quiet,
                          log=lambda msg: click.echo(msg, err=True))
    try:
        with make_engine(engine, address) as runner:
            store = collect(organism, data_dir, layers, top, bottom=bottom, store=out, batch_size=batch_size,
                            size=size, shard=shard, overwrite=overwrite, engine=runner, options=options)
    except KeyboardInterrupt:
        click.echo(f"interrupted: progress is saved in {out}; run the same command again to continue", err=True)
        sys.exit(130)
    _summary(store)


def _summary(store) -> None:
    s = store.settings
    run = store.run
    t = run.get("timings", {})
    rate = f", {t['pass_images'] / t['pass_s']:.1f} images/s" if t.get("pass_s") else ""
    click.echo(f"store {store.path}: {s['model']}, {store.num_images} images read of {s['n_files']} files{rate}")
    for name in store.layers():
        rec = store.layer(name)
        eh, ew = rec.rf.extent
        rf = "whole image" if rec.rf.whole else f"{eh:.0f}x{ew:.0f} px"
        click.echo(f"  {name:<20} {rec.channels:>5} units  grid {rec.height}x{rec.width}  receptive field {rf}")
    click.echo(f"receptive fields: {run.get('rf_method', '?')}")
    skipped = store.skipped()
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable file(s):")
        for path, reason in skipped:
            click.echo(f"  {path}: {reason}")
    first = store.layers()[0]
    click.echo(f"next: featviz compare {s['model']} {first}:0 --store {store.path} -o sheet.png")


@click.command("examples-merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="replace OUT if it is a store")
def examples_merge_cmd(out, stores, overwrite):
    """Merge the stores of shards of one data set (--shard I/N) into the store OUT of the whole."""
    from ..examples import merge

    merged = merge(list(stores), out, overwrite=overwrite)
    click.echo(f"merged {len(stores)} stores into {out}: {merged.num_images} images, digest {merged.digest()[:16]}")


@click.command("examples-show")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("unit")
@click.option("-o", "--out", type=OutputPath(dir_okay=False, path_type=Path), required=True, help="output PNG")
@click.option("--top", "k", type=click.IntRange(1, 1000), default=None, help="examples per row (default: all)")
def examples_show_cmd(store, unit, out, k):
    """A sheet of the dataset examples of UNIT (LAYER:UNIT) from STORE, without visualization."""
    from ..examples import open_store, unit_sheet
    from ..imageio import save_png

    layer, index = parse_unit(unit)
    with open_store(store) as st:
        sheet = unit_sheet(st, layer, index, k=k)
        save_png(sheet, out, {"store": str(store), "unit": f"{layer}:{index}", "model": st.settings["model"]})
    click.echo(f"wrote {out}")


@click.command("compare")
@click.argument("model", metavar="[MODEL]")
@click.argument("unit", metavar="LAYER:UNIT", required=False)
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True,
              help="example store made with 'featviz examples'")
@click.option("-o", "--out", type=OutputPath(dir_okay=False, path_type=Path), required=True, help="output PNG")
@click.option("--top", "k", type=click.IntRange(1, 1000), default=None, help="examples per row (default: all)")
@click.option("--size", type=click.IntRange(16, 4096), default=None, help="visualization size in px")
@click.option("--steps", type=click.IntRange(1, 100_000), default=None, help="optimization steps")
@click.option("--recipe", default=None, help="render recipe (see featviz render --help)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-vis", is_flag=True, help="examples only, no optimized visualization")
@device_option
@weights_option
def compare_cmd(model, unit, store_path, out, k, size, steps, recipe, seed, no_vis, device):
    """Side by side: the optimized visualization of LAYER:UNIT (e.g. blocks.8:12) next to its
    top and bottom dataset examples from STORE. MODEL defaults to the store's model."""
    from ..examples import open_store, unit_sheet
    from ..imageio import save_png

    if unit is None:
        model, unit = None, model
    layer, index = parse_unit(unit)
    with open_store(store_path) as st:
        st.top(layer, index, k=1)  # checks store, layer and unit before the (slow) rendering
        settings = {"store": str(store_path), "unit": f"{layer}:{index}", "model": st.settings["model"]}
        vis = None
        if not no_vis:
            # Without MODEL: the store's own network, from the spec it recorded when it came from one.
            organism = (load_model(model, device) if model else
                        load_reference(st.model_reference, device, where=f"the store {store_path}"))
            if organism.name != st.settings["model"]:
                raise FeatvizError(f"the store {store_path} was made with {st.settings['model']}, not {organism.name}")
            organism.check_channel(layer, index)
            vis, vis_settings = _render(organism, layer, index, size, steps, recipe, seed)
            settings["render"] = vis_settings
        sheet = unit_sheet(st, layer, index, vis=vis, k=k)
        save_png(sheet, out, settings)
    click.echo(f"wrote {out}")


def _render(organism, layer: str, unit: int, size, steps, recipe, seed):
    """The channel visualization through ``featviz.optvis.render`` (its documented API)."""
    try:
        from ..optvis import render
    except ImportError:
        render = None
    if render is None:
        raise FeatvizError("the feature-visualization engine (featviz.optvis.render) is not available; "
                           "use --no-vis for the examples alone")
    kw = {"seed": seed}
    if size is not None:
        kw["size"] = size
    if steps is not None:
        kw["steps"] = steps
    accepted = inspect.signature(render).parameters
    if recipe is not None:
        if "recipe" not in accepted:
            raise FeatvizError("this version of the renderer has no recipes")
        kw["recipe"] = recipe
    if "progress" in accepted:
        kw["progress"] = True
    result = render(organism, f"{layer}:{unit}", **kw)
    return result.pil(0), getattr(result, "settings", {})

# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [examples_cmd, examples_merge_cmd, examples_show_cmd, compare_cmd]
