"""Inference engines: the same model run by a well-kept runtime, checked against the plain model.

``embed``, ``verify`` and ``evaluate`` call an :class:`Engine` instead of the eager model:

* ``onnxruntime``: an ONNX Runtime session over the model exported with the torch.export-based
  ONNX exporter (dynamic batch), cached in ``<cache dir>/engines`` under the sha256 of the
  weights, so the export runs once per weights file and torch/exporter version;
* ``torch``: the model scripted, frozen and optimised for inference
  (``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``: BatchNorm folded, oneDNN);
* ``bf16`` precision: the model in bfloat16, channels-last, on oneDNN (CPUs with AVX512_BF16
  or AMX only; refused elsewhere);
* ``int8`` precision: ONNX Runtime static quantization of the cached export (QDQ, per-channel
  7-bit weights that no CPU class saturates, uint8 activations with ranges calibrated on real
  face crops: :mod:`converter.calibration`), cached beside it.

Every engine runs a small seeded batch through itself and the plain model first: fp32 engines
must agree to 1e-5 (max abs, the parity gate), bf16/int8 to :data:`REDUCED_TOLERANCE` (int8
on held-out real faces); else the
engine falls back (ONNX Runtime -> torch -> the plain model) and says why in ``note``.
``auto`` (the default) takes ONNX Runtime when it is installed, torch otherwise: on this
project's benchmark machine ONNX Runtime is the fastest fp32 path (``scripts/bench_embed.py``).

:class:`OnnxModel` runs an exported ``.onnx`` like our torch model (same outputs, float32) and
:func:`match_onnx` finds its registry record from the file's metadata: ``parity SOURCE OUT.onnx``
uses both. :func:`onnx_bytes` is the one ONNX export call (``converter/export.py`` adds
verification, metadata and the report on top).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facenet_convert.converter.core.atomic import raise_if_interrupted, scratch_directory
from facenet_convert.converter.core.checks import max_abs_difference, within
from facenet_convert.converter.core.errors import ConverterError, EngineError
from facenet_convert.converter.core.extras import has_extra, install_hint, require_extra
from facenet_convert.converter.core.machine import cpu_flags

if TYPE_CHECKING:
    from torch import Tensor, nn

    from facenet_convert.converter.architecture import Architecture

BACKENDS = ("auto", "torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "int8")
CHECK_TOLERANCE = 1e-5
"""fp32 engines vs the plain model, max abs on the self-check batch (the parity gate)."""
REDUCED_TOLERANCE = 2e-2
"""bf16 / int8 engine vs the fp32 model, max abs on unit-norm embeddings of the self-check
batch: beyond it the engine is refused and fp32 runs (a guard, not a proof of unchanged
verification decisions: see ``scripts/bench_embed.py``)."""
DEFAULT_OPSET = 18
METADATA_PREFIX = "facenet_convert."
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


# ----------------------------------------------------------------------------- capabilities

def bf16_supported(flags: set[str] | None = None) -> bool:
    """Whether the CPU has bfloat16 dot products (AVX512_BF16 or AMX), which bf16 needs to be
    fast; without them oneDNN emulates bf16 and it is slower than fp32."""
    found = cpu_flags() if flags is None else flags
    if found:
        return any(flag in found for flag in BF16_FLAGS)
    import torch

    return "AMX" in torch.backends.cpu.get_cpu_capability()


def require_bf16(flags: set[str] | None = None) -> None:
    """Refuse bf16 on a CPU without bfloat16 instructions (one line)."""
    if not bf16_supported(flags):
        raise EngineError("--precision bf16 needs a CPU with AVX512_BF16 or AMX (none in "
                          "/proc/cpuinfo flags); on this CPU bf16 would be slower than fp32, "
                          "use --precision fp32")


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's packages (the ``onnx`` extra) import."""
    return has_extra("onnx")


def state_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes, bytes): the engine cache key, the
    same for a release and for the file it came from."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- ONNX

