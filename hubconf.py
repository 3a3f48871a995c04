"""torch.hub entry points: ``torch.hub.load(REPO, "inception_resnet_v1", pretrained="vggface2")``.

torch.hub imports this file from the repository's folder, whose name is not the package's
(torch.hub's cache folder is ``owner_repo_branch``, a clone is whatever you named it), while
the repository root *is* the package ``facenet_convert``. So the package is taken from this
very folder under its own name (an import spec whose submodule search location is this
folder), unless ``facenet_convert`` is already imported or installed from this folder.

``pretrained`` is a release name (the torch cache ``$TORCH_HOME/checkpoints``, downloaded and
sha256-verified when absent, ``$FACENET_CONVERT_OFFLINE`` forbidding that), a weights file, or
a Hub folder / repo id written by ``save_pretrained`` (loaded with ``from_pretrained``). Nothing
here runs code from a weights folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

dependencies = ["torch", "numpy", "safetensors", "PIL", "cv2", "numba"]

_PACKAGE = "facenet_convert"


def _package() -> ModuleType:
    """``facenet_convert``: the imported one, the one installed from this folder, else this
    folder loaded under that name."""
    here = Path(__file__).resolve().parent
    if _PACKAGE in sys.modules:
        return sys.modules[_PACKAGE]
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and any(Path(p).resolve() == here for p in locations):
        return importlib.import_module(_PACKAGE)
    spec = importlib.util.spec_from_file_location(
        _PACKAGE, here / "__init__.py", submodule_search_locations=[str(here)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_PACKAGE} from {here}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PACKAGE]
        raise
    return module


def _is_hub_folder(pretrained: Any) -> bool:
    """A folder, or an ``owner/name`` repo id that is neither a file nor a release name."""
    if not isinstance(pretrained, (str, os.PathLike)):
        return False
    _package()
    from facenet_convert.models.pretrained_folder import REPO_ID
    from facenet_convert.models.releases import find_release

    text = os.fspath(pretrained)
    if os.path.isdir(text):
        return True
    return (isinstance(pretrained, str) and not os.path.exists(text)
            and find_release(text) is None and REPO_ID.fullmatch(text) is not None)


def _embedding(class_path: str, pretrained: Any, kwargs: dict[str, Any]) -> Any:
    _package()
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    if _is_hub_folder(pretrained):
        return cls.from_pretrained(pretrained, **kwargs)
    return cls(pretrained=pretrained, **kwargs)


def inception_resnet_v1(pretrained: str | os.PathLike[str] | None = None,
                        **kwargs: Any) -> Any:
    """FaceNet Inception-ResNet-V1: ``pretrained`` "vggface2", "casia-webface", a release
    name, a weights file or a Hub folder; ``kwargs`` as ``InceptionResNetV1``."""
    return _embedding("facenet_convert.models.inception_resnet_v1.InceptionResNetV1",
                      pretrained, kwargs)


def inception_resnet_v2(pretrained: str | os.PathLike[str] | None = None,
                        **kwargs: Any) -> Any:
    """Inception-ResNet-V2 under upstream's embedding head (a weights file or Hub folder)."""
    return _embedding("facenet_convert.models.inception_resnet_v2.InceptionResNetV2",
                      pretrained, kwargs)


def squeezenet(pretrained: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
    """SqueezeNet under upstream's embedding head (a weights file or Hub folder)."""
    return _embedding("facenet_convert.models.squeezenet.SqueezeNet", pretrained, kwargs)


def mtcnn(pretrained: bool | str | os.PathLike[str] = True, **kwargs: Any) -> Any:
    """MTCNN with facenet-pytorch's API: the weights shipped in the package (True) or a Hub
    folder / repo id; ``kwargs`` as ``MTCNN`` (image_size, margin, keep_all, device...)."""
    _package()
    from facenet_convert.models.mtcnn.detector import MTCNN

    if pretrained is True:
        return MTCNN(**kwargs)
    if not pretrained:
        from facenet_convert.models.mtcnn import ONet, PNet, RNet

        return MTCNN(pnet=PNet(), rnet=RNet(), onet=ONet(), **kwargs)
    return MTCNN.from_pretrained(pretrained, **kwargs)


def _net(name: str, pretrained: bool | str | os.PathLike[str], kwargs: dict[str, Any]) -> Any:
    _package()
    from facenet_convert.models import mtcnn as nets

    cls = getattr(nets, name)
    if _is_hub_folder(pretrained):
        return cls.from_pretrained(pretrained, **kwargs)
    return cls(pretrained=pretrained, **kwargs)


def pnet(pretrained: bool | str | os.PathLike[str] = True, **kwargs: Any) -> Any:
    """MTCNN's proposal net: shipped weights (True), a weights file or a Hub folder."""
    return _net("PNet", pretrained, kwargs)


def rnet(pretrained: bool | str | os.PathLike[str] = True, **kwargs: Any) -> Any:
    """MTCNN's refinement net: shipped weights (True), a weights file or a Hub folder."""
    return _net("RNet", pretrained, kwargs)


def onet(pretrained: bool | str | os.PathLike[str] = True, **kwargs: Any) -> Any:
    """MTCNN's output net: shipped weights (True), a weights file or a Hub folder."""
    return _net("ONet", pretrained, kwargs)
