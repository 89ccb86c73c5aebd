"""``featviz layers MODEL``, ``featviz models`` (list) and ``featviz models check SPEC``."""
from __future__ import annotations

import click

from ..models import registered
from .common import device_option, load_model, model_argument, optional_model_argument


# The layer table of `featviz layers` and `featviz models check`: main layers, or every module.
all_modules_option = click.option("--all", "all_modules", is_flag=True,
                                  help="every module with an output, not only the main layers")


@click.command("layers")
@optional_model_argument
@all_modules_option
@device_option
def layers_cmd(model, all_modules, device):
    """Print the layer table: dotted name, channels, spatial size."""
    organism = load_model(model, device)
    _header(organism)
    _layer_rows(organism, organism.layers(all_modules=all_modules))


def _layer_rows(organism, infos) -> None:
    click.echo(f"{'layer':<28} {'channels':>8}  {'size':>9}  kind")
    for info in infos:
        size = f"{info.height}x{info.width}" if info.spatial else "-"
        note = f" (tokens: {info.prefix} class/register + patch grid)" if info.layout == "tokens" else ""
        click.echo(f"{info.name:<28} {info.channels:>8}  {size:>9}  {info.kind}{note}")
        for branch in info.branches:  # a concatenating layer (Inception): where its channels come from
            click.echo(f"  {'channels ' + str(branch.start) + '-' + str(branch.stop - 1):<26} "
                       f"{branch.stop - branch.start:>8}  {'':>9}  from {branch.name}")
    if organism.num_classes:
        click.echo(f"{'logits':<28} {organism.num_classes:>8}  {'-':>9}  classes (logit:N, prob:N)")


@click.group("models", invoke_without_command=True)
@click.pass_context
def models_cmd(ctx):
    """List the model organisms (built in, registered, from installed packages); 'models check SPEC' tests one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@models_cmd.command("list")
def list_cmd():
    """List the model names featviz knows (the default of 'featviz models')."""
    entries = registered()
    for name, entry in entries.items():
        if entry.source == "built-in":
            click.echo(name)
    for name, entry in entries.items():
        if entry.source != "built-in":
            desc = f": {entry.description}" if entry.description else ""
            click.echo(f"{name}  ({entry.source}{desc})")
    click.echo("torchvision:<name>, timm:<name>  (with those packages and their weights installed)")
    click.echo("path/to/spec.toml  (your own or a fine-tuned network: see 'featviz models check --help')")


@models_cmd.command("check")
@model_argument
@all_modules_option
@device_option
def check_cmd(model, all_modules, device):
    """Load MODEL (a spec file such as my_net.toml, or a name), run one forward pass, print its
    layer table and the top classes of a few photos that ship with scikit-image, and say what is
    wrong when something is (exit status 1).

    \b
    A spec is a TOML file; paths are relative to it:
      base = "efficientnet_lite0"      # or factory = "nets.py:build" (returns an nn.Module)
      weights = "final.pt"             # state dict (.pt/.pth) or .safetensors
      mean = [0.5, 0.5, 0.5]           # after scaling RGB to [0, 1] (required with factory)
      std = [0.5, 0.5, 0.5]
      input_size = 224                 # required with factory
      labels = "labels.txt"            # one class per line, or a JSON list
      layers = ["blocks.4", "head"]    # optional main layers
    """
    from ..models.check import check_model

    organism = load_model(model, device)
    report = check_model(organism)
    _header(organism)
    if organism.weights_file:
        click.echo(f"weights: {organism.weights_file}")
    _layer_rows(organism, organism.layers(all_modules=all_modules))
    click.echo(f"one forward pass: output {list(report.output_shape)}")
    for photo, preds in report.predictions.items():
        shown = ", ".join(f"{label} {p:.0%}" for _, label, p in preds)
        click.echo(f"  {photo:<10} {shown}")
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        raise SystemExit(1)
    click.echo("ok")


def _header(organism) -> None:
    click.echo(f"{organism.name}: input {organism.input_size}x{organism.input_size} RGB in "
               f"{list(organism.value_range)}, normalized with mean {organism.mean.flatten().tolist()} "
               f"std {organism.std.flatten().tolist()} (inside featviz)")


# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [layers_cmd, models_cmd]
