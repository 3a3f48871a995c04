"""``facenet-convert inspect``: what a source holds, without TensorFlow and without reading data."""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input
from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.inspection import describe, render_text


@click.command("inspect", cls=DeclaredCommand)
@click.argument("source", type=Input("source", folder=True, may_be_missing=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts).")
@click.option("--verify", is_flag=True,
              help="Also read every tensor, checking each checksum and length.")
def inspect_command(source: str, as_json: bool, verify: bool) -> None:
    """Show what SOURCE holds: format, tensors (name, dtype, shape), total bytes, and the
    detected architecture, naming scheme, embedding size, class count, EMA shadows and
    optimizer slots. Reads no tensor data unless --verify, and needs no TensorFlow."""
    info = describe(source, verify=verify)
    click.echo(json_dumps(info, indent=2) if as_json else render_text(info))
