"""``facenet-convert parity``: a thin click layer over :func:`converter.parity.run_parity`.

Exit status: 0 when every gate passes, 1 when one is exceeded, 2 (one line on stderr) when the
check cannot run.
"""

from __future__ import annotations

import click

from facenet_convert.converter.parity import (
    DEFAULT_MAX_NOISE_RATIO,
    DEFAULT_TOLERANCE,
    MODELS,
)


@click.command("parity")
@click.argument("source", type=click.Path(path_type=str))
@click.argument("weights", type=click.Path(path_type=str))
@click.option("--model", type=click.Choice(MODELS), default="auto", show_default=True,
              help="Model of WEIGHTS; auto detects it from the state dict's keys.")
@click.option("--batches", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of seeded random batches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the N(0,1) input batches.")
@click.option("--images", type=click.Path(path_type=str, file_okay=False), default=None,
              help="Folder of real face images to use instead of random inputs (needs Pillow; "
                   "resized to the model's input, standardized (x-127.5)/128).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE,
              show_default=True,
              help="Gate on the max abs difference of embeddings and MTCNN outputs (logits: "
                   "relative to their scale, at 10x).")
@click.option("--max-noise-ratio", type=click.FloatRange(min=0),
              default=DEFAULT_MAX_NOISE_RATIO, show_default=True,
              help="Gate on L2(TF32-PT32) / L2(PT64-PT32); about 1 for a correct conversion.")
@click.option("--weights", "tf_weights", type=click.Choice(["auto", "raw", "ema"]),
              default="auto", show_default=True,
              help="Which checkpoint values the TF side restores: raw variables or their EMA "
                   "shadows (auto: what a .safetensors' metadata says, else raw).")
@click.option("--per-layer", is_flag=True,
              help="Compare every upstream end point and block output and name the first "
                   "layer whose difference jumps.")
@click.option("--json", "json_path", type=click.Path(path_type=str), default=None,
              help="Write the full report as JSON (replaces an earlier report).")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=str), default=None,
              help="Write the report as a markdown table (also appended to "
                   "$GITHUB_STEP_SUMMARY when set).")
@click.pass_context
def parity_command(ctx: click.Context, source: str, weights: str, model: str, batches: int,
                   batch_size: int, seed: int, images: str | None, tolerance: float,
                   max_noise_ratio: float, tf_weights: str, per_layer: bool,
                   json_path: str | None, markdown_path: str | None) -> None:
    """Check that converted WEIGHTS (.pt/.safetensors) compute what the TensorFlow SOURCE
    computes: checkpoint folder or prefix (its .meta graph, or the upstream graph rebuilt when
    there is none), frozen .pb, or MTCNN det1/2/3.npy.

    Both run on the same seeded inputs; reports L2, max abs, min cosine and the float32 noise
    ratio, and exits 1 when a gate is exceeded.

    Warning: this imports and runs the SOURCE graph with TensorFlow. A graph is code: only
    run parity on checkpoints and .pb files you trust.
    """
    from facenet_convert.converter.parity import run_parity, weights_choice
    from facenet_convert.converter.report import summary_line, write_reports

    report = run_parity(source, weights, model=model, batches=batches, batch_size=batch_size,
                        seed=seed, tolerance=tolerance, max_noise_ratio=max_noise_ratio,
                        per_layer=per_layer, images=images,
                        tf_weights=weights_choice(tf_weights, weights))
    write_reports(report, json_path=json_path, markdown_path=markdown_path)
    click.echo(summary_line(report))
    if not report.passed:
        ctx.exit(1)
