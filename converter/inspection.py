"""What a source holds, without TensorFlow and without reading data (``inspect``).

Format, tensors (name/dtype/shape), total bytes and the architecture, naming scheme, head
sizes and training extras the registry's records recognise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facenet_convert.converter.recognition import detect
from facenet_convert.converter.registry import get_architecture
from facenet_convert.converter.sources import open_source


def _dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype == np.dtype(object) else str(dtype)


def describe(source: str, *, verify: bool = False) -> dict[str, Any]:
    """Format, tensors (name/dtype/shape), total bytes and the detected model variant.

    ``verify`` also reads every tensor, so each checksum and length is checked (a conversion
    reads only the tensors the model needs)."""
    with open_source(source) as reader:
        infos = reader.tensors()
        if verify:
            for name in infos:
                reader.read(name)
        detection = detect(infos, frozen=reader.format == "tf-graphdef")
        resolution = getattr(reader, "resolution", None)
        files = [str(path) for path in reader.files()]
        fmt = reader.format
    tensors = [{"name": info.name, "dtype": _dtype_name(info.dtype), "shape": list(info.shape),
                "bytes": info.nbytes} for info in infos.values()]
    return {
        "source": str(Path(source)),
        "format": fmt,
        "resolution": resolution,
        "files": files,
        "verified": verify,
        "tensor_count": len(tensors),
        "total_bytes": sum(item["bytes"] for item in tensors),
        "detected": detection.to_dict(),
        "tensors": tensors,
    }


def _human(num: int) -> str:
    size = float(num)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{num} B"


def render_text(info: dict[str, Any]) -> str:
    """The human-readable report: summary lines, then a name/dtype/shape table."""
    found = info["detected"]
    lines = [f"source:        {info['source']}", f"format:        {info['format']}"]
    if info["resolution"]:
        lines.append(f"resolved:      {info['resolution']}")
    verified = ", every tensor read and checked" if info["verified"] else ""
    lines += [
        f"tensors:       {info['tensor_count']} ({_human(info['total_bytes'])}{verified})",
        f"architecture:  {found['architecture'] or 'unknown'}"
        + (f" ({found['scheme']}, table {found['table']})" if found["scheme"] else ""),
    ]
    if found["architecture"] and get_architecture(found["architecture"]).task == "embedding":
        lines.append(f"embedding:     {found['embedding_size']}")
        lines.append(f"classes:       {found['num_classes'] or 'none (no Logits layer)'}")
    lines.append(f"EMA shadows:   {'yes' if found['ema'] else 'no'}")
    optimizer = found["optimizer"] or ("mixed" if found["optimizer_slots"] else "none")
    lines.append(f"optimizer:     {optimizer}"
                 + (f" ({found['optimizer_slots']} slots)" if found["optimizer_slots"] else ""))
    lines.append(f"centers:       {'yes' if found['centers'] else 'no'}")
    lines += [f"note:          {note}" for note in found["notes"]]
    width = max((len(t["name"]) for t in info["tensors"]), default=4)
    lines.append("")
    lines.append(f"{'name':<{width}}  {'dtype':<8}  shape")
    for tensor in info["tensors"]:
        shape = "x".join(map(str, tensor["shape"])) or "scalar"
        lines.append(f"{tensor['name']:<{width}}  {tensor['dtype']:<8}  {shape}")
    return "\n".join(lines)
