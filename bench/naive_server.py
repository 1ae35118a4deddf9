"""A naive Python grpcio PredictionService over SavedModels: the anchor rows of bench.serving_bench.

    python -m bench.naive_server --model NAME=DIR [--model NAME=DIR ...] [--port 0] [--threads 16]

What anyone would write in an afternoon: ``grpc.server`` with a thread pool, Predict
decodes the TensorProtos with ``tf.make_ndarray``, calls the signature, encodes the
outputs with ``tf.make_tensor_proto``; GetModelMetadata answers the signature defs
(enough for RecommenderClient). No versions, validation, limits, logging or metrics:
it bounds from below what a Python gRPC server can cost on this machine, so the
project's model server is judged against it in the same run. Prints
``gRPC listening on HOST:PORT`` once serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent import futures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.naive_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="serve the SavedModel version directory DIR as NAME (repeatable)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=16)
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    try:
        import scann  # noqa: F401  the ScaNN exports need its ops
    except ImportError:
        pass
    models, sig_maps = {}, {}
    for spec in args.model:
        name, sep, model_dir = spec.partition("=")
        if not sep:
            p.error(f"--model expects NAME=DIR, got {spec!r}")
        models[name] = tf.saved_model.load(model_dir)
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        sig_maps[name] = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in saved.meta_graphs[0].signature_def.items():
            sig_maps[name].signature_def[key].CopyFrom(sig)

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def GetModelMetadata(self, request, context):
            if request.model_spec.name not in models:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_spec.name!r}")
            resp = get_model_metadata_pb2.GetModelMetadataResponse()
            resp.model_spec.name = request.model_spec.name
            resp.metadata["signature_def"].Pack(sig_maps[request.model_spec.name])
            return resp

        def Predict(self, request, context):
            if request.model_spec.name not in models:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_spec.name!r}")
            fn = models[request.model_spec.name].signatures[request.model_spec.signature_name or "serving_default"]
            out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            resp = predict_pb2.PredictResponse()
            resp.model_spec.name = request.model_spec.name
            for k, v in out.items():
                resp.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads),
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"gRPC listening on {args.host}:{port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
