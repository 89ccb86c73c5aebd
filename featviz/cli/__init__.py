"""The ``featviz`` command line: a thin layer over the library.

Each pillar's module lists its commands; ``_register`` adds them below. Any
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
        except click.exceptions.NoArgsIsHelpError:
            raise  # a bare group: its help, as usual
        except click.UsageError as exc:
            # A bad option value or a missing argument is bad input like any other: one line,
            # the same form, rather than click's usage block.
            where = exc.ctx.command_path if exc.ctx is not None else "featviz"
            click.echo(f"featviz: error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            # Commands that keep partial work say where it is; any other stops here, without a traceback.
            click.echo("featviz: interrupted", err=True)
            sys.exit(130)


@click.group(cls=FeatvizGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featviz")
def main():
    """featviz: see what the units of a vision network have learned."""


def _register() -> None:
    # Explicit, in the order of --help. Command modules never import ``main``: each lists its
    # commands in COMMANDS, and optional libraries are imported inside the commands, so a
    # missing extra gives its one-line install hint when the command runs, not at start-up.
    from . import attribute_cmd, examples_cmd, microscope_cmd, models_cmd, render_cmd, report_cmd, train_cmd

    for module in (models_cmd, render_cmd, examples_cmd, attribute_cmd, microscope_cmd, report_cmd, train_cmd):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
