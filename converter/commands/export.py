"""``facenet-convert export``: a thin click layer over :func:`converter.export.export_model`."""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.engines import DEFAULT_OPSET


@click.command("export", cls=DeclaredCommand)
@click.argument("weights", type=Input("weights"))
@click.option("-o", "--output", required=True,
              type=Output(sidecars=lambda out, _params: [out + ".json"],
                          example="model.onnx"),
              help="OUT.onnx (ONNX, run by ONNX Runtime) or OUT.pt2 (torch.export program); "
                   "a JSON report is written beside it as OUT.onnx.json / OUT.pt2.json.")
@click.option("--model", default="auto", show_default=True,
              help="Registry architecture of WEIGHTS; auto detects it from the state dict.")
@click.option("--opset", type=click.IntRange(min=13), default=None,
              help=f"ONNX opset (default {DEFAULT_OPSET}).")
@click.option("--dynamic-batch/--fixed-batch", default=True, show_default=True,
              help="Any batch size, or only the batch of 2 it is exported with (parity runs "
                   "such an export in batches of 2). PNet's height and width are always "
                   "dynamic.")
@click.option("--with-preprocessing", is_flag=True,
              help="Take float 0..255 RGB pixels and standardize inside the model.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def export_command(weights: str, output: str, model: str, opset: int | None,
                   dynamic_batch: bool, with_preprocessing: bool, force: bool) -> None:
    """Export converted WEIGHTS to ONNX or torch.export, verified against our model first."""
    from facenet_convert.converter.export import export_model

    report = export_model(weights, output, model=model, opset=opset,
                          dynamic_batch=dynamic_batch, with_preprocessing=with_preprocessing,
                          force=force)
    click.echo(f"wrote {output} ({report.format}, {report.architecture}); verified on "
               f"{len(report.checks)} seeded batches: max abs {report.max_abs:.1e} <= "
               f"{report.tolerance:g}; report {output}.json")
