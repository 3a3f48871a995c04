"""facenet-convert: move TensorFlow-trained FaceNet weights into PyTorch, proven identical.

Importing this package never imports TensorFlow (nor torch: heavy pieces load lazily).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "convert"]


def __getattr__(name: str) -> object:
    # Lazy: ``converter.convert(...)`` without importing numpy/torch at package import.
    if name == "convert":
        from importlib import import_module

        return import_module("converter.conversion").convert
    raise AttributeError(f"module 'converter' has no attribute {name!r}")