def _quiet_exporter() -> None:
    """The exporter logs missing torchvision ops and progress lines: not our users' concern."""
    import logging

    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def onnx_bytes(module: nn.Module, example: Tensor, *, opset: int = DEFAULT_OPSET,
               input_name: str = "images", output_names: Sequence[str] = ("embeddings",),
               dynamic: Mapping[int, tuple[str, int]] | None = None,
               metadata: Mapping[str, str] | None = None) -> bytes:
    """``module`` exported to ONNX with the torch.export-based exporter, as bytes.

    ``dynamic`` maps an input axis to (name, minimum size); ``metadata`` goes into the model's
    ``metadata_props`` under :data:`METADATA_PREFIX`.
    """
    import warnings

    import torch

    require_extra("onnx", "ONNX export")
    _quiet_exporter()
    shapes = None
    if dynamic:
        shapes = ({axis: torch.export.Dim(name, min=minimum)
                   for axis, (name, minimum) in dynamic.items()},)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), None, dynamo=True,
                                        opset_version=opset, input_names=[input_name],
                                        output_names=list(output_names),
                                        dynamic_shapes=shapes, verbose=False, optimize=True)
    except Exception as error:  # noqa: BLE001 - the exporter raises many types
        raise_if_interrupted()      # the exporter wraps the signal's exception in its own
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise EngineError(f"ONNX export of {type(module).__name__} failed "
                          f"({type(error).__name__}: {first}); try another --opset") from None
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, str(value)
    return proto.SerializeToString()


