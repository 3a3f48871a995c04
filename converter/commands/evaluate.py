"""``facenet-convert evaluate``: LFW-protocol accuracy, VAL@FAR, AUC, EER, as upstream computes.

The work is :mod:`facenet_convert.converter.evaluation` (upstream ``validate_on_lfw.py``'s
numbers, equal to the last digit); this module parses options, shows progress and prints.
"""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.commands.options import (
    ModelOptions,
    Progress,
    detect_options,
    model_options,
    scale_options,
    warn,
)
from facenet_convert.converter.core.errors import EvaluationError
from facenet_convert.converter.evaluation import (
    DEFAULT_FAR,
    METRICS,
    evaluate_pairs,
    plan_pairs,
    write_report,
)

FUSE_FROM = 256  # images; below this the plain model finishes before an engine is ready


def _extension(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An image extension (``png``, ``.jpg``): letters and digits, no path parts."""
    if value is None:
        return None
    bare = value.removeprefix(".")
    if not (bare.isascii() and bare.isalnum() and 0 < len(bare) <= 10):
        raise click.BadParameter(f"{value!r} is not an image extension such as png or jpg")
    return bare


@click.command("evaluate", cls=DeclaredCommand)
@click.argument("pairs", type=Input("pairs"))
@click.argument("images_dir", type=Input("folder", folder=True))
@model_options
@click.option("--embeddings", "embeddings_file", type=Input("embeddings"), default=None,
              help="Use the embeddings of an `embed` .npz instead of a model.")
@detect_options
@click.option("--ext", default=None, metavar="EXT", callback=_extension,
              help="Image extension in the name/name_NNNN.EXT layout (default: jpg, then png, "
              "as upstream).")
@click.option("--folds", type=click.IntRange(min=2), default=10, show_default=True,
              help="Cross-validation folds (contiguous, as upstream's KFold).")
@click.option("--distance-metric", type=click.Choice(list(METRICS)), default="euclidean",
              show_default=True, help="euclidean: squared distance (upstream 0); cosine: "
              "arccos(similarity)/pi (upstream 1).")
@click.option("--subtract-mean", is_flag=True,
              help="Subtract the training folds' mean embedding first (upstream option).")
@click.option("--use-flipped-images", is_flag=True,
              help="Concatenate each image's embedding with its mirror image's (upstream).")
@click.option("--far", type=click.FloatRange(min=0, min_open=True, max=1), default=DEFAULT_FAR,
              show_default=True, help="Target false accept rate for VAL and the calibration.")
@click.option("--calibrate", is_flag=True,
              help="Print only the calibrated threshold for --far (verify's units when the "
              "metric is plain euclidean), for scripts.")
@click.option("--compare-with", "compare_with",
              type=Input("source", folder=True, may_be_missing=True), default=None,
              metavar="SOURCE", help="Also embed the pairs with this TF checkpoint/.meta/.pb "
              "and report task-level parity (needs the tf extra).")
@click.option("--json", "json_path", type=Output(example="evaluation.json"),
              default=None, help="Write every figure as JSON.")
@click.option("--roc", "roc_path", type=Output(example="roc.csv"), default=None,
              help="Write the ROC curve: .png (matplotlib) or .csv (threshold,fpr,tpr).")
@click.option("--fit", type=click.Choice(["resize", "center_crop"]), default="resize",
              show_default=True, help="Without --detect: how images that are not 160x160 "
              "are fitted.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes for decoding (without --detect).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@scale_options
def evaluate_command(pairs: str, images_dir: str, model: ModelOptions,
                     embeddings_file: str | None, detect: bool, mtcnn_dir: str | None,
                     margin: float, min_face_size: float,
                     ext: str | None, folds: int, distance_metric: str, subtract_mean: bool,
                     use_flipped_images: bool, far: float, calibrate: bool,
                     compare_with: str | None, json_path: str | None, roc_path: str | None,
                     fit: str, batch_size: int, workers: int, force: bool,
                     scale_engine: str, ray_address: str | None, actors: int,
                     shard_size: int) -> None:
    """Evaluate face verification on PAIRS (LFW pairs.txt format) over IMAGES_DIR
    (name/name_NNNN.jpg) with upstream validate_on_lfw.py's protocol."""
    from pathlib import Path

    from facenet_convert.converter.core.atomic import check_output_path
    from facenet_convert.converter.embedding import load_detector

    plan = plan_pairs(pairs, images_dir, ext)
    inputs = [Path(pairs), *plan.unique_paths] + ([Path(embeddings_file)]
                                                  if embeddings_file else [])
    for out in (json_path, roc_path):
        if out is not None:
            check_output_path(out, force=force, inputs=inputs)
    if roc_path is not None and Path(roc_path).suffix.lower() not in (".png", ".csv"):
        raise EvaluationError("--roc expects a .png or .csv file", path=roc_path)
    if plan.resolved.missing:
        line, what = plan.resolved.missing[0]
        warn(f"skipped {len(plan.resolved.missing)} of {plan.total_pairs} pairs with a missing "
             f"image (first: line {line}, {what})")
    loaded = detector = None
    if embeddings_file is None or model.chosen:
        # an engine (export + self-check) takes seconds to start: worth it for LFW's 13k
        loaded = model.load(fuse=len(plan.unique_paths) >= FUSE_FROM)
        if loaded.note:
            warn(loaded.note)
        detector = load_detector(mtcnn_dir, margin, min_face_size, model.device) if detect else None
    embed = None
    if scale_engine == "ray" and loaded is not None:    # the embedding step on Ray actors
        from facenet_convert.converter.scale import RayOptions, path_embedder

        spec = model.spec(fuse=loaded.fuse, detect=detect, mtcnn_dir=mtcnn_dir, margin=margin,
                          min_face_size=min_face_size, fit=fit, batch_size=batch_size)
        embed = path_embedder(spec, RayOptions(ray_address, actors, shard_size))

    with Progress("embedding", len(plan.unique_paths) if loaded is not None else 0
                  ) as progress:
        result = evaluate_pairs(plan, loaded=loaded, embeddings_file=embeddings_file,
                                detector=detector, folds=folds, metric=distance_metric,
                                subtract_mean=subtract_mean, flipped=use_flipped_images,
                                far_target=far, compare_with=compare_with,
                                batch_size=batch_size, workers=workers, fit=fit, embed=embed,
                                on_done=progress.update)
    for path, message in result.skipped_images:
        warn(message if message.startswith(path) else f"{path}: {message}")
    if result.dropped_pairs:
        warn(f"{result.dropped_pairs} pairs dropped: an image could not be embedded")
    title = f"{model.weights or model.pretrained or embeddings_file} on {Path(pairs).name}"
    write_report(result.evaluation, json_path=json_path, roc_path=roc_path, force=force,
                 inputs=inputs, title=title, extra=result.extra())
    if calibrate:
        cal = result.evaluation.calibration
        value = cal.verify_threshold if cal.verify_threshold is not None else cal.threshold
        click.echo(f"{value:.4f}")
        return
    for line in result.lines():
        click.echo(line)
