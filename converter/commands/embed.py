"""``facenet-convert embed``: FaceNet embeddings of face images, or of the faces MTCNN finds.

The work is :mod:`facenet_convert.converter.embedding`; this module parses options, shows
progress and prints. Images that cannot be read, or hold no face with ``--detect``, are reported
on stderr and skipped; the run fails (and writes nothing) only when no embedding was produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.commands.options import (
    ModelOptions,
    Progress,
    alignment_options,
    detect_options,
    model_options,
    scale_options,
    warn,
)
from facenet_convert.converter.core.errors import EmbedError
from facenet_convert.converter.embedding import (
    embed_images,
    expand_inputs,
    load_detector,
    output_paths,
    write_embeddings,
)


def _on_ray(params: Mapping[str, Any]) -> bool:
    """With --engine ray the output is a folder of shards."""
    return params.get("scale_engine") == "ray"


def _sidecars(output: str, params: Mapping[str, Any]) -> list[str]:
    """``x.npy`` brings ``x.names.txt``."""
    if _on_ray(params) or not output.lower().endswith(".npy"):
        return []
    return [str(path) for path in output_paths(output)[1:]]


@click.command("embed", cls=DeclaredCommand)
@click.argument("images", nargs=-1, type=Input("images", folder=True, batch=True))
@click.option("-o", "--output", required=True,
              type=Output(folder=_on_ray, sidecars=_sidecars, example="embeddings.npy"),
              help="Output file: .npz (names + embeddings), .npy (+ .names.txt) or .csv; "
              "with --engine ray a folder (Parquet shards + manifest.json).")
@click.option("--input-list", type=Input("list"), default=None,
              help="Also embed the files listed in this .txt (one path per line) or .parquet "
              "('path' column); relative paths are relative to the list's folder.")
@model_options
@detect_options
@alignment_options
@click.option("--fit", type=click.Choice(["resize", "center_crop"]), default="resize",
              show_default=True, help="Without --detect: how images that are not 160x160 "
              "are fitted (bilinear resize, or upstream's central crop).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes for decoding (without --detect).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs (--engine ray: "
              "recompute every shard).")
@scale_options
def embed_command(images: tuple[str, ...], output: str, input_list: str | None,
                  model: ModelOptions, detect: bool, mtcnn_dir: str | None, margin: float,
                  min_face_size: float, alignment: str, template: str, fit: str,
                  batch_size: int, workers: int, force: bool,
                  scale_engine: str, ray_address: str | None, actors: int,
                  shard_size: int) -> None:
    """Write FaceNet embeddings of IMAGES (files or folders) to OUTPUT."""
    from facenet_convert.converter.core.atomic import check_output_path

    if not images and input_list is None:
        raise EmbedError("nothing to embed: give IMAGES (files or folders) or --input-list")
    if alignment != "box" and not detect:
        raise EmbedError(f"--alignment {alignment} needs --detect (without it every image is "
                         "taken as an aligned face crop)")
    if input_list is not None or scale_engine == "ray":
        from facenet_convert.converter.scale import list_inputs

        paths, missing = list_inputs(images, input_list)
    else:
        paths, missing = expand_inputs(images)
    if scale_engine == "ray":
        spec = model.spec(fuse=True, detect=detect, mtcnn_dir=mtcnn_dir, margin=margin,
                          min_face_size=min_face_size, fit=fit, batch_size=batch_size,
                          alignment=alignment, template=template)
        _embed_on_ray(paths, missing, output, spec, force, ray_address, actors, shard_size)
        return
    targets = output_paths(output)
    paths_and_weights = [*paths, *([model.weights] if model.weights else [])]
    for target in targets:
        check_output_path(target, force=force, inputs=paths_and_weights)
    # the detector first: bad --mtcnn weights fail before the engine is exported and cached
    detector = (load_detector(mtcnn_dir, margin, min_face_size, model.device,
                              alignment=alignment, template=template) if detect else None)
    loaded = model.load()
    if loaded.note:
        warn(loaded.note)
    if loaded.engine.note:     # builds and checks the engine before any image is read
        warn(loaded.engine.note)

    with Progress("embedding", len(paths)) as progress:
        result = embed_images(loaded, paths, skipped=missing, detector=detector,
                              batch_size=batch_size, workers=workers, fit=fit,
                              on_done=progress.update)
    for path, message in result.skipped:
        warn(message if message.startswith(path) else f"{path}: {message}")
    if not result.names:
        raise EmbedError(f"no embeddings: all {len(paths) + len(missing)} inputs were skipped; "
                         "nothing written", path=output)
    write_embeddings(output, result, loaded.embedding_size, force=force,
                     inputs=paths_and_weights,
                     detected=detector is not None)
    what = "faces" if detector is not None else "images"
    click.echo(f"wrote {len(result.names)} embeddings ({loaded.embedding_size}-d, "
               f"{loaded.preprocessing}) of {what} from {len(paths)} images to {output}; "
               f"{len(result.skipped)} skipped")


def _embed_on_ray(paths: list[Any], missing: list[tuple[str, str]], output: str, spec: Any,
                  force: bool, ray_address: str | None, actors: int, shard_size: int) -> None:
    """--engine ray: Parquet shards and manifest.json in the OUTPUT folder (converter/scale.py)."""
    from facenet_convert.converter.core.checks import dumps as json_dumps
    from facenet_convert.converter.scale import (
        RayOptions,
        embed_to_shards,
        is_loopback,
        require_ray,
    )

    require_ray(is_loopback(ray_address))     # before loading any model: say how to install
    loaded, _ = spec.load()
    for note in (loaded.note, loaded.engine.note):   # builds the engine (and its cache) once
        if note:
            warn(note)
    with Progress("embedding (ray)", len(paths)) as progress:
        summary = embed_to_shards(paths, output, spec, skipped=missing, force=force,
                                  loaded=loaded, options=RayOptions(ray_address, actors,
                                                                    shard_size),
                                  on_done=progress.update)
    if summary.skipped:
        warn(f"{summary.skipped} of {summary.inputs} inputs skipped; reasons in "
             f"{summary.manifest}")
    click.echo(json_dumps(summary.as_dict(), indent=2))
