"""``facenet-convert parity``: a thin click layer over :func:`converter.parity.run_parity`.

Exit status: 0 when every gate passes, 1 when one is exceeded, 2 (one line on stderr) when the
check cannot run.
"""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.parity import (
    DEFAULT_FLOAT64_INPUTS,
    DEFAULT_TOLERANCE,
    MODELS,
)


@click.command("parity", cls=DeclaredCommand)
@click.argument("source", type=Input("source", folder=True, may_be_missing=True))
@click.argument("weights", type=Input("weights"))
@click.option("--model", type=click.Choice(MODELS), default="auto", show_default=True,
              help="Model of WEIGHTS; auto detects it from the state dict's keys.")
@click.option("--batches", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of seeded random batches.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the N(0,1) input batches.")
@click.option("--images", type=Input("folder", folder=True), default=None,
              help="Folder of real face images to use instead of random inputs (needs Pillow; "
                   "resized to the model's input, standardized (x-127.5)/128).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE,
              show_default=True,
              help="The gate: max |TF64 - PT64| / max |TF64| of every output, both sides in "
                   "float64 (a correct conversion: about 1e-14).")
@click.option("--float64-inputs", type=click.IntRange(min=1), default=DEFAULT_FLOAT64_INPUTS,
              show_default=True,
              help="How many of the inputs (the first ones) also run in float64: the verdict.")
@click.option("--weights", "tf_weights", type=click.Choice(["auto", "raw", "ema"]),
              default="auto", show_default=True,
              help="Which checkpoint values the TF side restores: raw variables or their EMA "
                   "shadows (auto: what a .safetensors' metadata says, else raw).")
@click.option("--per-layer", is_flag=True,
              help="Compare every end point of the architecture in float64 and name the "
                   "first one above the gate.")
@click.option("--verbose", is_flag=True,
              help="Let TensorFlow's own log lines (C++ start-up notices, warnings) through.")
@click.option("--json", "json_path", type=Output(replaces=True, example="parity.json"),
              default=None,
              help="Write the full report as JSON (replaces an earlier report).")
@click.option("--markdown", "markdown_path", type=Output(replaces=True, example="parity.md"),
              default=None,
              help="Write the report as a markdown table (also appended to "
                   "$GITHUB_STEP_SUMMARY when set).")
@click.pass_context
def parity_command(ctx: click.Context, source: str, weights: str, model: str, batches: int,
                   batch_size: int, seed: int, images: str | None, tolerance: float,
                   float64_inputs: int, tf_weights: str, per_layer: bool, verbose: bool,
                   json_path: str | None, markdown_path: str | None) -> None:
    """Check that converted WEIGHTS (.pt/.safetensors) compute what the TensorFlow SOURCE
    computes: checkpoint folder or prefix (its .meta graph, or the upstream graph rebuilt when
    there is none), frozen .pb, Keras .h5 (the pinned keras-facenet model), or MTCNN
    det1/2/3.npy.

    Both run on the same seeded inputs in float64 (the verdict: max |TF64 - PT64| relative to
    the output's scale) and in float32 (reported: L2, max abs, min cosine, noise ratio); exits
    1 when a gate is exceeded.

    Warning: this imports and runs the SOURCE graph with TensorFlow. A graph is code: only
    run parity on checkpoints and .pb files you trust.
    """
    from facenet_convert.converter.parity import run_parity, weights_choice
    from facenet_convert.converter.report import summary_line, write_reports

    report = run_parity(source, weights, model=model, batches=batches, batch_size=batch_size,
                        seed=seed, tolerance=tolerance, float64_inputs=float64_inputs,
                        per_layer=per_layer, images=images,
                        tf_weights=weights_choice(tf_weights, weights), verbose=verbose)
    write_reports(report, json_path=json_path, markdown_path=markdown_path)
    click.echo(summary_line(report))
    if not report.passed:
        ctx.exit(1)
