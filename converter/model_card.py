"""Hub folders with a model card: what ``facenet-convert export --hub-folder DIR`` writes.

The folder is :mod:`facenet_convert.models.pretrained_folder`'s (``model.safetensors`` and
``config.json``, loadable with ``from_pretrained``) plus ``README.md``, a model card that
carries what this toolkit can prove about the weights, and says so when it proved nothing:

* provenance: the converted file's sha256 and the sha256 of every source file its metadata
  records (``convert`` writes them into ``.safetensors``; a ``.pt`` carries none), and the
  release when those hashes are the release registry's;
* float64 parity: converted files carry no parity figures, so the card has them only when
  export is given the TensorFlow source (``--parity-source``): parity then runs on the very
  bytes of the folder's ``model.safetensors`` and must pass, or nothing is written;
* ``evaluate``'s figures when ``--evaluate PAIRS --evaluate-images DIR`` is given;
* preprocessing, intended use, limitations, and the license and terms of the weights.

The card holds no timestamps, timings or absolute paths: equal inputs give equal folders.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facenet_convert.converter.core.atomic import scratch_directory
from facenet_convert.converter.core.errors import ConverterError, ParityError
from facenet_convert.converter.core.hashing import sha256_file
from facenet_convert.converter.core.version import __version__
from facenet_convert.models.pretrained_folder import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    FolderContent,
)
from facenet_convert.models.releases import RELEASES, Release

#: Parity inputs for the card: few and small so that an export stays quick; float64 gated.
PARITY_BATCHES = 1
PARITY_BATCH_SIZE = 4
PARITY_FLOAT64_INPUTS = 4
PARITY_SEED = 0
EVALUATE_FOLDS = 10
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PREPROCESSING = {
    "fixed_standardization": "fixed standardization, `(x - 127.5) / 128` per pixel on 0..255 "
                             "RGB",
    "prewhiten": "per-image prewhitening, `(x - mean) / max(std, 1 / sqrt(x.numel()))`",
    "mtcnn": "MTCNN's scaling, `(x - 127.5) * 0.0078125` per pixel on 0..255 RGB",
}
_CLASSES = {"inception_resnet_v1": "InceptionResNetV1", "inception_resnet_v2":
            "InceptionResNetV2", "squeezenet": "SqueezeNet", "pnet": "PNet", "rnet": "RNet",
            "onet": "ONet"}
_MODULES = {"inception_resnet_v1": "facenet_convert.models",
            "inception_resnet_v2": "facenet_convert.models.inception_resnet_v2",
            "squeezenet": "facenet_convert.models.squeezenet",
            "pnet": "facenet_convert.models", "rnet": "facenet_convert.models",
            "onet": "facenet_convert.models"}


class HubExportError(ConverterError):
    """A Hub folder cannot be made as asked."""


@dataclass
class HubFolder:
    """A Hub folder ready to be written: its files in memory and what the card says."""

    folder: Path
    content: FolderContent
    parity: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def files(self) -> dict[Path, bytes]:
        return {self.folder / name: data for name, data in self.content.files().items()}

    def summary(self) -> str:
        parity = ("float64 parity passed" if self.parity else "no parity figures")
        evaluated = (f", accuracy {self.evaluation['accuracy']:.4f} on "
                     f"{self.evaluation['pairs']} pairs" if self.evaluation else "")
        return (f"wrote {self.folder} ({WEIGHTS_NAME}, {CONFIG_NAME}, {CARD_NAME}: "
                f"{self.content.config['architecture']}, {parity}{evaluated})")


# ------------------------------------------------------------------------------ provenance


def weights_metadata(weights: Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` (what ``convert`` recorded); ``{}`` for a
    torch file, which has none."""
    if weights.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types
        raise HubExportError(f"cannot read the safetensors header ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:160]})", path=weights) from None


