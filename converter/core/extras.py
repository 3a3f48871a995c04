"""Optional features and the setup.cfg extra that brings each one.

The core install converts, inspects, detects and embeds. Everything else is an extra; a
feature used without its extra is one line naming the ``pip install`` command that adds it.
"""

from __future__ import annotations

import importlib.util

from facenet_convert.converter.core.errors import MissingExtraError

#: extra -> the import names it must provide (setup.cfg ``[options.extras_require]``)
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "tf": ("tensorflow", "tf_slim"),
    "ray": ("ray",),
    "plot": ("matplotlib",),
    "hub": ("huggingface_hub",),
}


def install_hint(extra: str) -> str:
    return f"pip install 'facenet-convert[{extra}]'"


def missing(extra: str) -> list[str]:
    """The import names of ``extra`` that are not installed."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def has_extra(extra: str) -> bool:
    return not missing(extra)


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` (one line) when ``extra`` is not installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{feature} needs the [{extra}] extra ({', '.join(absent)} not "
                                f"installed): {install_hint(extra)}")
