"""MTCNN, by concern: the nets (:mod:`.nets`), box maths and NMS (:mod:`.boxes`), images in
(:mod:`.inputs`), the CPU schedule (:mod:`.schedule`), the cascade as functions of the nets,
thresholds and a parallel map (:mod:`.cascade`), facenet-pytorch's API (:mod:`.api`) and the
``MTCNN`` module that ties them (:mod:`.detector`), as facenet-pytorch separates ``mtcnn.py``
from ``utils/detect_face.py``.

The nets import from here (``facenet_convert.models.mtcnn.PNet``, as before the split);
``MTCNN`` from :mod:`.detector` (or ``facenet_convert.MTCNN``), so that the nets alone never
load the detector's OpenCV and numba parts.
"""

from __future__ import annotations

from facenet_convert.models.mtcnn.nets import ONet, PNet, RNet, prelu_pool

__all__ = ["ONet", "PNet", "RNet", "prelu_pool"]
