"""Readers for every supported weights container, none of which imports TensorFlow.

``open_source(path)`` picks the reader by the file's content (magic bytes), not its name.
"""

from __future__ import annotations

from converter.sources.base import SourceReader, TensorInfo

__all__ = ["SourceReader", "TensorInfo"]
