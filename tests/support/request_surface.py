"""Helpers for the request-surface tests: HTTP over urllib and raw sockets, and a
tiny model with float features (for the non-finite checks)."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving import names

FEATURES_SIGNATURE = "features"
USER_AGE = "user_age"  # a user side feature: NaN = unknown (names.py)


def save_features_model(path: str) -> str:
    """A SavedModel whose serving_default takes user_age and hours_since_prev_event (float32 [B])."""

    class Model(tf.Module):
        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.float32, name=USER_AGE),
            tf.TensorSpec([None], tf.float32, name=names.HOURS_SINCE_PREV_EVENT),
        ])
        def features(self, user_age, hours_since_prev_event):
            known = tf.logical_not(tf.math.is_nan(user_age))
            return {"known_age": known, "total": tf.where(known, user_age, 0.0) + hours_since_prev_event}

    module = Model()
    tf.saved_model.save(module, path, signatures={
        names.DEFAULT_SIGNATURE: module.features, FEATURES_SIGNATURE: module.features})
    return path


def features_request(model: str, user_age, hours) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[USER_AGE].CopyFrom(tf.make_tensor_proto(np.asarray(user_age, np.float32)))
    request.inputs[names.HOURS_SINCE_PREV_EVENT].CopyFrom(tf.make_tensor_proto(np.asarray(hours, np.float32)))
    return request


def http(url: str, body=None, method: str | None = None, headers: dict | None = None,
         timeout: float = 10) -> tuple[int, dict]:
    """(status, parsed JSON body) of one request; body: dict (sent as JSON), bytes, str or None."""
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"raw": raw.decode("utf-8", "replace")}


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (or `timeout` passes)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length, read from a kept-alive connection."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def status_lines(data: bytes) -> list[str]:
    """The HTTP status lines in a stream of responses."""
    return [line for line in data.decode("latin-1").split("\r\n") if line.startswith("HTTP/1.")]


def make_model_dir(root: str, name: str, template: str) -> str:
    """root/name/1 <- a copy of the exported `template`; returns root/name."""
    import shutil

    base = os.path.join(root, name)
    shutil.copytree(template, os.path.join(base, "1"))
    return base
