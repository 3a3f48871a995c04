"""The conversion toolkit: readers, mapping tables, conversion, parity, regenerate, CLI.

Importing this package never imports TensorFlow, torch or numpy. The public API is
re-exported by the root package: ``from facenet_convert import convert, open_source``.
"""

from facenet_convert.converter.core.version import __version__

__all__ = ["__version__"]
