"""MTCNN PNet / RNet / ONet from davidsandberg's det1/2/3.npy -> facenet-pytorch keys.

Source names are ``<layer>/<param>`` of the npy dict. Shapes (TF -> torch): conv ``weights``
``[kw, kh, in, out] -> [out, in, kh, kw]`` (``mtcnn_conv``, permute 3,2,1,0: these TF nets
run on W/H-swapped images, and facenet-pytorch 2.6.0's pnet/rnet/onet.pt equal the npy under
exactly this, bit for bit); dense ``weights`` ``[in, out] -> [out, in]``; ``biases`` and PReLU
``alpha`` ``[C]`` as they are. det1 spells PReLU layers ``PReLU1``, det2/det3 ``prelu1``.
"""

from __future__ import annotations

from facenet_convert.converter.mapping import Rule, Table

_PRELU = r"(?:PReLU|prelu)"

PNET = Table(
    name="pnet.mtcnn_npy",
    architecture="pnet",
    scheme="mtcnn-det1",
    rules=(
        Rule(r"conv(?P<n>[1-3])/weights", "conv{n}.weight", "mtcnn_conv"),
        Rule(r"conv(?P<n>[1-3])/biases", "conv{n}.bias"),
        Rule(rf"{_PRELU}(?P<n>[1-3])/alpha", "prelu{n}.weight"),
        Rule(r"conv4-(?P<k>[12])/weights", "conv4_{k}.weight", "mtcnn_conv"),  # 1x1 heads
        Rule(r"conv4-(?P<k>[12])/biases", "conv4_{k}.bias"),
    ),
    description="MTCNN proposal net (det1.npy)",
)

RNET = Table(
    name="rnet.mtcnn_npy",
    architecture="rnet",
    scheme="mtcnn-det2",
    rules=(
        Rule(r"conv(?P<n>[1-3])/weights", "conv{n}.weight", "mtcnn_conv"),
        Rule(r"conv(?P<n>[1-3])/biases", "conv{n}.bias"),
        Rule(rf"{_PRELU}(?P<n>[1-4])/alpha", "prelu{n}.weight"),
        Rule(r"conv4/weights", "dense4.weight", "dense_io_to_oi"),  # [576, 128] -> [128, 576]
        Rule(r"conv4/biases", "dense4.bias"),
        Rule(r"conv5-(?P<k>[12])/weights", "dense5_{k}.weight", "dense_io_to_oi"),
        Rule(r"conv5-(?P<k>[12])/biases", "dense5_{k}.bias"),
    ),
    description="MTCNN refinement net (det2.npy)",
)

ONET = Table(
    name="onet.mtcnn_npy",
    architecture="onet",
    scheme="mtcnn-det3",
    rules=(
        Rule(r"conv(?P<n>[1-4])/weights", "conv{n}.weight", "mtcnn_conv"),
        Rule(r"conv(?P<n>[1-4])/biases", "conv{n}.bias"),
        Rule(rf"{_PRELU}(?P<n>[1-5])/alpha", "prelu{n}.weight"),
        Rule(r"conv5/weights", "dense5.weight", "dense_io_to_oi"),  # [1152, 256] -> [256, 1152]
        Rule(r"conv5/biases", "dense5.bias"),
        Rule(r"conv6-(?P<k>[1-3])/weights", "dense6_{k}.weight", "dense_io_to_oi"),
        Rule(r"conv6-(?P<k>[1-3])/biases", "dense6_{k}.bias"),
    ),
    description="MTCNN output net (det3.npy)",
)
