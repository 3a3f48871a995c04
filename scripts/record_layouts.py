#!/usr/bin/env python
"""Record facenet-pytorch 2.6.0's state-dict layouts into tests/data/facenet_pytorch_layouts.json.

The layouts come from the real thing: facenet-pytorch's own ``InceptionResnetV1`` class
(loaded from the pinned wheel) and its published ``pnet.pt``/``rnet.pt``/``onet.pt``. Our
models must match them key for key, shape for shape, in order; tests/test_models.py checks.

Run: ``.venv/bin/python scripts/record_layouts.py [--out PATH] [--force]``.

facenet-pytorch's package ``__init__`` pulls in torchvision and PIL, and its download helper
needs tqdm; none of them are needed to build its networks, so :func:`import_upstream_module`
loads single modules from the wheel under a private package name, with inert stand-ins for
the download and detection helpers (never called: nothing is downloaded or detected).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

from facenet_convert.third_party.wheels import (
    FACENET_PYTORCH,
    fetch_wheel,
    sha256_file,
    wheel_member,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "facenet_pytorch_layouts.json"
UPSTREAM_PACKAGE = "_facenet_pytorch_wheel"
CLASSIFY_CLASSES = 8631  # the VGGFace2 release's logits width
MTCNN_NETS = ("pnet", "rnet", "onet")


def _inert(name: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{name} is disabled in this offline copy of facenet-pytorch")
    return refuse


def _package(name: str) -> types.ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    return module


def import_upstream_module(member: str) -> types.ModuleType:
    """Import ``facenet_pytorch/models/<member>.py`` from the pinned wheel, in isolation.

    ``member`` is ``"inception_resnet_v1"`` or ``"mtcnn"``. The module is registered as
    ``_facenet_pytorch_wheel.models.<member>`` so it never shadows an installed facenet_pytorch.
    """
    name = f"{UPSTREAM_PACKAGE}.models.{member}"
    if name in sys.modules:
        return sys.modules[name]
    _package(UPSTREAM_PACKAGE)
    _package(f"{UPSTREAM_PACKAGE}.models")
    _package(f"{UPSTREAM_PACKAGE}.models.utils")
    stubs = {"download": ("download_url_to_file",), "detect_face": ("detect_face", "extract_face")}
    for stub, functions in stubs.items():
        stub_name = f"{UPSTREAM_PACKAGE}.models.utils.{stub}"
        if stub_name not in sys.modules:
            module = types.ModuleType(stub_name)
            for function in functions:
                setattr(module, function, _inert(function))
            sys.modules[stub_name] = module
    path = wheel_member(FACENET_PYTORCH, f"facenet_pytorch/models/{member}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def layout(state_dict: Any) -> list[list[Any]]:
    """Ordered ``[key, shape]`` pairs of a state dict."""
    return [[key, list(value.shape)] for key, value in state_dict.items()]


def record() -> dict[str, Any]:
    """The layouts of facenet-pytorch's InceptionResnetV1 and published MTCNN files."""
    import torch

    upstream = import_upstream_module("inception_resnet_v1")
    model = upstream.InceptionResnetV1(pretrained=None, classify=True,
                                       num_classes=CLASSIFY_CLASSES)
    layouts: dict[str, Any] = {
        "inception_resnet_v1": {
            "built_with": "facenet_pytorch.models.inception_resnet_v1.InceptionResnetV1("
                          f"pretrained=None, classify=True, num_classes={CLASSIFY_CLASSES})",
            "state_dict": layout(model.state_dict()),
        },
    }
    for net in MTCNN_NETS:
        member = f"facenet_pytorch/data/{net}.pt"
        path = wheel_member(FACENET_PYTORCH, member)
        state = torch.load(path, map_location="cpu", weights_only=True)
        layouts[net] = {"file": member, "sha256": sha256_file(path), "state_dict": layout(state)}
    wheel = fetch_wheel(FACENET_PYTORCH)
    return {
        "source": {"project": FACENET_PYTORCH.project, "version": FACENET_PYTORCH.version,
                   "wheel": FACENET_PYTORCH.filename, "sha256": sha256_file(wheel)},
        "recorded_by": "scripts/record_layouts.py",
        "layouts": layouts,
    }


def dumps(data: dict[str, Any]) -> str:
    """JSON with one state-dict entry per line, so diffs stay readable."""
    out: list[str] = []
    _emit(data, 0, out)
    return "\n".join(out) + "\n"


def _emit(value: Any, indent: int, out: list[str], prefix: str = "", suffix: str = "") -> None:
    pad = " " * indent
    if isinstance(value, dict):
        out.append(f"{pad}{prefix}{{")
        items = list(value.items())
        for index, (key, item) in enumerate(items):
            _emit(item, indent + 2, out, f"{json.dumps(key)}: ",
                  "," if index < len(items) - 1 else "")
        out.append(f"{pad}}}{suffix}")
    elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        out.append(f"{pad}{prefix}[")
        for index, item in enumerate(value):
            comma = "," if index < len(value) - 1 else ""
            out.append(f"{pad}  {json.dumps(item)}{comma}")
        out.append(f"{pad}]{suffix}")
    else:
        out.append(f"{pad}{prefix}{json.dumps(value)}{suffix}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    from facenet_convert.converter.core.atomic import atomic_output
    from facenet_convert.converter.core.errors import ConverterError

    try:
        text = dumps(record())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(args.out, force=args.force) as handle:
            handle.write(text.encode())
    except ConverterError as error:
        print(f"record_layouts: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