class OnnxModel:
    """An ONNX file (or bytes) run by ONNX Runtime like our torch model: torch tensors in,
    float32 torch tensors out (one, or a tuple as PNet/RNet/ONet return)."""

    def __init__(self, source: str | os.PathLike[str] | bytes,
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError("running an ONNX model needs onnxruntime: "
                              "pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: on a busy machine spinning threads burn the
        # share of the CPU that the working ones need, and after a call they slow whatever
        # runs next in the process (MTCNN's torch work, the next batch). Batches lose nothing
        # idle, single images do (measured in docs/performance.md); outputs are the same bits.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        where = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
        try:
            self.session = ort.InferenceSession(
                source if isinstance(source, bytes) else where, options,
                providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise EngineError(f"ONNX Runtime cannot load the model ({first}); expected an "
                              "ONNX file written by `facenet-convert export`",
                              path=where) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {key[len(METADATA_PREFIX):]: value for key, value in meta.items()
                         if key.startswith(METADATA_PREFIX)}
        self.input_name = self.session.get_inputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        #: the batch size a fixed-batch export takes (None: any batch)
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.path = where

    def eval(self) -> OnnxModel:
        """Like ``nn.Module.eval``: an ONNX model has no training mode."""
        return self

    def run(self, images: Any) -> list[Any]:
        """Numpy outputs of a float32 NCHW batch (numpy or torch)."""
        import numpy as np

        array = images.detach().cpu().numpy() if hasattr(images, "detach") else images
        return self.session.run(None, {self.input_name: np.ascontiguousarray(
            array, dtype=np.float32)})

    def __call__(self, images: Any) -> Any:
        import torch

        outputs = [torch.from_numpy(array) for array in self.run(images)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def match_onnx(model: OnnxModel) -> Architecture:
    """The registry record an exported ONNX model was made from (its metadata says)."""
    from facenet_convert.converter.registry import get_architecture, names

    name = model.metadata.get("architecture")
    if not name or name not in names():
        raise EngineError(f"the ONNX model's {METADATA_PREFIX}architecture metadata is "
                          f"{name!r}; expected a file written by `facenet-convert export` "
                          f"(one of {', '.join(names())})", path=model.path)
    return get_architecture(name)


#: Largest embedding an export may declare (FaceNet's are 128 or 512).
MAX_EMBEDDING_SIZE = 8192


def onnx_embedding_size(model: OnnxModel) -> int:
    """The embedding size an export declares, checked: a whole number up to
    :data:`MAX_EMBEDDING_SIZE`, equal to the model's first output width when that is fixed."""
    text = str(model.metadata.get("embedding_size") or "512").strip()
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= MAX_EMBEDDING_SIZE):
        raise EngineError(f"the ONNX model declares embedding size {text[:40]!r}; expected a "
                          f"whole number from 1 to {MAX_EMBEDDING_SIZE}", path=model.path)
    size = int(text)
    width = model.session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != size:
        raise EngineError(f"the ONNX model declares {size}-d embeddings but its output is "
                          f"{width} wide; the file's metadata was changed", path=model.path)
    return size


# ----------------------------------------------------------------------------- engines

@dataclass
class Engine:
    """Standardized float batches in, float32 CPU outputs out; built by :func:`make_engine`."""

    runner: Callable[[Any], Any]
    backend: str                 # "onnxruntime" | "torch" | "eager" (the plain model)
    precision: str               # "fp32" | "bf16"
    check_max_abs: float         # self-check: largest |engine - plain model|
    output_shape: tuple[int, ...] = ()   # one output's shape less the batch axis
    note: str | None = None      # why the engine fell back, or bf16's difference

    def __call__(self, images: Tensor) -> Tensor:
        import torch

        if images.shape[0] == 0:
            return torch.empty((0, *self.output_shape), dtype=torch.float32)
        with torch.inference_mode():
            return self.runner(images.to(dtype=torch.float32)).float().cpu()

    def describe(self) -> str:
        return f"{self.backend} {self.precision}"


def _probe(size: tuple[int, int]) -> Tensor:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.rand((2, 3, *size), generator=generator) * 2 - 1


def _torch_fp32(model: nn.Module, probe: Tensor) -> Callable[[Any], Any]:
    import warnings

    import torch

    # torch 2.13 marks TorchScript deprecated (in favour of torch.compile, which needs a C++
    # toolchain and minutes to compile); it still runs and is checked here like any engine
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(copy.deepcopy(model).eval())
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))


def _torch_bf16(model: nn.Module, probe: Tensor) -> Callable[[Any], Any]:
    """bfloat16 weights and activations, channels-last, frozen for inference when the model
    scripts (oneDNN's bf16 kernels; about 1.7x eager bf16), else eager."""
    import torch

    eager = copy.deepcopy(model).eval().to(torch.bfloat16).to(memory_format=torch.channels_last)
    try:
        half: Any = _torch_fp32(eager, probe)
    except Exception:  # noqa: BLE001 - not scriptable: eager bf16 is still bf16
        half = eager

    def run(images: Tensor) -> Tensor:
        return half(images.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    return run


def engine_cache_path(model: nn.Module, name: str, opset: int = DEFAULT_OPSET) -> Path:
    """Where the ONNX engine of these weights is cached (weights sha256 + exporter versions)."""
    import torch

    from facenet_convert.converter.core.cache import cache_dir
    from facenet_convert.converter.core.version import __version__

    versions = f"{__version__}|{torch.__version__}|{opset}"
    tag = hashlib.sha256(versions.encode()).hexdigest()[:8]
    return cache_dir() / "engines" / f"{name}-{state_sha256(model)}-{tag}.onnx"


def _cached_onnx(model: nn.Module, probe: Tensor) -> Path:
    """The model's ONNX export (dynamic batch) in the engine cache, exported on first use."""
    from facenet_convert.converter.core.cache import read_cached, writable_dir, write_cached

    path = engine_cache_path(model, type(model).__name__)
    if read_cached(path, "the engine cache entry"):
        path.touch()                 # most recently used: the last to be evicted
        return path
    writable_dir(path.parent)
    data = onnx_bytes(model, probe, dynamic={0: ("batch", 1)})
    _evict(path.parent)
    return write_cached(path, data)


CACHE_KEEP = 6
"""Engine files kept in the cache (about 95 MB each for Inception-ResNet-V1): the most
recently used; older ones are removed before a new export is written."""


def _evict(folder: Path, keep: int = CACHE_KEEP) -> None:
    files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[max(0, keep - 1):]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)


def _session_threads() -> int:
    """ONNX Runtime's intra-op threads: torch's setting, so that one knob (``OMP_NUM_THREADS``,
    ``torch.set_num_threads``; a Ray actor sets 1) bounds every backend. ORT's own default
    takes every core, and actors sharing a node would then fight over them."""
    import torch

    return max(1, torch.get_num_threads())


def _onnxruntime(model: nn.Module, probe: Tensor) -> Callable[[Any], Any]:
    return OnnxModel(_cached_onnx(model, probe), threads=_session_threads())


INT8_SETTINGS = "qdq-perchannel-u8s8-reduce_range"
"""How int8 is quantized (part of its cache key). Weights are 7-bit (``reduce_range``): CPUs
without VNNI (AVX2, AVX-512 before Cascade Lake) multiply uint8 activations by int8 weights in
int16 pair sums (``vpmaddubsw``), which saturate when two products exceed 32767; with weights in
[-64, 64] a pair is at most 2 * 255 * 64 = 32640, so every CPU class computes the same exact
int32 sums and the same embeddings (``tests/test_int8.py`` runs it under an emulated AVX2 CPU).
VNNI CPUs lose nothing in speed by it."""


def _onnxruntime_int8(model: nn.Module, probe: Tensor, calibration: Any) -> Callable[[Any], Any]:
    """ONNX Runtime static int8 quantization (QDQ, per-channel 7-bit weights, uint8
    activations calibrated on ``calibration``: real standardized faces), cached beside the
    fp32 export under the digest of the calibration inputs."""

    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from facenet_convert.converter.core.cache import read_cached, write_cached

    source = _cached_onnx(model, probe)
    inputs = np.ascontiguousarray(calibration, dtype=np.float32)
    key = hashlib.sha256(INT8_SETTINGS.encode() + inputs.tobytes()).hexdigest()[:12]
    path = source.with_name(f"{source.stem}-int8-{key}.onnx")
    if read_cached(path, "the int8 engine cache entry"):
        return OnnxModel(path, threads=_session_threads())
    name = OnnxModel(source).input_name
    batches = iter(np.array_split(inputs, max(1, len(inputs) // 4)))

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, Any] | None:
            batch = next(batches, None)
            return None if batch is None else {name: batch}

    with scratch_directory(dir=path.parent) as folder:
        prepared, quantized = folder / "pre.onnx", folder / "int8.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        write_cached(path, quantized.read_bytes())
    return OnnxModel(path, threads=_session_threads())


def _plain(model: nn.Module, probe: Tensor | None = None) -> Callable[[Any], Any]:
    from facenet_convert.models.inference import Embedder

    return Embedder(model)


_BUILDERS: dict[str, Callable[[Any, Any], Callable[[Any], Any]]] = {
    "onnxruntime": _onnxruntime, "torch": _torch_fp32, "eager": _plain}


def plain_engine(model: nn.Module) -> Engine:
    """The plain model as an engine (no build step, no check: it is the reference)."""
    size = getattr(model, "embedding_size", None)
    return Engine(_plain(model), "eager", "fp32", 0.0, (int(size),) if size else ())


def _reduced(model: nn.Module, probe: Tensor, want: Tensor, shape: tuple[int, ...],
             backend: str, precision: str,
             build: Callable[[Any, Any], Callable[[Any], Any]]) -> Engine:
    """A reduced-precision engine if it stays within :data:`REDUCED_TOLERANCE` of fp32 on
    the self-check batch, else the plain fp32 model with a note."""
    import torch

    runner = build(model, probe)
    with torch.inference_mode():
        out = runner(probe)
        diff = max_abs_difference(out.float(), want)
    if within(diff, REDUCED_TOLERANCE):
        return Engine(runner, backend, precision, diff, shape,
                      note=f"{precision}: embeddings differ from fp32 by up to {diff:.1e} "
                           "(max abs) on the self-check batch")
    return Engine(_plain(model), "eager", "fp32", 0.0, shape,
                  note=f"{precision} engine differs from fp32 by {diff:.1e} > "
                       f"{REDUCED_TOLERANCE:g} on the self-check batch; running fp32 instead")


def make_engine(model: nn.Module, backend: str = "auto", precision: str = "fp32", *,
                input_size: tuple[int, int] = (160, 160), check: bool = True,
                preprocessing: str = "fixed_standardization",
                calibration: str | os.PathLike[str] | None = None) -> Engine:
    """The fastest checked engine for ``model`` (in eval mode, on CPU) as asked.

    ``backend``: auto (ONNX Runtime when installed, else torch), torch or onnxruntime.
    ``precision``: fp32; bf16 (torch only; refused on CPUs without bf16 instructions); int8
    (ONNX Runtime only), calibrated on real faces standardized with ``preprocessing``: the
    shipped ones, or the aligned crops in the folder ``calibration``
    (``converter/calibration.py``), and checked on held-out real faces.
    An engine that fails to build or disagrees with the plain model falls back, with a note.
    """
    import torch

    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; expected one of "
                          f"{', '.join(PRECISIONS)}")
    model = model.eval()
    device = next(model.parameters()).device
    probe = _probe(input_size).to(device)
    with torch.inference_mode():
        want = model(probe)
    shape = tuple(int(n) for n in want.shape[1:])
    if precision == "int8":
        if backend == "torch":
            raise EngineError("--precision int8 runs on ONNX Runtime (static quantization); "
                              "use --backend onnxruntime or auto")
        require_extra("onnx", "int8 precision (ONNX Runtime)")
        from facenet_convert.converter.calibration import calibration_sets

        inputs, faces = calibration_sets(preprocessing, calibration, input_size)
        faces = torch.from_numpy(faces).to(device)
        with torch.inference_mode():
            want_faces = model(faces)
        return _reduced(model, faces, want_faces, shape, "onnxruntime", "int8",
                        lambda net, batch: _onnxruntime_int8(net, batch, inputs))
    if precision == "bf16":
        if backend == "onnxruntime":
            raise EngineError("--precision bf16 runs on the torch backend (ONNX Runtime's CPU "
                              "kernels have no bf16 convolution); use --backend torch or auto")
        require_bf16()
        return _reduced(model, probe, want, shape, "torch", "bf16", _torch_bf16)
    if device.type != "cpu":
        return Engine(_plain(model), "eager", "fp32", 0.0, shape)
    if backend == "onnxruntime":
        require_extra("onnx", "the ONNX Runtime backend")
    order = {"auto": ["onnxruntime", "torch"] if onnxruntime_available() else ["torch"],
             "torch": ["torch"], "onnxruntime": ["onnxruntime"]}[backend] + ["eager"]
    reasons: list[str] = []
    if backend == "auto" and not onnxruntime_available():
        reasons.append(f"ONNX Runtime is not installed ({install_hint('onnx')})")
    for name in order:
        try:
            runner = _BUILDERS[name](model, probe)
            with torch.inference_mode():
                diff = max_abs_difference(runner(probe).float(), want) if check else 0.0
        except Exception as error:  # noqa: BLE001 - any build failure falls back, with a note
            raise_if_interrupted()  # not a build failure: a signal the exporter wrapped
            # our own errors are one line that says what to do: keep it whole
            first = (str(error).strip().splitlines() or [""])[0]
            first = first if isinstance(error, ConverterError) else first[:160]
            reasons.append(f"{name} failed to build ({type(error).__name__}: {first})")
            continue
        if name == "eager" or within(diff, CHECK_TOLERANCE):
            note = "; ".join(reasons) + f"; running {name}" if reasons else None
            return Engine(runner, name, "fp32", diff, shape, note=note)
        reasons.append(f"{name} differs from the plain model by {diff:.1e} > "
                       f"{CHECK_TOLERANCE:g}")
    raise EngineError("no engine could run the model")   # unreachable: eager always returns
