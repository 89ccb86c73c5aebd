"""Options and helpers shared by the CLI commands."""
from __future__ import annotations

import click

from ..imageio import check_output, writes_to_stdout
from ..models import DEFAULT_MODEL, load

class OutputPath(click.Path):
    """click.Path for a file or folder featviz writes: an empty value is refused (click.Path with
    path_type=Path would turn it into '.', the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value == "":
            self.fail("the output path is empty; give a name", param, ctx)
        return super().convert(value, param, ctx)


# MODEL is required: an optional first argument would swallow the next one
# (click fills arguments left to right). Only `featviz layers` defaults it.
model_argument = click.argument("model", metavar="MODEL")
optional_model_argument = click.argument("model", default=DEFAULT_MODEL, metavar="[MODEL]")
device_option = click.option("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")


def load_model(name: str, device: str | None = None):
    """Load a model organism on the requested device (CUDA if present and not stated)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load(name, device=device)


def parse_range(text: str) -> list[int]:
    """'0-31' / '3,7,9' / '0-3,8' -> list of ints."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            if sep:
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise click.BadParameter(f"empty range {part!r}")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise click.BadParameter(f"expected numbers like 0-31 or 3,7,9, got {part!r}") from None
    if not out:
        raise click.BadParameter("no indices given")
    return out


def engine_options(f):
    """--engine local|ray and --address, for the commands that can run on a Ray cluster."""
    from ..engine import ENGINES

    f = click.option("--address", default=None,
                     help="with --engine ray: the cluster to join, e.g. auto or ray://head:10001 "
                          "(default: start Ray on this machine)")(f)
    return click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
                        help="where the work runs: this process, or Ray workers (pip install 'featviz[ray]')")(f)


def make_engine(name: str, address: str | None):
    from ..engine import get_engine

    return get_engine(name, address)


def check_outputs(*paths) -> None:
    """Refuse an output path that cannot be written before any work is done (None: not asked for)."""
    for path in paths:
        if path is not None:
            check_output(path)


def echo_for(out, message: str) -> None:
    """A message about the file ``out``: on stderr when the file itself goes to standard output."""
    click.echo(message, err=writes_to_stdout(out))
