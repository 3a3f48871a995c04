"""The ``facenet-convert`` command line: a thin click layer over the Python API.

Every ConverterError becomes one line on stderr and a non-zero exit, never a traceback.
Command modules import heavy libraries (torch, TensorFlow) inside their functions so that
``--help`` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import suppress
from typing import Any

import click

from facenet_convert.converter.commands.align import align_command
from facenet_convert.converter.commands.compare import compare_command
from facenet_convert.converter.commands.convert import convert_command
from facenet_convert.converter.commands.declare import DeclaredCommand
from facenet_convert.converter.commands.embed import embed_command
from facenet_convert.converter.commands.evaluate import evaluate_command
from facenet_convert.converter.commands.export import export_command
from facenet_convert.converter.commands.finetune import finetune_command
from facenet_convert.converter.commands.inspect import inspect_command
from facenet_convert.converter.commands.parity import parity_command
from facenet_convert.converter.commands.regenerate import regenerate_command
from facenet_convert.converter.commands.verify import verify_command
from facenet_convert.converter.core.atomic import (
    announce_interrupted,
    install_interrupt_handlers,
    raise_if_interrupted,
)
from facenet_convert.converter.core.errors import ConverterError, Interrupted, one_line
from facenet_convert.converter.core.inputs import describe_os_error
from facenet_convert.converter.core.version import __version__
from facenet_convert.models.preprocessing import MAX_PIXELS, MAX_PIXELS_ENV

#: set (not 0) to see the traceback of an unexpected error instead of its one line
DEBUG_ENV = "FACENET_CONVERT_DEBUG"


class OneLineError(click.ClickException):
    """A ConverterError as click shows it: one line, the error's own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"facenet-convert: error: {self.message}", err=True)


class ConverterGroup(click.Group):
    """Turns library errors raised by any subcommand into :class:`OneLineError`."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        install_interrupt_handlers()
        # A corrupt HDF5 file can make libhdf5 spin: bound it (see sources/keras_h5.py).
        os.environ.setdefault("FACENET_CONVERT_H5_TIMEOUT", "120")
        try:
            return super().main(*args, **kwargs)
        except SystemExit:
            # Done (outputs complete, or an error printed): a signal from now on, while Python
            # shuts down, must not turn the exit status into "killed".
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise
        except Interrupted as error:
            # Outputs are committed all or nothing and a signal during the commit rolls it
            # back, so this line is always true. Exit like a shell reports a fatal signal.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            announce_interrupted()
            if args or kwargs.get("args") is not None:  # run in-process (click's CliRunner)
                sys.exit(128 + error.signum)
            # The process's own command line: it ends without the interpreter's exit-time
            # clean-up, in which a library the signal caught half-started (ray.init) crashed
            # it (SIGSEGV after this line). Everything of ours was undone while unwinding.
            with suppress(OSError, ValueError):
                sys.stdout.flush()
            os._exit(128 + error.signum)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except (Interrupted, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - every error ends as one line
            # A signal came and something on the way turned its exception into another one
            # (a library wrapping it, a fallback catching everything): it is why we stopped.
            raise_if_interrupted()
            raise _one_line_error(error) from None
        except KeyboardInterrupt:  # raised by code that installs its own SIGINT handling
            raise Interrupted(signal.SIGINT) from None
        raise_if_interrupted()      # a swallowed signal: the run did not finish as asked
        return result


def _one_line_error(error: Exception) -> click.ClickException:
    """Any exception a command lets through, as the one line the CLI promises."""
    if isinstance(error, click.UsageError):     # click would print usage over three lines
        where = error.ctx.command_path if error.ctx is not None else "facenet-convert"
        return OneLineError(one_line(f"{error.format_message()} (see '{where} --help')"),
                            error.exit_code)
    if isinstance(error, click.ClickException):
        return error
    if isinstance(error, ConverterError):
        return OneLineError(str(error), error.exit_code)
    if isinstance(error, OSError):  # a path the library did not expect to fail (ENAMETOOLONG)
        where = f"{error.filename}: " if error.filename is not None else ""
        return OneLineError(one_line(f"{where}{describe_os_error(error)}"), 1)
    if isinstance(error, MemoryError):
        return OneLineError("out of memory; the input asks for more than this machine allows",
                            1)
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        raise error
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return OneLineError(one_line(f"unexpected {type(error).__name__}: {first} (an input this "
                                 f"command does not handle, or a bug: please report it; "
                                 f"${DEBUG_ENV}=1 shows the traceback)"), 1)


@click.group(cls=ConverterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="facenet-convert")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Largest image any command decodes, in pixels, checked from the header "
                   f"(default {MAX_PIXELS:,}; also ${MAX_PIXELS_ENV}).")
def main(max_pixels: int | None) -> None:
    """Convert TensorFlow FaceNet weights (checkpoints, frozen graphs, Keras .h5, MTCNN .npy)
    into PyTorch state_dicts, and prove the result computes the same thing."""
    if max_pixels is not None:
        os.environ[MAX_PIXELS_ENV] = str(max_pixels)  # read by models.preprocessing.max_pixels


for command in (inspect_command, align_command, convert_command, parity_command, embed_command,
                verify_command, evaluate_command, compare_command, regenerate_command,
                export_command, finetune_command):
    if not isinstance(command, DeclaredCommand):   # the runner's promises hold for every one
        raise TypeError(f"{command.name} must be a DeclaredCommand (commands/declare.py)")
    main.add_command(command)
