"""``facenet-convert convert``: a thin click layer over :func:`converter.convert`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.commands.options import Progress
from facenet_convert.converter.registry import names


def _split_outputs(output: str, params: Mapping[str, Any]) -> list[str]:
    """``--split`` writes ``<stem>-features`` and ``<stem>-logits`` beside OUTPUT."""
    from facenet_convert.converter.writers import split_paths

    return [str(path) for path in split_paths(output)] if params.get("split") else []


@click.command("convert", cls=DeclaredCommand)
@click.argument("source", type=Input("source", folder=True, may_be_missing=True))
@click.option("-o", "--output", required=True,
              type=Output(sidecars=_split_outputs, example="out.pt"),
              help="Output file (.pt or .safetensors).")
@click.option("--model", type=click.Choice(["auto", *names()]), default="auto",
              show_default=True, help="Target model; auto detects it from the source.")
@click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
              help="raw variables (what upstream inference restores) or their EMA shadows.")
@click.option("--format", "format_", type=click.Choice(["pt", "safetensors"]), default=None,
              help="Output format (default: from the output extension).")
@click.option("--split", is_flag=True,
              help="Also write <stem>-features and <stem>-logits files (facenet-pytorch style).")
@click.option("--strict", is_flag=True, help="Fail on NaN/Inf weights instead of reporting them.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--report", type=Output(example="report.json"), default=None,
              help="Write a JSON report of every mapping decision.")
def convert_command(source: str, output: str, model: str, weights: str, format_: str | None,
                    split: bool, strict: bool, force: bool, report: str | None) -> None:
    """Convert SOURCE (checkpoint dir/prefix/.index, frozen .pb, Keras .h5, MTCNN det*.npy)
    into a PyTorch state_dict that accounts for every tensor."""
    from facenet_convert.converter.conversion import convert

    with Progress("converting") as bar:
        def progress(done: int, total: int, key: str) -> None:
            bar.start(total)
            bar.update(1)

        result = convert(source, model, weights=weights, strict=strict, output=output,
                         format=format_, split=split, force=force, report=report,
                         progress=progress)
    click.echo(result.summary())
