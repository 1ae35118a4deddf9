"""The floor of a Python grpcio Predict round trip on this machine: a server that does no work.

    python -m bench.grpc_floor [--requests 2000] [--items 100]

Issue 13 asks for at most 0.5 ms of gRPC overhead over the same call in-process. This bench
measures what a Python grpcio PredictionService costs when its Predict does nothing at all:
the server (a subprocess, as ``bench.serving_bench`` runs ours) answers every request with one
prebuilt PredictResponse (``--items`` item ids and scores, what retrieval ``recommend`` k=100
returns); the client (this process, one grpcio channel, concurrency 1) sends one prebuilt
request shaped like a ``recommend`` call. No TensorFlow runs on either side during the timing
and no proto is built per call, so every millisecond printed is grpcio's Python stack (client
and server), HTTP/2 on the loopback and the two processes sharing the machine's cores: what
any Python server, ours or the naive anchor, pays before it decodes a tensor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent import futures

import numpy as np


def _response(items: int):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    def tensor(dtype, values, field):
        t = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1), tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))
        getattr(t, field).extend(values)
        return t

    resp = predict_pb2.PredictResponse()
    resp.model_spec.name = "retrieval"
    resp.outputs["item_ids"].CopyFrom(tensor(types_pb2.DT_STRING, [f"item{i}".encode() for i in range(items)],
                                             "string_val"))
    resp.outputs["scores"].CopyFrom(tensor(types_pb2.DT_FLOAT, [float(i) for i in range(items)], "float_val"))
    return resp


def _request():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = "retrieval", "recommend"
    for name, dtype, field, value in (("user_id", types_pb2.DT_STRING, "string_val", b"42"),
                                      ("hour_of_day", types_pb2.DT_INT64, "int64_val", -1),
                                      ("day_of_week", types_pb2.DT_INT64, "int64_val", -1),
                                      ("hours_since_prev_event", types_pb2.DT_FLOAT, "float_val", -1.0),
                                      ("k", types_pb2.DT_INT32, "int_val", 100),
                                      ("exclude_history", types_pb2.DT_BOOL, "bool_val", True)):
        t = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        getattr(t, field).append(value)
        req.inputs[name].CopyFrom(t)
    return req


def serve(items: int) -> int:
    """The do-nothing server (subprocess side): prints its port, serves until stdin closes."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    response = _response(items)

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--items", type=int, default=100, help="item ids and scores in the response")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.serve:
        return serve(args.items)

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor", "--serve", "--items", str(args.items)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        request = _request()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(200):  # warm up the connection and both interpreters
                stub.Predict(request, timeout=5)
            times = []
            for _ in range(args.requests):
                started = time.perf_counter()
                stub.Predict(request, timeout=5)
                times.append((time.perf_counter() - started) * 1e3)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    t = np.asarray(times)
    print(f"[grpc_floor] {args.requests} Predict calls, concurrency 1, {args.items} ids + scores back, "
          f"{os.cpu_count()} cpu: p50 {np.percentile(t, 50):.3f} ms, p90 {np.percentile(t, 90):.3f} ms, "
          f"p99 {np.percentile(t, 99):.3f} ms, mean {t.mean():.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
