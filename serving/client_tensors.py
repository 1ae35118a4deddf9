"""TensorProto <-> numpy for the client, and signature metadata parsing.

The client builds and reads TensorProtos with numpy directly (no TensorFlow
graph code): requests are small and this keeps every dtype conversion explicit.
Only the dtypes the recommender signatures use are handled natively; anything
else falls back to `tf.make_ndarray`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving import names

# DataType enum -> numpy dtype (strings are object arrays of bytes).
_NUMPY_DTYPES = {
    types_pb2.DT_FLOAT: np.dtype("<f4"),
    types_pb2.DT_DOUBLE: np.dtype("<f8"),
    types_pb2.DT_INT32: np.dtype("<i4"),
    types_pb2.DT_INT64: np.dtype("<i8"),
    types_pb2.DT_BOOL: np.dtype("bool"),
    types_pb2.DT_STRING: np.dtype(object),
}
# Field holding the values when tensor_content is empty.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
    """DT_FLOAT etc., for messages."""
    return types_pb2.DataType.Name(dtype)


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """One input or output of a signature, from GetModelMetadata.

    Attributes:
        name: the logical (signature) name.
        dtype: the DataType enum value (types_pb2.DT_*).
        shape: dims, -1 for unknown; None when the rank is unknown.
    """

    name: str
    dtype: int
    shape: tuple[int, ...] | None

    @property
    def is_string(self) -> bool:
        return self.dtype == types_pb2.DT_STRING

    @property
    def is_float(self) -> bool:
        return self.dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)

    @property
    def is_int(self) -> bool:
        return self.dtype in (types_pb2.DT_INT32, types_pb2.DT_INT64)

    @property
    def is_bool(self) -> bool:
        return self.dtype == types_pb2.DT_BOOL

    def neutral_value(self):
        """The "unknown" value of names.py's contract (names.neutral_value); for inputs it does
        not list, by dtype: "", NaN, -1 or False. The server refuses NaN where it is not neutral."""
        try:
            value = names.neutral_value(self.name, self.is_float)
        except KeyError:
            value = None
        if value is not None:
            return float(value) if self.is_float and not isinstance(value, str) else value
        if self.is_string:
            return ""
        if self.is_float:
            return math.nan
        if self.is_int:
            return -1
        if self.is_bool:
            return False
        raise ValueError(f"input {self.name!r} has dtype {dtype_name(self.dtype)}, which has no neutral value")


@dataclasses.dataclass(frozen=True)
class SignatureMeta:
    """Inputs and outputs of one signature."""

    name: str
    inputs: Mapping[str, TensorMeta]
    outputs: Mapping[str, TensorMeta]


def _shape(proto: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...] | None:
    if proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in proto.dim)


def parse_signature_defs(signature_def_map) -> dict[str, SignatureMeta]:
    """A SignatureDefMap (GetModelMetadata's "signature_def") -> {signature: SignatureMeta}."""
    result = {}
    for key, sig in signature_def_map.signature_def.items():
        inputs = {n: TensorMeta(n, t.dtype, _shape(t.tensor_shape)) for n, t in sig.inputs.items()}
        outputs = {n: TensorMeta(n, t.dtype, _shape(t.tensor_shape)) for n, t in sig.outputs.items()}
        result[key] = SignatureMeta(key, inputs, outputs)
    return result


def _to_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


def make_tensor_proto(value, dtype: int) -> tensor_pb2.TensorProto:
    """Encodes a (nested) list / ndarray as a TensorProto of the given DataType.

    Raises:
        ValueError: the values cannot be converted to that dtype.
    """
    proto = tensor_pb2.TensorProto(dtype=dtype)
    if dtype == types_pb2.DT_STRING:
        array = np.asarray(value, dtype=object)
        proto.string_val.extend(_to_bytes(v) for v in array.reshape(-1))
    else:
        np_dtype = _NUMPY_DTYPES.get(dtype)
        if np_dtype is None:
            raise ValueError(f"cannot encode dtype {dtype_name(dtype)}")
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind in "US":
            try:
                array = array.astype(np_dtype)
            except (TypeError, ValueError) as e:
                raise ValueError(f"cannot convert {value!r} to {dtype_name(dtype)}: {e}") from e
        else:
            array = array.astype(np_dtype, copy=False)
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    for d in array.shape:
        proto.tensor_shape.dim.add(size=int(d))
    return proto


def make_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decodes a TensorProto; strings become an object array of str (utf-8)."""
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    size = int(np.prod(shape)) if shape else 1
    np_dtype = _NUMPY_DTYPES.get(proto.dtype)
    if np_dtype is None:
        import tensorflow as tf  # rare dtypes only

        return tf.make_ndarray(proto)
    if proto.dtype == types_pb2.DT_STRING:
        values = [v.decode("utf-8", errors="replace") for v in proto.string_val]
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=np_dtype).copy()
    else:
        array = np.asarray(list(getattr(proto, _VALUE_FIELDS[proto.dtype])), dtype=np_dtype)
    if array.size != size:
        # TF's convention: a shorter value list repeats its last value (empty: zeros).
        if array.size == 0:
            fill = "" if proto.dtype == types_pb2.DT_STRING else 0
            array = np.full(size, fill, dtype=np_dtype)
        else:
            array = np.concatenate([array, np.repeat(array[-1:], size - array.size)])[:size]
    return array.reshape(shape)
