"""``featviz layers MODEL`` and ``featviz models``."""
from __future__ import annotations

import click

from ..models import available
from .common import device_option, load_model, optional_model_argument


@click.command("layers")
@optional_model_argument
@click.option("--all", "all_modules", is_flag=True, help="every module with an output, not only the main layers")
@device_option
def layers_cmd(model, all_modules, device):
    """Print the layer table: dotted name, channels, spatial size."""
    organism = load_model(model, device)
    click.echo(f"{organism.name}: input {organism.input_size}x{organism.input_size} RGB in "
               f"{list(organism.value_range)}, normalized with mean {organism.mean.flatten().tolist()} "
               f"std {organism.std.flatten().tolist()} (inside featviz)")
    click.echo(f"{'layer':<28} {'channels':>8}  {'size':>9}  kind")
    for info in organism.layers(all_modules=all_modules):
        size = f"{info.height}x{info.width}" if info.spatial else "-"
        click.echo(f"{info.name:<28} {info.channels:>8}  {size:>9}  {info.kind}")
    if organism.labels:
        click.echo(f"{'logits':<28} {len(organism.labels):>8}  {'-':>9}  classes (logit:N, prob:N)")


@click.command("models")
def models_cmd():
    """List the built-in model organisms."""
    for name in available():
        click.echo(name)
    click.echo("torchvision:<name>, timm:<name>  (with those packages and their weights installed)")

# Registered on the `featviz` group by featviz/cli/__init__.py, in this order.
COMMANDS = [layers_cmd, models_cmd]
