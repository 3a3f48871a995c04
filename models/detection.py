"""The MTCNN detector's former home, kept so that ``facenet_convert.models.detection.MTCNN``
still imports: the detector is :mod:`facenet_convert.models.mtcnn.detector`."""

from __future__ import annotations

from facenet_convert.models.mtcnn.detector import MTCNN, FaceDetections

__all__ = ["MTCNN", "FaceDetections"]
