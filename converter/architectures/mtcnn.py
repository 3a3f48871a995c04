"""MTCNN's three nets: davidsandberg/facenet's ``align/detect_face.py`` with det1/2/3.npy.

Targets: facenet-pytorch's ``PNet`` / ``RNet`` / ``ONet`` state_dicts. Parity end points are
every layer output in network order (upstream ``detect_face`` layer names; its dense layers are
called conv4/conv5/conv6-N there). The TF nets see W/H-swapped images (``nhwc-swapped``).
"""

from __future__ import annotations

from facenet_convert.converter.architecture import (
    Architecture,
    LayerRow,
    Layout,
    Scheme,
    conv,
    linear,
)
from facenet_convert.converter.mapping import Table, TargetEntry
from facenet_convert.converter.tables import mtcnn


def _prelu(name: str, channels: int) -> TargetEntry:
    return TargetEntry(f"{name}.weight", (channels,))


def pnet_layout(embedding_size: int | None = None, num_classes: int | None = None
                ) -> list[TargetEntry]:
    """facenet-pytorch ``PNet`` (the head sizes do not apply)."""
    return [*conv("conv1", 3, 10, 3), _prelu("prelu1", 10),
            *conv("conv2", 10, 16, 3), _prelu("prelu2", 16),
            *conv("conv3", 16, 32, 3), _prelu("prelu3", 32),
            *conv("conv4_1", 32, 2, 1), *conv("conv4_2", 32, 4, 1)]


def rnet_layout(embedding_size: int | None = None, num_classes: int | None = None
                ) -> list[TargetEntry]:
    """facenet-pytorch ``RNet``."""
    return [*conv("conv1", 3, 28, 3), _prelu("prelu1", 28),
            *conv("conv2", 28, 48, 3), _prelu("prelu2", 48),
            *conv("conv3", 48, 64, 2), _prelu("prelu3", 64),
            *linear("dense4", 576, 128), _prelu("prelu4", 128),
            *linear("dense5_1", 128, 2), *linear("dense5_2", 128, 4)]


def onet_layout(embedding_size: int | None = None, num_classes: int | None = None
                ) -> list[TargetEntry]:
    """facenet-pytorch ``ONet``."""
    return [*conv("conv1", 3, 32, 3), _prelu("prelu1", 32),
            *conv("conv2", 32, 64, 3), _prelu("prelu2", 64),
            *conv("conv3", 64, 64, 3), _prelu("prelu3", 64),
            *conv("conv4", 64, 128, 2), _prelu("prelu4", 128),
            *linear("dense5", 1152, 256), _prelu("prelu5", 256),
            *linear("dense6_1", 256, 2), *linear("dense6_2", 256, 4),
            *linear("dense6_3", 256, 10)]


_SW = "nhwc-swapped"


def _rows(net: str, rows: tuple[tuple[str, str, str, str], ...]) -> tuple[LayerRow, ...]:
    return tuple(LayerRow(label, (f"{net}/{tensor}",), module, layout)
                 for label, tensor, module, layout in rows)


def _record(name: str, model: str, table: Table, marker: str, layout: Layout,
            input_size: tuple[int, int] | None, description: str,
            rows: tuple[tuple[str, str, str, str], ...]) -> Architecture:
    return Architecture(name=name, task="detection",
                        model=f"facenet_convert.models.mtcnn:{model}", layout=layout,
                        schemes=(Scheme(table, marker),), description=description,
                        input_size=input_size, end_points=_rows(name, rows))


RECORDS = (
    _record("pnet", "PNet", mtcnn.PNET, "conv4-1/weights", pnet_layout, None,
            "MTCNN proposal net (det1.npy)", (
                ("PReLU1", "PReLU1/add:0", "prelu1", _SW),
                ("pool1", "pool1:0", "pool1", _SW),
                ("PReLU2", "PReLU2/add:0", "prelu2", _SW),
                ("PReLU3", "PReLU3/add:0", "prelu3", _SW),
                ("conv4-1", "conv4-1/BiasAdd:0", "conv4_1", _SW),
                ("prob1", "prob1:0", "softmax4_1", _SW),
                ("conv4-2", "conv4-2/BiasAdd:0", "conv4_2", _SW))),
    _record("rnet", "RNet", mtcnn.RNET, "conv5-1/weights", rnet_layout, (24, 24),
            "MTCNN refinement net (det2.npy)", (
                ("prelu1", "prelu1/add:0", "prelu1", _SW),
                ("pool1", "pool1:0", "pool1", _SW),
                ("prelu2", "prelu2/add:0", "prelu2", _SW),
                ("pool2", "pool2:0", "pool2", _SW),
                ("prelu3", "prelu3/add:0", "prelu3", _SW),
                ("conv4", "conv4/conv4:0", "dense4", "nc"),
                ("prelu4", "prelu4/add:0", "prelu4", "nc"),
                ("conv5-1", "conv5-1/conv5-1:0", "dense5_1", "nc"),
                ("prob1", "prob1:0", "softmax5_1", "nc"),
                ("conv5-2", "conv5-2/conv5-2:0", "dense5_2", "nc"))),
    _record("onet", "ONet", mtcnn.ONET, "conv6-3/weights", onet_layout, (48, 48),
            "MTCNN output net (det3.npy)", (
                ("prelu1", "prelu1/add:0", "prelu1", _SW),
                ("pool1", "pool1:0", "pool1", _SW),
                ("prelu2", "prelu2/add:0", "prelu2", _SW),
                ("pool2", "pool2:0", "pool2", _SW),
                ("prelu3", "prelu3/add:0", "prelu3", _SW),
                ("pool3", "pool3:0", "pool3", _SW),
                ("prelu4", "prelu4/add:0", "prelu4", _SW),
                ("conv5", "conv5/conv5:0", "dense5", "nc"),
                ("prelu5", "prelu5/add:0", "prelu5", "nc"),
                ("conv6-1", "conv6-1/conv6-1:0", "dense6_1", "nc"),
                ("prob1", "prob1:0", "softmax6_1", "nc"),
                ("conv6-2", "conv6-2/conv6-2:0", "dense6_2", "nc"),
                ("conv6-3", "conv6-3/conv6-3:0", "dense6_3", "nc"))),
)
