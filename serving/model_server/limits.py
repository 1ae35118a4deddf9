"""Per-request limits, checked before the work they bound.

TF Serving bounds a request only by the gRPC message size (and by the batch
size when batching is on), so one request with a million ids or a huge `k`
can take the server's memory. Here every Predict is checked, in this order:

1. rows (dim 0) and total input elements, from the TensorProto's shape before
   any tensor is decoded (gRPC) or from the JSON list lengths before the
   arrays are built (REST): INVALID_ARGUMENT;
2. a lower bound of the response size, from the rows, the output shapes of
   the signature and (for outputs with a `k`-wide dimension) max(k), before
   the model runs: RESOURCE_EXHAUSTED;
3. the response size from the actual output arrays, before any proto or JSON
   is built from them: RESOURCE_EXHAUSTED.

Each message names the limit and the flag that changes it. Float inputs must
be finite: +-inf never, NaN only in user side features, where names.py makes
NaN the "unknown" value. Inputs whose range the contract documents
(features.py, names.py: hour_of_day 0..23, day_of_week 0..6,
hours_since_prev_event >= 0, each with -1 = unknown; k >= 0) are checked too.
"""

from __future__ import annotations

import dataclasses
import math

import grpc
import numpy as np
import tensorflow as tf

from serving import features, names
from serving.model_server.errors import ServingError, invalid_argument

DEFAULT_MAX_ROWS = 4096
DEFAULT_MAX_ELEMENTS = 4 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Smallest encoded size of one string element in a TensorProto (tag + length + 1 byte).
_MIN_STRING_BYTES = 3
# Inputs whose width sets a `k`-wide output dimension (names.py: outputs have max(k) columns).
_WIDTH_INPUT = names.K


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one Predict request may ask for; None turns a limit off.

    Attributes:
        max_rows: most rows (dim 0 of the inputs) per request (--max_request_rows).
        max_elements: most input elements over all inputs (--max_request_elements).
        max_response_bytes: most bytes of outputs per response, as encoded in a
            PredictResponse (--max_response_size_mb); JSON answers are larger.
    """

    max_rows: int | None = DEFAULT_MAX_ROWS
    max_elements: int | None = DEFAULT_MAX_ELEMENTS
    max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"request limit {field.name} must be an integer >= 1 or None, got {value!r}")


UNLIMITED = RequestLimits(None, None, None)


def check_rows(limits: RequestLimits, rows: int | None) -> None:
    """INVALID_ARGUMENT when a request carries more rows than allowed."""
    if limits.max_rows is not None and rows is not None and rows > limits.max_rows:
        raise invalid_argument(
            f"request has {rows} rows, more than the limit of {limits.max_rows} rows per request "
            "(--max_request_rows); split it into smaller requests")


def check_elements(limits: RequestLimits, elements: int) -> None:
    """INVALID_ARGUMENT when a request's inputs hold more elements than allowed."""
    if limits.max_elements is not None and elements > limits.max_elements:
        raise invalid_argument(
            f"request inputs hold {elements} elements, more than the limit of {limits.max_elements} "
            "(--max_request_elements); split it into smaller requests")


def check_shapes(limits: RequestLimits, shapes: dict[str, tuple[int, ...]]) -> None:
    """Rows and element limits from the inputs' shapes, before they are decoded."""
    for shape in shapes.values():
        if shape:
            check_rows(limits, shape[0])
    check_elements(limits, sum(math.prod(s) for s in shapes.values()))


def _too_large(limits: RequestLimits, size: int, what: str) -> ServingError:
    return ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the response {what}{size} bytes, more than the limit of {limits.max_response_bytes} bytes "
        f"(--max_response_size_mb {limits.max_response_bytes / 2**20:g}); ask for fewer rows, a smaller k "
        "or fewer outputs (output_filter)")


