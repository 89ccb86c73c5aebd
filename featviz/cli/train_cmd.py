"""``featviz finetune`` and ``featviz evolve``: train a model organism, then watch its units change."""
from __future__ import annotations

from pathlib import Path

import click

from .common import load_model, model_argument


@click.command("finetune")
@model_argument
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="run folder (checkpoints, model.toml, metrics.json); run again to resume a killed run")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--steps", type=int, default=None, help="optimizer steps in all, instead of --epochs passes")
@click.option("--lr", type=float, default=1e-4, show_default=True,
              help="AdamW learning rate of the network (cosine decay); the new classifier's is 10x")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--per-class", type=int, default=None,
              help="training examples per class [default: all the folder's; the demo task: 20]")
@click.option("--holdout", type=int, default=10, show_default=True,
              help="held-out images per class (at most half of a class in a folder)")
@click.option("--freeze-until", "freeze_until", default=None, metavar="LAYER",
              help="keep LAYER and every layer before it frozen")
@click.option("--from-scratch", is_flag=True, help="same architecture, fresh random init, same budget")
@click.option("--size", type=int, default=None,
              help="image side in px [default: 96 for the demo task, the model's input size for DATA_DIR]")
@click.option("--seed", type=int, default=0, show_default=True, help="split, order, augmentation, init, dropout")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="steps between checkpoints (0: every epoch)")
@click.option("--progress/--no-progress", default=True, show_default=True)
def finetune_cmd(model, data_dir, out, epochs, steps, lr, batch_size, per_class, holdout, freeze_until, from_scratch,
                 size, seed, checkpoint_every, progress):
    """Fine-tune MODEL on DATA_DIR (one sub-folder of images per class; without it, the offline demo
    task of shapes on textures), with a held-out split. Writes checkpoints, model.toml (a model
    spec any command takes as MODEL), labels.txt and metrics.json into --out. Trains on the CPU."""
    from ..training import TrainSettings, finetune

    settings = TrainSettings(epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, per_class=per_class,
                             holdout=holdout, freeze_until=freeze_until, from_scratch=from_scratch, seed=seed,
                             checkpoint_every=checkpoint_every, size=size)
    settings.check()
    if data_dir is None:
        click.echo("no DATA_DIR given: using the offline demo task (shapes on textures)", err=True)
    # Trained on the CPU (the trainable copy is made there); the model is loaded there too.
    result = finetune(load_model(model, "cpu"), data_dir, out, settings, progress=progress,
                      log=lambda m: click.echo(m, err=True))
    click.echo(f"held-out accuracy {result.heldout_accuracy:.3f}")
    click.echo(f"wrote {out / 'model.toml'}")


@click.command("evolve")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--units", required=True, help="LAYER:UNIT list, e.g. blocks.8:12,head:40")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="output folder")
@click.option("--size", type=int, default=96, show_default=True, help="render size in px")
@click.option("--steps", type=int, default=64, show_default=True, help="optimization steps per render")
@click.option("--seed", type=int, default=0, show_default=True, help="the same for every checkpoint")
@click.option("--k", type=int, default=6, show_default=True, help="top held-out examples per unit")
@click.option("--progress/--no-progress", default=True, show_default=True)
def evolve_cmd(run, units, out, size, steps, seed, k, progress):
    """For every checkpoint of RUN (a featviz finetune folder) and its starting network: render the
    units (same seed and settings), write a filmstrip and a GIF per unit, the units' top held-out
    examples at the start and the end, and linear CKA of every main layer to the start."""
    from ..training.evolve import EvolveSettings, evolve, parse_units

    settings = EvolveSettings(size=size, steps=steps, seed=seed, k=k)
    result = evolve(run, parse_units(units), out, settings, progress=progress,
                    log=lambda m: click.echo(m, err=True))
    for line in result["summary"]:
        click.echo(line)
    click.echo(f"wrote {Path(out) / 'evolve.json'}")


# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [finetune_cmd, evolve_cmd]
