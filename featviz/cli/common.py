"""Options and helpers shared by the CLI commands."""
from __future__ import annotations

import click

from ..models import DEFAULT_MODEL, load

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


def parse_unit(spec: str) -> tuple[str, int]:
    """'blocks.8:12' -> ('blocks.8', 12); anything else is one clear error line."""
    from ..errors import FeatvizError

    layer, sep, unit = spec.rpartition(":")
    try:
        if not sep or not layer:
            raise ValueError
        return layer, int(unit)
    except ValueError:
        raise FeatvizError(f"expected LAYER:UNIT such as blocks.8:12, got {spec!r}") from None


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