def check_response_estimate(limits: RequestLimits, signature, arrays: dict[str, np.ndarray],
                            wanted: list[str]) -> None:
    """RESOURCE_EXHAUSTED when the outputs certainly exceed the limit, before the model runs.

    Counts only what the signature fixes: dim 0 is the batch (when the signature is
    batch-major), a `k`-wide dimension is max(k) (names.K), other unknown dimensions
    count as 1, strings as their smallest encoding. So this is a lower bound.
    """
    if limits.max_response_bytes is None:
        return
    rows = None
    if signature.has_batch_dimension():
        first = next(iter(arrays.values()))
        rows = first.shape[0] if first.ndim else None
    width = None
    k = arrays.get(_WIDTH_INPUT)
    if k is not None and k.size and k.dtype.kind in "iu":
        width = max(int(k.max()), 0)
    total = 0
    for name in wanted:
        spec = signature.outputs[name]
        if spec.shape.rank is None:
            continue
        count = 1
        for i, dim in enumerate(spec.shape.as_list()):
            if dim is not None:
                count *= dim
            elif i == 0 and rows is not None:
                count *= rows
            elif i == 1 and width is not None:
                count *= width
        total += count * (_MIN_STRING_BYTES if spec.dtype == tf.string else spec.dtype.size)
    if total > limits.max_response_bytes:
        raise _too_large(limits, total, "would hold at least ")


def response_bytes(outputs: dict[str, np.ndarray]) -> int:
    """Bytes of the outputs' values as a PredictResponse encodes them (numbers: item size)."""
    total = 0
    for array in outputs.values():
        if array.dtype == object or array.dtype.kind in "SU":
            total += sum(map(len, array.ravel())) + 2 * array.size  # map(len): 4x faster than a generator
        else:
            total += array.nbytes
    return total


def check_response(limits: RequestLimits, outputs: dict[str, np.ndarray]) -> None:
    """RESOURCE_EXHAUSTED when the actual outputs exceed the limit, before a response is built."""
    if limits.max_response_bytes is None:
        return
    # Cheap bound first: strings count at least their minimal encoding.
    least = sum(a.size * _MIN_STRING_BYTES if a.dtype == object else a.nbytes for a in outputs.values())
    if least > limits.max_response_bytes:
        raise _too_large(limits, least, "holds at least ")
    size = response_bytes(outputs)
    if size > limits.max_response_bytes:
        raise _too_large(limits, size, "holds ")


# Documented ranges (features.py / names.py): (low, high, the "unknown" value or None).
RANGES = {
    names.HOUR_OF_DAY: (0, 23, -1),
    names.DAY_OF_WEEK: (0, 6, -1),
    names.HOURS_SINCE_PREV_EVENT: (0, None, -1),
    names.K: (0, None, None),
}


def check_ranges(signature, arrays: dict[str, np.ndarray]) -> None:
    """INVALID_ARGUMENT naming the input, the value and its documented range."""
    for name, (low, high, unknown) in RANGES.items():
        array = arrays.get(name)
        if array is None or not array.size or array.dtype.kind not in "iuf":
            continue
        bad = (array < low) if high is None else ((array < low) | (array > high))
        if unknown is not None:
            bad &= array != unknown
        if bad.any():
            index = [int(i) for i in np.argwhere(bad)[0]]
            value = array[tuple(index)].item()
            span = f">= {low}" if high is None else f"in {low}..{high}"
            hint = f", or {unknown} for unknown" if unknown is not None else ""
            raise invalid_argument(
                f"input {name!r} of signature {signature.name!r} holds {value!r} at index {index}; "
                f"it must be {span}{hint} (serving/names.py)")


def nan_allowed(input_name: str) -> bool:
    """NaN means "unknown" for user side features (names.py); elsewhere it is an error."""
    return input_name.startswith(features.USER_FEATURE_PREFIX) and input_name != names.USER_ID


def check_finite(signature, arrays: dict[str, np.ndarray]) -> None:
    """INVALID_ARGUMENT naming the first float input holding inf (or NaN where NaN is not "unknown")."""
    for name in sorted(arrays):
        array = arrays[name]
        if array.dtype.kind != "f" or np.isfinite(array).all():
            continue
        if np.isinf(array).any():
            bad = "inf"
        elif nan_allowed(name):
            continue
        else:
            bad = "NaN"
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(array) if bad == "NaN" else np.isinf(array))[0])
        hint = ("; send NaN for unknown" if nan_allowed(name) else
                "; NaN/inf are not valid here (see serving/names.py for each input's \"unknown\" value)")
        raise invalid_argument(
            f"input {name!r} of signature {signature.name!r} holds a non-finite value ({bad}) at index "
            f"{list(where)}; float inputs must be finite{hint}")
