"""What CPU this is, in the terms that decide which kernels run: every benchmark figure carries
it, and the engines choose by it.

The class names what the fast paths need: ``avx2`` (Haswell to Zen 3: no VNNI, int8 dot
products go through int16 pair sums), ``avx512`` (no VNNI), ``avx512-vnni`` (int8 dot products
in int32), ``avx512-vnni-bf16`` (bfloat16 dot products too), ``amx``. torch and TF can be held
below the hardware (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``); ONNX Runtime cannot, so
the caps are recorded beside the hardware class rather than folded into it.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo_field(name: str, cpuinfo: str | os.PathLike[str]) -> str | None:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    found = _cpuinfo_field("flags", cpuinfo)
    return set(found.split()) if found else set()


def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The CPU's model name (``AMD EPYC 9R14``...), else what ``platform`` knows."""
    return (_cpuinfo_field("model name", cpuinfo) or platform.processor()
            or platform.machine())


def cpu_class(flags: set[str]) -> str:
    """The kernel class these flags allow (see the module docstring); ``unknown`` without
    /proc/cpuinfo."""
    if not flags:
        return "unknown"
    if "amx_int8" in flags or "amx_bf16" in flags:
        return "amx"
    if "avx512f" in flags:
        if "avx512_vnni" in flags:
            return "avx512-vnni-bf16" if "avx512_bf16" in flags else "avx512-vnni"
        return "avx512"
    if "avx2" in flags:
        return "avx2-vnni" if "avx_vnni" in flags else "avx2"
    return "pre-avx2"


def describe_machine(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, class, the flags that matter, the caps set in the environment and the library
    versions that are already imported: what a benchmark figure needs beside it."""
    flags = cpu_flags(cpuinfo)
    versions = {"python": platform.python_version()}
    for module in ("numpy", "torch", "onnxruntime", "tensorflow", "cv2", "numba"):
        loaded = sys.modules.get(module)
        if loaded is not None:
            versions[module] = str(getattr(loaded, "__version__", "?"))
    description: dict[str, Any] = {
        "cpu_model": cpu_model(cpuinfo), "cpu_class": cpu_class(flags),
        "cores": os.cpu_count(),
        "flags": {flag: flag in flags for flag in FLAGS_OF_INTEREST},
        "caps": {name: os.environ[name] for name in CAP_VARIABLES if name in os.environ},
        "versions": versions}
    torch = sys.modules.get("torch")
    if torch is not None:
        description["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return description


def machine_line(description: dict[str, Any]) -> str:
    """One line for a benchmark's header: model, class, cores, caps, versions."""
    caps = ", ".join(f"{k}={v}" for k, v in description["caps"].items())
    versions = ", ".join(f"{k} {v}" for k, v in description["versions"].items())
    return (f"{description['cpu_model']} ({description['cpu_class']}"
            + (f"; capped: {caps}" if caps else "") + f"), {description['cores']} cores; "
            + versions)
