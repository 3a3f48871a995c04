"""``facenet-convert align``: face crops of a photo dataset, as upstream align_dataset_mtcnn.py.

The work is :func:`facenet_convert.converter.align.align_dataset`; this module parses options,
shows a progress bar on a terminal, reports each photo that could not be aligned on stderr and
prints the JSON summary on stdout.
"""

from __future__ import annotations

import click

from facenet_convert.converter.align import SELECTIONS, AlignOptions, align_dataset, mtcnn_nets
from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.commands.options import (
    Progress,
    alignment_options,
    scale_options,
    warn,
)
from facenet_convert.converter.core.checks import dumps as json_dumps


@click.command("align", cls=DeclaredCommand)
@click.argument("input_dir", type=Input("folder", folder=True))
@click.argument("output_dir", type=Output(folder=True, example="aligned"))
@click.option("--image-size", type=click.IntRange(min=1), default=160, show_default=True,
              help="Side of the square crops (upstream's script default is 182).")
@click.option("--margin", type=click.FloatRange(min=0), default=32.0, show_default=True,
              help="Pixels of the photo added around each box (upstream's default is 44).")
@click.option("--detect-multiple-faces", is_flag=True,
              help="Crop every face (<stem>_<i>.png) instead of one per photo.")
@click.option("--selection", type=click.Choice(SELECTIONS), default="upstream",
              show_default=True, help="Which face to keep without --detect-multiple-faces "
              "(upstream: largest area minus twice the squared offset from the centre).")
@click.option("--min-face-size", type=click.FloatRange(min=1), default=20.0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes (0: detect in this process).")
@click.option("--resume", is_flag=True, help="Skip photos whose crops exist (a rerun of an "
              "interrupted job).")
@click.option("--force", is_flag=True, help="Redo photos whose crops exist.")
@click.option("--device", default="cpu", show_default=True, help="torch device for MTCNN.")
@click.option("--mtcnn", "mtcnn_dir", type=Input("mtcnn", folder=True),
              default=None, help="Folder with pnet/rnet/onet weights (default: the weights shipped "
              "in the package).")
@alignment_options
@scale_options
def align_command(input_dir: str, output_dir: str, image_size: int, margin: float,
                  detect_multiple_faces: bool, selection: str, min_face_size: float,
                  workers: int, resume: bool, force: bool, device: str,
                  mtcnn_dir: str | None, alignment: str, template: str, scale_engine: str,
                  ray_address: str | None, actors: int, shard_size: int) -> None:
    """Detect faces in INPUT_DIR/<class>/<photos> and write aligned crops to OUTPUT_DIR.

    INPUT_DIR may also be a .txt (one path per line) or .parquet ('path' column) list of
    photos, e.g. on shared storage: each photo's class is its parent folder's name."""
    options = AlignOptions(image_size=image_size, margin=margin,
                           detect_multiple_faces=detect_multiple_faces, selection=selection,
                           min_face_size=min_face_size, device=device,
                           nets=mtcnn_nets(mtcnn_dir), alignment=alignment, template=template)
    if scale_engine == "ray":     # always resumes finished shards; --force recomputes them
        from facenet_convert.converter.scale import RayOptions, align_to_shards

        with Progress("aligning (ray)") as progress:
            scaled = align_to_shards(input_dir, output_dir, options, force=force,
                                     ray_options=RayOptions(ray_address, actors, shard_size),
                                     on_total=progress.start, on_done=progress.update)
        if scaled.skipped:
            warn(f"{scaled.skipped} of {scaled.inputs} photos not aligned; reasons in "
                 f"{scaled.manifest}")
        click.echo(json_dumps(scaled.as_dict(), indent=2))
        return
    with Progress("aligning") as progress:
        summary = align_dataset(input_dir, output_dir, options=options, workers=workers,
                                resume=resume, force=force, on_total=progress.start,
                                on_done=progress.update)
    for failure in summary.failed:
        reason = failure["reason"]
        warn(reason if reason.startswith(failure["path"]) else f"{failure['path']}: {reason}")
    click.echo(json_dumps(summary.as_dict(), indent=2))
