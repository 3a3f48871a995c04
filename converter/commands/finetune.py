"""``facenet-convert finetune``: train a converted or TF-trained model further on a
class-folder dataset (the work is :mod:`facenet_convert.training.finetune`)."""

from __future__ import annotations

import click

from facenet_convert.converter.commands.declare import DeclaredCommand, Input, Output, say
from facenet_convert.converter.commands.options import Progress

OPTIMIZERS = ("ADAGRAD", "ADADELTA", "ADAM", "RMSPROP", "MOM", "SGD")


@click.command("finetune", cls=DeclaredCommand)
@click.argument("data_dir", type=Input("folder", folder=True))
@click.option("--from", "source", required=True,
              type=Input("source", folder=True, may_be_missing=True),
              help="Converted weights (.pt/.safetensors), or a TF source (checkpoint folder or "
              "prefix, .pb, .h5); a TF training checkpoint resumes its optimizer slots, "
              "centers, EMA and global_step.")
@click.option("-o", "--output", required=True,
              type=Output(folder=True, owned=True, example="finetuned"),
              help="Folder for the checkpoints (one per epoch), model.safetensors (or "
              "model.pt) and finetune.json.")
@click.option("--loss", type=click.Choice(["softmax", "triplet"]), default="softmax",
              show_default=True, help="softmax (+ center loss with --center-loss-factor), as "
              "train_softmax.py; triplet, as train_tripletloss.py.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Epochs (one pass over the training images each) to reach.")
@click.option("--batch-size", type=click.IntRange(min=2), default=90, show_default=True)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS, case_sensitive=False), default=None,
              help="TF1 optimizer with upstream's settings (default: the checkpoint's, else "
              "ADAGRAD).")
@click.option("--learning-rate", type=click.FloatRange(min=0), default=0.1, show_default=True)
@click.option("--lr-schedule", type=Input("schedule"), default=None, metavar="FILE",
              help="Upstream's learning-rate schedule file ('epoch: rate' lines; '-' stops); "
              "overrides --learning-rate.")
@click.option("--image-size", type=click.IntRange(min=32), default=160, show_default=True,
              help="Training and held-out image size (images are resized to it).")
@click.option("--held-out", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="Fraction of each class held out for the verification figures.")
@click.option("--seed", type=int, default=666, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--center-loss-factor", type=click.FloatRange(min=0), default=0.0,
              show_default=True)
@click.option("--center-loss-alfa", type=click.FloatRange(0, 1), default=0.95,
              show_default=True)
@click.option("--prelogits-norm-loss-factor", type=click.FloatRange(min=0), default=0.0,
              show_default=True)
@click.option("--prelogits-norm-p", type=click.FloatRange(min=1), default=1.0,
              show_default=True)
@click.option("--keep-probability", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True, help="Dropout keep probability.")
@click.option("--moving-average-decay", type=click.FloatRange(0, 1), default=0.9999,
              show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="Triplet margin.")
@click.option("--people-per-batch", type=click.IntRange(min=2), default=45, show_default=True,
              help="Triplet: people sampled per selection round (one round per epoch).")
@click.option("--images-per-person", type=click.IntRange(min=2), default=40,
              show_default=True)
@click.option("--random-crop", is_flag=True, help="Random image-size crops of larger images "
              "(default: resize, deterministic).")
@click.option("--random-flip", is_flag=True, help="Random horizontal flips.")
@click.option("--preprocessing", type=click.Choice(["fixed_standardization", "prewhiten"]),
              default=None, help="Input standardization (default: the source's release's, "
              "else by embedding size).")
@click.option("--format", "format_", type=click.Choice(["safetensors", "pt"]),
              default="safetensors", show_default=True, help="The final model's format.")
@click.option("--fresh-optimizer", is_flag=True, help="From a TF training checkpoint: take "
              "its weights only (new head, new optimizer).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in OUTPUT.")
@click.option("--force", is_flag=True, help="Start over in an OUTPUT that holds an earlier "
              "run (its checkpoints are removed).")
def finetune_command(data_dir: str, source: str, output: str, loss: str, epochs: int,
                     batch_size: int, optimizer: str | None, learning_rate: float,
                     lr_schedule: str | None, image_size: int, held_out: float, seed: int,
                     weight_decay: float, center_loss_factor: float, center_loss_alfa: float,
                     prelogits_norm_loss_factor: float, prelogits_norm_p: float,
                     keep_probability: float, moving_average_decay: float, alpha: float,
                     people_per_batch: int, images_per_person: int, random_crop: bool,
                     random_flip: bool, preprocessing: str | None, format_: str,
                     fresh_optimizer: bool, resume: bool, force: bool) -> None:
    """Fine-tune the model --from SOURCE on DATA_DIR (one sub-folder of aligned face images
    per person) into OUTPUT, with held-out verification figures before and after."""
    from facenet_convert.training.finetune import FinetuneSettings, finetune
    from facenet_convert.training.step import LossSettings

    settings = FinetuneSettings(
        loss=loss, epochs=epochs, batch_size=batch_size,
        optimizer=None if optimizer is None else optimizer.upper(),
        learning_rate=learning_rate, schedule=lr_schedule, image_size=image_size, seed=seed,
        held_out=held_out,
        losses=LossSettings(weight_decay=weight_decay, center_loss_factor=center_loss_factor,
                            center_loss_alfa=center_loss_alfa,
                            prelogits_norm_loss_factor=prelogits_norm_loss_factor,
                            prelogits_norm_p=prelogits_norm_p,
                            keep_probability=keep_probability, triplet_alpha=alpha),
        moving_average_decay=moving_average_decay, people_per_batch=people_per_batch,
        images_per_person=images_per_person, random_crop=random_crop, random_flip=random_flip,
        preprocessing=preprocessing, format=format_)

    with Progress("finetuning") as bar:
        def on_step(total: int | None) -> None:
            if total is not None:
                bar.start(total)
            bar.update(1)      # raises after a signal: the last checkpoint stays as it is

        result = finetune(data_dir, source, output, settings, resume=resume, force=force,
                          fresh_optimizer=fresh_optimizer, on_step=on_step, echo=say)
    epochs = f"{result.epochs_done} epoch{'s' if result.epochs_done != 1 else ''}"
    click.echo(f"wrote {result.model_path} (sha256 {result.sha256}, {epochs}, global_step "
               f"{result.global_step}) and {result.report_path}")
