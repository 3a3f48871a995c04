"""Reading converted weight files safely, and loading them strictly.

``load_weights_file`` reads ``.safetensors`` or torch files (``weights_only=True``, after a dry
run that bounds every storage by the file size, so a small hostile file cannot make a huge
allocation) and refuses weights holding NaN or Inf; ``load_strict`` loads a state dict only
when keys and shapes match exactly.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, ClassVar

import torch
from torch import Tensor, nn

from facenet_convert.converter.core.errors import MappingError, SourceError
from facenet_convert.converter.core.inputs import open_regular, require_regular


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``.safetensors`` or a torch file.

    Torch files are read with ``weights_only=True`` (no arbitrary unpickling).
    """
    path = Path(path)
    size = require_regular(path, "weights file").st_size
    if path.suffix != ".safetensors":
        _dry_run_torch_file(path, size)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types, with multi-line text
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise SourceError(f"cannot read weights ({type(error).__name__}: {first_line}); "
                          "expected a state dict saved by torch.save or safetensors",
                          path=path) from error
    if not isinstance(loaded, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()):
        raise SourceError(f"expected a flat state dict of tensors, found {type(loaded).__name__}",
                          path=path)
    _require_finite(loaded, path)
    return dict(loaded)


def _require_finite(state: Mapping[str, Tensor], path: Path) -> None:
    """Weights holding NaN or Inf compute nothing meaningful (a NaN would pass no check and
    an Inf can hide in a distance that still looks fine): refused on loading, by every
    command and model that reads a weights file."""
    bad = [key for key, tensor in state.items()
           if (tensor.is_floating_point() or tensor.is_complex())
           and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise SourceError(f"{len(bad)} of {len(state)} tensors hold NaN or Inf (first: "
                          f"{bad[0]}); such weights compute nothing meaningful: convert them "
                          "again from their source, or find the step that broke them",
                          path=path)


# ------------------------------------------------------------- untrusted torch files, dry run

_ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4,
                  "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8,
                  "ComplexDouble": 16}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.itemsize = _ELEMENT_BYTES.get(name.removesuffix("Storage"), 16)


class _DryTensor:
    """What ``_rebuild_tensor_v2`` would build, as numbers only."""

    def __init__(self, storage: tuple[int, int], offset: int, shape: tuple, stride: tuple,
                 *_: object) -> None:
        numel, itemsize = storage
        if not (isinstance(shape, tuple) and isinstance(stride, tuple)
                and len(shape) == len(stride) and isinstance(offset, int)
                and all(isinstance(v, int) and v >= 0 for v in (*shape, *stride, offset))):
            raise pickle.UnpicklingError("a tensor with a malformed shape or stride")
        count = 1
        reach = offset
        for dim, step in zip(shape, stride, strict=True):
            count *= dim
            reach += (dim - 1) * step if dim else 0
        if count and reach >= numel:
            raise pickle.UnpicklingError(f"a tensor of shape {list(shape)} reaches past its "
                                         f"storage of {numel} elements")
        self.nbytes = count * itemsize


def _dry_parameter(data: object, *_: object) -> object:
    return data


class _DryUnpickler(pickle.Unpickler):
    """Unpickles a torch file's structure without allocating: storages become (numel, size)."""

    GLOBALS: ClassVar[dict[tuple[str, str], object]] = {
        ("torch._utils", "_rebuild_tensor_v2"): _DryTensor,
        ("torch._utils", "_rebuild_parameter"): _dry_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, handle: BinaryIO, records: dict[str, int] | None) -> None:
        super().__init__(handle)
        self.records = records
        self.storage_bytes = 0
        self.largest = 0

    def find_class(self, module: str, name: str) -> object:
        found = self.GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid: object) -> tuple[int, int]:
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[4], int)
                or pid[4] < 0):
            raise pickle.UnpicklingError("a storage reference that torch.save never writes")
        numel, itemsize = pid[4], pid[1].itemsize
        if self.records is not None:
            held = self.records.get(str(pid[2]))
            if held is None or numel * itemsize > held:
                raise pickle.UnpicklingError(f"storage {pid[2]!r} declares {numel * itemsize} "
                                             f"bytes, its record holds {held or 0}")
        self.storage_bytes += numel * itemsize
        return numel, itemsize

    def check_tensors(self, loaded: object) -> int:
        tensors = loaded.values() if isinstance(loaded, Mapping) else ()
        return max((t.nbytes for t in tensors if isinstance(t, _DryTensor)), default=0)


def _dry_run_torch_file(path: Path, size: int) -> None:
    """Refuse a torch file whose storages or tensors claim more bytes than the file holds.

    torch allocates a storage's declared size before reading it (and builds models from
    tensor shapes), so a 1 KB file could ask for gigabytes; this reads only structure.
    """
    try:
        with open_regular(path, "weights file") as handle:
            if zipfile.is_zipfile(handle):
                with zipfile.ZipFile(handle) as archive:
                    records: dict[str, int] = {}
                    pickled = None
                    for info in archive.infolist():
                        if (info.compress_type != zipfile.ZIP_STORED
                                or info.file_size != info.compress_size
                                or info.header_offset + info.file_size > size):
                            raise pickle.UnpicklingError(
                                f"zip record {info.filename!r} is compressed or lies outside "
                                "the file; torch.save never writes that")
                        parts = info.filename.split("/")
                        if len(parts) >= 3 and parts[-2] == "data":
                            records[parts[-1]] = info.file_size
                        elif parts[-1] == "data.pkl":
                            pickled = info
                    if pickled is None:
                        raise pickle.UnpicklingError("no data.pkl record")
                    with archive.open(pickled) as stream:
                        dry = _DryUnpickler(stream, records)
                        largest = dry.check_tensors(dry.load())
            else:
                handle.seek(0)
                for _ in range(3):  # magic number, protocol version, system info
                    _DryUnpickler(handle, None).load()
                dry = _DryUnpickler(handle, None)
                largest = dry.check_tensors(dry.load())
                if dry.storage_bytes > size - handle.tell():
                    raise pickle.UnpicklingError(
                        f"storages declare {dry.storage_bytes} bytes, the file holds "
                        f"{size - handle.tell()} after its header")
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, KeyError, IndexError,
            AttributeError, RecursionError, OSError, zipfile.BadZipFile) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise SourceError(f"not a plain state dict ({type(error).__name__}: {first_line}); "
                          "expected a state dict saved by torch.save or safetensors",
                          path=path) from None
    if largest > size:
        raise SourceError(f"a tensor declares {largest} bytes, more than the {size}-byte file; "
                          "refusing it before anything is allocated", path=path)


def load_strict(module: nn.Module, state: Mapping[str, Tensor],
                source: str | os.PathLike[str]) -> None:
    """Load ``state`` into ``module`` only if keys and shapes match exactly (else MappingError)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{key} expected {tuple(value.shape)} found {tuple(state[key].shape)}"
                  for key, value in expected.items()
                  if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(items)}): {', '.join(items[:5])}"
                 f"{', ...' if len(items) > 5 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape mismatch", mismatched)) if items]
        raise MappingError(f"weights do not fit {type(module).__name__}: {'; '.join(parts)}",
                           path=source)
    module.load_state_dict(state, strict=True)
