"""What every command reads and writes, declared on its parameters, and the one runner that
keeps the promises about them.

A command's file parameters use :class:`Input` and :class:`Output` (click path types that say
what they are) and the command is a :class:`DeclaredCommand`. Before the command's own code
runs, the runner, knowing nothing of the command:

* refuses a single input that is a FIFO, socket, device or dangling link (a directory where a
  file is expected) before anything opens it, in one line; for a batch of inputs (``IMAGES``)
  each such entry is reported on its own line and left out, and the batch goes on;
* compares every output, sidecars included, with every input and every other output after
  resolving ``..``, symlinks and hard links, and refuses a match in one line naming both;
* refuses a file output that is a symlink, a folder or another non-regular file, that exists
  without ``--force``, or whose folder does not exist;
* refuses an output (file or folder) inside an input folder the command reads file by file
  (:data:`SCANNED_KINDS`: photos, training images), where it would be read back as input;
* refuses an input inside an output folder the command owns (``Output(owned=True)``: it
  replaces and removes files there), or a hard link of a file in it;
* refuses a number option that is NaN or infinite (click's ``FloatRange`` lets NaN through).

While the command runs, the runner holds the lock of every folder output
(:mod:`facenet_convert.converter.core.locks`): a second run into the same folder stops at once.
The commits themselves (create-exclusive, all or nothing), signals and one-line errors are
:mod:`facenet_convert.converter.core.atomic` and the group in :mod:`facenet_convert.converter.cli`.
``tests/test_command_contract.py`` enumerates the group and attacks every declared parameter.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from facenet_convert.converter.core.atomic import check_output_path
from facenet_convert.converter.core.errors import OutputError, SourceError, one_line
from facenet_convert.converter.core.inputs import (
    describe_os_error,
    file_identity,
    input_inside,
    regular_file_problem,
    same_file,
)
from facenet_convert.converter.core.locks import exclusive_folder

#: What an input holds; the contract test builds a valid sample of each kind.
INPUT_KINDS = ("source", "weights", "image", "images", "pairs", "embeddings", "list", "folder",
               "mtcnn", "releases", "schedule")
#: Input kinds whose folders are read file by file (photos, training images): an output
#: written inside one would be read back as input by this run or the next.
SCANNED_KINDS = ("images", "folder")

Sidecars = Callable[[str, Mapping[str, Any]], list[str]]


class Input(click.Path):
    """A path the command reads. ``kind``: what it holds (:data:`INPUT_KINDS`). ``folder``:
    a folder is accepted (else only a file); ``batch``: one of many (``nargs=-1``), where a bad
    entry is reported and left out instead of ending the run; ``may_be_missing``: a name the
    command resolves itself (a checkpoint prefix)."""

    role = "input"

    def __init__(self, kind: str, *, folder: bool = False, batch: bool = False,
                 may_be_missing: bool = False) -> None:
        if kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind {kind!r}")
        super().__init__(path_type=str, dir_okay=True, file_okay=True)
        # the help's metavar says what is expected; the runner, not click, checks the path
        self.name = ("directory" if kind in ("folder", "mtcnn", "releases")
                     else "path" if folder else "file")
        self.kind = kind
        self.folder = folder
        self.batch = batch
        self.may_be_missing = may_be_missing


class Output(click.Path):
    """A path the command writes. ``folder``: a folder of results (align, regenerate), whose
    existence is the command's business; ``sidecars``: the other files written beside it,
    from its value and the command's parameters (``x.npy`` -> ``x.names.txt``); ``stdout``:
    ``-`` means standard output; ``replaces``: an existing file is replaced without ``--force``
    (a report rewritten on every run); ``owned``: a folder whose files the command replaces
    and removes (finetune's checkpoints), so that no input may live in it; ``example``: a file
    name this output accepts (``out.npz``), from which the contract test builds its runs."""

    role = "output"

    def __init__(self, *, folder: bool | Callable[[Mapping[str, Any]], bool] = False,
                 sidecars: Sidecars | None = None, stdout: bool = False,
                 replaces: bool = False, owned: bool = False, example: str = "out") -> None:
        super().__init__(path_type=str, dir_okay=True, file_okay=True)
        self.name = "directory" if folder is True else "path" if folder else "file"
        self.folder = folder
        self.sidecars = sidecars
        self.stdout = stdout
        self.replaces = replaces
        self.owned = owned
        self.example = example          # a name of the right type, for tests and docs

    def is_folder(self, params: Mapping[str, Any]) -> bool:
        return self.folder(params) if callable(self.folder) else self.folder


@dataclass(frozen=True)
class Declared:
    """One declared path of an invocation: the parameter, its flag, and the path."""

    name: str
    flag: str
    path: str
    kind: Input | Output
    sidecar_of: str | None = None


def _flag(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.opts:
        return max(param.opts, key=len)
    return (param.name or "").upper()


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [str(v) for v in value]
    return [str(value)]


def declared(command: click.Command, params: Mapping[str, Any]) -> Iterator[Declared]:
    """Every path an invocation names, inputs first; sidecars follow their output."""
    for role in ("input", "output"):
        for param in command.params:
            kind = param.type
            if (not isinstance(kind, (Input, Output)) or kind.role != role
                    or param.name is None):
                continue
            for path in _values(params.get(param.name)):
                if isinstance(kind, Output) and kind.stdout and path == "-":
                    continue
                yield Declared(param.name, _flag(param), path, kind)
                if isinstance(kind, Output) and kind.sidecars is not None:
                    for extra in kind.sidecars(path, params):
                        yield Declared(param.name, _flag(param), extra, kind, sidecar_of=path)


def say(line: str) -> None:
    """One line on stderr, printable whatever it quotes (file names may hold control
    characters): every command's warnings and notes go through here."""
    click.echo(one_line(line), err=True)


def warn(message: str) -> None:
    say(f"facenet-convert: warning: {message}")


def _input_problem(item: Declared) -> str | None:
    """Why an input cannot be read, before anything opens it (None: fine, or the command's
    own business, such as a checkpoint prefix that is no file)."""
    if os.path.isdir(item.path):
        folder = isinstance(item.kind, Input) and item.kind.folder
        return None if folder else "a directory; give a file"
    if not os.path.lexists(item.path):
        return None                   # the command says what it expected there
    return regular_file_problem(item.path)


def _check_numbers(ctx: click.Context) -> None:
    for param in ctx.command.params:
        if not isinstance(param.type, click.types.FloatParamType):
            continue
        value = ctx.params.get(param.name or "")
        values = value if isinstance(value, (tuple, list)) else [value]
        for number in values:
            if number is not None and not math.isfinite(number):
                raise click.BadParameter(f"{number!r} is not a finite number", ctx=ctx,
                                         param=param)


def _check_owned(folder: Declared, inputs: list[Declared]) -> None:
    """No input inside (or hard-linked into) a folder whose files the command replaces."""
    root = os.path.realpath(folder.path)
    if not os.path.isdir(root):
        return
    linked: dict[tuple[int, int], str] = {}
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    linked[(info.st_dev, info.st_ino)] = entry.path
    except OSError as error:
        raise OutputError(f"cannot list output {folder.flag} ({describe_os_error(error)})",
                          path=folder.path) from None
    for source in inputs:
        if (input_inside(root, [source.path]) is not None
                or file_identity(source.path)[1] in linked):
            raise OutputError(f"input {source.flag} {Path(source.path)} is inside output "
                              f"{folder.flag} {Path(folder.path)}, whose files this command "
                              "replaces and removes; move the input out of that folder or "
                              "choose another output folder", path=source.path)


def _check_outside_scanned(output: Declared, inputs: list[Declared]) -> None:
    """An output is neither a folder the command reads file by file nor inside one."""
    for source in inputs:
        if (isinstance(source.kind, Input) and source.kind.kind in SCANNED_KINDS
                and os.path.isdir(source.path)
                and input_inside(source.path, [output.path]) is not None):
            raise OutputError(f"output {output.flag} {Path(output.path)} is inside input "
                              f"{source.flag} {Path(source.path)}, whose files this command "
                              "reads (it would read its own outputs back); choose an output "
                              "outside that folder", path=output.path)


def check_invocation(ctx: click.Context) -> None:
    """The runner's checks (see the module docstring); may drop bad batch entries from
    ``ctx.params``."""
    _check_numbers(ctx)
    command = ctx.command
    items = list(declared(command, ctx.params))
    dropped: dict[str, set[str]] = {}
    for item in items:
        if not isinstance(item.kind, Input):
            continue
        problem = _input_problem(item)
        if problem is None:
            continue
        if item.kind.batch:
            warn(f"{item.path}: {problem}; skipped")
            dropped.setdefault(item.name, set()).add(item.path)
        else:
            raise SourceError(f"{problem} ({item.flag})", path=item.path)
    for name, bad in dropped.items():
        ctx.params[name] = tuple(v for v in ctx.params[name] if str(v) not in bad)
    inputs = [item for item in items if isinstance(item.kind, Input)
              and item.path not in dropped.get(item.name, ())]
    outputs = [item for item in items if isinstance(item.kind, Output)]
    force = bool(ctx.params.get("force", False))
    seen: list[tuple[Declared, tuple[str, tuple[int, int] | None]]] = []
    for item in outputs:
        identity = file_identity(item.path)
        what = f"{item.flag} {'sidecar ' if item.sidecar_of else ''}{Path(item.path)}"
        for source in inputs:
            if same_file(identity, file_identity(source.path)):
                raise OutputError(f"{what} is the same file as input {source.flag} "
                                  f"{Path(source.path)}; choose another output path",
                                  path=item.path)
        for other, other_identity in seen:
            if same_file(identity, other_identity):
                raise OutputError(f"{what} and output {other.flag} {Path(other.path)} are "
                                  "one path given twice; give each output its own path",
                                  path=item.path)
        seen.append((item, identity))
        _check_outside_scanned(item, inputs)
        kind = item.kind
        if not isinstance(kind, Output):
            continue
        if not kind.is_folder(ctx.params):
            check_output_path(item.path, force=force or kind.replaces)
        elif kind.owned:
            _check_owned(item, inputs)



class DeclaredCommand(click.Command):
    """A command whose paths are :class:`Input` / :class:`Output`: the runner checks them
    before the command's code runs."""

    def invoke(self, ctx: click.Context) -> Any:
        check_invocation(ctx)
        with contextlib.ExitStack() as locks:
            for item in declared(self, ctx.params):
                if isinstance(item.kind, Output) and item.kind.is_folder(ctx.params):
                    locks.enter_context(exclusive_folder(item.path, f"output {item.flag}"))
            return super().invoke(ctx)
