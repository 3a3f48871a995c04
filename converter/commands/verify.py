"""``facenet-convert verify``: are two face images the same person?

The metric is upstream's (``compare.py``, ``validate_on_lfw.py`` with ``--distance_metric 0``):
the euclidean distance between the two L2-normalized embeddings, in [0, 2]; below the threshold
means "same". The default threshold 1.1 is a value commonly used with the 2018 releases (a
community value, not calibrated by this project); upstream picks its threshold per data set by
10-fold cross-validation on LFW. ``facenet-convert evaluate PAIRS DIR --far 1e-3 --calibrate``
prints the value for your own pairs and model (the square root of upstream's squared-distance
threshold, as this command compares plain euclidean distances). With ``--detect`` the
best-scoring face of each photo is used (as ``compare.py`` takes the first box); without it
each image is an aligned face crop.
"""

from __future__ import annotations

from pathlib import Path

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input
from facenet_convert.converter.commands.options import (
    ModelOptions,
    detect_options,
    model_options,
    warn,
)
from facenet_convert.converter.embedding import (
    DEFAULT_THRESHOLD,
    load_detector,
    verify_pair,
)


@click.command("verify", cls=DeclaredCommand)
@click.argument("image1", type=Input("image"))
@click.argument("image2", type=Input("image"))
@model_options
@detect_options
@click.option("--threshold", type=click.FloatRange(min=0), default=DEFAULT_THRESHOLD,
              show_default=True, help="Distance below which the faces count as the same "
                                      "person (1.1: a common value for the 2018 releases; "
                                      "`evaluate --calibrate` gives yours).")
@click.option("--fit", type=click.Choice(["resize", "center_crop"]), default="resize",
              show_default=True, help="Without --detect: how images that are not 160x160 "
              "are fitted.")
def verify_command(image1: str, image2: str, model: ModelOptions, detect: bool,
                   mtcnn_dir: str | None, margin: float, min_face_size: float,
                   threshold: float, fit: str) -> None:
    """Print the embedding distance of IMAGE1 and IMAGE2 and whether they are the same
    person."""
    loaded = model.load(fuse=False)
    if loaded.note:
        warn(loaded.note)
    detector = load_detector(mtcnn_dir, margin, min_face_size, model.device) if detect else None
    distance = verify_pair(loaded, Path(image1), Path(image2), detector=detector, fit=fit)
    verdict = "same person" if distance < threshold else "different people"
    click.echo(f"distance {distance:.4f} (euclidean, L2-normalized; threshold {threshold:g}): "
               f"{verdict}")
