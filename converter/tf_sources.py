"""What SOURCE is on the TensorFlow side of parity (a checkpoint with or without its ``.meta``,
a frozen ``.pb``, a Keras ``.h5``, an MTCNN ``det*.npy``), and TensorFlow kept quiet.

:func:`resolve_tf_source` only looks at files; :mod:`facenet_convert.converter.parity_tf`
turns the result into a runnable reference.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from facenet_convert.converter.architecture import Architecture
from facenet_convert.converter.core.errors import ParityError
from facenet_convert.converter.core.extras import require_extra
from facenet_convert.converter.core.stderr import held_stderr

#: which upstream MTCNN net each det*.npy holds
MTCNN_NETS = {"det1": "pnet", "det2": "rnet", "det3": "onet"}
_CKPT_STEP = re.compile(r"^(?P<stem>.+)\.ckpt-\d+$")


@dataclass(frozen=True)
class TFSource:
    """What SOURCE is, resolved to concrete files."""

    kind: str                    # "checkpoint" | "checkpoint-rebuilt" | "frozen" | "mtcnn"
    #                              | "keras"
    path: Path                   # as given
    prefix: Path | None = None   # checkpoint prefix
    meta: Path | None = None     # the meta graph, when there is one
    pb: Path | None = None       # frozen graph
    npy: Path | None = None      # MTCNN weights
    h5: Path | None = None       # Keras weights (full model or weights only)
    net: str | None = None       # "pnet" | "rnet" | "onet" for MTCNN (from the file name)
    notes: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        if self.kind == "checkpoint":
            return f"checkpoint {self.prefix} with meta graph {self.meta}"
        if self.kind == "checkpoint-rebuilt":
            return (f"checkpoint {self.prefix} (no .meta: upstream inference graph rebuilt by "
                    "the pinned facenet 1.0.5 code)")
        if self.kind == "frozen":
            return f"frozen graph {self.pb}"
        if self.kind == "keras":
            return (f"Keras weights {self.h5} in the pinned keras-facenet 0.3.2 model "
                    "(tf-keras)")
        return f"upstream detect_face {self.net} with weights {self.npy}"


# ------------------------------------------------------------------------------ quiet TF


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow (and tf-slim) with its C++ start-up lines (oneDNN notice, absl
    pre-init warning, CUDA probes) and Python warnings kept off the terminal; ``verbose``
    leaves everything as TensorFlow prints it. Errors still show."""
    import logging
    import warnings

    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    require_extra("tf", "parity (the TensorFlow reference)")
    fresh = "tensorflow" not in sys.modules
    try:
        if fresh and not verbose:
            with held_stderr():
                import tensorflow as tf
        else:
            import tensorflow as tf
        import tf_slim  # noqa: F401  (the upstream graph code needs it)
    except ImportError as error:
        raise ParityError(f"parity runs the TensorFlow reference and needs TensorFlow and "
                          f"tf-slim ({error}); install them: pip install "
                          "'facenet-convert[tf]'") from error
    if verbose:
        return
    tf.get_logger().setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    try:
        from tensorflow.python.util import deprecation

        deprecation._PRINT_DEPRECATION_WARNINGS = False
    except (ImportError, AttributeError):
        pass
    for module in ("tensorflow", "tf_slim", "keras", "tf_keras"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=SyntaxWarning)


# ------------------------------------------------------------------------------ sources


def _find_meta(prefix: Path) -> Path | None:
    """``PREFIX.meta``, or upstream's ``model-NAME.meta`` beside ``model-NAME.ckpt-STEP``."""
    candidates = [Path(f"{prefix}.meta")]
    match = _CKPT_STEP.match(prefix.name)
    if match:
        candidates.append(prefix.with_name(f"{match['stem']}.meta"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    metas = sorted(prefix.parent.glob("*.meta"))
    return metas[0] if len(metas) == 1 else None


def resolve_tf_source(source: str | os.PathLike[str]) -> TFSource:
    """Decide how to build the reference for SOURCE (no TensorFlow needed)."""
    from facenet_convert.converter.sources import detect_format

    path = Path(source)
    if path.suffix == ".meta" and path.is_file():
        return _meta_source(path)
    fmt = detect_format(path)
    if fmt == "mtcnn-npy":
        return TFSource("mtcnn", path, npy=path, net=MTCNN_NETS.get(path.stem))
    if fmt == "tf-graphdef":
        return TFSource("frozen", path, pb=path)
    if fmt == "keras-h5":
        return TFSource("keras", path, h5=path)
    if fmt == "tf-checkpoint":
        from facenet_convert.converter.sources.tf_bundle import resolve_prefix

        prefix, how = resolve_prefix(path)
        meta = _find_meta(prefix)
        kind = "checkpoint" if meta is not None else "checkpoint-rebuilt"
        return TFSource(kind, path, prefix=prefix, meta=meta, notes=(how,))
    raise ParityError(f"parity needs a TensorFlow or Keras source (checkpoint folder or prefix, "
                      f"frozen .pb, Keras .h5, MTCNN det*.npy); this is a {fmt} file, which has "
                      "no model to run", path=path)


def _meta_source(meta: Path) -> TFSource:
    """A ``.meta`` given as SOURCE: its checkpoint is ``X`` for ``X.meta``, else the folder's
    (upstream names them ``model-NAME.meta`` and ``model-NAME.ckpt-STEP``)."""
    from facenet_convert.converter.sources.tf_bundle import resolve_prefix

    same = meta.with_suffix("")
    if Path(f"{same}.index").is_file():
        prefix, how = same, f"prefix {same} (named like the given {meta.name})"
    else:
        prefix, how = resolve_prefix(meta.parent)
    return TFSource("checkpoint", meta, prefix=prefix, meta=meta, notes=(how,))


def required_file(path: Path | None, src: TFSource) -> Path:
    if path is None:
        raise ParityError(f"source resolved as {src.kind} without its file", path=src.path)
    return path


def first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


@contextmanager
def tf_errors(what: str, path: Path | None) -> Iterator[None]:
    try:
        yield
    except ParityError:
        raise
    except Exception as error:  # TF / protobuf raise many types with multi-line text
        raise ParityError(f"{what} failed ({first_line(error)})", path=path) from error


def head_sizes_of(record: Architecture, shapes: dict[str, tuple[int, ...]], *, graph: bool
                ) -> tuple[int, int | None] | None:
    """(embedding size, classes) when one of ``record``'s schemes fits these tensors."""
    for scheme in record.schemes:
        if not scheme.fits(set(shapes), graph=graph) or scheme.embedding_tensor is None:
            continue
        embedding = shapes.get(scheme.embedding_tensor, ())
        if len(embedding) != 2:
            continue
        classes = shapes.get(scheme.classes_tensor or "", ())
        return int(embedding[1]), int(classes[1]) if len(classes) == 2 else None
    return None
