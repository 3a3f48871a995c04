"""``facenet-convert export``: a thin click layer over :func:`converter.export.export_model`
(ONNX, torch.export) and :func:`converter.model_card.build_hub_folder` (a Hub folder)."""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output
from facenet_convert.converter.engines import DEFAULT_OPSET


@click.command("export", cls=DeclaredCommand)
@click.argument("weights", type=Input("weights"))
@click.option("-o", "--output", default=None,
              type=Output(sidecars=lambda out, _params: [out + ".json"],
                          example="model.onnx"),
              help="OUT.onnx (ONNX, run by ONNX Runtime) or OUT.pt2 (torch.export program); "
                   "a JSON report is written beside it as OUT.onnx.json / OUT.pt2.json.")
@click.option("--hub-folder", type=Output(folder=True, example="hub"), default=None,
              help="Also (or instead) write a Hugging Face style folder: model.safetensors, "
                   "config.json and a model card README.md (created if missing; its files "
                   "need --force to be replaced). Load it with from_pretrained.")
@click.option("--parity-source", type=Input("source", folder=True, may_be_missing=True),
              default=None, metavar="SOURCE",
              help="With --hub-folder: the TensorFlow source of WEIGHTS; float64 parity runs "
                   "on the folder's weights and its figures go into the card (needs the tf "
                   "extra; a graph is code: only on files you trust).")
@click.option("--evaluate", "evaluate_pairs", type=Input("pairs"), default=None,
              metavar="PAIRS", help="With --hub-folder and --evaluate-images: evaluate's "
              "figures on PAIRS (pairs.txt format) go into the card.")
@click.option("--evaluate-images", type=Input("folder", folder=True), default=None,
              metavar="DIR", help="The images of --evaluate PAIRS (name/name_NNNN.jpg).")
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
@click.option("--preprocessing", type=click.Choice(["fixed_standardization", "prewhiten"]),
              default=None, help="The input standardization of an embedding model (default: "
              "its release's, else judged by the embedding size), for --with-preprocessing, "
              "the metadata and the Hub folder's config.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def export_command(weights: str, output: str | None, hub_folder: str | None,
                   parity_source: str | None, evaluate_pairs: str | None,
                   evaluate_images: str | None, model: str, opset: int | None,
                   dynamic_batch: bool, with_preprocessing: bool, preprocessing: str | None,
                   force: bool) -> None:
    """Export converted WEIGHTS to ONNX or torch.export (verified against our model first)
    and/or to a Hub folder with a model card."""

    from facenet_convert.converter.core.atomic import check_output_path
    from facenet_convert.converter.export import ExportError, export_model
    from facenet_convert.converter.model_card import (
        build_hub_folder,
        check_hub_outputs,
        write_hub_folder,
    )

    if output is None and hub_folder is None:
        raise ExportError("nothing to write: give -o OUT.onnx|OUT.pt2, --hub-folder DIR, or "
                          "both")
    if hub_folder is None and (parity_source or evaluate_pairs or evaluate_images):
        raise ExportError("--parity-source and --evaluate fill the model card of "
                          "--hub-folder; give --hub-folder DIR")
    if output is not None:                      # before the model, parity and evaluation run
        for target in (output, output + ".json"):
            check_output_path(target, force=force, inputs=[weights])
    if hub_folder is not None:
        check_hub_outputs(hub_folder, force=force, inputs=(weights,))
    hub = (build_hub_folder(weights, hub_folder, model=model, parity_source=parity_source,
                            evaluate_pairs=evaluate_pairs, evaluate_images=evaluate_images,
                            preprocessing=preprocessing)
           if hub_folder is not None else None)
    if output is None:
        if hub is not None:
            write_hub_folder(hub, force=force, inputs=(weights,))
            click.echo(hub.summary())
        return
    # the runner made --hub-folder (and removes it again should this fail and leave it empty)
    report = export_model(weights, output, model=model, opset=opset,
                          dynamic_batch=dynamic_batch, with_preprocessing=with_preprocessing,
                          force=force, also=hub.files() if hub is not None else None,
                          preprocessing=preprocessing)
    click.echo(f"wrote {output} ({report.format}, {report.architecture}); verified on "
               f"{len(report.checks)} seeded batches: max abs {report.max_abs:.1e} <= "
               f"{report.tolerance:g}; report {output}.json")
    if hub is not None:
        click.echo(hub.summary())
