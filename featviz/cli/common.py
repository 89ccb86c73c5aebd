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
# MODEL is a name (featviz models), a model spec file (my_net.toml) or torchvision:/timm:<arch>;
# both decorators also add --weights (below), which load_model reads.
def model_argument(f):
    return weights_option(click.argument("model", metavar="MODEL")(f))


def optional_model_argument(f):
    return weights_option(click.argument("model", default=DEFAULT_MODEL, metavar="[MODEL]")(f))


device_option = click.option("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")

_WEIGHTS_KEY = "featviz.weights"


def _remember_weights(ctx: click.Context, _param, value):
    if value is not None:
        ctx.meta[_WEIGHTS_KEY] = value
    return value


# Every command that takes MODEL takes --weights: load_model reads it from the click context, so a
# command only adds the decorator. MODEL may also be a spec file (my_net.toml) naming its weights.
weights_option = click.option(
    "--weights", type=click.Path(dir_okay=False), default=None, expose_value=False, callback=_remember_weights,
    is_eager=True, help="state dict (.pt/.pth/.safetensors) to load into MODEL: the short form of a model spec "
                        "(a classifier of another size is resized to the checkpoint)")


def load_model(name: str, device: str | None = None, weights: str | None = None):
    """Load a model organism (name or spec file) on the requested device (CUDA if present and not
    stated), with the command's --weights unless ``weights`` is given."""
    import torch

    if weights is None:
        ctx = click.get_current_context(silent=True)
        weights = ctx.meta.get(_WEIGHTS_KEY) if ctx is not None else None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load(name, device=device, weights=weights)


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


def parse_range(text: str, limit: int | None = None, what: str = "index") -> list[int]:
    """'0-31' / '3,7,9' / '0-3,8' -> list of ints, each checked against ``limit`` (exclusive) before any
    range is expanded, so '0-999999999' costs nothing to refuse."""
    bounds: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            low, high = (int(first), int(last)) if sep else (int(part), int(part))
        except ValueError:
            raise click.BadParameter(f"expected numbers like 0-31 or 3,7,9, got {part!r}") from None
        if high < low:
            raise click.BadParameter(f"empty range {part!r}")
        if limit is not None and high >= limit:
            raise click.BadParameter(f"{what} {high} is out of range: valid are 0-{limit - 1}")
        bounds.append((low, high))
    if not bounds:
        raise click.BadParameter("no indices given")
    count = sum(high - low + 1 for low, high in bounds)
    if count > MAX_INDICES:
        raise click.BadParameter(f"{count} indices is too many (at most {MAX_INDICES})")
    return [i for low, high in bounds for i in range(low, high + 1)]


MAX_INDICES = 1_000_000  # more units or classes than any layer or model has


def parse_indices(text: str, option: str, limit: int | None = None, what: str = "index") -> list[int]:
    """``parse_range`` for an option, its complaint as one ``featviz: error`` line naming the option."""
    from ..errors import FeatvizError

    try:
        return parse_range(text, limit, what)
    except click.BadParameter as exc:
        raise FeatvizError(f"{option}: {exc.message}") from None


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
