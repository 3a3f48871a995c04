"""``facenet-convert regenerate``: a thin click layer over :func:`converter.regenerate.regenerate`.

Progress goes to stderr, the one-line summary to stdout; errors are one line on stderr with a
non-zero exit (and nothing written).
"""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output, say
from facenet_convert.converter.regenerate import PARITY_BATCH_SIZE, PARITY_BATCHES


@click.command("regenerate", cls=DeclaredCommand)
@click.argument("releases_dir", type=Input("releases", folder=True))
@click.option("-o", "--output", "out_dir", type=Output(folder=True, example="published"),
              required=True,
              help="Folder for the published file set and MANIFEST.json (created if missing).")
@click.option("--allow-unverified", is_flag=True,
              help="Convert inputs whose sha256 differs from the release registry's (the "
                   "manifest records them as unverified).")
@click.option("--format", "fmt", type=click.Choice(["pt", "safetensors"]), default="pt",
              show_default=True, help="Output format (file names keep their stem).")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
@click.option("--parity/--no-parity", default=None,
              help="Check every output against TensorFlow (default: when TensorFlow is "
                   "importable; a graph is code, so only on files you trust).")
@click.option("--parity-batches", type=click.IntRange(min=1), default=PARITY_BATCHES,
              show_default=True)
@click.option("--parity-batch-size", type=click.IntRange(min=1), default=PARITY_BATCH_SIZE,
              show_default=True)
def regenerate_command(releases_dir: str, out_dir: str, allow_unverified: bool, fmt: str,
                       force: bool, parity: bool | None, parity_batches: int,
                       parity_batch_size: int) -> None:
    """Regenerate the published PyTorch weights from the original release files.

    RELEASES_DIR holds davidsandberg release folders (20180402-114759/ with the checkpoint,
    .meta and .pb) and optionally det1/2/3.npy (else MTCNN comes from the pinned facenet
    package). Every input is checked against the release registry's sha256; the outputs are
    facenet-pytorch's file set (20180402-114759-vggface2.pt, -features, -logits, ...,
    pnet.pt, rnet.pt, onet.pt) plus MANIFEST.json, written all or nothing, byte-identical run
    after run.
    """
    from facenet_convert.converter.regenerate import regenerate

    result = regenerate(releases_dir, out_dir, allow_unverified=allow_unverified, format=fmt,
                        force=force, parity=parity, parity_batches=parity_batches,
                        parity_batch_size=parity_batch_size,
                        echo=say)
    for note in result.manifest["notes"]:
        say(f"note: {note}")
    click.echo(result.summary())
