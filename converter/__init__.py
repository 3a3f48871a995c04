"""facenet-convert: move TensorFlow-trained FaceNet weights into PyTorch, proven identical.

Importing this package never imports TensorFlow (nor torch: heavy pieces load lazily).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
