"""TensorFlow's DataType enum (tensorflow/core/framework/types.proto) as numpy dtypes.

Shared by the checkpoint and GraphDef readers. Numeric dtypes are little-endian (what TF
writes); strings decode to object arrays of ``bytes``; bfloat16 comes from ml_dtypes.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

DT_STRING = 7

#: DataType -> numpy dtype, for every type the readers decode.
NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"),
    5: np.dtype("<i2"), 6: np.dtype("i1"), DT_STRING: np.dtype(object), 8: np.dtype("<c8"),
    9: np.dtype("<i8"), 10: np.dtype("bool"), 14: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype("<u2"), 18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}

#: DataType -> its name without the ``DT_`` prefix, decoded or not (for messages).
NAMES: dict[int, str] = {
    0: "INVALID", 1: "FLOAT", 2: "DOUBLE", 3: "INT32", 4: "UINT8", 5: "INT16", 6: "INT8",
    7: "STRING", 8: "COMPLEX64", 9: "INT64", 10: "BOOL", 11: "QINT8", 12: "QUINT8",
    13: "QINT32", 14: "BFLOAT16", 15: "QINT16", 16: "QUINT16", 17: "UINT16", 18: "COMPLEX128",
    19: "HALF", 20: "RESOURCE", 21: "VARIANT", 22: "UINT32", 23: "UINT64", 24: "FLOAT8_E5M2",
    25: "FLOAT8_E4M3FN", 26: "FLOAT8_E4M3FNUZ", 27: "FLOAT8_E4M3B11FNUZ",
    28: "FLOAT8_E5M2FNUZ", 29: "INT4", 30: "UINT4", 31: "INT2", 32: "UINT2",
    33: "FLOAT4_E2M1FN",
}


def dtype_label(code: int) -> str:
    """``DT_VARIANT (21)``, or ``DT_unknown (99)`` for numbers TF does not define."""
    return f"DT_{NAMES.get(code, 'unknown')} ({code})"
