"""The ``facenet-convert`` command line: a thin click layer over the Python API.

Every ConverterError becomes one line on stderr and a non-zero exit, never a traceback.
Command modules import heavy libraries (torch, TensorFlow) inside their functions so that
``--help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from facenet_convert.converter.commands.convert import convert_command
from facenet_convert.converter.commands.embed import embed_command
from facenet_convert.converter.commands.inspect import inspect_command
from facenet_convert.converter.commands.parity import parity_command
from facenet_convert.converter.commands.regenerate import regenerate_command
from facenet_convert.converter.commands.verify import verify_command
from facenet_convert.converter.core.errors import ConverterError
from facenet_convert.converter.core.version import __version__


class OneLineError(click.ClickException):
    """A ConverterError as click shows it: one line, the error's own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"facenet-convert: error: {self.message}", err=True)


class ConverterGroup(click.Group):
    """Turns library errors raised by any subcommand into :class:`OneLineError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConverterError as error:
            raise OneLineError(str(error), error.exit_code) from error


@click.group(cls=ConverterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="facenet-convert")
def main() -> None:
    """Convert TensorFlow FaceNet weights (checkpoints, frozen graphs, Keras .h5, MTCNN .npy)
    into PyTorch state_dicts, and prove the result computes the same thing."""


main.add_command(inspect_command)
main.add_command(convert_command)
main.add_command(parity_command)
main.add_command(embed_command)
main.add_command(verify_command)
main.add_command(regenerate_command)
