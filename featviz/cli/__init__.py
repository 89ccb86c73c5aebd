"""The ``featviz`` command line: a thin layer over the library.

Each pillar registers its commands from its own module below. Any
``FeatvizError`` (bad model, layer, index, image...) becomes one line on
stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import sys

import click

from ..errors import FeatvizError


class FeatvizGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatvizError as exc:
            click.echo(f"featviz: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=FeatvizGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featviz")
def main():
    """featviz: see what the units of a vision network have learned."""


def _register() -> None:
    # Import order = order in --help. Each module adds its commands to ``main``.
    from . import models_cmd, render_cmd  # noqa: F401
    for optional in ("examples_cmd", "attribute_cmd", "microscope_cmd", "report_cmd"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{optional}":
                raise


_register()
