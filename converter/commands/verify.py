"""``facenet-convert verify``: are two face images the same person?

The metric is upstream's (``compare.py``, ``validate_on_lfw.py`` with ``--distance_metric 0``):
the euclidean distance between the two L2-normalized embeddings, in [0, 2]; below the threshold
means "same". The default threshold 1.1 is a value commonly used with the 2018 releases;
upstream picks it per data set by 10-fold cross-validation on LFW, so calibrate it on your own
pairs with ``--threshold``. With ``--detect`` the best-scoring face of each photo is used (as
``compare.py`` takes the first box); without it each image is an aligned face crop.
"""

from __future__ import annotations

from pathlib import Path

import click

from converter.commands.embed import (
    EmbedError,
    LoadedModel,
    detect_faces,
    detect_options,
    embed_batch,
    load_detector,
    load_embedding_model,
    model_options,
)

DEFAULT_THRESHOLD = 1.1


def euclidean_distance(a: object, b: object) -> float:
    """Euclidean distance of two embedding vectors (upstream distance_metric 0)."""
    import numpy as np

    return float(np.sqrt(np.sum(np.square(np.subtract(a, b, dtype=np.float64)))))


def _face(loaded: LoadedModel, path: Path, detector: object, fit: str) -> object:
    """Standardized (1, 3, 160, 160) input of one image (its best face with a detector)."""
    import torch

    from models.preprocessing import Preprocess, load_image

    if detector is not None:
        faces = detect_faces(detector, path, loaded.preprocessing)  # type: ignore[arg-type]
        if not faces.names:
            raise EmbedError("no face found; try a smaller --min-face-size or omit --detect "
                             "for an already aligned face crop", path=path)
        return faces.crops[:1]
    return torch.stack([Preprocess(loaded.preprocessing, fit=fit)(load_image(path))])


@click.command("verify")
@click.argument("image1", type=click.Path(path_type=Path))
@click.argument("image2", type=click.Path(path_type=Path))
@model_options
@detect_options
@click.option("--threshold", type=click.FloatRange(min=0), default=DEFAULT_THRESHOLD,
              show_default=True, help="Distance below which the faces count as the same "
                                      "person.")
@click.option("--fit", type=click.Choice(["resize", "center_crop"]), default="resize",
              show_default=True, help="Without --detect: how images that are not 160x160 "
              "are fitted.")
def verify_command(image1: Path, image2: Path, weights: str | None, pretrained: str | None,
                   preprocessing: str | None, device: str, detect: bool, mtcnn_dir: str | None,
                   margin: float, min_face_size: float, threshold: float, fit: str) -> None:
    """Print the embedding distance of IMAGE1 and IMAGE2 and whether they are the same
    person."""
    import torch

    loaded = load_embedding_model(weights, pretrained, preprocessing, device, fuse=False)
    if loaded.note:
        click.echo(f"facenet-convert: warning: {loaded.note}", err=True)
    detector = load_detector(mtcnn_dir, margin, min_face_size, device) if detect else None
    batch = torch.cat([_face(loaded, image1, detector, fit),  # type: ignore[list-item]
                       _face(loaded, image2, detector, fit)])
    vectors = embed_batch(loaded.embedder, batch).numpy()
    distance = euclidean_distance(vectors[0], vectors[1])
    verdict = "same person" if distance < threshold else "different people"
    click.echo(f"distance {distance:.4f} (euclidean, L2-normalized; threshold {threshold:g}): "
               f"{verdict}")
