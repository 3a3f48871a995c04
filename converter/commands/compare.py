"""``facenet-convert compare``: upstream compare.py's distance matrix of face images."""

from __future__ import annotations

from pathlib import Path

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.commands.options import (
    ModelOptions,
    detect_options,
    model_options,
    warn,
)
from facenet_convert.converter.comparison import compare_images, matrix_table, write_matrix
from facenet_convert.converter.core.errors import EmbedError
from facenet_convert.converter.embedding import expand_inputs, load_detector


@click.command("compare", cls=DeclaredCommand)
@click.argument("images", nargs=-1, required=True,
                type=Input("images", folder=True, batch=True))
@model_options
@detect_options
@click.option("--json", "json_path",
              type=Output(stdout=True, example="matrix.json"),
              default=None, help="Write names and matrix as JSON ('-': stdout).")
@click.option("--csv", "csv_path",
              type=Output(stdout=True, example="matrix.csv"),
              default=None, help="Write the matrix as CSV ('-': stdout).")
@click.option("--fit", type=click.Choice(["resize", "center_crop"]), default="resize",
              show_default=True, help="Without --detect: how images that are not 160x160 "
              "are fitted.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def compare_command(images: tuple[str, ...], model: ModelOptions, detect: bool,
                    mtcnn_dir: str | None, margin: float, min_face_size: float,
                    json_path: str | None, csv_path: str | None, fit: str,
                    force: bool) -> None:
    """Print the euclidean distance between every two of IMAGES (files or folders), as
    upstream compare.py prints it (best face of each photo with --detect)."""
    from facenet_convert.converter.core.atomic import check_output_path

    paths, missing = expand_inputs(images)
    for out in (json_path, csv_path):
        if out is not None and out != "-":
            check_output_path(out, force=force, inputs=paths)
    # a handful of images: fusing the model for inference would cost more than it saves
    loaded = model.load(fuse=False)
    if loaded.note:
        warn(loaded.note)
    detector = load_detector(mtcnn_dir, margin, min_face_size, model.device) if detect else None
    result = compare_images(loaded, paths, detector=detector, fit=fit)
    result.skipped[:0] = missing
    for path, message in result.skipped:
        warn(message if message.startswith(path) else f"{path}: {message}")
    if not result.names:
        raise EmbedError("no image could be embedded; nothing to compare")
    printed = write_matrix(result, json_path=json_path, csv_path=csv_path, force=force,
                           inputs=[Path(p) for p in paths])
    if printed:
        for text in printed.values():
            click.echo(text, nl=False)
        return
    for line in matrix_table(result.names, result.matrix):
        click.echo(line)