def recorded_sources(metadata: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """``{file name: sha256}`` of the sources ``convert`` / ``regenerate`` recorded."""
    text = metadata.get("source_sha256")
    if text is None:
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not (isinstance(found, dict) and all(isinstance(k, str) and isinstance(v, str)
                                            and _SHA256.fullmatch(v)
                                            for k, v in found.items())):
        notes.append("the weights' metadata holds no readable source_sha256; provenance "
                     "left empty")
        return {}
    return {Path(name).name: sha for name, sha in sorted(found.items())}


def verified_release(architecture: str, sources: Mapping[str, str],
                     config_sizes: Mapping[str, Any]) -> Release | None:
    """The registered release whose source files these are, by sha256 (every recorded file
    one of the release's, the weights-bearing one among them) and whose sizes the model has."""
    hashes = set(sources.values())
    for release in RELEASES:
        if release.architecture != architecture or not release.source_files:
            continue
        known = {item.sha256 for item in release.source_files}
        weights_roles = {"checkpoint-data", "mtcnn-npy", "frozen-graph"}
        carries = {item.sha256 for item in release.source_files if item.role in weights_roles}
        if hashes and hashes <= known and hashes & carries and all(
                config_sizes.get(key, value) == value for key, value in
                (("embedding_size", release.embedding_size),
                 ("num_classes", release.num_classes))):
            return release
    return None


# -------------------------------------------------------------------------- parity, evaluate


def _scrub(value: Any, paths: list[str]) -> Any:
    """``value`` with every path of ``paths`` cut to its name, and every folder of them (and
    the separator after it) cut away: the card names files, never where they were."""
    text = json.dumps(value, sort_keys=True)
    names = {path: Path(path).name for path in paths if path}
    names.update({str(Path(path).parent) + os.sep: "" for path in paths
                  if path and str(Path(path).parent) not in (".", os.sep)})
    for path in sorted(names, key=len, reverse=True):
        text = text.replace(json.dumps(path)[1:-1], names[path])
    return json.loads(text)


def run_card_parity(source: str, content: FolderContent, architecture: str) -> dict[str, Any]:
    """Float64 parity of the folder's own ``model.safetensors`` bytes against ``source``;
    the card's figures. Raises when it fails: such weights are not published."""
    from facenet_convert.converter.core.extras import require_extra
    from facenet_convert.converter.parity import run_parity

    require_extra("tf", "--parity-source")
    with scratch_directory(prefix="facenet-convert-card-") as tmp:
        weights = tmp / WEIGHTS_NAME
        weights.write_bytes(content.weights)
        report = run_parity(source, weights, model=architecture, batches=PARITY_BATCHES,
                            batch_size=PARITY_BATCH_SIZE, seed=PARITY_SEED,
                            float64_inputs=PARITY_FLOAT64_INPUTS)
        data = report.to_dict()
    if not report.passed:
        failed = ", ".join(f"{g.name} {g.value:.3g} > {g.limit:g}" for g in report.failed_gates)
        raise ParityError(f"the folder's weights do not compute what the TensorFlow source "
                          f"computes ({failed}); nothing was written", path=source)
    kept = {"passed": data["passed"], "inputs": data["inputs"], "gates": data["gates"],
            "tolerance": data["gates_settings"]["float64_rel_tolerance"],
            "tf_side": data["source"]["kind"], "description": data["source"]["description"],
            "tensorflow": data["versions"].get("tensorflow", "unknown"),
            "outputs": [{key: figures[key] for key in
                         ("name", "values64", "max_abs64", "rel_max_abs64", "ref_max_abs64",
                          "values", "max_abs", "min_cosine", "noise_ratio")}
                        for figures in data["outputs"]],
            "notes": data["notes"]}
    return _scrub(kept, [str(Path(source).absolute()), str(source), str(weights)])


def run_card_evaluation(built: Any, weights: Path, pairs: str, images: str) -> dict[str, Any]:
    """``evaluate``'s figures of the model on PAIRS over IMAGES (upstream's protocol, plain
    torch, euclidean distance, 10 folds or, under 20 pairs, one per two pairs)."""
    from facenet_convert.converter.embedding import LoadedModel
    from facenet_convert.converter.evaluation import evaluate_pairs, plan_pairs

    if built.record.task != "embedding":
        raise HubExportError(f"--evaluate needs an embedding model; {built.record.name} is "
                             "a detection net")
    plan = plan_pairs(pairs, images)
    # upstream's 10 folds; fewer for fewer than 20 pairs (two pairs a fold at least)
    folds = max(2, min(EVALUATE_FOLDS, plan.total_pairs // 2))
    loaded = LoadedModel(built.model, built.preprocessing, str(weights), fuse=False)
    result = evaluate_pairs(plan, loaded=loaded, folds=folds)
    summary = result.evaluation.summary()
    kept = {key: summary[key] for key in ("pairs", "folds", "distance_metric", "accuracy",
                                          "accuracy_std", "val", "val_std", "far", "far_target",
                                          "auc", "eer", "best_threshold")}
    kept.update({"pairs_file": Path(pairs).name, "pairs_sha256": sha256_file(pairs),
                 "pairs_in_file": plan.total_pairs, "images": len(plan.unique_paths),
                 "images_skipped": len(result.skipped_images),
                 "pairs_missing_images": len(plan.resolved.missing),
                 "pairs_dropped": result.dropped_pairs})
    return kept


# ------------------------------------------------------------------------------ the folder


def build_hub_folder(weights: str | os.PathLike[str], folder: str | os.PathLike[str], *,
                     model: str = "auto", parity_source: str | None = None,
                     evaluate_pairs: str | None = None,
                     evaluate_images: str | None = None,
                     preprocessing: str | None = None) -> HubFolder:
    """The Hub folder of converted ``weights`` (nothing written yet): model, config, card."""
    from facenet_convert.converter.building import load_model

    if (evaluate_pairs is None) != (evaluate_images is None):
        raise HubExportError("--evaluate PAIRS and --evaluate-images DIR go together")
    path = Path(weights)
    built = load_model(path, model=model, preprocessing=preprocessing, error=HubExportError)
    if preprocessing is not None and built.record.task != "embedding":
        raise HubExportError(f"--preprocessing applies to embedding models; "
                             f"{built.record.name} takes MTCNN's scaling", path=path)
    notes: list[str] = [built.note] if built.note else []
    metadata = weights_metadata(path)
    sources = recorded_sources(metadata, notes)
    net = built.model
    release = verified_release(built.record.name, sources, net.hub_facts())
    provenance = {"preprocessing": built.preprocessing, "source_sha256": sources,
                  "release": None if release is None else release.name,
                  "converter_version": __version__}
    content = net.hub_content(provenance)
    hub = HubFolder(Path(folder), content, notes=notes)
    if parity_source is not None:
        hub.parity = run_card_parity(parity_source, content, built.record.name)
    if evaluate_pairs is not None and evaluate_images is not None:
        hub.evaluation = run_card_evaluation(built, path, evaluate_pairs, evaluate_images)
    converted = {"file": path.name, "sha256": sha256_file(path),
                 "converter_version": metadata.get("converter_version"),
                 "weights": metadata.get("weights"), "table": metadata.get("spec")}
    content.card = render_card(content.config, converted=converted, release=release,
                               parity=hub.parity, evaluation=hub.evaluation, notes=notes)
    return hub


def check_hub_outputs(folder: str | os.PathLike[str], *, force: bool = False,
                      inputs: tuple[str | os.PathLike[str], ...] = ()) -> None:
    """Refuse at once what the commit would refuse later (a file where the folder goes, files
    there without ``force``), before the model, parity and evaluation run."""
    from facenet_convert.converter.core.atomic import check_output_path
    from facenet_convert.converter.core.errors import OutputError

    path = Path(folder)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError("the output folder is a file; give a directory", path=path)
    if path.is_dir():
        for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME):
            check_output_path(path / name, force=force, inputs=inputs)


def write_hub_folder(hub: HubFolder, *, force: bool = False,
                     inputs: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    """Write the folder all or nothing (created when missing)."""
    from facenet_convert.models.pretrained_folder import write_folder

    return write_folder(hub.folder, hub.content.files(), force=force, inputs=inputs)


# ------------------------------------------------------------------------------ the card


def _e(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def _eer(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _title(config: Mapping[str, Any], release: Release | None) -> str:
    name = config["architecture"]
    if config["task"] == "embedding":
        what = f"{name}, {config['embedding_size']}-d face embeddings"
    else:
        what = f"{name}, MTCNN face detection"
    return f"{what} ({release.name})" if release is not None else what


def _use(config: Mapping[str, Any]) -> list[str]:
    architecture = config["architecture"]
    cls = _CLASSES[architecture]
    size = config["input_size"]
    pixels = f"{size[0]}x{size[1]}" if size else "any size (at least 12x12)"
    lines = ["## Use", "", "```python", f"from {_MODULES[architecture]} import {cls}", "",
             (f'model = {cls}.from_pretrained("path/to/this/folder")  # or "owner/repo" '
             "(the [hub] extra)"), "```", ""]
    preprocessing = config["preprocessing"]
    how = _PREPROCESSING.get(preprocessing, "not known: choose it yourself")
    lines.append(f"Input: float32 NCHW RGB, {pixels}, standardized with "
                 f"`{preprocessing}`: {how}.")
    if config["task"] == "embedding":
        classes = config["num_classes"]
        lines.append(f"Output: L2-normalized {config['embedding_size']}-d embeddings"
                     + (f"; `classify=True` gives the {classes} training-class logits."
                        if classes else "."))
        lines.append("Faces are expected aligned and cropped as upstream's "
                     "`align_dataset_mtcnn.py` does (`facenet-convert align`).")
    else:
        lines.append("Output: as facenet-pytorch's net of the same name (box regression "
                     "and face probability" + (", landmarks" if architecture == "onet" else "")
                     + "); `facenet_convert.models.MTCNN` runs the cascade.")
    return lines


def _provenance(config: Mapping[str, Any], converted: Mapping[str, Any],
                release: Release | None) -> list[str]:
    lines = ["## Provenance", "",
             (f"- `{WEIGHTS_NAME}`: sha256 `{config['weights_sha256']}` (also in "
             f"`{CONFIG_NAME}`, which `from_pretrained` checks)."),
             f"- Written by facenet-convert {config['converter_version']} from "
             f"`{converted['file']}` (sha256 `{converted['sha256']}`)"
             + (f", converted by facenet-convert {converted['converter_version']}"
                if converted.get("converter_version") else "")
             + (f" ({converted['weights']} weights, table {converted['table']})"
                if converted.get("weights") and converted.get("table") else "") + "."]
    sources = config["source_sha256"]
    if sources:
        lines += ["- Converted from these TensorFlow files:", "", "| file | sha256 |",
                  "| --- | --- |"]
        lines += [f"| `{name}` | `{sha}` |" for name, sha in sources.items()]
        lines.append("")
    else:
        lines.append("- The source files are not recorded (the converted file carries no "
                     "`source_sha256` metadata: a `.pt` has none; `convert -o "
                     "OUT.safetensors` records them).")
    if release is not None:
        lines.append(f"- Release: `{release.name}` ({release.description}); the source "
                     "hashes are the ones the release registry pins.")
    else:
        lines.append("- Release: none verified (no recorded source hash is a registered "
                     "release's).")
    return lines


def _parity(parity: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Parity (float64)", ""]
    if parity is None:
        return lines + [
            ("Not measured when this folder was written: converted files carry no parity "
            "figures, and export was given no `--parity-source`. Measure it with "
            f"`facenet-convert parity SOURCE {WEIGHTS_NAME}` before relying on these weights.")]
    inputs = parity["inputs"]
    count = inputs.get("float64_count", "?")
    lines += [(f"Measured on this folder's `{WEIGHTS_NAME}` when it was written: the "
              f"TensorFlow reference ({parity['tf_side']}: {parity['description']}; "
              f"TensorFlow {parity['tensorflow']}) and this model ran the same seeded inputs "
              f"in float64 ({count} inputs) and float32. Verdict: "
              f"**{'passed' if parity['passed'] else 'FAILED'}** (float64 max abs "
              f"difference relative to the output's scale <= {parity['tolerance']:g})."), "",
              ("| output | float64 max abs | relative | float32 max abs | min cosine "
              "(float32) | float32 noise ratio |"), "| --- | --- | --- | --- | --- | --- |"]
    for out in parity["outputs"]:
        cosine = "n/a" if out["min_cosine"] is None else f"{out['min_cosine']:.9f}"
        ratio = out["noise_ratio"]
        ratio_text = f"{ratio:.2f}" if isinstance(ratio, float) else str(ratio)
        lines.append(f"| {out['name']} | {_e(out['max_abs64'])} | {_e(out['rel_max_abs64'])} "
                     f"| {_e(out['max_abs'])} | {cosine} | {ratio_text} |")
    lines += ["", ("A correct conversion measures about 1e-14 relative in float64; one "
                  "block's conv weights scaled by (1 + 1e-6) measure about 2e-7 "
                  "(facenet-convert's docs/parity.md).")]
    notes = parity.get("notes") or []
    if notes:
        lines += ["", "The run's notes:", "", *[f"- {note}" for note in notes]]
    return lines


def _evaluation(evaluation: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if evaluation is None:
        return lines + [("Not evaluated when this folder was written (`facenet-convert export "
                        "WEIGHTS --hub-folder DIR --evaluate PAIRS --evaluate-images DIR`).")]
    return lines + [
        (f"`facenet-convert evaluate`'s protocol (upstream `validate_on_lfw.py`) on "
        f"`{evaluation['pairs_file']}` (sha256 `{evaluation['pairs_sha256']}`): "
        f"{evaluation['pairs']} of {evaluation['pairs_in_file']} pairs over "
        f"{evaluation['images']} images, {evaluation['folds']} folds, "
        f"{evaluation['distance_metric']} distance, no flipped images."), "",
        "| accuracy | VAL @ FAR | AUC | EER | best threshold |",
        "| --- | --- | --- | --- | --- |",
        (f"| {evaluation['accuracy']:.4f} +- {evaluation['accuracy_std']:.4f} | "
        f"{evaluation['val']:.4f} +- {evaluation['val_std']:.4f} @ {evaluation['far']:.4f} | "
        f"{evaluation['auc']:.4f} | {_eer(evaluation['eer'])} | "
        f"{evaluation['best_threshold']:.2f} |"), "",
        (f"Skipped: {evaluation['images_skipped']} images, {evaluation['pairs_missing_images']}"
        f" pairs with a missing image, {evaluation['pairs_dropped']} pairs not embedded. "
        "These figures hold for these pairs only; they are not a benchmark unless the pairs "
        "are one.")]


def _use_and_limits(config: Mapping[str, Any], release: Release | None) -> list[str]:
    if config["task"] == "embedding":
        data = release.dataset if release is not None and release.dataset else None
        return [
            "## Intended use", "",
            ("Face verification and identification research: compare embeddings of aligned "
            "face crops by distance, with a threshold calibrated on your own pairs "
            "(`facenet-convert evaluate --calibrate`)."), "",
            "## Limitations", "",
            (f"- Trained on {data or 'data not recorded here'}; accuracy on LFW does not carry "
            "over to other populations, ages, poses, image quality or cameras, and error "
            "rates can differ between demographic groups."),
            ("- Expects the stated preprocessing and alignment; other inputs degrade results "
            "without any error."),
            ("- Parity proves that this model computes what the TensorFlow source computes; it "
            "says nothing of how good that is."),
            ("- Face embeddings are biometric data: collecting, storing and comparing them is "
            "regulated in many places. Do not use them to identify people without a lawful "
            "basis and their consent.")]
    return [
        "## Intended use", "",
        ("Face detection and 5-point landmarks before alignment and embedding (upstream's "
        "MTCNN cascade, `facenet_convert.models.MTCNN`)."), "",
        "## Limitations", "",
        ("- Small, blurred, occluded or strongly turned faces are missed; thresholds trade "
        "misses for false detections."),
        ("- Parity proves that this net computes what upstream's TensorFlow net computes; it "
        "says nothing of how good that is.")]


def _license(config: Mapping[str, Any], release: Release | None) -> list[str]:
    lines = ["## License", ""]
    if config["task"] == "detection":
        return lines + [
            ("MIT: MTCNN's nets from davidsandberg/facenet's det1/2/3.npy (MIT; trained by "
            "Kaipeng Zhang et al., \"Joint Face Detection and Alignment using Multi-task "
            "Cascaded Convolutional Networks\", released with their MIT-licensed code). "
            "facenet-convert itself is MIT.")]
    data = release.dataset if release is not None else None
    terms = {"VGGFace2": "VGGFace2 (University of Oxford; for non-commercial research "
                         "purposes)",
             "CASIA-WebFace": "CASIA-WebFace (Institute of Automation, Chinese Academy of "
                              "Sciences; for non-commercial research purposes)"}
    trained = terms.get(data or "", f"{data} (check its terms)" if data else
                        "data not recorded here (check its terms)")
    return lines + [
        ("Other: the weights keep the terms of the data they were trained on, "
        f"{trained}. Check those terms before you use or redistribute them; facenet-convert "
        "(MIT) and davidsandberg/facenet's code (MIT) grant no rights to them.")]


def render_card(config: Mapping[str, Any], *, converted: Mapping[str, Any],
                release: Release | None, parity: Mapping[str, Any] | None,
                evaluation: Mapping[str, Any] | None, notes: list[str]) -> str:
    """The model card (``README.md``): Hugging Face front matter, then the sections."""
    detection = config["task"] == "detection"
    front = ["---", "library_name: facenet-convert",
             f"license: {'mit' if detection else 'other'}", "tags:", "- face-recognition"
             if not detection else "- face-detection", "- facenet", "- pytorch",
             "- safetensors", (f"pipeline_tag: "
             f"{'object-detection' if detection else 'image-feature-extraction'}"), "---", ""]
    body = [f"# {_title(config, release)}", "",
            (f"{'MTCNN' if detection else 'FaceNet'} weights from davidsandberg/facenet's "
            f"TensorFlow code, converted to PyTorch by facenet-convert and checked as "
            "below. This folder is `model.safetensors` + `config.json`, loaded by "
            "`from_pretrained` without running any code from it."), "",
            *_use(config), "", *_provenance(config, converted, release), "",
            *_parity(parity), "", *_evaluation(evaluation), "",
            *_use_and_limits(config, release), "", *_license(config, release)]
    if notes:
        body += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(front + body) + "\n"
